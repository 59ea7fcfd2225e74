//! Authentication and request ids, as one tower layer in front of every route.
//!
//! `authorization: Bearer <key>` maps to a tenant, put in the request extensions as
//! [`Caller`]. Health and reflection stay open so probes and grpcurl work without a key.
//! Every call gets a request id (the caller's `x-request-id` or a new one) on its tracing
//! span and in the response headers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::core::Caller;
use crate::core::tenants::Authenticator;
use crate::error::AppError;

/// Paths that need no API key.
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// The request id attached to a call.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The tower layer that authenticates every call by its `authorization: Bearer` API key.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Authenticator,
}

impl AuthLayer {
    /// A new layer over the authenticator.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone() }
    }
}

/// The service the layer wraps around the routes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
}

type BoxFut<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

fn bearer(req: &Request<Body>) -> Option<&str> {
    let v = req.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

impl<S> Service<Request<Body>> for AuthService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFut<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let path = req.uri().path().to_string();
        let span =
            tracing::info_span!("grpc", method = %path, request_id = %request_id, tenant = tracing::field::Empty);
        crate::telemetry::set_remote_parent(&span, req.headers());
        Box::pin(
            async move {
                let started = Instant::now();
                req.extensions_mut().insert(RequestId(request_id.clone()));
                if !is_open(&path) {
                    let outcome = match bearer(&req) {
                        None => Err(AppError::new(
                            crate::error::ErrorCode::Unauthenticated,
                            "missing API key: send metadata 'authorization: Bearer <key>'",
                        )),
                        Some(key) => auth.authenticate_checked(key).await,
                    };
                    match outcome {
                        Ok((tenant, check)) => {
                            tracing::Span::current().record("tenant", tracing::field::display(&tenant));
                            req.extensions_mut().insert(Caller { tenant });
                            // Streams re-check the key with it while they stay open.
                            req.extensions_mut().insert(check);
                        }
                        Err(e) => {
                            tracing::info!(code = e.code.as_str(), "Call refused.");
                            let status: tonic::Status = e.into();
                            let mut resp = status.into_http::<Body>();
                            if let Ok(v) = HeaderValue::from_str(&request_id) {
                                resp.headers_mut().insert("x-request-id", v);
                            }
                            return Ok(resp);
                        }
                    }
                }
                let mut resp = inner.call(req).await?;
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    resp.headers_mut().insert("x-request-id", v);
                }
                let grpc_status = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_string();
                tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, grpc_status = %grpc_status, "Call done.");
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

/// What a stream opened by this request re-checks its API key with (set by the layer).
pub fn key_check<T>(req: &tonic::Request<T>) -> Option<crate::core::tenants::KeyCheck> {
    req.extensions().get::<crate::core::tenants::KeyCheck>().cloned()
}

/// The authenticated caller of a request (set by the layer).
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    caller_ref(req).cloned()
}

/// [`caller`] without the copy, for handlers that only lend it to `core`.
pub fn caller_ref<T>(req: &tonic::Request<T>) -> Result<&Caller, tonic::Status> {
    req.extensions().get::<Caller>().ok_or_else(|| tonic::Status::unauthenticated("missing API key"))
}
