//! HTTPS end to end: ALPN `h2` and `http/1.1` on one port for both handler kinds, the scheme
//! in scopes, certificate reloads (through the handle under load, and on SIGHUP in the `mixed`
//! binary) without failed requests, mutual TLS accepted and refused, the handshake timeout,
//! and unusable certificate files. Every certificate is made here by rcgen, in a temporary
//! directory: no key is checked in.

mod support;

#[path = "../examples/mixed/app.rs"]
#[allow(dead_code)]
mod app;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amphi::server::tls::{ClientAuth, TlsConfig};
use amphi::server::Server;
use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf for `localhost` (a server) or for a client named `name`.
    fn issue(&self, name: &str, client: bool) -> Leaf {
        let sans = if client {
            Vec::new()
        } else {
            vec!["localhost".to_owned()]
        };
        let mut params = CertificateParams::new(sans).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert, key }
    }
}

struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Leaf {
    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key.serialize_der()).unwrap()
    }

    /// Writes the PEM files (replacing them whole, as a renewal does) and returns their paths.
    fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        for (path, text) in [(&cert, self.cert.pem()), (&key, self.key.serialize_pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (cert, key)
    }
}

/// A fresh temporary directory for one test's files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("amphi-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting `roots`, offering `alpn` (none when empty), presenting `identity`.
fn client(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
    identity: Option<&Leaf>,
) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.der()], leaf.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection a full handshake: a resumed session shows the certificate it was
    // first made with, which would hide a reload.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>),
}

