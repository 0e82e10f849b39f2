//! Websockets for async handlers, through the testing driver: the sugar (`WebSocketRequest`,
//! `WebSocket`, `websocket_fn`, `async_fn(..).websocket(..)`) and the raw protocol as
//! `Sender` checks it, including the `websocket.http.response` denial extension.

use std::sync::{Arc, Mutex};

use amphi_core::testing::{self, CollectSink, Handshake, WebSocketCommunicator};
use amphi_core::{
    asgi_fn, async_fn, websocket_fn, Accept, AsyncBody, AsyncRequest, CloseFrame, Error, ErrorKind,
    Event, LifespanScope, Message, Scope, Sender, State, WebSocketData, WebSocketRequest,
    WithWebSocket,
};
use bytes::Bytes;
use futures_executor::block_on;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, StatusCode};

fn get(uri: &str) -> http::Request<()> {
    http::Request::get(uri).body(()).unwrap()
}

fn offering(protocols: &str) -> http::Request<()> {
    http::Request::get("/ws")
        .header("sec-websocket-protocol", protocols)
        .body(())
        .unwrap()
}

fn accept_message() -> Message {
    Message::WebSocketAccept {
        subprotocol: None,
        headers: HeaderMap::new(),
    }
}

fn text(s: &str) -> Message {
    Message::WebSocketSend(s.into())
}

fn close(code: u16, reason: &str) -> Message {
    Message::WebSocketClose {
        code,
        reason: reason.into(),
    }
}

/// An echo handler that records how the client closed.
fn echo(closed: Arc<Mutex<Option<CloseFrame>>>) -> Arc<impl amphi_core::AsyncHandler> {
    Arc::new(websocket_fn(move |req: WebSocketRequest| {
        let closed = closed.clone();
        async move {
            let mut ws = req.accept().await?;
            while let Some(data) = ws.recv().await? {
                ws.send(data).await?;
            }
            *closed.lock().unwrap() = ws.close_frame().cloned();
            // The stream stays ended, and sending to a client that closed fails.
            assert_eq!(ws.recv().await?, None);
            let err = ws.send("late").await.unwrap_err();
            assert!(err.is_disconnected(), "{err}");
            // Closing a websocket the client closed is a no-op.
            ws.close(1000, "").await
        }
    }))
}

// ---- the sugar ----

#[test]
fn echoes_text_and_binary_and_sees_the_clients_close() {
    let closed = Arc::default();
    block_on(async {
        let mut client = WebSocketCommunicator::new(echo(Arc::clone(&closed)), get("/ws"));
        assert_eq!(
            client.connect().await.unwrap(),
            Handshake::Accepted {
                subprotocol: None,
                headers: HeaderMap::new()
            }
        );
        client.send("hello");
        client.send(Bytes::from_static(&[0, 159, 146, 150]));
        client.send("");
        assert_eq!(client.receive().await, Some(text("hello")));
        assert_eq!(
            client.receive().await,
            Some(Message::WebSocketSend(WebSocketData::Binary(
                Bytes::from_static(&[0, 159, 146, 150])
            )))
        );
        assert_eq!(client.receive().await, Some(text("")));
        client.close(4000, "done here");
        client.wait().await.unwrap();
        assert_eq!(client.receive().await, None, "nothing sent after the close");
    });
    assert_eq!(
        *closed.lock().unwrap(),
        Some(CloseFrame::new(4000, "done here"))
    );
}

#[test]
fn a_close_frame_without_a_code_is_seen_as_1005() {
    let closed = Arc::default();
    block_on(async {
        let mut client = WebSocketCommunicator::new(echo(Arc::clone(&closed)), get("/ws"));
        client.connect().await.unwrap();
        client.send("before");
        client.close(1005, "");
        client.wait().await.unwrap();
        // The message sent before the close was still read and answered.
        assert_eq!(client.receive().await, Some(text("before")));
    });
    assert_eq!(*closed.lock().unwrap(), Some(CloseFrame::new(1005, "")));
}

