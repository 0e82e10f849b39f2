//! Handlers from closures, both ways, with streamed bodies: `sync_fn` with a streamed request
//! and response; `async_fn` driving the event protocol (request body in many events, read
//! incrementally; streamed and full responses; extensions; disconnects; lifespan; websocket);
//! `asgi_fn` for the raw protocol.

use std::io::{self, BufRead, Read, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use amphi_core::testing::{call, call_chunked, Communicator};
use amphi_core::{
    asgi_fn, async_fn, sync_fn, AsyncBody, AsyncHandler, AsyncRequest, BlockingBody, Context,
    Error, ErrorKind, Event, HttpScope, LifespanScope, Message, RequestInfo, Scope, State,
    SyncBody, SyncHandler, SyncRequest, WebSocketData,
};
use bytes::Bytes;
use futures_executor::block_on;
use futures_util::stream;
use http::{HeaderMap, StatusCode};

/// A generous bound for things that should happen at once; only a hang reaches it.
const HANG: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq)]
struct UserId(u64);

#[derive(Clone, Debug, PartialEq)]
struct DbUrl(&'static str);

fn head(method: &str, uri: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .unwrap()
}

fn request_event(body: &'static str, more_body: bool) -> Event {
    Event::Request {
        body: Bytes::from(body),
        more_body,
    }
}

/// Runs `f` on its own thread and fails the test instead of hanging if it does not finish.
fn within_bound<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG)
        .expect("the handler neither finished nor panicked in time")
}

// ---- sync_fn ----

#[test]
fn sync_fn_streams_the_request_body_back_as_it_arrives() {
    // Full duplex through blocking code: the request body comes from a "connection" thread one
    // chunk at a time, and each echoed chunk must reach the response sink before the next
    // request chunk is even sent.
    let echo = sync_fn(|req: SyncRequest| {
        let (_scope, body) = req.into_parts();
        http::Response::new(SyncBody::try_chunks(body))
    });
    let (chunk_tx, chunk_rx) = mpsc::channel::<Result<Bytes, Error>>();
    let (echo_tx, echo_rx) = mpsc::channel::<Bytes>();
    let client = thread::spawn(move || {
        for i in 0..5 {
            let chunk = Bytes::from(format!("part {i};"));
            chunk_tx.send(Ok(chunk.clone())).unwrap();
            assert_eq!(echo_rx.recv_timeout(HANG).unwrap(), chunk);
        }
    });
    let req = SyncRequest::new(
        http::Request::post("/echo")
            .body(BlockingBody::from_chunks(chunk_rx))
            .unwrap(),
    );
    let resp = echo.call(req);
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body()
        .write_to(&mut |c| {
            echo_tx.send(c).unwrap();
            Ok(())
        })
        .unwrap();
    client.join().unwrap();
}

#[test]
fn sync_fn_reads_lines_and_writes_a_streamed_response() {
    let numbered = sync_fn(|req: SyncRequest| {
        let (_, body) = req.into_parts();
        http::Response::new(SyncBody::writer(move |w| {
            for (i, line) in body.lines().enumerate() {
                let line = line?;
                w.write_all(format!("{}: {line}\n", i + 1).as_bytes())?;
            }
            Ok(())
        }))
    });
    let chunks = ["fir", "st\nsec", "ond\n", "", "third"];
    let req = SyncRequest::new(
        http::Request::post("/")
            .body(BlockingBody::from_chunks(
                chunks.map(|c| Ok(Bytes::from(c))),
            ))
            .unwrap(),
    );
    let mut written = Vec::new();
    numbered
        .call(req)
        .into_body()
        .write_to(&mut |c| {
            written.push(c);
            Ok(())
        })
        .unwrap();
    assert_eq!(written, ["1: first\n", "2: second\n", "3: third\n"]);
}

