//! The Connect protocol (and CORS) on the gRPC port: one generic transcoder driven by the
//! descriptor set, in front of the same tonic routes native gRPC reaches.
//!
//! A request whose content type is `application/grpc*` (gRPC, gRPC-Web) passes through
//! untouched. Any other is a Connect call: `POST /<package.Service>/<Method>` with
//! `application/json` or `application/proto` (unary) or `application/connect+json` /
//! `application/connect+proto` (server streaming, enveloped). Its message is turned into
//! protobuf bytes and sent, as an in-process gRPC call with the caller's headers, through the
//! layers every native call meets (metrics, authentication, request ids, message limits), so
//! keys, ids, limits and errors are exactly the native ones. The answer's frames and
//! `grpc-status` trailers are turned back into Connect's form: JSON or binary messages, and
//! errors as `{"code","message","details"}` with the `google.rpc` details in JSON.

pub mod error;
pub mod transcode;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use prost_reflect::MethodDescriptor;
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt as _};

use error::ConnectError;
use transcode::{FLAG_COMPRESSED, FLAG_END_STREAM, Transcoder, frame, unframe};

/// The content types a Connect call may use, for `Accept-Post` on a 415.
const ACCEPTED: &str = "application/json, application/proto, application/connect+json, application/connect+proto";
/// Headers a browser may read from our answers (CORS exposes nothing else by default).
const EXPOSED: &str = "grpc-status, grpc-message, grpc-status-details-bin, x-request-id, \
     connect-content-encoding, connect-accept-encoding, content-encoding";
/// Headers a browser may send, when its preflight names none.
const ALLOWED: &str = "authorization, content-type, connect-protocol-version, connect-timeout-ms, \
     x-grpc-web, x-user-agent, grpc-timeout, x-request-id";
/// Longest `connect-timeout-ms` the spec allows: 10 digits.
const MAX_TIMEOUT_DIGITS: usize = 10;

/// Which origins a browser may call from (`server.cors_allowed_origins`).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    /// From the configured list: empty is off, `*` is any origin.
    pub fn new(origins: &[String]) -> Self {
        Self {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.iter().filter(|o| *o != "*").map(|o| o.trim_end_matches('/').to_string()).collect(),
        }
    }

    fn allows(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        let s = origin.to_str().ok()?;
        (self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(s))).then(|| origin.clone())
    }

    /// The answer to a preflight from an allowed origin.
    fn preflight(origin: HeaderValue, requested: Option<&HeaderValue>) -> Response<Body> {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            requested.cloned().unwrap_or_else(|| HeaderValue::from_static(ALLOWED)),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("7200"));
        resp
    }

    fn decorate(origin: HeaderValue, resp: &mut Response<Body>) {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.append(header::VARY, HeaderValue::from_static("origin"));
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED));
    }
}

/// The operator console (`web/console.html`): one static page, a client of this endpoint.
const CONSOLE: &str = include_str!("../../../web/console.html");
/// What the console page may load and run: itself and its inline script, calls to this
/// origin, QR codes as `data:` images; nothing else, and no framing.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     img-src data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What the gRPC port serves to browsers besides the API.
#[derive(Debug, Clone, Default)]
pub struct WebOptions {
    /// CORS for Connect and gRPC-Web calls from other origins.
    pub cors: Cors,
    /// Serve the operator console at `GET /` and `GET /console` (`server.console`).
    pub console: bool,
}

struct Shared {
    transcoder: Transcoder,
    cors: Cors,
    console: bool,
    max_message: usize,
}

/// The layer, outermost on the gRPC port.
#[derive(Clone)]
pub struct ConnectLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConnectLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectLayer").field("cors", &self.shared.cors).finish_non_exhaustive()
    }
}

impl ConnectLayer {
    /// Connect calls of at most `max_message` bytes (the gRPC receive limit), with `web`'s
    /// CORS and console.
    pub fn new(web: WebOptions, max_message: usize) -> Result<Self, prost_reflect::DescriptorError> {
        let transcoder = Transcoder::new()?;
        Ok(Self { shared: Arc::new(Shared { transcoder, cors: web.cors, console: web.console, max_message }) })
    }
}

impl<S> Layer<S> for ConnectLayer {
    type Service = ConnectService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConnectService { inner, shared: self.shared.clone() }
    }
}

