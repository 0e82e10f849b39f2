//! Fault suite: the adapters misused or nested inside a running server.
//!
//! The adapters' own tests prove the shapes in isolation
//! (`crates/amphi-async-to-sync/tests/wrong_context.rs` for `async_to_sync` from async code,
//! `crates/amphi-async-to-sync/tests/deadlocks.rs` for asgiref's #249, #282, #348 and #526);
//! these prove the same inside requests served over real sockets, where a hang would hold a
//! connection and a blocking slot forever:
//!
//! - `async_to_sync` called from an async handler (on a runtime worker) returns
//!   `ErrorKind::WrongContext` with a message that says to `.await` instead; it never panics,
//!   never blocks the worker, and the server carries on;
//! - the asgiref #348 shape (per-request thread-sensitive sync handler -> `async_to_sync` ->
//!   `wait_for` / a spawned task -> thread-sensitive `sync_to_async`) completes, back on the
//!   handler's own thread, for many requests at once;
//! - the asgiref #249 shape (sync handler -> `async_to_sync` -> spawned task ->
//!   `sync_to_async`) completes under the server's default (non-thread-sensitive) mount.

mod support;

use std::future::IntoFuture;
use std::thread;

use amphi::prelude::*;
use http::{HeaderMap, Method, StatusCode};
use support::*;

async fn respond(send: &mut Sender, text: String) -> Result<(), Error> {
    send.send(Message::start(StatusCode::OK, HeaderMap::new()))
        .await?;
    send.send(Message::body(text, false)).await
}

fn router() -> Router {
    // An async handler that calls async_to_sync: the misuse.
    let misuse = asgi_fn(|scope, _receive, mut send| async move {
        let Scope::Http(scope) = scope else {
            return Ok(());
        };
        let result = async_to_sync(async { 42 });
        match scope.path() {
            // Propagated: the server answers 500 and logs it.
            "/propagate" => result.map(|_| ()),
            _ => {
                let text = match result {
                    Ok(n) => format!("ran: {n}"),
                    Err(e) => format!("{:?}: {e}", e.kind()),
                };
                respond(&mut send, text).await
            }
        }
    });

    // asgiref #348, per request: the handler runs on its request's thread-sensitive context;
    // its async work calls back into thread-sensitive blocking code, under a timeout
    // (wait_for) and from a spawned task that carries the request context (create_task).
    let per_request = SyncToAsync::new(sync_fn(|_req: SyncRequest| {
        let view = thread::current().id();
        let (in_wait_for, in_task) = async_to_sync(async move {
            let in_wait_for = tokio::time::timeout(
                PATIENCE,
                sync_to_async(|| thread::current().id()).thread_sensitive_current(),
            )
            .await
            .expect("wait_for: no deadlock")
            .expect("the thread-sensitive call");
            let ctx = Context::current().expect("the request context is current");
            let in_task = tokio::spawn(ctx.scope(Box::pin(async {
                sync_to_async(|| thread::current().id())
                    .thread_sensitive_current()
                    .await
            })))
            .await
            .expect("the spawned task")
            .expect("the thread-sensitive call");
            (in_wait_for, in_task)
        })
        .expect("async_to_sync from a blocking thread");
        http::Response::new(SyncBody::from(format!(
            "wait_for on the view's thread: {}; task on the view's thread: {}",
            in_wait_for == view,
            in_task == view
        )))
    }))
    .thread_sensitive_per_request();

    // asgiref #249 under the server's default mount: spawned tasks call back into blocking
    // code on the blocking pool.
    let default_mount = sync_fn(|_req: SyncRequest| {
        let n = async_to_sync(async {
            let a = tokio::spawn(sync_to_async(|| 20).into_future());
            let b = tokio::spawn(sync_to_async(|| 22).into_future());
            a.await.unwrap().unwrap() + b.await.unwrap().unwrap()
        })
        .expect("async_to_sync from a blocking thread");
        http::Response::new(SyncBody::from(format!("sum {n}")))
    });

    Router::new()
        .mount_async("/misuse", misuse)
        .mount_async("/348", per_request)
        .mount_sync("/249", default_mount)
}

