//! Moving one endpoint from sync to async, without a rewrite and without a second server, and
//! watching the migration report follow it.
//!
//! ```sh
//! cargo run --example migrate                          # serve the `wrapped` stage
//! curl -d 'buy milk' http://127.0.0.1:8000/notes      # sync: adds a note
//! curl http://127.0.0.1:8000/notes                    # sync: lists them
//! curl http://127.0.0.1:8000/notes/count              # async now: counts them
//! open http://127.0.0.1:8000/_amphi/report            # where the blocking time goes
//!
//! cargo run --example migrate -- --stage legacy       # before: everything blocking
//! cargo run --example migrate -- --compare            # the three stages, report by report
//! ```
//!
//! The legacy app is one blocking handler for everything under `/notes`; its store is
//! blocking code (imagine a database driver: every query blocks 2 ms). The migration moves
//! `/notes/count` in two steps, each mounted at its own, longer prefix, so it wins while
//! everything else still goes to the legacy app, unchanged:
//!
//! - `legacy`: the blocking app answers `/notes/count` too;
//! - `wrapped`: `/notes/count` is an async handler, but it still calls the blocking store
//!   through `sync_to_async`: the report now counts that time inside an async route;
//! - `async`: `/notes/count` reads a count the store keeps for async code, without blocking.
//!
//! `--compare` serves each stage in turn on a loopback port, sends it the same requests, and
//! prints what its migration report says about `/notes/count` (`GET /_amphi/report?format=json`).

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amphi::prelude::*;
use amphi::server::metrics::Metrics;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};

/// How long each query of the blocking store takes.
const QUERY: Duration = Duration::from_millis(2);

/// The app's data: a blocking store, and the count it keeps for async readers.
#[derive(Clone, Default)]
struct Store {
    notes: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
}

impl Store {
    /// The store `main` puts in the app state.
    fn from_state(state: Option<&State>) -> Result<Store, Error> {
        state.and_then(|s| s.get::<Store>()).ok_or_else(|| {
            Error::new(ErrorKind::Other)
                .with_message("no store in the app state: main puts it there")
        })
    }

    /// A blocking query: what the legacy code calls.
    fn query<T>(&self, f: impl FnOnce(&mut Vec<String>) -> T) -> T {
        std::thread::sleep(QUERY);
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut notes);
        self.count.store(notes.len(), Ordering::Relaxed);
        out
    }
}