/// The service the layer wraps around the gRPC routes.
#[derive(Clone)]
pub struct ConnectService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for ConnectService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectService").finish_non_exhaustive()
    }
}

type BoxFut<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

impl<S> Service<Request<Body>> for ConnectService<S>
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
        // Take the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let origin = shared.cors.allows(req.headers().get(header::ORIGIN));
        if let Some(origin) = &origin
            && req.method() == Method::OPTIONS
            && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            let resp = Cors::preflight(origin.clone(), req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS));
            return Box::pin(async move { Ok(resp) });
        }
        if shared.console && req.method() == Method::GET && matches!(req.uri().path(), "/" | "/console") {
            return Box::pin(async move { Ok(console()) });
        }
        if is_grpc(req.headers()) {
            let fut = inner.call(req);
            return Box::pin(async move {
                let mut resp = fut.await?;
                if let Some(origin) = origin {
                    Cors::decorate(origin, &mut resp);
                }
                Ok(resp)
            });
        }
        Box::pin(async move {
            let mut resp = connect_call(inner, req, shared).await?;
            if let Some(origin) = origin {
                Cors::decorate(origin, &mut resp);
            }
            Ok(resp)
        })
    }
}

/// The console page, with headers that keep it from being framed or loading anything else.
fn console() -> Response<Body> {
    let mut resp = Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(CONSOLE.as_bytes()))));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONSOLE_CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The wire form of a Connect call's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Json,
    Proto,
}

/// What the request line and headers say about a Connect call.
struct Call {
    method: MethodDescriptor,
    codec: Codec,
    /// The streaming protocol (enveloped messages, end-of-stream message, always HTTP 200).
    streaming: bool,
    timeout: Option<Duration>,
}

impl Call {
    fn content_type(&self) -> &'static str {
        match (self.streaming, self.codec) {
            (false, Codec::Json) => "application/json",
            (false, Codec::Proto) => "application/proto",
            (true, Codec::Json) => "application/connect+json",
            (true, Codec::Proto) => "application/connect+proto",
        }
    }
}

/// A plain HTTP refusal before the call's protocol is known (wrong verb, content type, path).
fn refuse(status: StatusCode, e: &ConnectError) -> Response<Body> {
    let mut resp = Response::new(Body::new(http_body_util::Full::new(Bytes::from(e.to_json().to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        resp.headers_mut().insert(HeaderName::from_static("accept-post"), HeaderValue::from_static(ACCEPTED));
    }
    resp
}

/// Reads the call's method and protocol, or the HTTP refusal.
/// (The refusal is boxed: a response is large next to a `Call`.)
fn parse(parts: &http::request::Parts, t: &Transcoder) -> Result<Call, Box<Response<Body>>> {
    if parts.method != Method::POST {
        return Err(Box::new(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            &ConnectError::new(tonic::Code::Unimplemented, "Connect calls are POST requests"),
        )));
    }
    let Some(method) = t.method(parts.uri.path()) else {
        return Err(Box::new(refuse(
            StatusCode::NOT_FOUND,
            &ConnectError::new(tonic::Code::Unimplemented, format!("no procedure {}", parts.uri.path())),
        )));
    };
    let ct = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (codec, streaming) = match ct.as_str() {
        "application/json" => (Codec::Json, false),
        "application/proto" => (Codec::Proto, false),
        "application/connect+json" => (Codec::Json, true),
        "application/connect+proto" => (Codec::Proto, true),
        _ => {
            return Err(Box::new(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &ConnectError::new(tonic::Code::Unknown, format!("content type '{ct}' is not one of {ACCEPTED}")),
            )));
        }
    };
    if method.is_client_streaming() {
        return Err(Box::new(refuse(
            StatusCode::NOT_IMPLEMENTED,
            &ConnectError::new(tonic::Code::Unimplemented, "client streaming is served over gRPC only"),
        )));
    }
    if streaming != method.is_server_streaming() {
        let want = if method.is_server_streaming() {
            "application/connect+json or +proto"
        } else {
            "application/json or proto"
        };
        return Err(Box::new(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &ConnectError::new(tonic::Code::Unknown, format!("{} takes {want}", method.full_name())),
        )));
    }
    let mut call = Call { method, codec, streaming, timeout: None };
    let bad = |call: &Call, e: ConnectError| Err(Box::new(error_response(call, &e, &HeaderMap::new())));
    if let Some(v) = parts.headers.get("connect-protocol-version")
        && v.as_bytes() != b"1"
    {
        return bad(&call, ConnectError::invalid("connect-protocol-version must be 1"));
    }
    let encoding = if streaming { "connect-content-encoding" } else { "content-encoding" };
    if let Some(v) = parts.headers.get(encoding)
        && v.as_bytes() != b"identity"
    {
        return bad(
            &call,
            ConnectError::new(tonic::Code::Unimplemented, format!("{encoding}: only identity is supported")),
        );
    }
    if let Some(v) = parts.headers.get("connect-timeout-ms") {
        match v.to_str().ok().filter(|s| !s.is_empty() && s.len() <= MAX_TIMEOUT_DIGITS).and_then(|s| s.parse().ok()) {
            Some(ms) => call.timeout = Some(Duration::from_millis(ms)),
            None => return bad(&call, ConnectError::invalid("connect-timeout-ms must be 1 to 10 digits")),
        }
    }
    Ok(call)
}

