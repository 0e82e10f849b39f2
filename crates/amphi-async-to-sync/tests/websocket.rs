//! Websocket sessions carried by `AsyncToSync`: an async websocket handler served as a sync
//! handler's `websocket` (under `SyncToAsync`, driven by the testing driver), and a sync one
//! carried across twice.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use amphi_async_to_sync::AsyncToSync;
use amphi_core::testing::{Handshake, WebSocketCommunicator};
use amphi_core::{
    async_fn, sync_fn, websocket_fn, Accept, AsyncBody, AsyncRequest, CloseFrame, Error, ErrorKind,
    Message, SyncBody, SyncRequest, SyncWebSocketRequest, WebSocketData, WebSocketRequest,
};
use amphi_sync_to_async::{BlockingPool, SyncToAsync};
use bytes::Bytes;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);

fn get() -> http::Request<()> {
    http::Request::get("/ws").body(()).unwrap()
}

fn text(s: &str) -> Message {
    Message::WebSocketSend(s.into())
}

async fn next(client: &mut WebSocketCommunicator) -> Option<Message> {
    timeout(BOUND, client.receive())
        .await
        .expect("a message in time")
}

/// An async echo that picks the client's first subprotocol and records how it closed.
fn async_echo(closed: Arc<Mutex<Option<CloseFrame>>>) -> impl amphi_core::AsyncHandler {
    websocket_fn(move |req: WebSocketRequest| {
        let closed = closed.clone();
        async move {
            let accept = match req.subprotocols().first() {
                Some(p) => Accept::new().with_subprotocol(*p),
                None => Accept::new(),
            };
            let mut ws = req.accept_with(accept).await?;
            while let Some(data) = ws.recv().await? {
                ws.send(data).await?;
            }
            *closed.lock().unwrap() = ws.close_frame().cloned();
            Ok(())
        }
    })
}