#[test]
fn sync_fn_sees_a_disconnect_mid_body_as_disconnected() {
    let seen = Arc::new(Mutex::new(None));
    let seen_in = seen.clone();
    let handler = sync_fn(move |mut req: SyncRequest| {
        let mut text = String::new();
        match req.body_mut().read_to_string(&mut text) {
            Ok(_) => http::Response::new(SyncBody::from(text)),
            Err(e) => {
                *seen_in.lock().unwrap() =
                    Some((e.kind(), Error::from_io(&e).map(Error::kind), text.len()));
                http::Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(SyncBody::empty())
                    .unwrap()
            }
        }
    });
    let body = BlockingBody::from_chunks(vec![
        Ok(Bytes::from("abc")),
        Err(Error::new(ErrorKind::Disconnected)),
    ]);
    let resp = handler.call(SyncRequest::new(
        http::Request::post("/").body(body).unwrap(),
    ));
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        *seen.lock().unwrap(),
        Some((
            io::ErrorKind::ConnectionAborted,
            Some(ErrorKind::Disconnected),
            3
        ))
    );
}

#[test]
fn sync_fn_sees_the_environ_context_and_state() {
    let handler = sync_fn(|req: SyncRequest| {
        let ctx = req.context().get::<UserId>();
        let state = req.state().get::<DbUrl>();
        let text = format!(
            "{} {} root={} path={} query={} scheme={} client={:?} server={:?} user={:?} db={:?} cancelled={}",
            req.method(),
            req.uri(),
            req.root_path(),
            req.path(),
            req.query_string(),
            req.scheme(),
            req.client(),
            req.server(),
            ctx,
            state,
            req.cancellation().is_cancelled(),
        );
        http::Response::new(SyncBody::from(text))
    });
    let context = Context::new();
    context.insert(UserId(7));
    let state = State::new();
    state.insert(DbUrl("sqlite::memory:"));
    let (parts, body) = http::Request::get("/sync/items?page=2")
        .body(BlockingBody::empty())
        .unwrap()
        .into_parts();
    let info = RequestInfo::new()
        .with_root_path("/sync")
        .with_scheme(http::uri::Scheme::HTTPS)
        .with_client(Some("127.0.0.1:5000".parse().unwrap()))
        .with_server(Some("127.0.0.1:8000".parse().unwrap()));
    let scope = HttpScope::new(parts, info)
        .with_context(context.clone())
        .with_state(state);
    let req = SyncRequest::from_scope(scope, body);
    // Handlers behind Arc and Box<dyn> serve the same way.
    let boxed: Box<dyn SyncHandler> = Box::new(Arc::new(handler));
    let text = boxed.call(req).into_body().collect().unwrap();
    assert_eq!(
        text,
        "GET /sync/items?page=2 root=/sync path=/items query=page=2 scheme=https \
         client=Some(127.0.0.1:5000) server=Some(127.0.0.1:8000) user=Some(UserId(7)) \
         db=Some(DbUrl(\"sqlite::memory:\")) cancelled=false"
    );
}

#[test]
fn sync_request_with_info_and_with_context_keep_the_rest() {
    let ctx = Context::new();
    ctx.insert(UserId(1));
    let req = SyncRequest::new(
        http::Request::post("/api/x")
            .body(BlockingBody::from("body"))
            .unwrap(),
    )
    .with_context(ctx.clone())
    .with_info(RequestInfo::new().with_root_path("/api"));
    assert_eq!(req.path(), "/x");
    assert!(
        req.context().shares_values_with(&ctx),
        "with_info keeps the context"
    );
    assert!(req.cancellation().same_as(ctx.token()));
    ctx.token().cancel();
    assert!(req.cancellation().is_cancelled());
    let (scope, mut body) = req.into_parts();
    assert_eq!(scope.root_path(), "/api");
    assert_eq!(body.to_bytes().unwrap(), "body");
}

// ---- async_fn: the request body ----

fn echo() -> Arc<impl AsyncHandler> {
    Arc::new(async_fn(|req: AsyncRequest| async move {
        match req.into_body().to_bytes().await {
            Ok(body) => http::Response::new(AsyncBody::from(body)),
            Err(e) => http::Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(AsyncBody::from(e.to_string()))
                .unwrap(),
        }
    }))
}

