//! Property tests for the request -> scope/environ conversion: whatever path, query and
//! headers a client sends, over HTTP/1.1 or HTTP/2, to a sync or an async handler,
//!
//! - the request goes to the longest mount prefix that matches at a segment boundary (a 404
//!   inside a nested router that has no match), never elsewhere;
//! - `root_path` (SCRIPT_NAME) is that prefix and `path` (PATH_INFO) the rest:
//!   `root_path + path == raw_path`, `path` is empty or starts with `/`;
//! - `raw_path` and `query_string` are exactly what was sent (no decoding, no normalization of
//!   `.`, `..`, `//` or percent-escapes, valid or not);
//! - every header arrives with its value byte for byte (obs-text included), duplicates kept
//!   in order.
//!
//! The network cases run against one server over keep-alive connections; a pure property
//! checks the same splitting rule on `RequestInfo`/`HttpScope`/`SyncRequest` directly, with
//! many more cases.

mod support;

use std::net::SocketAddr;

use amphi::prelude::*;
use amphi::RequestInfo;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use support::*;

/// The mounts of the test server: (prefix, kind). `/n` is a nested router holding `/x` only.
const MOUNTS: &[(&str, &str)] = &[
    ("", "async"),
    ("/api", "sync"),
    ("/api/v1", "async"),
    ("/s", "sync"),
    ("/n/x", "async"),
    ("/a.b~c-d_e", "sync"),
];

fn describe(kind: &str, scope: &HttpScope) -> Value {
    let headers: Vec<Value> = scope
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-p-"))
        .map(|(n, v)| json!([n.as_str(), v.as_bytes()]))
        .collect();
    json!({
        "kind": kind,
        "root_path": scope.root_path(),
        "path": scope.path(),
        "raw_path": scope.raw_path(),
        "query_string": scope.query_string(),
        "method": scope.method().as_str(),
        "headers": headers,
    })
}

fn router() -> Router {
    let sync_echo = || {
        sync_fn(|req: SyncRequest| {
            let mut v = describe("sync", req.scope());
            // The environ view of the same request must agree with its scope.
            assert_eq!(req.root_path(), req.scope().root_path());
            assert_eq!(req.path(), req.scope().path());
            assert_eq!(req.query_string(), req.scope().query_string());
            v["environ_ok"] = json!(true);
            http::Response::new(SyncBody::from(v.to_string()))
        })
    };
    let async_echo = || {
        asgi_fn(|scope, _receive, mut send| async move {
            let Scope::Http(scope) = scope else {
                return Ok(());
            };
            let mut v = describe("async", &scope);
            v["environ_ok"] = json!(true);
            send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                .await?;
            send.send(Message::body(v.to_string(), false)).await
        })
    };
    Router::new()
        .mount_async("/", async_echo())
        .mount_sync("/api", sync_echo())
        .mount_async("/api/v1", async_echo())
        .mount_sync("/s", sync_echo())
        .nest("/n", Router::new().mount_async("/x", async_echo()))
        .mount_sync("/a.b~c-d_e", sync_echo())
}

/// The model: the mount a path goes to, `None` for the nested router's 404.
fn expected_mount(path: &str) -> Option<(&'static str, &'static str)> {
    let matches = |p: &str| match path.strip_prefix(p) {
        Some(rest) => p.is_empty() || rest.is_empty() || rest.starts_with('/'),
        None => false,
    };
    let best = MOUNTS
        .iter()
        .filter(|(p, _)| matches(p))
        .max_by_key(|(p, _)| p.len())
        .copied()
        .expect("the root mount matches everything");
    // Inside the nested router but not under its only mount: its 404.
    if best.0.is_empty() && matches("/n") {
        return None;
    }
    Some(best)
}

/// One path segment: mount names (to hit the mounts often), dot segments, empty segments,
/// and arbitrary pchar strings with valid and invalid percent-escapes.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["api", "v1", "s", "n", "x", "a.b~c-d_e", "apix", "v10"])
            .prop_map(str::to_owned),
        1 => prop::sample::select(vec!["", ".", "..", "%2F", "%2e%2E", "%zz", "%", "%e9%ff"])
            .prop_map(str::to_owned),
        3 => "[A-Za-z0-9._~!$&'()*+,;=:@-]{1,8}",
        1 => "([A-Za-z0-9]|%[0-9A-Fa-f]{2}){1,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..5), any::<bool>()).prop_map(|(segs, trailing)| {
        let mut p = String::new();
        for s in segs {
            p.push('/');
            p.push_str(&s);
        }
        if trailing || p.is_empty() {
            p.push('/');
        }
        p
    })
}

/// A query string, or none (`None` sends no `?`; `Some("")` sends a bare `?`).
fn query() -> impl Strategy<Value = Option<String>> {
    prop::option::of("([A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2}){0,20}")
}

