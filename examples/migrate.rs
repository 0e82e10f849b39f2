//! Moving one endpoint from sync to async, without a rewrite and without a second server.
//!
//! ```sh
//! cargo run --example migrate
//! curl -d 'buy milk' http://127.0.0.1:8000/notes      # sync: adds a note
//! curl http://127.0.0.1:8000/notes                    # sync: lists them
//! curl http://127.0.0.1:8000/notes/count              # async now: counts them
//! ```
//!
//! The legacy app is one blocking handler for everything under `/notes`. One endpoint,
//! `/notes/count`, has been rewritten as an async handler and mounted at its own, longer
//! prefix, so it wins; everything else still goes to the blocking app, unchanged. Both read
//! the same store, which the server hands to every request through its app `State`.

use std::io::Read;
use std::sync::{Arc, Mutex};

use amphi::prelude::*;
use http::{Method, StatusCode};

/// The app's data. Imagine a blocking database connection pool.
#[derive(Clone, Default)]
struct Store(Arc<Mutex<Vec<String>>>);

impl Store {
    fn from_state(state: &State) -> Store {
        state
            .get::<Store>()
            .expect("the store is put in the state at startup")
    }
}

/// The legacy blocking app: `GET /notes` lists the notes, `POST /notes` adds one.
fn legacy_notes(mut req: SyncRequest) -> SyncResponse {
    let store = Store::from_state(req.state());
    match (req.method().clone(), req.path()) {
        (Method::GET, "" | "/") => {
            let list = store.0.lock().unwrap().join("\n");
            http::Response::new(SyncBody::from(list + "\n"))
        }
        (Method::POST, "" | "/") => {
            let mut note = String::new();
            if req.body_mut().read_to_string(&mut note).is_err() {
                return status(StatusCode::BAD_REQUEST);
            }
            store.0.lock().unwrap().push(note);
            status(StatusCode::CREATED)
        }
        _ => status(StatusCode::NOT_FOUND),
    }
}

fn status(code: StatusCode) -> SyncResponse {
    http::Response::builder()
        .status(code)
        .body(SyncBody::empty())
        .expect("a valid response")
}

/// `GET /notes/count`, moved to async. The store is still blocking code, so the lookup runs
/// through `sync_to_async` instead of blocking the connection's task.
async fn count_notes(req: AsyncRequest) -> AsyncResponse {
    let state = req.extensions().get::<State>().cloned().unwrap_or_default();
    let store = Store::from_state(&state);
    match sync_to_async(move || store.0.lock().unwrap().len()).await {
        Ok(n) => http::Response::new(AsyncBody::from(format!("{n}\n"))),
        Err(e) => http::Response::builder()
            .status(500)
            .body(AsyncBody::from(format!("{e}\n")))
            .expect("a valid response"),
    }
}

#[tokio::main]
async fn main() -> Result<(), ServeError> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".into());
    let state = State::new();
    state.insert(Store::default());
    let router = Router::new()
        // Moved: the longer prefix wins over the legacy mount below.
        .mount_async("/notes/count", async_fn(count_notes))
        // Everything else under /notes: the legacy blocking app, unchanged.
        .mount_sync("/notes", sync_fn(legacy_notes));
    let serving = Server::new(router).state(state).bind(bind.as_str()).await?;
    println!("listening on http://{}", serving.local_addr().unwrap());
    serving.run_until(shutdown_signal()).await
}
