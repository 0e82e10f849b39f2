//! How the server runs the sync handlers it mounts: through `SyncToAsync` on its pool.

use std::sync::Arc;

use amphi_core::{AsyncHandler, SyncHandler};
use amphi_sync_to_async::{BlockingPool, SyncToAsync};

/// Adapts each sync mount to an async handler that takes a slot of `pool` per request.
pub(crate) fn adapter(
    pool: BlockingPool,
) -> impl Fn(Arc<dyn SyncHandler>) -> Arc<dyn AsyncHandler> {
    move |handler| Arc::new(SyncToAsync::new(handler).with_pool(pool.clone()))
}
