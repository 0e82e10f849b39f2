//! The access log: one `tracing` event per request, target `amphi::access`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri, Version};
use tokio::time::Instant;

use crate::conn::ConnState;

/// How a request ended, as the access log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Still running (the record is dropped in this state when the request is abandoned).
    Running,
    /// The response was handed over completely.
    Complete,
    /// The response was cut after it started (handler error or panic).
    Cut,
    /// The handler answered, but its client had left while sending the request body.
    ClientGone,
}

/// What the access log line for one request says; logged when dropped, on every path.
pub(crate) struct AccessRecord {
    /// The request's connection, which reaches the app; `None` for a record that counts and
    /// logs nothing (a request inside a layered router, whose outer record does both).
    conn: Option<Arc<ConnState>>,
    method: Method,
    /// What the log line's `path` comes from: the URI's path and query only (40 bytes, not
    /// the 88 of a whole `Uri`), since the record is moved with every request future.
    target: Option<PathAndQuery>,
    version: Version,
    kind: HandlerKind,
    /// The client as a trusted proxy says (`None`: the connection's peer). Boxed: a plain
    /// request pays 8 bytes for it, moved with the record, rather than 32.
    forwarded: Option<Box<Option<SocketAddr>>>,
    /// `None` when the access log is filtered out (neither its info nor its warn lines are
    /// enabled): the request then costs no clock reads and logs nothing.
    started: Option<Instant>,
    pub(crate) status: Option<StatusCode>,
    pub(crate) bytes: u64,
    pub(crate) outcome: Outcome,
    /// The request's span (`Server::request_spans`), current while the log line is written,
    /// so the line carries the request id.
    span: crate::observe::RequestSpan,
    /// The index of the route's counters (`Counters::route_stats`), when the server keeps
    /// metrics.
    #[cfg(feature = "metrics")]
    stats: Option<u32>,
    /// Whether the line is logged: `false` when only the metrics made the record read the
    /// clock (`started`), so its end records the counters and stops there.
    #[cfg(feature = "metrics")]
    logs: bool,
}

/// Whether the access log is wanted at all (its `warn` lines; its `info` lines are checked
/// when written). `tracing::enabled!` asks the subscriber every time, which with
/// `tracing-subscriber`'s `EnvFilter` costs more than a hundred instructions a request; this
/// reads what the subscriber said of the callsite when it was registered, as the event
/// macros do, and asks only when that was "sometimes". tracing updates the answer when the
/// subscriber or its filter changes.
fn logging() -> bool {
    use tracing_core::callsite::DefaultCallsite;
    use tracing_core::{field::FieldSet, metadata::Kind, Level, Metadata};
    static META: Metadata<'static> = Metadata::new(
        "access log enabled",
        "amphi::access",
        Level::WARN,
        Some(file!()),
        Some(line!()),
        Some(module_path!()),
        FieldSet::new(&[], tracing_core::identify_callsite!(&CALLSITE)),
        Kind::HINT,
    );
    static CALLSITE: DefaultCallsite = DefaultCallsite::new(&META);
    if !tracing::level_enabled!(Level::WARN) {
        return false;
    }
    let interest = CALLSITE.interest();
    if interest.is_always() {
        true
    } else if interest.is_never() {
        false
    } else {
        tracing::dispatcher::get_default(|d| d.enabled(&META))
    }
}

impl AccessRecord {
    pub(crate) fn new(
        conn: Arc<ConnState>,
        method: Method,
        uri: &Uri,
        version: Version,
        kind: HandlerKind,
        forwarded: Option<Box<Option<SocketAddr>>>,
    ) -> AccessRecord {
        conn.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.request_started(version);
        AccessRecord {
            conn: Some(conn),
            method,
            target: uri.path_and_query().cloned(),
            version,
            kind,
            forwarded,
            started: logging().then(Instant::now),
            status: None,
            bytes: 0,
            outcome: Outcome::Running,
            span: crate::observe::RequestSpan::default(),
            #[cfg(feature = "metrics")]
            stats: None,
            #[cfg(feature = "metrics")]
            logs: true,
        }
    }

    /// Replaces the URI the record logs (the same URI, held in memory of its own).
    pub(crate) fn set_uri(&mut self, uri: &Uri) {
        self.target = uri.path_and_query().cloned();
    }

    /// A record that counts nothing and logs nothing: for a request served inside a layered
    /// router, whose outer record does both.
    pub(crate) fn silent(
        method: Method,
        uri: &Uri,
        version: Version,
        kind: HandlerKind,
    ) -> AccessRecord {
        AccessRecord {
            conn: None,
            method,
            target: uri.path_and_query().cloned(),
            version,
            kind,
            forwarded: None,
            started: None,
            status: None,
            bytes: 0,
            outcome: Outcome::Running,
            span: crate::observe::RequestSpan::default(),
            #[cfg(feature = "metrics")]
            stats: None,
            #[cfg(feature = "metrics")]
            logs: true,
        }
    }

