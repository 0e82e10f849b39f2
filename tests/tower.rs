//! Tower interop, both ways, over HTTP/1.1 and HTTP/2: a real axum `Router` (and plain tower
//! services) mounted in amphi next to sync and async handlers; amphi handlers of both kinds
//! served inside a real axum app; tower-http layers on a mount and on the whole router.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use amphi::prelude::*;
use amphi::server::tower::RequestBody;
use amphi::RequestInfo;
use bytes::Bytes;
use http::{header, Method, StatusCode};
use support::*;

/// The axum app mounted at `/axum`: it sees the paths below its mount.
fn axum_app() -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/hello", get(|| async { "hello from axum" }))
        .route(
            "/echo",
            // Streams the body back as it arrives.
            post(|req: axum::extract::Request| async move {
                axum::body::Body::from_stream(req.into_body().into_data_stream())
            }),
        )
        .route(
            "/collect",
            post(|body: Bytes| async move { format!("{} bytes", body.len()) }),
        )
        .route(
            "/info",
            get(|req: axum::extract::Request| async move {
                let info = req.extensions().get::<RequestInfo>().cloned();
                let root = info.as_ref().map_or("?", |i| i.root_path()).to_owned();
                format!("path={} root_path={root}", req.uri().path())
            }),
        )
}

/// Answers 500 after a handler error: a service whose future fails.
#[derive(Clone)]
struct Failing;

impl tower::Service<http::Request<RequestBody>> for Failing {
    type Response = http::Response<http_body_util::Full<Bytes>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<RequestBody>) -> Self::Future {
        std::future::ready(Err(std::io::Error::other("the database is down")))
    }
}

/// A service that is ready only after being polled for it, on the clone that is called.
#[derive(Clone, Default)]
struct NeedsReady {
    ready: bool,
    polls: Arc<AtomicUsize>,
}

impl tower::Service<http::Request<RequestBody>> for NeedsReady {
    type Response = http::Response<http_body_util::Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Pending once (with a wake-up), then ready: the caller must come back for it.
        if self.polls.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<RequestBody>) -> Self::Future {
        let body = if self.ready {
            "called when ready"
        } else {
            "called before poll_ready"
        };
        std::future::ready(Ok(http::Response::new(body.into())))
    }
}

fn sync_text(text: &'static str) -> SyncResponse {
    http::Response::new(SyncBody::from(text))
}

fn async_sleep() -> impl AsyncHandler {
    async_fn(|req: AsyncRequest| async move {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        http::Response::new(AsyncBody::from("slept"))
    })
}

fn router() -> Router {
    let panicking = tower::service_fn(|_req: http::Request<RequestBody>| async {
        if true {
            panic!("the service panicked on purpose");
        }
        Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(Bytes::new())))
    });
    Router::new()
        .mount_sync("/sync", sync_fn(|_req| sync_text("hello from sync")))
        .mount_async(
            "/async",
            async_fn(|_req| async { http::Response::new(AsyncBody::from("hello from async")) }),
        )
        .mount_service("/axum", axum_app())
        .mount_service("/failing", Failing)
        .mount_service("/panicking", panicking)
        .mount_service("/ready", NeedsReady::default())
}

async fn start(router: Router) -> Serving {
    capture_logs();
    Server::new(router)
        .max_body_bytes(1024)
        .bind("127.0.0.1:0")
        .await
        .expect("binding the test server")
}