#[test]
fn sending_to_a_dropped_connection_fails_disconnected() {
    let closed = Arc::default();
    block_on(async {
        let mut client = WebSocketCommunicator::new(echo(Arc::clone(&closed)), get("/ws"));
        client.connect().await.unwrap();
        client.send("before");
        client.drop_connection();
        // The echo of "before" cannot go out: the handler's error says the client is gone.
        assert!(client.wait().await.unwrap_err().is_disconnected());
    });
    assert_eq!(
        *closed.lock().unwrap(),
        None,
        "it stopped at the failed echo"
    );
}

#[test]
fn the_handler_sees_a_dropped_connection_as_1006() {
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let handler = Arc::new(websocket_fn(move |req: WebSocketRequest| {
        let record = record.clone();
        async move {
            let mut ws = req.accept().await?;
            while ws.recv().await?.is_some() {}
            let frame = ws.close_frame().cloned();
            *record.lock().unwrap() = frame;
            Ok(())
        }
    }));
    block_on(async {
        let mut client = WebSocketCommunicator::new(handler, get("/ws"));
        client.connect().await.unwrap();
        client.send("ignored");
        client.drop_connection();
        client.wait().await.unwrap();
    });
    let frame = seen.lock().unwrap().clone().unwrap();
    assert_eq!(frame.code(), 1006);
    assert!(frame.is_abnormal());
}

#[test]
fn the_handler_closes_with_its_code_and_reason() {
    let handler = Arc::new(websocket_fn(|req: WebSocketRequest| async move {
        let mut ws = req.accept().await?;
        let first = ws.recv().await?;
        assert_eq!(first, Some(WebSocketData::from("bye")));
        ws.close(4001, "asked to").await
    }));
    block_on(async {
        let mut client = WebSocketCommunicator::new(handler, get("/ws"));
        client.connect().await.unwrap();
        client.send("bye");
        assert_eq!(client.receive().await, Some(close(4001, "asked to")));
        client.wait().await.unwrap();
    });
}

#[test]
fn a_close_code_a_server_may_not_send_is_refused() {
    for (code, reason) in [(1005, ""), (1006, ""), (1015, ""), (999, ""), (5000, "")]
        .into_iter()
        .map(|(c, r): (u16, &str)| (c, r.to_owned()))
        .chain([(1000, "x".repeat(124))])
    {
        let handler = Arc::new(websocket_fn(move |req: WebSocketRequest| {
            let reason = reason.clone();
            async move {
                let ws = req.accept().await?;
                ws.close(code, reason).await
            }
        }));
        block_on(async {
            let mut client = WebSocketCommunicator::new(handler, get("/ws"));
            client.connect().await.unwrap();
            let err = client.wait().await.unwrap_err();
            assert!(err.is_protocol(), "{code}: {err}");
            assert_eq!(client.receive().await, None, "{code}: nothing was sent");
        });
    }
}

#[test]
fn accept_chooses_an_offered_subprotocol_and_adds_headers() {
    let handler = Arc::new(websocket_fn(|req: WebSocketRequest| async move {
        assert_eq!(req.subprotocols(), ["v2.chat", "v1.chat"]);
        let chosen = req.subprotocols()[1].to_owned();
        let mut headers = HeaderMap::new();
        headers.insert("x-session", HeaderValue::from_static("42"));
        let ws = req
            .accept_with(Accept::new().with_subprotocol(chosen).with_headers(headers))
            .await?;
        assert_eq!(ws.subprotocol(), Some("v1.chat"));
        ws.close(1000, "").await
    }));
    block_on(async {
        let mut client = WebSocketCommunicator::new(handler, offering("v2.chat, v1.chat"));
        let Handshake::Accepted {
            subprotocol,
            headers,
        } = client.connect().await.unwrap()
        else {
            panic!("accepted")
        };
        assert_eq!(subprotocol.as_deref(), Some("v1.chat"));
        assert_eq!(headers["x-session"], "42");
        assert_eq!(client.receive().await, Some(close(1000, "")));
        client.wait().await.unwrap();
    });
}

