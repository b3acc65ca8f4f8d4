//! Carrying out a [`ClusterPlan`]: server-side apply by rank, replace, prune, progress events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use serde::Serialize;
use serde_json::Value;

use super::error::{ClusterError, api_err, status_of};
use super::generated;
use super::kinds::managed_kind;
use super::options::{ClusterApplyOptions, emit};
use super::plan::{ClusterPlan, ObjectAction, ObjectChange};
use super::wait::wait_ready;
use crate::manifest::{FIELD_MANAGER, ObjectKey, kind_rank};

/// What [`apply_plan`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExecuteReport {
    pub created: Vec<ObjectKey>,
    pub configured: Vec<ObjectKey>,
    pub replaced: Vec<ObjectKey>,
    pub deleted: Vec<ObjectKey>,
    pub unchanged: usize,
}

impl ExecuteReport {
    pub fn summary(&self) -> String {
        format!(
            "cluster: {} created, {} configured, {} replaced, {} deleted, {} unchanged",
            self.created.len(),
            self.configured.len(),
            self.replaced.len(),
            self.deleted.len(),
            self.unchanged
        )
    }
}

async fn apply_value(
    client: &kube::Client,
    key: &ObjectKey,
    value: &Value,
    force: bool,
) -> Result<(), ClusterError> {
    let mk = managed_kind(&key.kind).ok_or_else(|| ClusterError::UnsupportedKind {
        object: key.to_string(),
        kind: key.kind.clone(),
    })?;
    apply_with(&mk.api(client, key.namespace.as_deref()), key, value, force).await
}

/// Server-side apply of one object (field manager [`FIELD_MANAGER`]) through `api`; a conflict
/// with another field manager is [`ClusterError::Conflicts`].
pub(super) async fn apply_with(
    api: &Api<DynamicObject>,
    key: &ObjectKey,
    value: &Value,
    force: bool,
) -> Result<(), ClusterError> {
    let mut pp = PatchParams::apply(FIELD_MANAGER);
    if force {
        pp = pp.force();
    }
    api.patch(&key.name, &pp, &Patch::Apply(value))
        .await
        .map_err(|e| match status_of(&e) {
            Some((409, _, msg)) => ClusterError::Conflicts {
                count: 1,
                list: format!("  {key}: {msg}"),
            },
            _ => api_err(key, e),
        })?;
    Ok(())
}

