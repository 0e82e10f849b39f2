//! The blocking websocket of sync handlers, over ends of the test's own (a pipe with wakers,
//! as an adapter or server provides): blocking `recv`/`send` from two threads at once, the
//! iterator, how a session ends (client close, dropped connection, cancellation), denial,
//! and misuse, each with the `io::Error` kind the docs promise.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use amphi_core::plumbing::{SharedEventSource, SharedMessageSink};
use amphi_core::{
    Accept, BlockingWebSocket, Error, ErrorKind, Event, HttpScope, Message, Receiver, RequestInfo,
    Sender, SyncBody, SyncWebSocketRequest, WebSocketData,
};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// A generous bound for things that should happen at once; only a hang reaches it.
const HANG: Duration = Duration::from_secs(30);

#[derive(Default)]
struct PipeState {
    events: VecDeque<Event>,
    messages: Vec<Message>,
    reader: Option<Waker>,
}

/// Both ends of a session: events the test pushes, messages the handler sent.
#[derive(Default)]
struct Pipe(Mutex<PipeState>);

impl SharedEventSource for Pipe {
    fn poll_event(&self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>> {
        let mut s = self.0.lock().unwrap();
        if let Some(e) = s.events.pop_front() {
            return Poll::Ready(Ok(e));
        }
        s.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl SharedMessageSink for Pipe {
    fn poll_ready(&self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(&self, message: Message) -> Result<(), Error> {
        self.0.lock().unwrap().messages.push(message);
        Ok(())
    }
}

impl Pipe {
    fn push(&self, event: Event) {
        let mut s = self.0.lock().unwrap();
        s.events.push_back(event);
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    fn sent(&self) -> Vec<Message> {
        self.0.lock().unwrap().messages.clone()
    }

    /// Waits until the handler has sent `n` messages.
    fn wait_for(&self, n: usize) -> Vec<Message> {
        let deadline = Instant::now() + HANG;
        loop {
            let sent = self.sent();
            if sent.len() >= n {
                return sent;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages",
                sent.len()
            );
            thread::sleep(Duration::from_millis(1));
        }
    }
}

fn request(pipe: &Arc<Pipe>, head: http::Request<()>) -> SyncWebSocketRequest {
    let (parts, ()) = head.into_parts();
    let scope = HttpScope::new(parts, RequestInfo::new());
    SyncWebSocketRequest::new(
        scope,
        Receiver::shared(pipe.clone()),
        Sender::shared_websocket(pipe.clone()),
    )
}

fn get() -> http::Request<()> {
    http::Request::get("/ws").body(()).unwrap()
}

fn accepted(pipe: &Arc<Pipe>) -> BlockingWebSocket {
    pipe.push(Event::WebSocketConnect);
    request(pipe, get()).accept().unwrap()
}

fn text(s: &str) -> Message {
    Message::WebSocketSend(s.into())
}

fn disconnect(code: u16, reason: &str) -> Event {
    Event::WebSocketDisconnect {
        code,
        reason: reason.into(),
    }
}

fn kind(err: &io::Error) -> ErrorKind {
    Error::from_io(err).expect("an amphi error inside").kind()
}

#[test]
fn it_is_send_and_sync() {
    fn both<T: Send + Sync>() {}
    both::<BlockingWebSocket>();
    fn send<T: Send>() {}
    send::<SyncWebSocketRequest>();
}

#[test]
fn a_writer_thread_sends_while_the_reader_is_blocked_in_recv() {
    let pipe = Arc::new(Pipe::default());
    let ws = accepted(&pipe);
    let client = {
        let pipe = pipe.clone();
        thread::spawn(move || {
            // Three ticks arrive while the reader sits in `recv` with nothing to read: the
            // directions do not share a lock.
            let sent = pipe.wait_for(4);
            pipe.push(Event::WebSocketReceive("stop".into()));
            sent
        })
    };
    let got = thread::scope(|s| {
        s.spawn(|| {
            for i in 0..3 {
                ws.send(format!("tick {i}")).unwrap();
            }
        });
        ws.recv().unwrap()
    });
    assert_eq!(got, Some(WebSocketData::from("stop")));
    let sent = client.join().unwrap();
    assert_eq!(
        sent[1..],
        [text("tick 0"), text("tick 1"), text("tick 2")],
        "after the accept"
    );
}

#[test]
fn the_iterator_ends_at_the_clients_close_and_keeps_its_frame() {
    let pipe = Arc::new(Pipe::default());
    let ws = accepted(&pipe);
    pipe.push(Event::WebSocketReceive("a".into()));
    pipe.push(Event::WebSocketReceive(WebSocketData::Binary(
        Bytes::from_static(b"b"),
    )));
    pipe.push(disconnect(4002, "done"));
    let got: Vec<WebSocketData> = ws.messages().map(Result::unwrap).collect();
    assert_eq!(
        got,
        [WebSocketData::from("a"), WebSocketData::from(&b"b"[..])]
    );
    assert_eq!(
        ws.close_frame().map(|f| (f.code(), f.reason())),
        Some((4002, "done"))
    );
    assert_eq!(ws.recv().unwrap(), None, "ended for good");
    let err = ws.send("late").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert_eq!(kind(&err), ErrorKind::Disconnected);
    ws.close(1000, "").unwrap();
    assert_eq!(
        pipe.sent().len(),
        1,
        "only the accept: the close was a no-op"
    );
}

#[test]
fn a_dropped_connection_fails_recv_and_send_after_the_messages_before_it() {
    let pipe = Arc::new(Pipe::default());
    let ws = accepted(&pipe);
    pipe.push(Event::WebSocketReceive("last words".into()));
    pipe.push(disconnect(1006, ""));
    assert_eq!(ws.recv().unwrap(), Some("last words".into()));
    for _ in 0..2 {
        let err = ws.recv().unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionAborted,
            "sticky: {err}"
        );
        assert_eq!(kind(&err), ErrorKind::Disconnected);
    }
    assert_eq!(ws.close_frame().unwrap().code(), 1006);
    assert_eq!(
        ws.send("x").unwrap_err().kind(),
        io::ErrorKind::ConnectionAborted
    );
    let mut messages = ws.messages();
    assert!(messages.next().unwrap().is_err());
    assert!(messages.next().is_none(), "an error is yielded once");
}

#[test]
fn a_flipped_token_fails_sends_at_once_while_recv_still_reads_the_ends() {
    let pipe = Arc::new(Pipe::default());
    let ws = accepted(&pipe);
    // The token flips because the socket is done; the client's close is on its way.
    ws.cancellation().cancel();
    let err = ws.send("x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert_eq!(kind(&err), ErrorKind::Disconnected);
    assert_eq!(pipe.sent().len(), 1, "nothing after the accept");
    let pusher = {
        let pipe = pipe.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(10));
            pipe.push(Event::WebSocketReceive("last".into()));
            pipe.push(disconnect(1000, "bye"));
        })
    };
    assert_eq!(ws.recv().unwrap(), Some("last".into()));
    assert_eq!(ws.recv().unwrap(), None, "the close is seen as a close");
    pusher.join().unwrap();
    assert_eq!(ws.close_frame().unwrap().code(), 1000);
}

#[test]
fn accept_waits_for_connect_and_checks_the_subprotocol() {
    let pipe = Arc::new(Pipe::default());
    let head = || {
        http::Request::get("/ws")
            .header("sec-websocket-protocol", "a, b")
            .body(())
            .unwrap()
    };
    let err = request(&pipe, head())
        .accept_with(Accept::new().with_subprotocol("c"))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Other);
    assert_eq!(kind(&err), ErrorKind::Protocol);
    assert!(pipe.sent().is_empty());

    let pusher = {
        let pipe = pipe.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(10));
            pipe.push(Event::WebSocketConnect);
        })
    };
    let ws = request(&pipe, head())
        .accept_with(Accept::new().with_subprotocol("b"))
        .unwrap();
    pusher.join().unwrap();
    assert_eq!(ws.subprotocol(), Some("b"));
    assert_eq!(
        pipe.sent(),
        [Message::WebSocketAccept {
            subprotocol: Some("b".into()),
            headers: HeaderMap::new()
        }]
    );
}

