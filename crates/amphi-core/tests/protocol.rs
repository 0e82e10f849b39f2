//! The async protocol as `Sender` enforces it: every misuse is an `ErrorKind::Protocol` error,
//! the message is not delivered and the state does not move, so a correct message still works
//! afterwards; the legal sequences go through; a handler that misuses it gets the error back.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use amphi_core::plumbing::MessageSink;
use amphi_core::testing::{self, CollectSink, Communicator};
use amphi_core::{
    asgi_fn, Error, ErrorKind, Event, HttpScope, LifespanScope, Message, RequestInfo, Scope,
    Sender, State, WebSocketData,
};
use bytes::Bytes;
use futures_executor::block_on;
use http::{HeaderMap, HeaderValue, StatusCode};

type Sent = Arc<Mutex<Vec<Message>>>;
type MakeSender = Box<dyn Fn() -> (Sender, Sent)>;

fn http() -> (Sender, Sent) {
    let (sink, sent) = CollectSink::new();
    (Sender::http(sink), sent)
}

fn websocket() -> (Sender, Sent) {
    let (sink, sent) = CollectSink::new();
    (Sender::websocket(sink), sent)
}

fn lifespan() -> (Sender, Sent) {
    let (sink, sent) = CollectSink::new();
    (Sender::lifespan(sink), sent)
}

fn start() -> Message {
    Message::start(StatusCode::OK, HeaderMap::new())
}

fn start_with_trailers() -> Message {
    Message::ResponseStart {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        trailers: true,
    }
}

fn body(more_body: bool) -> Message {
    Message::body("x", more_body)
}

fn trailers(more_trailers: bool) -> Message {
    let mut headers = HeaderMap::new();
    headers.insert("x-checksum", HeaderValue::from_static("abc"));
    Message::ResponseTrailers {
        headers,
        more_trailers,
    }
}

fn accept() -> Message {
    Message::WebSocketAccept {
        subprotocol: None,
        headers: HeaderMap::new(),
    }
}

fn ws_text(text: &str) -> Message {
    Message::WebSocketSend(WebSocketData::Text(text.to_owned()))
}

fn ws_close() -> Message {
    Message::WebSocketClose {
        code: 1000,
        reason: String::new(),
    }
}

fn startup_failed() -> Message {
    Message::StartupFailed {
        message: "no database".to_owned(),
    }
}

fn shutdown_failed() -> Message {
    Message::ShutdownFailed {
        message: "stuck".to_owned(),
    }
}

fn http_messages() -> Vec<Message> {
    vec![
        start(),
        start_with_trailers(),
        body(true),
        body(false),
        trailers(true),
        trailers(false),
    ]
}

fn websocket_messages() -> Vec<Message> {
    vec![
        accept(),
        ws_text("hi"),
        Message::WebSocketSend(WebSocketData::Binary(Bytes::from_static(b"\x00"))),
        ws_close(),
    ]
}

fn lifespan_messages() -> Vec<Message> {
    vec![
        Message::StartupComplete,
        startup_failed(),
        Message::ShutdownComplete,
        shutdown_failed(),
    ]
}

fn every_message() -> Vec<Message> {
    let mut all = http_messages();
    all.extend(websocket_messages());
    all.extend(lifespan_messages());
    all
}

fn ok(send: &mut Sender, message: Message) {
    let name = message.type_name();
    block_on(send.send(message)).unwrap_or_else(|e| panic!("{name} should be legal: {e}"));
}

/// Sends `message`, expects a protocol error, and checks nothing was delivered and the
/// sender's state did not move. Returns the error for message checks.
fn misuse(send: &mut Sender, sent: &Sent, message: Message) -> Error {
    let name = message.type_name();
    let delivered = sent.lock().unwrap().len();
    let (started, finished) = (send.is_started(), send.is_finished());
    let err = block_on(send.send(message))
        .err()
        .unwrap_or_else(|| panic!("{name} in state {send:?} should be refused"));
    assert_eq!(err.kind(), ErrorKind::Protocol, "{name}: {err}");
    assert!(err.is_protocol());
    assert_eq!(
        sent.lock().unwrap().len(),
        delivered,
        "{name} was delivered"
    );
    assert_eq!(send.is_started(), started, "{name} moved the state");
    assert_eq!(send.is_finished(), finished, "{name} moved the state");
    let text = err.to_string();
    assert!(
        text.starts_with("protocol misuse: ") && text.contains(name),
        "the message names the rule and the message type: {text}"
    );
    err
}

