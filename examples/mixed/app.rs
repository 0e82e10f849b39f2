//! The `mixed` app: one sync app mounted at `/sync`, one async app mounted at `/async`.
//!
//! `main.rs` parses the flags and serves it; the end-to-end tests in `tests/` include this
//! file, so they test exactly what the example serves.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amphi::prelude::*;
use amphi::server::metrics::Metrics;
use amphi::BoxFuture;
use bytes::Bytes;
use clap::error::{ContextKind, ContextValue};
use clap::{CommandFactory, Parser};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

/// What the example serves with: its flags, parsed.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// `--bind ADDR`
    pub(crate) bind: String,
    /// `--blocking-threads N`
    pub(crate) blocking_threads: usize,
    /// `--queue-timeout-ms MS`
    pub(crate) queue_timeout: Duration,
    /// `--max-body BYTES`
    pub(crate) max_body: u64,
    /// `--header-timeout-ms MS`
    pub(crate) header_timeout: Duration,
    /// `--grace-ms MS`
    pub(crate) grace: Duration,
    /// `--workers N` and the recycling flags; `None` serves in this process.
    pub(crate) workers: Option<amphi::server::Workers>,
    /// `--fail-startup` (hidden, for tests): the async app's lifespan startup fails.
    pub(crate) fail_startup: bool,
    /// `--drain-delay-ms MS`
    pub(crate) drain_delay: Duration,
    /// `--uds PATH`: a unix socket instead of `--bind`.
    pub(crate) uds: Option<PathBuf>,
    /// `--fd N`: an inherited listening socket instead of `--bind`.
    pub(crate) fd: Option<i32>,
    /// `--reuse-port`
    pub(crate) reuse_port: bool,
    /// `--tls-cert PATH` and `--tls-key PATH`
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    /// `--tls-client-ca PATH`: client certificates are required, signed by these CAs.
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// `--trusted-proxies LIST`
    pub(crate) trusted_proxies: amphi::server::TrustedProxies,
    /// `--root-path PREFIX`
    pub(crate) root_path: Option<String>,
    /// `--no-metrics`
    pub(crate) no_metrics: bool,
    /// `--flatten-writes`
    pub(crate) flatten_writes: bool,
}

