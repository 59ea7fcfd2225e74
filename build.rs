//! Compiles the wa.onboard.v1 contracts with tonic's prost codegen and writes the
//! descriptor set served by gRPC reflection. protoc comes from the `protoc-bin-vendored`
//! crate, so a fresh machine needs nothing installed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/wa/onboard/v1/common.proto",
        "proto/wa/onboard/v1/account.proto",
        "proto/wa/onboard/v1/onboarding.proto",
        "proto/wa/onboard/v1/token.proto",
        "proto/wa/onboard/v1/pipeline.proto",
        "proto/wa/onboard/v1/subscription.proto",
        "proto/wa/onboard/v1/channel.proto",
        "proto/wa/onboard/v1/provider.proto",
        "proto/wa/onboard/v1/delivery.proto",
    ];
    let mut cfg = prost_build::Config::new();
    cfg.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // Prost with a smaller encode buffer (see src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::Codec")
        .file_descriptor_set_path(out.join("wa_onboard_descriptor.bin"))
        .compile_with_config(cfg, &protos, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