/// Request headers: names of our own (hyper handles the framing ones itself), values with
/// visible ASCII, inner spaces and tabs, and obs-text bytes; duplicates allowed.
fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop::sample::select(vec!["x-p-a", "x-p-b", "x-p-trace-id", "x-p-c"])
        .prop_map(str::to_owned);
    let byte = prop_oneof![
        8 => 0x21u8..=0x7e,
        1 => Just(b' '),
        1 => Just(b'\t'),
        2 => 0x80u8..=0xff,
    ];
    let value = prop::collection::vec(byte, 0..24).prop_map(|mut v| {
        // A field value has no leading or trailing whitespace (the parser trims it).
        while v.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.remove(0);
        }
        while v.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.pop();
        }
        v
    });
    prop::collection::vec((name, value), 0..6)
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
    ])
}

/// Sends one generated request on `conn` and checks the scope the handler saw.
async fn check(
    conn: &mut Conn,
    method: Method,
    path: &str,
    query: &Option<String>,
    headers: &[(String, Vec<u8>)],
) -> Result<(), TestCaseError> {
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut req = conn.request(method.clone(), &target).body(empty()).unwrap();
    for (n, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    let r = conn.fetch(req).await;
    let what = format!("{:?} {method} {target}", conn.proto);
    let Some((mount, kind)) = expected_mount(path) else {
        prop_assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", what);
        return Ok(());
    };
    prop_assert_eq!(
        r.status,
        StatusCode::OK,
        "{}: {}",
        what,
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    prop_assert_eq!(&v["kind"], kind, "{}", &what);
    prop_assert_eq!(&v["root_path"], mount, "{}", &what);
    prop_assert_eq!(&v["raw_path"], path, "{}", &what);
    prop_assert_eq!(&v["path"], &path[mount.len()..], "{}", &what);
    let below = v["path"].as_str().unwrap();
    prop_assert!(below.is_empty() || below.starts_with('/'), "{}", &what);
    prop_assert_eq!(
        &v["query_string"],
        query.as_deref().unwrap_or(""),
        "{}",
        &what
    );
    prop_assert_eq!(&v["method"], method.as_str(), "{}", &what);
    prop_assert_eq!(&v["environ_ok"], true);
    let want: Vec<Value> = headers.iter().map(|(n, b)| json!([n, b])).collect();
    // Duplicates stay in the order sent; different names are grouped by the header map.
    let got = v["headers"].as_array().unwrap();
    for name in ["x-p-a", "x-p-b", "x-p-trace-id", "x-p-c"] {
        let of = |vals: &[Value]| -> Vec<Value> {
            vals.iter().filter(|h| h[0] == name).cloned().collect()
        };
        prop_assert_eq!(of(got), of(&want), "{}: header {}", &what, name);
    }
    Ok(())
}

#[test]
fn requests_become_the_scope_the_client_sent_over_both_protocols_and_kinds() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (serving, addr): (Serving, SocketAddr) = rt.block_on(async {
        init_tracing();
        let serving = within("binding", Server::new(router()).bind("127.0.0.1:0"))
            .await
            .unwrap();
        let addr = serving.local_addr().unwrap();
        (serving, addr)
    });
    // The runner takes a `Fn`: the connections live in cells.
    let h1 = std::cell::RefCell::new(rt.block_on(Conn::open(addr, Proto::H1)));
    let h2 = std::cell::RefCell::new(rt.block_on(Conn::open(addr, Proto::H2)));
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (method(), path(), query(), headers());
    let result = runner.run(&strategy, |(method, path, query, headers)| {
        let (mut h1, mut h2) = (h1.borrow_mut(), h2.borrow_mut());
        rt.block_on(async {
            if h1.is_closed() {
                *h1 = Conn::open(addr, Proto::H1).await;
            }
            check(&mut h1, method.clone(), &path, &query, &headers).await?;
            check(&mut h2, method, &path, &query, &headers).await
        })
    });
    rt.block_on(async { within("shutdown", serving.shutdown()).await.unwrap() });
    if let Err(e) = result {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    /// The splitting rule itself, on the types handlers see, without a socket: for any mount
    /// prefix and any path, PATH_INFO is the part after the prefix when the prefix matches
    /// at a segment boundary (and the whole path otherwise), and both views of a request
    /// (scope and environ) agree.
    #[test]
    fn root_path_splitting_on_the_request_types(
        mount in prop::collection::vec("[a-z0-9.%~-]{1,5}", 0..3),
        path in path(),
        query in query(),
    ) {
        let root: String = mount.iter().map(|s| format!("/{s}")).collect();
        let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        let info = RequestInfo::new().with_root_path(root.clone());
        let req = SyncRequest::new(http::Request::get(target.as_str()).body(BlockingBody::empty()).unwrap())
            .with_info(info.clone());
        let at_boundary = path.strip_prefix(root.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        let want = if at_boundary { &path[root.len()..] } else { path.as_str() };
        prop_assert_eq!(info.path_below(&path), want);
        prop_assert_eq!(req.path(), want);
        prop_assert_eq!(req.scope().path(), want);
        prop_assert_eq!(req.root_path(), root.as_str());
        prop_assert_eq!(req.scope().raw_path(), path.as_str());
        prop_assert_eq!(req.query_string(), query.as_deref().unwrap_or(""));
        if at_boundary {
            prop_assert_eq!(format!("{}{}", req.root_path(), req.path()), path.clone());
        }
    }
}
