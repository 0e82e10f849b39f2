//! The server builder: its settings and their defaults, and what it does before it listens
//! (compile the routes, run lifespan startup).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use amphi_core::{AsyncHandler, State};
use amphi_sync_to_async::BlockingPool;
use tokio::net::{TcpListener, ToSocketAddrs, UnixListener};

use crate::accept::{Origins, Prepared};
use crate::app::App;
use crate::conn::{ConnSettings, Counters};
use crate::exchange::BodyRate;
use crate::health::ServerStatus;
use crate::lifespan::Lifespans;
use crate::listener::{listen_tcp, Listener, ListenerKind};
use crate::observe::Observe;
use crate::proxy::TrustedProxies;
use crate::response_rate::ResponseRate;
use crate::router::Compile;
use crate::serving::Serving;
use crate::ws::{Sessions, WebSocketLimits};
use crate::{Router, ServeError};

/// The default limit on blocking work in flight: [`Server::blocking_threads`].
pub const DEFAULT_BLOCKING_THREADS: usize = 64;
/// The default wait for a blocking slot: [`Server::queue_timeout`]; the same as a
/// [`BlockingPool`]'s own default.
pub use amphi_sync_to_async::DEFAULT_QUEUE_TIMEOUT;
/// The default request body limit: [`Server::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// The default header-read timeout: [`Server::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default slowest rate a request body may arrive at: [`Server::min_body_rate`].
pub const DEFAULT_MIN_BODY_RATE: u64 = 240;
/// The default time before [`Server::min_body_rate`] applies.
pub const DEFAULT_BODY_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// The default slowest rate a client may take a streamed response at:
/// [`Server::min_response_rate`].
pub const DEFAULT_MIN_RESPONSE_RATE: u64 = 240;
/// The default time a streamed response may wait for its client before
/// [`Server::min_response_rate`] applies.
pub const DEFAULT_RESPONSE_GRACE_PERIOD: Duration = Duration::from_secs(5);

/// The default of [`Server::response_stall_timeout`]: 60 s, as nginx's `send_timeout`.
pub const DEFAULT_RESPONSE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The default limit on the number of request headers: [`Server::max_headers`].
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// The default limit on the size of a request head: [`Server::max_header_bytes`].
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// The default limit on open connections: [`Server::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The default drain deadline at shutdown: [`Server::grace_period`].
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// The default time the server keeps accepting after shutdown starts: [`Server::drain_delay`].
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::ZERO;

