//! Lifespan state: values set at startup and seen by every request.

use std::fmt;
use std::sync::Arc;

use crate::context::TypedMap;

/// App-wide state, set by handlers during lifespan startup and shared into every request
/// scope (ASGI's `state`).
///
/// Clones share one typed map. The server hands the same `State` to the lifespan scope and to
/// every request scope, so what a handler inserts at startup every request can read.
///
/// # Examples
///
/// ```
/// use amphi_core::State;
///
/// #[derive(Clone)]
/// struct DbUrl(String);
///
/// let state = State::new();
/// state.insert(DbUrl("postgres://localhost/app".into()));
/// let per_request = state.clone();
/// assert_eq!(per_request.get::<DbUrl>().unwrap().0, "postgres://localhost/app");
/// ```
#[derive(Clone, Default)]
pub struct State(Arc<TypedMap>);

impl State {
    /// Empty state.
    pub fn new() -> State {
        State::default()
    }

    /// Stores `value`, returning the value of the same type it replaced.
    pub fn insert<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        self.0.insert(value)
    }

    /// A clone of the value of type `T`, if one is set.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.0.get()
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.0.remove()
    }

    /// The value of type `T`, inserting `f()` first if there is none.
    ///
    /// `f` runs without the state's lock held, so it may read this state itself; if another
    /// thread stored a `T` meanwhile, that value is kept and returned, and `f`'s is dropped.
    pub fn get_or_insert_with<T: Clone + Send + Sync + 'static>(&self, f: impl FnOnce() -> T) -> T {
        self.0.get_or_insert_with(f)
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("values", &self.0.len())
            .finish()
    }
}
