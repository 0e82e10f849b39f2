//! astra: a blocking server on hyper. Each connection is served on a thread of astra's worker
//! pool, capped at `blocking_threads`; handlers block freely.

use std::io::{self, Read};
use std::net::SocketAddr;

use astra::{Body, Request, Response, ResponseBuilder, Server};

pub(super) fn run(bind: SocketAddr, blocking_threads: usize) -> io::Result<()> {
    let server = Server::bind(bind);
    super::announce(server.local_addr()?);
    server
        .max_workers(blocking_threads.max(1))
        .serve(|req: Request, _info| handle(req))
}

fn text(status: u16, body: &'static str) -> Response {
    ResponseBuilder::new()
        .status(status)
        .body(Body::new(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn handle(mut req: Request) -> Response {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/hello") => text(200, super::HELLO_SYNC),
        ("GET", "/sleep") => {
            std::thread::sleep(super::sleep_ms(req.uri().query()));
            text(200, "slept")
        }
        ("POST", "/echo") => {
            let mut buf = Vec::new();
            match req.body_mut().reader().read_to_end(&mut buf) {
                Ok(_) => Response::new(Body::new(buf)),
                Err(_) => text(400, "bad body"),
            }
        }
        _ => text(404, "not found"),
    }
}
