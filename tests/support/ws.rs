//! A websocket client for the end-to-end tests: tokio-tungstenite over an HTTP/1.1 upgrade, or
//! over an HTTP/2 extended CONNECT stream (RFC 8441) opened with hyper's client.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message as M;
use tokio_tungstenite::WebSocketStream;

use super::{within, Body};

/// How a test client reaches the websocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsProto {
    /// `GET` with `Upgrade: websocket`.
    H1,
    /// HTTP/2 extended CONNECT with `:protocol websocket`.
    H2,
}

pub const WS_BOTH: [WsProto; 2] = [WsProto::H1, WsProto::H2];

/// The two client streams: an HTTP/1.1 upgrade keeps the TCP stream, HTTP/2 an upgraded stream.
pub enum Client {
    H1(WebSocketStream<TcpStream>),
    H2(WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>),
}

/// What the handshake answered when it was not accepted.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Opens a websocket to `path`, offering `protocols`; `Err` with the response when refused.
pub async fn connect(
    addr: SocketAddr,
    proto: WsProto,
    path: &str,
    protocols: &[&str],
) -> Result<(Client, http::HeaderMap), Refused> {
    within("the websocket handshake", async {
        match proto {
            WsProto::H1 => connect_h1(addr, path, protocols).await,
            WsProto::H2 => connect_h2(addr, path, protocols).await,
        }
    })
    .await
}

async fn connect_h1(
    addr: SocketAddr,
    path: &str,
    protocols: &[&str],
) -> Result<(Client, http::HeaderMap), Refused> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if !protocols.is_empty() {
        req.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            protocols.join(", ").parse().unwrap(),
        );
    }
    let tcp = TcpStream::connect(addr).await.expect("connecting");
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, resp)) => Ok((Client::H1(ws), resp.headers().clone())),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let (parts, body) = resp.into_parts();
            Err(Refused {
                status: parts.status,
                headers: parts.headers,
                body: Bytes::from(body.unwrap_or_default()),
            })
        }
        Err(e) => panic!("websocket handshake failed: {e}"),
    }
}

async fn connect_h2(
    addr: SocketAddr,
    path: &str,
    protocols: &[&str],
) -> Result<(Client, http::HeaderMap), Refused> {
    let tcp = TcpStream::connect(addr).await.expect("connecting");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // A first request lets the server's SETTINGS (which enable extended CONNECT) arrive.
    let ping = Request::builder()
        .uri(format!("http://{addr}/"))
        .version(Version::HTTP_2)
        .body(Body::Full(None))
        .unwrap();
    let _ = sender.send_request(ping).await;
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{addr}{path}"))
        .version(Version::HTTP_2)
        .header(http::header::SEC_WEBSOCKET_VERSION, "13");
    if !protocols.is_empty() {
        req = req.header(http::header::SEC_WEBSOCKET_PROTOCOL, protocols.join(", "));
    }
    let mut req = req.body(Body::Full(None)).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = sender.send_request(req).await.expect("the CONNECT request");
    if resp.status() != StatusCode::OK {
        let (parts, body) = resp.into_parts();
        let body = http_body_util::BodyExt::collect(body)
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Err(Refused {
            status: parts.status,
            headers: parts.headers,
            body,
        });
    }
    let headers = resp.headers().clone();
    let upgraded = hyper::upgrade::on(resp).await.expect("the upgraded stream");
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    Ok((Client::H2(ws), headers))
}

impl Client {
    /// Sends a message.
    pub async fn send(&mut self, m: M) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        match self {
            Client::H1(ws) => ws.send(m).await,
            Client::H2(ws) => ws.send(m).await,
        }
    }

    /// The next message, pings and pongs included; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<M, tokio_tungstenite::tungstenite::Error>> {
        within("the next websocket message", async {
            match self {
                Client::H1(ws) => ws.next().await,
                Client::H2(ws) => ws.next().await,
            }
        })
        .await
    }

    /// The next text or binary message.
    pub async fn recv(&mut self) -> M {
        loop {
            match self.next().await {
                Some(Ok(M::Ping(_) | M::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Reads until the server's close frame; its code and reason (`None`: the stream ended
    /// without one).
    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            match self.next().await {
                Some(Ok(M::Close(f))) => {
                    // Reading on sends the close reply the codec queued, as a real client does.
                    let _ = self.next().await;
                    return Some(f.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    }));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Sends a close frame with `code` and `reason`.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.to_owned().into(),
        };
        let _ = self.send(M::Close(Some(frame))).await;
    }
}