fn delivered(sent: &Sent) -> Vec<&'static str> {
    sent.lock()
        .unwrap()
        .iter()
        .map(Message::type_name)
        .collect()
}

// ---- http ----

#[test]
fn body_before_start() {
    let (mut send, sent) = http();
    let err = misuse(&mut send, &sent, body(false));
    assert!(
        err.to_string().contains("before http.response.start"),
        "{err}"
    );
    misuse(&mut send, &sent, body(true));
    misuse(&mut send, &sent, Message::body("", false));
    ok(&mut send, start());
    ok(&mut send, body(false));
    assert_eq!(
        delivered(&sent),
        ["http.response.start", "http.response.body"]
    );
}

#[test]
fn trailers_before_start() {
    let (mut send, sent) = http();
    misuse(&mut send, &sent, trailers(false));
    misuse(&mut send, &sent, trailers(true));
    ok(&mut send, start_with_trailers());
    ok(&mut send, body(false));
    ok(&mut send, trailers(false));
    assert!(send.is_finished());
}

#[test]
fn second_start() {
    let (mut send, sent) = http();
    ok(&mut send, start());
    let err = misuse(&mut send, &sent, start());
    assert!(err.to_string().contains("second time"), "{err}");
    misuse(&mut send, &sent, start_with_trailers());
    ok(&mut send, body(true));
    misuse(&mut send, &sent, start());
    ok(&mut send, body(false));
    assert_eq!(
        delivered(&sent),
        [
            "http.response.start",
            "http.response.body",
            "http.response.body"
        ]
    );

    // A second start while trailers are due is refused too.
    let (mut send, sent) = http();
    ok(&mut send, start_with_trailers());
    ok(&mut send, body(false));
    misuse(&mut send, &sent, start());
    ok(&mut send, trailers(false));
}

#[test]
fn trailers_not_announced() {
    let (mut send, sent) = http();
    ok(&mut send, start());
    ok(&mut send, body(true));
    let err = misuse(&mut send, &sent, trailers(false));
    assert!(err.to_string().contains("did not announce"), "{err}");
    ok(&mut send, body(false));
    assert!(
        send.is_finished(),
        "without trailers the last body ends the exchange"
    );
    misuse(&mut send, &sent, trailers(false));
}

#[test]
fn trailers_before_the_last_body() {
    let (mut send, sent) = http();
    ok(&mut send, start_with_trailers());
    let err = misuse(&mut send, &sent, trailers(false));
    assert!(err.to_string().contains("before the last"), "{err}");
    ok(&mut send, body(true));
    misuse(&mut send, &sent, trailers(true));
    ok(&mut send, body(false));
    assert!(!send.is_finished(), "trailers are still due");
    ok(&mut send, trailers(false));
    assert!(send.is_finished());
}

#[test]
fn body_after_the_last_body() {
    // With trailers announced: the exchange waits for trailers, a body is refused.
    let (mut send, sent) = http();
    ok(&mut send, start_with_trailers());
    ok(&mut send, body(false));
    let err = misuse(&mut send, &sent, body(false));
    assert!(err.to_string().contains("after the last body"), "{err}");
    misuse(&mut send, &sent, body(true));
    ok(&mut send, trailers(false));

    // Without trailers: the last body ended the exchange.
    let (mut send, sent) = http();
    ok(&mut send, start());
    ok(&mut send, body(false));
    let err = misuse(&mut send, &sent, body(false));
    assert!(
        err.to_string().contains("after the exchange ended"),
        "{err}"
    );
}