/// Headers of the caller that are not part of the Connect protocol itself, for the inner call.
fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 2);
    for (name, value) in headers {
        let n = name.as_str();
        let protocol = n.starts_with("connect-")
            || matches!(n, "content-type" | "content-length" | "content-encoding" | "accept-encoding" | "te")
            || n.starts_with("grpc-");
        if !protocol {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    out.insert(header::TE, HeaderValue::from_static("trailers"));
    out
}

/// Response metadata worth passing on (request id, custom headers), without gRPC's own.
fn metadata(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers.iter().filter(|(n, _)| {
        let n = n.as_str();
        !n.starts_with("grpc-") && !matches!(n, "content-type" | "content-length" | "te" | "trailer")
    })
}

/// A Connect error answer: JSON body and the spec's HTTP status (unary), or HTTP 200 with an
/// end-of-stream message carrying the error (streaming).
fn error_response(call: &Call, e: &ConnectError, head: &HeaderMap) -> Response<Body> {
    let (status, body, ct) = if call.streaming {
        let end = serde_json::json!({ "error": e.to_json() }).to_string();
        (StatusCode::OK, frame(FLAG_END_STREAM, end.as_bytes()), call.content_type())
    } else {
        (e.http_status(), Bytes::from(e.to_json().to_string()), "application/json")
    };
    let mut resp = Response::new(Body::new(http_body_util::Full::new(body)));
    *resp.status_mut() = status;
    for (n, v) in metadata(head) {
        resp.headers_mut().append(n.clone(), v.clone());
    }
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

/// One Connect call, start to end.
async fn connect_call<S>(inner: S, req: Request<Body>, shared: Arc<Shared>) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    let (parts, body) = req.into_parts();
    let call = match parse(&parts, &shared.transcoder) {
        Ok(c) => c,
        Err(resp) => return Ok(*resp),
    };
    let proto = match read_request(&call, body, &shared).await {
        Ok(p) => p,
        Err(e) => return Ok(error_response(&call, &e, &HeaderMap::new())),
    };
    let mut grpc = Request::new(Body::new(http_body_util::Full::new(frame(0, &proto))));
    *grpc.method_mut() = Method::POST;
    *grpc.uri_mut() = parts.uri;
    *grpc.version_mut() = http::Version::HTTP_2;
    *grpc.headers_mut() = forwarded(&parts.headers);
    *grpc.extensions_mut() = parts.extensions;
    let started = tokio::time::Instant::now();
    let expired = || ConnectError::new(tonic::Code::DeadlineExceeded, "connect-timeout-ms elapsed");
    if call.streaming {
        let call_fut = inner.oneshot(grpc);
        let resp = match call.timeout {
            Some(t) => match tokio::time::timeout(t, call_fut).await {
                Ok(r) => r?,
                Err(_) => return Ok(error_response(&call, &expired(), &HeaderMap::new())),
            },
            None => call_fut.await?,
        };
        let remaining = call.timeout.map(|t| t.saturating_sub(started.elapsed()));
        return Ok(stream_response(call, resp, shared, remaining));
    }
    let whole = async move {
        let resp = inner.oneshot(grpc).await?;
        let (head, body) = resp.into_parts();
        Ok((head, body.collect().await))
    };
    let (head, collected) = match call.timeout {
        Some(t) => match tokio::time::timeout(t, whole).await {
            Ok(r) => r?,
            Err(_) => return Ok(error_response(&call, &expired(), &HeaderMap::new())),
        },
        None => whole.await?,
    };
    Ok(unary_response(&call, head, collected, &shared.transcoder))
}

/// The request body as protobuf bytes of the method's input (at most `max_message` bytes).
async fn read_request(call: &Call, body: Body, shared: &Shared) -> Result<Vec<u8>, ConnectError> {
    let too_big = || {
        ConnectError::new(
            tonic::Code::ResourceExhausted,
            format!("request body is larger than {} bytes", shared.max_message),
        )
    };
    // The envelope of a streaming request adds 5 bytes to the message.
    let limit = shared.max_message + if call.streaming { 5 } else { 0 };
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_big()),
        Err(_) => return Err(ConnectError::new(tonic::Code::Cancelled, "request body could not be read")),
    };
    let payload = if call.streaming {
        let mut buf = BytesMut::from(&bytes[..]);
        let Some((flags, msg)) = unframe(&mut buf) else {
            return Err(ConnectError::invalid("request is not one enveloped message"));
        };
        if !buf.is_empty() {
            return Err(ConnectError::invalid("a server-streaming call takes exactly one request message"));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(ConnectError::new(tonic::Code::Unimplemented, "compressed messages are not supported"));
        }
        msg
    } else {
        bytes
    };
    match call.codec {
        Codec::Json => shared.transcoder.json_to_proto(&call.method, &payload),
        Codec::Proto => {
            shared.transcoder.check_proto(&call.method, &payload)?;
            Ok(payload.to_vec())
        }
    }
}