#[test]
fn async_fn_joins_a_body_sent_in_many_events() {
    block_on(async {
        let chunks: Vec<Bytes> = ["a", "", "bc", "d", "", "efg"]
            .into_iter()
            .map(Bytes::from)
            .collect();
        let resp = call_chunked(&echo(), head("POST", "/"), chunks)
            .await
            .unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.body, "abcdefg");
        assert_eq!(resp.body_messages, 1, "a full response is one body message");
        assert_eq!(resp.trailers, None);

        let resp = call_chunked(&echo(), head("POST", "/"), Vec::new())
            .await
            .unwrap();
        assert_eq!(resp.body, "");
        let resp = call(
            &echo(),
            http::Request::post("/").body(Bytes::from("one")).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(resp.body, "one");
    });
}

#[test]
fn async_fn_reads_the_request_body_incrementally() {
    let log: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let seen = log.clone();
    let handler = Arc::new(async_fn(move |req: AsyncRequest| {
        let seen = seen.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0;
            while let Some(chunk) = body.chunk().await.unwrap() {
                total += chunk.len();
                seen.lock().unwrap().push(chunk);
            }
            http::Response::new(AsyncBody::from(format!("{total} bytes")))
        }
    }));
    block_on(async {
        let mut comm = Communicator::http(handler, head("POST", "/upload"));
        for (i, part) in ["one", "two", "three"].into_iter().enumerate() {
            comm.send_input(request_event(part, true));
            assert_eq!(comm.try_receive_output(), None, "still reading");
            assert_eq!(
                log.lock().unwrap().len(),
                i + 1,
                "chunk {i} was read before the next one was sent"
            );
        }
        comm.send_input(request_event("", false));
        assert!(matches!(
            comm.receive_output().await,
            Some(Message::ResponseStart { .. })
        ));
        assert_eq!(
            comm.receive_output().await,
            Some(Message::body("11 bytes", false))
        );
        comm.wait().await.unwrap();
    });
    assert_eq!(*log.lock().unwrap(), ["one", "two", "three"]);
}

#[test]
fn async_fn_echoes_a_request_body_stream_chunk_by_chunk() {
    // The request body itself as the response body: each chunk goes out before the next
    // comes in, then an empty last message ends the response.
    let handler = Arc::new(async_fn(|req: AsyncRequest| async move {
        http::Response::new(req.into_body())
    }));
    block_on(async {
        let mut comm = Communicator::http(handler, head("POST", "/echo"));
        comm.send_input(request_event("ping", true));
        let Some(Message::ResponseStart { status, .. }) = comm.receive_output().await else {
            panic!("start first")
        };
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            comm.receive_output().await,
            Some(Message::body("ping", true))
        );
        assert_eq!(comm.try_receive_output(), None, "waiting for more body");
        comm.send_input(request_event("pong", true));
        assert_eq!(
            comm.receive_output().await,
            Some(Message::body("pong", true))
        );
        comm.send_input(request_event("", false));
        assert_eq!(comm.receive_output().await, Some(Message::body("", false)));
        assert_eq!(comm.receive_output().await, None);
        comm.wait().await.unwrap();
    });
}

#[test]
fn async_fn_sees_a_disconnect_mid_body_as_disconnected() {
    let seen = Arc::new(Mutex::new(None));
    let seen_in = seen.clone();
    let handler = Arc::new(async_fn(move |req: AsyncRequest| {
        let seen_in = seen_in.clone();
        async move {
            let mut body = req.into_body();
            let mut got = Vec::new();
            let err = loop {
                match body.chunk().await {
                    Ok(Some(c)) => got.extend_from_slice(&c),
                    Ok(None) => panic!("the body cannot end normally"),
                    Err(e) => break e,
                }
            };
            *seen_in.lock().unwrap() = Some((err.kind(), got));
            // Once the body failed, it stays finished.
            assert_eq!(body.chunk().await.unwrap(), None);
            http::Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(AsyncBody::empty())
                .unwrap()
        }
    }));
    block_on(async {
        // The client leaves: input ends in http.disconnect, and sends fail.
        let mut comm = Communicator::http(handler.clone(), head("POST", "/"));
        comm.send_input(request_event("abc", true));
        comm.disconnect();
        assert_eq!(comm.receive_output().await, None, "nothing can be sent");
        let err = comm.wait().await.unwrap_err();
        assert!(err.is_disconnected(), "{err}");
        assert_eq!(
            *seen.lock().unwrap(),
            Some((ErrorKind::Disconnected, b"abc".to_vec()))
        );

        // Only the input ends: the handler's answer still goes out.
        *seen.lock().unwrap() = None;
        let mut comm = Communicator::http(handler, head("POST", "/"));
        comm.send_input(request_event("ab", true));
        comm.close_input();
        let Some(Message::ResponseStart { status, .. }) = comm.receive_output().await else {
            panic!("start first")
        };
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(comm.receive_output().await, Some(Message::body("", false)));
        comm.wait().await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            Some((ErrorKind::Disconnected, b"ab".to_vec()))
        );
    });
}