    /// The request's span, entered while the log line is written.
    pub(crate) fn set_span(&mut self, span: crate::observe::RequestSpan) {
        self.span = span;
    }

    /// Counts the request into `stats` when it ends (a record that logs nothing counts
    /// nothing either: the outer request of a layered router does both).
    #[cfg(feature = "metrics")]
    pub(crate) fn set_stats(&mut self, stats: Option<u32>) {
        if self.conn.is_none() || stats.is_none() {
            return;
        }
        // The duration needs both ends, whether or not the log line is written.
        if self.started.is_none() {
            self.logs = false;
            self.started = Some(Instant::now());
        }
        self.stats = stats;
    }

    /// The request's path, as `Uri::path` says it.
    pub(crate) fn path(&self) -> &str {
        self.target.as_ref().map_or("", PathAndQuery::path)
    }

    pub(crate) fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let Some(conn) = &self.conn else {
            return;
        };
        conn.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        conn.counters.served.fetch_add(1, Ordering::Relaxed);
        // One clock read for both the connection's idle time and the log line.
        let now = Instant::now();
        conn.request_ended(now);
        let Some(started) = self.started else {
            return;
        };
        let status = self.status.map_or(0, |s| s.as_u16());
        let cutting = conn.counters.cutting.load(Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(stats) = self
            .stats
            .and_then(|i| conn.counters.route_stats.get()?.get(i as usize))
        {
            let took = now.saturating_duration_since(started);
            stats.record(&self.method, status, took, self.outcome, cutting);
        }
        #[cfg(feature = "metrics")]
        if !self.logs {
            return;
        }
        let _span = self.span.enter();
        // Computed inside each event, which evaluates its fields only when it is enabled: at
        // `warn`, a complete request's line is off and costs no subtraction.
        let micros = || now.saturating_duration_since(started).as_micros() as u64;
        let method = self.method.as_str();
        let path = self.path();
        let kind = self.kind.as_str();
        let client = ClientField(match &self.forwarded {
            Some(c) => **c,
            None => conn.peer,
        });
        let version = match self.version {
            Version::HTTP_2 => "2",
            Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        match self.outcome {
            Outcome::Complete => tracing::info!(
                target: "amphi::access",
                method, path, status, bytes = self.bytes, duration_us = micros(), kind, version,
                outcome = "complete", client = %client
            ),
            Outcome::Cut => tracing::warn!(
                target: "amphi::access",
                method, path, status, bytes = self.bytes, duration_us = micros(), kind, version,
                outcome = "cut", client = %client
            ),
            Outcome::Running if cutting => tracing::warn!(
                target: "amphi::access",
                method, path, status, bytes = self.bytes, duration_us = micros(), kind, version,
                outcome = "cut at shutdown", client = %client
            ),
            Outcome::Running | Outcome::ClientGone => tracing::info!(
                target: "amphi::access",
                method, path, status, bytes = self.bytes, duration_us = micros(), kind, version,
                outcome = "client gone", client = %client
            ),
        }
    }
}

/// The access log's `client`: `ip:port`, the ip alone for a forwarded client without a port,
/// `-` when unknown (a unix socket).
struct ClientField(Option<SocketAddr>);

impl fmt::Display for ClientField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("-"),
            Some(a) if a.port() == 0 => write!(f, "{}", a.ip()),
            Some(a) => write!(f, "{a}"),
        }
    }
}

/// Which kind of handler served a request, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandlerKind {
    Sync,
    Async,
    /// A tower service (`tower` feature).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    Service,
    None,
}

impl HandlerKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HandlerKind::Sync => "sync",
            HandlerKind::Async => "async",
            HandlerKind::Service => "tower",
            HandlerKind::None => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::logging;
    use tracing_subscriber::filter::EnvFilter;

    fn with_filter(directives: &str) -> bool {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(directives))
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, logging)
    }

    #[test]
    fn the_access_log_is_wanted_as_the_current_subscriber_says() {
        assert!(!logging(), "no subscriber");
        assert!(with_filter("warn"));
        assert!(with_filter("info"));
        assert!(with_filter("error,amphi::access=warn"));
        assert!(!with_filter("error"));
        assert!(!with_filter("info,amphi::access=off"));
        // The answers follow each change of subscriber, back and forth.
        assert!(with_filter("warn"));
        assert!(!with_filter("off"));
        assert!(!logging(), "no subscriber again");
    }
}