#[test]
fn anything_after_the_end() {
    let finished: Vec<(&str, MakeSender)> = vec![
        (
            "http",
            Box::new(|| {
                let (mut s, sent) = http();
                ok(&mut s, start());
                ok(&mut s, body(false));
                (s, sent)
            }),
        ),
        (
            "http with trailers",
            Box::new(|| {
                let (mut s, sent) = http();
                ok(&mut s, start_with_trailers());
                ok(&mut s, body(false));
                ok(&mut s, trailers(true));
                ok(&mut s, trailers(false));
                (s, sent)
            }),
        ),
        (
            "websocket",
            Box::new(|| {
                let (mut s, sent) = websocket();
                ok(&mut s, accept());
                ok(&mut s, ws_close());
                (s, sent)
            }),
        ),
        (
            "websocket denied",
            Box::new(|| {
                let (mut s, sent) = websocket();
                ok(&mut s, ws_close());
                (s, sent)
            }),
        ),
        (
            "lifespan",
            Box::new(|| {
                let (mut s, sent) = lifespan();
                ok(&mut s, Message::StartupComplete);
                ok(&mut s, Message::ShutdownComplete);
                (s, sent)
            }),
        ),
        (
            "lifespan shutdown failed",
            Box::new(|| {
                let (mut s, sent) = lifespan();
                ok(&mut s, Message::StartupComplete);
                ok(&mut s, shutdown_failed());
                (s, sent)
            }),
        ),
    ];
    for (name, make) in finished {
        let (mut send, sent) = make();
        assert!(send.is_finished(), "{name}");
        assert!(send.is_started(), "{name}");
        for message in every_message() {
            let err = misuse(&mut send, &sent, message);
            assert!(
                err.to_string().contains("after the exchange ended"),
                "{name}: {err}"
            );
        }
    }
}

#[test]
fn websocket_and_lifespan_messages_in_an_http_scope() {
    let (mut send, sent) = http();
    let foreign: Vec<Message> = websocket_messages()
        .into_iter()
        .chain(lifespan_messages())
        .collect();
    for message in foreign.clone() {
        let err = misuse(&mut send, &sent, message);
        assert!(err.to_string().contains("an http scope"), "{err}");
    }
    ok(&mut send, start());
    for message in foreign.clone() {
        misuse(&mut send, &sent, message);
    }
    ok(&mut send, body(true));
    for message in foreign {
        misuse(&mut send, &sent, message);
    }
    ok(&mut send, body(false));
}

#[test]
fn http_and_lifespan_messages_in_a_websocket_scope() {
    let (mut send, sent) = websocket();
    let foreign: Vec<Message> = http_messages()
        .into_iter()
        .chain(lifespan_messages())
        .collect();
    for message in foreign.clone() {
        let err = misuse(&mut send, &sent, message);
        assert!(err.to_string().contains("a websocket scope"), "{err}");
    }
    ok(&mut send, accept());
    for message in foreign {
        misuse(&mut send, &sent, message);
    }
    ok(&mut send, ws_text("still open"));
    ok(&mut send, ws_close());
}

#[test]
fn http_and_websocket_messages_in_a_lifespan_scope() {
    let (mut send, sent) = lifespan();
    let foreign: Vec<Message> = http_messages()
        .into_iter()
        .chain(websocket_messages())
        .collect();
    for message in foreign.clone() {
        let err = misuse(&mut send, &sent, message);
        assert!(err.to_string().contains("a lifespan scope"), "{err}");
    }
    ok(&mut send, Message::StartupComplete);
    for message in foreign {
        misuse(&mut send, &sent, message);
    }
    ok(&mut send, Message::ShutdownComplete);
}

// ---- websocket ----

#[test]
fn websocket_send_before_accept() {
    let (mut send, sent) = websocket();
    let err = misuse(&mut send, &sent, ws_text("early"));
    assert!(err.to_string().contains("before websocket.accept"), "{err}");
    misuse(
        &mut send,
        &sent,
        Message::WebSocketSend(WebSocketData::Binary(Bytes::new())),
    );
    ok(&mut send, accept());
    ok(&mut send, ws_text("now"));
}

#[test]
fn second_accept() {
    let (mut send, sent) = websocket();
    ok(&mut send, accept());
    let err = misuse(&mut send, &sent, accept());
    assert!(err.to_string().contains("second time"), "{err}");
    ok(&mut send, ws_text("fine"));
    misuse(&mut send, &sent, accept());
    ok(&mut send, ws_close());
}

#[test]
fn websocket_accept_send_close() {
    let (mut send, sent) = websocket();
    assert!(!send.is_started());
    ok(
        &mut send,
        Message::WebSocketAccept {
            subprotocol: Some("chat".to_owned()),
            headers: HeaderMap::new(),
        },
    );
    assert!(send.is_started() && !send.is_finished());
    ok(&mut send, ws_text("one"));
    ok(
        &mut send,
        Message::WebSocketSend(WebSocketData::Binary(Bytes::from_static(b"two"))),
    );
    ok(&mut send, ws_close());
    assert!(send.is_finished());
    assert_eq!(
        delivered(&sent),
        [
            "websocket.accept",
            "websocket.send",
            "websocket.send",
            "websocket.close"
        ]
    );
}