/// A server for one [`Router`]: HTTP/1.1 and HTTP/2 (h2c with prior knowledge) on one port,
/// over TCP or a unix socket, with the limits a production gateway needs.
///
/// `Server::new(router)` takes the defaults; each setter documents its default and what a
/// client sees when the limit is hit. [`bind`](Server::bind) runs lifespan startup, then
/// listens and serves in the background, returning a [`Serving`] handle.
///
/// # Limits and failures
///
/// | what | what the client sees |
/// |---|---|
/// | a request head not complete within [`header_read_timeout`](Server::header_read_timeout) (slowloris), or no first request on a new connection within it | the connection is closed |
/// | more than [`max_headers`](Server::max_headers) headers, or a head over [`max_header_bytes`](Server::max_header_bytes) | `431 Request Header Fields Too Large` |
/// | a body over [`max_body_bytes`](Server::max_body_bytes), by its `Content-Length` | `413` before the handler is called |
/// | a chunked body passing the limit | the handler's reads fail; `413` if its response has not started, else the connection is cut |
/// | a body the handler answers without reading (HTTP/1.1) | the server reads the rest, up to 256 KiB (and the body limit) within 5 s, and throws it away so the connection stays open; past that, or with `Expect: 100-continue` (the client is never asked for it), the connection closes after the response |
/// | a body trickling in slower than [`min_body_rate`](Server::min_body_rate), or stalled | the handler's reads fail with a timeout; `408` if it gives up before its response started |
/// | a streamed response taken slower than [`min_response_rate`](Server::min_response_rate), or not read at all for [`response_stall_timeout`](Server::response_stall_timeout) | the connection is cut; the handler is dropped and its token flips |
/// | every blocking slot busy for [`queue_timeout`](Server::queue_timeout) | `503` with `Retry-After: 1` (sync handlers only) |
/// | a handler panic | `500` if the response has not started, else the connection is cut; the server carries on |
/// | a handler breaking the protocol (no response, a body cut short) | `500` (or a cut connection) and an error log line |
/// | [`max_connections`](Server::max_connections) open | new connections wait in the listen backlog |
///
/// # Shutdown
///
/// On [`ShutdownHandle::shutdown`](crate::ShutdownHandle::shutdown) (or a signal, with [`Serving::run_until`](crate::Serving::run_until) and
/// [`shutdown_signal`](crate::shutdown_signal)): the listener closes at once, idle keep-alive
/// connections are closed, in-flight requests of both kinds run to completion and their
/// connections close after them (HTTP/2 gets a GOAWAY), for up to
/// [`grace_period`](Server::grace_period). Connections still open then are cut: their handlers
/// are dropped and their requests' cancellation tokens flip, and each cut request is logged.
/// Blocking work cannot be aborted: a sync handler that ignores its token keeps its thread
/// until it returns. Then handlers get `lifespan.shutdown`, and the server's future returns
/// `Ok`.
///
/// # Examples
///
/// ```
/// use amphi_core::{async_fn, AsyncBody};
/// use amphi_server::{Router, Server};
/// use std::time::Duration;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let router = Router::new().mount_async(
///     "/",
///     async_fn(|_req| async { http::Response::new(AsyncBody::from("hello")) }),
/// );
/// let serving = Server::new(router)
///     .max_body_bytes(1024 * 1024)
///     .grace_period(Duration::from_secs(5))
///     .bind("127.0.0.1:0")
///     .await
///     .unwrap();
/// println!("listening on http://{}", serving.local_addr().unwrap());
/// serving.shutdown().await.unwrap();
/// # });
/// ```
pub struct Server {
    router: Router,
    state: State,
    pool: Option<BlockingPool>,
    blocking_threads: usize,
    queue_timeout: Duration,
    max_body_bytes: u64,
    body_rate: Option<BodyRate>,
    response_rate: Option<ResponseRate>,
    header_read_timeout: Option<Duration>,
    max_headers: usize,
    max_header_bytes: usize,
    flatten_writes: bool,
    max_connections: usize,
    grace_period: Duration,
    drain_delay: Duration,
    websockets: WebSocketLimits,
    workers: Option<crate::workers::Workers>,
    /// The span a worker's connections run in, so its logs say which worker served.
    log_span: Option<tracing::Span>,
    reuse_port: bool,
    proxies: TrustedProxies,
    root_path: Option<Arc<str>>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConfig>,
    request_spans: bool,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Server");
        d.field("router", &self.router)
            .field("blocking_threads", &self.blocking_threads)
            .field("queue_timeout", &self.queue_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("body_rate", &self.body_rate)
            .field("response_rate", &self.response_rate)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_headers", &self.max_headers)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("flatten_writes", &self.flatten_writes)
            .field("max_connections", &self.max_connections)
            .field("grace_period", &self.grace_period)
            .field("drain_delay", &self.drain_delay)
            .field("websockets", &self.websockets)
            .field("workers", &self.workers)
            .field("reuse_port", &self.reuse_port)
            .field("trusted_proxies", &self.proxies)
            .field("root_path", &self.root_path)
            .field("request_spans", &self.request_spans);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.finish_non_exhaustive()
    }
}

