//! Tests of one integration-test binary run in parallel threads of one process. A test that
//! changes what the others of its binary use at the same time (resets or provisions the
//! testbed's hosts, restarts a broker) takes the component **exclusively**; the others take it
//! **shared**. When each feature was its own binary, cargo ran the binaries one after the other;
//! this keeps that where it matters, and the rest parallel.
//!
//! ```ignore
//! let _hosts = component::exclusive();            // a #[test]
//! let _brokers = component::shared_async().await; // a #[tokio::test]
//! ```

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static COMPONENT: RwLock<()> = RwLock::const_new(());

/// Shared use, from a synchronous test (not inside a Tokio runtime).
pub fn shared() -> RwLockReadGuard<'static, ()> {
    COMPONENT.blocking_read()
}

/// Exclusive use, from a synchronous test (not inside a Tokio runtime).
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    COMPONENT.blocking_write()
}

/// Shared use, from an async test.
pub async fn shared_async() -> RwLockReadGuard<'static, ()> {
    COMPONENT.read().await
}

/// Exclusive use, from an async test.
pub async fn exclusive_async() -> RwLockWriteGuard<'static, ()> {
    COMPONENT.write().await
}
