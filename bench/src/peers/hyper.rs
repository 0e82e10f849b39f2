//! Raw hyper on hyper-util's auto builder (HTTP/1.1 and h2c on one port): the floor.
//! With `offload`, every request is handed to `spawn_blocking`, as users write it today.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Body = Either<Full<Bytes>, Incoming>;

pub(super) fn run(bind: SocketAddr, blocking_threads: usize, offload: bool) -> io::Result<()> {
    super::runtime(blocking_threads)?.block_on(async move {
        let listener = TcpListener::bind(bind).await?;
        super::announce(listener.local_addr()?);
        // Diagnostics only (docs/benchmarks.md, "memory"): AMPHI_BENCH_HYPER_VARIANT=owned,timer
        // gives each connection its own copy of the builder (`into_owned`), and/or a header-read
        // timeout on hyper's tokio timer, the two things amphi's server adds per connection.
        let variant = std::env::var("AMPHI_BENCH_HYPER_VARIANT").unwrap_or_default();
        let (owned, timer) = (variant.contains("owned"), variant.contains("timer"));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        if timer {
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(120));
        }
        let builder = Arc::new(builder);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, offload));
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let _ = if owned {
                    conn.into_owned().await
                } else {
                    conn.await
                };
            });
        }
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    *res.status_mut() = status;
    res
}

pub(super) async fn handle(
    req: Request<Incoming>,
    offload: bool,
) -> Result<Response<Body>, Infallible> {
    let res = match (req.method(), req.uri().path(), offload) {
        (&Method::GET, "/hello", false) => text(StatusCode::OK, super::HELLO_ASYNC),
        (&Method::GET, "/hello", true) => {
            match tokio::task::spawn_blocking(|| super::HELLO_SYNC).await {
                Ok(body) => text(StatusCode::OK, body),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "panicked"),
            }
        }
        (&Method::GET, "/sleep", false) => {
            tokio::time::sleep(super::sleep_ms(req.uri().query())).await;
            text(StatusCode::OK, "slept")
        }
        (&Method::GET, "/sleep", true) => {
            let dur = super::sleep_ms(req.uri().query());
            match tokio::task::spawn_blocking(move || std::thread::sleep(dur)).await {
                Ok(()) => text(StatusCode::OK, "slept"),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "panicked"),
            }
        }
        // Streamed straight back: the floor for echo.
        (&Method::POST, "/echo", false) => Response::new(Either::Right(req.into_body())),
        (&Method::POST, "/echo", true) => match req.into_body().collect().await {
            Ok(collected) => {
                let body = collected.to_bytes();
                match tokio::task::spawn_blocking(move || body).await {
                    Ok(body) => Response::new(Either::Left(Full::new(body))),
                    Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "panicked"),
                }
            }
            Err(_) => text(StatusCode::BAD_REQUEST, "bad body"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found"),
    };
    Ok(res)
}
