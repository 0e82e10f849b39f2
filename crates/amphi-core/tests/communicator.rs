//! The test double itself: `Communicator` and `call` report what the handler did, including
//! its errors, without a socket or a runtime.

use std::error::Error as _;
use std::io;
use std::sync::Arc;

use amphi_core::testing::{call, Communicator};
use amphi_core::{asgi_fn, Error, ErrorKind, Event, Message};
use bytes::Bytes;
use futures_executor::block_on;
use http::{HeaderMap, StatusCode};

fn get() -> http::Request<()> {
    http::Request::get("/").body(()).unwrap()
}

#[test]
fn wait_returns_the_handlers_error_as_it_was_then_a_copy() {
    let handler = Arc::new(asgi_fn(|_, _, _| async {
        Err(Error::handler(io::Error::other("disk full")).with_message("saving the upload"))
    }));
    block_on(async {
        let mut comm = Communicator::http(handler, get());
        let err = comm.wait().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Handler);
        assert_eq!(err.to_string(), "handler error: saving the upload");
        assert_eq!(err.source().unwrap().to_string(), "disk full");
        // Asked again: the same kind and message.
        let again = comm.wait().await.unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Handler);
        assert_eq!(again.to_string(), "handler error: saving the upload");
        assert!(comm.is_finished());
        assert_eq!(comm.receive_output().await, None);
    });
}

#[test]
fn call_reports_a_handler_that_never_starts_the_response() {
    let silent = Arc::new(asgi_fn(|_, _, _| async { Ok(()) }));
    block_on(async {
        let err = call(&silent, http::Request::get("/").body(Bytes::new()).unwrap())
            .await
            .unwrap_err();
        assert!(err.is_protocol());
        assert!(
            err.to_string().contains("without http.response.start"),
            "{err}"
        );
    });
}

#[test]
fn call_passes_the_handlers_error_through() {
    let failing = Arc::new(asgi_fn(|_, _, mut send| async move {
        send.send(Message::start(StatusCode::OK, HeaderMap::new()))
            .await?;
        Err(Error::new(ErrorKind::Saturated).with_message("no slot"))
    }));
    block_on(async {
        let err = call(
            &failing,
            http::Request::get("/").body(Bytes::new()).unwrap(),
        )
        .await
        .unwrap_err();
        assert!(err.is_saturated());
        assert_eq!(err.message(), Some("no slot"));
    });
}

#[test]
fn try_receive_output_runs_the_handler_without_waiting() {
    let handler = Arc::new(asgi_fn(|_, mut receive, mut send| async move {
        let event = receive.receive().await?;
        assert_eq!(
            event,
            Event::Request {
                body: Bytes::from("go"),
                more_body: false
            }
        );
        send.send(Message::start(StatusCode::ACCEPTED, HeaderMap::new()))
            .await?;
        send.send(Message::body("", false)).await
    }));
    let mut comm = Communicator::http(handler, get());
    assert_eq!(comm.try_receive_output(), None);
    assert!(!comm.is_finished());
    comm.send_input(Event::Request {
        body: Bytes::from("go"),
        more_body: false,
    });
    assert!(matches!(
        comm.try_receive_output(),
        Some(Message::ResponseStart {
            status: StatusCode::ACCEPTED,
            ..
        })
    ));
    assert_eq!(comm.try_receive_output(), Some(Message::body("", false)));
    assert_eq!(comm.try_receive_output(), None);
    assert!(comm.is_finished());
    assert!(format!("{comm:?}").contains("finished: true"));
}

#[test]
fn after_close_input_receive_yields_disconnect_forever() {
    let handler = Arc::new(asgi_fn(|_, mut receive, mut send| async move {
        let mut events = Vec::new();
        for _ in 0..3 {
            events.push(receive.receive().await?);
        }
        assert_eq!(
            events,
            [
                Event::Request {
                    body: Bytes::from("x"),
                    more_body: true
                },
                Event::Disconnect,
                Event::Disconnect,
            ]
        );
        send.send(Message::start(StatusCode::OK, HeaderMap::new()))
            .await?;
        send.send(Message::body("", false)).await
    }));
    block_on(async {
        let mut comm = Communicator::http(handler, get());
        comm.send_input(Event::Request {
            body: Bytes::from("x"),
            more_body: true,
        });
        comm.close_input();
        assert!(comm.receive_output().await.is_some());
        assert!(comm.receive_output().await.is_some());
        comm.wait().await.unwrap();
    });
}