/// The status of a finished gRPC answer: its trailers, else its headers (trailers-only).
fn final_status(trailers: Option<&HeaderMap>, head: &HeaderMap) -> tonic::Status {
    trailers
        .and_then(tonic::Status::from_header_map)
        .or_else(|| tonic::Status::from_header_map(head))
        .unwrap_or_else(|| tonic::Status::internal("the answer ended without a status"))
}

/// A unary answer: the one message, or the error.
fn unary_response(
    call: &Call,
    head: http::response::Parts,
    collected: Result<http_body_util::Collected<Bytes>, tonic::Status>,
    t: &Transcoder,
) -> Response<Body> {
    let collected = match collected {
        Ok(c) => c,
        Err(status) => return error_response(call, &ConnectError::from_status(&status, t), &head.headers),
    };
    let trailers = collected.trailers().cloned();
    let status = final_status(trailers.as_ref(), &head.headers);
    let mut meta = head.headers;
    if let Some(tr) = &trailers {
        for (n, v) in metadata(tr) {
            meta.append(n.clone(), v.clone());
        }
    }
    if status.code() != tonic::Code::Ok {
        return error_response(call, &ConnectError::from_status(&status, t), &meta);
    }
    let mut data = BytesMut::from(&collected.to_bytes()[..]);
    let message = match unframe(&mut data) {
        Some((0, m)) => m,
        _ => {
            let e = ConnectError::new(tonic::Code::Internal, "the answer carries no message");
            return error_response(call, &e, &meta);
        }
    };
    let body = match call.codec {
        Codec::Proto => message,
        Codec::Json => match t.proto_to_json(&call.method, &message) {
            Ok(j) => Bytes::from(j),
            Err(e) => return error_response(call, &e, &meta),
        },
    };
    let mut resp = Response::new(Body::new(http_body_util::Full::new(body)));
    let h = resp.headers_mut();
    for (n, v) in metadata(&meta) {
        h.append(n.clone(), v.clone());
    }
    // Connect unary carries trailers as `trailer-` prefixed headers.
    if let Some(tr) = &trailers {
        for (n, v) in metadata(tr) {
            if let Ok(n) = HeaderName::from_bytes(format!("trailer-{}", n.as_str()).as_bytes()) {
                h.append(n, v.clone());
            }
        }
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(call.content_type()));
    resp
}