impl Server {
    /// A server for `router` with the default settings.
    pub fn new(router: Router) -> Server {
        Server {
            router,
            state: State::new(),
            pool: None,
            blocking_threads: DEFAULT_BLOCKING_THREADS,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            body_rate: Some(BodyRate {
                bytes_per_second: DEFAULT_MIN_BODY_RATE,
                grace: DEFAULT_BODY_GRACE_PERIOD,
            }),
            response_rate: Some(ResponseRate {
                bytes_per_second: DEFAULT_MIN_RESPONSE_RATE,
                grace: DEFAULT_RESPONSE_GRACE_PERIOD,
                max_stall: DEFAULT_RESPONSE_STALL_TIMEOUT,
            }),
            header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT),
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            flatten_writes: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            grace_period: DEFAULT_GRACE_PERIOD,
            drain_delay: DEFAULT_DRAIN_DELAY,
            websockets: WebSocketLimits::default(),
            workers: None,
            log_span: None,
            reuse_port: false,
            proxies: TrustedProxies::new(),
            root_path: None,
            #[cfg(feature = "tls")]
            tls: None,
            request_spans: false,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// The app state shared with lifespan and every request scope; insert values before
    /// binding to hand them to handlers. Default: empty.
    #[must_use]
    pub fn state(mut self, state: State) -> Server {
        self.state = state;
        self
    }

    /// The limit on blocking work in flight: sync handlers running (including while they
    /// stream their response) across all connections. Default
    /// [`DEFAULT_BLOCKING_THREADS`] (64). Idle keep-alive connections take no slot.
    ///
    /// # Panics
    ///
    /// When `n` is 0.
    #[must_use]
    pub fn blocking_threads(mut self, n: usize) -> Server {
        assert!(n > 0, "blocking_threads must be at least 1");
        self.blocking_threads = n;
        self
    }

    /// Runs sync handlers on `pool` instead of one made from
    /// [`blocking_threads`](Server::blocking_threads) and
    /// [`queue_timeout`](Server::queue_timeout) (which are then ignored): share it with your
    /// own [`sync_to_async`](amphi_sync_to_async::sync_to_async) calls to cap all blocking work
    /// together.
    #[must_use]
    pub fn blocking_pool(mut self, pool: BlockingPool) -> Server {
        self.pool = Some(pool);
        self
    }

    /// One `tracing` span per request, and an `x-request-id` on every response. Default off.
    ///
    /// The span (target `amphi::request`, name `request`, level `INFO`) has the fields
    /// `method`, `route` (the mount prefix the request resolved to, `/` for the root,
    /// `unmatched` for none: never the raw path), `kind` (`sync`, `async`, `tower`, `none`) and
    /// `request_id`. It is entered whenever the handler runs: while an async handler is
    /// polled, and on the blocking thread of a sync handler; the adapters carry it into
    /// `sync_to_async` closures and `async_to_sync` futures, so every event a handler logs,
    /// on either side of the boundary, is inside it, and so is the access log line.
    ///
    /// The request id is the client's `x-request-id` when it sends a sane one (1 to 128
    /// visible ASCII characters), else a new one (this process's random prefix and a counter:
    /// no random number per request); either way it is the span's `request_id` and is sent back
    /// as the response's `x-request-id`. Off, neither costs anything; on, a span that no
    /// subscriber wants (filtered out by level or target) costs a level check.
    #[must_use]
    pub fn request_spans(mut self, on: bool) -> Server {
        self.request_spans = on;
        self
    }

    /// Counts every request into `metrics` (feature `metrics`): by route, method, status and
    /// handler kind, with latency histograms, the time each route spends blocking, its waits
    /// for a blocking slot and the `503`s, the blocking pool and the connections; see
    /// [`Metrics`](crate::metrics::Metrics) for the list, and mount its handlers where they
    /// should be served. Time spent blocking is counted per route (each sync handler's and
    /// `sync_to_async` call's own time); the pool's total busy time too when it measures it
    /// ([`BlockingPool::measure_busy_time`], on a pool given with
    /// [`blocking_pool`](Server::blocking_pool)), which costs per call two clock reads, two
    /// atomic adds on counters every blocking thread shares, and a reference count taken and
    /// dropped on them.
    ///
    /// # Examples
    ///
    /// ```
    /// use amphi_server::metrics::Metrics;
    /// use amphi_server::{Router, Server};
    ///
    /// let metrics = Metrics::new();
    /// let router = Router::new().mount_async("/metrics", metrics.handler());
    /// let server = Server::new(router).metrics(&metrics).request_spans(true);
    /// # let _ = server;
    /// ```
    #[cfg(feature = "metrics")]
    #[must_use]
    pub fn metrics(mut self, metrics: &crate::metrics::Metrics) -> Server {
        self.metrics = Some(metrics.clone());
        self
    }

    /// How long a sync request waits for a blocking slot before the server answers `503`
    /// with `Retry-After`. Default [`DEFAULT_QUEUE_TIMEOUT`] (1 s).
    #[must_use]
    pub fn queue_timeout(mut self, timeout: Duration) -> Server {
        self.queue_timeout = timeout;
        self
    }

    /// The largest request body accepted, in bytes, for both handler kinds. Default
    /// [`DEFAULT_MAX_BODY_BYTES`] (16 MiB).
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: u64) -> Server {
        self.max_body_bytes = bytes;
        self
    }