#[test]
fn close_before_accept_denies_and_ends() {
    let (mut send, sent) = websocket();
    ok(
        &mut send,
        Message::WebSocketClose {
            code: 1008,
            reason: "policy".to_owned(),
        },
    );
    assert!(send.is_finished());
    misuse(&mut send, &sent, accept());
    assert_eq!(delivered(&sent), ["websocket.close"]);
}

// ---- lifespan ----

#[test]
fn shutdown_before_startup_completed() {
    let (mut send, sent) = lifespan();
    let err = misuse(&mut send, &sent, Message::ShutdownComplete);
    assert!(
        err.to_string().contains("before startup completed"),
        "{err}"
    );
    misuse(&mut send, &sent, shutdown_failed());
    ok(&mut send, Message::StartupComplete);
    ok(&mut send, Message::ShutdownComplete);
}

#[test]
fn second_startup_reply() {
    let (mut send, sent) = lifespan();
    ok(&mut send, Message::StartupComplete);
    let err = misuse(&mut send, &sent, Message::StartupComplete);
    assert!(
        err.to_string().contains("lifespan.startup.complete"),
        "{err}"
    );
    misuse(&mut send, &sent, startup_failed());
    ok(&mut send, Message::ShutdownComplete);
    assert_eq!(
        delivered(&sent),
        ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    );
}

#[test]
fn messages_after_startup_failed() {
    let (mut send, sent) = lifespan();
    ok(&mut send, startup_failed());
    assert!(send.is_finished());
    for message in lifespan_messages() {
        misuse(&mut send, &sent, message);
    }
    assert_eq!(delivered(&sent), ["lifespan.startup.failed"]);
}

#[test]
fn lifespan_happy_path() {
    let (mut send, sent) = lifespan();
    assert!(!send.is_started());
    ok(&mut send, Message::StartupComplete);
    assert!(send.is_started() && !send.is_finished());
    ok(&mut send, Message::ShutdownComplete);
    assert!(send.is_finished());
    assert_eq!(
        delivered(&sent),
        ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    );
}

// ---- legal http sequences ----

#[test]
fn http_full_streamed_and_trailers_flows() {
    let (mut send, sent) = http();
    assert!(!send.is_started());
    ok(&mut send, start());
    assert!(send.is_started() && !send.is_finished());
    ok(&mut send, body(false));
    assert!(send.is_finished());

    let (mut send, _) = http();
    ok(&mut send, start());
    for _ in 0..5 {
        ok(&mut send, body(true));
    }
    ok(&mut send, Message::body("", true)); // empty pieces are legal
    ok(&mut send, Message::body("", false));
    assert!(send.is_finished());

    let (mut send, sent2) = http();
    ok(&mut send, start_with_trailers());
    ok(&mut send, body(true));
    ok(&mut send, body(false));
    ok(&mut send, trailers(true));
    assert!(!send.is_finished());
    ok(&mut send, trailers(false));
    assert!(send.is_finished());
    assert_eq!(
        delivered(&sent2),
        [
            "http.response.start",
            "http.response.body",
            "http.response.body",
            "http.response.trailers",
            "http.response.trailers"
        ]
    );
    assert_eq!(
        sent.lock().unwrap()[1],
        body(false),
        "messages arrive unchanged"
    );
}

