//! A sync handler's `Err(Error)` (a `sync_fn` closure returning a `Result`) comes out of
//! `SyncToAsync` as that error, on both paths: `call_http` and the `AsyncHandler` side. That
//! is what lets the server map it to a status and log it, as it does an async handler's.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use amphi_core::testing::{call, Communicator};
use amphi_core::{sync_fn, BlockingBody, Error, ErrorKind, Event, SyncBody, SyncRequest};
use amphi_sync_to_async::{BlockingPool, SyncToAsync};
use bytes::Bytes;
use tokio::time::timeout;

mod support;
use support::{run, scope, BOUND};

/// A handler that fails with a `Handler` error wrapping an io error, after it built (and
/// dropped) a streamed body with a cleanup hook: the failure must not leak that cleanup.
fn failing(closed: Arc<AtomicBool>) -> SyncToAsync<impl amphi_core::SyncHandler> {
    SyncToAsync::new(sync_fn(
        move |req: SyncRequest| -> Result<SyncBody, Error> {
            let flag = closed.clone();
            let body = SyncBody::chunks(["never sent"])
                .on_close(move || flag.store(true, Ordering::SeqCst));
            if req.path() == "/fail" {
                drop(body);
                return Err(
                    Error::handler(std::io::Error::other("db down")).with_message("loading")
                );
            }
            Ok(body)
        },
    ))
    .pool(BlockingPool::new(2))
}

fn assert_the_handlers_error(err: &Error) {
    assert_eq!(err.kind(), ErrorKind::Handler, "{err}");
    assert_eq!(err.message(), Some("loading"));
    assert_eq!(
        std::error::Error::source(err)
            .map(|s| s.to_string())
            .as_deref(),
        Some("db down")
    );
}

#[test]
fn call_http_returns_the_handlers_error() {
    run(async {
        let closed = Arc::new(AtomicBool::new(false));
        let app = failing(closed.clone());
        let err = timeout(BOUND, app.call_http(scope("/fail"), BlockingBody::empty()))
            .await
            .expect("the call ended in time")
            .expect_err("the handler's error, not a response");
        assert_the_handlers_error(&err);
        assert!(
            closed.load(Ordering::SeqCst),
            "the dropped body's cleanup ran"
        );

        // The same handler's Ok is a response as before.
        let ok = timeout(BOUND, app.call_http(scope("/ok"), BlockingBody::empty()))
            .await
            .expect("the call ended in time")
            .expect("a response");
        assert_eq!(ok.status(), 200);
    });
}

#[test]
fn the_async_handler_side_returns_the_handlers_error_without_sending() {
    run(async {
        let closed = Arc::new(AtomicBool::new(false));
        let app = Arc::new(failing(closed));
        let mut comm =
            Communicator::http(app.clone(), http::Request::get("/fail").body(()).unwrap());
        comm.send_input(Event::Request {
            body: Bytes::new(),
            more_body: false,
        });
        let err = timeout(BOUND, comm.wait())
            .await
            .expect("the handler ended in time")
            .expect_err("the handler's error");
        assert_the_handlers_error(&err);
        assert_eq!(comm.try_receive_output(), None, "nothing was sent");

        let ok = timeout(
            BOUND,
            call(&app, http::Request::get("/ok").body(Bytes::new()).unwrap()),
        )
        .await
        .expect("the call ended in time")
        .expect("a response");
        assert_eq!(ok.body, "never sent");
    });
}

#[test]
fn a_body_read_error_through_question_mark_keeps_its_kind_on_both_paths() {
    run(async {
        // `?` on an io::Error from a body read: the amphi error inside it comes back out.
        let app = Arc::new(SyncToAsync::new(sync_fn(|mut req: SyncRequest| {
            let mut text = String::new();
            req.body_mut().read_to_string(&mut text)?;
            Ok::<_, Error>(text)
        })));

        let (parts, ()) = http::Request::post("/").body(()).unwrap().into_parts();
        let scope = amphi_core::HttpScope::new(parts, amphi_core::RequestInfo::new());
        let body = BlockingBody::from_chunks([
            Ok(Bytes::from("part")),
            Err(Error::new(ErrorKind::TimedOut)),
        ]);
        let err = timeout(BOUND, app.call_http(scope, body))
            .await
            .expect("the call ended in time")
            .expect_err("the read's error");
        assert!(err.is_timeout(), "{err}");

        let mut comm = Communicator::http(app, http::Request::post("/").body(()).unwrap());
        comm.send_input(Event::Request {
            body: Bytes::from("part"),
            more_body: true,
        });
        comm.close_input();
        let err = timeout(BOUND, comm.wait())
            .await
            .expect("the handler ended in time")
            .expect_err("the read's error");
        assert!(err.is_disconnected(), "{err}");
        assert_eq!(comm.try_receive_output(), None, "nothing was sent");
    });
}
