//! The service's listeners, hardened against floods: the webhook and metrics HTTP servers
//! (connection cap, header-read and idle timeouts, HTTP/2 limits) and the gRPC listener's
//! preface deadline, plus the open-file limit they share.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

/// Raises the soft open-file limit to the hard one, so a flood of connections meets the
/// listeners' caps rather than the process limit, and returns the soft limit in force.
#[cfg(unix)]
pub(crate) fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct passed, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit only reads the struct passed; failure (e.g. a hard limit above
        // the kernel's nr_open) leaves the soft limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    // rlim_t is not u64 on every platform.
    #[allow(clippy::unnecessary_cast)]
    Some(lim.rlim_cur as u64)
}

#[cfg(not(unix))]
pub(crate) fn raise_fd_limit() -> Option<u64> {
    None
}

/// Bytes of the HTTP/2 client preface that opens every gRPC connection.
const PREFACE_LEN: usize = 24;

/// A gRPC-port connection that must send its first 24 bytes (the HTTP/2 preface, or a TLS
/// ClientHello) within a deadline: hyper waits for the preface forever, so sockets that send
/// nothing or half a preface would each keep a descriptor. Once HTTP/2 is in, keepalive PINGs
/// watch the connection. A plaintext HTTP/1.1 connection (Connect, gRPC-Web and the console
/// accept it) has no PINGs and hyper no idle timeout of its own, so it is closed after `idle`
/// without a byte read or written: a keep-alive socket left open between requests frees its
/// descriptor, while a stream that carries heartbeats keeps writing and stays.
pub(crate) struct PrefaceDeadline {
    io: tokio::net::TcpStream,
    /// This connection's place under `server.max_grpc_connections`, given back on close.
    _slot: tokio::sync::OwnedSemaphorePermit,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    seen: usize,
    /// The first bytes, to tell HTTP/1.1 from the HTTP/2 preface and TLS.
    head: [u8; 4],
    /// Set once the connection shows itself as plaintext HTTP/1.1.
    idle: Option<Idle>,
    idle_after: Duration,
}

/// The HTTP/1.1 idle watch: the timer fires at most once per `idle_after`, and is pushed back
/// to the last activity then, rather than reset on every read and write (a timer-wheel
/// operation per heartbeat).
struct Idle {
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    last: tokio::time::Instant,
}

impl PrefaceDeadline {
    /// `within`: the preface deadline; `idle_after`: the idle limit of HTTP/1.1 connections;
    /// `slot`: held until the connection closes.
    pub(crate) fn new(
        io: tokio::net::TcpStream,
        within: Duration,
        idle_after: Duration,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Self {
        Self {
            io,
            _slot: slot,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            seen: 0,
            head: [0; 4],
            idle: None,
            idle_after,
        }
    }

    /// Notes bytes read: the preface count, the first bytes, the idle watch.
    fn read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.deadline.is_some() {
            for (i, b) in bytes.iter().take(self.head.len().saturating_sub(self.seen)).enumerate() {
                self.head[self.seen + i] = *b;
            }
            let before = self.seen;
            self.seen += bytes.len();
            if before < self.head.len() && self.seen >= self.head.len() && is_http1(&self.head) {
                let at = tokio::time::Instant::now() + self.idle_after;
                self.idle =
                    Some(Idle { timer: Box::pin(tokio::time::sleep_until(at)), last: tokio::time::Instant::now() });
            }
            if self.seen >= PREFACE_LEN {
                self.deadline = None;
            }
        }
        self.active();
    }

    fn active(&mut self) {
        if let Some(idle) = self.idle.as_mut() {
            idle.last = tokio::time::Instant::now();
        }
    }

    /// Whether the connection has been quiet for `idle_after` (registering the waker if not).
    fn idle_expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        use std::future::Future;
        let Some(idle) = self.idle.as_mut() else { return false };
        loop {
            if idle.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = idle.last + self.idle_after;
            if due <= tokio::time::Instant::now() {
                return true;
            }
            idle.timer.as_mut().reset(due);
        }
    }
}

/// The first bytes of an HTTP/1.1 request line (every method Connect, gRPC-Web, CORS and the
/// console use); the HTTP/2 preface starts `PRI `, a TLS record 0x16.
fn is_http1(head: &[u8; 4]) -> bool {
    matches!(head, b"POST" | b"GET " | b"OPTI" | b"HEAD" | b"PUT " | b"DELE" | b"PATC")
}

