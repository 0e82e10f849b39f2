//! Lifespan state: values set at startup and seen by every request.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::context::lock_values;

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
pub struct State(Arc<Mutex<http::Extensions>>);

impl State {
    /// Empty state.
    pub fn new() -> State {
        State::default()
    }

    fn values(&self) -> MutexGuard<'_, http::Extensions> {
        lock_values(&self.0)
    }

    /// Stores `value`, returning the value of the same type it replaced.
    pub fn insert<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        self.values().insert(value)
    }

    /// A clone of the value of type `T`, if one is set.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.values().get::<T>().cloned()
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.values().remove::<T>()
    }

    /// The value of type `T`, inserting `f()` first if there is none.
    ///
    /// `f` runs without the state's lock held, so it may read this state itself; if another
    /// thread stored a `T` meanwhile, that value is kept and returned, and `f`'s is dropped.
    pub fn get_or_insert_with<T: Clone + Send + Sync + 'static>(&self, f: impl FnOnce() -> T) -> T {
        if let Some(value) = self.get::<T>() {
            return value;
        }
        let value = f();
        self.values().get_or_insert_with(|| value).clone()
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("values", &self.values().len())
            .finish()
    }
}
