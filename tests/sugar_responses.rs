//! End to end, for both handler kinds over HTTP/1.1 and HTTP/2: closures that return plain
//! values (`IntoResponse`) and closures whose `Err` is a handler failure the server maps to a
//! status and logs, exactly as it does an async handler's own `Err`.

mod support;

use std::io::Read;

use amphi::prelude::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use support::*;

/// What both apps do for `path`, given the body they read; `None`: read the body with `?`.
fn answer(path: &str) -> Result<(StatusCode, String), Error> {
    match path {
        "/created" => Ok((StatusCode::CREATED, "made\n".into())),
        "/fail" => Err(Error::handler(std::io::Error::other("db down on purpose"))
            .with_message("loading the user")),
        "/busy" => Err(Error::new(ErrorKind::Saturated).with_message("a pool of our own")),
        _ => Ok((StatusCode::NOT_FOUND, "not found\n".into())),
    }
}

fn router() -> Router {
    let sync_app = sync_fn(|mut req: SyncRequest| {
        if req.path() == "/upload" {
            let mut body = Vec::new();
            // Over the limit: the read fails, and `?` makes the server answer 413.
            req.body_mut().read_to_end(&mut body)?;
            return Ok((StatusCode::OK, format!("{} bytes\n", body.len())));
        }
        answer(req.path())
    });
    let async_app = async_fn(|req: AsyncRequest| async move {
        if req.path() == "/upload" {
            let body = req.into_body().to_bytes().await?;
            return Ok((StatusCode::OK, format!("{} bytes\n", body.len())));
        }
        answer(req.path())
    });
    // `amphi::Json` needs the facade's `json` feature; the dev-dependency turns on amphi-core's.
    let json = async_fn(|req: AsyncRequest| async move {
        amphi_core::Json(serde_json::json!({ "mount": req.root_path(), "path": req.path() }))
    });
    Router::new()
        .mount_sync("/s", sync_app)
        .mount_async("/a", async_app)
        .mount_async("/json", json)
}

async fn start() -> Serving {
    capture_logs();
    let server = Server::new(router()).max_body_bytes(64);
    within("binding", server.bind("127.0.0.1:0"))
        .await
        .expect("the server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_and_failures_of_both_kinds_become_the_right_responses() {
    let serving = start().await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for mount in ["/s", "/a"] {
            let r = conn.get(&format!("{mount}/created")).await;
            assert_eq!((r.status, r.text()), (StatusCode::CREATED, "made\n"));
            assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));

            // A failure of the handler's own: a 500, and the error with its source logged.
            let r = conn.get(&format!("{mount}/fail")).await;
            assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{mount}/fail");

            // Its kind picks the status, as for any handler error.
            let r = conn.get(&format!("{mount}/busy")).await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{mount}/busy");
            assert_eq!(r.header("retry-after"), Some("1"));

            // A body read over the limit, through `?`: 413 (a chunked body, so the handler
            // runs and finds out by reading). The server may close the connection after it.
            let mut upload = Conn::open(addr, proto).await;
            let req = upload
                .request(Method::POST, &format!("{mount}/upload"))
                .body(chunked(vec![Bytes::from(vec![b'x'; 50]); 3]))
                .unwrap();
            let r = upload.fetch(req).await;
            assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{mount}/upload");

            // The same handler, a body that fits.
            let r = conn.post(&format!("{mount}/upload"), full("small")).await;
            assert_eq!((r.status, r.text()), (StatusCode::OK, "5 bytes\n"));
        }
        let r = conn.get("/json/here").await;
        assert_eq!(r.header("content-type"), Some("application/json"));
        // RequestExt reads the mount and the path below it.
        assert_eq!(
            r.json(),
            serde_json::json!({ "mount": "/json", "path": "/here" })
        );
    }
    let logs = capture_logs();
    logs.wait_for(&[
        "ERROR",
        "handler failed before its response started",
        "loading the user: db down on purpose",
    ])
    .await;
    // One line per failing request: two mounts, two protocols.
    assert_eq!(logs.matching(&["ERROR", "db down on purpose"]).len(), 4);
}
