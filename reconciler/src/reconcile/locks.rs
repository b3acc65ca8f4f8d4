//! The locks `apply` and `rollback` hold while they change anything.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::prepare::Prepared;
use crate::host::ssh::SshHost;
use crate::lock::{self, LocalLock};

/// The locks `apply` holds while it changes anything: the local one
/// (`<state dir>/reconcile.lock`) and the one on the master.
pub(super) struct Locks {
    holder: String,
    /// Released when dropped, after the master's.
    _local: LocalLock,
    /// The master and its SSH user; None when the master is unreachable: nothing can converge
    /// then anyway (workers depend on it), and the plan reports it.
    pub(super) remote: Option<(Arc<SshHost>, String)>,
}

impl Locks {
    pub(super) async fn acquire(p: &Prepared, stale_after: Duration) -> anyhow::Result<Locks> {
        let master = p
            .inventory
            .masters()
            .next()
            .and_then(|m| match p.hosts.get(&m.name) {
                Some(Ok(h)) => Some((h.clone(), m.ssh.user.clone())),
                _ => None,
            });
        Locks::take(&p.state_dir, master, stale_after).await
    }

    /// The local lock in `state_dir`, then the master's (when connected).
    pub(super) async fn take(
        state_dir: &Path,
        master: Option<(Arc<SshHost>, String)>,
        stale_after: Duration,
    ) -> anyhow::Result<Locks> {
        let holder = lock::holder_id();
        let local = LocalLock::acquire(&state_dir.join("reconcile.lock"), &holder)?;
        if let Some((h, user)) = &master {
            lock::acquire_remote(h.as_ref(), user, &holder, stale_after).await?;
        }
        Ok(Locks {
            holder,
            _local: local,
            remote: master,
        })
    }

    pub(super) async fn release(self) {
        if let Some((h, user)) = &self.remote {
            lock::release_remote(h.as_ref(), user, &self.holder).await;
        }
    }
}
