//! `AsyncHandler::call_owned`: the future a server keeps without the handler. Every
//! `testing::call` goes through it, so these check the three ways it is provided: the default
//! (a handler whose `call` future borrows `self`), the sugar's own, and `Arc` forwarding.

use std::sync::Arc;

use amphi_core::testing::call;
use amphi_core::{
    asgi_fn, async_fn, AsyncBody, AsyncHandler, BoxFuture, Error, Message, Receiver, Scope, Sender,
};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// A handler whose future borrows `self` across an await: only the default `call_owned`,
/// which keeps the `Arc` next to the future, can serve it.
struct Greeter {
    name: String,
}

impl AsyncHandler for Greeter {
    fn call(
        &self,
        _scope: Scope,
        _receive: Receiver,
        mut send: Sender,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                .await?;
            let body = format!("hello {}", self.name);
            send.send(Message::body(body, false)).await
        })
    }
}

fn get() -> http::Request<Bytes> {
    http::Request::get("/").body(Bytes::new()).unwrap()
}

#[test]
fn the_default_keeps_the_handler_alive_for_a_borrowing_future() {
    let greeter = Arc::new(Greeter {
        name: "owned".into(),
    });
    let fut = AsyncHandler::call_owned(
        greeter.clone(),
        Scope::Http(amphi_core::HttpScope::new(
            get().into_parts().0,
            amphi_core::RequestInfo::new(),
        )),
        Receiver::new(NoEvents),
        Sender::http(amphi_core::testing::CollectSink::new().0),
    );
    // The future holds its own reference: the caller's can go first.
    drop(greeter);
    futures_executor::block_on(fut).unwrap();

    let resp = futures_executor::block_on(call(
        &Arc::new(Greeter {
            name: "world".into(),
        }),
        get(),
    ))
    .unwrap();
    assert_eq!(resp.body, "hello world");
}

#[test]
fn sugar_and_arc_forwarding_answer_the_same() {
    let sugar = Arc::new(async_fn(|_req| async {
        http::Response::new(AsyncBody::from("sugar"))
    }));
    let raw = Arc::new(asgi_fn(|_scope, _receive, mut send: Sender| async move {
        send.send(Message::start(StatusCode::OK, HeaderMap::new()))
            .await?;
        send.send(Message::body("raw", false)).await
    }));
    let nested = Arc::new(raw.clone());
    let as_dyn: Arc<dyn AsyncHandler> = sugar.clone();
    futures_executor::block_on(async {
        assert_eq!(call(&sugar, get()).await.unwrap().body, "sugar");
        assert_eq!(call(&raw, get()).await.unwrap().body, "raw");
        assert_eq!(call(&nested, get()).await.unwrap().body, "raw");
        assert_eq!(call(&as_dyn, get()).await.unwrap().body, "sugar");
    });
}

struct NoEvents;

impl amphi_core::plumbing::EventSource for NoEvents {
    fn poll_event(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<amphi_core::Event, Error>> {
        std::task::Poll::Ready(Ok(amphi_core::Event::Disconnect))
    }
}