async fn start() -> Serving {
    capture_logs();
    within("binding", Server::new(router()).bind("127.0.0.1:0"))
        .await
        .expect("the server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_to_sync_inside_an_async_handler_is_refused_with_wrong_context() {
    let serving = start().await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        let r = conn.get("/misuse/report").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.text().starts_with("WrongContext: "), "{}", r.text());
        assert!(r.text().contains("`.await` the future"), "{}", r.text());
        // Propagated, it is a 500 and an error log line; the connection goes on.
        let r = conn.get("/misuse/propagate").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        let r = conn.get("/249/").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "sum 42"));
    }
    capture_logs()
        .wait_for(&[
            "ERROR",
            "handler failed before its response started",
            "called from the wrong context",
        ])
        .await;
    // The worker threads were never blocked: many more requests go through.
    let mut conn = Conn::open(addr, Proto::H2).await;
    for _ in 0..20 {
        assert_eq!(conn.get("/misuse/report").await.status, StatusCode::OK);
    }
    within("shutdown", serving.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asgiref_348_nesting_completes_on_the_handlers_thread_for_concurrent_requests() {
    const CONCURRENT: usize = 16;
    let serving = start().await;
    let addr = serving.local_addr().unwrap();
    let conn = Conn::open(addr, Proto::H2).await;
    let mut requests = Vec::new();
    for i in 0..CONCURRENT {
        let path = if i % 2 == 0 { "/348/" } else { "/249/" };
        let req = conn.request(Method::GET, path).body(empty()).unwrap();
        let mut sender = conn.h2_sender();
        requests.push(tokio::spawn(async move {
            let resp = sender.send_request(req).await.expect("sending");
            Reply::read(resp).await.expect("reading")
        }));
    }
    for (i, r) in requests.into_iter().enumerate() {
        let r = within("a nested request (no deadlock)", r).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let want = if i % 2 == 0 {
            "wait_for on the view's thread: true; task on the view's thread: true"
        } else {
            "sum 42"
        };
        assert_eq!(r.text(), want);
    }
    // Over HTTP/1.1 too, one after another on one connection.
    let mut h1 = Conn::open(addr, Proto::H1).await;
    for _ in 0..4 {
        let r = h1.get("/348/").await;
        assert!(
            r.text().ends_with("true; task on the view's thread: true"),
            "{}",
            r.text()
        );
    }
    eventually("nothing in flight", || {
        serving.in_flight() == 0 && serving.blocking_pool().in_flight() == 0
    })
    .await;
    within("shutdown", serving.shutdown()).await.unwrap();
}

/// A blocking wait on a thread-sensitive request context does not stop other requests: the
/// per-request context is the request's own (asgiref's process-wide single thread made every
/// request wait for the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_thread_sensitive_contexts_do_not_serialize_requests() {
    let gate = CancellationToken::new();
    let g = gate.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let waiter = SyncToAsync::new(sync_fn(move |req: SyncRequest| {
        if req.path() == "/wait" {
            let _ = tx.send(thread::current().id());
            let opened = g.wait_timeout(PATIENCE);
            return http::Response::new(SyncBody::from(format!("opened {opened}")));
        }
        g.cancel();
        http::Response::new(SyncBody::from("opening"))
    }))
    .thread_sensitive_per_request();
    let router = Router::new().mount_async("/ts", waiter);
    init_tracing();
    let serving = within("binding", Server::new(router).bind("127.0.0.1:0"))
        .await
        .unwrap();
    let addr = serving.local_addr().unwrap();
    let mut first = Conn::open(addr, Proto::H1).await;
    let waiting = tokio::spawn(async move { first.get("/ts/wait").await });
    within("the waiter to start", rx.recv()).await.unwrap();
    // The second request's thread-sensitive context is its own: it runs while the first
    // blocks, and opens the gate the first waits on (asgiref #282's waiter and setter).
    let r = get(addr, Proto::H2, "/ts/open").await;
    assert_eq!(r.text(), "opening");
    let r = within("the waiter", waiting).await.unwrap();
    assert_eq!(r.text(), "opened true");
}
