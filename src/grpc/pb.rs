//! Generated protobuf and gRPC code for `wa.onboard.v1`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("wa.onboard.v1");

/// Encoded `FileDescriptorSet` of our contracts, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wa_onboard_descriptor");
