//! `SyncToAsync` against the server's contract: errors before the start send nothing,
//! streaming has backpressure, cancellation reaches the blocking handler, cleanup always runs.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use amphi_core::testing::Communicator;
use amphi_core::{
    sync_fn, Error, ErrorKind, Event, HttpScope, LifespanScope, Message, RequestInfo, Scope, State,
    SyncBody, SyncRequest,
};
use amphi_sync_to_async::{BlockingPool, SyncToAsync};
use bytes::Bytes;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);

fn post(path: &str) -> http::Request<()> {
    http::Request::post(path).body(()).unwrap()
}

async fn wait_flag(flag: &AtomicBool) {
    timeout(BOUND, async {
        while !flag.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the flag was set in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_caller_flips_the_handlers_token_and_fails_its_body_reads() {
    let (tx, rx) = mpsc::channel();
    let app = Arc::new(SyncToAsync::new(sync_fn(move |mut req: SyncRequest| {
        let token = req.cancellation().clone();
        tx.send("started").unwrap();
        let flipped = token.wait_timeout(BOUND);
        let read = req.body_mut().read_to_end(&mut Vec::new());
        let kind = read.map_err(|e| Error::from_io(&e).map(Error::kind));
        tx.send(if flipped && kind == Err(Some(ErrorKind::Disconnected)) {
            "token flipped, body read failed"
        } else {
            "missed it"
        })
        .unwrap();
        http::Response::new(SyncBody::empty())
    })));
    let mut comm = Communicator::http(app, post("/"));
    comm.send_input(Event::Request {
        body: "partial".into(),
        more_body: true,
    });
    assert!(comm.try_receive_output().is_none());
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let recv = |rx: Arc<std::sync::Mutex<mpsc::Receiver<&'static str>>>| {
        tokio::task::spawn_blocking(move || rx.lock().unwrap().recv_timeout(BOUND).unwrap())
    };
    assert_eq!(recv(rx.clone()).await.unwrap(), "started");
    drop(comm); // the client went away
    assert_eq!(recv(rx).await.unwrap(), "token flipped, body read failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_and_panicked_return_errors_without_sending() {
    // Saturated: the only slot is taken.
    let pool = BlockingPool::new(1).queue_timeout(Duration::from_millis(20));
    let (release, gate) = mpsc::channel::<()>();
    let gate = Arc::new(std::sync::Mutex::new(gate));
    let slow = Arc::new(
        SyncToAsync::new(sync_fn(move |_| {
            let _ = gate.lock().unwrap().recv_timeout(BOUND);
            http::Response::new(SyncBody::empty())
        }))
        .pool(pool.clone()),
    );
    let mut first = Communicator::http(slow.clone(), post("/"));
    first.send_input(Event::Request {
        body: Bytes::new(),
        more_body: false,
    });
    assert!(first.try_receive_output().is_none());
    let mut second = Communicator::http(slow, post("/"));
    second.send_input(Event::Request {
        body: Bytes::new(),
        more_body: false,
    });
    let err = timeout(BOUND, second.wait()).await.unwrap().unwrap_err();
    assert!(err.is_saturated(), "{err}");
    assert!(second.try_receive_output().is_none(), "nothing sent");
    release.send(()).unwrap();
    timeout(BOUND, first.wait()).await.unwrap().unwrap();

    // Panicked.
    let boom = Arc::new(SyncToAsync::new(sync_fn(|_| -> amphi_core::SyncResponse {
        panic!("handler blew up")
    })));
    let mut comm = Communicator::http(boom, post("/"));
    comm.send_input(Event::Request {
        body: Bytes::new(),
        more_body: false,
    });
    let err = timeout(BOUND, comm.wait()).await.unwrap().unwrap_err();
    assert!(err.is_panic());
    assert!(err.to_string().contains("handler blew up"), "{err}");
    assert!(comm.try_receive_output().is_none(), "nothing sent");
}

/// An event source that yields one chunk then fails with `BodyTooLarge`, as the server's
/// limit does.
struct TooLarge(u8);

impl amphi_core::plumbing::EventSource for TooLarge {
    fn poll_event(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Event, Error>> {
        self.0 += 1;
        std::task::Poll::Ready(if self.0 == 1 {
            Ok(Event::Request {
                body: "0123".into(),
                more_body: true,
            })
        } else {
            Err(Error::new(ErrorKind::BodyTooLarge).with_message("over 4 bytes"))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_becomes_body_too_large_and_the_handlers_response_is_cleaned_up() {
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    let app = SyncToAsync::new(sync_fn(move |mut req: SyncRequest| {
        let flag = flag.clone();
        let status = if req.body_mut().read_to_end(&mut Vec::new()).is_ok() {
            200
        } else {
            400
        };
        http::Response::builder()
            .status(status)
            .body(
                SyncBody::from("handler's own answer")
                    .on_close(move || flag.store(true, Ordering::SeqCst)),
            )
            .unwrap()
    }));
    let (sink, sent) = amphi_core::testing::CollectSink::new();
    let scope = Scope::Http(HttpScope::new(post("/").into_parts().0, RequestInfo::new()));
    let err = timeout(
        BOUND,
        amphi_core::AsyncHandler::call(
            &app,
            scope,
            amphi_core::Receiver::new(TooLarge(0)),
            amphi_core::Sender::http(sink),
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.is_body_too_large(), "{err}");
    assert!(
        sent.lock().unwrap().is_empty(),
        "nothing sent: the server answers 413"
    );
    wait_flag(&closed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_has_backpressure_and_cleanup_runs_on_disconnect() {
    let produced = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let (p, c) = (produced.clone(), closed.clone());
    let app = Arc::new(SyncToAsync::new(sync_fn(move |_| {
        let p = p.clone();
        let c = c.clone();
        http::Response::new(
            SyncBody::chunks((0..1000).map(move |_| {
                p.fetch_add(1, Ordering::SeqCst);
                Bytes::from_static(b"chunk")
            }))
            .on_close(move || c.store(true, Ordering::SeqCst)),
        )
    })));
    let mut comm =
        Communicator::http(app, http::Request::get("/").body(()).unwrap()).output_capacity(1);
    comm.send_input(Event::Request {
        body: Bytes::new(),
        more_body: false,
    });
    let start = timeout(BOUND, comm.receive_output()).await.unwrap();
    assert!(matches!(start, Some(Message::ResponseStart { .. })));
    for consumed in 1..=20 {
        let m = timeout(BOUND, comm.receive_output()).await.unwrap();
        assert_eq!(m, Some(Message::body("chunk", true)));
        // The producer runs at most a few chunks ahead of the consumer: the bounded queue,
        // the one message in hand, the client's buffer, and the one being produced.
        assert!(
            produced.load(Ordering::SeqCst) <= consumed + 8,
            "no backpressure"
        );
    }
    comm.disconnect();
    let err = timeout(BOUND, comm.wait()).await.unwrap().unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    wait_flag(&closed).await;
    assert!(
        produced.load(Ordering::SeqCst) < 1000,
        "the producer stopped"
    );
}

#[tokio::test]
async fn websocket_is_denied_and_lifespan_is_declined() {
    let app = Arc::new(SyncToAsync::new(sync_fn(|_| {
        http::Response::new(SyncBody::empty())
    })));
    let ws = Scope::WebSocket(HttpScope::new(
        http::Request::get("/ws").body(()).unwrap().into_parts().0,
        RequestInfo::new(),
    ));
    let mut comm = Communicator::new(app.clone(), ws);
    comm.send_input(Event::WebSocketConnect);
    assert!(matches!(
        timeout(BOUND, comm.receive_output()).await.unwrap(),
        Some(Message::WebSocketClose { .. })
    ));
    let mut comm = Communicator::new(app, Scope::Lifespan(LifespanScope::new(State::new())));
    comm.send_input(Event::Startup);
    timeout(BOUND, comm.wait()).await.unwrap().unwrap();
    assert!(
        comm.try_receive_output().is_none(),
        "no lifespan support, said by sending nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_gets_the_request_context_mount_and_content_length() {
    #[derive(Clone)]
    struct Tag(&'static str);
    let app = Arc::new(SyncToAsync::new(sync_fn(|mut req: SyncRequest| {
        let current = amphi_core::Context::current()
            .and_then(|c| c.get::<Tag>())
            .map(|t| t.0);
        let same = req.context().get::<Tag>().map(|t| t.0);
        let len = req.body_mut().content_length();
        http::Response::new(SyncBody::from(format!(
            "{:?} {:?} {} {:?}",
            current,
            same,
            req.path(),
            len
        )))
    })));
    let (parts, ()) = http::Request::post("/app/x")
        .header("content-length", "2")
        .body(())
        .unwrap()
        .into_parts();
    let ctx = amphi_core::Context::new();
    ctx.insert(Tag("request"));
    let scope = Scope::Http(
        HttpScope::new(parts, RequestInfo::new().with_root_path("/app")).with_context(ctx),
    );
    let mut comm = Communicator::new(app, scope);
    comm.send_input(Event::Request {
        body: "hi".into(),
        more_body: false,
    });
    let _start = timeout(BOUND, comm.receive_output()).await.unwrap();
    let body = timeout(BOUND, comm.receive_output()).await.unwrap();
    assert_eq!(
        body,
        Some(Message::body(
            "Some(\"request\") Some(\"request\") /x Some(2)",
            false
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_sensitive_handlers_run_per_request_or_on_one_given_thread() {
    let thread_of = |_: SyncRequest| {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        http::Response::new(SyncBody::from(format!(
            "{name} {:?}",
            std::thread::current().id()
        )))
    };
    let get = || http::Request::get("/").body(Bytes::new()).unwrap();

    // Per request: each request's context gets its own thread; one request's calls share it.
    let per_request = Arc::new(SyncToAsync::new(sync_fn(thread_of)).thread_sensitive_per_request());
    let a = timeout(BOUND, amphi_core::testing::call(&per_request, get()))
        .await
        .unwrap()
        .unwrap();
    assert!(
        a.body.starts_with(b"amphi-thread-sensitive "),
        "{:?}",
        a.body
    );

    // One given context: every request on its thread.
    let app = amphi_core::ThreadSensitive::new();
    let shared = Arc::new(SyncToAsync::new(sync_fn(thread_of)).thread_sensitive(app.clone()));
    let one = timeout(BOUND, amphi_core::testing::call(&shared, get()))
        .await
        .unwrap()
        .unwrap();
    let two = timeout(BOUND, amphi_core::testing::call(&shared, get()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.body, two.body);
    let expected = format!("amphi-thread-sensitive {:?}", app.thread().unwrap().id());
    assert_eq!(one.body, expected.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_complete_at_the_call_or_streamed_read_the_same() {
    // The handler reports what it read and the length the request declared.
    let app = Arc::new(SyncToAsync::new(sync_fn(|mut req: SyncRequest| {
        let mut text = String::new();
        let read = req
            .body_mut()
            .read_to_string(&mut text)
            .map(|_| text)
            .map_err(|e| e.kind());
        let len = req.body_mut().content_length();
        http::Response::new(SyncBody::from(format!("{read:?} {len:?}")))
    })));
    let ask = |head: http::request::Builder, events: Vec<(&'static str, bool)>| {
        let mut comm = Communicator::http(app.clone(), head.body(()).unwrap());
        // Queued before the handler first runs: a single last event is the body complete at
        // the call; more events stream through the exchange.
        for (body, more_body) in events {
            comm.send_input(Event::Request {
                body: body.into(),
                more_body,
            });
        }
        async move {
            let _start = timeout(BOUND, comm.receive_output()).await.unwrap();
            match timeout(BOUND, comm.receive_output()).await.unwrap() {
                Some(Message::ResponseBody { body, .. }) => body,
                other => panic!("not a body: {other:?}"),
            }
        }
    };
    let get = || http::Request::get("/");
    assert_eq!(ask(get(), vec![("", false)]).await, "Ok(\"\") None");
    assert_eq!(
        ask(http::Request::post("/"), vec![("whole", false)]).await,
        "Ok(\"whole\") None"
    );
    assert_eq!(
        ask(
            http::Request::post("/").header("content-length", "5"),
            vec![("whole", false)]
        )
        .await,
        "Ok(\"whole\") Some(5)"
    );
    assert_eq!(
        ask(
            http::Request::post("/"),
            vec![("in ", true), ("", true), ("pieces", false)]
        )
        .await,
        "Ok(\"in pieces\") None"
    );
    // A declared length the body does not reach fails the read, whole or streamed.
    for events in [vec![("whole", false)], vec![("who", true), ("le", false)]] {
        let head = http::Request::post("/").header("content-length", "9");
        assert_eq!(ask(head, events).await, "Err(UnexpectedEof) Some(9)");
    }
}
