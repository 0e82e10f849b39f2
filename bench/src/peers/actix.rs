//! actix-web with `web::block` for every handler (its documented way to run blocking code),
//! default worker count (one per core), HTTP/1.1 and h2c on one port.

use std::io;
use std::net::SocketAddr;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

pub(super) fn run(bind: SocketAddr) -> io::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| {
            App::new()
                .route("/hello", web::get().to(hello))
                .route("/sleep", web::get().to(sleep))
                .route("/echo", web::post().to(echo))
        })
        .bind_auto_h2c(bind)?;
        for addr in server.addrs() {
            super::announce(addr);
        }
        server.run().await
    })
}

async fn hello() -> HttpResponse {
    match web::block(|| super::HELLO_SYNC).await {
        Ok(body) => HttpResponse::Ok().body(body),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

async fn sleep(req: HttpRequest) -> HttpResponse {
    let dur = super::sleep_ms(Some(req.query_string()));
    match web::block(move || std::thread::sleep(dur)).await {
        Ok(()) => HttpResponse::Ok().body("slept"),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

async fn echo(body: web::Bytes) -> HttpResponse {
    match web::block(move || body).await {
        Ok(body) => HttpResponse::Ok().body(body),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}
