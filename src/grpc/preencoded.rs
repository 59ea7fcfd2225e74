//! `GetOnboarding` answered with pre-encoded bytes: the hot unary read (a client polling an
//! onboarding). The read cache ([`crate::core::read_cache`]) keeps, beside the row it was made
//! from, the encoded `pb::Onboarding`, so a hit costs a reference-count bump and one copy into
//! the response frame instead of cloning the message (a dozen strings) and encoding it again.
//!
//! The generated service takes and answers messages, so the method is routed here first by
//! [`PreEncodedGet`], which wraps the generated `OnboardingServiceServer` and hands it every
//! other path. The bytes are exactly what encoding the message answers (the cache converts and
//! encodes on a miss; a test compares both routes), so clients cannot tell the difference.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::server::{NamedService, UnaryService};

use super::codec::Codec;
use super::encoded::Encoded;
use super::pb;
use super::services::Services;

/// The path routed to the pre-encoded handler.
pub const GET_ONBOARDING: &str = "/wa.onboard.v1.OnboardingService/GetOnboarding";

/// The generated onboarding service with `GetOnboarding` answered from pre-encoded bytes.
#[derive(Clone)]
pub struct PreEncodedGet<S> {
    inner: S,
    services: Services,
}

impl<S> PreEncodedGet<S> {
    /// Routes [`GET_ONBOARDING`] to `services`' pre-encoded handler, the rest to `inner`.
    pub fn new(inner: S, services: Services) -> Self {
        Self { inner, services }
    }
}

impl<S: NamedService> NamedService for PreEncodedGet<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for PreEncodedGet<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == GET_ONBOARDING {
            let handler = GetHandler(self.services.clone());
            // The generated service's settings: no compression, tonic's default size limits.
            return Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(Codec::<Encoded, pb::GetOnboardingRequest>::default());
                Ok(grpc.unary(handler, req).await)
            });
        }
        Box::pin(self.inner.call(req))
    }
}

struct GetHandler(Services);

impl UnaryService<pb::GetOnboardingRequest> for GetHandler {
    type Response = Encoded;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<Encoded>, tonic::Status>> + Send + 'static>>;

    fn call(&mut self, req: tonic::Request<pb::GetOnboardingRequest>) -> Self::Future {
        let services = self.0.clone();
        Box::pin(async move { services.get_onboarding_encoded(&req).await.map(|b| tonic::Response::new(Encoded(b))) })
    }
}
