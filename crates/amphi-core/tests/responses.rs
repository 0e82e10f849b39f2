//! Sugar handlers of both kinds returning every kind of `IntoResponse` value, and `Err`:
//! async ones through `amphi_core::testing`, sync ones through `SyncHandler::call`; and
//! `RequestExt` on what `async_fn` hands its closure.

use std::io::Read;
use std::sync::Arc;

use amphi_core::plumbing::take_handler_error;
use amphi_core::testing::{call, TestResponse};
use amphi_core::{
    async_fn, sync_fn, AsyncBody, AsyncHandler, AsyncRequest, AsyncResponse, Context, Error,
    ErrorKind, HttpScope, IntoResponse, RequestExt, RequestInfo, Scope, State, SyncBody,
    SyncHandler, SyncRequest, SyncResponse,
};
use bytes::Bytes;
use futures_executor::block_on;
use http::StatusCode;

const TEXT: &str = "text/plain; charset=utf-8";
const OCTETS: &str = "application/octet-stream";

/// What a response should look like: status, content-type, body.
type Expected = (StatusCode, Option<&'static str>, &'static [u8]);

fn content_type(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap())
}

// ---- sync_fn ----

fn sync_call<H: SyncHandler>(
    handler: &H,
    req: http::Request<amphi_core::BlockingBody>,
) -> SyncResponse {
    handler.call(SyncRequest::new(req))
}

fn get() -> http::Request<amphi_core::BlockingBody> {
    http::Request::get("/").body(Default::default()).unwrap()
}

fn assert_sync(mut response: SyncResponse, (status, ctype, body): Expected, what: &str) {
    assert!(
        take_handler_error(&mut response).is_none(),
        "{what}: no failure"
    );
    assert_eq!(response.status(), status, "{what}");
    assert_eq!(content_type(response.headers()), ctype, "{what}");
    assert_eq!(response.into_body().collect().unwrap(), body, "{what}");
}

#[test]
fn sync_fn_closures_return_each_kind_of_value() {
    assert_sync(
        sync_call(&sync_fn(|_| StatusCode::NO_CONTENT), get()),
        (StatusCode::NO_CONTENT, None, b""),
        "a status",
    );
    assert_sync(
        sync_call(&sync_fn(|_| "static text"), get()),
        (StatusCode::OK, Some(TEXT), b"static text"),
        "a &'static str",
    );
    assert_sync(
        sync_call(
            &sync_fn(|req: SyncRequest| format!("at {}", req.path())),
            get(),
        ),
        (StatusCode::OK, Some(TEXT), b"at /"),
        "a String",
    );
    assert_sync(
        sync_call(&sync_fn(|_| Bytes::from_static(b"\xff\x00")), get()),
        (StatusCode::OK, Some(OCTETS), b"\xff\x00"),
        "Bytes",
    );
    assert_sync(
        sync_call(&sync_fn(|_| vec![1u8, 2, 3]), get()),
        (StatusCode::OK, Some(OCTETS), b"\x01\x02\x03"),
        "a Vec<u8>",
    );
    assert_sync(
        sync_call(&sync_fn(|_| ()), get()),
        (StatusCode::OK, None, b""),
        "()",
    );
    assert_sync(
        sync_call(&sync_fn(|_| (StatusCode::CREATED, "made")), get()),
        (StatusCode::CREATED, Some(TEXT), b"made"),
        "(StatusCode, body)",
    );
    assert_sync(
        sync_call(&sync_fn(|_| SyncBody::chunks(["a", "b"])), get()),
        (StatusCode::OK, None, b"ab"),
        "a SyncBody",
    );
    assert_sync(
        sync_call(
            &sync_fn(|_| {
                let mut r = http::Response::new(SyncBody::from("as built"));
                *r.status_mut() = StatusCode::ACCEPTED;
                r
            }),
            get(),
        ),
        (StatusCode::ACCEPTED, None, b"as built"),
        "an http::Response",
    );
    let not_found = sync_fn(|req: SyncRequest| match req.path() {
        "/here" => Ok("found"),
        _ => Err((StatusCode::NOT_FOUND, "not found")),
    });
    assert_sync(
        sync_call(&not_found, get()),
        (StatusCode::NOT_FOUND, Some(TEXT), b"not found"),
        "Err of a (StatusCode, body)",
    );
    assert_sync(
        sync_call(
            &not_found,
            http::Request::get("/here")
                .body(Default::default())
                .unwrap(),
        ),
        (StatusCode::OK, Some(TEXT), b"found"),
        "Ok of a str",
    );
}

