//! The smallest blocking app.
//!
//! ```sh
//! cargo run --example hello_sync            # or: cargo run --example hello_sync -- 127.0.0.1:9000
//! curl 'http://127.0.0.1:8000/?name=amphi'
//! ```
//!
//! A sync handler is a plain function: it runs on a thread of the server's bounded blocking
//! pool, so it may block as much as it likes (std::fs, diesel, rusqlite, a blocking client).

use amphi::prelude::*;

fn hello(req: SyncRequest) -> SyncResponse {
    let name = req
        .query_string()
        .strip_prefix("name=")
        .filter(|n| !n.is_empty())
        .unwrap_or("world");
    // Blocking is fine here: this is not an async task.
    std::thread::sleep(std::time::Duration::from_millis(1));
    http::Response::new(SyncBody::from(format!(
        "hello, {name}, from a blocking thread\n"
    )))
}

#[tokio::main]
async fn main() -> Result<(), ServeError> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".into());
    let router = Router::new().mount_sync("/", sync_fn(hello));
    let serving = Server::new(router).bind(bind.as_str()).await?;
    println!("listening on http://{}", serving.local_addr().unwrap());
    // Ctrl-C or SIGTERM: finish what is in flight, then exit 0.
    serving.run_until(shutdown_signal()).await
}
