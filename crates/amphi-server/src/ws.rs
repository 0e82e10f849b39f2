//! Websocket sessions: the upgrade (HTTP/1.1 `Upgrade: websocket`, HTTP/2 extended CONNECT),
//! the handshake answer the handler gives through `send`, and the session task that carries
//! messages between the socket and the handler.
//!
//! The handler of a session runs on a task of its own (the connection's task hands the socket
//! over once hyper has written the handshake response), which also pumps the socket: frames
//! in go to a small bounded queue the handler's `receive` reads, messages the handler sends
//! go to a small bounded queue the socket drains. When a queue is full the side that fills it
//! waits: the socket is not read while the handler is behind, and `send` waits while the
//! client does not read. Ping, pong, fragmentation and the close handshake are the codec's
//! (tokio-tungstenite); idle sockets are pinged, and dropped when they do not answer.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::Duration;

use amphi_core::plumbing::{SharedEventSource, SharedMessageSink};
use amphi_core::{Error, ErrorKind, Event, Message, WebSocketData};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use futures_util::{Sink, Stream};
use http::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use crate::access::{AccessRecord, Outcome};
use crate::driver::Driver;
use crate::error::Chain;
use crate::reply::{error_response, has, length_mismatch, plain};

/// The default of [`WebSocketLimits::max_open`].
pub const DEFAULT_MAX_WEBSOCKETS: usize = 10_000;
/// The default of [`WebSocketLimits::max_message_bytes`] (and of the frame size): 16 MiB, as
/// uvicorn's `ws_max_size`.
pub const DEFAULT_MAX_WEBSOCKET_MESSAGE: usize = 16 * 1024 * 1024;
/// The default of [`WebSocketLimits::ping_interval`] and of its timeout: 20 s, as uvicorn's.
pub const DEFAULT_WEBSOCKET_PING: Duration = Duration::from_secs(20);
/// The default of [`WebSocketLimits::queue`]: messages waiting each way per socket.
pub const DEFAULT_WEBSOCKET_QUEUE: usize = 16;

/// The limits of websocket sessions, for [`Server::websockets`](crate::Server::websockets).
///
/// | limit | default | past it |
/// |---|---|---|
/// | [`max_open`](WebSocketLimits::max_open) | 10 000 | the handshake is answered `503` |
/// | [`max_message_bytes`](WebSocketLimits::max_message_bytes) | 16 MiB (frames too) | the socket is closed with `1009` |
/// | [`ping_interval`](WebSocketLimits::ping_interval) | 20 s idle, 20 s to answer | a socket that does not answer the ping is dropped: the handler sees `1006` |
/// | [`queue`](WebSocketLimits::queue) | 16 messages each way | the socket is not read while the handler is behind; `send` waits while the client does not read |
///
/// Text that is not UTF-8 closes the socket with `1007`, a protocol error with `1002`; a
/// handler that fails or panics after accepting closes it with `1011`; graceful shutdown
/// closes open sockets with `1001` and waits for them up to the grace period.
///
/// # Examples
///
/// ```
/// use amphi_server::{Router, Server, WebSocketLimits};
/// use std::time::Duration;
///
/// let server = Server::new(Router::new()).websockets(
///     WebSocketLimits::default()
///         .max_open(1_000)
///         .max_message_bytes(1024 * 1024)
///         .ping_interval(Some(Duration::from_secs(30)), Duration::from_secs(10)),
/// );
/// # let _ = server;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct WebSocketLimits {
    pub(crate) max_open: usize,
    pub(crate) max_message: usize,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) ping_timeout: Duration,
    pub(crate) queue: usize,
}

impl Default for WebSocketLimits {
    fn default() -> WebSocketLimits {
        WebSocketLimits {
            max_open: DEFAULT_MAX_WEBSOCKETS,
            max_message: DEFAULT_MAX_WEBSOCKET_MESSAGE,
            ping_interval: Some(DEFAULT_WEBSOCKET_PING),
            ping_timeout: DEFAULT_WEBSOCKET_PING,
            queue: DEFAULT_WEBSOCKET_QUEUE,
        }
    }
}

impl WebSocketLimits {
    /// The most websockets open at once, of both handler kinds; past it a handshake is
    /// answered `503` before the handler is called. A sync handler's socket also holds a
    /// blocking slot for as long as it is open.
    ///
    /// # Panics
    ///
    /// When `n` is 0.
    #[must_use]
    pub fn max_open(mut self, n: usize) -> WebSocketLimits {
        assert!(n > 0, "max_open must be at least 1");
        self.max_open = n;
        self
    }

