//! One connection: the state its requests and its task share, and how hyper is set up for it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Version;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::time::Instant;

use crate::response_rate::ResponseRate;

/// What every request of one server counts, and the shutdown reads.
#[derive(Default)]
pub(crate) struct Counters {
    /// Requests whose access record is alive.
    pub(crate) in_flight: AtomicUsize,
    /// Requests whose access record has ended (next to `in_flight`: the same cache line).
    pub(crate) served: std::sync::atomic::AtomicU64,
    /// Set when the grace period is over and the remaining connections are being cut.
    pub(crate) cutting: AtomicBool,
    /// Set when shutdown starts, before the drain delay: health answers `503`.
    pub(crate) draining: AtomicBool,
    /// Connections open now (a tower host's `RouterService` counts as one), for metrics.
    #[cfg(feature = "metrics")]
    pub(crate) connections_open: AtomicUsize,
    /// Connections accepted, for metrics.
    #[cfg(feature = "metrics")]
    pub(crate) connections: AtomicU64,
    /// Every route's counters, by the index its `Route` has, when the server keeps metrics.
    #[cfg(feature = "metrics")]
    pub(crate) route_stats: std::sync::OnceLock<Box<[Arc<crate::metrics::RouteStats>]>>,
}

/// What one connection's requests and its task share.
pub(crate) struct ConnState {
    pub(crate) counters: Arc<Counters>,
    /// The origin of `idle_since`.
    base: Instant,
    /// Requests whose response is not finished (their access record is alive).
    active: AtomicUsize,
    /// When the last response finished, in nanoseconds since `base` (0: the connection's
    /// start). Written before `active` is decremented, so a reader that sees no request in
    /// progress sees the time the last one ended.
    idle_since: AtomicU64,
    /// The connection speaks HTTP/2: no head timeout after its first request.
    pub(crate) h2: AtomicBool,
    /// The peer's address, for the access log (`None`: a unix socket, or unknown).
    pub(crate) peer: Option<std::net::SocketAddr>,
    /// The observers of this connection's requests, one per route, made as they are first
    /// needed (`metrics::observer`).
    #[cfg(feature = "metrics")]
    pub(crate) observers: std::sync::OnceLock<crate::metrics::ConnObservers>,
}

impl ConnState {
    pub(crate) fn new(
        counters: Arc<Counters>,
        peer: Option<std::net::SocketAddr>,
    ) -> Arc<ConnState> {
        #[cfg(feature = "metrics")]
        {
            counters.connections_open.fetch_add(1, Ordering::Relaxed);
            counters.connections.fetch_add(1, Ordering::Relaxed);
        }
        Arc::new(ConnState {
            counters,
            peer,
            base: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            #[cfg(feature = "metrics")]
            observers: std::sync::OnceLock::new(),
        })
    }

    /// A request head arrived.
    pub(crate) fn request_started(&self, version: Version) {
        if version == Version::HTTP_2 && !self.h2.load(Ordering::Relaxed) {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    /// A request's response is finished (or abandoned), at `now`.
    pub(crate) fn request_ended(&self, now: Instant) {
        let since = now.saturating_duration_since(self.base);
        self.idle_since.store(
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether no request has arrived on the connection yet.
    pub(crate) fn is_fresh(&self) -> bool {
        // `idle_since` stays 0 until a request ends; `active` counts those in progress.
        self.active.load(Ordering::Acquire) == 0 && self.idle_since.load(Ordering::Acquire) == 0
    }

    /// When the connection's next head is due, or `None` while a request is in progress.
    pub(crate) fn head_due(&self, timeout: Duration) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle = Duration::from_nanos(self.idle_since.load(Ordering::Acquire));
        Some(self.base + idle + timeout)
    }
}

#[cfg(feature = "metrics")]
impl Drop for ConnState {
    fn drop(&mut self) {
        self.counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every connection's task and hyper builder are set up with.
#[derive(Clone, Copy)]
pub(crate) struct ConnSettings {
    pub(crate) response_rate: Option<ResponseRate>,
    pub(crate) header_read_timeout: Option<Duration>,
    pub(crate) max_headers: usize,
    pub(crate) max_header_bytes: usize,
    pub(crate) flatten_writes: bool,
}

/// The header-count limit hyper applies when none is set (`DEFAULT_MAX_HEADERS` in its h1 role).
const HYPER_MAX_HEADERS: usize = 100;

pub(crate) fn connection_builder(settings: ConnSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The connection's task keeps the header-read timeout (`idle.rs`): hyper's would box
        // and register a timer for every request head.
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes);
    if settings.flatten_writes {
        builder.http1().writev(false);
    }
    if settings.max_headers != HYPER_MAX_HEADERS {
        // hyper enforces its own default of 100 on an inline array; setting any limit, even
        // the same one, makes it allocate and fill two 100-entry buffers per request head.
        builder.http1().max_headers(settings.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        // Websockets over HTTP/2 (RFC 8441).
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    builder
}
