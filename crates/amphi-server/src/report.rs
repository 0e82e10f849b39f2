//! The migration report (feature `metrics`): for each route, its kind, share of traffic,
//! time spent blocking, latency, pool waits and `503`s, and a ranked list of what to move to
//! async next, as a self-contained HTML page (inline SVG charts, no script, no external
//! asset) or as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use amphi_core::{AsyncHandler, AsyncRequest};
use amphi_sync_to_async::PoolStats;
use http::{header, StatusCode};

use crate::access::HandlerKind;
use crate::metrics::{human, text, Metrics, RouteSnapshot};

/// A snapshot of what a server served, per route, and what to migrate next: what
/// [`Metrics::report`] returns and [`Metrics::report_handler`] serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// Since the metrics were made.
    pub uptime: Duration,
    /// Requests counted, every route together (earlier requests for the report included, not
    /// the one being answered).
    pub requests: u64,
    /// Every mounted route, and `unmatched` once a request matched none; the busiest first.
    pub routes: Vec<RouteReport>,
    /// The server's blocking pool; `None` before a server uses the metrics.
    pub pool: Option<PoolStats>,
    /// What to move to async next, most worth it first.
    pub migrate_next: Vec<Advice>,
}

/// One route in a [`Report`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouteReport {
    /// The mount prefix (`/` for the root), or `unmatched`.
    pub route: String,
    /// `sync`, `async`, `tower` or `none` (a prefix that only answers 404).
    pub kind: &'static str,
    /// Requests served.
    pub requests: u64,
    /// Its share of all requests, 0 to 1.
    pub share: f64,
    /// Requests by status (`"200"`, or a class such as `"4xx"` for rarer codes), the
    /// statuses seen only.
    pub statuses: Vec<(String, u64)>,
    /// Requests answered `5xx`.
    pub server_errors: u64,
    /// Requests answered `503`.
    pub unavailable: u64,
    /// Calls refused because no blocking slot came free in time (each a `503` for a sync
    /// route).
    pub saturations: u64,
    /// The median and 99th percentile request durations, estimated from the histogram's
    /// buckets (as Prometheus's `histogram_quantile`); `None` without requests.
    pub p50: Option<Duration>,
    /// See [`p50`](RouteReport::p50).
    pub p99: Option<Duration>,
    /// All its requests' durations, added up.
    pub request_time: Duration,
    /// Time spent blocking while serving it: its sync handler's time on a blocking thread
    /// plus its `sync_to_async` calls' time.
    pub blocking: Duration,
    /// Its sync handler's time on blocking threads (sync routes).
    pub handler_blocking: Duration,
    /// `sync_to_async` calls made while serving it, and their time.
    pub sync_to_async_calls: u64,
    /// See [`sync_to_async_calls`](RouteReport::sync_to_async_calls).
    pub sync_to_async: Duration,
    /// `async_to_sync` calls made while serving it (from blocking code), and their time.
    pub async_to_sync_calls: u64,
    /// See [`async_to_sync_calls`](RouteReport::async_to_sync_calls).
    pub async_to_sync: Duration,
    /// Waits for a blocking slot, and their time.
    pub slot_waits: u64,
    /// See [`slot_waits`](RouteReport::slot_waits).
    pub slot_wait: Duration,
}

/// One entry of [`Report::migrate_next`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Advice {
    /// The route to move.
    pub route: String,
    /// Its kind now.
    pub kind: &'static str,
    /// What ranks it: the blocking time moving it would free, slot waits included.
    pub weight: Duration,
    /// Why, in a sentence.
    pub reason: String,
}