#[test]
fn accepting_with_a_subprotocol_the_client_did_not_offer_fails_and_sends_nothing() {
    let handler = Arc::new(websocket_fn(|req: WebSocketRequest| async move {
        req.accept_with(Accept::new().with_subprotocol("v3"))
            .await
            .map(drop)
    }));
    block_on(async {
        let mut client = WebSocketCommunicator::new(handler, offering("v1, v2"));
        let err = client.connect().await.unwrap_err();
        assert!(err.is_protocol());
        assert!(err.to_string().contains("\"v3\""), "{err}");
    });
}

#[test]
fn deny_answers_403_and_so_does_returning_without_an_answer() {
    let denying = Arc::new(websocket_fn(|req: WebSocketRequest| async move {
        req.deny().await
    }));
    let silent = Arc::new(websocket_fn(|_req: WebSocketRequest| async { Ok(()) }));
    block_on(async {
        for handler in [
            denying as Arc<dyn amphi_core::AsyncHandler>,
            silent as Arc<dyn amphi_core::AsyncHandler>,
        ] {
            let mut client = WebSocketCommunicator::new(handler, get("/ws"));
            let Handshake::Denied(resp) = client.connect().await.unwrap() else {
                panic!("denied")
            };
            assert_eq!(resp.status, StatusCode::FORBIDDEN);
            assert!(resp.body.is_empty());
            client.wait().await.unwrap();
        }
    });
}

#[test]
fn a_handler_error_before_answering_comes_back_from_connect() {
    let failing = Arc::new(websocket_fn(|_req: WebSocketRequest| async {
        Err(Error::new(ErrorKind::Saturated).with_message("no room"))
    }));
    block_on(async {
        let mut client = WebSocketCommunicator::new(failing, get("/ws"));
        assert!(client.connect().await.unwrap_err().is_saturated());
    });
}

#[test]
fn deny_with_sends_the_apps_own_response_streamed() {
    let handler = Arc::new(websocket_fn(|req: WebSocketRequest| async move {
        let chunks = vec![Ok(Bytes::from("no ")), Ok(Bytes::from("token"))];
        let response = http::Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", "Bearer")
            .body(AsyncBody::from_stream(stream::iter(chunks)))
            .unwrap();
        req.deny_with(response).await
    }));
    // Anything that is IntoResponse: here a status and a string.
    let full = Arc::new(websocket_fn(|req: WebSocketRequest| async move {
        req.deny_with((StatusCode::TOO_MANY_REQUESTS, "slow down"))
            .await
    }));
    block_on(async {
        let mut client = WebSocketCommunicator::new(handler, get("/ws"));
        let Handshake::Denied(resp) = client.connect().await.unwrap() else {
            panic!("denied")
        };
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers["www-authenticate"], "Bearer");
        assert_eq!(resp.body, "no token");
        assert_eq!(resp.body_messages, 3, "two chunks and the end");
        client.wait().await.unwrap();

        let mut client = WebSocketCommunicator::new(full, get("/ws"));
        let Handshake::Denied(resp) = client.connect().await.unwrap() else {
            panic!("denied")
        };
        assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(resp.body, "slow down");
        assert_eq!(
            resp.body_messages, 1,
            "a body of known length is one message"
        );
    });
}

#[test]
fn accept_fails_when_the_client_is_gone_before_the_handshake() {
    let handler = Arc::new(asgi_fn(|scope, receive, send| async move {
        let Scope::WebSocket(scope) = scope else {
            return Ok(());
        };
        WebSocketRequest::new(scope, receive, send)
            .accept()
            .await
            .map(drop)
    }));
    block_on(async {
        // A scope whose first event is a disconnect, not websocket.connect.
        let (parts, ()) = get("/ws").into_parts();
        let mut comm = testing::Communicator::new(
            handler,
            Scope::WebSocket(amphi_core::HttpScope::new(
                parts,
                amphi_core::RequestInfo::new(),
            )),
        );
        comm.send_input(Event::WebSocketDisconnect {
            code: 1006,
            reason: String::new(),
        });
        assert!(comm.wait().await.unwrap_err().is_disconnected());
        assert_eq!(comm.receive_output().await, None, "no accept went out");
    });
}