#[test]
fn a_wrong_event_in_the_request_body_is_a_protocol_error() {
    let handler = echo();
    block_on(async {
        let mut comm = Communicator::http(handler, head("POST", "/"));
        comm.send_input(request_event("a", true));
        comm.send_input(Event::WebSocketConnect);
        let Some(Message::ResponseStart { status, .. }) = comm.receive_output().await else {
            panic!("start first")
        };
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let Some(Message::ResponseBody { body, .. }) = comm.receive_output().await else {
            panic!("then the body")
        };
        assert!(
            body.starts_with(b"protocol misuse: websocket.connect"),
            "{body:?}"
        );
    });
}

// ---- async_fn: the response body ----

#[test]
fn async_fn_streams_a_response_as_several_body_messages() {
    let handler = Arc::new(async_fn(|_req: AsyncRequest| async move {
        let parts = (0..4).map(|i| Ok(Bytes::from(format!("part {i};"))));
        let mut resp = http::Response::new(AsyncBody::from_stream(stream::iter(parts)));
        resp.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        *resp.status_mut() = StatusCode::CREATED;
        resp
    }));
    block_on(async {
        let mut comm = Communicator::http(handler.clone(), head("GET", "/stream"));
        comm.send_input(request_event("", false));
        let Some(Message::ResponseStart {
            status,
            headers,
            trailers,
        }) = comm.receive_output().await
        else {
            panic!("start first")
        };
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers["content-type"], "text/plain");
        assert!(!trailers);
        for i in 0..4 {
            assert_eq!(
                comm.receive_output().await,
                Some(Message::body(format!("part {i};"), true))
            );
        }
        assert_eq!(comm.receive_output().await, Some(Message::body("", false)));
        assert_eq!(comm.receive_output().await, None);
        comm.wait().await.unwrap();

        let resp = call(
            &handler,
            http::Request::get("/").body(Bytes::new()).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(resp.body, "part 0;part 1;part 2;part 3;");
        assert_eq!(resp.body_messages, 5);
    });
}

#[test]
fn a_streamed_response_is_pulled_only_as_fast_as_the_client_takes_it() {
    let pulled = Arc::new(Mutex::new(0usize));
    let counter = pulled.clone();
    let handler = Arc::new(async_fn(move |_req: AsyncRequest| {
        let counter = counter.clone();
        async move {
            let parts = (0..50).map(move |i| {
                *counter.lock().unwrap() += 1;
                Ok(Bytes::from(format!("{i}")))
            });
            http::Response::new(AsyncBody::from_stream(stream::iter(parts)))
        }
    }));
    block_on(async {
        let mut comm = Communicator::http(handler, head("GET", "/")).output_capacity(1);
        let mut received = 0;
        while let Some(m) = comm.receive_output().await {
            received += 1;
            let pulled = *pulled.lock().unwrap();
            assert!(
                pulled <= received + 1,
                "{pulled} chunks produced for {received} messages taken"
            );
            if let Message::ResponseBody {
                more_body: false, ..
            } = m
            {
                break;
            }
        }
        assert_eq!(received, 52, "start, 50 chunks, the end");
        comm.wait().await.unwrap();
    });
}