impl Metrics {
    /// The migration report, from the counters as they are now.
    ///
    /// # Examples
    ///
    /// ```
    /// use amphi_server::metrics::Metrics;
    ///
    /// let report = Metrics::new().report();
    /// assert_eq!(report.requests, 0);
    /// assert!(report.to_json().contains("\"migrate_next\""));
    /// assert!(report.to_html().starts_with("<!DOCTYPE html>"));
    /// ```
    pub fn report(&self) -> Report {
        let server = self.server();
        let snapshots: Vec<RouteSnapshot> = server
            .as_ref()
            .map(|s| s.routes.iter().map(|r| r.snapshot()).collect())
            .unwrap_or_default();
        let requests: u64 = snapshots.iter().map(RouteSnapshot::requests).sum();
        let mut routes: Vec<RouteReport> = snapshots
            .iter()
            // `unmatched` only once something went there.
            .filter(|s| s.requests() > 0 || &*s.label != "unmatched")
            .map(|s| route_report(s, requests))
            .collect();
        // The busiest first (a stable sort: ties keep the route table's order).
        routes.sort_by_key(|r| std::cmp::Reverse(r.requests));
        let migrate_next = advise(&routes);
        Report {
            uptime: self.age(),
            requests,
            routes,
            pool: server.map(|s| s.pool.stats()),
            migrate_next,
        }
    }

    /// An async handler serving the [`report`](Metrics::report), for a mount such as
    /// `/_amphi/report`: the HTML page, or the JSON when the query has `format=json`, the
    /// path below the mount is `/json`, or the request accepts `application/json` and not
    /// `text/html`. Methods other than `GET` and `HEAD` get `405` with an `Allow` header.
    pub fn report_handler(&self) -> impl AsyncHandler {
        self.page(|metrics, req| {
            let report = metrics.report();
            if wants_json(req) {
                text(StatusCode::OK, "application/json", report.to_json())
            } else {
                text(StatusCode::OK, "text/html; charset=utf-8", report.to_html())
            }
        })
    }
}

