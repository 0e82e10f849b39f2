//! [`RequestExt`]: what an [`async_fn`](crate::async_fn) request carries, read by name.

use crate::info::DEFAULT_INFO;
use crate::{Context, RequestInfo, State};

mod sealed {
    pub trait Sealed {}
    impl<B> Sealed for http::Request<B> {}
}

/// What the request an [`async_fn`](crate::async_fn) handler gets carries in its extensions,
/// read by name: the [`RequestInfo`] (mount, peers, scheme), the request [`Context`], the app
/// [`State`], and from the info the mount prefix and the path below it.
///
/// It is implemented for every `http::Request<B>` (sealed: the methods may grow), so it also
/// reads a request built by hand, in a test or in front of a handler. `async_fn` always puts
/// all three values in; on a request that lacks one:
///
/// - [`info`](RequestExt::info) reads a default [`RequestInfo`] (plain http, no addresses,
///   mounted at the root), so [`root_path`](RequestExt::root_path) is `""` and
///   [`path`](RequestExt::path) is the URI's whole path;
/// - [`context`](RequestExt::context) and [`state`](RequestExt::state) return `None`: a
///   stand-in would be a fresh map that nothing else sees, or one shared by every such
///   request, and either would hide the mistake.
///
/// None of them panics.
///
/// # Examples
///
/// ```
/// use amphi_core::{async_fn, AsyncRequest, RequestExt};
///
/// #[derive(Clone)]
/// struct Greeting(&'static str);
///
/// let hello = async_fn(|req: AsyncRequest| async move {
///     let greeting = req.state().and_then(|s| s.get::<Greeting>()).map_or("hello", |g| g.0);
///     format!("{greeting} from {} below {:?}", req.path(), req.root_path())
/// });
///
/// # futures_executor::block_on(async {
/// let resp = amphi_core::testing::call(&std::sync::Arc::new(hello), http::Request::get("/you").body(Default::default()).unwrap()).await.unwrap();
/// assert_eq!(resp.body, r#"hello from /you below """#);
/// # });
/// ```
pub trait RequestExt: sealed::Sealed {
    /// The request info (mount, peers, scheme); a default one when the request has none.
    fn info(&self) -> &RequestInfo;

    /// The request context, `None` when the request has none.
    fn context(&self) -> Option<&Context>;

    /// The app state, `None` when the request has none.
    fn state(&self) -> Option<&State>;

    /// The mount prefix (`SCRIPT_NAME`, ASGI's `root_path`), `""` at the root or without info.
    fn root_path(&self) -> &str;

    /// The path below the mount prefix (`PATH_INFO`), percent-encoded as it arrived; the whole
    /// path without info.
    fn path(&self) -> &str;
}

impl<B> RequestExt for http::Request<B> {
    fn info(&self) -> &RequestInfo {
        self.extensions()
            .get::<RequestInfo>()
            .unwrap_or(&DEFAULT_INFO)
    }

    fn context(&self) -> Option<&Context> {
        self.extensions().get::<Context>()
    }

    fn state(&self) -> Option<&State> {
        self.extensions().get::<State>()
    }

    fn root_path(&self) -> &str {
        self.info().root_path()
    }

    fn path(&self) -> &str {
        self.info().path_below(self.uri().path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_request_reads_defaults_and_nones() {
        let req = http::Request::get("/a/b?q").body(()).unwrap();
        assert_eq!(req.root_path(), "");
        assert_eq!(req.path(), "/a/b");
        assert_eq!(req.info().scheme(), &http::uri::Scheme::HTTP);
        assert!(req.context().is_none());
        assert!(req.state().is_none());
    }

    #[test]
    fn the_extensions_are_read_back() {
        let mut req = http::Request::get("/api/x").body(()).unwrap();
        req.extensions_mut()
            .insert(RequestInfo::new().with_root_path("/api"));
        let context = Context::new();
        context.insert(7u32);
        req.extensions_mut().insert(context);
        let state = State::new();
        state.insert("app");
        req.extensions_mut().insert(state);
        assert_eq!(req.root_path(), "/api");
        assert_eq!(req.path(), "/x");
        assert_eq!(req.context().and_then(|c| c.get::<u32>()), Some(7));
        assert_eq!(req.state().and_then(|s| s.get::<&str>()), Some("app"));
    }
}
