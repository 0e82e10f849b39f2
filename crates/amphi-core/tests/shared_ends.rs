//! `Receiver::shared` and `Sender::shared_http`: both ends of an exchange over one object
//! their owner keeps, with the same protocol checks as boxed ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use amphi_core::plumbing::{SharedEventSource, SharedMessageSink};
use amphi_core::{Error, Event, Message, Receiver, Sender};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// One object behind both ends, as a server keeps a request's body and response slot.
#[derive(Default)]
struct Shared {
    events: Mutex<VecDeque<Event>>,
    sent: Mutex<Vec<Message>>,
    released: AtomicUsize,
}

impl SharedEventSource for Shared {
    fn poll_event(&self, _cx: &mut Context<'_>) -> Poll<Result<Event, Error>> {
        let next = self.events.lock().unwrap().pop_front();
        Poll::Ready(Ok(next.unwrap_or(Event::Disconnect)))
    }

    fn release(&self) {
        self.released.fetch_add(1, Ordering::SeqCst);
    }
}

impl SharedMessageSink for Shared {
    fn poll_ready(&self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(&self, message: Message) -> Result<(), Error> {
        self.sent.lock().unwrap().push(message);
        Ok(())
    }
}

#[test]
fn a_shared_receiver_reads_its_source_and_releases_it_once_when_dropped() {
    let shared = Arc::new(Shared::default());
    shared.events.lock().unwrap().push_back(Event::Request {
        body: Bytes::from_static(b"ping"),
        more_body: false,
    });
    let mut receive = Receiver::shared(shared.clone());
    futures_executor::block_on(async {
        match receive.receive().await.unwrap() {
            Event::Request { body, more_body } => {
                assert_eq!(body, "ping");
                assert!(!more_body);
            }
            other => panic!("expected the request body, got {other:?}"),
        }
        assert!(matches!(receive.receive().await, Ok(Event::Disconnect)));
    });
    assert_eq!(
        shared.released.load(Ordering::SeqCst),
        0,
        "released while alive"
    );
    drop(receive);
    assert_eq!(shared.released.load(Ordering::SeqCst), 1);
    // The owner still holds the object after the receiver let it go.
    assert_eq!(Arc::strong_count(&shared), 1);
}

#[test]
fn a_shared_sender_checks_the_protocol_before_the_sink_sees_anything() {
    let shared = Arc::new(Shared::default());
    let mut send = Sender::shared_http(shared.clone());
    futures_executor::block_on(async {
        let early = send.send(Message::body("too early", false)).await;
        assert!(early.unwrap_err().is_protocol());
        assert!(shared.sent.lock().unwrap().is_empty());
        assert!(!send.is_started());
        send.send(Message::start(StatusCode::OK, HeaderMap::new()))
            .await
            .unwrap();
        send.send(Message::body("hi", false)).await.unwrap();
        assert!(send.is_finished());
        let late = send.send(Message::body("late", false)).await;
        assert!(late.unwrap_err().is_protocol());
    });
    let sent = shared.sent.lock().unwrap();
    assert_eq!(sent.len(), 2);
    assert!(matches!(
        sent[0],
        Message::ResponseStart {
            status: StatusCode::OK,
            ..
        }
    ));
    assert!(matches!(&sent[1], Message::ResponseBody { body, more_body: false } if body == "hi"));
}