/// `SyncToAsync(AsyncToSync(h))`: the async handler runs on a blocking thread of `pool`.
fn carried<H: amphi_core::AsyncHandler>(
    h: H,
    pool: &BlockingPool,
) -> Arc<SyncToAsync<AsyncToSync<H>>> {
    Arc::new(SyncToAsync::new(AsyncToSync::new(h)).pool(pool.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_echo_served_as_a_sync_handler() {
    let closed = Arc::default();
    let pool = BlockingPool::new(2);
    let app = carried(async_echo(Arc::clone(&closed)), &pool);
    let head = http::Request::get("/ws")
        .header("sec-websocket-protocol", "chat")
        .body(())
        .unwrap();
    let mut client = WebSocketCommunicator::new(app, head);
    let Handshake::Accepted { subprotocol, .. } =
        timeout(BOUND, client.connect()).await.unwrap().unwrap()
    else {
        panic!("accepted")
    };
    assert_eq!(subprotocol.as_deref(), Some("chat"));
    client.send("hi");
    assert_eq!(next(&mut client).await, Some(text("hi")));
    let binary = WebSocketData::Binary(Bytes::from_static(&[7; 3]));
    client.send(binary.clone());
    assert_eq!(
        next(&mut client).await,
        Some(Message::WebSocketSend(binary))
    );
    client.close(4000, "bye");
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
    assert_eq!(*closed.lock().unwrap(), Some(CloseFrame::new(4000, "bye")));
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_handler_sees_a_dropped_connection_as_1006() {
    let closed = Arc::default();
    let pool = BlockingPool::new(2);
    let app = carried(async_echo(Arc::clone(&closed)), &pool);
    let mut client = WebSocketCommunicator::new(app, get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    client.drop_connection();
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
    assert_eq!(
        closed.lock().unwrap().as_ref().map(CloseFrame::code),
        Some(1006)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_reaches_the_async_handler_and_returns_the_slot() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let handler = websocket_fn(move |req: WebSocketRequest| {
        let tx = tx.lock().unwrap().clone();
        async move {
            let mut ws = req.accept().await?;
            ws.send("ready").await?;
            let result = ws.recv().await;
            let kind = result.as_ref().err().map(Error::kind);
            tx.send(kind).unwrap();
            result.map(drop)
        }
    });
    let pool = BlockingPool::new(2);
    let app = carried(handler, &pool);
    let mut client = WebSocketCommunicator::new(app, get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    assert_eq!(next(&mut client).await, Some(text("ready")));
    drop(client);
    let kind = tokio::task::spawn_blocking(move || rx.recv_timeout(BOUND))
        .await
        .unwrap()
        .expect("the handler reported");
    assert_eq!(kind, Some(ErrorKind::Disconnected));
    timeout(BOUND, async {
        while pool.in_flight() != 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the slot came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_and_errors_of_the_async_handler_cross_over() {
    let pool = BlockingPool::new(2);
    let denying = carried(
        websocket_fn(|req: WebSocketRequest| async move {
            let resp = http::Response::builder()
                .status(409)
                .body(AsyncBody::from("taken"))
                .unwrap();
            req.deny_with(resp).await
        }),
        &pool,
    );
    let mut client = WebSocketCommunicator::new(denying, get());
    let Handshake::Denied(resp) = timeout(BOUND, client.connect()).await.unwrap().unwrap() else {
        panic!("denied")
    };
    assert_eq!((resp.status.as_u16(), &resp.body[..]), (409, &b"taken"[..]));
    timeout(BOUND, client.wait()).await.unwrap().unwrap();

    // An error after accept: the sync side closes 1011 and returns the error.
    let failing = carried(
        websocket_fn(|req: WebSocketRequest| async move {
            let _ws = req.accept().await?;
            Err(Error::handler(std::io::Error::other("database down")))
        }),
        &pool,
    );
    let mut client = WebSocketCommunicator::new(failing, get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    assert_eq!(
        next(&mut client).await,
        Some(Message::WebSocketClose {
            code: 1011,
            reason: String::new()
        })
    );
    let err = timeout(BOUND, client.wait()).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Handler);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_echo_carried_across_twice_and_http_beside_it() {
    // async (the driver) -> sync -> async -> sync: SyncToAsync(AsyncToSync(SyncToAsync(h))).
    let inner = SyncToAsync::new(
        sync_fn(|_req: SyncRequest| http::Response::new(SyncBody::from("page"))).websocket(
            |req: SyncWebSocketRequest| {
                let ws = req.accept()?;
                for message in &ws {
                    match message? {
                        WebSocketData::Text(t) => ws.send(t.to_uppercase())?,
                        binary => ws.send(binary)?,
                    }
                }
                Ok(())
            },
        ),
    );
    let pool = BlockingPool::new(4);
    let app = carried(inner, &pool);
    let mut client = WebSocketCommunicator::new(app.clone(), get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    client.send("shout");
    assert_eq!(next(&mut client).await, Some(text("SHOUT")));
    client.close(1000, "");
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
    let page = amphi_core::testing::call(&app, http::Request::get("/").body(Bytes::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(page.body, "page");
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_fn_with_websocket_served_as_a_sync_handler() {
    let app = async_fn(|_req: AsyncRequest| async { http::Response::new(AsyncBody::from("p")) })
        .websocket(|req: WebSocketRequest| async move {
            let ws = req.accept().await?;
            ws.close(4100, "custom").await
        });
    let pool = BlockingPool::new(2);
    let mut client = WebSocketCommunicator::new(carried(app, &pool), get());
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    assert_eq!(
        next(&mut client).await,
        Some(Message::WebSocketClose {
            code: 4100,
            reason: "custom".into()
        })
    );
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_reaches_the_async_handler_as_1006() {
    let closed = Arc::default();
    let pool = BlockingPool::new(2);
    let app = carried(async_echo(Arc::clone(&closed)), &pool);
    let (parts, ()) = get().into_parts();
    let scope = amphi_core::HttpScope::new(parts, amphi_core::RequestInfo::new());
    let token = scope.context().token().clone();
    let mut client = WebSocketCommunicator::from_scope(app, scope);
    timeout(BOUND, client.connect()).await.unwrap().unwrap();
    client.send("one");
    assert_eq!(next(&mut client).await, Some(text("one")));
    // The server cancels the request (shutting down, say) while the connection is up: the
    // queues say nothing, the cancelled token does.
    token.cancel();
    timeout(BOUND, client.wait()).await.unwrap().unwrap();
    assert_eq!(
        closed.lock().unwrap().as_ref().map(CloseFrame::code),
        Some(1006)
    );
}
