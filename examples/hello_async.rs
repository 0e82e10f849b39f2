//! The smallest async app.
//!
//! ```sh
//! cargo run --example hello_async           # or: cargo run --example hello_async -- 127.0.0.1:9000
//! curl http://127.0.0.1:8000/
//! curl -d 'some text' http://127.0.0.1:8000/
//! ```
//!
//! An async handler made with `async_fn` takes a request and returns a response (here a
//! `Result<String, Error>`: anything `IntoResponse`); its body streams in as you read it. It is polled by the connection's own task: never block in it
//! (use `sync_to_async` for blocking work).

use amphi::prelude::*;

async fn hello(req: AsyncRequest) -> Result<String, Error> {
    let method = req.method().clone();
    // A body over the server's limit, or a client that left, fails the read: `?` hands the
    // error to the server, which answers (413 for the limit) and logs it.
    let body = req.into_body().to_bytes().await?;
    Ok(if body.is_empty() {
        "hello from async\n".to_owned()
    } else {
        format!(
            "hello from async; you sent {} bytes with {method}\n",
            body.len()
        )
    })
}

#[tokio::main]
async fn main() -> Result<(), ServeError> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".into());
    let router = Router::new().mount_async("/", async_fn(hello));
    let serving = Server::new(router).bind(bind.as_str()).await?;
    println!("listening on http://{}", serving.local_addr().unwrap());
    serving.run_until(shutdown_signal()).await
}