#[cfg(feature = "json")]
#[test]
fn sync_fn_closures_return_json() {
    let info =
        sync_fn(|req: SyncRequest| amphi_core::Json(serde_json::json!({ "path": req.path() })));
    assert_sync(
        sync_call(&info, get()),
        (StatusCode::OK, Some("application/json"), br#"{"path":"/"}"#),
        "Json",
    );
}

#[test]
fn a_sync_fn_err_is_carried_as_the_handler_failure() {
    let fails = sync_fn(|_| -> Result<&'static str, Error> {
        Err(Error::handler(std::io::Error::other("db down")).with_message("loading the user"))
    });
    let mut response = sync_call(&fails, get());
    let err = take_handler_error(&mut response).expect("the handler's error");
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(err.message(), Some("loading the user"));
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "db down"
    );
    // Seen by something that does not look for it: a plain 500, empty.
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.into_body().collect().unwrap(), "");
}

#[test]
fn a_sync_body_read_over_the_limit_fails_with_question_mark_as_body_too_large() {
    let upper = sync_fn(|mut req: SyncRequest| -> Result<String, Error> {
        let mut text = String::new();
        req.body_mut().read_to_string(&mut text)?;
        Ok(text.to_uppercase())
    });
    let body = amphi_core::BlockingBody::from_bytes("far too long").with_limit(4);
    let mut response = sync_call(&upper, http::Request::post("/").body(body).unwrap());
    let err = take_handler_error(&mut response).expect("the read's error");
    assert!(err.is_body_too_large(), "{err}");

    let body = amphi_core::BlockingBody::from_bytes("fits");
    let response = sync_call(&upper, http::Request::post("/").body(body).unwrap());
    assert_sync(
        response,
        (StatusCode::OK, Some(TEXT), b"FITS"),
        "a read that fits",
    );
}

#[test]
fn a_sync_fn_io_error_is_a_failure_too() {
    let fails = sync_fn(|_| -> std::io::Result<&'static str> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "nope",
        ))
    });
    let mut response = sync_call(&fails, get());
    let err = take_handler_error(&mut response).expect("the io error");
    assert_eq!(err.kind(), ErrorKind::Other);
}

// ---- async_fn ----

fn async_get<H: AsyncHandler>(handler: H) -> Result<TestResponse, Error> {
    block_on(call(
        &Arc::new(handler),
        http::Request::get("/").body(Bytes::new()).unwrap(),
    ))
}

fn assert_async(result: Result<TestResponse, Error>, (status, ctype, body): Expected, what: &str) {
    let response = result.unwrap_or_else(|e| panic!("{what}: the handler failed: {e}"));
    assert_eq!(response.status, status, "{what}");
    assert_eq!(content_type(&response.headers), ctype, "{what}");
    assert_eq!(response.body, body, "{what}");
}

#[test]
fn async_fn_closures_return_each_kind_of_value() {
    assert_async(
        async_get(async_fn(|_| async { StatusCode::NO_CONTENT })),
        (StatusCode::NO_CONTENT, None, b""),
        "a status",
    );
    assert_async(
        async_get(async_fn(|_| async { "static text" })),
        (StatusCode::OK, Some(TEXT), b"static text"),
        "a &'static str",
    );
    assert_async(
        async_get(async_fn(|req: AsyncRequest| async move {
            format!("at {}", req.uri().path())
        })),
        (StatusCode::OK, Some(TEXT), b"at /"),
        "a String",
    );
    assert_async(
        async_get(async_fn(|_| async { Bytes::from_static(b"\xff\x00") })),
        (StatusCode::OK, Some(OCTETS), b"\xff\x00"),
        "Bytes",
    );
    assert_async(
        async_get(async_fn(|_| async { vec![1u8, 2, 3] })),
        (StatusCode::OK, Some(OCTETS), b"\x01\x02\x03"),
        "a Vec<u8>",
    );
    assert_async(
        async_get(async_fn(|_| async {})),
        (StatusCode::OK, None, b""),
        "()",
    );
    assert_async(
        async_get(async_fn(|_| async { (StatusCode::CREATED, "made") })),
        (StatusCode::CREATED, Some(TEXT), b"made"),
        "(StatusCode, body)",
    );
    assert_async(
        async_get(async_fn(|_| async {
            let parts = vec![Ok(Bytes::from("a")), Ok(Bytes::from("b"))];
            AsyncBody::from_stream(futures_util::stream::iter(parts))
        })),
        (StatusCode::OK, None, b"ab"),
        "an AsyncBody",
    );
    assert_async(
        async_get(async_fn(|_| async {
            let mut r: AsyncResponse = http::Response::new(AsyncBody::from("as built"));
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        })),
        (StatusCode::ACCEPTED, None, b"as built"),
        "an http::Response",
    );
    assert_async(
        async_get(async_fn(|_| async {
            Err::<&str, _>((StatusCode::NOT_FOUND, "not found"))
        })),
        (StatusCode::NOT_FOUND, Some(TEXT), b"not found"),
        "Err of a (StatusCode, body)",
    );
}