#[test]
fn a_failing_response_stream_cuts_the_response() {
    let handler = Arc::new(async_fn(|_req: AsyncRequest| async move {
        let parts = vec![
            Ok(Bytes::from("ok so far")),
            Err(Error::handler(io::Error::other("upstream timed out"))),
            Ok(Bytes::from("never sent")),
        ];
        http::Response::new(AsyncBody::from_stream(stream::iter(parts)))
    }));
    block_on(async {
        let mut comm = Communicator::http(handler, head("GET", "/"));
        comm.send_input(request_event("", false));
        assert!(matches!(
            comm.receive_output().await,
            Some(Message::ResponseStart { .. })
        ));
        assert_eq!(
            comm.receive_output().await,
            Some(Message::body("ok so far", true))
        );
        assert_eq!(comm.receive_output().await, None, "no end is sent");
        let err = comm.wait().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Handler);
        assert_eq!(
            std::error::Error::source(&err).unwrap().to_string(),
            "upstream timed out",
            "the handler's error reaches the server with its source"
        );
    });
}

#[test]
fn full_and_empty_responses_are_one_body_message() {
    let handler = Arc::new(async_fn(|req: AsyncRequest| async move {
        match req.uri().path() {
            "/empty" => http::Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(AsyncBody::empty())
                .unwrap(),
            "/string" => http::Response::new(AsyncBody::from(String::from("a string"))),
            "/vec" => http::Response::new(AsyncBody::from(vec![b'v'; 3])),
            _ => http::Response::new(AsyncBody::full("full")),
        }
    }));
    block_on(async {
        for (path, status, body) in [
            ("/empty", StatusCode::NO_CONTENT, ""),
            ("/string", StatusCode::OK, "a string"),
            ("/vec", StatusCode::OK, "vvv"),
            ("/full", StatusCode::OK, "full"),
        ] {
            let mut comm = Communicator::http(handler.clone(), head("GET", path));
            comm.send_input(request_event("", false));
            let Some(Message::ResponseStart { status: s, .. }) = comm.receive_output().await else {
                panic!("start first")
            };
            assert_eq!(s, status, "{path}");
            assert_eq!(
                comm.receive_output().await,
                Some(Message::body(body, false)),
                "{path}"
            );
            assert_eq!(comm.receive_output().await, None, "{path}");
        }
    });
}

#[test]
fn async_fn_puts_info_context_and_state_in_the_extensions() {
    let handler = Arc::new(async_fn(|req: AsyncRequest| async move {
        let info = req.extensions().get::<RequestInfo>().unwrap();
        let ctx = req.extensions().get::<Context>().unwrap();
        let state = req.extensions().get::<State>().unwrap();
        ctx.insert(DbUrl("set by the handler"));
        let text = format!(
            "{} {} root={} below={} user={:?} db={:?} client={:?}",
            req.method(),
            req.uri(),
            info.root_path(),
            info.path_below(req.uri().path()),
            ctx.get::<UserId>(),
            state.get::<DbUrl>(),
            info.client(),
        );
        http::Response::new(AsyncBody::from(text))
    }));
    let context = Context::new();
    context.insert(UserId(42));
    let state = State::new();
    state.insert(DbUrl("postgres://db"));
    let (parts, ()) = head("PUT", "/async/thing?x=1").into_parts();
    let info = RequestInfo::new()
        .with_root_path("/async")
        .with_client(Some("10.0.0.1:4000".parse().unwrap()));
    let scope = HttpScope::new(parts, info)
        .with_context(context.clone())
        .with_state(state);
    block_on(async {
        let mut comm = Communicator::new(handler, Scope::Http(scope));
        comm.send_input(request_event("", false));
        assert!(matches!(
            comm.receive_output().await,
            Some(Message::ResponseStart { .. })
        ));
        assert_eq!(
            comm.receive_output().await,
            Some(Message::body(
                "PUT /async/thing?x=1 root=/async below=/thing user=Some(UserId(42)) \
                 db=Some(DbUrl(\"postgres://db\")) client=Some(10.0.0.1:4000)",
                false
            ))
        );
    });
    assert_eq!(
        context.get::<DbUrl>(),
        Some(DbUrl("set by the handler")),
        "the handler's context is the caller's"
    );
}

