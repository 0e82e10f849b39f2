//! One `tracing` span per request, across the boundary: current in a blocking handler (both
//! of its paths), in a `sync_to_async` closure called from an async handler and in an
//! `async_to_sync` future called from a sync one; the access line is inside it too; and the
//! `x-request-id` is honoured or generated, and returned.
//!
//! A test subscriber records, for every event, the fields of the `request` span it is in.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use amphi::prelude::*;
use http::{Method, StatusCode};
use support::*;
use tracing_subscriber::layer::SubscriberExt;

/// One recorded event: its message and target, and the fields of its request span (empty
/// when it is in none).
#[derive(Debug, Clone)]
struct Seen {
    message: String,
    target: String,
    span: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Record(Arc<Mutex<Vec<Seen>>>);

impl Record {
    /// The events whose message contains `needle`.
    fn find(&self, needle: &str) -> Vec<Seen> {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .filter(|s| s.message.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits for the one event whose message contains `needle`.
    async fn one(&self, needle: &str) -> Seen {
        eventually(&format!("an event saying {needle:?}"), || {
            !self.find(needle).is_empty()
        })
        .await;
        let found = self.find(needle);
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].clone()
    }
}

/// The fields of a span, kept in its extensions.
struct Fields(HashMap<String, String>);

struct Visit<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Visit<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

struct Layer(Record);

impl<S> tracing_subscriber::Layer<S> for Layer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = HashMap::new();
        attrs.record(&mut Visit(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Fields(fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Visit(&mut fields));
        let mut span = HashMap::new();
        if let Some(scope) = ctx.event_scope(event) {
            for s in scope {
                if s.name() == "request" && s.metadata().target() == "amphi::request" {
                    if let Some(f) = s.extensions().get::<Fields>() {
                        span = f.0.clone();
                    }
                }
            }
        }
        let message = fields.remove("message").unwrap_or_default();
        // The access line's path, so each test finds its own.
        let message = match fields.get("path") {
            Some(p) => format!("{message} {p}"),
            None => message,
        };
        self.0 .0.lock().unwrap().push(Seen {
            message,
            target: event.metadata().target().to_owned(),
            span,
        });
    }
}

fn record() -> Record {
    static RECORD: OnceLock<Record> = OnceLock::new();
    RECORD
        .get_or_init(|| {
            let record = Record::default();
            let subscriber = tracing_subscriber::registry().with(Layer(record.clone()));
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other subscriber in this test binary");
            record
        })
        .clone()
}

fn router() -> Router {
    let sync_app = sync_fn(|req: SyncRequest| {
        let what = req.path().to_owned();
        match &*what {
            "/calls-async" => {
                let r = async_to_sync(async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    tracing::info!("probe: in async_to_sync future");
                });
                if r.is_err() {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
            }
            _ => tracing::info!("probe: in sync handler {} {}", req.method(), what),
        }
        "ok".into_response()
    });
    let async_app = async_fn(|req: AsyncRequest| async move {
        match req.uri().path() {
            "/a/calls-sync" => {
                sync_to_async(|| tracing::info!("probe: in sync_to_async closure")).await?;
            }
            p => tracing::info!("probe: in async handler {p}"),
        }
        Ok::<_, Error>("ok".into_response())
    });
    Router::new()
        .mount_sync("/s", sync_app)
        .mount_async("/a", async_app)
}

async fn start(spans: bool) -> amphi::Serving {
    let server = Server::new(router()).request_spans(spans);
    within("binding", server.bind("127.0.0.1:0")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_span_is_current_on_both_sides_of_every_crossing() {
    let record = record();
    let serving = start(true).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let tag = format!("{proto:?}");
        let mut conn = Conn::open(addr, proto).await;
        // A sync handler: a GET goes the direct path, a POST with a body the event protocol.
        let r = conn.get(&format!("/s/get-{tag}")).await;
        let id = r.header("x-request-id").expect("a generated id").to_owned();
        let seen = record.one(&format!("in sync handler GET /get-{tag}")).await;
        assert_eq!(seen.span["route"], "/s");
        assert_eq!(seen.span["kind"], "sync");
        assert_eq!(seen.span["method"], "GET");
        assert_eq!(seen.span["request_id"], id);

        let req = conn
            .request(Method::POST, &format!("/s/post-{tag}"))
            .body(chunked([bytes::Bytes::from("a"), bytes::Bytes::from("b")]))
            .unwrap();
        let r = conn.fetch(req).await;
        let seen = record
            .one(&format!("in sync handler POST /post-{tag}"))
            .await;
        assert_eq!(seen.span["request_id"], r.header("x-request-id").unwrap());
        assert_eq!(seen.span["method"], "POST");

        // An async handler, and a sync_to_async closure it calls.
        let r = conn.get(&format!("/a/plain-{tag}")).await;
        let seen = record
            .one(&format!("in async handler /a/plain-{tag}"))
            .await;
        assert_eq!(
            (seen.span["route"].as_str(), seen.span["kind"].as_str()),
            ("/a", "async")
        );
        assert_eq!(seen.span["request_id"], r.header("x-request-id").unwrap());
    }

    let r = get(addr, Proto::H1, "/a/calls-sync").await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = record.one("in sync_to_async closure").await;
    assert_eq!(seen.span["route"], "/a");
    assert_eq!(seen.span["request_id"], r.header("x-request-id").unwrap());

    // A sync handler calling async_to_sync: the future runs inside the span too.
    let r = get(addr, Proto::H1, "/s/calls-async").await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = record.one("in async_to_sync future").await;
    assert_eq!(seen.span["route"], "/s");
    assert_eq!(seen.span["kind"], "sync");
    assert_eq!(seen.span["request_id"], r.header("x-request-id").unwrap());

    // The access line is written inside the span, so it carries the id as well.
    let access = record.one(" /s/calls-async").await;
    assert_eq!(access.target, "amphi::access");
    assert_eq!(access.span["request_id"], r.header("x-request-id").unwrap());

    // Unmatched requests get a span and an id too.
    let r = get(addr, Proto::H1, "/nowhere-spans").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let access = record.one(" /nowhere-spans").await;
    assert_eq!(access.span["route"], "unmatched");
    assert_eq!(access.span["request_id"], r.header("x-request-id").unwrap());
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sane_request_id_is_honoured_and_any_other_replaced() {
    let record = record();
    let serving = start(true).await;
    let addr = serving.local_addr().unwrap();
    let mut conn = Conn::open(addr, Proto::H1).await;

    let req = conn
        .request(Method::GET, "/s/honoured")
        .header("x-request-id", "client-id_42.abc")
        .body(empty())
        .unwrap();
    let r = conn.fetch(req).await;
    assert_eq!(r.header("x-request-id"), Some("client-id_42.abc"));
    let seen = record.one("in sync handler GET /honoured").await;
    assert_eq!(seen.span["request_id"], "client-id_42.abc");

    let long = "x".repeat(129);
    for (i, bad) in ["has space", long.as_str()].into_iter().enumerate() {
        let req = conn
            .request(Method::GET, &format!("/a/replaced-{i}"))
            .header("x-request-id", bad)
            .body(empty())
            .unwrap();
        let r = conn.fetch(req).await;
        let id = r.header("x-request-id").unwrap();
        assert_ne!(id, bad);
        assert!(
            id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()),
            "{id}"
        );
        let seen = record
            .one(&format!("in async handler /a/replaced-{i}"))
            .await;
        assert_eq!(seen.span["request_id"], id);
    }

    // Generated ids differ from request to request.
    let a = conn.get("/a/one").await;
    let b = conn.get("/a/two").await;
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_request_spans_there_is_no_span_and_no_id() {
    let record = record();
    let serving = start(false).await;
    let addr = serving.local_addr().unwrap();
    let r = get(addr, Proto::H1, "/s/spanless").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-request-id"), None);
    let seen = record.one("in sync handler GET /spanless").await;
    assert!(seen.span.is_empty(), "{seen:?}");
    serving.shutdown().await.unwrap();
}
