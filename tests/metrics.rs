//! Metrics and the migration report end to end: a known sequence of requests (both kinds,
//! 404, 413, 503, panics, crossings both ways), then the Prometheus text and the report's
//! JSON must say exactly that.

mod support;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use amphi::prelude::*;
use amphi::server::metrics::Metrics;
use http::StatusCode;
use support::*;

/// A gate a sync handler waits at until the test opens it.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, cv) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
    }

    fn open(&self) {
        let (open, cv) = &*self.0;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
}

fn router(metrics: &Metrics, gate: &Gate) -> Router {
    let gate = gate.clone();
    let sync_app = sync_fn(move |req: SyncRequest| -> Result<SyncResponse, Error> {
        match req.path() {
            "/hello" => Ok("hello".into_response()),
            "/hold" => {
                gate.wait();
                Ok("held".into_response())
            }
            "/panic" => panic!("the sync handler panicked on purpose"),
            "/call-async" => {
                let n = async_to_sync(async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    7
                })?;
                Ok(format!("{n}").into_response())
            }
            _ => Ok(StatusCode::NOT_FOUND.into_response()),
        }
    });
    let async_app = async_fn(|req: AsyncRequest| async move {
        match req.uri().path() {
            "/a/hello" => Ok("hello".into_response()),
            "/a/panic" => panic!("the async handler panicked on purpose"),
            "/a/blocking" => {
                let n = sync_to_async(|| {
                    std::thread::sleep(Duration::from_millis(20));
                    3
                })
                .await?;
                Ok(format!("{n}").into_response())
            }
            _ => Ok::<_, Error>(StatusCode::NOT_FOUND.into_response()),
        }
    });
    Router::new()
        .mount_sync("/s", sync_app)
        .mount_async("/a", async_app)
        .mount_async("/metrics", metrics.handler())
        .mount_async("/_amphi/report", metrics.report_handler())
}

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let Some(rest) = l.strip_prefix(name) else {
                return false;
            };
            (rest.starts_with('{') || rest.starts_with(' '))
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_report_count_a_known_sequence_of_requests() {
    init_tracing();
    let metrics = Metrics::new();
    let gate = Gate::default();
    // A pool that measures its busy time: the server's does not unless asked.
    let pool = BlockingPool::new(1)
        .queue_timeout(Duration::from_millis(50))
        .measure_busy_time(true);
    let server = Server::new(router(&metrics, &gate))
        .metrics(&metrics)
        .blocking_pool(pool)
        .max_body_bytes(16);
    let serving = within("binding", server.bind("127.0.0.1:0")).await.unwrap();
    let addr = serving.local_addr().unwrap();
    let mut conn = Conn::open(addr, Proto::H1).await;

    for _ in 0..3 {
        assert_eq!(conn.get("/s/hello").await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(conn.get("/a/hello").await.status, StatusCode::OK);
    }
    assert_eq!(conn.get("/nowhere").await.status, StatusCode::NOT_FOUND);
    let too_big = conn.post("/a/hello", full(vec![b'x'; 100])).await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        conn.get("/s/panic").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let mut conn = Conn::open(addr, Proto::H1).await;
    assert_eq!(
        conn.get("/a/panic").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let mut conn = Conn::open(addr, Proto::H1).await;
    assert_eq!(conn.get("/a/blocking").await.text(), "3");
    assert_eq!(conn.get("/s/call-async").await.text(), "7");

    // The one blocking slot held: the next sync request waits 50 ms and gets a 503.
    let held = tokio::spawn(async move { get(addr, Proto::H1, "/s/hold").await });
    eventually("the held request to take the slot", || {
        serving.blocking_pool().in_flight() == 1
    })
    .await;
    let refused = conn.get("/s/hello").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    gate.open();
    assert_eq!(
        within("the held request", held).await.unwrap().text(),
        "held"
    );
    eventually("every request to be done", || serving.in_flight() == 0).await;

    let text = conn.get("/metrics").await;
    assert_eq!(text.status, StatusCode::OK);
    assert!(text
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = text.text().to_owned();
    let requests = |route: &str, kind: &str, method: &str, status: &str| {
        sample(
            &text,
            "amphi_requests_total",
            &[
                ("route", route),
                ("kind", kind),
                ("method", method),
                ("status", status),
            ],
        )
    };
    // hello x3 and call-async and hold: 200; the 503 and the panic apart.
    assert_eq!(requests("/s", "sync", "GET", "200"), Some(5.0));
    assert_eq!(requests("/s", "sync", "GET", "503"), Some(1.0));
    assert_eq!(requests("/s", "sync", "GET", "500"), Some(1.0));
    assert_eq!(requests("/a", "async", "GET", "200"), Some(3.0));
    assert_eq!(requests("/a", "async", "POST", "413"), Some(1.0));
    assert_eq!(requests("/a", "async", "GET", "500"), Some(1.0));
    assert_eq!(requests("unmatched", "none", "GET", "404"), Some(1.0));
    // Labels are the mounts, never the raw path.
    assert!(!text.contains("/s/hello") && !text.contains("/nowhere"));
    let with = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    assert_eq!(
        with(
            "amphi_request_duration_seconds_count",
            &[("route", "/s"), ("kind", "sync")]
        ),
        Some(7.0)
    );
    assert_eq!(
        with(
            "amphi_request_duration_seconds_bucket",
            &[("route", "/a"), ("le", "+Inf")]
        ),
        Some(5.0)
    );
    // Every request of this sequence ended complete: the 500s and the 503 are answers.
    assert_eq!(
        with(
            "amphi_request_outcomes_total",
            &[("route", "/s"), ("outcome", "complete")]
        ),
        Some(7.0)
    );
    // The sync handler ran for the 6 requests that got a slot (the panic included);
    // /a/blocking made one sync_to_async call, /s/call-async one async_to_sync call.
    let crossings = |route: &str, crossing: &str| {
        with(
            "amphi_crossings_total",
            &[("route", route), ("crossing", crossing)],
        )
    };
    assert_eq!(crossings("/s", "sync_handler"), Some(6.0));
    assert_eq!(crossings("/a", "sync_to_async"), Some(1.0));
    assert_eq!(crossings("/s", "async_to_sync"), Some(1.0));
    assert_eq!(crossings("/a", "sync_handler"), None);
    let s2a = with(
        "amphi_crossing_seconds_total",
        &[("route", "/a"), ("crossing", "sync_to_async")],
    )
    .unwrap();
    assert!(s2a >= 0.020, "the closure slept 20 ms: {s2a}");
    let a2s = with(
        "amphi_crossing_seconds_total",
        &[("route", "/s"), ("crossing", "async_to_sync")],
    )
    .unwrap();
    assert!(a2s >= 0.005, "the future slept 5 ms: {a2s}");
    assert_eq!(
        with("amphi_route_saturations_total", &[("route", "/s")]),
        Some(1.0)
    );
    assert_eq!(
        with("amphi_route_slot_waits_total", &[("route", "/s")]),
        Some(1.0)
    );
    let waited = with("amphi_route_slot_wait_seconds_total", &[("route", "/s")]).unwrap();
    assert!(
        waited >= 0.050,
        "the refused request waited the queue timeout: {waited}"
    );
    assert_eq!(with("amphi_blocking_pool_slots", &[]), Some(1.0));
    assert_eq!(with("amphi_blocking_pool_busy", &[]), Some(0.0));
    assert_eq!(
        with("amphi_blocking_pool_saturations_total", &[]),
        Some(1.0)
    );
    // The 6 sync handler calls took the pool's slot (a sync_to_async without `.pool` runs on
    // tokio's blocking threads, outside it); the held one for more than the 50 ms wait.
    assert_eq!(with("amphi_blocking_pool_calls_total", &[]), Some(6.0));
    assert!(with("amphi_blocking_pool_busy_seconds_total", &[]).unwrap() >= 0.050);
    // The test's three connections and the held request's; this request is in flight.
    assert_eq!(with("amphi_connections_total", &[]), Some(4.0));
    assert_eq!(with("amphi_requests_in_flight", &[]), Some(1.0));

    // The report says the same; the /metrics request is counted by now.
    let report = conn.get("/_amphi/report?format=json").await;
    assert_eq!(report.header("content-type"), Some("application/json"));
    let report = report.json();
    let route = |name: &str| {
        report["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == name)
            .unwrap_or_else(|| panic!("{name} in the report: {report}"))
            .clone()
    };
    let total = 7 + 5 + 1 + 1;
    assert_eq!(report["requests"], total);
    let s = route("/s");
    assert_eq!(s["kind"], "sync");
    assert_eq!(s["requests"], 7);
    assert_eq!(s["statuses"]["200"], 5);
    assert_eq!(s["unavailable"], 1);
    assert_eq!(s["saturations"], 1);
    assert_eq!(s["server_errors"], 2);
    assert_eq!(s["slot_waits"]["count"], 1);
    assert!((s["share"].as_f64().unwrap() - 7.0 / total as f64).abs() < 1e-9);
    assert!(s["p50_seconds"].as_f64().unwrap() > 0.0);
    assert!(s["p99_seconds"].as_f64().unwrap() >= s["p50_seconds"].as_f64().unwrap());
    let a = route("/a");
    assert_eq!(
        (a["kind"].as_str(), a["requests"].as_u64()),
        (Some("async"), Some(5))
    );
    assert_eq!(a["sync_to_async"]["calls"], 1);
    assert_eq!(route("unmatched")["requests"], 1);
    assert_eq!(route("/metrics")["requests"], 1);
    assert_eq!(route("/_amphi/report")["requests"], 0);
    // The sync route blocked longest (the held request alone): it comes first.
    assert_eq!(report["migrate_next"][0]["route"], "/s");
    assert_eq!(report["migrate_next"][0]["rank"], 1);
    let reason = report["migrate_next"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("1 requests refused with 503"),
        "{reason}"
    );
    assert_eq!(report["pool"]["limit"], 1);

    // The page: HTML, served as such, without a script.
    let page = conn.get("/_amphi/report").await;
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("What to migrate next") && html.contains("<svg"));
    assert!(!html.contains("<script"));
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_metrics_the_handlers_serve_empty_metrics() {
    init_tracing();
    let metrics = Metrics::new();
    let serving = within(
        "binding",
        Server::new(router(&metrics, &Gate::default())).bind("127.0.0.1:0"),
    )
    .await
    .unwrap();
    let addr = serving.local_addr().unwrap();
    assert_eq!(
        get(addr, Proto::H1, "/s/hello").await.status,
        StatusCode::OK
    );
    let text = get(addr, Proto::H1, "/metrics").await;
    assert_eq!(text.status, StatusCode::OK);
    assert!(!text.text().contains("amphi_requests_total"));
    let report = get(addr, Proto::H2, "/_amphi/report/json").await.json();
    assert_eq!(report["requests"], 0);
    assert_eq!(report["routes"], serde_json::json!([]));
    serving.shutdown().await.unwrap();
}

#[path = "../examples/mixed/app.rs"]
#[allow(dead_code)]
mod app;

async fn start_mixed(flags: &[&str]) -> amphi::Serving {
    let mut args = vec!["--bind", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    let opts = app::Options::parse(args.into_iter().map(Into::into)).expect("valid flags");
    within("binding", opts.server().bind(opts.bind.as_str()))
        .await
        .expect("the mixed app starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mixed_example_serves_metrics_and_the_report_unless_told_not_to() {
    init_tracing();
    let serving = start_mixed(&[]).await;
    let addr = serving.local_addr().unwrap();
    let mut conn = Conn::open(addr, Proto::H2).await;
    for m in ["/sync", "/async"] {
        let r = conn.get(&format!("{m}/hello")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("x-request-id").is_some());
    }
    let text = conn.get("/metrics").await.text().to_owned();
    for kind in ["sync", "async"] {
        let labels = [
            ("route", &*format!("/{kind}")),
            ("kind", kind),
            ("status", "200"),
        ];
        assert_eq!(sample(&text, "amphi_requests_total", &labels), Some(1.0));
    }
    let report = conn.get("/_amphi/report?format=json").await.json();
    assert_eq!(report["migrate_next"][0]["route"], "/sync");
    // Both pages are read-only.
    for page in ["/metrics", "/_amphi/report"] {
        let r = conn.post(page, full("x")).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "POST {page}");
        assert_eq!(r.text(), "use GET\n");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    serving.shutdown().await.unwrap();

    let serving = start_mixed(&["--no-metrics"]).await;
    let addr = serving.local_addr().unwrap();
    let r = get(addr, Proto::H1, "/sync/hello").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-request-id"), None);
    assert_eq!(
        get(addr, Proto::H1, "/metrics").await.status,
        StatusCode::NOT_FOUND
    );
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_handler_behind_tower_layers_counts_its_blocking_time_on_its_route() {
    init_tracing();
    let metrics = Metrics::new();
    let layered = Router::new()
        .mount_sync("/", sync_fn(|_req| "behind layers"))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ));
    let router = Router::new()
        .nest("/layered", layered)
        .mount_async("/metrics", metrics.handler());
    let serving = within(
        "binding",
        Server::new(router).metrics(&metrics).bind("127.0.0.1:0"),
    )
    .await
    .unwrap();
    let mut conn = Conn::open(serving.local_addr().unwrap(), Proto::H1).await;
    for _ in 0..2 {
        assert_eq!(conn.get("/layered/x").await.text(), "behind layers");
    }
    let text = conn.get("/metrics").await.text().to_owned();
    let labels = [
        ("route", "/layered"),
        ("kind", "tower"),
        ("crossing", "sync_handler"),
    ];
    assert_eq!(
        sample(&text, "amphi_crossings_total", &labels),
        Some(2.0),
        "{text}"
    );
    serving.shutdown().await.unwrap();
}