#[tokio::test]
async fn an_axum_router_is_served_next_to_sync_and_async_handlers() {
    let serving = start(router()).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut c = Conn::open(addr, proto).await;
        assert_eq!(c.get("/sync").await.text(), "hello from sync");
        assert_eq!(c.get("/async").await.text(), "hello from async");
        let r = c.get("/axum/hello").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "hello from axum"));
        // axum's own 404 for a path inside its mount.
        assert_eq!(c.get("/axum/nope").await.status, StatusCode::NOT_FOUND);
        let r = c.get("/axum/info?x=1").await;
        assert_eq!(r.text(), "path=/info root_path=/axum", "{proto:?}");
        // Streamed both ways: chunks of unknown length in, streamed out.
        let chunks = (0..4).map(|i| Bytes::from(vec![b'a' + i; 200]));
        let r = c.post("/axum/echo", chunked(chunks)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.len(), 800);
        assert!(r.body[..200].iter().all(|&b| b == b'a'));
        assert!(r.body[600..].iter().all(|&b| b == b'd'));
        // The body limit applies: by Content-Length before the service runs, and while the
        // body streams in (axum answers its LengthLimitError with 413).
        // (A fresh connection after each: the server leaves an unread body behind.)
        let r = c.post("/axum/collect", full(vec![b'x'; 1000])).await;
        assert_eq!(r.text(), "1000 bytes");
        let mut c = Conn::open(addr, proto).await;
        let r = c.post("/axum/collect", full(vec![b'x'; 2000])).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{proto:?}");
        let mut c = Conn::open(addr, proto).await;
        let chunks = (0..4).map(|_| Bytes::from(vec![b'x'; 500]));
        let r = c.post("/axum/collect", chunked(chunks)).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{proto:?}");
        let mut c = Conn::open(addr, proto).await;
        let r = c.post("/axum/collect", full(vec![b'x'; 10])).await;
        assert_eq!(r.text(), "10 bytes");
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_service_error_or_panic_is_a_500_and_poll_ready_is_awaited() {
    let logs = capture_logs();
    let serving = start(router()).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut c = Conn::open(addr, proto).await;
        let r = c.get("/failing").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        let r = c.get("/panicking").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        // The connection carries on.
        assert_eq!(c.get("/axum/hello").await.text(), "hello from axum");
        assert_eq!(c.get("/ready").await.text(), "called when ready");
    }
    let line = logs
        .wait_for(&[
            "service failed before its response started",
            "the database is down",
        ])
        .await;
    assert!(line.contains("/failing"), "{line}");
    logs.wait_for(&["service panicked before its response started", "on purpose"])
        .await;
    // The access log names the mount kind and the status.
    logs.wait_for(&["amphi::access", "/axum/hello", "status=200", "kind=tower"])
        .await;
    eventually("nothing in flight", || serving.in_flight() == 0).await;
    serving.shutdown().await.unwrap();
}

