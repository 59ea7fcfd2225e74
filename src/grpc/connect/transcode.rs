//! The descriptor pool every Connect call is transcoded with, and the framing both protocols
//! share: a 5-byte prefix (flags, big-endian length) before each message.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MethodDescriptor, SerializeOptions};

use super::error::ConnectError;

/// Longest error text quoted from a JSON parser, so a huge bad document is not echoed whole.
const MAX_PARSE_ERROR: usize = 300;

/// Our contracts, health and the `google.rpc` detail types, with JSON both ways.
#[derive(Debug, Clone)]
pub struct Transcoder {
    pool: DescriptorPool,
}

impl Transcoder {
    /// The pool of the descriptor sets compiled into the binary.
    pub fn new() -> Result<Self, prost_reflect::DescriptorError> {
        let mut pool = DescriptorPool::new();
        pool.decode_file_descriptor_set(crate::grpc::pb::FILE_DESCRIPTOR_SET)?;
        pool.decode_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)?;
        pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
        Ok(Self { pool })
    }

    /// The method of a request path `/<package.Service>/<Method>`.
    pub fn method(&self, path: &str) -> Option<MethodDescriptor> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        self.pool.get_service_by_name(service)?.methods().find(|m| m.name() == method)
    }

    /// A JSON request body as the protobuf bytes of the method's input. Unknown fields,
    /// trailing garbage and type mismatches are `invalid_argument`.
    pub fn json_to_proto(&self, method: &MethodDescriptor, json: &[u8]) -> Result<Vec<u8>, ConnectError> {
        let input = method.input();
        let mut de = serde_json::Deserializer::from_slice(json);
        let options = DeserializeOptions::new().deny_unknown_fields(true);
        let msg = DynamicMessage::deserialize_with_options(input.clone(), &mut de, &options)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| {
                let mut text = e.to_string();
                truncate(&mut text, MAX_PARSE_ERROR);
                ConnectError::invalid(format!("request is not a valid JSON {}: {text}", input.full_name()))
            })?;
        Ok(msg.encode_to_vec())
    }

    /// Checks that protobuf request bytes decode as the method's input, so a garbled binary
    /// body is the caller's `invalid_argument` (not the decoder's `internal`).
    pub fn check_proto(&self, method: &MethodDescriptor, bytes: &[u8]) -> Result<(), ConnectError> {
        let input = method.input();
        DynamicMessage::decode(input.clone(), bytes)
            .map(drop)
            .map_err(|_| ConnectError::invalid(format!("request is not a valid protobuf {}", input.full_name())))
    }

    /// Protobuf response bytes of the method's output as proto3 JSON (lowerCamelCase names,
    /// default values left out, 64-bit integers as strings).
    pub fn proto_to_json(&self, method: &MethodDescriptor, bytes: &[u8]) -> Result<Vec<u8>, ConnectError> {
        let msg = DynamicMessage::decode(method.output(), bytes)
            .map_err(|_| ConnectError::new(tonic::Code::Internal, "response does not decode"))?;
        let mut out = Vec::with_capacity(bytes.len() * 2);
        let mut ser = serde_json::Serializer::new(&mut out);
        msg.serialize_with_options(&mut ser, &SerializeOptions::new())
            .map_err(|_| ConnectError::new(tonic::Code::Internal, "response does not encode as JSON"))?;
        Ok(out)
    }

    /// The JSON form of an encoded message of type `full_name`, if the pool knows the type.
    pub fn message_json(&self, full_name: &str, bytes: &[u8]) -> Option<serde_json::Value> {
        let desc = self.pool.get_message_by_name(full_name)?;
        let msg = DynamicMessage::decode(desc, bytes).ok()?;
        msg.serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new()).ok()
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

/// Flag of a compressed message (gRPC and Connect envelopes alike).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Flag of Connect's end-of-stream message.
pub const FLAG_END_STREAM: u8 = 0x02;

/// One message with its 5-byte prefix.
pub fn frame(flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(flags);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Takes the next whole message off the front of `buf`: its flags and payload, or `None` while
/// the buffer holds less than one message.
pub fn unframe(buf: &mut BytesMut) -> Option<(u8, Bytes)> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    let flags = buf[0];
    let mut msg = buf.split_to(5 + len);
    Some((flags, msg.split_off(5).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Transcoder {
        Transcoder::new().unwrap()
    }

    #[test]
    fn finds_methods_of_every_service_and_nothing_else() {
        let t = pool();
        for service in crate::grpc::SERVICE_NAMES {
            let s = t.pool.get_service_by_name(service).unwrap();
            assert!(s.methods().len() > 0, "{service}");
        }
        let m = t.method("/wa.onboard.v1.OnboardingService/WatchOnboarding").unwrap();
        assert!(m.is_server_streaming());
        assert!(t.method("/grpc.health.v1.Health/Check").is_some());
        assert!(t.method("/wa.onboard.v1.OnboardingService/Nope").is_none());
        assert!(t.method("/nope/GetOnboarding").is_none());
        assert!(t.method("no-slash").is_none());
    }

    #[test]
    fn json_round_trips_through_protobuf() {
        let t = pool();
        let m = t.method("/wa.onboard.v1.OnboardingService/WatchOnboarding").unwrap();
        let bytes = t.json_to_proto(&m, br#"{"name":"onboardings/x","afterSequence":"7"}"#).unwrap();
        let req = crate::grpc::pb::WatchOnboardingRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!((req.name.as_str(), req.after_sequence), ("onboardings/x", 7));
        // The proto name is accepted too, as the JSON mapping says.
        assert!(t.json_to_proto(&m, br#"{"after_sequence":7}"#).is_ok());
    }

    #[test]
    fn bad_json_is_invalid_argument() {
        let t = pool();
        let m = t.method("/wa.onboard.v1.OnboardingService/GetOnboarding").unwrap();
        for body in [&b"{"[..], b"{\"name\":1}", b"{\"nmae\":\"x\"}", b"{} {}", b"", b"[]"] {
            let e = t.json_to_proto(&m, body).unwrap_err();
            assert_eq!(e.code, tonic::Code::InvalidArgument, "{}", String::from_utf8_lossy(body));
        }
        assert!(t.check_proto(&m, &[0xff, 0xff, 0xff]).is_err());
        assert!(t.check_proto(&m, &[]).is_ok());
    }

    #[test]
    fn frames_split_on_message_bounds() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(0, b"abc"));
        buf.extend_from_slice(&frame(FLAG_END_STREAM, b"{}")[..4]);
        assert_eq!(unframe(&mut buf), Some((0, Bytes::from_static(b"abc"))));
        assert_eq!(unframe(&mut buf), None);
        buf.extend_from_slice(&frame(FLAG_END_STREAM, b"{}")[4..]);
        assert_eq!(unframe(&mut buf), Some((FLAG_END_STREAM, Bytes::from_static(b"{}"))));
        assert!(buf.is_empty());
    }
}