    /// The slowest a request body may arrive while its handler waits for it: after
    /// `grace_period`, the client must keep up `bytes_per_second` on average, counting only
    /// the time the handler spent waiting for the client (a handler that reads slowly is not
    /// held against the client). Past it the handler's body reads fail with
    /// [`ErrorKind::TimedOut`](amphi_core::ErrorKind::TimedOut) (`io::ErrorKind::TimedOut` for
    /// sync handlers), and the client gets `408` if the handler gives up before its response
    /// started. Nothing else bounds a client that trickles its body, or stops sending it, while
    /// a sync handler holds a blocking slot reading it (a slow-POST attack); the header
    /// timeout covers the head only. `bytes_per_second` 0 disables it. Default
    /// [`DEFAULT_MIN_BODY_RATE`] (240 bytes/s) after [`DEFAULT_BODY_GRACE_PERIOD`] (5 s), as
    /// ASP.NET Kestrel's `MinRequestBodyDataRate`.
    #[must_use]
    pub fn min_body_rate(mut self, bytes_per_second: u64, grace_period: Duration) -> Server {
        self.body_rate = (bytes_per_second > 0).then_some(BodyRate {
            bytes_per_second,
            grace: grace_period,
        });
        self
    }

    /// The slowest a client may take a streamed response. Each streamed response has a
    /// credit of waiting time: it starts at `grace_period`, grows by the time each byte sent
    /// needs at `bytes_per_second` (up to `grace_period` plus the time 4 MiB need), and shrinks
    /// while the response waits for the client (HTTP/1.1: the socket does not drain; HTTP/2:
    /// the client's flow-control window is used up). Time the handler takes to produce is not
    /// counted. When the credit runs out the connection is cut (the status was already sent;
    /// over HTTP/2 the other streams on the connection go with it), the handler is dropped and
    /// its request's token flips, a sync handler's next body write fails so its blocking slot
    /// comes back, and a warning is logged. Nothing else bounds a client that stops reading: a
    /// streaming sync handler would hold its blocking slot, blocked on backpressure, for as
    /// long as the client kept the connection open. `bytes_per_second` 0 disables it. Default
    /// [`DEFAULT_MIN_RESPONSE_RATE`] (240 bytes/s) after [`DEFAULT_RESPONSE_GRACE_PERIOD`]
    /// (5 s), as ASP.NET Kestrel's `MinResponseDataRate`.
    ///
    /// Bytes count as taken once the connection has them, and the kernel's socket buffers
    /// take several MiB at once from a client that reads nothing and then free room in large
    /// lumps, so the rate is measured coarsely: by the rate alone, a client that stops reading
    /// would be cut only after the grace period plus the time what was buffered for it (at most
    /// 4 MiB) needs at `bytes_per_second`, which at the default rate is hours. The
    /// [`response_stall_timeout`](Server::response_stall_timeout) caps that wait (60 s by
    /// default). Responses sent in one piece,
    /// and the rest of a streamed response once hyper has its last frame, hold a connection
    /// but no handler: they are left to the kernel and to the client.
    #[must_use]
    pub fn min_response_rate(mut self, bytes_per_second: u64, grace_period: Duration) -> Server {
        let max_stall = self
            .response_rate
            .map_or(DEFAULT_RESPONSE_STALL_TIMEOUT, |r| r.max_stall);
        self.response_rate = (bytes_per_second > 0).then_some(ResponseRate {
            bytes_per_second,
            grace: grace_period,
            max_stall,
        });
        self
    }

    /// The longest a streamed response may wait for its client at one stretch (the client
    /// reads nothing, so the connection takes nothing), whatever credit the minimum rate let it
    /// earn: past it the connection is cut as for a client below the minimum rate. This is
    /// what bounds a client that stops reading in practice, since the kernel's buffers make the
    /// rate alone slow to notice one (see [`min_response_rate`](Server::min_response_rate)). A
    /// reader that takes data at all within the timeout is not affected. It is part of the
    /// response-rate watchdog: `min_response_rate(0, _)` turns both off. Default
    /// [`DEFAULT_RESPONSE_STALL_TIMEOUT`] (60 s, as nginx's `send_timeout`).
    #[must_use]
    pub fn response_stall_timeout(mut self, timeout: Duration) -> Server {
        if let Some(rate) = self.response_rate.as_mut() {
            rate.max_stall = timeout;
        }
        self
    }

