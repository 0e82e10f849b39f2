//! amphi-sync-to-async alone inside an axum app: blocking work bounded by a `BlockingPool`
//! (503 when it stays full), and a `!Send` resource on one thread-sensitive context.
//!
//! ```sh
//! cargo run -p amphi-sync-to-async --example sync_to_async_axum
//! curl http://127.0.0.1:3000/primes/100000   # 9592, counted on a blocking thread
//! curl -X POST http://127.0.0.1:3000/visits   # visit 1 on amphi-thread-sensitive
//! ```
//!
//! The crate's README shows this file below its header; `tests/axum.rs` serves the same app
//! on a loopback port and checks it over HTTP, the 503 included.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use amphi_core::{Error, ThreadSensitive};
use amphi_sync_to_async::{sync_to_async, BlockingPool};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

/// What the handlers share: the pool that bounds blocking work, and the context whose one
/// thread owns the `!Send` resource.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    pub(crate) pool: BlockingPool,
    pub(crate) db: ThreadSensitive,
}

thread_local! {
    // A `!Send` resource (an `Rc`; in a real app a rusqlite `Connection`, say). Only the
    // calls bound to `AppState::db` touch it, so it lives on that context's thread alone.
    static VISITS: Rc<Cell<u64>> = Rc::new(Cell::new(0));
}

/// The routes; `main` serves them, and so does `tests/axum.rs`.
pub(crate) fn app(state: AppState) -> Router {
    Router::new()
        .route("/primes/{n}", get(primes))
        .route("/visits", post(visit))
        .with_state(state)
}

/// The largest `n` counted: a bound on how long one request may hold a slot.
const MAX_N: u64 = 1_000_000;

/// `GET /primes/{n}`: CPU-bound blocking work on tokio's blocking pool, counted against the
/// app's pool so a burst cannot take every blocking thread.
async fn primes(State(state): State<AppState>, Path(n): Path<u64>) -> Result<String, Response> {
    if n > MAX_N {
        let why = format!("n is at most {MAX_N}");
        return Err((StatusCode::BAD_REQUEST, why).into_response());
    }
    let count = sync_to_async(move || count_primes(n))
        .pool(&state.pool)
        .await
        .map_err(refused)?;
    Ok(count.to_string())
}

/// `POST /visits`: one more visit, counted by the `!Send` resource on `db`'s thread.
async fn visit(State(state): State<AppState>) -> Result<String, Response> {
    let (count, thread) = sync_to_async(|| {
        let count = VISITS.with(|v| {
            v.set(v.get() + 1);
            v.get()
        });
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        (count, thread)
    })
    .thread_sensitive(&state.db)
    .pool(&state.pool)
    .await
    .map_err(refused)?;
    Ok(format!("visit {count} on {thread}"))
}

/// A crossing that failed, answered the way this app chooses: 503 with `Retry-After` when
/// the pool stayed full past its queue timeout, 500 for a panic (its message goes to the log,
/// not to the client).
fn refused(err: Error) -> Response {
    if err.is_saturated() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
        )
            .into_response()
    } else {
        eprintln!("blocking call failed: {err}");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

/// The blocking work: primes up to `n`, by trial division.
fn count_primes(n: u64) -> usize {
    (2..=n)
        .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let state = AppState {
        // At most 8 blocking calls at once; the next waits up to 200 ms for a slot, then 503.
        pool: BlockingPool::new(8).queue_timeout(Duration::from_millis(200)),
        db: ThreadSensitive::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(state)).await
}
