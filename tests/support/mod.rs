//! Shared helpers for the end-to-end tests: a real HTTP client (hyper's, over HTTP/1.1 or
//! HTTP/2 prior knowledge), bounded waits, and request bodies.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub mod ws;

/// The bound on every "this should happen" wait: generous, for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Awaits `f`, failing the test with `what` if it takes longer than [`PATIENCE`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {PATIENCE:?}: {what}"),
    }
}

/// Polls `cond` every 10 ms until it holds, up to [`PATIENCE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Installs a `tracing` subscriber writing to the test output, once per test binary
/// (`RUST_LOG` sets the filter; quiet by default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// A request body the tests send: complete (with a `Content-Length`), chunked from a list, or
/// fed from a channel.
pub enum Body {
    Full(Option<Bytes>),
    Chunks(VecDeque<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut *self {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Chunks(c) => Poll::Ready(c.pop_front().map(|b| Ok(Frame::data(b)))),
            Body::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::Chunks(c) => c.is_empty(),
            Body::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            _ => SizeHint::default(),
        }
    }
}

/// No body.
pub fn empty() -> Body {
    Body::Full(None)
}

/// A body sent with its `Content-Length`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    let b = bytes.into();
    Body::Full((!b.is_empty()).then_some(b))
}

/// A body of unknown length (chunked over HTTP/1.1), sent as these pieces.
pub fn chunked(chunks: impl IntoIterator<Item = Bytes>) -> Body {
    Body::Chunks(chunks.into_iter().collect())
}

/// A body of unknown length fed through the returned sender; dropping it ends the body.
pub fn channel() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(4);
    (tx, Body::Channel(rx))
}

/// HTTP/1.1 or HTTP/2 (prior knowledge, no TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

pub const BOTH: [Proto; 2] = [Proto::H1, Proto::H2];

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

/// One client connection.
pub struct Conn {
    sender: Sender,
    addr: SocketAddr,
    pub proto: Proto,
    task: JoinHandle<()>,
    pub local_addr: SocketAddr,
}

impl Conn {
    /// Connects to `addr` over `proto`.
    pub async fn open(addr: SocketAddr, proto: Proto) -> Conn {
        within("connecting", Conn::try_open(addr, proto))
            .await
            .expect("connecting to the test server")
    }