// ---- async_fn: the other scopes ----

#[test]
fn async_fn_acknowledges_lifespan() {
    let handler = Arc::new(async_fn(|_req: AsyncRequest| async move {
        http::Response::new(AsyncBody::empty())
    }));
    block_on(async {
        let scope = Scope::Lifespan(LifespanScope::new(State::new()));
        let mut comm = Communicator::new(handler, scope);
        assert_eq!(comm.try_receive_output(), None, "waits for startup");
        comm.send_input(Event::Startup);
        assert_eq!(comm.receive_output().await, Some(Message::StartupComplete));
        assert_eq!(comm.try_receive_output(), None, "waits for shutdown");
        comm.send_input(Event::Shutdown);
        assert_eq!(comm.receive_output().await, Some(Message::ShutdownComplete));
        assert_eq!(comm.receive_output().await, None);
        comm.wait().await.unwrap();
    });
}

#[test]
fn async_fn_lifespan_ends_when_the_server_goes_away() {
    // A lifespan source that has ended keeps yielding http.disconnect; the sugar must return,
    // not spin on it.
    let handler = Arc::new(async_fn(|_req: AsyncRequest| async move {
        http::Response::new(AsyncBody::empty())
    }));
    let result = within_bound(move || {
        block_on(async {
            let scope = Scope::Lifespan(LifespanScope::new(State::new()));
            let mut comm = Communicator::new(handler, scope);
            comm.send_input(Event::Startup);
            comm.close_input();
            let first = comm.receive_output().await;
            let second = comm.receive_output().await;
            (first, second, comm.wait().await.is_ok())
        })
    });
    assert_eq!(result, (Some(Message::StartupComplete), None, true));
}

#[test]
fn async_fn_denies_websockets() {
    let called = Arc::new(Mutex::new(false));
    let flag = called.clone();
    let handler = Arc::new(async_fn(move |_req: AsyncRequest| {
        *flag.lock().unwrap() = true;
        async move { http::Response::new(AsyncBody::empty()) }
    }));
    let (parts, ()) = head("GET", "/ws").into_parts();
    let scope = Scope::WebSocket(HttpScope::new(parts, RequestInfo::new()));
    block_on(async {
        let mut comm = Communicator::new(handler, scope);
        comm.send_input(Event::WebSocketConnect);
        let Some(Message::WebSocketClose { code, .. }) = comm.receive_output().await else {
            panic!("a close before accept denies the handshake")
        };
        assert_eq!(code, 1000);
        assert_eq!(comm.receive_output().await, None);
        comm.wait().await.unwrap();
    });
    assert!(!*called.lock().unwrap(), "the closure is for http only");
}

// ---- asgi_fn ----

#[test]
fn asgi_fn_serves_the_raw_protocol() {
    // Upper-cases the request body as it streams in, with trailers announcing the length.
    let handler: Arc<dyn AsyncHandler> =
        Arc::new(asgi_fn(|scope, mut receive, mut send| async move {
            let Scope::Http(scope) = scope else {
                return Ok(());
            };
            assert_eq!(scope.path(), "/upper");
            send.send(Message::ResponseStart {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                trailers: true,
            })
            .await?;
            let mut total = 0;
            loop {
                match receive.receive().await? {
                    Event::Request { body, more_body } => {
                        total += body.len();
                        send.send(Message::body(body.to_ascii_uppercase(), true))
                            .await?;
                        if !more_body {
                            break;
                        }
                    }
                    Event::Disconnect => return Err(Error::new(ErrorKind::Disconnected)),
                    other => {
                        return Err(Error::protocol(format!("unexpected {}", other.type_name())))
                    }
                }
            }
            send.send(Message::body("", false)).await?;
            let mut trailers = HeaderMap::new();
            trailers.insert("x-length", total.to_string().parse().unwrap());
            send.send(Message::ResponseTrailers {
                headers: trailers,
                more_trailers: false,
            })
            .await
        }));
    block_on(async {
        let resp = call_chunked(
            &handler,
            head("POST", "/upper"),
            vec![Bytes::from("abc"), Bytes::from("def")],
        )
        .await
        .unwrap();
        assert_eq!(resp.body, "ABCDEF");
        assert_eq!(resp.body_messages, 3);
        assert_eq!(resp.trailers.unwrap()["x-length"], "6");

        let mut comm = Communicator::http(handler.clone(), head("POST", "/upper"));
        comm.send_input(request_event("x", true));
        assert!(matches!(
            comm.receive_output().await,
            Some(Message::ResponseStart { trailers: true, .. })
        ));
        assert_eq!(comm.receive_output().await, Some(Message::body("X", true)));
        comm.disconnect();
        assert!(comm.wait().await.unwrap_err().is_disconnected());
    });
}