#[test]
fn an_event_that_does_not_belong_to_an_open_websocket_is_a_protocol_error() {
    let handler = Arc::new(websocket_fn(|req: WebSocketRequest| async move {
        let mut ws = req.accept().await?;
        ws.recv().await.map(drop)
    }));
    block_on(async {
        let mut client = WebSocketCommunicator::new(handler, get("/ws"));
        client.connect().await.unwrap();
        client.send_input(Event::Request {
            body: Bytes::new(),
            more_body: false,
        });
        let err = client.wait().await.unwrap_err();
        assert!(err.is_protocol());
        assert!(err.to_string().contains("http.request"), "{err}");
    });
}

#[test]
fn a_slow_client_holds_the_handlers_sends_back() {
    let sent = Arc::new(Mutex::new(0));
    let count = sent.clone();
    let handler = Arc::new(websocket_fn(move |req: WebSocketRequest| {
        let count = count.clone();
        async move {
            let mut ws = req.accept().await?;
            for i in 0..10 {
                ws.send(i.to_string()).await?;
                *count.lock().unwrap() += 1;
            }
            ws.close(1000, "").await
        }
    }));
    block_on(async {
        let mut client = WebSocketCommunicator::new(handler, get("/ws")).output_capacity(2);
        client.connect().await.unwrap();
        // The accept and the first message filled the client's two places: the second send
        // waits for room (without backpressure the first poll would have run all ten).
        assert_eq!(*sent.lock().unwrap(), 1);
        for i in 0..10 {
            assert_eq!(client.receive().await, Some(text(&i.to_string())));
        }
        assert_eq!(client.receive().await, Some(close(1000, "")));
        client.wait().await.unwrap();
    });
}

// ---- one mount for both ----