pub(super) async fn delete_key(
    client: &kube::Client,
    key: &ObjectKey,
    wait_gone: Option<Duration>,
) -> Result<bool, ClusterError> {
    let mk = managed_kind(&key.kind).ok_or_else(|| ClusterError::UnsupportedKind {
        object: key.to_string(),
        kind: key.kind.clone(),
    })?;
    let api = mk.api(client, key.namespace.as_deref());
    let dp = DeleteParams {
        propagation_policy: Some(if wait_gone.is_some() {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        }),
        ..DeleteParams::default()
    };
    match api.delete(&key.name, &dp).await {
        Ok(_) => {}
        Err(e) if matches!(status_of(&e), Some((404, _, _))) => return Ok(false),
        Err(e) => return Err(api_err(key, e)),
    }
    if let Some(limit) = wait_gone {
        let start = Instant::now();
        while api
            .get_opt(&key.name)
            .await
            .map_err(|e| api_err(key, e))?
            .is_some()
        {
            if start.elapsed() > limit {
                return Err(ClusterError::NotReady {
                    secs: limit.as_secs(),
                    count: 1,
                    list: format!("  {key}: still present after delete"),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(true)
}

/// Carry out a [`ClusterPlan`]: refuse if any object is invalid, or conflicts without
/// `force_conflicts`; then apply by rank (namespaces, RBAC, config, workloads, services) with
/// server-side apply, skip unchanged objects, prune (reverse order), and optionally wait.
///
/// # Errors
/// [`ClusterError::Invalid`] / [`ClusterError::Conflicts`] before anything is sent;
/// [`ClusterError::Failed`] with every object that failed; [`ClusterError::NotReady`] on timeout.
pub async fn apply_plan(
    client: &kube::Client,
    plan: &ClusterPlan,
    opts: &ClusterApplyOptions,
) -> Result<ExecuteReport, ClusterError> {
    let list = |a: ObjectAction| -> Vec<&ObjectChange> {
        plan.changes.iter().filter(|c| c.action == a).collect()
    };
    let fmt_list = |v: &[&ObjectChange]| {
        v.iter()
            .map(|c| format!("  {}: {}", c.key, c.message.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let invalid = list(ObjectAction::Invalid);
    if !invalid.is_empty() {
        return Err(ClusterError::Invalid {
            count: invalid.len(),
            list: fmt_list(&invalid),
        });
    }
    let conflicts = list(ObjectAction::Conflict);
    if !conflicts.is_empty() && !opts.force_conflicts {
        return Err(ClusterError::Conflicts {
            count: conflicts.len(),
            list: fmt_list(&conflicts),
        });
    }

    // No namespace holds a broker password yet: make one, for every placeholder.
    let fresh = if plan
        .changes
        .iter()
        .filter_map(|c| c.desired.as_ref())
        .any(generated::needs_data)
    {
        Some(
            generated::fresh_password()
                .map_err(|e| ClusterError::Generate(format!("broker password ({e})")))?,
        )
    } else {
        None
    };
    let fresh = &fresh;

    let mut report = ExecuteReport {
        unchanged: plan.counts.unchanged,
        ..ExecuteReport::default()
    };
    // Apply phase by rank.
    let mut by_rank: BTreeMap<u8, Vec<&ObjectChange>> = BTreeMap::new();
    for c in &plan.changes {
        if matches!(
            c.action,
            ObjectAction::Create
                | ObjectAction::Change
                | ObjectAction::Replace
                | ObjectAction::Conflict
        ) {
            by_rank.entry(kind_rank(&c.key.kind)).or_default().push(c);
        }
    }
    let mut failures = Vec::new();
    for (_, batch) in by_rank {
        let results: Vec<_> = stream::iter(batch.into_iter().map(|c| async move {
            let value = c
                .desired
                .as_ref()
                .expect("desired objects carry their value");
            let filled;
            let value = match fresh {
                Some(p) if generated::needs_data(value) => {
                    filled = generated::with_password(value, p);
                    &filled
                }
                _ => value,
            };
            if c.action == ObjectAction::Replace {
                // A namespace being deleted waits for its contents: give it time.
                delete_key(client, &c.key, Some(Duration::from_secs(300))).await?;
            }
            apply_value(client, &c.key, value, c.action == ObjectAction::Conflict).await?;
            Ok::<_, ClusterError>(c)
        }))
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
        for r in results {
            match r {
                Ok(c) => {
                    let what = match c.action {
                        ObjectAction::Create => {
                            report.created.push(c.key.clone());
                            "created"
                        }
                        ObjectAction::Replace => {
                            report.replaced.push(c.key.clone());
                            "replaced"
                        }
                        _ => {
                            report.configured.push(c.key.clone());
                            "configured"
                        }
                    };
                    emit(opts, &c.key, what);
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        // A failed namespace or RBAC object makes later phases pointless.
        if !failures.is_empty() {
            return Err(ClusterError::Failed {
                count: failures.len(),
                list: failures.join("\n"),
            });
        }
    }

    if opts.prune {
        let deletes = list(ObjectAction::Delete);
        let mut by_rank: BTreeMap<std::cmp::Reverse<u8>, Vec<&ObjectChange>> = BTreeMap::new();
        for c in deletes {
            by_rank
                .entry(std::cmp::Reverse(kind_rank(&c.key.kind)))
                .or_default()
                .push(c);
        }
        for (_, batch) in by_rank {
            let results: Vec<_> = stream::iter(batch.into_iter().map(|c| async move {
                let existed = delete_key(client, &c.key, None).await?;
                Ok::<_, ClusterError>((c, existed))
            }))
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
            for r in results {
                match r {
                    Ok((c, existed)) => {
                        emit(
                            opts,
                            &c.key,
                            if existed { "deleted" } else { "already gone" },
                        );
                        report.deleted.push(c.key.clone());
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
        }
        if !failures.is_empty() {
            return Err(ClusterError::Failed {
                count: failures.len(),
                list: failures.join("\n"),
            });
        }
    }

    if let Some(timeout) = opts.wait {
        let keys: Vec<ObjectKey> = plan
            .changes
            .iter()
            .filter(|c| c.action != ObjectAction::Delete)
            .map(|c| c.key.clone())
            .filter(|k| {
                matches!(
                    k.kind.as_str(),
                    "Deployment" | "Job" | "Service" | "Namespace"
                )
            })
            .collect();
        wait_ready(client, &keys, timeout, opts).await?;
    }
    Ok(report)
}

/// Server-side apply a list of objects in apply order (no dry-run, no prune, no force).
pub async fn apply_objects(client: &kube::Client, objs: &[Value]) -> Result<(), ClusterError> {
    let mut keyed = Vec::with_capacity(objs.len());
    for v in objs {
        let key = ObjectKey::of(v).ok_or_else(|| ClusterError::UnsupportedKind {
            object: "object without apiVersion/kind/metadata.name".into(),
            kind: v.get("kind").and_then(Value::as_str).unwrap_or("?").into(),
        })?;
        keyed.push((key, v));
    }
    keyed.sort_by_key(|(k, _)| kind_rank(&k.kind));
    for (k, v) in keyed {
        apply_value(client, &k, v, false).await?;
    }
    Ok(())
}
