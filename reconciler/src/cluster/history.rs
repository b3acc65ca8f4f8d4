//! An installation's revisions in the cluster: one Secret per revision in the master's namespace
//! ([`crate::revision`] says what is in it). Recorded after every cluster apply that changed
//! something, read by `history`, `diff --revision` and `rollback`, pruned to the inventory's
//! `revisionHistory`. A rollback is planned with the same [`super::plan_with`] as an apply:
//! the recorded objects are desired, what this inventory owns beyond them is pruned.

use std::collections::BTreeMap;
use std::path::Path;

use aion_model::Inventory;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::{ClusterError, ClusterPlan};
use crate::manifest::Manifests;
use crate::revision::{self, Header, Origin, Revision, RevisionError, Status};

/// Errors of the history layer; each names the inventory, the revision or the Secret.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Revision(#[from] RevisionError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "inventory {inventory} has no revision {number} in namespace {namespace} (revisions: {existing})"
    )]
    NoSuchRevision {
        inventory: String,
        namespace: String,
        number: u32,
        existing: String,
    },
    #[error(
        "inventory {inventory} has no revision before its newest one to roll back to \
         (revisions: {existing}); name one with --to"
    )]
    NoPrevious { inventory: String, existing: String },
    #[error("cannot read {path} to record its hash: {source}")]
    Input {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> HistoryError {
    let what = what.into();
    move |source| HistoryError::Api { what, source }
}

/// Where an inventory keeps its revisions: the master's namespace (`default` unless its
/// `namespace` var says otherwise), where the installation's core runs.
pub fn namespace_of(inv: &Inventory) -> String {
    inv.masters()
        .next()
        .map(|m| m.vars.namespace.clone())
        .unwrap_or_else(|| "default".into())
}

/// sha256 of every input of `inv`: the inventory file and each host's `services.yml`.
pub fn input_hashes(inv: &Inventory) -> Result<BTreeMap<String, String>, HistoryError> {
    let hash = |p: &Path| {
        std::fs::read(p)
            .map(|b| revision::sha256_hex(&b))
            .map_err(|source| HistoryError::Input {
                path: p.display().to_string(),
                source,
            })
    };
    let mut out = BTreeMap::from([("inventory".to_string(), hash(&inv.source)?)]);
    for h in &inv.hosts {
        if let Some(s) = &h.services {
            out.insert(format!("services.yml of {}", h.name), hash(s)?);
        }
    }
    Ok(out)
}

/// The history of one inventory in one namespace.
pub struct History {
    api: Api<Secret>,
    inventory: String,
    namespace: String,
}

impl History {
    pub fn new(client: &kube::Client, inventory: &str, namespace: &str) -> History {
        History {
            api: Api::namespaced(client.clone(), namespace),
            inventory: inventory.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// The history of `inv` (in [`namespace_of`] it).
    pub fn of(client: &kube::Client, inv: &Inventory) -> History {
        History::new(client, &inv.name, &namespace_of(inv))
    }

    /// Every revision Secret (as JSON) with its header, oldest first. Nothing is decoded.
    pub async fn list(&self) -> Result<Vec<(Header, Value)>, HistoryError> {
        let lp = ListParams::default().labels(&revision::selector(&self.inventory));
        let list = self.api.list(&lp).await.map_err(api_err(format!(
            "list the revisions of inventory {} in namespace {}",
            self.inventory, self.namespace
        )))?;
        let mut out: Vec<(Header, Value)> = list
            .items
            .into_iter()
            .filter_map(|s| {
                let v = serde_json::to_value(&s).ok()?;
                Some((revision::header(&v)?, v))
            })
            .collect();
        out.sort_by_key(|(h, _)| h.number);
        Ok(out)
    }

    /// Every revision, oldest first, each decoded or with why it cannot be read (`history`
    /// lists the readable ones whatever the others hold).
    pub async fn decoded(
        &self,
    ) -> Result<Vec<(Header, Result<Revision, RevisionError>)>, HistoryError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .map(|(h, secret)| (h, revision::from_secret(&secret)))
            .collect())
    }

    fn existing(headers: &[(Header, Value)]) -> String {
        if headers.is_empty() {
            return "none".into();
        }
        headers
            .iter()
            .map(|(h, _)| h.number.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Revision `number`, decoded. `None`: the default rollback target (the newest applied one
    /// before the newest).
    pub async fn load(&self, number: Option<u32>) -> Result<Revision, HistoryError> {
        let all = self.list().await?;
        let headers: Vec<Header> = all.iter().map(|(h, _)| h.clone()).collect();
        let wanted = match number {
            Some(n) => n,
            None => revision::previous(&headers).ok_or_else(|| HistoryError::NoPrevious {
                inventory: self.inventory.clone(),
                existing: Self::existing(&all),
            })?,
        };
        let Some((_, secret)) = all.iter().find(|(h, _)| h.number == wanted) else {
            return Err(HistoryError::NoSuchRevision {
                inventory: self.inventory.clone(),
                namespace: self.namespace.clone(),
                number: wanted,
                existing: Self::existing(&all),
            });
        };
        Ok(revision::from_secret(secret)?)
    }

    /// Record `manifests` as the next revision, then delete the oldest beyond `keep`. Returns
    /// the new revision's number.
    pub async fn record(
        &self,
        manifests: &Manifests,
        origin: Origin,
        inputs: BTreeMap<String, String>,
        digests: &BTreeMap<String, String>,
        keep: u32,
    ) -> Result<u32, HistoryError> {
        let mut numbers: Vec<u32> = self.list().await?.iter().map(|(h, _)| h.number).collect();
        let mut number = numbers.iter().max().map_or(1, |n| n + 1);
        let applied_by = crate::lock::user_at_machine();
        // Created, never applied over: a number taken meanwhile (another apply that did not
        // hold our lock) is a conflict, and the next number is tried.
        loop {
            let rev = Revision::new(
                number,
                manifests,
                origin.clone(),
                inputs.clone(),
                digests,
                applied_by.clone(),
            );
            let secret: Secret = serde_json::from_value(revision::to_secret(&rev, &self.namespace))
                .map_err(|e| {
                    HistoryError::Revision(RevisionError::Corrupt {
                        secret: revision::secret_name(&self.inventory, number),
                        what: e.to_string(),
                    })
                })?;
            match self.api.create(&PostParams::default(), &secret).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 && number < u32::MAX => number += 1,
                Err(e) => {
                    return Err(api_err(format!(
                        "record revision {number} of inventory {} in namespace {}",
                        self.inventory, self.namespace
                    ))(e));
                }
            }
        }
        numbers.push(number);
        for old in revision::to_prune(&numbers, keep) {
            let name = revision::secret_name(&self.inventory, old);
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_err(format!("prune revision Secret {name}"))(e)),
            }
        }
        Ok(number)
    }

    /// Mark revision `number` as failed (an `--atomic` apply that did not become ready), with
    /// the reason.
    pub async fn mark_failed(&self, number: u32, reason: &str) -> Result<(), HistoryError> {
        let name = revision::secret_name(&self.inventory, number);
        // An annotation value is bounded only by the object size; keep it readable.
        let reason: String = reason.chars().take(4000).collect();
        let patch = json!({"metadata": {
            "labels": {revision::LABEL_STATUS: Status::Failed.as_str()},
            "annotations": {revision::ANNOTATION_REASON: reason},
        }});
        self.api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!("mark revision Secret {name} failed")))?;
        Ok(())
    }

    /// Delete every revision (`down`). Returns how many there were.
    pub async fn delete_all(&self) -> Result<usize, HistoryError> {
        let all = self.list().await?;
        for (h, _) in &all {
            match self.api.delete(&h.secret, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_err(format!("delete revision Secret {}", h.secret))(e)),
            }
        }
        Ok(all.len())
    }
}

