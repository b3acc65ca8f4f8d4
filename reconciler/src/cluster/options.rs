//! How the cluster side runs (concurrency, pruning, waiting) and how it reports progress.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::manifest::ObjectKey;

/// Default number of API requests in flight.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// One progress event of [`super::apply_plan`], [`super::wait_ready`] and [`super::down`].
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub key: ObjectKey,
    /// `created`, `configured`, `replaced`, `deleted`, `ready`, `waiting: …`, `failed: …`.
    pub what: String,
}

/// Progress sink: called from the executing task for every event.
pub type ProgressFn = Arc<dyn Fn(&Event) + Send + Sync>;

/// How [`super::apply_plan`] runs (and waits).
#[derive(Clone)]
pub struct ClusterApplyOptions {
    /// Take ownership of fields other managers own (`--force-conflicts`).
    pub force_conflicts: bool,
    /// Delete objects of this inventory that are no longer desired (default true).
    pub prune: bool,
    /// Wait for workloads to become ready (`--wait`), with this timeout.
    pub wait: Option<Duration>,
    /// API requests in flight within one phase.
    pub concurrency: usize,
    pub progress: Option<ProgressFn>,
}

impl Default for ClusterApplyOptions {
    fn default() -> Self {
        ClusterApplyOptions {
            force_conflicts: false,
            prune: true,
            wait: None,
            concurrency: DEFAULT_CONCURRENCY,
            progress: None,
        }
    }
}

impl std::fmt::Debug for ClusterApplyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterApplyOptions")
            .field("force_conflicts", &self.force_conflicts)
            .field("prune", &self.prune)
            .field("wait", &self.wait)
            .field("concurrency", &self.concurrency)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Report `what` happened to `key` to the progress sink, if any.
pub(super) fn emit(opts: &ClusterApplyOptions, key: &ObjectKey, what: impl Into<String>) {
    if let Some(p) = &opts.progress {
        p(&Event {
            key: key.clone(),
            what: what.into(),
        });
    }
}
