//! Sync websockets through `SyncToAsync`, driven by the testing driver: the handler's
//! `websocket` runs on the pool for the whole session, bridged to `receive`/`send` by
//! bounded queues; how sessions end (client close, client gone, panics), backpressure both
//! ways, and the pool slot held and returned.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use amphi_core::testing::{Handshake, WebSocketCommunicator};
use amphi_core::{
    sync_fn, Accept, CancellationToken, CloseFrame, Error, ErrorKind, Message, SyncBody,
    SyncHandler, SyncRequest, SyncResponse, SyncWebSocketRequest, WebSocketData,
};
use amphi_sync_to_async::{BlockingPool, SyncToAsync};
use bytes::Bytes;
use tokio::time::timeout;

/// A generous bound for things that should happen at once; only a hang reaches it.
const BOUND: Duration = Duration::from_secs(10);

fn get() -> http::Request<()> {
    http::Request::get("/ws").body(()).unwrap()
}

fn page(_req: SyncRequest) -> SyncResponse {
    http::Response::new(SyncBody::from("page"))
}

fn text(s: &str) -> Message {
    Message::WebSocketSend(s.into())
}

fn close(code: u16) -> Message {
    Message::WebSocketClose {
        code,
        reason: String::new(),
    }
}

/// Waits, up to [`BOUND`], until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    timeout(BOUND, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within {BOUND:?}"));
}

/// Receives the next message within [`BOUND`].
async fn next(client: &mut WebSocketCommunicator) -> Option<Message> {
    timeout(BOUND, client.receive())
        .await
        .expect("a message in time")
}

