//! Fault suite: a sync request whose client leaves while the request is still queued for a
//! blocking thread, over HTTP/1.1 and HTTP/2.
//!
//! What must hold: its handler never runs (a saturated server does not spend threads on
//! answers nobody reads), its blocking slot comes back, the in-flight count goes back down,
//! and the requests around it are served as usual.

mod support;

use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use amphi::prelude::*;
use support::*;
use tokio::sync::mpsc;

/// What the sync app was asked to run, in order: the paths its handler started for.
#[derive(Clone, Default)]
struct Ran(Arc<Mutex<Vec<String>>>);

impl Ran {
    fn paths(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// `/s/hold` says it started and then waits for the gate; anything else answers at once.
fn router(ran: &Ran, gate: std_mpsc::Receiver<()>, started: mpsc::UnboundedSender<()>) -> Router {
    let ran = ran.clone();
    let gate = Mutex::new(gate);
    let app = sync_fn(move |req: SyncRequest| {
        ran.0.lock().unwrap().push(req.path().to_owned());
        if req.path().ends_with("/hold") {
            let _ = started.send(());
            // Bounded: a test that fails to open the gate still ends.
            let _ = gate.lock().unwrap().recv_timeout(PATIENCE);
        }
        http::Response::new(SyncBody::from("done"))
    });
    Router::new().mount_sync("/s", app)
}

/// One blocking thread for the whole runtime and four pool slots: a request that holds the
/// thread leaves the next one queued with a slot in hand, waiting for a thread (in the pool's
/// lane), which is where a request waits on a server whose pool outnumbers its threads, or
/// whose threads are all busy with other blocking work.
#[test]
fn a_queued_sync_request_whose_client_left_never_runs() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("building the test runtime");
    rt.block_on(async {
        for proto in BOTH {
            queued_request_of_a_client_that_left(proto).await;
        }
    });
}

async fn queued_request_of_a_client_that_left(proto: Proto) {
    let ran = Ran::default();
    let (open_gate, gate) = std_mpsc::channel();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let server = Server::new(router(&ran, gate, started_tx)).blocking_threads(4);
    let serving = within("binding", server.bind("127.0.0.1:0")).await.unwrap();
    let addr = serving.local_addr().unwrap();
    let tag = format!("{proto:?}").to_lowercase();

    // The first request takes the only blocking thread and holds it.
    let hold_path = format!("/s/{tag}/hold");
    let hold = tokio::spawn(async move { get(addr, proto, &hold_path).await });
    within("the holding handler to start", started.recv())
        .await
        .expect("the handler says it started");

    // The second is queued behind it; then its client leaves.
    let mut conn = Conn::open(addr, proto).await;
    let req = conn
        .request(http::Method::GET, &format!("/s/{tag}/queued"))
        .body(empty())
        .unwrap();
    let queued = tokio::spawn(async move {
        let _ = conn.send(req).await;
        drop(conn);
    });
    eventually("the second request to be in flight", || {
        serving.in_flight() == 2
    })
    .await;
    queued.abort();
    let _ = queued.await;
    eventually(
        "the server to drop the request of the client that left",
        || serving.in_flight() == 1,
    )
    .await;

    // The thread comes free: the queued request must not run now.
    open_gate.send(()).expect("the holding handler waits");
    let held = within("the held request", hold).await.unwrap();
    assert_eq!(held.status, http::StatusCode::OK);
    // The request after it is served on the same one thread, and the lane hands out its
    // pieces in order: by the time it is answered, the queued one was run or skipped.
    let after = get(addr, proto, &format!("/s/{tag}/after")).await;
    assert_eq!(after.status, http::StatusCode::OK);
    assert_eq!(
        ran.paths(),
        vec![format!("/{tag}/hold"), format!("/{tag}/after")],
        "{proto:?}: the handler of the request whose client left ran"
    );
    eventually("nothing in flight", || serving.in_flight() == 0).await;
    eventually("every blocking slot back", || {
        serving.blocking_pool().in_flight() == 0
    })
    .await;
    within("shutdown", serving.shutdown()).await.unwrap();
}
