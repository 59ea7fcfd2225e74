//! A scripted axum server on 127.0.0.1:0 for the HTTP plumbing tests: pops one canned
//! response per request and records each arrival time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

/// One canned response.
#[derive(Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub(crate) fn status(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: String::new(), delay: Duration::ZERO }
    }
    pub(crate) fn body(mut self, b: &str) -> Self {
        self.body = b.to_string();
        self
    }
    pub(crate) fn header(mut self, k: &'static str, v: &str) -> Self {
        self.headers.push((k, v.to_string()));
        self
    }
    pub(crate) fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

#[derive(Default)]
struct State {
    script: Mutex<VecDeque<Reply>>,
    arrivals: Mutex<Vec<std::time::Instant>>,
}

/// A running server.
#[derive(Clone)]
pub(crate) struct TestServer {
    pub url: url::Url,
    state: Arc<State>,
}

impl TestServer {
    /// Starts with a script; when it runs out every request gets 200 `{}`.
    pub(crate) async fn start(script: Vec<Reply>) -> Self {
        let state = Arc::new(State { script: Mutex::new(script.into()), ..Default::default() });
        let st = state.clone();
        let app = Router::new().fallback(move || {
            let st = st.clone();
            async move {
                st.arrivals.lock().unwrap().push(std::time::Instant::now());
                let r = st.script.lock().unwrap().pop_front().unwrap_or_else(|| Reply::status(200).body("{}"));
                if !r.delay.is_zero() {
                    tokio::time::sleep(r.delay).await;
                }
                let mut h = HeaderMap::new();
                for (k, v) in &r.headers {
                    h.insert(*k, v.parse().unwrap());
                }
                (StatusCode::from_u16(r.status).unwrap(), h, r.body).into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url: url::Url::parse(&format!("http://{addr}/x")).unwrap(), state }
    }

    /// Requests received so far.
    pub(crate) fn count(&self) -> usize {
        self.state.arrivals.lock().unwrap().len()
    }

    /// Arrival times, in order.
    pub(crate) fn arrivals(&self) -> Vec<std::time::Instant> {
        let mut a = self.state.arrivals.lock().unwrap().clone();
        a.sort();
        a
    }
}