    /// The largest message (and frame) a client may send, in bytes; past it the socket is
    /// closed with `1009` and the handler sees that code in its disconnect.
    #[must_use]
    pub fn max_message_bytes(mut self, bytes: usize) -> WebSocketLimits {
        self.max_message = bytes;
        self
    }

    /// How long a socket may be silent before the server pings it (`None`: never), and how
    /// long it then has to answer before it is dropped (the handler sees `1006`).
    #[must_use]
    pub fn ping_interval(
        mut self,
        interval: Option<Duration>,
        timeout: Duration,
    ) -> WebSocketLimits {
        self.ping_interval = interval.filter(|i| !i.is_zero());
        self.ping_timeout = timeout;
        self
    }

    /// How many messages may wait each way per socket: from the client for the handler, and
    /// from the handler for the client. Memory per socket is bounded by this times the
    /// largest message, plus the codec's buffers.
    ///
    /// # Panics
    ///
    /// When `n` is 0.
    #[must_use]
    pub fn queue(mut self, n: usize) -> WebSocketLimits {
        assert!(n > 0, "queue must be at least 1");
        self.queue = n;
        self
    }

    fn codec(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message))
            // Small buffers: most sockets are idle most of the time.
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(self.max_message.saturating_add(64 * 1024))
    }
}

/// What a request asks for, as far as websockets go.
pub(crate) enum Handshake {
    /// A plain request.
    No,
    /// An HTTP/1.1 upgrade, with the client's `Sec-WebSocket-Key`.
    H1(HeaderValue),
    /// An HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441).
    H2,
    /// An upgrade asked for websocket but the handshake is broken: `400` with this reason.
    Bad(&'static str),
}

/// Reads the handshake off a request head. A request that is not an upgrade costs one look
/// at its extensions: hyper puts an `OnUpgrade` there only for a request with an `Upgrade`
/// header (HTTP/1.1) or a CONNECT (HTTP/2), and a request without extensions has none to look
/// through. (Looking for the header instead cost ~140 instructions a request.)
pub(crate) fn handshake<B>(req: &Request<B>) -> Handshake {
    if req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return Handshake::No;
    }
    let headers = req.headers();
    if req.version() == Version::HTTP_2 {
        if req.method() != Method::CONNECT {
            return Handshake::No;
        }
        return match req.extensions().get::<hyper::ext::Protocol>() {
            Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => Handshake::H2,
            _ => Handshake::No,
        };
    }
    if !has(headers, &UPGRADE) {
        return Handshake::No;
    }
    if !crate::reply::has_token(headers, &UPGRADE, "websocket") {
        return Handshake::No;
    }
    if req.method() != Method::GET {
        return Handshake::Bad("a websocket handshake must be a GET");
    }
    if !crate::reply::has_token(headers, &CONNECTION, "upgrade") {
        return Handshake::Bad("a websocket handshake needs Connection: upgrade");
    }
    if headers.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Handshake::Bad("only websocket version 13 is supported");
    }
    match headers.get(SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Handshake::H1(key.clone()),
        _ => Handshake::Bad("a websocket handshake needs Sec-WebSocket-Key"),
    }
}

/// The websocket sessions of one server: the cap, the shutdown signal and the tasks.
pub(crate) struct Sessions {
    pub(crate) limits: WebSocketLimits,
    open: Arc<Semaphore>,
    /// `true` once shutdown has started: every session closes with 1001.
    going_away: watch::Sender<bool>,
    tasks: Mutex<JoinSet<()>>,
    /// Sessions started and not finished.
    live: AtomicUsize,
}

