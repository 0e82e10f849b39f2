//! Scopes, request info and app state: what a handler is told about the request it serves.

use amphi_core::{Context, HttpScope, LifespanScope, RequestInfo, Scope, State};
use http::{Method, Version};

#[derive(Clone, Debug, PartialEq)]
struct Pool(&'static str);

fn scope_of(request: http::Request<()>, info: RequestInfo) -> HttpScope {
    let (parts, ()) = request.into_parts();
    HttpScope::new(parts, info)
}

#[test]
fn an_http_scope_holds_what_wsgi_environ_and_asgi_scope_carry() {
    let request = http::Request::post("/app/api/items%20all?page=2&q=a%20b")
        .version(Version::HTTP_2)
        .header("x-one", "1")
        .header("x-one", "2")
        .body(())
        .unwrap();
    let info = RequestInfo::new()
        .with_root_path("/app")
        .with_scheme(http::uri::Scheme::HTTPS)
        .with_client(Some("192.0.2.1:40000".parse().unwrap()))
        .with_server(Some("192.0.2.2:443".parse().unwrap()));
    let scope = scope_of(request, info);
    assert_eq!(scope.method(), Method::POST);
    assert_eq!(scope.http_version(), "2");
    assert_eq!(scope.version(), Version::HTTP_2);
    assert_eq!(scope.root_path(), "/app");
    assert_eq!(
        scope.path(),
        "/api/items%20all",
        "PATH_INFO stays percent-encoded"
    );
    assert_eq!(scope.raw_path(), "/app/api/items%20all");
    assert_eq!(scope.query_string(), "page=2&q=a%20b");
    assert_eq!(scope.scheme(), "https");
    assert_eq!(scope.client().unwrap().port(), 40000);
    assert_eq!(scope.server().unwrap().port(), 443);
    let ones: Vec<_> = scope.headers().get_all("x-one").iter().collect();
    assert_eq!(ones, ["1", "2"], "duplicates preserved");
    assert_eq!(scope.parts().uri, scope.uri().clone());
    assert!(scope.subprotocols().is_empty());
}

#[test]
fn defaults_are_plain_http_at_the_root() {
    let scope = scope_of(
        http::Request::get("/x").body(()).unwrap(),
        RequestInfo::new(),
    );
    assert_eq!(scope.root_path(), "");
    assert_eq!(scope.path(), "/x");
    assert_eq!(scope.query_string(), "");
    assert_eq!(scope.scheme(), "http");
    assert_eq!(scope.client(), None);
    assert_eq!(scope.http_version(), "1.1");
    for (version, name) in [
        (Version::HTTP_09, "0.9"),
        (Version::HTTP_10, "1.0"),
        (Version::HTTP_11, "1.1"),
        (Version::HTTP_3, "3"),
    ] {
        let s = scope_of(
            http::Request::get("/").version(version).body(()).unwrap(),
            RequestInfo::new(),
        );
        assert_eq!(s.http_version(), name);
    }
}

#[test]
fn the_mount_prefix_respects_segment_boundaries() {
    let info = RequestInfo::new().with_root_path("/sync");
    assert_eq!(info.path_below("/sync/hello"), "/hello");
    assert_eq!(info.path_below("/sync"), "");
    assert_eq!(info.path_below("/synchronous"), "/synchronous");
    assert_eq!(info.path_below("/other"), "/other");
    let scope = scope_of(http::Request::get("/sync").body(()).unwrap(), info.clone());
    assert_eq!(scope.path(), "");
    assert_eq!(scope.info().root_path(), "/sync");
}

#[test]
fn subprotocols_are_split_and_trimmed_in_order() {
    let request = http::Request::get("/ws")
        .header("sec-websocket-protocol", "chat, superchat")
        .header("sec-websocket-protocol", " v2 ,,")
        .body(())
        .unwrap();
    let scope = scope_of(request, RequestInfo::new());
    assert_eq!(scope.subprotocols(), ["chat", "superchat", "v2"]);
}

#[test]
fn lifespan_state_is_the_state_every_request_sees() {
    let state = State::new();
    let lifespan = Scope::Lifespan(LifespanScope::new(state.clone()));
    // What the lifespan handler sets at startup...
    lifespan.state().insert(Pool("db pool"));
    // ...every request scope built with the same state reads.
    let request = Scope::Http(
        scope_of(
            http::Request::get("/").body(()).unwrap(),
            RequestInfo::new(),
        )
        .with_state(state.clone()),
    );
    assert_eq!(request.state().get::<Pool>(), Some(Pool("db pool")));
    assert_eq!(lifespan.kind(), "lifespan");
    assert_eq!(request.kind(), "http");
    assert!(lifespan.context().is_none());
    assert!(request.context().is_some());

    assert_eq!(state.remove::<Pool>(), Some(Pool("db pool")));
    assert_eq!(request.state().get::<Pool>(), None);
    assert_eq!(state.get_or_insert_with(|| Pool("lazy")), Pool("lazy"));
    assert!(format!("{state:?}").contains("values: 1"));
    assert!(LifespanScope::default().state().get::<Pool>().is_none());
}

#[test]
fn scope_context_is_the_one_given() {
    let ctx = Context::new();
    let scope = scope_of(
        http::Request::get("/").body(()).unwrap(),
        RequestInfo::new(),
    )
    .with_context(ctx.clone());
    assert!(scope.context().shares_values_with(&ctx));
    let ws = Scope::WebSocket(scope);
    assert_eq!(ws.kind(), "websocket");
    assert!(ws.context().unwrap().token().same_as(ctx.token()));
    let Scope::WebSocket(scope) = ws else {
        unreachable!()
    };
    let (parts, info, context, _state) = scope.into_parts();
    assert_eq!(parts.uri, "/");
    assert_eq!(info.root_path(), "");
    assert!(context.shares_values_with(&ctx));
    // A fresh scope gets a fresh context.
    let fresh = scope_of(
        http::Request::get("/").body(()).unwrap(),
        RequestInfo::new(),
    );
    assert!(!fresh.context().shares_values_with(&ctx));
}