/// A server-streaming answer: each gRPC message re-enveloped (as JSON or binary), then the
/// end-of-stream message with the status and trailers. Ends at `remaining` with
/// `deadline_exceeded` when the call has a timeout.
fn stream_response(
    call: Call,
    resp: Response<Body>,
    shared: Arc<Shared>,
    remaining: Option<Duration>,
) -> Response<Body> {
    let (head, body) = resp.into_parts();
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::OK;
    for (n, v) in metadata(&head.headers) {
        out.headers_mut().append(n.clone(), v.clone());
    }
    out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(call.content_type()));
    let relay = Relay {
        body,
        buf: BytesMut::new(),
        head: head.headers,
        call,
        shared,
        deadline: remaining.map(|d| Box::pin(tokio::time::sleep(d))),
        done: false,
    };
    let frames = futures::stream::unfold(relay, |mut r| async move {
        let chunk = r.next().await?;
        Some((Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk)), r))
    });
    *out.body_mut() = Body::new(http_body_util::StreamBody::new(frames));
    out
}

/// The state of one relayed stream.
struct Relay {
    body: Body,
    buf: BytesMut,
    head: HeaderMap,
    call: Call,
    shared: Arc<Shared>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl Relay {
    /// The next bytes to write: enveloped messages, or the end-of-stream message (last).
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            let next = match self.deadline.as_mut() {
                Some(d) => tokio::select! {
                    f = self.body.frame() => f,
                    () = d.as_mut() => {
                        let e = ConnectError::new(tonic::Code::DeadlineExceeded, "connect-timeout-ms elapsed");
                        return Some(self.end(Err(e), None));
                    }
                },
                None => self.body.frame().await,
            };
            match next {
                Some(Ok(f)) => match f.into_data() {
                    Ok(data) => {
                        self.buf.extend_from_slice(&data);
                        let mut out = BytesMut::new();
                        while let Some((flags, msg)) = unframe(&mut self.buf) {
                            match self.message(flags, &msg) {
                                Ok(b) => out.extend_from_slice(&b),
                                Err(e) => {
                                    out.extend_from_slice(&self.end(Err(e), None));
                                    return Some(out.freeze());
                                }
                            }
                        }
                        if !out.is_empty() {
                            return Some(out.freeze());
                        }
                    }
                    Err(f) => {
                        if let Ok(trailers) = f.into_trailers() {
                            let status = final_status(Some(&trailers), &self.head);
                            return Some(self.end(Ok(status), Some(&trailers)));
                        }
                    }
                },
                Some(Err(status)) => return Some(self.end(Ok(status), None)),
                None => {
                    let status = final_status(None, &self.head);
                    return Some(self.end(Ok(status), None));
                }
            }
        }
    }

    /// One gRPC message as a Connect envelope.
    fn message(&self, flags: u8, msg: &[u8]) -> Result<Bytes, ConnectError> {
        if flags & FLAG_COMPRESSED != 0 {
            return Err(ConnectError::new(tonic::Code::Internal, "compressed answer"));
        }
        Ok(match self.call.codec {
            Codec::Proto => frame(0, msg),
            Codec::Json => frame(0, &self.shared.transcoder.proto_to_json(&self.call.method, msg)?),
        })
    }

    /// The end-of-stream message: the error, if any, and the trailers as `metadata`.
    fn end(&mut self, outcome: Result<tonic::Status, ConnectError>, trailers: Option<&HeaderMap>) -> Bytes {
        self.done = true;
        let error = match outcome {
            Ok(s) if s.code() == tonic::Code::Ok => None,
            Ok(s) => Some(ConnectError::from_status(&s, &self.shared.transcoder)),
            Err(e) => Some(e),
        };
        let mut end = serde_json::Map::new();
        if let Some(e) = error {
            end.insert("error".into(), e.to_json());
        }
        let mut meta = serde_json::Map::new();
        for (n, v) in trailers.into_iter().flat_map(metadata) {
            if let Ok(v) = v.to_str() {
                let entry = meta.entry(n.as_str()).or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if let serde_json::Value::Array(a) = entry {
                    a.push(v.into());
                }
            }
        }
        if !meta.is_empty() {
            end.insert("metadata".into(), meta.into());
        }
        frame(FLAG_END_STREAM, serde_json::Value::Object(end).to_string().as_bytes())
    }
}
