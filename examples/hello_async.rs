//! The smallest async app.
//!
//! ```sh
//! cargo run --example hello_async           # or: cargo run --example hello_async -- 127.0.0.1:9000
//! curl http://127.0.0.1:8000/
//! curl -d 'some text' http://127.0.0.1:8000/
//! ```
//!
//! An async handler made with `async_fn` takes a request and returns a response; its body
//! streams in as you read it. It is polled by the connection's own task: never block in it
//! (use `sync_to_async` for blocking work).

use amphi::prelude::*;

async fn hello(req: AsyncRequest) -> AsyncResponse {
    let method = req.method().clone();
    match req.into_body().to_bytes().await {
        Ok(body) if !body.is_empty() => http::Response::new(AsyncBody::from(format!(
            "hello from async; you sent {} bytes with {method}\n",
            body.len()
        ))),
        Ok(_) => http::Response::new(AsyncBody::from("hello from async\n")),
        // The body was over the server's limit, or the client left.
        Err(e) => http::Response::builder()
            .status(if e.is_body_too_large() { 413 } else { 400 })
            .body(AsyncBody::from(format!("{e}\n")))
            .expect("a valid response"),
    }
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
