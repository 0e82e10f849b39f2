//! Proxy headers end to end, both handler kinds over both protocols: honoured from a trusted
//! proxy (client, scheme, host; `Forwarded` before `X-Forwarded-*`; the walk from the right
//! skipping trusted hops), ignored and passed through from any other peer (a property test
//! over spoofed headers), a unix-socket proxy, and the external prefix (`--root-path`).

mod support;

#[path = "../examples/mixed/app.rs"]
#[allow(dead_code)]
mod app;

use http::{Method, StatusCode};
use proptest::prelude::*;
use support::*;

async fn start(flags: &[&str]) -> amphi::Serving {
    init_tracing();
    let mut args = vec!["--bind", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    let opts = app::Options::parse(args.into_iter().map(Into::into)).expect("valid flags");
    within("binding", opts.server().bind(opts.bind.as_str()))
        .await
        .expect("the mixed app starts")
}

/// `GET path` with `headers`, as the app's `/info` saw it.
async fn info(conn: &mut Conn, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = conn.request(Method::GET, path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let reply = conn.fetch(req.body(empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

/// The `Host` the handler saw: the header over HTTP/1.1, the URI's authority over HTTP/2.
fn host(info: &serde_json::Value) -> &str {
    info["host"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_sets_client_scheme_and_host_for_both_kinds() {
    let serving = start(&["--trusted-proxies", "127.0.0.1, 10.0.0.0/8"]).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for mount in ["/sync", "/async"] {
            let path = format!("{mount}/info");
            // nginx's headers, behind another trusted hop: the client is the first hop from
            // the right that is not trusted; what is left of it was written by the client.
            let i = info(
                &mut conn,
                &path,
                &[
                    ("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.1.2.3"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-host", "app.example.com"),
                ],
            )
            .await;
            assert_eq!(i["client"], "203.0.113.7:0", "{proto:?} {mount}: {i}");
            assert_eq!(i["scheme"], "https", "{proto:?} {mount}");
            assert_eq!(host(&i), "app.example.com", "{proto:?} {mount}: {i}");
            // The headers themselves reach the handler.
            let headers = i["headers"].to_string();
            assert!(
                headers.contains("198.51.100.1, 203.0.113.7, 10.1.2.3"),
                "{headers}"
            );

            // `Forwarded` wins over `X-Forwarded-*`, and carries a port.
            let i = info(
                &mut conn,
                &path,
                &[
                    (
                        "forwarded",
                        r#"for="[2001:db8::17]:4711";proto=https;host=fwd.example, for=10.0.0.1;proto=http"#,
                    ),
                    ("x-forwarded-for", "192.0.2.99"),
                    ("x-forwarded-proto", "http"),
                ],
            )
            .await;
            assert_eq!(i["client"], "[2001:db8::17]:4711", "{proto:?} {mount}: {i}");
            assert_eq!(i["scheme"], "https");
            assert_eq!(host(&i), "fwd.example");

            // Without proxy headers the connection's own address stands.
            let i = info(&mut conn, &path, &[]).await;
            assert_eq!(i["client"], conn.local_addr.to_string());
            assert_eq!(i["scheme"], "http");
        }
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_s_proxy_headers_change_nothing_and_pass_through() {
    // Loopback clients connect from 127.0.0.1, which is not in the list.
    let serving = start(&["--trusted-proxies", "127.0.0.2, 10.0.0.0/8, unix"]).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for mount in ["/sync", "/async"] {
            let i = info(
                &mut conn,
                &format!("{mount}/info"),
                &[
                    ("x-forwarded-for", "203.0.113.7"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-host", "evil.example"),
                    ("forwarded", "for=203.0.113.8;proto=https;host=evil.example"),
                ],
            )
            .await;
            assert_eq!(
                i["client"],
                conn.local_addr.to_string(),
                "{proto:?} {mount}"
            );
            assert_eq!(i["scheme"], "http");
            assert_ne!(host(&i), "evil.example");
            let headers = i["headers"].to_string();
            assert!(
                headers.contains("for=203.0.113.8;proto=https;host=evil.example"),
                "{headers}"
            );
        }
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_on_a_unix_socket_is_trusted_as_unix() {
    init_tracing();
    let dir = std::env::temp_dir().join(format!("amphi-proxy-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (list, trusted) in [("unix", true), ("127.0.0.1", false)] {
        let path = dir.join(format!("{trusted}.sock"));
        let opts = app::Options::parse(["--trusted-proxies".into(), list.into()]).unwrap();
        let serving = opts.server().bind_unix(&path).await.unwrap();
        for mount in ["/sync", "/async"] {
            let request = format!(
                "GET {mount}/info HTTP/1.1\r\nhost: inner\r\nx-forwarded-for: 203.0.113.7\r\nx-forwarded-proto: https\r\nconnection: close\r\n\r\n"
            );
            let out = within("a request over the unix socket", async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
                s.write_all(request.as_bytes()).await.unwrap();
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.unwrap();
                out
            })
            .await;
            let (responses, _) = parse_responses(&out, false);
            assert_eq!(responses.len(), 1, "{}", String::from_utf8_lossy(&out));
            let i: serde_json::Value = serde_json::from_slice(&responses[0].body).unwrap();
            if trusted {
                assert_eq!(i["client"], "203.0.113.7:0", "{mount}: {i}");
                assert_eq!(i["scheme"], "https");
            } else {
                assert_eq!(i["client"], serde_json::Value::Null, "{mount}: {i}");
                assert_eq!(i["scheme"], "http");
            }
        }
        serving.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_prefix_goes_before_every_root_path() {
    let serving = start(&["--root-path", "/ext/app"]).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for mount in ["/sync", "/async"] {
            // The proxy strips the prefix; the app is told it, so that links it builds from
            // root_path + path are the ones the client used.
            let i = info(&mut conn, &format!("{mount}/info?x=1"), &[]).await;
            assert_eq!(i["root_path"], format!("/ext/app{mount}"), "{proto:?}: {i}");
            assert_eq!(i["path"], "/info");
            assert_eq!(i["raw_path"], format!("/ext/app{mount}/info"));
            assert_eq!(i["query_string"], "x=1");
        }
        // Routing is on the path as it arrived.
        assert_eq!(conn.get("/async/hello").await.status, StatusCode::OK);
        assert_eq!(
            conn.get("/ext/app/async/hello").await.status,
            StatusCode::NOT_FOUND
        );
    }
    serving.shutdown().await.unwrap();
}

/// One proxy header a client could send: name and value.
fn spoofed_header() -> impl Strategy<Value = (String, String)> {
    let name = prop::sample::select(vec![
        "x-forwarded-for",
        "X-Forwarded-For",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "Forwarded",
        "x-real-ip",
    ]);
    let atom = prop::sample::select(vec![
        "203.0.113.7",
        "127.0.0.1",
        "127.0.0.2",
        "10.0.0.1",
        "[::1]",
        "::1",
        "[2001:db8::1]:80",
        "unknown",
        "_hidden",
        "https",
        "HTTPS",
        "wss",
        "http",
        "evil.example",
        "evil.example:443",
        "for=203.0.113.9",
        "for=\"[2001:db8::2]:1\"",
        "proto=https",
        "host=evil.example",
        "by=10.0.0.1",
        "",
        ";",
        ",",
        "=",
        "\"",
    ]);
    let value = prop::collection::vec(atom, 1..6).prop_map(|parts| {
        let mut s = String::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                s.push_str([", ", ";", ",", " "][i % 4]);
            }
            s.push_str(p);
        }
        s
    });
    (name.prop_map(str::to_owned), value)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever proxy headers an untrusted peer sends, its requests keep the connection's
    /// client, the connection's scheme, and the host it asked for.
    #[test]
    fn an_untrusted_peer_can_never_change_client_scheme_or_host(
        headers in prop::collection::vec(spoofed_header(), 0..6),
        h2 in any::<bool>(),
        sync in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            // Trusted: everything but the loopback address the test connects from.
            let serving = start(&["--trusted-proxies", "127.0.0.2, 10.0.0.0/8, ::1, 203.0.113.0/24, unix"]).await;
            let addr = serving.local_addr().unwrap();
            let proto = if h2 { Proto::H2 } else { Proto::H1 };
            let mut conn = Conn::open(addr, proto).await;
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let path = if sync { "/sync/info" } else { "/async/info" };
            let i = info(&mut conn, path, &pairs).await;
            assert_eq!(i["client"], conn.local_addr.to_string(), "{headers:?}: {i}");
            assert_eq!(i["scheme"], "http", "{headers:?}");
            assert_eq!(host(&i), addr.to_string(), "{headers:?}");
            serving.shutdown().await.unwrap();
        });
    }

    /// Behind a trusted proxy that appends the real client (as nginx's
    /// `$proxy_add_x_forwarded_for` does), nothing the client wrote to the left of it can
    /// take its place.
    #[test]
    fn a_client_behind_a_trusted_proxy_cannot_prepend_its_way_to_another_address(
        spoofed in prop::collection::vec(
            prop::sample::select(vec!["1.2.3.4", "127.0.0.1", "10.0.0.1", "garbage", "unknown", "[::1]:1", ""]),
            0..5,
        ),
        h2 in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let serving = start(&["--trusted-proxies", "127.0.0.1, 10.0.0.0/8"]).await;
            let addr = serving.local_addr().unwrap();
            let proto = if h2 { Proto::H2 } else { Proto::H1 };
            let mut conn = Conn::open(addr, proto).await;
            let mut hops = spoofed.clone();
            hops.push("198.51.100.23");
            let xff = hops.join(", ");
            let i = info(&mut conn, "/async/info", &[("x-forwarded-for", &xff)]).await;
            assert_eq!(i["client"], "198.51.100.23:0", "{xff}: {i}");
            serving.shutdown().await.unwrap();
        });
    }
}
