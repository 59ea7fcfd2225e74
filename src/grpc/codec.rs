//! The codec of our services (set in `build.rs`): prost, with an encode buffer sized for our
//! messages. tonic's default gives every response stream an 8 KiB buffer for its whole life,
//! and writes each message at the offset where the previous one ended, so over hours of
//! heartbeats an idle `WatchOnboarding` stream ends up touching all of it: 10,000 streams
//! would hold 80 MiB for messages of a few hundred bytes. Our usual message fits in
//! [`ENCODE_BUFFER`]; a larger one (a long list page) grows the buffer as it is written.

use std::marker::PhantomData;

use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial encode buffer per response (tonic's default: 8 KiB).
pub const ENCODE_BUFFER: usize = 1024;
/// Bytes encoded before a stream hands them to the transport (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`tonic_prost::ProstCodec`] with a smaller encode buffer.
#[derive(Debug)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}

/// A generated service whose oversized requests answer `RESOURCE_EXHAUSTED`, gRPC's code for
/// a message above the receive limit. tonic's decoder refuses such a message (before our
/// codec sees a byte of it) with `OUT_OF_RANGE`; our handlers never answer `OUT_OF_RANGE`
/// (it is not in [`crate::error::ErrorCode`]), so every such answer is the decoder's.
#[derive(Debug, Clone)]
pub struct OversizeAsExhausted<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for OversizeAsExhausted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tower::Service<http::Request<B>> for OversizeAsExhausted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, fn(http::Response<R>) -> http::Response<R>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use futures::TryFutureExt;
        self.0.call(req).map_ok(oversize_as_exhausted as fn(_) -> _)
    }
}

/// Rewrites a trailers-only `OUT_OF_RANGE` answer (how tonic refuses a request it will not
/// decode) to `RESOURCE_EXHAUSTED`, keeping its message.
fn oversize_as_exhausted<R>(mut res: http::Response<R>) -> http::Response<R> {
    let out_of_range = http::HeaderValue::from_static("11");
    if res.headers().get("grpc-status") == Some(&out_of_range) {
        res.headers_mut().insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    res
}

#[cfg(test)]
mod tests {
    use tonic::codec::{Codec as _, Encoder as _};

    use super::*;
    use crate::grpc::pb;

    #[test]
    fn only_out_of_range_becomes_resource_exhausted() {
        let with = |code: &'static str| {
            let mut r = http::Response::new(());
            r.headers_mut().insert("grpc-status", http::HeaderValue::from_static(code));
            oversize_as_exhausted(r).headers()["grpc-status"].to_str().unwrap().to_string()
        };
        assert_eq!(with("11"), "8");
        assert_eq!(with("3"), "3");
        assert_eq!(with("0"), "0");
    }

    #[test]
    fn responses_start_with_the_small_buffer() {
        let mut codec = Codec::<pb::Onboarding, pb::GetOnboardingRequest>::default();
        // Only its Debug form shows the fields.
        let settings = format!("{:?}", codec.encoder().buffer_settings());
        assert_eq!(settings, format!("{:?}", BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD)));
        assert_ne!(settings, format!("{:?}", BufferSettings::default()), "not tonic's default");
    }
}