#[test]
fn accept_fails_when_the_client_left_before_the_handshake() {
    let pipe = Arc::new(Pipe::default());
    pipe.push(disconnect(1006, ""));
    let err = request(&pipe, get()).accept().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(pipe.sent().is_empty());
}

#[test]
fn deny_is_a_close_before_accept_and_deny_with_streams_the_response() {
    let pipe = Arc::new(Pipe::default());
    request(&pipe, get()).deny().unwrap();
    assert!(matches!(pipe.sent()[..], [Message::WebSocketClose { .. }]));

    let pipe = Arc::new(Pipe::default());
    let response = http::Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .body(SyncBody::chunks(["log ", "in"]))
        .unwrap();
    request(&pipe, get()).deny_with(response).unwrap();
    let body = |b: &'static str, more_body| Message::WebSocketResponseBody {
        body: Bytes::from(b),
        more_body,
    };
    assert_eq!(
        pipe.sent(),
        [
            Message::WebSocketResponseStart {
                status: StatusCode::UNAUTHORIZED,
                headers: HeaderMap::new()
            },
            body("log ", true),
            body("in", true),
            body("", false),
        ]
    );
}

#[test]
fn misuse_is_a_protocol_error_and_nothing_is_sent() {
    let pipe = Arc::new(Pipe::default());
    let ws = accepted(&pipe);
    let err = ws.close(1006, "").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Other);
    assert_eq!(kind(&err), ErrorKind::Protocol);
    ws.close(1000, "bye").unwrap();
    assert_eq!(kind(&ws.send("after").unwrap_err()), ErrorKind::Protocol);
    assert_eq!(
        pipe.sent()[1..],
        [Message::WebSocketClose {
            code: 1000,
            reason: "bye".into()
        }]
    );
    // The client's answer to the close can still be read.
    pipe.push(disconnect(1000, ""));
    assert_eq!(ws.recv().unwrap(), None);
}