/// The command line, as clap reads it: durations in whole milliseconds, each default from the
/// server's own.
#[derive(Debug, clap::Parser)]
#[command(
    name = "mixed",
    about = "The amphi demo: a blocking (sync) app at /sync and an async app at /async, on one port.",
    after_help = "Logs go to stderr (RUST_LOG sets the filter; the access log is the amphi::access \
                  target). SIGINT or SIGTERM drains in-flight requests and exits 0.",
    override_usage = "mixed [--bind ADDR | --uds PATH | --fd N] [--reuse-port] \
                      [--tls-cert PATH --tls-key PATH [--tls-client-ca PATH]] \
                      [--trusted-proxies LIST] [--root-path PREFIX] [--blocking-threads N] \
                      [--queue-timeout-ms MS] [--max-body BYTES] [--header-timeout-ms MS] \
                      [--grace-ms MS] [--drain-delay-ms MS] [--workers N [--max-requests N] \
                      [--max-requests-jitter N] [--max-lifetime-secs SECS] [--max-rss-mb MB] \
                      [--heartbeat-timeout-ms MS]] [--no-metrics] [--flatten-writes]"
)]
struct Flags {
    /// The address to listen on (port 0: any free port; the chosen one is printed)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    bind: String,
    /// Listen on a unix socket at this path (which must not exist) instead of --bind
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    uds: Option<PathBuf>,
    /// Serve the listening socket inherited at this file descriptor instead of --bind (a socket passed by systemd socket activation, LISTEN_FDS, is used without it)
    #[arg(long, value_name = "N")]
    fd: Option<i32>,
    /// Set SO_REUSEPORT on the --bind socket, so several instances share the port
    #[arg(long)]
    reuse_port: bool,
    /// Serve HTTPS (ALPN h2 and http/1.1) with this PEM certificate chain; SIGHUP reloads it
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by a CA in this PEM bundle (mutual TLS)
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Believe Forwarded and X-Forwarded-* headers from these peers: comma-separated addresses, CIDR ranges, `unix` (none by default)
    #[arg(long, value_name = "LIST", value_parser = trusted_proxies)]
    trusted_proxies: Option<amphi::server::TrustedProxies>,
    /// The prefix a proxy serves the app under and strips (prepended to every root_path)
    #[arg(long, value_name = "PREFIX", value_parser = root_path)]
    root_path: Option<String>,
    /// The most sync requests running at once (including while they stream their response)
    #[arg(
        long,
        value_name = "N",
        default_value_t = amphi::server::DEFAULT_BLOCKING_THREADS,
        value_parser = at_least_one,
    )]
    blocking_threads: usize,
    /// How long a sync request waits for a blocking slot before the server answers 503
    #[arg(long, value_name = "MS", default_value_t = millis(amphi::server::DEFAULT_QUEUE_TIMEOUT))]
    queue_timeout_ms: u64,
    /// The largest request body accepted, in bytes (413 past it)
    #[arg(long, value_name = "BYTES", default_value_t = amphi::server::DEFAULT_MAX_BODY_BYTES)]
    max_body: u64,
    /// How long a client may take to send a request head, and an idle connection may stay open (0 disables it)
    #[arg(long, value_name = "MS", default_value_t = millis(amphi::server::DEFAULT_HEADER_READ_TIMEOUT))]
    header_timeout_ms: u64,
    /// How long in-flight requests may run after SIGINT or SIGTERM before they are cut
    #[arg(long, value_name = "MS", default_value_t = millis(amphi::server::DEFAULT_GRACE_PERIOD))]
    grace_ms: u64,
    /// Worker processes sharing the port under a supervisor (0: serve in this process)
    #[arg(long, value_name = "N", default_value_t = 0)]
    workers: usize,
    /// With --workers: recycle a worker after this many requests (0: never)
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_requests: u64,
    /// With --workers: up to this many more requests per worker, at random, before its recycle
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_requests_jitter: u64,
    /// With --workers: recycle a worker after it lived this long (0: never)
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    max_lifetime_secs: u64,
    /// With --workers: recycle a worker whose resident memory passes this (0: never)
    #[arg(long, value_name = "MB", default_value_t = 0)]
    max_rss_mb: u64,
    /// With --workers: kill and replace a worker whose heartbeat stops for this long
    #[arg(long, value_name = "MS", default_value_t = millis(amphi::server::DEFAULT_HEARTBEAT_TIMEOUT))]
    heartbeat_timeout_ms: u64,
    /// Make the async app's lifespan startup fail (for tests)
    #[arg(long, hide = true)]
    fail_startup: bool,
    /// How long to keep accepting after SIGTERM while /healthz answers 503, before draining
    #[arg(long, value_name = "MS", default_value_t = millis(amphi::server::DEFAULT_DRAIN_DELAY))]
    drain_delay_ms: u64,
    /// Serve without metrics, request spans and x-request-id (and without /metrics and /_amphi/report)
    #[arg(long)]
    no_metrics: bool,
    /// Send each HTTP/1.1 response head and body with one write from one buffer (faster for small responses, slower for large ones)
    #[arg(long)]
    flatten_writes: bool,
}

fn trusted_proxies(value: &str) -> Result<amphi::server::TrustedProxies, String> {
    value
        .parse()
        .map_err(|e: amphi::server::ParseProxiesError| e.to_string())
}

fn root_path(value: &str) -> Result<String, String> {
    if value.is_empty()
        || (value.starts_with('/') && !value.contains(['?', '#']) && !value.contains("//"))
    {
        Ok(value.to_owned())
    } else {
        Err("must start with '/', without '?', '#' or an empty segment".into())
    }
}

fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

const fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Options {
    /// Parses the flags (without the program name).
    ///
    /// # Errors
    ///
    /// A flag that is unknown, lacks its value or has a bad one; also `--help` (`-h`), whose
    /// "error" is the help text (`clap::Error::exit` prints it to stdout and exits 0, and the
    /// others to stderr with the usage, exiting 2).
    pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Options, clap::Error> {
        let args = std::iter::once(OsString::from("mixed")).chain(args);
        let flags = Flags::try_parse_from(args).map_err(|mut e| {
            // clap shows the usage under some errors only (an unknown flag, not a bad value):
            // show it under every one.
            if e.use_stderr() && e.get(ContextKind::Usage).is_none() {
                let usage = Flags::command().render_usage();
                e.insert(ContextKind::Usage, ContextValue::StyledStr(usage));
            }
            e
        })?;
        Ok(Options {
            bind: flags.bind,
            blocking_threads: flags.blocking_threads,
            queue_timeout: Duration::from_millis(flags.queue_timeout_ms),
            max_body: flags.max_body,
            header_timeout: Duration::from_millis(flags.header_timeout_ms),
            grace: Duration::from_millis(flags.grace_ms),
            workers: (flags.workers > 0).then(|| {
                let mut w = amphi::server::Workers::new(flags.workers)
                    .max_requests(flags.max_requests, flags.max_requests_jitter)
                    .heartbeat_timeout(Duration::from_millis(flags.heartbeat_timeout_ms));
                if flags.max_lifetime_secs > 0 {
                    w = w.max_lifetime(Duration::from_secs(flags.max_lifetime_secs));
                }
                if flags.max_rss_mb > 0 {
                    w = w.max_rss_bytes(flags.max_rss_mb * 1024 * 1024);
                }
                w
            }),
            fail_startup: flags.fail_startup,
            drain_delay: Duration::from_millis(flags.drain_delay_ms),
            uds: flags.uds,
            fd: flags.fd,
            reuse_port: flags.reuse_port,
            tls: flags.tls_cert.zip(flags.tls_key),
            tls_client_ca: flags.tls_client_ca,
            trusted_proxies: flags.trusted_proxies.unwrap_or_default(),
            root_path: flags.root_path,
            no_metrics: flags.no_metrics,
            flatten_writes: flags.flatten_writes,
        })
    }

    /// The server these options describe, serving [`router`]; unless `--no-metrics`, with
    /// metrics and request spans, and `/metrics` (Prometheus) and `/_amphi/report` (the
    /// migration report) mounted.
    pub(crate) fn server(&self) -> Server {
        let state = State::new();
        if self.fail_startup {
            state.insert(FailStartup);
        }
        let metrics = (!self.no_metrics).then(Metrics::new);
        let router = match &metrics {
            Some(m) => router()
                .mount_async("/metrics", m.handler())
                .mount_async("/_amphi/report", m.report_handler()),
            None => router(),
        };
        let mut server = Server::new(router)
            .state(state)
            .blocking_threads(self.blocking_threads)
            .queue_timeout(self.queue_timeout)
            .max_body_bytes(self.max_body)
            .header_read_timeout(Some(self.header_timeout))
            .grace_period(self.grace)
            .drain_delay(self.drain_delay)
            .reuse_port(self.reuse_port)
            .flatten_writes(self.flatten_writes)
            .trusted_proxies(self.trusted_proxies.clone());
        if let Some(prefix) = &self.root_path {
            server = server.root_path(prefix);
        }
        if let Some((cert, key)) = &self.tls {
            let mut tls = amphi::server::tls::TlsConfig::new(cert, key).reload_on_sighup(true);
            if let Some(ca) = &self.tls_client_ca {
                tls = tls.client_ca(ca, amphi::server::tls::ClientAuth::Required);
            }
            server = server.tls(tls);
        }
        if let Some(w) = &self.workers {
            server = server.workers(w.clone());
        }
        match &metrics {
            Some(m) => server.metrics(m).request_spans(true),
            None => server,
        }
    }
}

/// In the app state when the async app's lifespan startup is to fail (`--fail-startup`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailStartup;

/// The app's counters, created by the async app's lifespan startup and shared through the
/// lifespan state with both apps.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Blocking `/sync/cancellable` calls that stopped because their client went away.
    pub(crate) cancelled_sync: AtomicU64,
    /// Calls of `/async/call-sync`.
    pub(crate) call_sync: AtomicU64,
}

