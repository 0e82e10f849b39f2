//! Metrics (feature `metrics`): what each route served, how long it took, and how much of
//! it blocked, counted per request with a few atomic adds and encoded in the Prometheus text
//! format when scraped.
//!
//! Every compiled route gets its own counters (`RouteStats`) when the router is compiled, so a request
//! finds its counters by the route it resolved to: no label lookup, no allocation, no lock on
//! the request path. Labels are built only when the metrics are scraped.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use amphi_core::plumbing::{Crossing, Observer};
use amphi_core::{async_fn, AsyncBody, AsyncHandler, AsyncRequest};
use amphi_sync_to_async::BlockingPool;
use http::{HeaderValue, Method, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::access::{HandlerKind, Outcome};
use crate::app::Route;
use crate::conn::Counters;
use crate::ws::Sessions;

pub use crate::report::{Advice, Report, RouteReport};

/// The metrics of one server, and the handler that serves them (feature `metrics`).
///
/// Make one, mount [`handler`](Metrics::handler) (and the migration
/// [`report_handler`](Metrics::report_handler)) where you want them, on the server itself or
/// on a second server bound to another address, and give the server a handle with
/// [`Server::metrics`](crate::Server::metrics). Clones share the same counters.
///
/// What is counted, all labelled by `route` (the mount prefix a request resolved to, `/` for
/// the root, `unmatched` for a request no mount took: never the raw path) and `kind` (`sync`,
/// `async`, `tower`, `none`):
///
/// | metric | type | what |
/// |---|---|---|
/// | `amphi_requests_total` | counter | requests by `method` (`GET` ... `OPTIONS`, else `OTHER`) and `status` (the code for common ones, else its class: `4xx`; `0` when none was sent) |
/// | `amphi_request_duration_seconds` | histogram | from the request head to the end of its response |
/// | `amphi_request_outcomes_total` | counter | by `outcome`: `complete`, `cut`, `client_gone`, `cut_at_shutdown` |
/// | `amphi_crossings_total`, `amphi_crossing_seconds_total` | counter | by `crossing`: `sync_handler` (a sync route's handler on its blocking thread, streamed body included), `sync_to_async` and `async_to_sync` calls made while serving the route, and the time they ran |
/// | `amphi_route_slot_waits_total`, `amphi_route_slot_wait_seconds_total`, `amphi_route_saturations_total` | counter | the route's waits for a blocking slot, their time, and the calls refused (`503`) |
/// | `amphi_blocking_pool_slots`, `amphi_blocking_pool_busy`, `amphi_blocking_pool_waiting` | gauge | the server's pool: its limit, slots taken, calls queued for one |
/// | `amphi_blocking_pool_waits_total`, `amphi_blocking_pool_wait_seconds_total`, `amphi_blocking_pool_saturations_total` | counter | the pool's waits and saturations |
/// | `amphi_blocking_pool_calls_total`, `amphi_blocking_pool_busy_seconds_total` | counter | the calls that held a slot and how long, when the pool measures it ([`BlockingPool::measure_busy_time`]; the per-route `amphi_crossing_seconds_total` is always there) |
/// | `amphi_connections_open`, `amphi_requests_in_flight`, `amphi_websockets_open` | gauge | |
/// | `amphi_connections_total` | counter | connections accepted |
///
/// A request costs a few atomic adds and a clock read at each end: its route's counters are
/// found when the router is compiled, and labels are only written when the metrics are
/// scraped. A router behind tower layers is one route (`kind="tower"`).
///
/// Under [`Server::workers`](crate::Server::workers) each worker process counts what it served
/// and its samples carry a `worker` label (its id; a replaced worker's successor has a new
/// one). A scrape of the shared port reaches whichever worker accepts it, so one scrape shows
/// one worker's counts; the supervisor does not merge them (yet). Where a whole-server count
/// per scrape matters, serve one process with more threads. The application's own registry is
/// encoded as it is.
///
/// # Examples
///
/// ```
/// use amphi_core::{async_fn, AsyncBody};
/// use amphi_server::metrics::Metrics;
/// use amphi_server::{Router, Server};
///
/// let metrics = Metrics::new();
/// let router = Router::new()
///     .mount_async("/hello", async_fn(|_req| async { http::Response::new(AsyncBody::from("hi")) }))
///     .mount_async("/metrics", metrics.handler())
///     .mount_async("/_amphi/report", metrics.report_handler());
/// let server = Server::new(router).metrics(&metrics);
/// # let _ = server;
/// ```
#[derive(Clone)]
pub struct Metrics {
    shared: Arc<Shared>,
}

struct Shared {
    /// The user's own metrics, encoded before amphi's.
    registry: Registry,
    created: Instant,
    /// What the server that uses these metrics counts; set when it compiles its routes.
    server: Mutex<Option<Arc<ServerStats>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("routes", &self.server().map_or(0, |s| s.routes.len()))
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Metrics counting nothing until a server uses them.
    pub fn new() -> Metrics {
        Metrics::with_registry(Registry::default())
    }

    /// Like [`new`](Metrics::new), with the application's own metrics: what `registry`
    /// holds is encoded with amphi's (put them under a prefix of their own).
    pub fn with_registry(registry: Registry) -> Metrics {
        Metrics {
            shared: Arc::new(Shared {
                registry,
                created: Instant::now(),
                server: Mutex::new(None),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Arc<ServerStats>>> {
        // Only ever replaced whole: a panic cannot leave it half-written.
        self.shared.server.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn server(&self) -> Option<Arc<ServerStats>> {
        self.lock().clone()
    }

    /// How long ago these metrics were made.
    pub(crate) fn age(&self) -> Duration {
        self.shared.created.elapsed()
    }

    /// Gives each of `routes` its counters (an index into `counters.route_stats`, which it
    /// fills) and starts counting for the server they belong to; a server compiled later with
    /// the same metrics replaces this one. Returns the index of the counters of the requests
    /// no route takes.
    pub(crate) fn attach(
        &self,
        routes: &mut [Route],
        pool: &BlockingPool,
        counters: &Arc<Counters>,
        sessions: &Arc<Sessions>,
    ) -> u32 {
        let mut stats = Vec::with_capacity(routes.len() + 1);
        for (i, route) in routes.iter_mut().enumerate() {
            stats.push(Arc::new(RouteStats::new(route.label(), route.kind)));
            route.stats = u32::try_from(i).ok();
        }
        let unmatched = u32::try_from(stats.len()).unwrap_or(u32::MAX);
        stats.push(Arc::new(RouteStats::new("unmatched", HandlerKind::None)));
        // A fresh `Counters` per compiled server: never set before.
        let _ = counters.route_stats.set(stats.clone().into_boxed_slice());
        *self.lock() = Some(Arc::new(ServerStats {
            routes: stats,
            pool: pool.clone(),
            counters: counters.clone(),
            sessions: sessions.clone(),
        }));
        unmatched
    }

    /// Everything, in the Prometheus text format (version 0.0.4): the application's metrics
    /// first, then amphi's.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would be an encoder's own bug.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.shared.registry)
        {
            tracing::error!(error = %e, "encoding the application's metrics failed");
        }
        if let Some(server) = self.server() {
            // In a worker process (`Server::workers`) every sample says which worker counted
            // it: each worker counts only what it served.
            let mut registry = match crate::workers::worker_id() {
                Some(id) => Registry::with_labels(std::iter::once((
                    Cow::Borrowed("worker"),
                    Cow::Owned(id.to_string()),
                ))),
                None => Registry::default(),
            };
            registry.register_collector(Box::new(Collect(server)));
            if let Err(e) =
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            {
                tracing::error!(error = %e, "encoding amphi's metrics failed");
            }
        }
        out
    }

    /// An async handler that answers every `GET` with [`encode`](Metrics::encode) (content
    /// type `text/plain; version=0.0.4`), for a mount such as `/metrics`. Methods other than
    /// `GET` and `HEAD` get `405` with an `Allow` header.
    pub fn handler(&self) -> impl AsyncHandler {
        self.page(|metrics, _| {
            text(
                StatusCode::OK,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                metrics.encode(),
            )
        })
    }

    /// A read-only page of these metrics: `answer` for `GET` and `HEAD`, `405` for the rest.
    pub(crate) fn page(
        &self,
        answer: fn(&Metrics, &AsyncRequest) -> Response<AsyncBody>,
    ) -> impl AsyncHandler {
        let metrics = self.clone();
        async_fn(move |req: AsyncRequest| {
            std::future::ready(if matches!(*req.method(), Method::GET | Method::HEAD) {
                answer(&metrics, &req)
            } else {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
                r.headers_mut()
                    .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                r
            })
        })
    }
}

/// A text response of `content_type`, never cached.
pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<AsyncBody>,
) -> Response<AsyncBody> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

/// What one server counts: its routes' counters and what it reads at scrape time.
pub(crate) struct ServerStats {
    /// In the route table's order (longest prefix first), then `unmatched`.
    pub(crate) routes: Vec<Arc<RouteStats>>,
    pub(crate) pool: BlockingPool,
    pub(crate) counters: Arc<Counters>,
    pub(crate) sessions: Arc<Sessions>,
}

/// The methods counted apart; the rest are `OTHER`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];

fn method_slot(m: &Method) -> usize {
    // `Method`'s standard methods compare as enum tags: a few compares, no string work.
    if *m == Method::GET {
        0
    } else if *m == Method::HEAD {
        1
    } else if *m == Method::POST {
        2
    } else if *m == Method::PUT {
        3
    } else if *m == Method::DELETE {
        4
    } else if *m == Method::PATCH {
        5
    } else if *m == Method::OPTIONS {
        6
    } else {
        7
    }
}

/// The status codes counted apart (`0`: no response was sent); the rest are counted by
/// their class (`1xx` ... `5xx`, and `other` past 599).
const CODES: [(u16, &str); 38] = [
    (0, "0"),
    (100, "100"),
    (101, "101"),
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (206, "206"),
    (301, "301"),
    (302, "302"),
    (303, "303"),
    (304, "304"),
    (307, "307"),
    (308, "308"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (406, "406"),
    (408, "408"),
    (409, "409"),
    (410, "410"),
    (411, "411"),
    (412, "412"),
    (413, "413"),
    (415, "415"),
    (416, "416"),
    (422, "422"),
    (429, "429"),
    (431, "431"),
    (500, "500"),
    (501, "501"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
    (505, "505"),
    (511, "511"),
];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
const STATUSES: usize = CODES.len() + CLASSES.len();

/// The label of status slot `i`.
fn status_label(i: usize) -> &'static str {
    match CODES.get(i) {
        Some((_, label)) => label,
        None => CLASSES[i - CODES.len()],
    }
}

/// The slot of every status code below 600, computed once at compile time.
static STATUS_SLOT: [u8; 600] = {
    let mut slots = [0u8; 600];
    let mut code = 0;
    while code < 600 {
        slots[code] = if code >= 100 {
            (CODES.len() + code / 100 - 1) as u8
        } else {
            (CODES.len() + 5) as u8
        };
        code += 1;
    }
    let mut i = 0;
    while i < CODES.len() {
        slots[CODES[i].0 as usize] = i as u8;
        i += 1;
    }
    slots
};

fn status_slot(status: u16) -> usize {
    match STATUS_SLOT.get(usize::from(status)) {
        Some(&slot) => usize::from(slot),
        None => STATUSES - 1,
    }
}

/// The outcomes, in [`outcome_slot`] order.
const OUTCOMES: [&str; 4] = ["complete", "cut", "client_gone", "cut_at_shutdown"];

/// The upper bounds of the latency histogram's buckets, in seconds (then `+Inf`): fine at
/// the low end, where a gateway's own work is.
pub(crate) const BUCKETS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in nanoseconds, for the request path.
const BUCKET_NANOS: [u64; 18] = {
    let mut out = [0u64; 18];
    let mut i = 0;
    while i < BUCKETS.len() {
        out[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// The crossings counted apart, in [`crossing_slot`] order.
const CROSSINGS: [Crossing; 3] = [
    Crossing::SyncHandler,
    Crossing::SyncToAsync,
    Crossing::AsyncToSync,
];

fn crossing_slot(c: Crossing) -> Option<usize> {
    match c {
        Crossing::SyncHandler => Some(0),
        Crossing::SyncToAsync => Some(1),
        Crossing::AsyncToSync => Some(2),
        _ => None,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// What one route counts; `T` is `AtomicU64` in a [`Shard`], `u64` in a total.
pub(crate) struct Counts<T> {
    requests: [[T; STATUSES]; METHODS.len()],
    outcomes: [T; OUTCOMES.len()],
    /// Requests per bucket (not cumulative; the last is `+Inf`).
    buckets: [T; BUCKETS.len() + 1],
    duration_nanos: T,
    crossings: [T; CROSSINGS.len()],
    crossing_nanos: [T; CROSSINGS.len()],
    slot_waits: T,
    slot_wait_nanos: T,
    saturations: T,
}

/// One thread's share of a route's counters, on cache lines of its own: the threads that
/// serve requests (the runtime's workers, the blocking threads) each add to their own shard,
/// so a request's atomic adds never wait for a cache line another core just wrote. The
/// shards are added up when the metrics are read.
#[repr(align(128))]
struct Shard(Counts<AtomicU64>);

impl Shard {
    fn new() -> Shard {
        Shard(Counts {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            outcomes: Default::default(),
            buckets: Default::default(),
            duration_nanos: AtomicU64::new(0),
            crossings: Default::default(),
            crossing_nanos: Default::default(),
            slot_waits: AtomicU64::new(0),
            slot_wait_nanos: AtomicU64::new(0),
            saturations: AtomicU64::new(0),
        })
    }
}

/// How many shards a route has: the cores, rounded up to a power of two, from 2 to 16.
fn shard_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 16)
            .next_power_of_two()
    })
}

/// This thread's shard number: threads are numbered as they first count something.
fn thread_shard() -> usize {
    use std::cell::Cell;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        s.get()
    })
}

/// The counters of one route.
pub(crate) struct RouteStats {
    pub(crate) label: Arc<str>,
    pub(crate) kind: HandlerKind,
    shards: Box<[Shard]>,
}

impl RouteStats {
    fn new(label: &str, kind: HandlerKind) -> RouteStats {
        RouteStats {
            label: Arc::from(label),
            kind,
            shards: (0..shard_count()).map(|_| Shard::new()).collect(),
        }
    }

    fn shard(&self) -> &Counts<AtomicU64> {
        // The count is a power of two.
        &self.shards[thread_shard() & (self.shards.len() - 1)].0
    }

    /// Counts one request that ended: where its access record is dropped.
    pub(crate) fn record(
        &self,
        method: &Method,
        status: u16,
        took: Duration,
        outcome: Outcome,
        cutting: bool,
    ) {
        let c = self.shard();
        c.requests[method_slot(method)][status_slot(status)].fetch_add(1, Ordering::Relaxed);
        let n = nanos(took);
        let bucket = BUCKET_NANOS
            .iter()
            .position(|&b| n <= b)
            .unwrap_or(BUCKETS.len());
        c.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        c.duration_nanos.fetch_add(n, Ordering::Relaxed);
        c.outcomes[outcome_slot(outcome, cutting)].fetch_add(1, Ordering::Relaxed);
    }

    /// A crossing made while serving this route ended.
    fn crossed(&self, crossing: Crossing, ran: Duration) {
        if let Some(i) = crossing_slot(crossing) {
            let c = self.shard();
            c.crossings[i].fetch_add(1, Ordering::Relaxed);
            c.crossing_nanos[i].fetch_add(nanos(ran), Ordering::Relaxed);
        }
    }

    /// A call made while serving this route waited for a blocking slot.
    fn slot_waited(&self, waited: Duration, saturated: bool) {
        let c = self.shard();
        c.slot_waits.fetch_add(1, Ordering::Relaxed);
        c.slot_wait_nanos
            .fetch_add(nanos(waited), Ordering::Relaxed);
        if saturated {
            c.saturations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every shard added up.
    pub(crate) fn totals(&self) -> Counts<u64> {
        let mut t = Counts {
            requests: [[0; STATUSES]; METHODS.len()],
            outcomes: [0; OUTCOMES.len()],
            buckets: [0; BUCKETS.len() + 1],
            duration_nanos: 0,
            crossings: [0; CROSSINGS.len()],
            crossing_nanos: [0; CROSSINGS.len()],
            slot_waits: 0,
            slot_wait_nanos: 0,
            saturations: 0,
        };
        let add = |to: &mut u64, from: &AtomicU64| *to += from.load(Ordering::Relaxed);
        for shard in self.shards.iter() {
            let c = &shard.0;
            for (tm, cm) in t.requests.iter_mut().zip(&c.requests) {
                for (ts, cs) in tm.iter_mut().zip(cm) {
                    add(ts, cs);
                }
            }
            for (to, from) in t.outcomes.iter_mut().zip(&c.outcomes) {
                add(to, from);
            }
            for (to, from) in t.buckets.iter_mut().zip(&c.buckets) {
                add(to, from);
            }
            add(&mut t.duration_nanos, &c.duration_nanos);
            for (to, from) in t.crossings.iter_mut().zip(&c.crossings) {
                add(to, from);
            }
            for (to, from) in t.crossing_nanos.iter_mut().zip(&c.crossing_nanos) {
                add(to, from);
            }
            add(&mut t.slot_waits, &c.slot_waits);
            add(&mut t.slot_wait_nanos, &c.slot_wait_nanos);
            add(&mut t.saturations, &c.saturations);
        }
        t
    }

    /// A snapshot, for the report.
    pub(crate) fn snapshot(&self) -> RouteSnapshot {
        let t = self.totals();
        let mut statuses = Vec::new();
        for s in 0..STATUSES {
            let n: u64 = t.requests.iter().map(|m| m[s]).sum();
            if n > 0 {
                statuses.push((status_label(s), n));
            }
        }
        RouteSnapshot {
            label: self.label.clone(),
            kind: self.kind,
            statuses,
            buckets: t.buckets,
            duration: Duration::from_nanos(t.duration_nanos),
            crossings: std::array::from_fn(|i| {
                (t.crossings[i], Duration::from_nanos(t.crossing_nanos[i]))
            }),
            slot_waits: t.slot_waits,
            slot_wait: Duration::from_nanos(t.slot_wait_nanos),
            saturations: t.saturations,
        }
    }
}

/// What a request's crossings report to: its route's counters, through an object of its
/// connection's ([`observer`]), so that the reference count a request's context takes and
/// drops is on a cache line of that connection's, not one every core writes.
struct Forward(Arc<RouteStats>);

/// The observers of one connection's requests, one slot per route, each made when first
/// needed.
pub(crate) type ConnObservers = Box<[std::sync::OnceLock<Arc<dyn Observer>>]>;

/// The observer of `conn`'s requests to the route with counters number `route`: made once
/// per connection and route, then shared by reference count.
pub(crate) fn observer(conn: &crate::conn::ConnState, route: usize) -> Option<Arc<dyn Observer>> {
    let stats = conn.counters.route_stats.get()?;
    let slots = conn
        .observers
        .get_or_init(|| stats.iter().map(|_| std::sync::OnceLock::new()).collect());
    let o = slots.get(route)?.get_or_init(|| {
        let forward: Arc<dyn Observer> = Arc::new(Forward(stats[route].clone()));
        forward
    });
    Some(o.clone())
}

impl Observer for Forward {
    fn crossed(&self, crossing: Crossing, ran: Duration) {
        self.0.crossed(crossing, ran);
    }

    fn slot_waited(&self, waited: Duration, saturated: bool) {
        self.0.slot_waited(waited, saturated);
    }
}

fn outcome_slot(outcome: Outcome, cutting: bool) -> usize {
    match outcome {
        Outcome::Complete => 0,
        Outcome::Cut => 1,
        Outcome::Running if cutting => 3,
        Outcome::Running | Outcome::ClientGone => 2,
    }
}

/// What one route has counted, read at once.
pub(crate) struct RouteSnapshot {
    pub(crate) label: Arc<str>,
    pub(crate) kind: HandlerKind,
    /// Requests by status label, the statuses seen only.
    pub(crate) statuses: Vec<(&'static str, u64)>,
    pub(crate) buckets: [u64; BUCKETS.len() + 1],
    pub(crate) duration: Duration,
    /// Calls and time, in [`CROSSINGS`] order: the sync handler, `sync_to_async`,
    /// `async_to_sync`.
    pub(crate) crossings: [(u64, Duration); CROSSINGS.len()],
    pub(crate) slot_waits: u64,
    pub(crate) slot_wait: Duration,
    pub(crate) saturations: u64,
}

impl RouteSnapshot {
    pub(crate) fn requests(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Requests answered with `status`.
    pub(crate) fn with_status(&self, status: &str) -> u64 {
        self.statuses
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }

    /// The `q` quantile of the request durations, in seconds, interpolated within its bucket
    /// as Prometheus's `histogram_quantile` does; `None` without requests. A quantile in the
    /// `+Inf` bucket is the largest finite bound.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.requests();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = BUCKETS.get(i) else {
                    return Some(BUCKETS[BUCKETS.len() - 1]);
                };
                let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        Some(BUCKETS[BUCKETS.len() - 1])
    }
}

/// Encodes a server's counters when the metrics are scraped.
struct Collect(Arc<ServerStats>);

impl fmt::Debug for Collect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collect").finish_non_exhaustive()
    }
}

/// The labels every per-route sample has, plus `N` more.
fn labels<'a, const N: usize>(
    route: &'a RouteStats,
    more: [(&'static str, &'a str); N],
) -> Vec<(&'static str, &'a str)> {
    let mut l = Vec::with_capacity(2 + N);
    l.push(("route", &*route.label));
    l.push(("kind", route.kind.as_str()));
    l.extend(more);
    l
}

impl Collector for Collect {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let server = &*self.0;
        let routes = &server.routes;
        let totals: Vec<Counts<u64>> = routes.iter().map(|r| r.totals()).collect();

        let mut m = encoder.encode_descriptor(
            "amphi_requests",
            "Requests served, by route (mount prefix), handler kind, method and status.",
            None,
            MetricType::Counter,
        )?;
        for (r, t) in routes.iter().zip(&totals) {
            for (mi, method) in METHODS.iter().enumerate() {
                for s in 0..STATUSES {
                    let n = t.requests[mi][s];
                    if n > 0 {
                        let l = labels(r, [("method", *method), ("status", status_label(s))]);
                        counter(&mut m, &l, n)?;
                    }
                }
            }
        }

        let mut m = encoder.encode_descriptor(
            "amphi_request_duration_seconds",
            "From the request head to the end of its response.",
            None,
            MetricType::Histogram,
        )?;
        for (r, t) in routes.iter().zip(&totals) {
            // Per bucket: the encoder adds them up into Prometheus's cumulative `le` counts.
            let buckets: Vec<(f64, u64)> = t
                .buckets
                .iter()
                .enumerate()
                .map(|(i, &n)| (BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n))
                .collect();
            let count = buckets.iter().map(|(_, n)| n).sum();
            if count == 0 {
                continue;
            }
            m.encode_family(&labels(r, []))?
                .encode_histogram::<NoLabelSet>(seconds(t.duration_nanos), count, &buckets, None)?;
        }

        let mut m = encoder.encode_descriptor(
            "amphi_request_outcomes",
            "How requests ended: complete, cut (after the response started), client_gone, cut_at_shutdown.",
            None,
            MetricType::Counter,
        )?;
        for (r, t) in routes.iter().zip(&totals) {
            for (i, outcome) in OUTCOMES.iter().enumerate() {
                let n = t.outcomes[i];
                if n > 0 {
                    counter(&mut m, &labels(r, [("outcome", *outcome)]), n)?;
                }
            }
        }

        let mut m = encoder.encode_descriptor(
            "amphi_crossings",
            "Crossings of the sync/async boundary made while serving the route: sync_handler, sync_to_async, async_to_sync.",
            None,
            MetricType::Counter,
        )?;
        for (r, t) in routes.iter().zip(&totals) {
            for (i, c) in CROSSINGS.iter().enumerate() {
                let n = t.crossings[i];
                if n > 0 {
                    counter(&mut m, &labels(r, [("crossing", c.as_str())]), n)?;
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            "amphi_crossing_seconds",
            "Time those crossings ran: a blocking thread held (sync_handler, sync_to_async) or blocked on async work (async_to_sync).",
            None,
            MetricType::Counter,
        )?;
        for (r, t) in routes.iter().zip(&totals) {
            for (i, c) in CROSSINGS.iter().enumerate() {
                if t.crossings[i] > 0 {
                    let s = seconds(t.crossing_nanos[i]);
                    counter(&mut m, &labels(r, [("crossing", c.as_str())]), s)?;
                }
            }
        }

        for (name, help, pick) in [
            (
                "amphi_route_slot_waits",
                "Waits for a blocking pool slot made while serving the route.",
                0,
            ),
            (
                "amphi_route_saturations",
                "Calls of the route refused because no blocking slot came free in time (503).",
                2,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (r, t) in routes.iter().zip(&totals) {
                let n = if pick == 0 {
                    t.slot_waits
                } else {
                    t.saturations
                };
                if n > 0 || r.kind == HandlerKind::Sync {
                    counter(&mut m, &labels(r, []), n)?;
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            "amphi_route_slot_wait_seconds",
            "Time spent waiting for a blocking pool slot while serving the route.",
            None,
            MetricType::Counter,
        )?;
        for (r, t) in routes.iter().zip(&totals) {
            if t.slot_waits > 0 || r.kind == HandlerKind::Sync {
                counter(&mut m, &labels(r, []), seconds(t.slot_wait_nanos))?;
            }
        }

        let pool = server.pool.stats();
        gauge(
            &mut encoder,
            "amphi_blocking_pool_slots",
            "The most blocking calls that run at once.",
            pool.limit as u64,
        )?;
        gauge(
            &mut encoder,
            "amphi_blocking_pool_busy",
            "Blocking slots taken now.",
            pool.in_flight as u64,
        )?;
        gauge(
            &mut encoder,
            "amphi_blocking_pool_waiting",
            "Calls waiting for a blocking slot now (the queue's depth).",
            pool.waiting as u64,
        )?;
        total(
            &mut encoder,
            "amphi_blocking_pool_waits",
            "Calls that had to wait for a blocking slot.",
            pool.waits,
        )?;
        total(
            &mut encoder,
            "amphi_blocking_pool_wait_seconds",
            "Time calls spent waiting for a blocking slot.",
            pool.wait_time.as_secs_f64(),
        )?;
        total(
            &mut encoder,
            "amphi_blocking_pool_saturations",
            "Calls refused because no blocking slot came free in time.",
            pool.saturations,
        )?;
        total(
            &mut encoder,
            "amphi_blocking_pool_calls",
            "Calls that held a blocking slot, while the pool measures busy time (BlockingPool::measure_busy_time).",
            pool.timed_calls,
        )?;
        total(
            &mut encoder,
            "amphi_blocking_pool_busy_seconds",
            "Time blocking slots were held, while the pool measures busy time.",
            pool.busy_time.as_secs_f64(),
        )?;
        let c = &server.counters;
        gauge(
            &mut encoder,
            "amphi_connections_open",
            "Connections open now.",
            c.connections_open.load(Ordering::Relaxed) as u64,
        )?;
        total(
            &mut encoder,
            "amphi_connections",
            "Connections accepted.",
            c.connections.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut encoder,
            "amphi_requests_in_flight",
            "Requests being served now.",
            c.in_flight.load(Ordering::Relaxed) as u64,
        )?;
        gauge(
            &mut encoder,
            "amphi_websockets_open",
            "Websocket sessions open now.",
            server.sessions.live() as u64,
        )?;
        Ok(())
    }
}

fn counter<V: prometheus_client::encoding::EncodeCounterValue>(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: V,
) -> fmt::Result {
    m.encode_family(labels)?
        .encode_counter::<NoLabelSet, V, u64>(&value, None)
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

fn total<V: prometheus_client::encoding::EncodeCounterValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: V,
) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, V, u64>(&value, None)
}

/// Writes `seconds` for people: `850 µs`, `12.3 ms`, `4.20 s`.
pub(crate) fn human(seconds: f64, out: &mut String) {
    let _ = if seconds < 0.001 {
        write!(out, "{:.0} µs", seconds * 1e6)
    } else if seconds < 1.0 {
        write!(out, "{:.1} ms", seconds * 1e3)
    } else {
        write!(out, "{seconds:.2} s")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_slots_name_the_code_or_its_class() {
        assert_eq!(status_label(status_slot(200)), "200");
        assert_eq!(status_label(status_slot(503)), "503");
        assert_eq!(status_label(status_slot(0)), "0");
        assert_eq!(status_label(status_slot(418)), "4xx");
        assert_eq!(status_label(status_slot(299)), "2xx");
        assert_eq!(status_label(status_slot(599)), "5xx");
        assert_eq!(status_label(status_slot(42)), "other");
        assert_eq!(status_label(status_slot(999)), "other");
    }

    #[test]
    fn threads_count_into_shards_that_add_up() {
        let r = Arc::new(RouteStats::new("/x", HandlerKind::Sync));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        r.record(
                            &Method::POST,
                            201,
                            Duration::from_millis(1),
                            Outcome::Complete,
                            false,
                        );
                        r.crossed(Crossing::SyncHandler, Duration::from_millis(1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let t = r.totals();
        assert_eq!(
            t.requests[method_slot(&Method::POST)][status_slot(201)],
            400
        );
        assert_eq!(t.crossings[0], 400);
        assert_eq!(t.crossing_nanos[0], 400 * 1_000_000);
        assert_eq!(r.snapshot().requests(), 400);
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let r = RouteStats::new("/x", HandlerKind::Async);
        // 100 requests of 30 µs (the 25-50 µs bucket), 100 of 2 s (the 1-2.5 s bucket).
        for _ in 0..100 {
            r.record(
                &Method::GET,
                200,
                Duration::from_micros(30),
                Outcome::Complete,
                false,
            );
            r.record(
                &Method::GET,
                200,
                Duration::from_secs(2),
                Outcome::Complete,
                false,
            );
        }
        let s = r.snapshot();
        assert_eq!(s.requests(), 200);
        let p25 = s.quantile(0.25).unwrap();
        assert!((0.000_025..=0.000_05).contains(&p25), "{p25}");
        let p99 = s.quantile(0.99).unwrap();
        assert!((1.0..=2.5).contains(&p99), "{p99}");
        assert!(RouteStats::new("/y", HandlerKind::Sync)
            .snapshot()
            .quantile(0.5)
            .is_none());
    }

    #[test]
    fn a_request_past_the_last_bound_is_counted_in_inf() {
        let r = RouteStats::new("/x", HandlerKind::Async);
        r.record(
            &Method::PUT,
            0,
            Duration::from_secs(60),
            Outcome::Running,
            true,
        );
        let s = r.snapshot();
        assert_eq!(s.buckets[BUCKETS.len()], 1);
        assert_eq!(s.with_status("0"), 1);
        assert_eq!(s.quantile(0.5), Some(10.0));
        assert_eq!(r.totals().outcomes[3], 1);
    }
}
