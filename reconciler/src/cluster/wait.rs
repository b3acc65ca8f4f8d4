//! Waiting: until applied objects are ready (failing fast on a failed pod), or pruned ones gone.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::error::{ClusterError, api_err};
use super::kinds::{identity, list_owned, managed_kind};
use super::normalize::{self, Readiness};
use super::options::{ClusterApplyOptions, emit};
use crate::manifest::{Manifests, ObjectKey};

/// The pace and the end of a wait: every wait of the cluster layer (objects ready, pruned
/// ones gone, a node registered or Ready) checks, then [`Poll::tick`]s.
pub(super) struct Poll {
    start: Instant,
    timeout: Duration,
    every: Duration,
}

impl Poll {
    pub(super) fn new(timeout: Duration, every: Duration) -> Poll {
        Poll {
            start: Instant::now(),
            timeout,
            every,
        }
    }

    /// After a check that did not succeed: false when the time is up, else sleep until the
    /// next check and true.
    pub(super) async fn tick(&self) -> bool {
        if self.start.elapsed() >= self.timeout {
            return false;
        }
        tokio::time::sleep(self.every).await;
        true
    }
}

/// Poll until every object is ready per [`normalize::readiness`], failing fast on a failed one
/// and with [`ClusterError::NotReady`] after `timeout`.
pub async fn wait_ready(
    client: &kube::Client,
    keys: &[ObjectKey],
    timeout: Duration,
    opts: &ClusterApplyOptions,
) -> Result<(), ClusterError> {
    let poll = Poll::new(timeout, Duration::from_secs(1));
    let mut pending: Vec<ObjectKey> = keys.to_vec();
    let mut last: BTreeMap<ObjectKey, String> = BTreeMap::new();
    loop {
        let results: Vec<_> = stream::iter(pending.iter().map(|k| async move {
            let mk = managed_kind(&k.kind).ok_or_else(|| ClusterError::UnsupportedKind {
                object: k.to_string(),
                kind: k.kind.clone(),
            })?;
            let live = mk
                .api(client, k.namespace.as_deref())
                .get_opt(&k.name)
                .await
                .map_err(|e| api_err(k, e))?;
            let r = match live {
                Some(o) => {
                    let v = serde_json::to_value(&o).unwrap_or(Value::Null);
                    match normalize::readiness(&k.kind, &v) {
                        Readiness::Pending(m) => match pod_problems_of(client, k, &v).await {
                            Some(p) => Readiness::Pending(format!("{m}; {p}")),
                            None => Readiness::Pending(m),
                        },
                        r => r,
                    }
                }
                // The runtime deletes a finished Job and creates it again for the next kanban.
                None if k.kind == "Job" => Readiness::Ready,
                None => Readiness::Pending("not found".into()),
            };
            Ok::<_, ClusterError>((k.clone(), r))
        }))
        .buffered(opts.concurrency.max(1))
        .try_collect()
        .await?;
        let mut still = Vec::new();
        let mut failed = Vec::new();
        for (k, r) in results {
            match r {
                Readiness::Ready => emit(opts, &k, "ready"),
                Readiness::Failed(m) => failed.push(format!("  {k}: {m}")),
                Readiness::Pending(m) => {
                    if last.get(&k) != Some(&m) {
                        emit(opts, &k, format!("waiting: {m}"));
                    }
                    last.insert(k.clone(), m);
                    still.push(k);
                }
            }
        }
        if !failed.is_empty() {
            return Err(ClusterError::Failed {
                count: failed.len(),
                list: failed.join("\n"),
            });
        }
        if still.is_empty() {
            return Ok(());
        }
        if !poll.tick().await {
            let list = still
                .iter()
                .map(|k| format!("  {k}: {}", last.get(k).map(String::as_str).unwrap_or("")))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(ClusterError::NotReady {
                secs: timeout.as_secs(),
                count: still.len(),
                list,
            });
        }
        pending = still;
    }
}

/// Poll until no object this inventory owns is left outside `manifests`: what the last apply
/// pruned and what was already being deleted (a namespace waits for its contents) are gone.
/// [`ClusterError::NotReady`] names what is still there after `timeout`.
pub async fn wait_pruned(
    client: &kube::Client,
    manifests: &Manifests,
    timeout: Duration,
    opts: &ClusterApplyOptions,
) -> Result<(), ClusterError> {
    let poll = Poll::new(timeout, Duration::from_secs(1));
    let desired: HashSet<_> = manifests.objects().map(|o| identity(&o.key)).collect();
    let mut shown = HashSet::new();
    loop {
        let left: Vec<ObjectKey> = list_owned(client, &manifests.inventory)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !desired.contains(&identity(k)))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        for k in &left {
            if shown.insert(k.clone()) {
                emit(opts, k, "waiting: being deleted");
            }
        }
        if !poll.tick().await {
            return Err(ClusterError::NotReady {
                secs: timeout.as_secs(),
                count: left.len(),
                list: left
                    .iter()
                    .map(|k| format!("  {k}: still being deleted"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
    }
}

/// What keeps a workload's pods from running (image pull errors, crash loops, unschedulable),
/// from the pods its selector matches: `None` when there is nothing to say (or no selector).
async fn pod_problems_of(client: &kube::Client, k: &ObjectKey, live: &Value) -> Option<String> {
    let labels = live.pointer("/spec/selector/matchLabels")?.as_object()?;
    let selector = labels
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(",");
    let pod_ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods");
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), k.namespace.as_deref()?, &pod_ar);
    let pods = api
        .list(&ListParams::default().labels(&selector))
        .await
        .ok()?;
    let mut problems: Vec<String> = pods
        .items
        .iter()
        .flat_map(|p| normalize::pod_problems(&serde_json::to_value(p).unwrap_or(Value::Null)))
        .collect();
    problems.sort();
    problems.dedup();
    (!problems.is_empty()).then(|| problems.join("; "))
}
