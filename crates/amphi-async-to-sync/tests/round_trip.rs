//! Handler-level round trips: `AsyncToSync(SyncToAsync(h))` serves the same bytes as the sync
//! handler `h`, and `SyncToAsync(AsyncToSync(h))` as the async handler `h`, for bodies of 0 B,
//! 1 B and 5 MiB, streamed both ways.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amphi_async_to_sync::AsyncToSync;
use amphi_core::{
    asgi_fn, async_fn, sync_fn, testing, AsyncBody, AsyncRequest, BlockingBody, Context, Message,
    Scope, SyncBody, SyncHandler, SyncRequest,
};
use amphi_sync_to_async::SyncToAsync;
use bytes::Bytes;

const BOUND: Duration = Duration::from_secs(30);
const SIZES: [usize; 3] = [0, 1, 5 << 20];
const CHUNK: usize = 64 << 10;

/// A body of `len` bytes that is not all the same byte, in 64 KiB chunks.
fn body(len: usize) -> Vec<Bytes> {
    let all: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    all.chunks(CHUNK).map(Bytes::copy_from_slice).collect()
}

/// The sync echo: the response body streams the request body back as it is read.
fn sync_echo() -> impl SyncHandler {
    sync_fn(|req: SyncRequest| {
        let (_, body) = req.into_parts();
        http::Response::builder()
            .header("x-echo", "sync")
            .body(SyncBody::try_chunks(body))
            .unwrap()
    })
}

/// Calls a sync handler with `chunks` as its body; returns status, x-echo, the body, and how
/// many chunks it came in.
fn call_sync(h: &dyn SyncHandler, chunks: Vec<Bytes>) -> (u16, String, Vec<u8>, usize) {
    let req = SyncRequest::new(
        http::Request::post("/echo")
            .body(BlockingBody::from_chunks(chunks.into_iter().map(Ok)))
            .unwrap(),
    );
    let resp = h.call(req);
    let status = resp.status().as_u16();
    let tag = resp.headers()["x-echo"].to_str().unwrap().to_owned();
    let mut out = Vec::new();
    let mut pieces = 0;
    resp.into_body()
        .write_to(&mut |c| {
            pieces += 1;
            out.extend_from_slice(&c);
            Ok(())
        })
        .unwrap();
    (status, tag, out, pieces)
}

#[test]
fn async_to_sync_of_sync_to_async_serves_the_same_bytes_as_the_sync_handler() {
    let direct = sync_echo();
    let sandwich = AsyncToSync::new(SyncToAsync::new(sync_echo()));
    for len in SIZES {
        let expected = body(len).concat();
        let (status, tag, bytes, _) = call_sync(&direct, body(len));
        assert_eq!((status, tag.as_str(), bytes.len()), (200, "sync", len));
        assert_eq!(bytes, expected);
        let (status, tag, bytes, pieces) = call_sync(&sandwich, body(len));
        assert_eq!((status, tag.as_str()), (200, "sync"), "len {len}");
        assert_eq!(bytes.len(), len);
        assert!(bytes == expected, "same bytes for {len} B");
        if len > CHUNK {
            assert!(
                pieces > 1,
                "streamed, not buffered whole: {pieces} piece(s)"
            );
        }
    }
}

/// The async echo: the response body is the request body stream, passed straight through.
fn async_echo() -> impl amphi_core::AsyncHandler {
    async_fn(|req: AsyncRequest| async move {
        http::Response::builder()
            .header("x-echo", "async")
            .body(AsyncBody::from_stream(req.into_body()))
            .unwrap()
    })
}

#[test]
fn sync_to_async_of_async_to_sync_serves_the_same_bytes_as_the_async_handler() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let direct = Arc::new(async_echo());
        let sandwich = Arc::new(SyncToAsync::new(AsyncToSync::new(async_echo())));
        for len in SIZES {
            let expected = body(len).concat();
            let head = || http::Request::post("/echo").body(()).unwrap();
            let a = tokio::time::timeout(BOUND, testing::call_chunked(&direct, head(), body(len)))
                .await
                .unwrap()
                .unwrap();
            let b =
                tokio::time::timeout(BOUND, testing::call_chunked(&sandwich, head(), body(len)))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
            assert_eq!(b.headers["x-echo"], "async");
            assert!(
                a.body == expected && b.body == expected,
                "same bytes for {len} B"
            );
            if len > CHUNK {
                assert!(
                    b.body_messages > 2,
                    "streamed: {} message(s)",
                    b.body_messages
                );
            }
        }
    });
}