/// An echo handler on its own pool of `slots`, recording how the client closed.
fn echo_app(
    slots: usize,
) -> (
    Arc<impl amphi_core::AsyncHandler>,
    BlockingPool,
    Arc<Mutex<Option<CloseFrame>>>,
) {
    let closed = Arc::new(Mutex::new(None));
    let record = closed.clone();
    let pool = BlockingPool::new(slots).queue_timeout(Duration::ZERO);
    let handler = sync_fn(page).websocket(move |req: SyncWebSocketRequest| {
        let ws = req.accept()?;
        for message in &ws {
            ws.send(message?)?;
        }
        *record.lock().unwrap() = ws.close_frame().cloned();
        Ok(())
    });
    (
        Arc::new(SyncToAsync::new(handler).pool(pool.clone())),
        pool,
        closed,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_text_and_binary_holding_a_slot_for_the_whole_session() {
    let (app, pool, closed) = echo_app(4);
    let mut client = WebSocketCommunicator::new(app, get());
    let handshake = timeout(BOUND, client.connect()).await.unwrap().unwrap();
    assert!(matches!(handshake, Handshake::Accepted { .. }));
    client.send("hello");
    assert_eq!(next(&mut client).await, Some(text("hello")));
    let binary = WebSocketData::Binary(Bytes::from_static(&[1, 2, 3]));
    client.send(binary.clone());
    assert_eq!(
        next(&mut client).await,
        Some(Message::WebSocketSend(binary))
    );
    assert_eq!(pool.in_flight(), 1, "the open session holds its slot");

    client.close(1001, "leaving");
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
    // The client closed: no close of the server's is owed.
    assert_eq!(client.receive().await, None);
    assert_eq!(
        *closed.lock().unwrap(),
        Some(CloseFrame::new(1001, "leaving"))
    );
    assert_eq!(pool.in_flight(), 0, "the slot came back with the handler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_still_goes_to_call_and_a_plain_sync_handler_denies_websockets() {
    let (app, _pool, _) = echo_app(2);
    let page = amphi_core::testing::call(&app, http::Request::get("/").body(Bytes::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(page.body, "page");

    let plain = Arc::new(SyncToAsync::new(sync_fn(page_fn)));
    let mut client = WebSocketCommunicator::new(plain, get());
    let Handshake::Denied(resp) = timeout(BOUND, client.connect()).await.unwrap().unwrap() else {
        panic!("denied")
    };
    assert_eq!(resp.status, 403);
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
}

fn page_fn(req: SyncRequest) -> SyncResponse {
    page(req)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocols_and_a_custom_denial_cross_over() {
    let handler = sync_fn(page).websocket(|req: SyncWebSocketRequest| {
        if req.scope().headers().contains_key("authorization") {
            let chosen = req.subprotocols()[0].to_owned();
            let ws = req.accept_with(Accept::new().with_subprotocol(chosen))?;
            return ws.close(1000, "");
        }
        let resp = http::Response::builder()
            .status(401)
            .header("www-authenticate", "Bearer")
            .body(SyncBody::chunks(["log ", "in"]))
            .unwrap();
        req.deny_with(resp)
    });
    let app = Arc::new(SyncToAsync::new(handler));

    let mut client = WebSocketCommunicator::new(app.clone(), get());
    let Handshake::Denied(resp) = timeout(BOUND, client.connect()).await.unwrap().unwrap() else {
        panic!("denied")
    };
    assert_eq!(resp.status, 401);
    assert_eq!(resp.headers["www-authenticate"], "Bearer");
    assert_eq!(resp.body, "log in");
    timeout(BOUND, client.wait()).await.unwrap().unwrap();

    let head = http::Request::get("/ws")
        .header("authorization", "Bearer x")
        .header("sec-websocket-protocol", "v2, v1")
        .body(())
        .unwrap();
    let mut client = WebSocketCommunicator::new(app, head);
    let Handshake::Accepted { subprotocol, .. } =
        timeout(BOUND, client.connect()).await.unwrap().unwrap()
    else {
        panic!("accepted")
    };
    assert_eq!(subprotocol.as_deref(), Some("v2"));
    assert_eq!(next(&mut client).await, Some(close(1000)));
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_and_a_writer_thread_work_at_once() {
    let handler = sync_fn(page).websocket(|req: SyncWebSocketRequest| {
        let ws = req.accept()?;
        std::thread::scope(|s| {
            // The writer sends while the reader below is blocked in `recv`: the test reads
            // all three ticks before it sends anything.
            let writer = s.spawn(|| -> io::Result<()> {
                for i in 0..3 {
                    ws.send(format!("tick {i}"))?;
                }
                Ok(())
            });
            let first = ws.recv()?;
            writer.join().expect("the writer did not panic")?;
            ws.send(format!(
                "read {:?}",
                first.and_then(|d| d.as_text().map(str::to_owned))
            ))?;
            ws.close(1000, "")
        })
    });
    let app = Arc::new(SyncToAsync::new(handler));
    let mut client = WebSocketCommunicator::new(app, get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    for i in 0..3 {
        assert_eq!(next(&mut client).await, Some(text(&format!("tick {i}"))));
    }
    client.send("stop");
    assert_eq!(next(&mut client).await, Some(text("read Some(\"stop\")")));
    assert_eq!(next(&mut client).await, Some(close(1000)));
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
}

/// A handler that accepts, says "ready", then blocks in `recv` and reports what it saw.
fn reporting_app(
    pool: &BlockingPool,
) -> (
    Arc<impl amphi_core::AsyncHandler>,
    mpsc::Receiver<(io::ErrorKind, Option<ErrorKind>, bool)>,
) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let handler = sync_fn(page).websocket(move |req: SyncWebSocketRequest| {
        let ws = req.accept()?;
        ws.send("ready")?;
        let err = loop {
            match ws.recv() {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(e) => break e,
            }
        };
        let token: &CancellationToken = ws.cancellation();
        let report = (
            err.kind(),
            Error::from_io(&err).map(Error::kind),
            token.is_cancelled(),
        );
        // And sending fails the same way.
        assert_eq!(
            ws.send("x").unwrap_err().kind(),
            io::ErrorKind::ConnectionAborted
        );
        tx.lock().unwrap().send(report).unwrap();
        Err(err)
    });
    (Arc::new(SyncToAsync::new(handler).pool(pool.clone())), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_session_fails_recv_flips_the_token_and_returns_the_slot() {
    let pool = BlockingPool::new(2);
    let (app, reports) = reporting_app(&pool);
    let mut client = WebSocketCommunicator::new(app, get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    assert_eq!(next(&mut client).await, Some(text("ready")));
    assert_eq!(pool.in_flight(), 1);
    // The server gives up on the connection: it drops the session's future.
    drop(client);
    let report = tokio::task::spawn_blocking(move || reports.recv_timeout(BOUND))
        .await
        .unwrap()
        .expect("the handler reported");
    assert_eq!(
        report,
        (
            io::ErrorKind::ConnectionAborted,
            Some(ErrorKind::Disconnected),
            true
        )
    );
    eventually("the slot back", || pool.in_flight() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_1006_fails_recv_and_flips_the_token() {
    let pool = BlockingPool::new(2);
    let (app, reports) = reporting_app(&pool);
    let mut client = WebSocketCommunicator::new(app, get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    assert_eq!(next(&mut client).await, Some(text("ready")));
    client.drop_connection();
    let err = timeout(BOUND, client.wait()).await.unwrap().unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    let report = reports
        .try_recv()
        .expect("the handler reported before it returned");
    assert_eq!(
        report,
        (
            io::ErrorKind::ConnectionAborted,
            Some(ErrorKind::Disconnected),
            true
        )
    );
    // The slot is back before the session's future hears the handler returned.
    assert_eq!(pool.in_flight(), 0);
    assert_eq!(
        client.receive().await,
        None,
        "no close owed to a client that is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_closes_1000_and_a_panic_after_accept_closes_1011() {
    let pool = BlockingPool::new(2);
    let handler = sync_fn(page).websocket(|req: SyncWebSocketRequest| {
        let ws = req.accept()?;
        match ws.recv()? {
            Some(WebSocketData::Text(t)) if t == "panic" => panic!("handler bug"),
            _ => Ok(()),
        }
    });
    let app = Arc::new(SyncToAsync::new(handler).pool(pool.clone()));

    let mut client = WebSocketCommunicator::new(app.clone(), get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    client.send("fine");
    assert_eq!(next(&mut client).await, Some(close(1000)));
    timeout(BOUND, client.wait()).await.unwrap().unwrap();

    let mut client = WebSocketCommunicator::new(app, get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    client.send("panic");
    assert_eq!(next(&mut client).await, Some(close(1011)));
    let err = timeout(BOUND, client.wait()).await.unwrap().unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.message(), Some("handler bug"));
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_before_accept_sends_nothing_and_returns_the_panic() {
    let handler = sync_fn(page).websocket(|_req: SyncWebSocketRequest| -> io::Result<()> {
        panic!("before the handshake")
    });
    let app = Arc::new(SyncToAsync::new(handler));
    let mut client = WebSocketCommunicator::new(app, get());
    // Nothing was sent: the server answers the error (500).
    let err = timeout(BOUND, client.connect()).await.unwrap().unwrap_err();
    assert!(err.is_panic(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_refuses_a_session_without_sending() {
    let (app, pool, _) = echo_app(1);
    let mut first = WebSocketCommunicator::new(app.clone(), get());
    timeout(BOUND, first.connect()).await.unwrap().unwrap();
    assert_eq!(pool.in_flight(), 1);
    let mut second = WebSocketCommunicator::new(app, get());
    let err = timeout(BOUND, second.connect()).await.unwrap().unwrap_err();
    assert!(err.is_saturated(), "{err}");
    first.close(1000, "");
    timeout(BOUND, first.wait()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_blocks_the_handlers_sends_after_a_few_messages() {
    const MESSAGES: usize = 50;
    const CLIENT_ROOM: usize = 2;
    let sent = Arc::new(AtomicUsize::new(0));
    let count = sent.clone();
    let handler = sync_fn(page).websocket(move |req: SyncWebSocketRequest| {
        let ws = req.accept()?;
        for i in 0..MESSAGES {
            ws.send(i.to_string())?;
            count.fetch_add(1, Ordering::SeqCst);
        }
        ws.close(1000, "")
    });
    let app = Arc::new(SyncToAsync::new(handler));
    let mut client = WebSocketCommunicator::new(app, get()).output_capacity(CLIENT_ROOM);
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    // Drive the session without reading (waiting on the handler polls the session's future,
    // which moves messages on): the client's room, the one message the session's future
    // holds, and the bounded queue fill; then the handler blocks in `send`.
    let bound = CLIENT_ROOM + 1 + 4;
    assert!(
        timeout(Duration::from_millis(300), client.wait())
            .await
            .is_err(),
        "the handler cannot finish while the client does not read"
    );
    let blocked_at = sent.load(Ordering::SeqCst);
    assert!(blocked_at <= bound, "{blocked_at} sends went through");
    for i in 0..MESSAGES {
        assert_eq!(next(&mut client).await, Some(text(&i.to_string())));
    }
    assert_eq!(next(&mut client).await, Some(close(1000)));
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_does_not_read_stops_the_session_reading_the_client() {
    const MESSAGES: usize = 20;
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let handler = sync_fn(page).websocket(move |req: SyncWebSocketRequest| {
        let ws = req.accept()?;
        go_rx
            .lock()
            .unwrap()
            .recv_timeout(BOUND)
            .expect("told to go");
        let n = ws.messages().take(MESSAGES).count();
        ws.send(format!("read {n}"))?;
        ws.close(1000, "")
    });
    let app = Arc::new(SyncToAsync::new(handler));
    let mut client = WebSocketCommunicator::new(app, get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    for i in 0..MESSAGES {
        client.send(i.to_string());
    }
    // Drive the session while the handler does not read: at most the queue's worth of
    // messages leaves the client.
    let _ = timeout(Duration::from_millis(200), client.wait()).await;
    let left = client.pending_input();
    assert!(
        left >= MESSAGES - 4,
        "only {left} of {MESSAGES} left unread"
    );
    go_tx.send(()).unwrap();
    assert_eq!(
        next(&mut client).await,
        Some(text(&format!("read {MESSAGES}")))
    );
    assert_eq!(next(&mut client).await, Some(close(1000)));
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_runs_on_a_thread_sensitive_context_when_asked() {
    let ts = amphi_core::ThreadSensitive::new();
    let handler = sync_fn(page).websocket(|req: SyncWebSocketRequest| {
        let on_context = amphi_core::ThreadSensitive::current().is_some();
        let ws = req.accept()?;
        ws.send(format!("on context: {on_context}"))?;
        ws.close(1000, "")
    });
    let app = Arc::new(SyncToAsync::new(handler).thread_sensitive(ts));
    let mut client = WebSocketCommunicator::new(app, get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    assert_eq!(next(&mut client).await, Some(text("on context: true")));
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
}

#[test]
fn the_default_websocket_entry_of_a_sync_handler_denies() {
    // A handler written before websockets existed still compiles and denies them.
    struct Old;
    impl SyncHandler for Old {
        fn call(&self, req: SyncRequest) -> SyncResponse {
            page(req)
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let app = Arc::new(SyncToAsync::new(Old));
        let mut client = WebSocketCommunicator::new(app, get());
        let Handshake::Denied(resp) = timeout(BOUND, client.connect()).await.unwrap().unwrap()
        else {
            panic!("denied")
        };
        assert_eq!(resp.status, 403);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_never_reads_learns_of_the_clients_close_from_send() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let handler = sync_fn(page).websocket(move |req: SyncWebSocketRequest| {
        let ws = req.accept()?;
        let mut ticks = 0;
        let err = loop {
            match ws.send("tick") {
                Ok(()) => ticks += 1,
                Err(e) => break e,
            }
        };
        tx.lock()
            .unwrap()
            .send((ticks > 0, Error::from_io(&err).map(Error::kind)))
            .unwrap();
        Ok(())
    });
    let app = Arc::new(SyncToAsync::new(handler));
    let mut client = WebSocketCommunicator::new(app, get()).output_capacity(1);
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    assert_eq!(next(&mut client).await, Some(text("tick")));
    client.close(1000, "");
    // Keep reading what it sent before it noticed; then it returns, owing no close.
    while let Some(m) = next(&mut client).await {
        assert_eq!(m, text("tick"));
    }
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
    assert_eq!(
        rx.try_recv().unwrap(),
        (true, Some(ErrorKind::Disconnected))
    );
}