/// A real axum app, serving amphi handlers of both kinds on `127.0.0.1:0`.
async fn axum_server(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test]
async fn sync_and_async_handlers_are_served_inside_an_axum_app() {
    capture_logs();
    let release = Arc::new(AtomicBool::new(false));
    let release_h = release.clone();
    let legacy = Router::new()
        .mount_sync("/hello", sync_fn(|_req| sync_text("hello from sync")))
        .mount_sync(
            "/hold",
            sync_fn(move |_req| {
                while !release_h.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                sync_text("released")
            }),
        )
        .mount_sync(
            "/echo",
            sync_fn(|mut req: SyncRequest| {
                let mut body = Vec::new();
                match std::io::Read::read_to_end(req.body_mut(), &mut body) {
                    Ok(_) => http::Response::new(SyncBody::from(body)),
                    Err(_) => sync_text("cannot read"),
                }
            }),
        );
    let legacy = Server::new(legacy)
        .blocking_threads(1)
        .queue_timeout(Duration::from_millis(50))
        .into_service()
        .expect("the router compiles");
    let modern = Server::new(Router::new().mount_async("/sleep", async_sleep()))
        .into_service()
        .expect("the router compiles");
    let app = axum::Router::new()
        .route("/native", axum::routing::get(|| async { "axum itself" }))
        .nest_service("/legacy", legacy.clone())
        .nest_service("/modern", modern);
    let addr = axum_server(app).await;
    for proto in BOTH {
        let mut c = Conn::open(addr, proto).await;
        assert_eq!(c.get("/native").await.text(), "axum itself");
        assert_eq!(c.get("/legacy/hello").await.text(), "hello from sync");
        assert_eq!(c.get("/modern/sleep?ms=1").await.text(), "slept");
        let r = c
            .post("/legacy/echo", chunked((0..3).map(|_| Bytes::from("abc"))))
            .await;
        assert_eq!(r.text(), "abcabcabc");
    }
    // The pool's semantics hold inside axum: with its one slot held, the next sync request
    // waits for the queue timeout and gets 503 with Retry-After.
    let mut holder = Conn::open(addr, Proto::H1).await;
    let held = tokio::spawn(async move { holder.get("/legacy/hold").await });
    eventually("the held request takes the slot", || {
        legacy.in_flight() == 1
    })
    .await;
    for proto in BOTH {
        let mut c = Conn::open(addr, proto).await;
        let r = c.get("/legacy/hello").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{proto:?}");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    release.store(true, Ordering::SeqCst);
    assert_eq!(
        within("the held request", held).await.unwrap().text(),
        "released"
    );
    eventually("the slot comes back", || legacy.in_flight() == 0).await;
    let mut c = Conn::open(addr, Proto::H2).await;
    assert_eq!(c.get("/legacy/hello").await.text(), "hello from sync");
}

async fn gunzip(body: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

#[tokio::test]
async fn tower_http_layers_wrap_a_mount_and_the_whole_router() {
    let logs = capture_logs();
    let big = "amphi ".repeat(2000);
    let big_h = big.clone();
    // One mount behind layers: a nested router holding it.
    let compressed = Router::new()
        .mount_sync(
            "/",
            sync_fn(move |_req| http::Response::new(SyncBody::from(big_h.clone()))),
        )
        .layer(tower_http::compression::CompressionLayer::new());
    let timed = Router::new().mount_async("/", async_sleep()).layer(
        tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(100),
        ),
    );
    let router = Router::new()
        .nest("/big", compressed)
        .nest("/slow", timed)
        .mount_async("/plain", async_sleep())
        // The whole router: CORS and tracing around everything above.
        .layer(tower_http::cors::CorsLayer::permissive())
        .layer(tower_http::trace::TraceLayer::new_for_http());
    let serving = start(router).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut c = Conn::open(addr, proto).await;
        let req = c
            .request(Method::GET, "/big")
            .header(header::ACCEPT_ENCODING, "gzip")
            .body(empty())
            .unwrap();
        let r = c.fetch(req).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{proto:?}");
        assert!(r.body.len() < big.len() / 10);
        assert_eq!(gunzip(&r.body).await, big.as_bytes());
        // Without Accept-Encoding, the body as it is.
        assert_eq!(c.get("/big").await.body.len(), big.len());
        // The timeout layer answers 408 for a handler that takes too long; a quick one passes.
        assert_eq!(
            c.get("/slow?ms=5000").await.status,
            StatusCode::REQUEST_TIMEOUT
        );
        assert_eq!(c.get("/slow?ms=1").await.text(), "slept");
        // No timeout outside the nested router.
        assert_eq!(c.get("/plain?ms=300").await.text(), "slept");
        // CORS around the whole router: a preflight is answered by the layer.
        let req = c
            .request(Method::OPTIONS, "/plain")
            .header(header::ORIGIN, "https://example.com")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .body(empty())
            .unwrap();
        let r = c.fetch(req).await;
        assert!(r.status.is_success(), "{:?}", r.status);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        let req = c
            .request(Method::GET, "/big")
            .header(header::ORIGIN, "https://example.com")
            .body(empty())
            .unwrap();
        assert_eq!(
            c.fetch(req).await.header("access-control-allow-origin"),
            Some("*")
        );
        // Nothing mounted: the inner router's 404, through the layers.
        assert_eq!(c.get("/nothing").await.status, StatusCode::NOT_FOUND);
    }
    // One access line per request, with the status the layers answered and the inner kind.
    let line = logs
        .wait_for(&["amphi::access", "/slow", "status=408"])
        .await;
    assert!(line.contains("outcome=complete"), "{line}");
    assert!(line.contains("kind=async"), "{line}");
    logs.wait_for(&["amphi::access", "/big", "status=200", "kind=sync"])
        .await;
    serving.shutdown().await.unwrap();
}