#[test]
fn for_scope_checks_the_scope_it_was_made_for() {
    let (parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
    let scope = Scope::Http(HttpScope::new(parts, RequestInfo::new()));
    let (sink, sent) = CollectSink::new();
    let mut send = Sender::for_scope(&scope, sink);
    misuse(&mut send, &sent, accept());
    ok(&mut send, start());

    let (parts, ()) = http::Request::get("/ws").body(()).unwrap().into_parts();
    let scope = Scope::WebSocket(HttpScope::new(parts, RequestInfo::new()));
    let (sink, sent) = CollectSink::new();
    let mut send = Sender::for_scope(&scope, sink);
    misuse(&mut send, &sent, start());
    ok(&mut send, accept());

    let scope = Scope::Lifespan(LifespanScope::new(State::new()));
    let (sink, sent) = CollectSink::new();
    let mut send = Sender::for_scope(&scope, sink);
    misuse(&mut send, &sent, start());
    ok(&mut send, Message::StartupComplete);
}

// ---- the sink's side: disconnect and backpressure ----

/// A sink whose readiness the test controls.
#[derive(Clone, Default)]
struct GateSink {
    inner: Arc<Mutex<Gate>>,
}

#[derive(Default)]
struct Gate {
    open: bool,
    gone: bool,
    taken: Vec<Message>,
    waker: Option<Waker>,
}

impl MessageSink for GateSink {
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        let mut g = self.inner.lock().unwrap();
        if g.gone {
            return Poll::Ready(Err(Error::new(ErrorKind::Disconnected)));
        }
        if g.open {
            Poll::Ready(Ok(()))
        } else {
            g.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn start_send(&mut self, message: Message) -> Result<(), Error> {
        self.inner.lock().unwrap().taken.push(message);
        Ok(())
    }
}

#[test]
fn a_disconnected_sink_fails_the_send_without_moving_the_state() {
    let sink = GateSink::default();
    sink.inner.lock().unwrap().gone = true;
    let mut send = Sender::http(sink.clone());
    let err = block_on(send.send(start())).unwrap_err();
    assert!(err.is_disconnected());
    assert!(!send.is_started());
    // A protocol error is reported before the sink is even asked.
    let err = block_on(send.send(body(false))).unwrap_err();
    assert!(err.is_protocol());
}

#[test]
fn a_send_waits_for_the_sink_and_a_dropped_send_sends_nothing() {
    let sink = GateSink::default();
    let mut send = Sender::http(sink.clone());
    let waker = Waker::noop();
    let mut cx = TaskContext::from_waker(waker);
    {
        let mut fut = pin!(send.send(start()));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    assert!(!send.is_started(), "a dropped send does not move the state");
    assert!(sink.inner.lock().unwrap().taken.is_empty());

    sink.inner.lock().unwrap().open = true;
    ok(&mut send, start());
    assert!(send.is_started());
    assert_eq!(sink.inner.lock().unwrap().taken.len(), 1);
}

#[test]
fn poll_send_checks_then_waits_for_the_sink() {
    let sink = GateSink::default();
    let mut send = Sender::http(sink.clone());
    let mut cx = TaskContext::from_waker(Waker::noop());

    let mut slot = Some(body(false));
    match send.poll_send(&mut cx, &mut slot) {
        Poll::Ready(Err(e)) => assert!(e.is_protocol()),
        other => panic!("expected a protocol error, got {other:?}"),
    }

    let mut slot = Some(start());
    assert!(send.poll_send(&mut cx, &mut slot).is_pending());
    assert!(slot.is_some(), "the message waits in the slot");
    sink.inner.lock().unwrap().open = true;
    assert!(matches!(
        send.poll_send(&mut cx, &mut slot),
        Poll::Ready(Ok(()))
    ));
    assert!(slot.is_none());
    assert!(send.is_started());

    let mut empty = None;
    assert!(matches!(
        send.poll_send(&mut cx, &mut empty),
        Poll::Ready(Err(_))
    ));
}

// ---- through a real handler ----

#[test]
fn a_handler_that_misuses_the_protocol_gets_the_error_back() {
    let observed: Arc<Mutex<Vec<ErrorKind>>> = Arc::default();
    let seen = observed.clone();
    let handler = Arc::new(asgi_fn(move |_scope, _receive, mut send| {
        let seen = seen.clone();
        async move {
            // Wrong: a body before the start. The handler sees the error and recovers.
            if let Err(e) = send.send(Message::body("early", false)).await {
                seen.lock().unwrap().push(e.kind());
            }
            send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                .await?;
            if let Err(e) = send
                .send(Message::start(StatusCode::OK, HeaderMap::new()))
                .await
            {
                seen.lock().unwrap().push(e.kind());
            }
            send.send(Message::body("fine", false)).await?;
            if let Err(e) = send.send(Message::body("late", false)).await {
                seen.lock().unwrap().push(e.kind());
            }
            Ok(())
        }
    }));
    block_on(async {
        let mut comm =
            Communicator::http(handler.clone(), http::Request::get("/").body(()).unwrap());
        let Some(Message::ResponseStart { status, .. }) = comm.receive_output().await else {
            panic!("the first message out is the start")
        };
        assert_eq!(status, 200);
        assert_eq!(
            comm.receive_output().await,
            Some(Message::body("fine", false))
        );
        assert_eq!(
            comm.receive_output().await,
            None,
            "nothing else got through"
        );
        comm.wait().await.unwrap();
    });
    assert_eq!(
        *observed.lock().unwrap(),
        [
            ErrorKind::Protocol,
            ErrorKind::Protocol,
            ErrorKind::Protocol
        ]
    );
}

#[test]
fn a_handler_that_propagates_misuse_fails_with_a_protocol_error() {
    let handler = Arc::new(asgi_fn(|_scope, _receive, mut send| async move {
        send.send(Message::start(StatusCode::OK, HeaderMap::new()))
            .await?;
        send.send(Message::WebSocketAccept {
            subprotocol: None,
            headers: HeaderMap::new(),
        })
        .await?;
        Ok(())
    }));
    block_on(async {
        let mut comm =
            Communicator::http(handler.clone(), http::Request::get("/").body(()).unwrap());
        assert!(matches!(
            comm.receive_output().await,
            Some(Message::ResponseStart { .. })
        ));
        assert_eq!(comm.receive_output().await, None);
        let err = comm.wait().await.unwrap_err();
        assert!(err.is_protocol());
        assert!(err.to_string().contains("websocket.accept"), "{err}");

        let err = testing::call(
            &handler,
            http::Request::get("/").body(Bytes::new()).unwrap(),
        )
        .await
        .unwrap_err();
        assert!(err.is_protocol());
    });
}

#[test]
fn a_websocket_handler_through_the_communicator() {
    let handler = Arc::new(asgi_fn(|scope, mut receive, mut send| async move {
        assert_eq!(scope.kind(), "websocket");
        assert_eq!(receive.receive().await?, Event::WebSocketConnect);
        // Wrong: sending before accepting.
        let err = send.send(ws_text("too soon")).await.unwrap_err();
        assert!(err.is_protocol());
        send.send(accept()).await?;
        loop {
            match receive.receive().await? {
                Event::WebSocketReceive(WebSocketData::Text(t)) => {
                    send.send(ws_text(&t.to_uppercase())).await?;
                }
                Event::WebSocketDisconnect { .. } => return Ok(()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }));
    let (parts, ()) = http::Request::get("/ws").body(()).unwrap().into_parts();
    let scope = Scope::WebSocket(HttpScope::new(parts, RequestInfo::new()));
    block_on(async {
        let mut comm = Communicator::new(handler, scope);
        comm.send_input(Event::WebSocketConnect);
        assert_eq!(comm.receive_output().await, Some(accept()));
        comm.send_input(Event::WebSocketReceive(WebSocketData::Text("hi".into())));
        assert_eq!(comm.receive_output().await, Some(ws_text("HI")));
        comm.send_input(Event::WebSocketDisconnect {
            code: 1000,
            reason: String::new(),
        });
        comm.wait().await.unwrap();
        assert_eq!(comm.receive_output().await, None);
    });
}

#[test]
fn type_names_are_the_asgi_types() {
    let names: Vec<&str> = every_message().iter().map(Message::type_name).collect();
    assert_eq!(
        names,
        [
            "http.response.start",
            "http.response.start",
            "http.response.body",
            "http.response.body",
            "http.response.trailers",
            "http.response.trailers",
            "websocket.accept",
            "websocket.send",
            "websocket.send",
            "websocket.close",
            "lifespan.startup.complete",
            "lifespan.startup.failed",
            "lifespan.shutdown.complete",
            "lifespan.shutdown.failed",
        ]
    );
    let events = [
        Event::Request {
            body: Bytes::new(),
            more_body: false,
        },
        Event::Disconnect,
        Event::WebSocketConnect,
        Event::WebSocketReceive(WebSocketData::Binary(Bytes::new())),
        Event::WebSocketDisconnect {
            code: 1005,
            reason: String::new(),
        },
        Event::Startup,
        Event::Shutdown,
    ];
    let names: Vec<&str> = events.iter().map(Event::type_name).collect();
    assert_eq!(
        names,
        [
            "http.request",
            "http.disconnect",
            "websocket.connect",
            "websocket.receive",
            "websocket.disconnect",
            "lifespan.startup",
            "lifespan.shutdown",
        ]
    );
}