#[test]
fn dropping_the_response_body_early_flips_the_async_handlers_token() {
    let token_seen = Arc::new(std::sync::Mutex::new(None));
    let slot = token_seen.clone();
    let endless = AsyncToSync::new(asgi_fn(move |scope, _receive, mut send| {
        let slot = slot.clone();
        async move {
            let Scope::Http(scope) = scope else {
                return Ok(());
            };
            *slot.lock().unwrap() = Some(scope.context().token().clone());
            send.send(Message::start(http::StatusCode::OK, http::HeaderMap::new()))
                .await?;
            loop {
                send.send(Message::body("tick", true)).await?;
                tokio::task::yield_now().await;
            }
        }
    }));
    let request_context = Context::new();
    let req = SyncRequest::new(http::Request::get("/").body(BlockingBody::empty()).unwrap())
        .with_context(request_context.clone());
    let resp = endless.call(req);
    let mut got = 0;
    let err = resp
        .into_body()
        .write_to(&mut |_| {
            got += 1;
            if got == 3 {
                // The client went away.
                Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let token = token_seen.lock().unwrap().clone().unwrap();
    assert!(token.is_cancelled(), "the async handler's token flipped");
    assert!(
        !request_context.token().is_cancelled(),
        "only the crossing's child token"
    );
}

#[test]
fn a_cancelled_request_reaches_the_async_handler_as_disconnect() {
    let saw_disconnect = Arc::new(AtomicBool::new(false));
    let flag = saw_disconnect.clone();
    let waiting = AsyncToSync::new(asgi_fn(move |scope, mut receive, mut send| {
        let flag = flag.clone();
        async move {
            let Scope::Http(_) = scope else { return Ok(()) };
            // Read the (empty) body, then wait for the client to go away.
            loop {
                match receive.receive().await? {
                    amphi_core::Event::Request {
                        more_body: false, ..
                    } => break,
                    amphi_core::Event::Request { .. } => {}
                    _ => return Ok(()),
                }
            }
            if receive.receive().await? == amphi_core::Event::Disconnect {
                flag.store(true, Ordering::SeqCst);
            }
            send.send(Message::start(
                http::StatusCode::NO_CONTENT,
                http::HeaderMap::new(),
            ))
            .await?;
            send.send(Message::body(Bytes::new(), false)).await
        }
    }));
    let ctx = Context::new();
    let req = SyncRequest::new(http::Request::get("/").body(BlockingBody::empty()).unwrap())
        .with_context(ctx.clone());
    let canceller = {
        let token = ctx.token().clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            token.cancel();
        })
    };
    let resp = waiting.call(req);
    canceller.join().unwrap();
    assert_eq!(resp.status(), 204);
    assert!(saw_disconnect.load(Ordering::SeqCst));
}

#[test]
fn handler_errors_before_the_start_become_status_codes() {
    let cases: [(amphi_core::ErrorKind, u16); 3] = [
        (amphi_core::ErrorKind::Saturated, 503),
        (amphi_core::ErrorKind::BodyTooLarge, 413),
        (amphi_core::ErrorKind::Other, 500),
    ];
    for (kind, status) in cases {
        let failing = AsyncToSync::new(asgi_fn(move |_, _, _| async move {
            Err(amphi_core::Error::new(kind))
        }));
        let resp = failing.call(SyncRequest::new(
            http::Request::get("/").body(BlockingBody::empty()).unwrap(),
        ));
        assert_eq!(resp.status(), status);
    }
    let panicking = AsyncToSync::new(asgi_fn(|_, _, _| async {
        panic!("async handler panicked")
    }));
    let resp = panicking.call(SyncRequest::new(
        http::Request::get("/").body(BlockingBody::empty()).unwrap(),
    ));
    assert_eq!(resp.status(), 500);
}

#[test]
fn a_per_request_thread_sensitive_handler_in_the_sandwich_runs_on_the_callers_thread() {
    let sandwich = AsyncToSync::new(
        SyncToAsync::new(sync_fn(|_req: SyncRequest| {
            http::Response::builder()
                .header("x-echo", "sync")
                .body(SyncBody::from(format!("{:?}", std::thread::current().id())))
                .unwrap()
        }))
        .thread_sensitive_per_request(),
    );
    let (_, _, body, _) = call_sync(&sandwich, Vec::new());
    assert_eq!(
        body,
        format!("{:?}", std::thread::current().id()).into_bytes()
    );
}

#[test]
fn a_response_with_trailers_arrives_whole_without_them() {
    let with_trailers = AsyncToSync::new(asgi_fn(|scope, _receive, mut send| async move {
        let Scope::Http(_) = scope else {
            return Ok(());
        };
        send.send(Message::ResponseStart {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            trailers: true,
        })
        .await?;
        send.send(Message::body("first ", true)).await?;
        send.send(Message::body("last", false)).await?;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
        send.send(Message::ResponseTrailers {
            headers: trailers,
            more_trailers: false,
        })
        .await
    }));
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The handler runs on this thread, driven by the call and the body's reads.
    tracing::subscriber::with_default(subscriber, || {
        let resp = with_trailers.call(SyncRequest::new(
            http::Request::get("/").body(BlockingBody::empty()).unwrap(),
        ));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.into_body().collect().unwrap(), "first last");
    });
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("response trailers dropped") && log.contains("trailers=1"),
        "no debug line for the dropped trailers: {log:?}"
    );
}

/// A log writer that keeps what it is given.
#[derive(Clone, Default)]
struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