impl Sessions {
    pub(crate) fn new(limits: WebSocketLimits) -> Sessions {
        Sessions {
            open: Arc::new(Semaphore::new(limits.max_open)),
            limits,
            going_away: watch::channel(false).0,
            tasks: Mutex::new(JoinSet::new()),
            live: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, JoinSet<()>> {
        // Spawning and reaping cannot leave the set half-changed.
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions open right now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Tells every session to close with 1001.
    pub(crate) fn go_away(&self) {
        self.going_away.send_replace(true);
    }

    /// Waits until every session has ended.
    pub(crate) async fn wait(&self) {
        loop {
            let next = {
                let mut tasks = self.lock();
                if tasks.is_empty() {
                    return;
                }
                // Waiting on the set would hold its lock; poll it briefly instead.
                tasks.try_join_next()
            };
            if next.is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Cuts the sessions still open: their handlers are dropped and their tokens flip.
    pub(crate) async fn cut(&self) {
        let mut tasks = std::mem::take(&mut *self.lock());
        tasks.shutdown().await;
    }
}

/// How the handler answered the handshake.
enum Answer {
    Pending,
    Accept {
        subprotocol: Option<String>,
        headers: HeaderMap,
    },
    /// Closed before accepting: `403`.
    Refused,
    /// Denied with the handler's own response (`websocket.http.response`), its body still
    /// coming.
    Denying {
        status: StatusCode,
        headers: HeaderMap,
        body: Vec<Bytes>,
    },
    /// The denial response is complete.
    Denied(Response<Bytes>),
    /// The handler returned (or failed) without answering.
    Gone(Option<Error>),
}

/// What a session's handler, its socket and the handshake's response future share.
pub(crate) struct Session {
    state: Mutex<State>,
    queue: usize,
}

struct State {
    answer: Answer,
    /// The handshake's response future, waiting for the answer.
    answer_waker: Option<Waker>,
    /// `websocket.connect` was delivered.
    connected: bool,
    /// Messages from the client, for the handler.
    inbound: VecDeque<WebSocketData>,
    /// Messages from the handler, for the client.
    outbound: VecDeque<Out>,
    /// The socket closed with this code and reason; the handler sees it once the inbound
    /// queue is empty.
    closed: Option<(u16, String)>,
    /// The session task, whenever the handler or the socket has something for it.
    task_waker: Option<Waker>,
    /// The session task's waker while the task is being polled. A wake-up for the task then
    /// is only a note (`nudged`) that its poll loop reads before it returns: the handler runs
    /// in that loop, so each message the handler takes or sends would otherwise send the task
    /// through the scheduler once more.
    polling: Option<Waker>,
    /// Something changed during the task's poll: it goes round its loop again.
    nudged: bool,
}

enum Out {
    Data(WebSocketData),
    Close(u16, String),
}

impl Session {
    fn new(queue: usize) -> Arc<Session> {
        Arc::new(Session {
            queue,
            state: Mutex::new(State {
                answer: Answer::Pending,
                answer_waker: None,
                connected: false,
                inbound: VecDeque::new(),
                outbound: VecDeque::new(),
                closed: None,
                task_waker: None,
                polling: None,
                nudged: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few field updates that cannot panic halfway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn wake_task(&mut self) {
        let Some(own) = &self.polling else {
            if let Some(w) = self.task_waker.take() {
                w.wake();
            }
            return;
        };
        match self.task_waker.take() {
            // Another task waits (a handler that polls its `receive` elsewhere): wake it.
            Some(w) if !w.will_wake(own) => w.wake(),
            _ => self.nudged = true,
        }
    }

    fn answered(&mut self, answer: Answer) {
        self.answer = answer;
        if let Some(w) = self.answer_waker.take() {
            w.wake();
        }
    }
}

/// The handler's `receive` reads the session.
impl SharedEventSource for Session {
    fn poll_event(&self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>> {
        let mut s = self.lock();
        if !s.connected {
            s.connected = true;
            return Poll::Ready(Ok(Event::WebSocketConnect));
        }
        if let Some(data) = s.inbound.pop_front() {
            // Room in the queue: the socket may be read again.
            s.wake_task();
            return Poll::Ready(Ok(Event::WebSocketReceive(data)));
        }
        if let Some((code, reason)) = &s.closed {
            return Poll::Ready(Ok(Event::WebSocketDisconnect {
                code: *code,
                reason: reason.clone(),
            }));
        }
        s.task_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The handler's `send` writes into the session (the `Sender` has checked the order of
/// messages already).
impl SharedMessageSink for Session {
    fn poll_ready(&self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        let mut s = self.lock();
        if s.closed.is_some() {
            return Poll::Ready(Err(
                Error::new(ErrorKind::Disconnected).with_message("the websocket is closed")
            ));
        }
        if s.outbound.len() >= self.queue {
            s.task_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(&self, message: Message) -> Result<(), Error> {
        let mut s = self.lock();
        let accepted = matches!(s.answer, Answer::Accept { .. });
        match message {
            Message::WebSocketAccept {
                subprotocol,
                headers,
            } => s.answered(Answer::Accept {
                subprotocol,
                headers,
            }),
            Message::WebSocketClose { .. } if !accepted => {
                // Nothing more will come: the handler's next `receive` says so.
                s.closed = Some((1000, String::new()));
                s.answered(Answer::Refused);
            }
            Message::WebSocketClose { code, reason } => {
                s.outbound.push_back(Out::Close(code, reason));
                s.wake_task();
            }
            Message::WebSocketSend(data) => {
                s.outbound.push_back(Out::Data(data));
                s.wake_task();
            }
            Message::WebSocketResponseStart { status, headers } => {
                s.answer = Answer::Denying {
                    status,
                    headers,
                    body: Vec::new(),
                };
            }
            Message::WebSocketResponseBody { body, more_body } => {
                let Answer::Denying {
                    status,
                    headers,
                    body: mut pieces,
                } = std::mem::replace(&mut s.answer, Answer::Pending)
                else {
                    return Err(Error::protocol(
                        "websocket.http.response.body without a start",
                    ));
                };
                if !body.is_empty() {
                    pieces.push(body);
                }
                if more_body {
                    s.answer = Answer::Denying {
                        status,
                        headers,
                        body: pieces,
                    };
                } else {
                    let body = match pieces.len() {
                        0 => Bytes::new(),
                        1 => pieces.pop().expect("one piece"),
                        _ => Bytes::from(pieces.concat()),
                    };
                    let mut response = Response::new(body);
                    *response.status_mut() = status;
                    *response.headers_mut() = headers;
                    s.closed = Some((1000, String::new()));
                    s.answered(Answer::Denied(response));
                }
            }
            other => {
                return Err(Error::protocol(format!(
                    "{} in a websocket session",
                    other.type_name()
                )))
            }
        }
        Ok(())
    }
}

/// What the request future does while the handler decides: see [`Handshaking::poll`].
pub(crate) struct Handshaking {
    session: Arc<Session>,
    kind: Handshake,
    /// Handed to the session once accepted, so the session is logged when it ends.
    record: Option<AccessRecord>,
    /// Handed to the session once accepted.
    record_slot: Arc<Mutex<Option<AccessRecord>>>,
}

/// The client left during the handshake (its request future is dropped): the handler sees a
/// disconnect (1006).
impl Drop for Handshaking {
    fn drop(&mut self) {
        if self.record.is_some() {
            closed(&self.session, 1006);
        }
    }
}

impl Handshaking {
    /// Waits for the handler's answer; `Ready` with the handshake's response, and the access
    /// record when the answer is not an accept (the caller logs it with the response).
    pub(crate) fn poll(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<(Response<Bytes>, Option<AccessRecord>)> {
        let mut s = self.session.lock();
        let answer = std::mem::replace(&mut s.answer, Answer::Pending);
        let response = match answer {
            Answer::Pending => {
                s.answer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Answer::Accept {
                subprotocol,
                headers,
            } => {
                s.answer = Answer::Accept {
                    subprotocol: None,
                    headers: HeaderMap::new(),
                };
                drop(s);
                let response = self.accepted(subprotocol, headers);
                let mut record = self.record.take();
                if let Some(r) = record.as_mut() {
                    r.status = Some(response.status());
                }
                *self.record_slot.lock().unwrap_or_else(|p| p.into_inner()) = record;
                return Poll::Ready((response, None));
            }
            Answer::Refused => plain(StatusCode::FORBIDDEN, "websocket refused\n"),
            denying @ Answer::Denying { .. } => {
                s.answer = denying;
                s.answer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Answer::Denied(response) => {
                if length_mismatch(
                    response.status(),
                    response.headers(),
                    response.body().len() as u64,
                ) {
                    tracing::error!("protocol misuse: a websocket denial's content-length does not match its body");
                    plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
                } else {
                    response
                }
            }
            Answer::Gone(None) => {
                tracing::error!(
                    "protocol misuse: websocket handler returned without accepting or closing"
                );
                plain(StatusCode::FORBIDDEN, "websocket refused\n")
            }
            // Saturated (a sync handler's pool was full) is a 503, a panic a 500, ...: as for
            // an http request that failed before its response started.
            Answer::Gone(Some(e)) => error_response(&e, false, false),
        };
        Poll::Ready((response, self.record.take()))
    }

    /// The handshake response: `101 Switching Protocols` over HTTP/1.1, `200` over HTTP/2.
    fn accepted(&self, subprotocol: Option<String>, extra: HeaderMap) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        let headers = response.headers_mut();
        for (name, value) in &extra {
            headers.append(name, value.clone());
        }
        if let Some(p) = subprotocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, p);
        }
        if let Handshake::H1(key) = &self.kind {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let headers = response.headers_mut();
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            if let Ok(v) = HeaderValue::from_str(&accept) {
                headers.insert(SEC_WEBSOCKET_ACCEPT, v);
            }
        }
        response
    }
}

impl Sessions {
    /// A place for one more session; `None` when [`WebSocketLimits::max_open`] are open.
    pub(crate) fn place(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.open.clone().try_acquire_owned().ok()
    }
}

/// Starts a websocket session in `place`: the handler is called at once on a task of its
/// own, and the returned [`Handshaking`] answers the request when the handler accepts or
/// refuses.
pub(crate) fn start(
    sessions: &Arc<Sessions>,
    place: tokio::sync::OwnedSemaphorePermit,
    kind: Handshake,
    on_upgrade: hyper::upgrade::OnUpgrade,
    driver: impl FnOnce(Arc<Session>) -> Driver<Arc<Session>>,
    record: AccessRecord,
) -> Handshaking {
    let permit = place;
    let session = Session::new(sessions.limits.queue);
    let driver = driver(session.clone());
    let record_slot = Arc::new(Mutex::new(None));
    let task = run(
        driver,
        on_upgrade,
        sessions.limits,
        sessions.going_away.subscribe(),
        record_slot.clone(),
    );
    let counted = sessions.clone();
    counted.live.fetch_add(1, Ordering::Relaxed);
    let mut tasks = sessions.lock();
    while tasks.try_join_next().is_some() {}
    tasks.spawn(async move {
        let _permit = permit;
        task.await;
        counted.live.fetch_sub(1, Ordering::Relaxed);
    });
    Handshaking {
        session,
        kind,
        record: Some(record),
        record_slot,
    }
}

/// The `receive` and `send` of a session's handler: both are the session itself.
pub(crate) fn ends(session: &Arc<Session>) -> (amphi_core::Receiver, amphi_core::Sender) {
    (
        amphi_core::Receiver::shared(session.clone()),
        amphi_core::Sender::shared_websocket(session.clone()),
    )
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A session's task: polls the handler until it answers; once accepted, waits for hyper to
/// hand over the connection and pumps it; ends when both the handler and the socket are done.
// Not an `async fn`: that would lay its arguments out twice in the task's future.
#[allow(clippy::manual_async_fn)]
fn run(
    mut driver: Driver<Arc<Session>>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    limits: WebSocketLimits,
    mut going_away: watch::Receiver<bool>,
    record_slot: Arc<Mutex<Option<AccessRecord>>>,
) -> impl Future<Output = ()> + Send {
    async move {
        let session = driver.exchange.clone();
        let driver_session = session.clone();
        // Told apart from the future below with a version check, so the future is polled only
        // when there is news (it stays registered for the wake-up in between).
        let shutdown_news = going_away.clone();
        let mut shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            // A server that went away without saying so is going away too.
            let _ = going_away.wait_for(|gone| *gone).await;
        });
        let mut upgrade = Some(on_upgrade);
        let mut pump: Option<Pump> = None;
        let mut starting: Option<Pin<Box<dyn Future<Output = Option<Socket>> + Send>>> = None;
        let mut bytes: u64 = 0;
        let mut step = |cx: &mut TaskContext<'_>| loop {
            let mut progressed = false;
            // The handler.
            if driver.is_running() {
                if let Poll::Ready(result) = driver.poll_handler(cx) {
                    progressed = true;
                    handler_returned(&session, result, pump.is_some() || starting.is_some());
                }
            }
            // The handshake answer, then hyper's hand-over of the connection.
            let accepted = matches!(session.lock().answer, Answer::Accept { .. });
            if accepted && pump.is_none() && starting.is_none() {
                if let Some(up) = upgrade.take() {
                    let codec = limits.codec();
                    starting = Some(Box::pin(async move {
                        match up.await {
                            Ok(io) => Some(
                                WebSocketStream::from_raw_socket(
                                    TokioIo::new(io),
                                    Role::Server,
                                    Some(codec),
                                )
                                .await,
                            ),
                            Err(e) => {
                                // The client left before hyper could hand the connection over.
                                tracing::debug!(error = %e, "websocket upgrade failed");
                                None
                            }
                        }
                    }));
                }
            }
            if let Some(s) = starting.as_mut() {
                if let Poll::Ready(socket) = s.as_mut().poll(cx) {
                    starting = None;
                    progressed = true;
                    match socket {
                        Some(socket) => pump = Some(Pump::new(socket, limits)),
                        None => {
                            closed(&session, 1006);
                            driver.cancel();
                        }
                    }
                }
            }
            // The socket.
            if let Some(p) = pump.as_mut() {
                match p.poll(&session, (&shutdown_news, &mut shutdown), &mut bytes, cx) {
                    Poll::Ready(()) => {
                        if !driver.is_running() {
                            return Poll::Ready(Outcome::Complete);
                        }
                        // The socket is done; the handler sees its disconnect and returns, and
                        // blocking work it started sees its token flip.
                        driver.cancel();
                        pump = None;
                        progressed = true;
                    }
                    Poll::Pending => {}
                }
            } else if !driver.is_running() && starting.is_none() {
                let s = session.lock();
                // Refused, or the socket went away before it was handed over.
                if !matches!(s.answer, Answer::Accept { .. }) || s.closed.is_some() {
                    return Poll::Ready(Outcome::Complete);
                }
            }
            if !driver.is_running() && pump.is_none() && session.lock().closed.is_some() {
                return Poll::Ready(Outcome::Complete);
            }
            if !progressed {
                let mut s = session.lock();
                if std::mem::take(&mut s.nudged) {
                    continue;
                }
                s.polling = None;
                s.task_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        };
        let outcome = std::future::poll_fn(|cx| {
            {
                let mut s = driver_session.lock();
                s.polling = Some(cx.waker().clone());
                s.nudged = false;
            }
            let polled = step(cx);
            if polled.is_ready() {
                driver_session.lock().polling = None;
            }
            polled
        })
        .await;
        let record = record_slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut r) = record {
            r.bytes = bytes;
            r.outcome = outcome;
        }
    }
}

/// Records that the socket closed with `code` (unless it closed already) and wakes the task.
fn closed(session: &Session, code: u16) {
    let mut s = session.lock();
    s.closed.get_or_insert((code, String::new()));
    s.wake_task();
}

/// The handler returned: before it answered, that is its answer; after, the socket closes
/// (1000 when it returned `Ok`, 1011 when it failed).
fn handler_returned(session: &Session, result: Result<(), Error>, accepted: bool) {
    let mut s = session.lock();
    if !accepted {
        match s.answer {
            Answer::Pending => {
                s.answered(Answer::Gone(result.err()));
                return;
            }
            Answer::Denying { .. } => {
                let e = result.err().unwrap_or_else(|| {
                    Error::protocol("websocket handler returned before finishing its denial")
                });
                s.answered(Answer::Gone(Some(e)));
                return;
            }
            _ => {}
        }
    }
    let (code, reason) = match result {
        Ok(()) => (1000, String::new()),
        Err(e) => {
            if e.is_disconnected() {
                (1000, String::new())
            } else {
                if e.is_panic() {
                    tracing::error!(error = %Chain(&e), "websocket handler panicked; closing with 1011");
                } else {
                    tracing::warn!(error = %Chain(&e), "websocket handler failed; closing with 1011");
                }
                (1011, "internal error".to_owned())
            }
        }
    };
    if !s.outbound.iter().any(|o| matches!(o, Out::Close(..))) {
        s.outbound.push_back(Out::Close(code, reason));
    }
}

/// The socket side of a session.
struct Pump {
    socket: Socket,
    limits: WebSocketLimits,
    /// The close frame was sent; waiting for the client's.
    closing: Option<Instant>,
    /// When the socket last showed life, and whether a ping is out.
    last_seen: Instant,
    ping_sent: bool,
    timer: Pin<Box<Sleep>>,
    /// Written but not flushed.
    dirty: bool,
    /// Told to go away already.
    told: bool,
    /// The shutdown future was polled (and so waits registered).
    shutdown_polled: bool,
    /// `timer` was polled at its deadline (and so wakes the task then).
    timer_armed: bool,
    /// Whether reading the socket may find something; see [`Readable`].
    readable: Arc<Readable>,
    /// `readable` as the waker the socket's reads register.
    read_waker: Waker,
}

/// Remembers that the socket may have something to read: set when a read returned something
/// (more may be buffered) and when the connection wakes the read it left waiting. The pump
/// reads only then, not on every poll of the session task (the handler's messages wake it
/// too): each read attempt costs the codec a clear of its read buffer (tungstenite zero-fills
/// it up to its capacity before reading), and the session task runs a few times per message.
struct Readable {
    ready: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Readable {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// How long a socket has to answer a close frame before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Pump {
    fn new(socket: Socket, limits: WebSocketLimits) -> Pump {
        let now = Instant::now();
        // Nothing read yet: bytes that came with the handshake may be waiting.
        let readable = Arc::new(Readable {
            ready: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Pump {
            read_waker: Waker::from(readable.clone()),
            readable,
            socket,
            limits,
            closing: None,
            last_seen: now,
            ping_sent: false,
            timer: Box::pin(tokio::time::sleep_until(now + Duration::from_secs(3600))),
            dirty: false,
            told: false,
            shutdown_polled: false,
            timer_armed: false,
        }
    }

    /// Moves what can move; `Ready` once the socket is closed (the session records how).
    fn poll(
        &mut self,
        session: &Session,
        (news, shutdown): (
            &watch::Receiver<bool>,
            &mut Pin<Box<dyn Future<Output = ()> + Send>>,
        ),
        bytes: &mut u64,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        // Polled once to register, then when the signal moved (or its sender is gone).
        let due = !self.shutdown_polled || news.has_changed().unwrap_or(true);
        self.shutdown_polled |= due;
        if !self.told && due && shutdown.as_mut().poll(cx).is_ready() {
            self.told = true;
            let mut s = session.lock();
            s.outbound.clear();
            s.outbound
                .push_back(Out::Close(1001, "server shutting down".to_owned()));
        }
        loop {
            let mut progressed = false;
            // Out: the handler's messages, while the socket takes them.
            loop {
                if self.closing.is_some() {
                    break;
                }
                let next = session.lock().outbound.pop_front();
                let Some(out) = next else { break };
                match Pin::new(&mut self.socket).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return self.failed(session, &e, cx),
                    Poll::Pending => {
                        session.lock().outbound.push_front(out);
                        break;
                    }
                }
                let frame = match out {
                    Out::Data(WebSocketData::Text(t)) => {
                        *bytes += t.len() as u64;
                        WsMessage::Text(t.into())
                    }
                    Out::Data(WebSocketData::Binary(b)) => {
                        *bytes += b.len() as u64;
                        WsMessage::Binary(b)
                    }
                    Out::Close(code, reason) => {
                        self.closing = Some(Instant::now());
                        session.lock().closed.get_or_insert((code, reason.clone()));
                        WsMessage::Close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        }))
                    }
                };
                if let Err(e) = Pin::new(&mut self.socket).start_send(frame) {
                    return self.failed(session, &e, cx);
                }
                self.dirty = true;
                progressed = true;
                // Room in the queue: wake a handler waiting to send.
                session.lock().wake_task();
            }
            if self.dirty {
                match Pin::new(&mut self.socket).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.dirty = false,
                    Poll::Ready(Err(e)) => return self.failed(session, &e, cx),
                    Poll::Pending => {}
                }
            }
            // In: frames from the client, while the handler has room for them.
            let room = session.lock().inbound.len() < self.limits.queue;
            if room && self.may_read(cx) {
                let polled = Pin::new(&mut self.socket)
                    .poll_next(&mut TaskContext::from_waker(&self.read_waker));
                if polled.is_ready() {
                    self.readable.ready.store(true, Ordering::Relaxed);
                }
                match polled {
                    Poll::Pending => {}
                    Poll::Ready(None) => return self.gone_with(session, 1006, ""),
                    Poll::Ready(Some(Err(e))) => return self.failed(session, &e, cx),
                    Poll::Ready(Some(Ok(message))) => {
                        progressed = true;
                        self.last_seen = Instant::now();
                        self.ping_sent = false;
                        let data = match message {
                            WsMessage::Text(t) => Some(WebSocketData::Text(t.as_str().to_owned())),
                            WsMessage::Binary(b) => Some(WebSocketData::Binary(b)),
                            WsMessage::Close(frame) => {
                                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                                    (u16::from(f.code), f.reason.as_str().to_owned())
                                });
                                let mut s = session.lock();
                                s.closed.get_or_insert((code, reason));
                                s.wake_task();
                                // The codec answers the close; flushing sends it.
                                self.dirty = true;
                                if self.closing.is_none() {
                                    self.closing = Some(Instant::now());
                                }
                                None
                            }
                            // Pings are answered by the codec on the next flush.
                            WsMessage::Ping(_) => {
                                self.dirty = true;
                                None
                            }
                            WsMessage::Pong(_) | WsMessage::Frame(_) => None,
                        };
                        if let Some(d) = data {
                            let mut s = session.lock();
                            s.inbound.push_back(d);
                            s.wake_task();
                        }
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        // Timers: the close handshake's, or the idle ping's.
        let now = Instant::now();
        let deadline = if let Some(since) = self.closing {
            if now >= since + CLOSE_TIMEOUT {
                return self.gone_with(session, 1006, "");
            }
            Some(since + CLOSE_TIMEOUT)
        } else if let Some(interval) = self.limits.ping_interval {
            if self.ping_sent {
                let due = self.last_seen + interval + self.limits.ping_timeout;
                if now >= due {
                    tracing::debug!("websocket did not answer its ping; dropping it");
                    return self.gone_with(session, 1006, "");
                }
                Some(due)
            } else {
                let due = self.last_seen + interval;
                if now >= due {
                    self.ping_sent = true;
                    let _ = Pin::new(&mut self.socket).start_send(WsMessage::Ping(Bytes::new()));
                    self.dirty = true;
                    cx.waker().wake_by_ref();
                    Some(now + self.limits.ping_timeout)
                } else {
                    Some(due)
                }
            }
        } else {
            None
        };
        // Each message moves the ping's deadline later: the timer stays armed at the earlier
        // one (it wakes the task once, early, and is armed again then) rather than being reset
        // for every message.
        if let Some(at) = deadline {
            if !self.timer_armed || at < self.timer.deadline() || self.timer.is_elapsed() {
                self.timer_armed = true;
                if self.timer.deadline() != at {
                    self.timer.as_mut().reset(at);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
            }
        }
        Poll::Pending
    }

    /// Whether to read the socket now; when not, a wake-up of the read it left waiting sets
    /// [`Readable`] and wakes the task. The task's waker is registered before each read, so
    /// the wake-up of the read it leaves waiting finds it (the session is a task of its own,
    /// whose waker stays the same from poll to poll).
    fn may_read(&self, cx: &TaskContext<'_>) -> bool {
        if !self.readable.ready.swap(false, Ordering::Acquire) {
            return false;
        }
        self.readable.task.register(cx.waker());
        true
    }

    /// The socket failed: close it with the code the failure calls for (and go on until the
    /// client answers the close or the close timeout passes), or drop it.
    fn gone(&mut self, session: &Session, e: &tungstenite::Error) -> Poll<()> {
        use tungstenite::error::{Error as E, ProtocolError};
        let (code, reason) = match e {
            // The connection dropped without a close frame.
            E::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                return self.gone_with(session, 1006, "")
            }
            E::Capacity(_) => (1009, "message too big"),
            E::Utf8(_) => (1007, "invalid utf-8"),
            E::Protocol(_) => (1002, "protocol error"),
            E::ConnectionClosed | E::AlreadyClosed => return self.gone_with(session, 1005, ""),
            _ => {
                tracing::debug!(error = %e, "websocket connection failed");
                return self.gone_with(session, 1006, "");
            }
        };
        if self.closing.is_some() {
            // Failing again while closing: give up on the close handshake.
            return self.gone_with(session, code, reason);
        }
        tracing::debug!(error = %e, code, "closing the websocket");
        {
            let mut s = session.lock();
            s.closed.get_or_insert((code, reason.to_owned()));
            s.outbound.clear();
            s.wake_task();
        }
        let frame = WsMessage::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        }));
        if Pin::new(&mut self.socket).start_send(frame).is_err() {
            return self.gone_with(session, code, reason);
        }
        self.dirty = true;
        self.closing = Some(Instant::now());
        // Flush and wait for the client's close on the next poll.
        Poll::Pending
    }

    /// [`gone`](Pump::gone), polled again at once when it starts a close.
    fn failed(
        &mut self,
        session: &Session,
        e: &tungstenite::Error,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        let polled = self.gone(session, e);
        if polled.is_pending() {
            cx.waker().wake_by_ref();
        }
        polled
    }

    fn gone_with(&mut self, session: &Session, code: u16, reason: &str) -> Poll<()> {
        let mut s = session.lock();
        s.closed.get_or_insert((code, reason.to_owned()));
        s.wake_task();
        Poll::Ready(())
    }
}