/// The whole app: the sync app at `/sync`, the async app at `/async`, the health endpoint
/// at `/healthz` (503 once draining), 404 elsewhere.
pub(crate) fn router() -> Router {
    Router::new()
        .mount_sync("/sync", sync_fn(sync_app).websocket(sync_ws))
        .mount_async("/async", AsyncApp::new())
        .mount_async("/healthz", amphi::server::Health::new())
}

/// A query parameter parsed as a number, or `default`.
fn param(query: &str, name: &str, default: u64) -> u64 {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

/// `GET /info` for both apps: the request as the handler sees it.
fn info_json(scope: &HttpScope) -> Bytes {
    let headers: Vec<[String; 2]> = scope
        .headers()
        .iter()
        .map(|(k, v)| {
            [
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ]
        })
        .collect();
    let value = serde_json::json!({
        "method": scope.method().as_str(),
        "path": scope.path(),
        "root_path": scope.root_path(),
        "raw_path": scope.raw_path(),
        "query_string": scope.query_string(),
        "http_version": scope.http_version(),
        "scheme": scope.scheme(),
        "client": scope.client().map(|a| a.to_string()),
        "host": scope
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| scope.uri().authority().map(|a| a.as_str())),
        "client_cert_bytes": scope
            .extensions()
            .get::<amphi::server::tls::ClientCertificate>()
            .map(|c| c.leaf().len()),
        "server": scope.server().map(|a| a.to_string()),
        "headers": headers,
        "pid": std::process::id(),
        // The runtime's worker threads: a worker process takes its share of the cores.
        "runtime_threads": tokio::runtime::Handle::try_current()
            .ok()
            .map(|h| h.metrics().num_workers()),
    });
    Bytes::from(value.to_string())
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

fn text_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h
}

fn counters(state: &State) -> Arc<Counters> {
    // Startup puts them there; a server without the async app's lifespan still works.
    state.get_or_insert_with(|| Arc::new(Counters::default()))
}

// ---------------------------------------------------------------------------------------------
// The sync app: plain blocking code.

