//! `rollback`: the cluster back to a recorded revision, under the same locks as `apply`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::locks::Locks;
use super::phase::{PhaseError, PhaseResult};
use super::prepare::{Options, close, load_inventory, state_dir};
use crate::cluster::history::{self, History};
use crate::cluster::{self, ClusterApplyOptions};
use crate::host::ssh::SshHost;
use crate::manifest::ObjectKey;
use crate::progress::{self};
use crate::{kubeclient, output};

/// What `rollback` needs besides [`Options`] (whose inventory, SSH settings are used to take
/// the master's lock; no other host is contacted).
#[derive(Debug, Clone)]
pub struct RollbackOptions {
    /// The revision to return to; None: the previous applied one.
    pub to: Option<u32>,
    /// Kubeconfig instead of the inventory's.
    pub kubeconfig: Option<PathBuf>,
    pub lock_stale_after: Duration,
    /// Wait this long for the rolled-back workloads to be ready; None: do not wait.
    pub wait: Option<Duration>,
    /// How progress shows on stderr (JSON lines with `-o json`).
    pub render: progress::Render,
}

/// Shows a rollback's plan and says whether to go on (`--yes`, or the operator's answer).
pub type ConfirmRollback<'a> = &'a (dyn Fn(&history::RollbackPlan) -> anyhow::Result<bool> + Sync);

/// How a `rollback` ended.
#[derive(Debug, serde::Serialize)]
pub struct RollbackOutcome {
    /// The revision returned to.
    pub target: u32,
    /// The revision recorded for the rollback; None when nothing had to change or it was not
    /// confirmed.
    pub revision: Option<u32>,
    /// The cluster part's summary (`cluster: N created, …`), or why nothing ran.
    pub summary: String,
    /// With `--wait`: ready, or what is not.
    #[serde(serialize_with = "super::phase::serialize_optional")]
    pub readiness: Option<PhaseResult>,
}

impl RollbackOutcome {
    pub fn ok(&self) -> bool {
        self.readiness.as_ref().is_none_or(|r| r.is_ok())
    }
}

/// `rollback`: the cluster back to a recorded revision. Loads the inventory only (today's
/// `services.yml` files play no part), takes the same locks as `apply` (refused while another
/// apply holds them), plans from the live cluster to the revision with the apply machinery,
/// shows that plan through `confirm`, applies it (server-side apply and prune) and records it as
/// a new revision. Host provisioning is not touched.
pub async fn rollback(
    o: &Options,
    r: &RollbackOptions,
    confirm: ConfirmRollback<'_>,
) -> anyhow::Result<RollbackOutcome> {
    let inv = load_inventory(&o.inventory)?;
    let kubeconfig = kubeclient::resolve_kubeconfig(r.kubeconfig.as_deref(), &inv.kubeconfig);
    let client = kubeclient::client_from(&kubeconfig).await?;
    let state_dir = state_dir(&inv.source);
    // The master's lock needs its SSH connection; without one, only the local lock is held
    // (the cluster may be reachable when SSH is not), and the operator is told.
    let master = match inv.masters().next() {
        Some(m) => match SshHost::connect(m, &o.ssh_options(&inv, &state_dir)).await {
            Ok(h) => Some((Arc::new(h), m.ssh.user.clone())),
            Err(e) => {
                eprintln!(
                    "warning: master {} unreachable over SSH ({e}); only the local lock is held",
                    m.name
                );
                None
            }
        },
        None => None,
    };
    let locks = Locks::take(&state_dir, master, r.lock_stale_after).await?;
    let result = async {
        let history = History::of(&client, &inv);
        let opts = ClusterApplyOptions {
            progress: Some(progress::cluster_lines(r.render)),
            ..ClusterApplyOptions::default()
        };
        let plan = history::plan_rollback(&client, &history, r.to, opts.concurrency).await?;
        let target = plan.target.number;
        if !plan.plan.has_changes() {
            confirm(&plan)?;
            return anyhow::Ok(RollbackOutcome {
                target,
                revision: None,
                summary: format!(
                    "nothing to roll back: the cluster already equals revision {target}"
                ),
                readiness: None,
            });
        }
        if !confirm(&plan)? {
            return anyhow::Ok(RollbackOutcome {
                target,
                revision: None,
                summary: "not confirmed: nothing changed".into(),
                readiness: None,
            });
        }
        let (report, number) =
            history::execute_rollback(&client, &history, &plan, None, inv.revision_history, &opts)
                .await?;
        let readiness = match r.wait {
            Some(t) => {
                let keys: Vec<ObjectKey> = plan
                    .target
                    .manifests()
                    .objects()
                    .filter(|o| matches!(o.key.kind.as_str(), "Deployment" | "Job"))
                    .map(|o| o.key.clone())
                    .collect();
                Some(
                    cluster::wait_ready(&client, &keys, t, &opts)
                        .await
                        .map(|()| format!("ready: {} workload object(s)", keys.len()))
                        .map_err(|e| PhaseError::NotReady(output::chain(&e))),
                )
            }
            None => None,
        };
        anyhow::Ok(RollbackOutcome {
            target,
            revision: Some(number),
            summary: format!(
                "{}; rolled back to revision {target}, recorded as revision {number}",
                report.summary()
            ),
            readiness,
        })
    }
    .await;
    let remote = locks.remote.clone();
    locks.release().await;
    if let Some((h, _)) = remote {
        close(BTreeMap::from([("master".to_string(), Ok(h))])).await;
    }
    result
}