fn wants_json(req: &AsyncRequest) -> bool {
    use amphi_core::RequestExt;
    let query = req.uri().query().unwrap_or("");
    if query.split('&').any(|kv| kv == "format=json") {
        return true;
    }
    if query.split('&').any(|kv| kv == "format=html") {
        return false;
    }
    if RequestExt::path(req)
        .trim_end_matches('/')
        .ends_with("/json")
    {
        return true;
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/html")
}

fn route_report(s: &RouteSnapshot, total: u64) -> RouteReport {
    let requests = s.requests();
    let [(_, handler), (s2a_calls, s2a), (a2s_calls, a2s)] = s.crossings;
    let server_errors = s
        .statuses
        .iter()
        .filter(|(st, _)| st.starts_with('5'))
        .map(|(_, n)| n)
        .sum();
    RouteReport {
        route: s.label.to_string(),
        kind: s.kind.as_str(),
        requests,
        share: if total == 0 {
            0.0
        } else {
            requests as f64 / total as f64
        },
        statuses: s
            .statuses
            .iter()
            .map(|(st, n)| ((*st).to_owned(), *n))
            .collect(),
        server_errors,
        unavailable: s.with_status("503"),
        saturations: s.saturations,
        p50: s.quantile(0.5).map(Duration::from_secs_f64),
        p99: s.quantile(0.99).map(Duration::from_secs_f64),
        request_time: s.duration,
        blocking: handler + s2a,
        handler_blocking: handler,
        sync_to_async_calls: s2a_calls,
        sync_to_async: s2a,
        async_to_sync_calls: a2s_calls,
        async_to_sync: a2s,
        slot_waits: s.slot_waits,
        slot_wait: s.slot_wait,
    }
}

/// The share of an async route's request time spent in `sync_to_async` past which it is
/// worth migrating further.
const MOSTLY_BLOCKING: f64 = 0.5;

/// Ranks what to migrate next: sync routes by the blocking time (and slot waits) moving them
/// would free; async routes that spend most of their time in `sync_to_async`.
fn advise(routes: &[RouteReport]) -> Vec<Advice> {
    let all_blocking: f64 = routes.iter().map(|r| r.blocking.as_secs_f64()).sum();
    let pct = |d: Duration| {
        if all_blocking > 0.0 {
            100.0 * d.as_secs_f64() / all_blocking
        } else {
            0.0
        }
    };
    let mut out = Vec::new();
    for r in routes.iter().filter(|r| r.requests > 0) {
        let weight = r.blocking + r.slot_wait;
        let mut reason = String::new();
        if r.kind == HandlerKind::Sync.as_str() {
            if r.saturations > 0 {
                let _ = write!(
                    reason,
                    "{} requests refused with 503 (every blocking slot busy); ",
                    r.saturations
                );
            }
            reason.push_str("blocking: ");
            human(r.handler_blocking.as_secs_f64(), &mut reason);
            let _ = write!(
                reason,
                " of handler time on blocking threads ({:.0}% of all blocking time)",
                pct(r.blocking)
            );
            if r.slot_waits > 0 {
                let _ = write!(reason, ", {} waits for a slot (", r.slot_waits);
                human(r.slot_wait.as_secs_f64(), &mut reason);
                reason.push(')');
            }
            if let Some(p99) = r.p99 {
                reason.push_str(", p99 ");
                human(p99.as_secs_f64(), &mut reason);
            }
        } else if r.kind == HandlerKind::Async.as_str() && r.sync_to_async_calls > 0 {
            let share = r.sync_to_async.as_secs_f64() / r.request_time.as_secs_f64().max(1e-9);
            if share < MOSTLY_BLOCKING && r.saturations == 0 {
                continue;
            }
            let _ = write!(
                reason,
                "an async route that spends {:.0}% of its time in sync_to_async ({} calls, ",
                (share * 100.0).min(100.0),
                r.sync_to_async_calls
            );
            human(r.sync_to_async.as_secs_f64(), &mut reason);
            reason.push_str("): make what those calls do async");
            if r.saturations > 0 {
                let _ = write!(
                    reason,
                    "; {} calls refused (every blocking slot busy)",
                    r.saturations
                );
            }
        } else {
            continue;
        }
        out.push(Advice {
            route: r.route.clone(),
            kind: r.kind,
            weight,
            reason,
        });
    }
    out.sort_by(|a, b| b.weight.cmp(&a.weight).then_with(|| a.route.cmp(&b.route)));
    out
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Report {
    /// The report as JSON: the same data as the page. Durations are in seconds, in keys that
    /// say so (`p50_seconds`, `blocking_seconds`, `weight_seconds`, ...; `null` without
    /// requests); each route's `sync_to_async`, `async_to_sync` and `slot_waits` are objects
    /// of a count (`calls`, `count`) and `seconds`; `statuses` maps each status seen to its
    /// count; `migrate_next` is ranked from 1; `pool` says `busy` for the slots taken.
    pub fn to_json(&self) -> String {
        use serde_json::{json, Map, Value};
        let opt = |d: Option<Duration>| d.map_or(Value::Null, |d| json!(secs(d)));
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let statuses: Map<String, Value> = r
                    .statuses
                    .iter()
                    .map(|(s, n)| (s.clone(), json!(n)))
                    .collect();
                json!({
                    "route": r.route,
                    "kind": r.kind,
                    "requests": r.requests,
                    "share": r.share,
                    "statuses": statuses,
                    "server_errors": r.server_errors,
                    "unavailable": r.unavailable,
                    "saturations": r.saturations,
                    "p50_seconds": opt(r.p50),
                    "p99_seconds": opt(r.p99),
                    "request_seconds": secs(r.request_time),
                    "blocking_seconds": secs(r.blocking),
                    "handler_blocking_seconds": secs(r.handler_blocking),
                    "sync_to_async": {"calls": r.sync_to_async_calls, "seconds": secs(r.sync_to_async)},
                    "async_to_sync": {"calls": r.async_to_sync_calls, "seconds": secs(r.async_to_sync)},
                    "slot_waits": {"count": r.slot_waits, "seconds": secs(r.slot_wait)},
                })
            })
            .collect();
        let advice: Vec<Value> = self
            .migrate_next
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({
                    "rank": i + 1,
                    "route": a.route,
                    "kind": a.kind,
                    "weight_seconds": secs(a.weight),
                    "reason": a.reason,
                })
            })
            .collect();
        let pool = self.pool.map_or(Value::Null, |p| {
            json!({
                "limit": p.limit,
                "busy": p.in_flight,
                "waiting": p.waiting,
                "waits": p.waits,
                "wait_seconds": secs(p.wait_time),
                "saturations": p.saturations,
                "calls": p.timed_calls,
                "busy_seconds": secs(p.busy_time),
            })
        });
        json!({
            "uptime_seconds": secs(self.uptime),
            "requests": self.requests,
            "routes": routes,
            "pool": pool,
            "migrate_next": advice,
        })
        .to_string()
    }

    /// The report as a self-contained HTML page: inline CSS and SVG charts, no script and no
    /// external asset, so it renders offline and can be saved as it is.
    pub fn to_html(&self) -> String {
        let mut h = String::with_capacity(16 * 1024);
        h.push_str(concat!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
            // No favicon request: the page needs nothing but itself.
            "<link rel=\"icon\" href=\"data:,\">\n",
            "<title>amphi migration report</title>\n<style>\n",
            "body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1f2328;background:#f6f8fa}\n",
            "main{max-width:1100px;margin:0 auto;padding:24px}\n",
            "h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}\n",
            ".sub{color:#59636e;margin:0 0 16px}\n",
            ".cards{display:flex;flex-wrap:wrap;gap:12px}\n",
            ".card{background:#fff;border:1px solid #d1d9e0;border-radius:8px;padding:10px 14px;min-width:110px}\n",
            ".card b{display:block;font-size:20px}.card span{color:#59636e;font-size:13px}\n",
            "section{background:#fff;border:1px solid #d1d9e0;border-radius:8px;padding:12px 16px;margin-top:12px;overflow-x:auto}\n",
            "ol{margin:4px 0;padding-left:22px}li{margin:6px 0}\n",
            "table{border-collapse:collapse;width:100%;font-size:13px}\n",
            "th,td{text-align:right;padding:4px 5px;border-bottom:1px solid #eaeef2;white-space:nowrap}\n",
            "th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}\n",
            ".k{display:inline-block;padding:0 6px;border-radius:10px;font-size:12px;color:#fff}\n",
            ".sync{background:#d9480f}.async{background:#1971c2}.tower{background:#6741d9}.none{background:#868e96}\n",
            "svg{display:block;max-width:100%;height:auto}svg text{font:12px system-ui,sans-serif;fill:#1f2328}\n",
            ".legend{font-size:13px;color:#59636e}.sw{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;border-radius:2px}\n",
            "code{background:#eff2f5;padding:0 4px;border-radius:4px}\n",
            "</style>\n</head>\n<body>\n<main>\n<h1>amphi migration report</h1>\n"
        ));
        let _ = write!(h, "<p class=\"sub\">{} requests in ", self.requests);
        human(secs(self.uptime), &mut h);
        h.push_str(
            " since the server started counting. Sync routes block a thread per request; \
             this page shows where that time goes and what to move to async next.</p>\n",
        );
        self.cards(&mut h);
        h.push_str("<h2>What to migrate next</h2>\n<section>\n");
        if self.migrate_next.is_empty() {
            h.push_str("<p>Nothing: no route spends time blocking yet.</p>\n");
        } else {
            h.push_str("<ol>\n");
            for a in &self.migrate_next {
                let _ = writeln!(
                    h,
                    "<li><code>{}</code> <span class=\"k {}\">{}</span> {}</li>",
                    esc(&a.route),
                    a.kind,
                    a.kind,
                    esc(&a.reason)
                );
            }
            h.push_str("</ol>\n");
        }
        h.push_str("</section>\n");
        h.push_str("<h2>Share of traffic</h2>\n<section>\n");
        bars(
            &mut h,
            "share of traffic per route",
            &self.routes,
            Some(self.requests as f64),
            &[("requests", |r: &RouteReport| r.requests as f64, None)],
            |r, out| {
                let _ = write!(out, "{} ({:.1}%)", r.requests, r.share * 100.0);
            },
        );
        h.push_str("</section>\n<h2>Time spent blocking</h2>\n<section>\n");
        h.push_str(concat!(
            "<p class=\"legend\">",
            "<span class=\"sw\" style=\"background:#d9480f\"></span>sync handler",
            "<span class=\"sw\" style=\"background:#f59f00\"></span>sync_to_async inside the route",
            "<span class=\"sw\" style=\"background:#c92a2a\"></span>waiting for a blocking slot</p>\n"
        ));
        bars(
            &mut h,
            "blocking time per route",
            &self.routes,
            None,
            &[
                (
                    "sync handler",
                    |r: &RouteReport| secs(r.handler_blocking),
                    Some("#d9480f"),
                ),
                (
                    "sync_to_async",
                    |r: &RouteReport| secs(r.sync_to_async),
                    Some("#f59f00"),
                ),
                (
                    "slot waits",
                    |r: &RouteReport| secs(r.slot_wait),
                    Some("#c92a2a"),
                ),
            ],
            |r, out| {
                human(secs(r.blocking), out);
                if r.slot_wait > Duration::ZERO {
                    out.push_str(" + ");
                    human(secs(r.slot_wait), out);
                    out.push_str(" waiting");
                }
                if r.request_time > Duration::ZERO {
                    let _ = write!(
                        out,
                        " ({:.0}% of its time)",
                        100.0 * secs(r.blocking + r.slot_wait).min(secs(r.request_time))
                            / secs(r.request_time)
                    );
                }
            },
        );
        h.push_str("</section>\n<h2>Latency</h2>\n<section>\n");
        h.push_str(concat!(
            "<p class=\"legend\"><span class=\"sw\" style=\"background:#74c0fc\"></span>p50",
            "<span class=\"sw\" style=\"background:#1864ab\"></span>p99 (from the histogram's buckets)</p>\n"
        ));
        latency(&mut h, &self.routes);
        h.push_str("</section>\n<h2>Routes</h2>\n<section>\n");
        self.table(&mut h);
        h.push_str(
            "</section>\n<p class=\"sub\">The same data as JSON: add <code>?format=json</code>. \
             Prometheus metrics: the server's metrics mount.</p>\n</main>\n</body>\n</html>\n",
        );
        h
    }

    fn cards(&self, h: &mut String) {
        h.push_str("<div class=\"cards\">\n");
        let mut card = |value: String, what: &str| {
            let _ = writeln!(
                h,
                "<div class=\"card\"><b>{}</b><span>{}</span></div>",
                esc(&value),
                what
            );
        };
        let sync_share: f64 = self
            .routes
            .iter()
            .filter(|r| r.kind == "sync")
            .map(|r| r.share)
            .sum();
        card(self.requests.to_string(), "requests");
        card(
            format!("{:.0}%", sync_share * 100.0),
            "of traffic on sync routes",
        );
        let blocking: Duration = self.routes.iter().map(|r| r.blocking).sum();
        let mut b = String::new();
        human(secs(blocking), &mut b);
        card(b, "spent blocking");
        if let Some(p) = self.pool {
            card(
                format!("{} / {}", p.in_flight, p.limit),
                "blocking slots busy",
            );
            card(p.waits.to_string(), "waits for a slot");
            card(p.saturations.to_string(), "refused (503)");
        }
        h.push_str("</div>\n");
    }

    fn table(&self, h: &mut String) {
        h.push_str(concat!(
            "<table>\n<thead><tr><th>route</th><th>kind</th><th>requests</th><th>share</th>",
            "<th>p50</th><th>p99</th><th>blocking</th><th>sync_to_async (calls / time)</th>",
            "<th>async_to_sync</th><th>slot waits</th><th>503</th><th>5xx</th></tr></thead>\n<tbody>\n"
        ));
        for r in &self.routes {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td><span class=\"k {}\">{}</span></td><td>{}</td><td>{:.1}%</td><td>",
                esc(&r.route),
                r.kind,
                r.kind,
                r.requests,
                r.share * 100.0
            );
            for q in [r.p50, r.p99] {
                match q {
                    Some(d) => human(secs(d), h),
                    None => h.push('-'),
                }
                h.push_str("</td><td>");
            }
            human(secs(r.blocking), h);
            for (calls, time) in [
                (r.sync_to_async_calls, r.sync_to_async),
                (r.async_to_sync_calls, r.async_to_sync),
                (r.slot_waits, r.slot_wait),
            ] {
                h.push_str("</td><td>");
                if calls == 0 {
                    h.push('-');
                } else {
                    let _ = write!(h, "{calls} / ");
                    human(secs(time), h);
                }
            }
            let _ = writeln!(
                h,
                "</td><td>{}</td><td>{}</td></tr>",
                r.unavailable, r.server_errors
            );
        }
        h.push_str("</tbody>\n</table>\n");
    }
}

