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
    /// The store `main` puts in the app state.
    fn from_state(state: Option<&State>) -> Result<Store, Error> {
        state.and_then(|s| s.get::<Store>()).ok_or_else(|| {
            Error::new(ErrorKind::Other)
                .with_message("no store in the app state: main puts it there")
        })
    }
}

/// The legacy blocking app: `GET /notes` lists the notes, `POST /notes` adds one.
fn legacy_notes(mut req: SyncRequest) -> Result<SyncResponse, Error> {
    let store = Store::from_state(Some(req.state()))?;
    match (req.method().clone(), req.path()) {
        (Method::GET, "" | "/") => {
            let list = store.0.lock().unwrap().join("\n");
            Ok((list + "\n").into_response())
        }
        (Method::POST, "" | "/") => {
            let mut note = Vec::new();
            // A body over the limit or a client gone: the server answers (413) and logs it.
            req.body_mut().read_to_end(&mut note)?;
            let Ok(note) = String::from_utf8(note) else {
                return Ok((StatusCode::BAD_REQUEST, "a note is utf-8 text\n").into_response());
            };
            store.0.lock().unwrap().push(note);
            Ok(StatusCode::CREATED.into_response())
        }
        _ => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// `GET /notes/count`, moved to async. The store is still blocking code, so the lookup runs
/// through `sync_to_async` instead of blocking the connection's task.
async fn count_notes(req: AsyncRequest) -> Result<String, Error> {
    let store = Store::from_state(req.state())?;
    // No blocking slot free in time: the server answers 503 with Retry-After.
    let n = sync_to_async(move || store.0.lock().unwrap().len()).await?;
    Ok(format!("{n}\n"))
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
