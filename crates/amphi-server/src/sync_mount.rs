//! How the server runs the sync handlers it mounts: through `SyncToAsync` on its pool.

use std::sync::Arc;

use amphi_core::SyncHandler;
use amphi_sync_to_async::{BlockingPool, SyncToAsync};

/// A mounted sync handler. Requests whose body the server holds already (every GET) go
/// through [`SyncToAsync::call_http`], the rest through its `AsyncHandler` side, which
/// streams the body in.
pub(crate) type SyncMount = Arc<SyncToAsync<Arc<dyn SyncHandler>>>;

/// Mounts `handler`, taking one slot of `pool` per request.
pub(crate) fn mount(handler: Arc<dyn SyncHandler>, pool: &BlockingPool) -> SyncMount {
    Arc::new(SyncToAsync::new(handler).pool(pool.clone()))
}