/// One HTTPS connection: the protocol ALPN chose and the certificate the server showed.
struct TlsConn {
    sender: Sender,
    alpn: Option<Vec<u8>>,
    server_cert: Vec<u8>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsConn {
    async fn open(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsConn> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let server_cert = session.peer_certificates().unwrap()[0].as_ref().to_vec();
        let io = TokioIo::new(tls);
        let (sender, task) = if alpn.as_deref() == Some(b"h2") {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            (
                Sender::H2(s),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            (
                Sender::H1(s),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        };
        Ok(TlsConn {
            sender,
            alpn,
            server_cert,
            task,
        })
    }

    /// `GET path`: the status, version and body, or the error.
    async fn get(
        &mut self,
        path: &str,
    ) -> Result<(StatusCode, Version, bytes::Bytes), hyper::Error> {
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                let req = Request::get(path)
                    .header(http::header::HOST, "localhost")
                    .body(http_body_util::Empty::new())
                    .unwrap();
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                let req = Request::get(format!("https://localhost{path}"))
                    .version(Version::HTTP_2)
                    .body(http_body_util::Empty::new())
                    .unwrap();
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((parts.status, parts.version, body))
    }
}

/// The mixed app over TLS with `tls`.
async fn serve(tls: TlsConfig) -> amphi::Serving {
    init_tracing();
    within(
        "binding",
        Server::new(app::router()).tls(tls).bind("127.0.0.1:0"),
    )
    .await
    .expect("the TLS server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_both_kinds_over_http1_and_http2_chosen_by_alpn() {
    let dir = TempDir::new("alpn");
    let ca = Ca::new("test ca");
    let (cert, key) = ca.issue("server", false).write(&dir.0);
    let serving = serve(TlsConfig::new(cert, key)).await;
    let addr = serving.local_addr().unwrap();
    let cases: [(&[&[u8]], Version); 4] = [
        (&[b"h2"], Version::HTTP_2),
        (&[b"http/1.1"], Version::HTTP_11),
        (&[b"h2", b"http/1.1"], Version::HTTP_2),
        // No ALPN at all: HTTP/1.1, as a plain client speaks it.
        (&[], Version::HTTP_11),
    ];
    for (alpn, version) in cases {
        let mut conn = within(
            "the handshake",
            TlsConn::open(addr, client(&[ca.der()], alpn, None)),
        )
        .await
        .expect("the handshake succeeds");
        let chosen = conn.alpn.clone();
        for mount in ["/sync", "/async"] {
            let (status, got, body) = within("GET /info", conn.get(&format!("{mount}/info")))
                .await
                .expect("the request succeeds");
            assert_eq!(status, StatusCode::OK, "{alpn:?} {mount}");
            assert_eq!(got, version, "{alpn:?} (ALPN chose {chosen:?}) {mount}");
            let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(info["scheme"], "https", "{alpn:?} {mount}: {info}");
            assert_eq!(info["client_cert_bytes"], serde_json::Value::Null);
            assert!(
                info["client"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{info}"
            );
        }
        let (status, _, body) = conn.get("/async/hello").await.unwrap();
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"hello from async"[..])
        );
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_reload_under_load_fails_no_request_and_keeps_connections() {
    let dir = TempDir::new("reload");
    let (old_ca, new_ca) = (Ca::new("old ca"), Ca::new("new ca"));
    let old = old_ca.issue("old server", false);
    let new = new_ca.issue("new server", false);
    let (cert, key) = old.write(&dir.0);
    let serving = serve(TlsConfig::new(cert, key)).await;
    let addr = serving.local_addr().unwrap();
    let handle = serving.tls().expect("serving TLS").clone();
    assert_eq!(handle.certificate_chain()[0], old.der().as_ref());
    let config = client(&[old_ca.der(), new_ca.der()], &[b"h2", b"http/1.1"], None);

    // A keep-alive connection of each protocol, opened on the old certificate.
    let mut kept = Vec::new();
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let c = TlsConn::open(addr, client(&[old_ca.der()], &[alpn], None))
            .await
            .unwrap();
        assert_eq!(c.server_cert, old.der().as_ref());
        kept.push(c);
    }

    // Load: clients making a new connection (a new handshake) for every few requests, until
    // told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    let new_der = new.der();
    for i in 0..4 {
        let (stop, ok, failed, config) = (stop.clone(), ok.clone(), failed.clone(), config.clone());
        let new_der = new_der.clone();
        load.push(tokio::spawn(async move {
            let path = if i % 2 == 0 {
                "/sync/hello"
            } else {
                "/async/hello"
            };
            let mut seen_new = false;
            // Bounded: the test stops it long before, or it gives up.
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let mut conn = match TlsConn::open(addr, config.clone()).await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("handshake failed: {e}");
                        failed.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                };
                seen_new |= conn.server_cert == new_der.as_ref();
                for _ in 0..3 {
                    match conn.get(path).await {
                        Ok((StatusCode::OK, _, _)) => ok.fetch_add(1, Ordering::SeqCst),
                        other => {
                            eprintln!("request failed: {other:?}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            }
            seen_new
        }));
    }
    eventually("load before the reload", || ok.load(Ordering::SeqCst) >= 50).await;
    let (cert, key) = new.write(&dir.0);
    assert!(cert.exists() && key.exists());
    handle.reload().expect("the new pair loads");
    assert_eq!(handle.certificate_chain()[0], new.der().as_ref());
    let at_reload = ok.load(Ordering::SeqCst);
    eventually("load after the reload", || {
        ok.load(Ordering::SeqCst) >= at_reload + 100
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut some_saw_new = false;
    for l in load {
        some_saw_new |= within("a load client", l).await.unwrap();
    }
    assert!(
        some_saw_new,
        "handshakes after the reload get the new certificate"
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request failed");
    // The connections opened before the reload carry on with their certificate.
    for mut c in kept {
        let (status, _, _) = within("a kept connection", c.get("/async/hello"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let fresh = TlsConn::open(addr, client(&[new_ca.der()], &[], None))
        .await
        .unwrap();
    assert_eq!(fresh.server_cert, new.der().as_ref());

    // A broken pair is refused and the server keeps what it has.
    std::fs::write(dir.0.join("key.pem"), old.key.serialize_pem()).unwrap();
    let err = handle
        .reload()
        .expect_err("a key that does not match its certificate");
    assert!(err.is_tls(), "{err}");
    std::fs::write(dir.0.join("cert.pem"), "not pem").unwrap();
    assert!(handle.reload().expect_err("no certificate").is_tls());
    let still = TlsConn::open(addr, client(&[new_ca.der()], &[], None))
        .await
        .unwrap();
    assert_eq!(still.server_cert, new.der().as_ref());
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_known_clients_and_refuses_the_others() {
    let dir = TempDir::new("mtls");
    let server_ca = Ca::new("server ca");
    let (cert, key) = server_ca.issue("server", false).write(&dir.0);
    let clients_ca = Ca::new("clients ca");
    let bundle = dir.0.join("clients.pem");
    std::fs::write(&bundle, clients_ca.cert.pem()).unwrap();
    let known = clients_ca.issue("known client", true);
    let stranger = Ca::new("other ca").issue("stranger", true);

    for auth in [ClientAuth::Required, ClientAuth::Optional] {
        let serving = serve(TlsConfig::new(&cert, &key).client_ca(&bundle, auth)).await;
        let addr = serving.local_addr().unwrap();
        for alpn in [&b"h2"[..], b"http/1.1"] {
            // A client the bundle signed: served, its certificate handed to both kinds.
            let mut conn = TlsConn::open(addr, client(&[server_ca.der()], &[alpn], Some(&known)))
                .await
                .expect("a known client's handshake");
            for mount in ["/sync", "/async"] {
                let (status, _, body) = conn.get(&format!("{mount}/info")).await.unwrap();
                assert_eq!(status, StatusCode::OK);
                let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(
                    info["client_cert_bytes"],
                    known.der().as_ref().len(),
                    "{auth:?} {mount}: {info}"
                );
            }
            // A certificate from another CA: refused, whatever the mode. Under TLS 1.3 the
            // client may finish its side first; the refusal then ends the first request.
            let refused =
                match TlsConn::open(addr, client(&[server_ca.der()], &[alpn], Some(&stranger)))
                    .await
                {
                    Err(_) => true,
                    Ok(mut c) => within("the refused request", c.get("/async/hello"))
                        .await
                        .is_err(),
                };
            assert!(refused, "{auth:?}: a stranger's certificate is refused");
            // No certificate: refused when required, served without one when optional.
            let anonymous =
                match TlsConn::open(addr, client(&[server_ca.der()], &[alpn], None)).await {
                    Err(_) => None,
                    Ok(mut c) => within("an anonymous request", c.get("/sync/info"))
                        .await
                        .ok(),
                };
            match auth {
                ClientAuth::Required => assert!(anonymous.is_none(), "no certificate, no service"),
                _ => {
                    let (status, _, body) = anonymous.expect("optional: served");
                    assert_eq!(status, StatusCode::OK);
                    let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(info["client_cert_bytes"], serde_json::Value::Null);
                }
            }
        }
        serving.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_handshake_timeout_and_plain_http_is_refused() {
    let dir = TempDir::new("timeout");
    let ca = Ca::new("ca");
    let (cert, key) = ca.issue("server", false).write(&dir.0);
    let serving =
        serve(TlsConfig::new(cert, key).handshake_timeout(Duration::from_millis(300))).await;
    let addr = serving.local_addr().unwrap();
    // Says nothing: closed by the server, with nothing sent.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = within(
        "the server to close a silent connection",
        silent.read(&mut buf),
    )
    .await
    .unwrap_or(0);
    assert_eq!(n, 0, "nothing is sent before a handshake");
    // Plain HTTP on the TLS port: no HTTP response, the connection closes.
    let (out, closed) = raw_exchange(
        addr,
        b"GET /async/hello HTTP/1.1\r\nhost: x\r\n\r\n",
        PATIENCE,
    )
    .await;
    assert!(closed, "closed");
    assert!(
        !out.starts_with(b"HTTP/"),
        "no plain answer: {:?}",
        String::from_utf8_lossy(&out)
    );
    // The server is fine.
    let mut ok = TlsConn::open(addr, client(&[ca.der()], &[], None))
        .await
        .unwrap();
    assert_eq!(ok.get("/async/hello").await.unwrap().0, StatusCode::OK);
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificate_files_fail_the_bind_as_tls_errors() {
    let dir = TempDir::new("bad");
    let ca = Ca::new("ca");
    let leaf = ca.issue("server", false);
    let (cert, key) = leaf.write(&dir.0);
    let other_key = dir.0.join("other-key.pem");
    std::fs::write(&other_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let empty = dir.0.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    for (cert, key) in [
        (dir.0.join("missing.pem"), key.clone()),
        (cert.clone(), dir.0.join("missing.pem")),
        (empty.clone(), key.clone()),
        (cert.clone(), empty.clone()),
        (cert.clone(), other_key.clone()),
    ] {
        let err = Server::new(app::router())
            .tls(TlsConfig::new(&cert, &key))
            .bind("127.0.0.1:0")
            .await
            .expect_err("unusable files");
        assert!(err.is_tls(), "{cert:?} {key:?}: {err}");
    }
    let err = Server::new(app::router())
        .tls(TlsConfig::new(&cert, &key).client_ca(&empty, ClientAuth::Required))
        .bind("127.0.0.1:0")
        .await
        .expect_err("an empty client CA bundle");
    assert!(err.is_tls(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mixed_binary_serves_https_and_reloads_its_certificate_on_sighup() {
    let dir = TempDir::new("sighup");
    let (old_ca, new_ca) = (Ca::new("old ca"), Ca::new("new ca"));
    let old = old_ca.issue("old", false);
    let new = new_ca.issue("new", false);
    let (cert, key) = old.write(&dir.0);
    let mut child = tokio::process::Command::new(mixed_binary())
        .arg("--bind")
        .arg("127.0.0.1:0")
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting mixed");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within("mixed to listen", stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    let addr: SocketAddr = line
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .unwrap();
    let config = client(&[old_ca.der(), new_ca.der()], &[b"h2"], None);
    let mut kept = TlsConn::open(addr, config.clone()).await.unwrap();
    assert_eq!(kept.server_cert, old.der().as_ref());
    assert_eq!(kept.alpn.as_deref(), Some(&b"h2"[..]));
    let (_, _, body) = kept.get("/sync/info").await.unwrap();
    let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(info["scheme"], "https");

    new.write(&dir.0);
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    // The reload is asynchronous to the signal: new handshakes get the new certificate soon.
    within("a handshake with the new certificate", async {
        loop {
            let c = TlsConn::open(addr, config.clone()).await.unwrap();
            if c.server_cert == new.der().as_ref() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        kept.get("/async/hello").await.unwrap().0,
        StatusCode::OK,
        "the old connection lives on"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP does not end the process"
    );
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = within("mixed to exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}