#[test]
fn asgi_fn_sees_websocket_events() {
    let handler = Arc::new(asgi_fn(|_scope, mut receive, mut send| async move {
        assert_eq!(receive.receive().await?, Event::WebSocketConnect);
        send.send(Message::WebSocketAccept {
            subprotocol: Some("echo".into()),
            headers: HeaderMap::new(),
        })
        .await?;
        while let Event::WebSocketReceive(data) = receive.receive().await? {
            send.send(Message::WebSocketSend(data)).await?;
        }
        Ok(())
    }));
    let (parts, ()) = http::Request::get("/ws")
        .header("sec-websocket-protocol", "echo, chat")
        .body(())
        .unwrap()
        .into_parts();
    let scope = HttpScope::new(parts, RequestInfo::new());
    assert_eq!(scope.subprotocols(), ["echo", "chat"]);
    block_on(async {
        let mut comm = Communicator::new(handler, Scope::WebSocket(scope));
        comm.send_input(Event::WebSocketConnect);
        assert!(matches!(
            comm.receive_output().await,
            Some(Message::WebSocketAccept { .. })
        ));
        let binary = WebSocketData::Binary(Bytes::from_static(&[1, 2, 3]));
        comm.send_input(Event::WebSocketReceive(binary.clone()));
        assert_eq!(
            comm.receive_output().await,
            Some(Message::WebSocketSend(binary))
        );
        comm.send_input(Event::WebSocketDisconnect {
            code: 1001,
            reason: "going away".into(),
        });
        comm.wait().await.unwrap();
    });
}

// ---- AsyncBody on its own ----

#[test]
fn async_body_reading() {
    block_on(async {
        let mut body = AsyncBody::from_stream(stream::iter(vec![
            Ok(Bytes::from("a")),
            Ok(Bytes::new()),
            Ok(Bytes::from("b")),
        ]));
        assert_eq!(body.exact_len(), None);
        assert_eq!(body.chunk().await.unwrap().unwrap(), "a");
        assert_eq!(body.to_bytes().await.unwrap(), "b");

        let mut full = AsyncBody::full("xyz");
        assert_eq!(full.exact_len(), Some(3));
        assert_eq!(full.chunk().await.unwrap().unwrap(), "xyz");
        assert_eq!(full.chunk().await.unwrap(), None);
        assert_eq!(full.exact_len(), Some(0), "read out");

        let mut empty = AsyncBody::default();
        assert_eq!(empty.exact_len(), Some(0));
        assert_eq!(empty.chunk().await.unwrap(), None);
        assert_eq!(AsyncBody::full("").to_bytes().await.unwrap(), "");
        assert_eq!(
            AsyncBody::from(Bytes::from("b")).to_bytes().await.unwrap(),
            "b"
        );

        let mut failing = AsyncBody::from_stream(stream::iter(vec![
            Ok(Bytes::from("a")),
            Err(Error::new(ErrorKind::BodyTooLarge)),
            Ok(Bytes::from("after")),
        ]));
        assert_eq!(failing.chunk().await.unwrap().unwrap(), "a");
        assert!(failing.chunk().await.unwrap_err().is_body_too_large());
        assert_eq!(
            failing.chunk().await.unwrap(),
            None,
            "the stream is done after an error"
        );
        assert!(format!("{failing:?}").contains("done"));
    });
}