/// The legacy blocking app: `GET /notes` lists the notes, `POST /notes` adds one, `GET
/// /notes/count` counts them.
fn legacy_notes(mut req: SyncRequest) -> Result<SyncResponse, Error> {
    let store = Store::from_state(Some(req.state()))?;
    match (req.method().clone(), req.path()) {
        (Method::GET, "" | "/") => {
            let list = store.query(|n| n.join("\n"));
            Ok((list + "\n").into_response())
        }
        (Method::GET, "/count") => Ok(format!("{}\n", store.query(|n| n.len())).into_response()),
        (Method::POST, "" | "/") => {
            let mut note = Vec::new();
            // A body over the limit or a client gone: the server answers (413) and logs it.
            req.body_mut().read_to_end(&mut note)?;
            let Ok(note) = String::from_utf8(note) else {
                return Ok((StatusCode::BAD_REQUEST, "a note is utf-8 text\n").into_response());
            };
            store.query(|n| n.push(note));
            Ok(StatusCode::CREATED.into_response())
        }
        _ => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// `GET /notes/count`, moved to async but still calling the blocking store: the lookup runs
/// through `sync_to_async` instead of blocking the connection's task.
async fn count_wrapped(req: AsyncRequest) -> Result<String, Error> {
    let store = Store::from_state(req.state())?;
    // No blocking slot free in time: the server answers 503 with Retry-After.
    let n = sync_to_async(move || store.query(|n| n.len())).await?;
    Ok(format!("{n}\n"))
}

/// `GET /notes/count`, fully async: the count the store keeps, read without blocking.
async fn count_async(req: AsyncRequest) -> Result<String, Error> {
    let store = Store::from_state(req.state())?;
    Ok(format!("{}\n", store.count.load(Ordering::Relaxed)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Legacy,
    Wrapped,
    Async,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Legacy => "legacy",
            Stage::Wrapped => "wrapped",
            Stage::Async => "async",
        }
    }
}

/// The app at `stage`, with the metrics and the report mounted.
fn server(stage: Stage, metrics: &Metrics) -> Server {
    let state = State::new();
    state.insert(Store::default());
    let router = Router::new()
        .mount_async("/metrics", metrics.handler())
        .mount_async("/_amphi/report", metrics.report_handler());
    let router = match stage {
        Stage::Legacy => router,
        // Moved: the longer prefix wins over the legacy mount below.
        Stage::Wrapped => router.mount_async("/notes/count", async_fn(count_wrapped)),
        Stage::Async => router.mount_async("/notes/count", async_fn(count_async)),
    };
    // Everything else under /notes: the legacy blocking app, unchanged.
    let router = router.mount_sync("/notes", sync_fn(legacy_notes));
    Server::new(router).state(state).metrics(metrics)
}

/// Sends `stage`'s server the same requests as every other stage: 20 notes added, then 200
/// counts and 20 lists, 8 clients at a time.
async fn workload(addr: SocketAddr) -> Result<(), String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let send = move |method: Method, path: &'static str, body: &'static str| {
        let client = client.clone();
        async move {
            let req = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}"))
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .map_err(|e| e.to_string())?;
            let resp = client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            resp.into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{path}: {status}"));
            }
            Ok(())
        }
    };
    for i in 0..20 {
        send(
            Method::POST,
            "/notes",
            if i % 2 == 0 { "milk" } else { "bread" },
        )
        .await?;
    }
    let mut clients = Vec::new();
    for c in 0..8 {
        let send = send.clone();
        clients.push(tokio::spawn(async move {
            for i in 0..25 {
                send(Method::GET, "/notes/count", "").await?;
                if (c * 25 + i) % 10 == 0 {
                    send(Method::GET, "/notes", "").await?;
                }
            }
            Ok::<_, String>(())
        }));
    }
    for c in clients {
        c.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Serves each stage in turn, sends it the workload, and prints what its report says.
async fn compare() -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "{:<8} {:<7} {:>6} {:>13} {:>9} {:>9}   what the report ranks first",
        "stage", "kind", "reqs", "blocking ms", "p50 ms", "p99 ms"
    );
    for stage in [Stage::Legacy, Stage::Wrapped, Stage::Async] {
        let metrics = Metrics::new();
        let serving = server(stage, &metrics).bind("127.0.0.1:0").await?;
        let addr = serving.local_addr().ok_or("a TCP address")?;
        workload(addr).await?;
        let report = metrics.report();
        // Before the migration the count is served by the legacy mount: it is `/notes`.
        let route = if stage == Stage::Legacy {
            "/notes"
        } else {
            "/notes/count"
        };
        let r = report
            .routes
            .iter()
            .find(|r| r.route == route)
            .ok_or("the route in the report")?;
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let advice = match report.migrate_next.first() {
            None => "nothing left blocking".to_owned(),
            Some(first) => format!("{}: {}", first.route, first.reason),
        };
        println!(
            "{:<8} {:<7} {:>6} {:>13.1} {:>9.2} {:>9.2}   {advice}",
            stage.name(),
            r.kind,
            r.requests,
            ms(Some(r.blocking)),
            ms(r.p50),
            ms(r.p99),
        );
        serving.shutdown().await?;
    }
    println!("\n(each row: the route that served GET /notes/count; at the legacy stage, the whole /notes app)");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut stage = Stage::Wrapped;
    let mut bind = "127.0.0.1:8000".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--compare" => return compare().await,
            "--stage" => {
                stage = match args.next().as_deref() {
                    Some("legacy") => Stage::Legacy,
                    Some("wrapped") => Stage::Wrapped,
                    Some("async") => Stage::Async,
                    other => {
                        return Err(format!("--stage legacy|wrapped|async, not {other:?}").into())
                    }
                }
            }
            addr => bind = addr.to_owned(),
        }
    }
    let metrics = Metrics::new();
    let serving = server(stage, &metrics).bind(bind.as_str()).await?;
    let addr = serving.local_addr().ok_or("a TCP address")?;
    println!("listening on http://{addr} ({} stage)", stage.name());
    println!("migration report at http://{addr}/_amphi/report");
    serving.run_until(shutdown_signal()).await?;
    Ok(())
}