fn sync_response(status: StatusCode, headers: HeaderMap, body: SyncBody) -> SyncResponse {
    let mut r = http::Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

fn sync_text(status: StatusCode, text: impl Into<Bytes>) -> SyncResponse {
    sync_response(status, text_headers(), SyncBody::full(text.into()))
}

fn sync_app(req: SyncRequest) -> SyncResponse {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match (get, req.method(), req.path()) {
        (true, _, "/hello") => sync_text(StatusCode::OK, "hello from sync"),
        (_, &Method::POST, "/echo") => sync_echo(req),
        (true, _, "/stream") => {
            let n = param(req.query_string(), "chunks", 1);
            let size = param(req.query_string(), "size", 1) as usize;
            let chunk = Bytes::from(vec![b'x'; size]);
            let body = SyncBody::chunks((0..n).map(move |_| chunk.clone()));
            sync_response(StatusCode::OK, text_headers(), body)
        }
        (true, _, "/sleep") => {
            let ms = param(req.query_string(), "ms", 0);
            std::thread::sleep(Duration::from_millis(ms));
            sync_text(StatusCode::OK, format!("slept {ms} ms"))
        }
        (true, _, "/panic") => panic!("the sync handler panicked on purpose"),
        (true, _, "/info") => sync_response(
            StatusCode::OK,
            json_headers(),
            SyncBody::full(info_json(req.scope())),
        ),
        (true, _, "/call-async") => sync_call_async(),
        (true, _, "/cancellable") => sync_cancellable(&req),
        _ => sync_text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Streams the request body back, chunk by chunk as it arrived: the `Bytes` pass through
/// without a copy. It reads the first chunk before answering, so a body over the server's
/// limit from the start is a 413 rather than a response cut short.
fn sync_echo(req: SyncRequest) -> SyncResponse {
    let (_scope, mut body) = req.into_parts();
    let first = match body.chunk() {
        Ok(first) => first,
        // A body over the limit: SyncToAsync answers 413 for us, whatever we return here.
        Err(e) => {
            return sync_text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}\n"),
            )
        }
    };
    let rest = std::iter::from_fn(move || body.chunk().transpose());
    let chunks = first.map(Ok).into_iter().chain(rest);
    sync_response(
        StatusCode::OK,
        HeaderMap::new(),
        SyncBody::try_chunks(chunks),
    )
}

/// `GET /sync/call-async`: blocking code calling an async function.
fn sync_call_async() -> SyncResponse {
    let answer = async_to_sync(async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        42
    });
    match answer {
        Ok(n) => sync_text(StatusCode::OK, format!("async result: {n}")),
        Err(e) => sync_text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// `GET /sync/cancellable?ms=N`: blocking work in 1 ms steps that stops when the client goes.
fn sync_cancellable(req: &SyncRequest) -> SyncResponse {
    let ms = param(req.query_string(), "ms", 1000);
    let token = req.cancellation();
    for _ in 0..ms {
        if token.wait_timeout(Duration::from_millis(1)) {
            counters(req.state())
                .cancelled_sync
                .fetch_add(1, Ordering::SeqCst);
            return sync_text(StatusCode::OK, "cancelled\n");
        }
    }
    sync_text(StatusCode::OK, format!("worked {ms} ms"))
}

/// `/sync/ws`: a blocking websocket echo; the text `close` closes it with 1000. The socket
/// holds a blocking slot for as long as it is open.
fn sync_ws(req: SyncWebSocketRequest) -> std::io::Result<()> {
    if req.scope().path() != "/ws" {
        return req.deny();
    }
    let ws = req.accept()?;
    for message in &ws {
        match message? {
            WebSocketData::Text(t) if t == "close" => return ws.close(1000, "bye"),
            data => ws.send(data)?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The async app: the raw protocol, so the echo can answer 413 before it starts.

thread_local! {
    /// A `!Send` resource: it lives on the app-wide thread-sensitive context's thread.
    static CALLS: std::rc::Rc<std::cell::Cell<u64>> = std::rc::Rc::new(std::cell::Cell::new(0));
}

/// The async app, written as a handler type rather than with `asgi_fn`: each scope gets the
/// future of its own function, boxed once, rather than one future sized for all of them.
struct AsyncApp {
    /// One thread-sensitive context for the whole app: every `call-sync` job runs on its one
    /// thread, where the `!Send` counter lives.
    app_thread: ThreadSensitive,
}

impl AsyncApp {
    fn new() -> AsyncApp {
        AsyncApp {
            app_thread: ThreadSensitive::new(),
        }
    }

    fn start(
        &self,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        match scope {
            Scope::Http(scope) => {
                Box::pin(async_http(scope, receive, send, self.app_thread.clone()))
            }
            Scope::Lifespan(l) => Box::pin(async_lifespan(l, receive, send)),
            Scope::WebSocket(scope) => {
                Box::pin(async_ws(WebSocketRequest::new(scope, receive, send)))
            }
            // Scopes this app does not know: returning without answering.
            _ => Box::pin(async { Ok(()) }),
        }
    }
}

impl AsyncHandler for AsyncApp {
    fn call(
        &self,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.start(scope, receive, send)
    }

    // The future borrows nothing from the app: the server need not box it again.
    fn call_owned(
        self: Arc<Self>,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        self.start(scope, receive, send)
    }
}

async fn async_lifespan(
    scope: LifespanScope,
    mut receive: Receiver,
    mut send: Sender,
) -> Result<(), Error> {
    loop {
        match receive.receive().await? {
            Event::Startup => {
                if scope.state().get::<FailStartup>().is_some() {
                    let message = "the async app was asked to fail its startup".to_owned();
                    return send.send(Message::StartupFailed { message }).await;
                }
                scope.state().insert(Arc::new(Counters::default()));
                send.send(Message::StartupComplete).await?;
            }
            Event::Shutdown => return send.send(Message::ShutdownComplete).await,
            _ => {}
        }
    }
}

// This and `async_http` return an `async move` block instead of being `async fn`s: an `async
// fn` lays out its arguments twice in its future (as arguments, and as the locals they move
// into), and every request allocates and moves that future.
fn respond(
    send: &mut Sender,
    status: StatusCode,
    headers: HeaderMap,
    body: impl Into<Bytes>,
) -> impl Future<Output = Result<(), Error>> + '_ {
    let body = body.into();
    async move {
        send.send(Message::start(status, headers)).await?;
        send.send(Message::body(body, false)).await
    }
}

#[allow(clippy::manual_async_fn)] // on purpose: see `respond`
fn async_http(
    scope: HttpScope,
    receive: Receiver,
    mut send: Sender,
    app_thread: ThreadSensitive,
) -> impl Future<Output = Result<(), Error>> {
    async move {
        let get = matches!(*scope.method(), Method::GET | Method::HEAD);
        let query = scope.query_string();
        match (get, scope.method(), scope.path()) {
            (true, _, "/hello") => {
                respond(
                    &mut send,
                    StatusCode::OK,
                    text_headers(),
                    "hello from async",
                )
                .await
            }
            (_, &Method::POST, "/echo") => async_echo(receive, send).await,
            (true, _, "/stream") => {
                let n = param(query, "chunks", 1);
                let chunk = Bytes::from(vec![b'x'; param(query, "size", 1) as usize]);
                send.send(Message::start(StatusCode::OK, text_headers()))
                    .await?;
                for _ in 0..n {
                    send.send(Message::body(chunk.clone(), true)).await?;
                }
                send.send(Message::body(Bytes::new(), false)).await
            }
            (true, _, "/sleep") => {
                let ms = param(query, "ms", 0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                respond(
                    &mut send,
                    StatusCode::OK,
                    text_headers(),
                    format!("slept {ms} ms"),
                )
                .await
            }
            (true, _, "/panic") => panic!("the async handler panicked on purpose"),
            (true, _, "/info") => {
                respond(&mut send, StatusCode::OK, json_headers(), info_json(&scope)).await
            }
            (true, _, "/call-sync") => {
                counters(scope.state())
                    .call_sync
                    .fetch_add(1, Ordering::Relaxed);
                let (thread, count) = sync_to_async(|| {
                    let count = CALLS.with(|c| {
                        c.set(c.get() + 1);
                        c.get()
                    });
                    let thread = std::thread::current();
                    (thread.name().unwrap_or("unnamed").to_owned(), count)
                })
                .thread_sensitive(&app_thread)
                .await?;
                let body = serde_json::json!({ "thread": thread, "count": count }).to_string();
                respond(&mut send, StatusCode::OK, json_headers(), body).await
            }
            (true, _, "/counters") => {
                let c = counters(scope.state());
                let body = serde_json::json!({
                    "cancelled_sync": c.cancelled_sync.load(Ordering::SeqCst),
                    "call_sync": c.call_sync.load(Ordering::Relaxed),
                })
                .to_string();
                respond(&mut send, StatusCode::OK, json_headers(), body).await
            }
            _ => {
                respond(
                    &mut send,
                    StatusCode::NOT_FOUND,
                    text_headers(),
                    "not found\n",
                )
                .await
            }
        }
    }
}

/// Streams the request body back as it arrives. A body over the limit before the first chunk
/// is returned as the error, so the server answers 413.
async fn async_echo(mut receive: Receiver, mut send: Sender) -> Result<(), Error> {
    let mut started = false;
    loop {
        match receive.receive().await? {
            Event::Request { body, more_body } => {
                if !started {
                    send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                        .await?;
                    started = true;
                }
                send.send(Message::body(body, more_body)).await?;
                if !more_body {
                    return Ok(());
                }
            }
            Event::Disconnect => return Ok(()),
            _ => {}
        }
    }
}

/// `/async/ws`: a websocket echo; the text `close` closes it with 1000.
async fn async_ws(req: WebSocketRequest) -> Result<(), Error> {
    if req.scope().path() != "/ws" {
        return req.deny().await;
    }
    let mut ws = req.accept().await?;
    while let Some(data) = ws.recv().await? {
        match data {
            WebSocketData::Text(t) if t == "close" => return ws.close(1000, "bye").await,
            data => ws.send(data).await?,
        }
    }
    Ok(())
}