#[test]
fn async_fn_with_websocket_answers_http_websocket_and_lifespan() {
    let app = Arc::new(
        async_fn(|req: AsyncRequest| async move {
            http::Response::new(AsyncBody::from(format!("page {}", req.uri().path())))
        })
        .websocket(|req: WebSocketRequest| async move {
            let mut ws = req.accept().await?;
            while let Some(data) = ws.recv().await? {
                ws.send(data).await?;
            }
            Ok(())
        }),
    );
    block_on(async {
        let page = testing::call(&app, http::Request::get("/a").body(Bytes::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(page.body, "page /a");

        let mut client = WebSocketCommunicator::new(app.clone(), get("/a"));
        client.connect().await.unwrap();
        client.send("echo");
        assert_eq!(client.receive().await, Some(text("echo")));
        client.close(1000, "");
        client.wait().await.unwrap();

        // Lifespan stays with the http side, which acknowledges it.
        let mut comm =
            testing::Communicator::new(app, Scope::Lifespan(LifespanScope::new(State::new())));
        comm.send_input(Event::Startup);
        assert_eq!(comm.receive_output().await, Some(Message::StartupComplete));
    });
}

#[test]
fn with_websocket_routes_any_two_handlers_by_scope() {
    let page = asgi_fn(|_scope, _receive, mut send| async move {
        send.send(Message::start(StatusCode::OK, HeaderMap::new()))
            .await?;
        send.send(Message::body("http side", false)).await
    });
    let socket = websocket_fn(|req: WebSocketRequest| async move { req.deny().await });
    let app = Arc::new(WithWebSocket::new(page, socket));
    block_on(async {
        let resp = testing::call(&app, http::Request::get("/").body(Bytes::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.body, "http side");
        let mut client = WebSocketCommunicator::new(app, get("/"));
        assert!(matches!(
            client.connect().await.unwrap(),
            Handshake::Denied(_)
        ));
    });
}

#[test]
fn websocket_fn_answers_http_with_426() {
    let app = Arc::new(websocket_fn(|req: WebSocketRequest| async move {
        req.deny().await
    }));
    block_on(async {
        let resp = testing::call(&app, http::Request::get("/").body(Bytes::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(resp.headers["upgrade"], "websocket");
    });
}

// ---- the raw protocol as Sender checks it ----

type Sent = Arc<Mutex<Vec<Message>>>;

fn sender() -> (Sender, Sent) {
    let (sink, sent) = CollectSink::new();
    (Sender::websocket(sink), sent)
}

fn denial_start() -> Message {
    Message::WebSocketResponseStart {
        status: StatusCode::UNAUTHORIZED,
        headers: HeaderMap::new(),
    }
}

fn denial_body(more_body: bool) -> Message {
    Message::WebSocketResponseBody {
        body: Bytes::from("no"),
        more_body,
    }
}

/// Sends each message and returns which went through; a refused one must not be delivered.
fn run(messages: Vec<Message>) -> Vec<Result<(), String>> {
    let (mut send, sent) = sender();
    block_on(async {
        let mut results = Vec::new();
        for m in messages {
            let before = sent.lock().unwrap().len();
            let result = send.send(m).await;
            let after = sent.lock().unwrap().len();
            match &result {
                Ok(()) => assert_eq!(after, before + 1),
                Err(e) => {
                    assert!(e.is_protocol(), "{e}");
                    assert_eq!(after, before, "a refused message is not delivered");
                }
            }
            results.push(result.map_err(|e| e.to_string()));
        }
        results
    })
}

#[test]
fn a_denial_response_is_only_for_a_handshake_not_yet_accepted() {
    let results = run(vec![
        denial_body(false),
        denial_start(),
        accept_message(),
        text("x"),
        close(1000, ""),
        denial_body(true),
        denial_body(false),
        denial_body(false),
    ]);
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(
        ok,
        [false, true, false, false, false, true, true, false],
        "{results:?}"
    );
    assert!(results[0].as_ref().unwrap_err().contains("before"));
    assert!(results[2]
        .as_ref()
        .unwrap_err()
        .contains("only websocket.http.response.body may follow"));
    assert!(results[7]
        .as_ref()
        .unwrap_err()
        .contains("after the exchange ended"));
}

#[test]
fn no_denial_after_accept_and_a_close_before_accept_takes_any_code() {
    let results = run(vec![
        accept_message(),
        denial_start(),
        denial_body(false),
        accept_message(),
        text("still open"),
        close(1000, "bye"),
        text("late"),
    ]);
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(
        ok,
        [true, false, false, false, true, true, false],
        "{results:?}"
    );
    assert!(results[1]
        .as_ref()
        .unwrap_err()
        .contains("after websocket.accept"));

    // Before accept a close is a 403: its code goes nowhere, so any code is fine.
    assert_eq!(run(vec![close(1006, "")]), [Ok(())]);
    // After it the state is done.
    let (send, _) = sender();
    let results = run(vec![close(1006, ""), accept_message()]);
    assert!(results[1]
        .as_ref()
        .unwrap_err()
        .contains("after the exchange ended"));
    assert!(!send.is_started());
}

#[test]
fn the_denial_messages_have_their_asgi_names() {
    assert_eq!(denial_start().type_name(), "websocket.http.response.start");
    assert_eq!(
        denial_body(true).type_name(),
        "websocket.http.response.body"
    );
    // And they do not belong to an http scope.
    let (sink, _) = CollectSink::new();
    let mut http = Sender::http(sink);
    let err = block_on(http.send(denial_start())).unwrap_err();
    assert!(
        err.to_string().contains("does not belong to an http scope"),
        "{err}"
    );
}

#[test]
fn deny_with_an_error_returns_it_and_sends_nothing() {
    let handler = Arc::new(websocket_fn(|req: WebSocketRequest| async move {
        let failed: Result<&str, Error> = Err(Error::new(ErrorKind::Saturated));
        req.deny_with(failed).await
    }));
    block_on(async {
        let mut client = WebSocketCommunicator::new(handler, get("/ws"));
        assert!(client.connect().await.unwrap_err().is_saturated());
        assert_eq!(client.receive().await, None);
    });
}