/// The colour of a route's kind.
fn colour(kind: &str) -> &'static str {
    match kind {
        "sync" => "#d9480f",
        "async" => "#1971c2",
        "tower" => "#6741d9",
        _ => "#868e96",
    }
}

type Part = (&'static str, fn(&RouteReport) -> f64, Option<&'static str>);

/// The charts' width: the labels, the bars, and room for the figures after them.
const SVG_W: f64 = 1040.0;
const LABEL_W: f64 = 200.0;
const BAR_W: f64 = 480.0;
const ROW_H: f64 = 26.0;

/// A horizontal bar chart, one row per route; each bar is the sum of `parts` (stacked, in
/// the part's colour, or the route kind's), scaled to `full` (the largest bar when `None`);
/// `caption` writes the figure after it.
fn bars(
    h: &mut String,
    title: &str,
    routes: &[RouteReport],
    full: Option<f64>,
    parts: &[Part],
    caption: impl Fn(&RouteReport, &mut String),
) {
    let max = full.unwrap_or_else(|| {
        routes
            .iter()
            .map(|r| parts.iter().map(|p| (p.1)(r)).sum::<f64>())
            .fold(0.0, f64::max)
    });
    let height = ROW_H * routes.len().max(1) as f64 + 8.0;
    let _ = writeln!(
        h,
        "<svg viewBox=\"0 0 {SVG_W} {height}\" width=\"{SVG_W}\" height=\"{height}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title)
    );
    if routes.is_empty() {
        h.push_str("<text x=\"0\" y=\"18\">no routes yet</text>\n");
    }
    for (i, r) in routes.iter().enumerate() {
        let y = row_label(h, i, &r.route);
        let _ = writeln!(
            h,
            "<rect x=\"{LABEL_W}\" y=\"{:.1}\" width=\"{BAR_W}\" height=\"18\" fill=\"#f1f3f5\"/>",
            y + 2.0
        );
        let mut x = LABEL_W;
        for (name, value, fill) in parts {
            let v = value(r);
            if v <= 0.0 || max <= 0.0 {
                continue;
            }
            let w = (v / max * BAR_W).max(1.0);
            let _ = writeln!(
                h,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"18\" fill=\"{}\"><title>{} {}</title></rect>",
                y + 2.0,
                fill.unwrap_or(colour(r.kind)),
                esc(&r.route),
                name
            );
            x += w;
        }
        let mut c = String::new();
        caption(r, &mut c);
        row_caption(h, y, &c);
    }
    h.push_str("</svg>\n");
}