/// What a rollback would do: the target revision and the plan from the live cluster to it (the
/// same plan and diff as `diff`, with the recorded objects desired).
pub struct RollbackPlan {
    pub target: Revision,
    pub plan: ClusterPlan,
}

/// Plan a rollback of `history`'s inventory to revision `to` (None: the previous one).
pub async fn plan_rollback(
    client: &kube::Client,
    history: &History,
    to: Option<u32>,
    concurrency: usize,
) -> Result<RollbackPlan, HistoryError> {
    let target = history.load(to).await?;
    let plan =
        super::plan_with(client, &target.manifests(), &history.inventory, concurrency).await?;
    Ok(RollbackPlan { target, plan })
}

/// Carry out a [`RollbackPlan`] with the apply machinery (server-side apply, prune), then record
/// it as a new revision (with the target's input hashes). Returns the report and the new
/// revision's number.
pub async fn execute_rollback(
    client: &kube::Client,
    history: &History,
    rollback: &RollbackPlan,
    after_failed: Option<u32>,
    keep: u32,
    opts: &super::ClusterApplyOptions,
) -> Result<(super::ExecuteReport, u32), HistoryError> {
    let report = super::apply_plan(client, &rollback.plan, opts).await?;
    let origin = Origin::Rollback {
        to: rollback.target.number,
        after_failed,
    };
    let number = history
        .record(
            &rollback.target.manifests(),
            origin,
            rollback.target.inputs.clone(),
            &rollback.target.digests,
            keep,
        )
        .await?;
    Ok((report, number))
}
