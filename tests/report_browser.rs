//! The migration report renders in a real browser: headless Chromium loads the page from a
//! running server, over the DevTools protocol (a websocket on loopback), and must report no
//! console error, no uncaught exception and no failed load, and draw its charts.
//!
//! Skipped, with a message, when no Chromium is installed (`apt-get install chromium`;
//! `CHROMIUM=/path` picks another binary). CI installs it (`.ci/run`).

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use amphi::prelude::*;
use amphi::server::metrics::Metrics;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message as M;

/// The Chromium binary to use: `$CHROMIUM`, else the first of Debian's names on the `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn router(metrics: &Metrics) -> Router {
    Router::new()
        .mount_sync(
            "/legacy",
            sync_fn(|_req: SyncRequest| {
                std::thread::sleep(Duration::from_millis(5));
                "blocking"
            }),
        )
        .mount_async(
            "/wrapped",
            async_fn(|_req: AsyncRequest| async {
                // Nearly all of the request's time: the report advises moving it too.
                sync_to_async(|| std::thread::sleep(Duration::from_millis(20))).await?;
                Ok::<_, Error>("wrapped")
            }),
        )
        .mount_async("/fast", async_fn(|_req: AsyncRequest| async { "fast" }))
        .mount_async("/_amphi/report", metrics.report_handler())
}

/// A DevTools connection to one page.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    next_id: u64,
    /// Every event seen so far.
    events: Vec<Value>,
}

impl Page {
    /// Sends a command and waits for its answer, keeping the events that come meanwhile.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(M::text(msg)).await.expect("sending a command");
        loop {
            let v = self.recv().await;
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    async fn recv(&mut self) -> Value {
        loop {
            let msg = self
                .ws
                .next()
                .await
                .expect("the DevTools connection stays open")
                .expect("a DevTools message");
            if let M::Text(t) = msg {
                return serde_json::from_str(t.as_str()).expect("DevTools speaks JSON");
            }
        }
    }

    /// Waits for an event named `method`.
    async fn wait_for(&mut self, method: &str) {
        if self.events.iter().any(|e| e["method"] == method) {
            return;
        }
        loop {
            let v = self.recv().await;
            let done = v["method"] == method;
            self.events.push(v);
            if done {
                return;
            }
        }
    }

    /// The console errors, uncaught exceptions and failed loads seen. The page has no script,
    /// but the renderer reports here what it cannot draw: an SVG attribute it cannot parse
    /// (`width="NaN"`) is a `Log.entryAdded` error.
    fn problems(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => true,
                Some("Runtime.consoleAPICalled") => {
                    matches!(e["params"]["type"].as_str(), Some("error" | "assert"))
                }
                Some("Log.entryAdded") => e["params"]["entry"]["level"] == "error",
                Some("Network.loadingFailed") => true,
                _ => false,
            })
            .map(|e| e.to_string())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_renders_in_headless_chromium_without_console_errors() {
    let Some(chromium) = chromium() else {
        eprintln!("skipped: no Chromium found (apt-get install chromium, or set CHROMIUM=/path)");
        return;
    };
    init_tracing();
    let metrics = Metrics::new();
    let server = Server::new(router(&metrics))
        .metrics(&metrics)
        .request_spans(true);
    let serving = within("binding", server.bind("127.0.0.1:0")).await.unwrap();
    let addr = serving.local_addr().unwrap();
    let mut conn = Conn::open(addr, Proto::H1).await;
    for i in 0..30 {
        assert_eq!(conn.get("/legacy").await.status, StatusCode::OK);
        if i % 10 == 0 {
            assert_eq!(conn.get("/wrapped").await.status, StatusCode::OK);
        }
        assert_eq!(conn.get("/fast").await.status, StatusCode::OK);
    }

    let profile =
        std::env::temp_dir().join(format!("amphi-report-chromium-{}", std::process::id()));
    let mut child = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1200,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting chromium");
    let stderr = child.stderr.take().expect("chromium's stderr");
    let browser_ws = within("chromium's DevTools address", async {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                // Keep draining stderr, so chromium never blocks writing to it.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return url.trim().to_owned();
            }
        }
        panic!("chromium exited without a DevTools address");
    })
    .await;
    let devtools: std::net::SocketAddr = browser_ws
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("a ws://127.0.0.1:PORT/... address: {browser_ws}"));

    let targets = get(devtools, Proto::H1, "/json/list").await.json();
    let page_ws = targets
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .unwrap_or_else(|| panic!("a page target: {targets}"))
        .to_owned();
    let tcp = tokio::net::TcpStream::connect(devtools).await.unwrap();
    let (ws, _) = within("the page's DevTools socket", async {
        tokio_tungstenite::client_async(page_ws.as_str(), tcp).await
    })
    .await
    .expect("the DevTools handshake");
    let mut page = Page {
        ws,
        next_id: 0,
        events: Vec::new(),
    };

    let url = format!("http://{addr}/_amphi/report");
    let checked = within("chromium to load and check the report", async {
        for domain in ["Runtime", "Log", "Page", "Network"] {
            page.call(&format!("{domain}.enable"), json!({})).await;
        }
        page.call("Page.navigate", json!({ "url": url })).await;
        page.wait_for("Page.loadEventFired").await;
        let seen = page
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": "JSON.stringify({title: document.title, \
                        svgs: document.querySelectorAll('svg').length, \
                        rects: document.querySelectorAll('svg rect').length, \
                        advice: document.querySelectorAll('ol li').length, \
                        rows: document.querySelectorAll('tbody tr').length, \
                        scripts: document.scripts.length, \
                        svgNamespace: document.querySelector('svg').namespaceURI, \
                        unrendered: [...document.querySelectorAll('svg rect')] \
                            .filter(r => !(r.getBoundingClientRect().width > 0)).length, \
                        chartWidth: document.querySelector('svg').getBoundingClientRect().width})",
                    "returnByValue": true,
                }),
            )
            .await;
        // Late errors (a resource that failed after load) have had their chance by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        page.call("Runtime.evaluate", json!({"expression": "1"}))
            .await;
        seen
    })
    .await;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&profile);

    let problems = page.problems();
    assert!(
        problems.is_empty(),
        "the page logged problems: {problems:#?}"
    );
    let seen: Value =
        serde_json::from_str(checked["result"]["value"].as_str().expect("a string value"))
            .expect("the page's figures");
    assert_eq!(seen["title"], "amphi migration report");
    assert_eq!(seen["svgs"], 3, "{seen}");
    assert!(seen["rects"].as_u64().unwrap() >= 8, "{seen}");
    // /legacy and /wrapped are worth migrating; /fast is not.
    assert_eq!(seen["advice"], 2, "{seen}");
    // /legacy, /wrapped, /fast and the report itself.
    assert_eq!(seen["rows"], 4, "{seen}");
    assert_eq!(seen["scripts"], 0);
    // What only a renderer knows: the charts are laid out as SVG, every bar has a width.
    assert_eq!(seen["svgNamespace"], "http://www.w3.org/2000/svg", "{seen}");
    assert_eq!(seen["unrendered"], 0, "bars laid out with no width: {seen}");
    assert!(seen["chartWidth"].as_f64().unwrap() > 100.0, "{seen}");
    serving.shutdown().await.unwrap();
}