    /// Connects, returning the error rather than failing the test.
    pub async fn try_open(addr: SocketAddr, proto: Proto) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        let local_addr = stream.local_addr()?;
        let io = TokioIo::new(stream);
        let (sender, task) = match proto {
            Proto::H1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(std::io::Error::other)?;
                (
                    Sender::H1(sender),
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
            Proto::H2 => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(std::io::Error::other)?;
                (
                    Sender::H2(sender),
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
        };
        Ok(Conn {
            sender,
            addr,
            proto,
            task,
            local_addr,
        })
    }

    /// A request to `path` with the URI form this protocol wants.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        match self.proto {
            Proto::H1 => Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, self.addr.to_string()),
            Proto::H2 => Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.addr))
                .version(Version::HTTP_2),
        }
    }

    /// Sends `req`; the response's body is still to be read.
    pub async fn send(&mut self, req: Request<Body>) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// Sends `req` and reads the whole response, within [`PATIENCE`].
    pub async fn fetch(&mut self, req: Request<Body>) -> Reply {
        let what = format!("{} {}", req.method(), req.uri());
        within(&what, async {
            let resp = self.send(req).await.expect("sending the request");
            Reply::read(resp).await.expect("reading the response body")
        })
        .await
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Reply {
        let req = self.request(Method::GET, path).body(empty()).unwrap();
        self.fetch(req).await
    }

    /// `POST path` with `body`.
    pub async fn post(&mut self, path: &str, body: Body) -> Reply {
        let req = self.request(Method::POST, path).body(body).unwrap();
        self.fetch(req).await
    }

    /// A handle for sending requests concurrently on this HTTP/2 connection.
    pub fn h2_sender(&self) -> hyper::client::conn::http2::SendRequest<Body> {
        match &self.sender {
            Sender::H2(s) => s.clone(),
            Sender::H1(_) => panic!("h2_sender on an HTTP/1.1 connection"),
        }
    }

    /// Whether the connection has ended (closed by either side).
    pub fn is_closed(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the connection has ended.
    pub async fn closed(&mut self) {
        within("the connection to close", &mut self.task)
            .await
            .expect("the connection task");
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub async fn read(resp: Response<Incoming>) -> hyper::Result<Reply> {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET path` on a fresh connection.
pub async fn get(addr: SocketAddr, proto: Proto, path: &str) -> Reply {
    Conn::open(addr, proto).await.get(path).await
}

/// Reads a whole response body, returning whether it ended cleanly.
pub async fn body_ends_cleanly(resp: Response<Incoming>) -> bool {
    let mut body = resp.into_body();
    loop {
        match body.frame().await {
            None => return body.is_end_stream(),
            Some(Ok(_)) => {}
            Some(Err(_)) => return false,
        }
    }
}

/// A raw TCP exchange: writes `request`, then reads until the server closes or `limit`
/// passes; returns what was read and whether the server closed.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connecting");
    if !request.is_empty() {
        stream
            .write_all(request)
            .await
            .expect("writing the request");
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// Counts live handler invocations: each [`Live::enter`] guard counts one until dropped, so
/// a handler that leaks (is never dropped, or never returns) keeps the count up. Also keeps
/// the high-water mark, to check a bound on concurrency.
#[derive(Clone, Default)]
pub struct Live {
    inner: std::sync::Arc<LiveInner>,
}

#[derive(Default)]
struct LiveInner {
    now: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    total: std::sync::atomic::AtomicUsize,
}

/// One live handler, counted until dropped.
pub struct LiveGuard(Live);

impl Live {
    pub fn new() -> Live {
        Live::default()
    }

    /// Counts one more live handler until the guard is dropped.
    pub fn enter(&self) -> LiveGuard {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.inner.now.fetch_add(1, SeqCst) + 1;
        self.inner.peak.fetch_max(now, SeqCst);
        self.inner.total.fetch_add(1, SeqCst);
        LiveGuard(self.clone())
    }

    /// Handlers alive right now.
    pub fn now(&self) -> usize {
        self.inner.now.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most handlers ever alive at once.
    pub fn peak(&self) -> usize {
        self.inner.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Handlers ever entered.
    pub fn total(&self) -> usize {
        self.inner.total.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0
            .inner
            .now
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One HTTP/1.1 response parsed from raw bytes.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..])
    }
}

/// Parses every complete HTTP/1.x response in `bytes` (bodies framed by `Content-Length` or
/// chunked; `head` says the request was HEAD). Returns the responses and whatever trailing
/// bytes did not form a complete response, so a test can assert how many responses one
/// connection got and that nothing else came.
pub fn parse_responses(mut bytes: &[u8], head: bool) -> (Vec<RawResponse>, Vec<u8>) {
    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
    let mut out = Vec::new();
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let raw_head = &bytes[..end];
        let mut lines = raw_head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let status_line = lines.next().unwrap_or(b"");
        let Some(status) = status_line
            .strip_prefix(b"HTTP/1.")
            .and_then(|s| s.get(2..5))
            .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
        else {
            break;
        };
        // Header values may hold non-UTF-8 bytes: keep them as bytes.
        let headers: Vec<(String, Vec<u8>)> = lines
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                let name = String::from_utf8_lossy(&line[..colon]).trim().to_owned();
                Some((name, line[colon + 1..].trim_ascii().to_vec()))
            })
            .collect();
        let rest = &bytes[end + 4..];
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let no_body = head || status == 204 || status == 304 || (100..200).contains(&status);
        let (body, used) = if no_body {
            (Vec::new(), 0)
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            let mut pos = 0;
            let mut complete = false;
            while let Some(line_end) = find(&rest[pos..], b"\r\n") {
                let size_text = String::from_utf8_lossy(&rest[pos..pos + line_end]).into_owned();
                let Ok(size) =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                else {
                    break;
                };
                pos += line_end + 2;
                if size == 0 {
                    // Trailers, then an empty line.
                    match find(&rest[pos..], b"\r\n") {
                        Some(0) => {
                            pos += 2;
                            complete = true;
                        }
                        Some(_) => {
                            if let Some(t) = find(&rest[pos..], b"\r\n\r\n") {
                                pos += t + 4;
                                complete = true;
                            }
                        }
                        None => {}
                    }
                    break;
                }
                if rest.len() < pos + size + 2 {
                    break;
                }
                body.extend_from_slice(&rest[pos..pos + size]);
                pos += size + 2;
            }
            if !complete {
                break;
            }
            (body, pos)
        } else if let Some(len) = header("content-length") {
            let Ok(len) = len.parse::<usize>() else { break };
            if rest.len() < len {
                break;
            }
            (rest[..len].to_vec(), len)
        } else {
            // Delimited by the connection closing: the rest is the body.
            (rest.to_vec(), rest.len())
        };
        out.push(RawResponse {
            status,
            headers,
            body,
        });
        bytes = &rest[used..];
    }
    (out, bytes.to_vec())
}

/// Every `tracing` event of amphi's crates in this test binary, one line each: `LEVEL target: message k=v ...`.
/// [`capture_logs`] installs the recorder as the global subscriber (instead of
/// [`init_tracing`]); tests that look for their own lines should use paths of their own, since
/// the tests of one binary run at once.
#[derive(Clone)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();

/// Records every `tracing` event from now on (all levels, every target) and returns the
/// record; idempotent within a test binary.
pub fn capture_logs() -> Logs {
    LOGS.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let logs = Logs(Default::default());
        let subscriber = tracing_subscriber::registry().with(LogLayer(logs.clone()));
        tracing::subscriber::set_global_default(subscriber)
            .expect("capture_logs: another tracing subscriber was installed first");
        logs
    })
    .clone()
}

impl Logs {
    /// The lines that contain every one of `needles`.
    pub fn matching(&self, needles: &[&str]) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
            .collect()
    }

    /// Waits (up to [`PATIENCE`]) for a line containing every one of `needles`, and returns it.
    pub async fn wait_for(&self, needles: &[&str]) -> String {
        let what = format!("a log line with {needles:?}");
        within(&what, async {
            loop {
                if let Some(l) = self.matching(needles).into_iter().next() {
                    return l;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

struct LogLayer(Logs);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogLayer {
    // amphi's own events only: hyper's and h2's trace events would flood the record.
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if meta.target().starts_with("amphi") {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        meta.target().starts_with("amphi")
    }

    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.0.push_str(&format!(" {value}"));
                } else {
                    self.0.push_str(&format!(" {}={value}", field.name()));
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0.push_str(&format!(" {value:?}"));
                } else {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
        }
        let meta = event.metadata();
        let mut line = Line(format!("{} {}:", meta.level(), meta.target()));
        event.record(&mut line);
        self.0 .0.lock().unwrap().push(line.0);
    }
}

/// What the fault tests observe from inside their handlers: events they say, live handlers,
/// and each request's cancellation token by path.
#[derive(Clone)]
pub struct Probe {
    pub events: mpsc::UnboundedSender<String>,
    pub live: Live,
    /// The cancellation token of every request, by the path it served.
    pub tokens: std::sync::Arc<std::sync::Mutex<Vec<(String, amphi::CancellationToken)>>>,
}

impl Probe {
    pub fn new() -> (Probe, mpsc::UnboundedReceiver<String>) {
        let (events, rx) = mpsc::unbounded_channel();
        let probe = Probe {
            events,
            live: Live::new(),
            tokens: std::sync::Arc::default(),
        };
        (probe, rx)
    }

    pub fn say(&self, what: impl Into<String>) {
        let _ = self.events.send(what.into());
    }

    pub fn token(&self, path: &str, token: &amphi::CancellationToken) {
        self.tokens
            .lock()
            .unwrap()
            .push((path.to_owned(), token.clone()));
    }

    pub fn token_of(&self, path: &str) -> amphi::CancellationToken {
        let tokens = self.tokens.lock().unwrap();
        let found = tokens.iter().rev().find(|(p, _)| p == path);
        found.expect("the handler recorded its token").1.clone()
    }
}

/// Says `async dropped` when the async handler's future is dropped before it finished.
pub struct Dropped(pub Probe);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.say("async dropped");
    }
}

/// The next event must be `want`.
pub async fn expect(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) {
    let got = within(&format!("event {want:?}"), rx.recv()).await;
    assert_eq!(got.as_deref(), Some(want));
}

/// Nothing is left behind: no live handler, no blocking slot taken, no request in flight.
pub async fn assert_nothing_leaks(serving: &amphi::Serving, probe: &Probe) {
    eventually(
        "every handler to be gone, every slot back, nothing in flight",
        || {
            probe.live.now() == 0
                && serving.blocking_pool().in_flight() == 0
                && serving.in_flight() == 0
        },
    )
    .await;
}

/// The `mixed` example, built by `cargo test` next to this test binary (or built now).
pub fn mixed_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in <target>/<profile>/deps");
    let bin = profile_dir.join("examples").join("mixed");
    if !bin.exists() {
        // `cargo test --test NAME` does not build examples; build it the same way.
        let target_dir = profile_dir.parent().expect("<target>/<profile>");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "mixed", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .env("CARGO_TARGET_DIR", target_dir)
            .status()
            .expect("running cargo build --example mixed");
        assert!(status.success(), "building the mixed example failed");
    }
    bin
}