/// p50 and p99 per route on a logarithmic axis from 10 µs to 10 s.
fn latency(h: &mut String, routes: &[RouteReport]) {
    let (lo, hi) = (1e-5f64.log10(), 10f64.log10());
    let x_of = |s: f64| LABEL_W + (s.max(1e-5).log10() - lo) / (hi - lo) * BAR_W;
    let height = ROW_H * routes.len().max(1) as f64 + 28.0;
    let _ = writeln!(
        h,
        "<svg viewBox=\"0 0 {SVG_W} {height}\" width=\"{SVG_W}\" height=\"{height}\" role=\"img\" aria-label=\"latency per route\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    for (tick, label) in [
        (1e-5, "10 µs"),
        (1e-4, "100 µs"),
        (1e-3, "1 ms"),
        (1e-2, "10 ms"),
        (1e-1, "100 ms"),
        (1.0, "1 s"),
        (10.0, "10 s"),
    ] {
        let x = x_of(tick);
        let _ = writeln!(
            h,
            "<line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{:.0}\" stroke=\"#dee2e6\"/><text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{label}</text>",
            height - 20.0,
            height - 6.0
        );
    }
    for (i, r) in routes.iter().enumerate() {
        let y = row_label(h, i, &r.route);
        let (Some(p50), Some(p99)) = (r.p50, r.p99) else {
            let _ = writeln!(
                h,
                "<text x=\"{LABEL_W}\" y=\"{:.1}\" fill=\"#868e96\">no requests</text>",
                y + 16.0
            );
            continue;
        };
        let (x50, x99) = (x_of(secs(p50)), x_of(secs(p99)));
        let _ = writeln!(
            h,
            "<rect x=\"{LABEL_W}\" y=\"{:.1}\" width=\"{:.1}\" height=\"8\" fill=\"#1864ab\"><title>p99</title></rect>",
            y + 11.0,
            (x99 - LABEL_W).max(1.0)
        );
        let _ = writeln!(
            h,
            "<rect x=\"{LABEL_W}\" y=\"{:.1}\" width=\"{:.1}\" height=\"8\" fill=\"#74c0fc\"><title>p50</title></rect>",
            y + 2.0,
            (x50 - LABEL_W).max(1.0)
        );
        let mut c = String::from("p50 ");
        human(secs(p50), &mut c);
        c.push_str(", p99 ");
        human(secs(p99), &mut c);
        row_caption(h, y, &c);
    }
    h.push_str("</svg>\n");
}