    /// How long a client may take to send a complete request head (HTTP/1.1), and a new
    /// connection to send its first request (both protocols); `None` disables both. Also the
    /// idle timeout of HTTP/1.1 keep-alive connections. `Some(Duration::ZERO)` also disables
    /// them. Default [`DEFAULT_HEADER_READ_TIMEOUT`] (10 s).
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Option<Duration>) -> Server {
        self.header_read_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// The most headers a request may carry (HTTP/1.1); past it the client gets `431`.
    /// Default [`DEFAULT_MAX_HEADERS`] (100).
    #[must_use]
    pub fn max_headers(mut self, n: usize) -> Server {
        self.max_headers = n;
        self
    }

    /// The largest request head, in bytes (HTTP/1.1: the read buffer, at least 8 KiB;
    /// HTTP/2: the header list size); past it the client gets `431`. Default
    /// [`DEFAULT_MAX_HEADER_BYTES`] (64 KiB).
    #[must_use]
    pub fn max_header_bytes(mut self, bytes: usize) -> Server {
        self.max_header_bytes = bytes.max(8192);
        self
    }

    /// Whether HTTP/1.1 responses are copied into the connection's write buffer and sent with
    /// one `write`, head and body together, instead of hyper's default on every listener
    /// (TCP, unix sockets, TLS): the head in its buffer and each body chunk sent as it is, with
    /// one vectored write (`writev`). Default `false`.
    ///
    /// Flattening saves hyper's queue of buffers, which costs more than copying a small body:
    /// turn it on for a server whose responses are mostly a few KiB or less (API answers), and
    /// leave it off for one that sends large bodies (downloads, big pages), where the copy costs
    /// more than it saves. A flattening connection's write buffer grows to the largest body
    /// chunk it has sent and keeps that size while the connection lives. docs/benchmarks.md
    /// has the measurements. HTTP/2 is unchanged.
    #[must_use]
    pub fn flatten_writes(mut self, on: bool) -> Server {
        self.flatten_writes = on;
        self
    }

    /// The most connections open at once; past it the server stops accepting until one
    /// closes. Default [`DEFAULT_MAX_CONNECTIONS`] (10 000).
    ///
    /// # Panics
    ///
    /// When `n` is 0.
    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Server {
        assert!(n > 0, "max_connections must be at least 1");
        self.max_connections = n;
        self
    }

    /// The limits of websocket sessions (how many open, message size, idle pings, queues);
    /// see [`WebSocketLimits`] for the defaults and what a client sees past each. Websockets
    /// are served to handlers mounted with [`Router::mount_async`](crate::Router::mount_async)
    /// and [`Router::mount_sync`](crate::Router::mount_sync) over HTTP/1.1 upgrades and
    /// HTTP/2 extended CONNECT (RFC 8441); a mounted tower service answers its own.
    #[must_use]
    pub fn websockets(mut self, limits: WebSocketLimits) -> Server {
        self.websockets = limits;
        self
    }

    /// Serves with worker processes under a supervisor (see [`Workers`](crate::Workers)): the
    /// process that calls [`bind`](Server::bind) binds the address, starts the workers (its
    /// own binary re-executed with the same arguments; each builds this same server and, in
    /// it, `bind` serves the socket the supervisor passed instead of binding), and supervises
    /// them until shutdown. The supervisor builds the router but never serves it, and runs no
    /// lifespan: each worker does. Only [`bind`](Server::bind) (TCP) supervises; other entry
    /// points serve in this process as before.
    #[must_use]
    pub fn workers(mut self, workers: crate::workers::Workers) -> Server {
        self.workers = Some(workers);
        self
    }

    /// The span every connection runs in.
    pub(crate) fn log_span(mut self, span: tracing::Span) -> Server {
        self.log_span = Some(span);
        self
    }

    /// Whether the listener is bound with `SO_REUSEPORT`, for the supervisor.
    pub(crate) fn reuses_port(&self) -> bool {
        self.reuse_port
    }

    /// The grace period, for the supervisor.
    pub(crate) fn grace(&self) -> Duration {
        self.grace_period
    }

    /// The drain delay, for the supervisor.
    pub(crate) fn drain_delay_setting(&self) -> Duration {
        self.drain_delay
    }

    /// How long in-flight requests may run after shutdown starts before their connections
    /// are cut. Default [`DEFAULT_GRACE_PERIOD`] (30 s).
    #[must_use]
    pub fn grace_period(mut self, grace: Duration) -> Server {
        self.grace_period = grace;
        self
    }

    /// How long the server keeps accepting and serving as usual after shutdown starts,
    /// before it stops accepting and drains: the time a load balancer needs to see
    /// [`Health`](crate::Health) answer `503` (it does from the signal on) and stop sending
    /// new connections here. The [`grace_period`](Server::grace_period) starts after it.
    /// Default [`DEFAULT_DRAIN_DELAY`] (none: the listener closes at once). Under
    /// Kubernetes, set it to the time endpoints take to drop a terminating pod (a few
    /// seconds), and keep `terminationGracePeriodSeconds` above it plus the grace period.
    #[must_use]
    pub fn drain_delay(mut self, delay: Duration) -> Server {
        self.drain_delay = delay;
        self
    }

    /// Sets `SO_REUSEPORT` on the socket [`bind`](Server::bind) opens, so that several
    /// servers (processes, or servers in one process) listen on one port and the kernel
    /// spreads new connections between them: a new instance can start before the old one
    /// stops. Every socket on the port must set it. Default off.
    #[must_use]
    pub fn reuse_port(mut self, on: bool) -> Server {
        self.reuse_port = on;
        self
    }

    /// The proxies whose `Forwarded` (RFC 7239) or `X-Forwarded-For`, `-Proto` and `-Host`
    /// headers are believed. A request whose connection comes from one of them gets its
    /// scope's client, scheme and host from those headers:
    ///
    /// - the client is found by walking the hops from the right (the one the proxy added),
    ///   skipping hops that are trusted proxies themselves: the first that is not is the
    ///   client (the leftmost when all are trusted); hops further left were written by the
    ///   client and are ignored. A hop without a port gets port 0; one that is not an address
    ///   (`unknown`, an obfuscated name) leaves the client unknown (`None`).
    /// - the scheme (`http`/`https`) is `Forwarded`'s `proto` in the element the walk stopped
    ///   at, or the last `X-Forwarded-Proto` value.
    /// - the host is `Forwarded`'s `host` there, or the last `X-Forwarded-Host` value: the
    ///   request's `Host` header (and the URI's authority over HTTP/2) is set to it.
    ///
    /// `Forwarded` wins when present. From any other peer the headers reach handlers as they
    /// came and change nothing. Default: nothing is trusted, and no header is read.
    ///
    /// # Examples
    ///
    /// ```
    /// use amphi_server::{Router, Server};
    ///
    /// // nginx on the same machine, and anything on the pods' network.
    /// let server = Server::new(Router::new())
    ///     .trusted_proxies("127.0.0.1, 10.0.0.0/8".parse().unwrap());
    /// # let _ = server;
    /// ```
    #[must_use]
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Server {
        self.proxies = proxies;
        self
    }

    /// The prefix a proxy in front serves this server under, when the proxy strips it
    /// (uvicorn's `--root-path`): prepended to every scope's `root_path` and, for handlers,
    /// to the request URI's path, so that `root_path + path` is the path the client asked
    /// for and links built from it work. Routes still match the path as it arrives. A mounted
    /// tower service keeps seeing the path below its mount, with the prefix in its
    /// `RequestInfo`'s `root_path`. `""` or `"/"`: none (the default).
    ///
    /// # Panics
    ///
    /// When `prefix` does not start with `/`, or contains `?`, `#` or an empty segment.
    #[must_use]
    pub fn root_path(mut self, prefix: &str) -> Server {
        let prefix = crate::router::normalize(prefix);
        self.root_path = (!prefix.is_empty()).then(|| Arc::from(prefix));
        self
    }

    /// Runs lifespan startup, listens on `addr` (TCP), and serves in the background.
    ///
    /// # Errors
    ///
    /// [`ServeError::is_startup`] when a handler's lifespan startup fails (the server never
    /// listens), [`ServeError::is_bind`] when the address cannot be bound,
    /// [`ServeError::is_routes`] for an invalid router.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> Result<Serving, ServeError> {
        if let Some(workers) = self.workers.clone() {
            if let Some(env) = crate::workers::worker_env() {
                return crate::workers::serve_worker(self, env).await;
            }
            let addr = tokio::net::lookup_host(addr)
                .await
                .map_err(|e| ServeError::bind("resolving the address", e))?
                .next()
                .ok_or_else(|| {
                    ServeError::bind(
                        "resolving the address",
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"),
                    )
                })?;
            return crate::workers::supervise(self, addr, workers).await;
        }
        let reuse_port = self.reuse_port;
        let prepared = self.prepare().await?;
        match listen_tcp(addr, reuse_port).await {
            Ok(listener) => Ok(prepared.spawn(listener)),
            Err(e) => {
                prepared.abandon().await;
                Err(ServeError::bind("binding the TCP listener", e))
            }
        }
    }

    /// Like [`bind`](Server::bind), on a listener the caller opened.
    ///
    /// # Errors
    ///
    /// As for [`bind`](Server::bind), except binding.
    pub async fn serve_listener(self, listener: TcpListener) -> Result<Serving, ServeError> {
        Ok(self.prepare().await?.spawn(listener))
    }

    /// Like [`bind_unix`](Server::bind_unix), on a unix listener the caller opened.
    ///
    /// # Errors
    ///
    /// As for [`bind`](Server::bind), except binding.
    pub async fn serve_unix_listener(self, listener: UnixListener) -> Result<Serving, ServeError> {
        Ok(self.prepare().await?.spawn(listener))
    }

    /// Like [`bind`](Server::bind), on a [`Listener`] opened elsewhere: inherited from systemd
    /// socket activation ([`Listener::from_systemd`]), at a file descriptor
    /// ([`Listener::from_fd`]), or a std TCP or unix listener. Over a unix socket, requests
    /// have no client or server address.
    ///
    /// # Errors
    ///
    /// As for [`bind`](Server::bind); [`ServeError::is_bind`] when the socket cannot be
    /// registered with the runtime.
    pub async fn serve_on(self, listener: Listener) -> Result<Serving, ServeError> {
        let registered = |e| ServeError::bind("registering the inherited listener", e);
        match listener.kind {
            ListenerKind::Tcp(l) => {
                l.set_nonblocking(true).map_err(registered)?;
                let l = TcpListener::from_std(l).map_err(registered)?;
                Ok(self.prepare().await?.spawn(l))
            }
            ListenerKind::Unix(l) => {
                l.set_nonblocking(true).map_err(registered)?;
                let l = UnixListener::from_std(l).map_err(registered)?;
                Ok(self.prepare().await?.spawn(l))
            }
        }
    }

    /// Like [`bind`](Server::bind), on a unix domain socket at `path` (which must not exist).
    /// Requests have no client or server address. The listen backlog is the system's maximum
    /// (`net.core.somaxconn` on Linux, 4096 by default).
    ///
    /// # Errors
    ///
    /// As for [`bind`](Server::bind).
    pub async fn bind_unix(self, path: impl AsRef<Path>) -> Result<Serving, ServeError> {
        let prepared = self.prepare().await?;
        match UnixListener::bind(path.as_ref()) {
            Ok(listener) => Ok(prepared.spawn(listener)),
            Err(e) => {
                prepared.abandon().await;
                Err(ServeError::bind(
                    format!("binding the unix socket {}", path.as_ref().display()),
                    e,
                ))
            }
        }
    }

    /// Serves HTTPS instead of plain HTTP (`tls` feature): see
    /// [`TlsConfig`](crate::tls::TlsConfig). The handshake runs on each connection's task,
    /// bounded by its timeout; a failed or timed-out handshake closes that connection only.
    /// The running server's [`Serving::tls`](crate::Serving::tls) reloads the certificate.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, config: crate::tls::TlsConfig) -> Server {
        self.tls = Some(config);
        self
    }

    /// The app: the routes compiled against the pool, with the request limits.
    pub(crate) fn app(&self) -> Result<(Arc<App>, BlockingPool), ServeError> {
        let pool = self.pool.clone().unwrap_or_else(|| {
            BlockingPool::new(self.blocking_threads).queue_timeout(self.queue_timeout)
        });
        let counters = Arc::new(Counters::default());
        let sessions = Arc::new(Sessions::new(self.websockets));
        #[allow(unused_mut)] // mutated with the `metrics` feature only
        let mut routes = self.router.compile(&Compile {
            pool: &pool,
            state: &self.state,
            max_body: self.max_body_bytes,
            body_rate: self.body_rate,
            counters: &counters,
            sessions: &sessions,
        })?;
        let observe = Observe {
            spans: self.request_spans,
            #[cfg(feature = "metrics")]
            unmatched: self
                .metrics
                .as_ref()
                .map(|m| m.attach(&mut routes.routes, &pool, &counters, &sessions)),
        };
        let app = Arc::new(App {
            routes,
            state: self.state.clone(),
            max_body: self.max_body_bytes,
            body_rate: self.body_rate,
            counters,
            sessions,
            observe,
        });
        Ok((app, pool))
    }

    async fn prepare(self) -> Result<Prepared, ServeError> {
        let (app, pool) = self.app()?;
        // Certificates are read before lifespan startup: a server that cannot serve TLS
        // starts nothing.
        #[cfg(feature = "tls")]
        let tls = match &self.tls {
            Some(config) => {
                let (acceptor, handle) = config.build()?;
                Some(crate::accept::TlsSide {
                    tls: crate::tls::Tls {
                        acceptor,
                        timeout: config.timeout(),
                    },
                    handle,
                    sighup: config.sighup(),
                })
            }
            None => None,
        };
        #[cfg(feature = "tls")]
        let https = tls.is_some();
        #[cfg(not(feature = "tls"))]
        let https = false;
        let origins = Origins::new(https, self.proxies.clone(), self.root_path.clone());
        self.state.insert(ServerStatus::new(app.counters.clone()));
        // Lifespan startup runs in mount order, shutdown in reverse.
        let handlers: Vec<(String, Arc<dyn AsyncHandler>)> = app
            .routes
            .lifespans
            .iter()
            .map(|(prefix, h)| (prefix.to_string(), h.clone()))
            .collect();
        let lifespan_timeout = self.grace_period.max(Duration::from_secs(1));
        let lifespans = Lifespans::startup(handlers, &self.state, lifespan_timeout).await?;
        Ok(Prepared {
            log_span: self.log_span.clone(),
            app,
            pool,
            lifespans,
            lifespan_timeout,
            conn: ConnSettings {
                response_rate: self.response_rate,
                header_read_timeout: self.header_read_timeout,
                max_headers: self.max_headers,
                max_header_bytes: self.max_header_bytes,
                flatten_writes: self.flatten_writes,
            },
            max_connections: self.max_connections,
            grace_period: self.grace_period,
            drain_delay: self.drain_delay,
            origins,
            #[cfg(feature = "tls")]
            tls,
        })
    }
}

#[cfg(feature = "tower")]
impl Server {
    /// The server's router as a tower service, for axum's `route_service`/`nest_service` or
    /// any tower-based server: each request is served as this server would serve it, with
    /// its pool (`503` on saturation), body limit and minimum body rate; see
    /// [`RouterService`](crate::tower::RouterService) for what the host server keeps.
    /// Lifespan is not run (`tower` feature).
    ///
    /// # Errors
    ///
    /// [`ServeError::is_routes`] for an invalid router.
    ///
    /// # Examples
    ///
    /// ```
    /// use amphi_core::{sync_fn, SyncBody};
    /// use amphi_server::{Router, Server};
    ///
    /// let legacy = Router::new().mount_sync("/", sync_fn(|_req| http::Response::new(SyncBody::from("blocking"))));
    /// let service = Server::new(legacy).blocking_threads(8).into_service().unwrap();
    /// // axum::Router::new().nest_service("/legacy", service)
    /// # let _ = service;
    /// ```
    pub fn into_service(self) -> Result<crate::tower::RouterService, ServeError> {
        let (app, _pool) = self.app()?;
        Ok(crate::tower::RouterService::new(app))
    }
}
