//! The gRPC metrics layer: counts every call by service, method and status code and times
//! it to the last byte of the response (so a refused call and a stream's final status are
//! both seen), and keeps the open-streams gauge. It sits outside the auth layer, so calls
//! refused for a missing key are counted too.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use http_body::Frame;
use tonic::body::Body;
use tower::{Layer, Service};

use super::metrics::{GRPC_DURATION, GRPC_REQUESTS, GRPC_STREAMS_OPEN};

/// The tower layer that gives every gRPC call its span and metrics.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    known: Arc<HashSet<String>>,
}

impl GrpcMetricsLayer {
    /// A layer that labels the paths of `descriptor_sets` (encoded `FileDescriptorSet`s)
    /// by service and method; any other path is labelled `unknown`.
    pub fn new(descriptor_sets: &[&[u8]]) -> Self {
        use prost::Message;
        let mut known = HashSet::new();
        for bytes in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*bytes) else { continue };
            for file in set.file {
                let package = file.package.clone().unwrap_or_default();
                for service in &file.service {
                    let name = service.name.clone().unwrap_or_default();
                    let full = if package.is_empty() { name } else { format!("{package}.{name}") };
                    for m in &service.method {
                        known.insert(format!("/{full}/{}", m.name.clone().unwrap_or_default()));
                    }
                }
            }
        }
        Self { known: Arc::new(known) }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner, known: self.known.clone() }
    }
}

/// The service the layer wraps.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    known: Arc<HashSet<String>>,
}

type BoxFut<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S> Service<Request<Body>> for GrpcMetrics<S>
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

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        let (service, method) = match path.strip_prefix('/').and_then(|p| p.rsplit_once('/')) {
            Some((s, m)) if self.known.contains(path) => (s.to_string(), m.to_string()),
            _ => ("unknown".to_string(), "unknown".to_string()),
        };
        let streaming = method.starts_with("Watch") && service.starts_with("wa.onboard.");
        let call = CallGuard::new(service, method, streaming);
        Box::pin(async move {
            let mut call = call;
            let resp = inner.call(req).await?;
            // Trailers-only responses (errors, refused calls) carry the status in headers.
            if let Some(code) = grpc_status(resp.headers()) {
                call.code = Some(code);
            }
            let (parts, body) = resp.into_parts();
            Ok(Response::from_parts(parts, Body::new(MeteredBody { inner: body, call: Some(call) })))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The canonical name of a gRPC status code.
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}

/// One call in flight; records itself once, when the response ends or is dropped.
struct CallGuard {
    service: String,
    method: String,
    streaming: bool,
    started: Instant,
    code: Option<i32>,
}

impl CallGuard {
    fn new(service: String, method: String, streaming: bool) -> Self {
        if streaming {
            ::metrics::gauge!(GRPC_STREAMS_OPEN, "service" => service.clone(), "method" => method.clone())
                .increment(1.0);
        }
        Self { service, method, streaming, started: Instant::now(), code: None }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        // No status at all: the client went away before the end (or the body broke).
        let code = code_name(self.code.unwrap_or(1));
        let labels = [("service", self.service.clone()), ("method", self.method.clone()), ("code", code.to_string())];
        ::metrics::counter!(GRPC_REQUESTS, &labels).increment(1);
        ::metrics::histogram!(GRPC_DURATION, &labels).record(self.started.elapsed().as_secs_f64());
        if self.streaming {
            ::metrics::gauge!(GRPC_STREAMS_OPEN, "service" => self.service.clone(), "method" => self.method.clone())
                .decrement(1.0);
        }
    }
}

/// The response body, watched for the trailers that carry the final status.
struct MeteredBody {
    inner: Body,
    call: Option<CallGuard>,
}

impl http_body::Body for MeteredBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status)
                    && let Some(call) = self.call.as_mut()
                {
                    call.code = Some(code);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut call) = self.call.take() {
                    // A body that ends without trailers after a status in headers keeps it;
                    // one that ends cleanly without any status is a success.
                    call.code.get_or_insert(0);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.call.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(99), "UNKNOWN");
        assert_eq!(code_name(-1), "UNKNOWN");
    }

    #[test]
    fn paths_from_descriptors() {
        let layer =
            GrpcMetricsLayer::new(&[crate::grpc::pb::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET]);
        assert!(layer.known.contains("/wa.onboard.v1.OnboardingService/CreateOnboarding"));
        assert!(layer.known.contains("/grpc.health.v1.Health/Check"));
        assert!(!layer.known.contains("/wa.onboard.v1.OnboardingService/Nope"));
    }
}