impl tokio::io::AsyncRead for PrefaceDeadline {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read(&buf.filled()[before..]);
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within server.header_read_timeout_secs",
                    )));
                }
                if this.idle_expired(cx) {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "HTTP/1.1 connection idle for server.idle_timeout_secs",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl tokio::io::AsyncWrite for PrefaceDeadline {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.active();
        }
        r
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.active();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for PrefaceDeadline {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The gRPC port's connection cap: `server.max_grpc_connections`, or half the open-file limit
/// `fd_limit` when 0 (the two HTTP ports take a quarter each).
pub(crate) fn grpc_connection_cap(s: &crate::config::ServerSettings, fd_limit: Option<u64>) -> usize {
    match s.max_grpc_connections {
        0 => fd_limit.map_or(4096, |n| (n / 2).clamp(64, 262_144) as usize),
        n => n,
    }
}

/// Gives an accepted gRPC-port connection its slot under `cap` (`slots`), or closes it at once
/// when the cap is reached (logged at the first refusal and every power of two after), so a
/// flood cannot take the descriptors the store and the HTTP ports need.
pub(crate) struct GrpcAdmission {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    cap: usize,
    refused: std::sync::atomic::AtomicU64,
}

impl GrpcAdmission {
    /// Admission under `cap` open connections.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(cap.max(1))),
            cap,
            refused: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A slot for a new connection; `None` (and the connection is to be dropped) at the cap.
    pub(crate) fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                let refused = self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        listener = "grpc",
                        max = self.cap,
                        refused,
                        "connection cap reached; closing new connections (server.max_grpc_connections)"
                    );
                }
                None
            }
        }
    }
}

/// Limits of each plain HTTP listener (webhook ingress, metrics).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    pub(crate) header_read: Duration,
    idle: Duration,
    max_connections: usize,
}

impl HttpLimits {
    /// From `server.*`; an automatic cap is a quarter of the open-file limit `fd_limit`, so
    /// both HTTP ports flooded together still leave half the descriptors to gRPC and the store.
    pub(crate) fn from_settings(s: &crate::config::ServerSettings, fd_limit: Option<u64>) -> Self {
        let max_connections = match s.max_http_connections {
            0 => fd_limit.map_or(1024, |n| (n / 4).clamp(16, 65_536) as usize),
            n => n,
        };
        Self {
            header_read: Duration::from_secs(s.header_read_timeout_secs.max(1)),
            idle: Duration::from_secs(s.idle_timeout_secs.max(1)),
            max_connections,
        }
    }
}

/// Whether a connection has a request in flight, and since when it has had none.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    idle_since: std::sync::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn idle_since(&self) -> tokio::time::Instant {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection will have been idle for `idle`, if it is idle now.
    fn idle_deadline(&self, idle: Duration) -> Option<tokio::time::Instant> {
        (self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0).then(|| self.idle_since() + idle)
    }
}

/// Marks one request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The idle clock restarts when the last request in flight is answered.
        let mut since = self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        if self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            *since = tokio::time::Instant::now();
        }
    }
}

/// Serves an axum router until shutdown, with what `axum::serve` lacks against floods: at
/// most `limits.max_connections` open connections (more are accepted and closed at once, so
/// the descriptor goes back at once instead of the backlog filling), HTTP/1 headers within
/// `header_read`, and every connection closed once it has had no request in flight for
/// `idle` (before its first request too: idle sockets, partial request lines, partial HTTP/2
/// prefaces), plus HTTP/2 limits.
pub(crate) async fn serve_router(
    listener: TcpListener,
    app: axum::Router,
    what: &'static str,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read).max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(16 * 1024)
        .max_pending_accept_reset_streams(Some(20))
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let builder = Arc::new(builder);
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // Out of descriptors (or a connection reset before accept): wait, don't spin.
                tracing::warn!(%error, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    listener = what,
                    max = limits.max_connections,
                    refused,
                    "connection cap reached; closing new connections (server.max_http_connections)"
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(builder.clone(), tcp, app.clone(), limits, shutdown.clone(), slot));
    }
}

/// One HTTP connection, closed when idle for `limits.idle` or drained at shutdown.
async fn serve_connection(
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    tcp: tokio::net::TcpStream,
    app: axum::Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    use tower::ServiceExt;
    let activity = Arc::new(Activity {
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        idle_since: std::sync::Mutex::new(tokio::time::Instant::now()),
    });
    let tracked = activity.clone();
    let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let busy = InFlight::begin(&tracked);
        let app = app.clone();
        async move {
            // A request whose body trickles in (or whose handler hangs) gets the idle period
            // too, then a 408 and the connection closed.
            let r = match tokio::time::timeout(limits.idle, app.oneshot(req)).await {
                Ok(r) => r,
                Err(_) => {
                    use axum::response::IntoResponse;
                    Ok((
                        http::StatusCode::REQUEST_TIMEOUT,
                        [(http::header::CONNECTION, "close")],
                        "request not completed in time",
                    )
                        .into_response())
                }
            };
            drop(busy);
            r
        }
    });
    let conn = builder
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), hyper_util::service::TowerToHyperService::new(service));
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        // Busy: look again one idle period later.
        let wake = activity.idle_deadline(limits.idle).unwrap_or_else(|| tokio::time::Instant::now() + limits.idle);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(error) = r {
                    tracing::debug!(%error, "HTTP connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake) => {
                if activity.idle_deadline(limits.idle).is_some_and(|d| d <= tokio::time::Instant::now()) {
                    // Dropping the connection closes the socket.
                    return;
                }
            }
            _ = shutdown.wait_for(|s| *s), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}
