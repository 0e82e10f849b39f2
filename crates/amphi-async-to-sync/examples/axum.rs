//! amphi-async-to-sync alone inside an axum app: blocking code (a plain thread, and
//! `spawn_blocking` tasks of axum handlers) calling the app's async code.
//!
//! ```sh
//! cargo run -p amphi-async-to-sync --example async_to_sync_axum
//! curl http://127.0.0.1:3000/invoice/1,2                            # total 350
//! curl --data-binary $'3=120\n4=80' http://127.0.0.1:3000/prices    # imported 2
//! curl http://127.0.0.1:3000/invoice-inline/1                       # 500: the mistake, refused
//! ```
//!
//! The crate's README shows this file below its header; `tests/axum.rs` serves the same app
//! on a loopback port and checks it over HTTP.

use std::collections::HashMap;
use std::sync::Arc;

use amphi_async_to_sync::async_to_sync;
use amphi_core::Error;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::RwLock;

/// The app's async store (in a real app: a database pool, an HTTP client).
#[derive(Clone, Debug, Default)]
pub(crate) struct Prices(Arc<RwLock<HashMap<u32, u32>>>);

impl Prices {
    async fn get(&self, item: u32) -> Option<u32> {
        self.0.read().await.get(&item).copied()
    }

    async fn set(&self, item: u32, price: u32) {
        self.0.write().await.insert(item, price);
    }
}

/// Blocking legacy code: stores each `item=price` line of `text` through the async store
/// (lines of any other shape are skipped); returns how many it stored.
pub(crate) fn import(prices: &Prices, text: &str) -> Result<usize, Error> {
    let mut stored = 0;
    for line in text.lines() {
        let Some((item, price)) = line.split_once('=') else {
            continue;
        };
        let (Ok(item), Ok(price)) = (item.trim().parse(), price.trim().parse()) else {
            continue;
        };
        async_to_sync(prices.set(item, price))?;
        stored += 1;
    }
    Ok(stored)
}

/// Blocking legacy code: the total of `items`, each price read from the async store; `None`
/// if one is unknown.
pub(crate) fn invoice(prices: &Prices, items: &[u32]) -> Result<Option<u64>, Error> {
    let mut total = 0;
    for &item in items {
        match async_to_sync(prices.get(item))? {
            // Prices are `u32` and the total `u64`: no sum of a request's items overflows.
            Some(price) => total += u64::from(price),
            None => return Ok(None),
        }
    }
    Ok(Some(total))
}

/// The routes; `main` serves them, and so does `tests/axum.rs`.
pub(crate) fn app(prices: Prices) -> Router {
    Router::new()
        .route("/prices", post(post_prices))
        .route("/invoice/{items}", get(get_invoice))
        .route("/invoice-inline/{items}", get(get_invoice_inline))
        .with_state(prices)
}

type Answer = Result<String, (StatusCode, String)>;

/// `POST /prices`: the blocking importer, on a blocking thread of axum's runtime; its
/// `async_to_sync` calls are then served by that runtime.
async fn post_prices(State(prices): State<Prices>, body: String) -> Answer {
    let stored = tokio::task::spawn_blocking(move || import(&prices, &body))
        .await
        .map_err(|_| failed("the importer panicked"))?
        .map_err(|e| failed(&e.to_string()))?;
    Ok(format!("imported {stored}"))
}

/// `GET /invoice/{items}` (`1,2,3`): the blocking invoice code, on a blocking thread.
async fn get_invoice(State(prices): State<Prices>, Path(items): Path<String>) -> Answer {
    let items = parse_items(&items)?;
    let total = tokio::task::spawn_blocking(move || invoice(&prices, &items))
        .await
        .map_err(|_| failed("the invoice panicked"))?
        .map_err(|e| failed(&e.to_string()))?;
    match total {
        Some(total) => Ok(format!("total {total}")),
        None => Err((StatusCode::NOT_FOUND, "unknown item".to_owned())),
    }
}

/// `GET /invoice-inline/{items}`: the mistake, blocking code called right on the async
/// handler. `async_to_sync` refuses it (`WrongContext`, whose message says to `.await`
/// instead) rather than blocking the runtime's worker or panicking, and the app answers 500.
async fn get_invoice_inline(State(prices): State<Prices>, Path(items): Path<String>) -> Answer {
    let items = parse_items(&items)?;
    match invoice(&prices, &items) {
        Ok(Some(total)) => Ok(format!("total {total}")),
        Ok(None) => Err((StatusCode::NOT_FOUND, "unknown item".to_owned())),
        Err(e) if e.is_wrong_context() => Err(failed(&format!("wrong context: {e}"))),
        Err(e) => Err(failed(&e.to_string())),
    }
}

fn parse_items(items: &str) -> Result<Vec<u32>, (StatusCode, String)> {
    items
        .split(',')
        .map(|item| item.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                "items are numbers: 1,2,3".to_owned(),
            )
        })
}

fn failed(why: &str) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, why.to_owned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prices = Prices::default();
    // A plain thread (here `main`'s, before any runtime exists) drives async code too: its
    // `async_to_sync` calls are served by the crate's shared background runtime.
    let stored = import(&prices, "1=100\n2=250")?;
    println!("imported {stored} prices");

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
        println!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app(prices)).await
    })?;
    Ok(())
}