#[cfg(feature = "json")]
#[test]
fn async_fn_closures_return_json() {
    assert_async(
        async_get(async_fn(|req: AsyncRequest| async move {
            amphi_core::Json(serde_json::json!({ "path": req.uri().path() }))
        })),
        (StatusCode::OK, Some("application/json"), br#"{"path":"/"}"#),
        "Json",
    );
}

#[test]
fn an_async_fn_err_is_the_handlers_error_and_nothing_is_sent() {
    let fails = Arc::new(async_fn(|_| async {
        Err::<&str, _>(Error::new(ErrorKind::Saturated).with_message("no connection free"))
    }));
    let mut comm =
        amphi_core::testing::Communicator::http(fails, http::Request::get("/").body(()).unwrap());
    comm.close_input();
    let err = block_on(comm.wait()).expect_err("the handler's own error");
    assert!(err.is_saturated(), "{err}");
    assert_eq!(err.message(), Some("no connection free"));
    assert_eq!(block_on(comm.receive_output()), None, "nothing was sent");
}

#[test]
fn an_async_body_read_error_comes_out_through_question_mark() {
    let echo = Arc::new(async_fn(|req: AsyncRequest| async move {
        let body = req.into_body().to_bytes().await?;
        Ok::<_, Error>(body)
    }));
    // The client goes away mid-body: the read fails, and the handler's future returns it.
    let mut comm = amphi_core::testing::Communicator::http(
        echo.clone(),
        http::Request::post("/").body(()).unwrap(),
    );
    comm.send_input(amphi_core::Event::Request {
        body: Bytes::from("part"),
        more_body: true,
    });
    comm.close_input();
    let err = block_on(comm.wait()).expect_err("the read's error");
    assert!(err.is_disconnected(), "{err}");
    assert_eq!(block_on(comm.receive_output()), None, "nothing was sent");

    let ok = block_on(call(
        &echo,
        http::Request::post("/").body(Bytes::from("ping")).unwrap(),
    ));
    assert_async(
        ok,
        (StatusCode::OK, Some(OCTETS), b"ping"),
        "a read that works",
    );
}

// ---- RequestExt ----

#[test]
fn request_ext_reads_what_async_fn_puts_in() {
    #[derive(Clone)]
    struct AppName(&'static str);
    #[derive(Clone)]
    struct RequestId(u32);

    let seen = async_fn(|req: AsyncRequest| async move {
        let app = req.state().and_then(|s| s.get::<AppName>()).map(|a| a.0);
        let id = req
            .context()
            .and_then(|c| c.get::<RequestId>())
            .map(|r| r.0);
        format!(
            "{:?} {:?} root={} path={} client={:?}",
            app,
            id,
            req.root_path(),
            req.path(),
            req.info().client().map(|a| a.port()),
        )
    });
    let state = State::new();
    state.insert(AppName("demo"));
    let context = Context::new();
    context.insert(RequestId(9));
    let (parts, ()) = http::Request::get("/api/users/7")
        .body(())
        .unwrap()
        .into_parts();
    let info = RequestInfo::new()
        .with_root_path("/api")
        .with_client(Some("127.0.0.1:4000".parse().unwrap()));
    let scope = HttpScope::from_parts(parts, info, context, state);
    let mut comm = amphi_core::testing::Communicator::new(Arc::new(seen), Scope::Http(scope));
    comm.send_input(amphi_core::Event::Request {
        body: Bytes::new(),
        more_body: false,
    });
    let mut body = Vec::new();
    while let Some(m) = block_on(comm.receive_output()) {
        if let amphi_core::Message::ResponseBody { body: b, .. } = m {
            body.extend_from_slice(&b);
        }
    }
    block_on(comm.wait()).unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"Some("demo") Some(9) root=/api path=/users/7 client=Some(4000)"#
    );
}

#[test]
fn into_response_is_callable_for_either_body() {
    // One value, both kinds of handler.
    let sync: SyncResponse = (StatusCode::ACCEPTED, "queued").into_response();
    let not_sync: AsyncResponse = (StatusCode::ACCEPTED, "queued").into_response();
    assert_eq!(sync.status(), not_sync.status());
    assert_eq!(sync.headers(), not_sync.headers());
}

#[test]
fn looking_for_a_failure_on_a_plain_response_allocates_nothing() {
    // What an adapter does with every response of a sync handler: it must stay free.
    let mut response: SyncResponse = http::Response::new(SyncBody::from("hello"));
    let mut found = None;
    let info = allocation_counter::measure(|| found = Some(take_handler_error(&mut response)));
    assert_eq!(found.map(|f| f.is_none()), Some(true));
    assert_eq!(info.count_total, 0, "allocations");
}
