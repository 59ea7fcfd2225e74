//! Messages encoded once and written as they are: one event sent to 10,000 watchers is
//! encoded once, and every stream hands the codec the same shared bytes (a refcount, not a
//! copy of the message and its attributes, nor an encode per watcher).
//!
//! [`Encoded`] is a [`prost::Message`] whose encoding is its bytes, so our prost codec
//! ([`super::codec::Codec`]) writes it unchanged into the stream's frame. tonic's generated
//! server fixes each RPC's response type to the protobuf message, so [`WatchRoute`] serves
//! `WatchOnboarding` itself (the same `tonic::server::Grpc` the generated code uses, with
//! `Encoded` responses) and passes every other call of the service through.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use futures::future::BoxFuture;
use prost::encoding::{DecodeContext, WireType};

use super::codec::Codec;
use super::pb;
use super::services::Services;

/// The wire form of a message, encoded beforehand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded(pub Bytes);

impl Encoded {
    /// `message` encoded.
    pub fn of(message: &impl prost::Message) -> Self {
        Self(message.encode_to_vec().into())
    }
}

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    // Only ever sent, never received: a decode keeps the fields' bytes unread.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// The path [`WatchRoute`] serves itself.
pub const WATCH_ONBOARDING: &str = "/wa.onboard.v1.OnboardingService/WatchOnboarding";

/// The onboarding service with `WatchOnboarding` answered in [`Encoded`] messages.
#[derive(Clone)]
pub struct WatchRoute<S> {
    inner: S,
    services: Services,
}

impl<S> WatchRoute<S> {
    /// `inner` (the generated server), with `WatchOnboarding` served by `services` directly.
    pub fn new(inner: S, services: Services) -> Self {
        Self { inner, services }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for WatchRoute<S> {
    const NAME: &'static str = S::NAME;
}

struct WatchSvc(Services);

impl tonic::server::ServerStreamingService<pb::WatchOnboardingRequest> for WatchSvc {
    type Response = Encoded;
    type ResponseStream = super::services::BoxStream<Encoded>;
    type Future = BoxFuture<'static, Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<pb::WatchOnboardingRequest>) -> Self::Future {
        let services = self.0.clone();
        Box::pin(async move { services.watch_onboarding_encoded(request).await })
    }
}

impl<S, B> tower::Service<http::Request<B>> for WatchRoute<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != WATCH_ONBOARDING {
            return Box::pin(self.inner.call(req));
        }
        let services = self.services.clone();
        Box::pin(async move {
            // As the generated route does, with the service's default limits and no
            // compression (none is configured for our services).
            let mut grpc = tonic::server::Grpc::new(Codec::<Encoded, pb::WatchOnboardingRequest>::default());
            Ok(grpc.server_streaming(WatchSvc(services), req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn an_encoded_message_is_written_as_it_is() {
        let m = pb::WatchOnboardingResponse {
            message: Some(pb::watch_onboarding_response::Message::Heartbeat(pb::Heartbeat {
                time: Some(prost_types::Timestamp { seconds: 5, nanos: 6 }),
                last_sequence: 7,
            })),
        };
        let e = Encoded::of(&m);
        assert_eq!(e.encoded_len(), m.encoded_len());
        assert_eq!(e.encode_to_vec(), m.encode_to_vec());
        assert_eq!(pb::WatchOnboardingResponse::decode(e.encode_to_vec().as_slice()).unwrap(), m);
        // Length-delimited too (how a codec frames it is its own business, but the bytes match).
        assert_eq!(e.encode_length_delimited_to_vec(), m.encode_length_delimited_to_vec());
    }
}