/// Starts a chart's row `i` with its route's name left of the bars; returns the row's top.
fn row_label(h: &mut String, i: usize, route: &str) -> f64 {
    let y = 4.0 + ROW_H * i as f64;
    let _ = writeln!(
        h,
        "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        LABEL_W - 8.0,
        y + 16.0,
        esc(route)
    );
    y
}

/// The caption right of a chart's row at `y`.
fn row_caption(h: &mut String, y: f64, caption: &str) {
    let _ = writeln!(
        h,
        "<text x=\"{:.0}\" y=\"{:.1}\">{}</text>",
        LABEL_W + BAR_W + 8.0,
        y + 16.0,
        esc(caption)
    );
}

/// `s` with HTML's special characters escaped.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, kind: HandlerKind) -> RouteReport {
        RouteReport {
            route: name.into(),
            kind: kind.as_str(),
            requests: 10,
            share: 0.5,
            statuses: vec![("200".into(), 10)],
            server_errors: 0,
            unavailable: 0,
            saturations: 0,
            p50: Some(Duration::from_millis(1)),
            p99: Some(Duration::from_millis(9)),
            request_time: Duration::from_secs(1),
            blocking: Duration::ZERO,
            handler_blocking: Duration::ZERO,
            sync_to_async_calls: 0,
            sync_to_async: Duration::ZERO,
            async_to_sync_calls: 0,
            async_to_sync: Duration::ZERO,
            slot_waits: 0,
            slot_wait: Duration::ZERO,
        }
    }

    #[test]
    fn sync_routes_rank_by_blocking_and_mostly_blocking_async_routes_join_them() {
        let mut light = route("/light", HandlerKind::Sync);
        light.handler_blocking = Duration::from_millis(100);
        light.blocking = light.handler_blocking;
        let mut heavy = route("/heavy", HandlerKind::Sync);
        heavy.handler_blocking = Duration::from_millis(800);
        heavy.blocking = heavy.handler_blocking;
        heavy.saturations = 3;
        let mut wrapped = route("/wrapped", HandlerKind::Async);
        wrapped.sync_to_async_calls = 10;
        wrapped.sync_to_async = Duration::from_millis(700);
        wrapped.blocking = wrapped.sync_to_async;
        let mut mostly_async = route("/fine", HandlerKind::Async);
        mostly_async.sync_to_async_calls = 10;
        mostly_async.sync_to_async = Duration::from_millis(100);
        mostly_async.blocking = mostly_async.sync_to_async;
        let advice = advise(&[light, heavy, wrapped, mostly_async]);
        let order: Vec<&str> = advice.iter().map(|a| &*a.route).collect();
        assert_eq!(order, ["/heavy", "/wrapped", "/light"]);
        assert!(advice[0].reason.starts_with("3 requests refused with 503"));
        assert!(advice[1]
            .reason
            .contains("70% of its time in sync_to_async"));
    }

    #[test]
    fn route_names_are_escaped_in_the_page() {
        assert_eq!(esc("/a<b>&\"'"), "/a&lt;b&gt;&amp;&quot;&#39;");
    }
}
