//! What runs: each rendered object's readiness and its pods with their nodes.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Serialize;
use serde_json::Value;

use super::error::{ClusterError, api_err};
use super::kinds::managed_kind;
use super::normalize::{self, Readiness};
use crate::manifest::{Manifests, ObjectKey};

/// Desired vs observed for one workload.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub node: String,
    pub owner: String,
    pub key: ObjectKey,
    /// `1 replica` / `run to completion`.
    pub desired: String,
    /// e.g. `1/1 ready`, `complete`, `1 active`, `missing`.
    pub observed: String,
    pub readiness: Readiness,
    /// Pod-level problems: image pull errors, crash loops, unschedulable.
    pub problems: Vec<String>,
    /// The workload's pods as they run: phase and the node each one is on.
    pub pods: Vec<PodPlacement>,
}

/// One pod of a workload: where it runs and in which phase (`Pending`, `Running`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodPlacement {
    pub name: String,
    pub phase: String,
    /// Empty while the pod is not scheduled.
    pub node: String,
}

impl PodPlacement {
    fn of(pod: &Value) -> PodPlacement {
        let s = |p: &str| {
            pod.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        PodPlacement {
            name: s("/metadata/name"),
            phase: s("/status/phase"),
            node: s("/spec/nodeName"),
        }
    }
}

/// Per node and microservice: each rendered Deployment/Job, its live state and pod problems.
pub async fn status(
    client: &kube::Client,
    manifests: &Manifests,
    concurrency: usize,
) -> Result<Vec<StatusRow>, ClusterError> {
    let workloads: Vec<_> = manifests
        .objects()
        .filter(|o| matches!(o.key.kind.as_str(), "Deployment" | "Job"))
        .collect();
    // Pods per namespace, grouped by their `run` label.
    let namespaces: std::collections::BTreeSet<String> = workloads
        .iter()
        .filter_map(|o| o.key.namespace.clone())
        .collect();
    let pod_ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods");
    let mut pods: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for ns in &namespaces {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &pod_ar);
        let list = api
            .list(&ListParams::default().labels("run"))
            .await
            .map_err(|e| ClusterError::Api {
                object: format!("list pods in {ns}"),
                source: e,
            })?;
        for p in list.items {
            let run = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("run"))
                .cloned()
                .unwrap_or_default();
            pods.entry((ns.clone(), run))
                .or_default()
                .push(serde_json::to_value(&p).unwrap_or(Value::Null));
        }
    }
    let pods = &pods;
    stream::iter(workloads.into_iter().map(|o| async move {
        let mk = managed_kind(&o.key.kind).expect("workload kinds are managed");
        let live = mk
            .api(client, o.key.namespace.as_deref())
            .get_opt(&o.key.name)
            .await
            .map_err(|e| api_err(&o.key, e))?;
        let desired = if o.key.kind == "Deployment" {
            let n = o
                .value
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            format!("{n} replica{}", if n == 1 { "" } else { "s" })
        } else {
            "run to completion".to_owned()
        };
        let (observed, readiness) = match &live {
            None => (
                "missing".to_owned(),
                Readiness::Pending("not created".into()),
            ),
            Some(l) => {
                let v = serde_json::to_value(l).unwrap_or(Value::Null);
                let r = normalize::readiness(&o.key.kind, &v);
                let obs = if o.key.kind == "Deployment" {
                    let ready = v
                        .pointer("/status/readyReplicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    let want = v
                        .pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    format!("{ready}/{want} ready")
                } else {
                    match &r {
                        Readiness::Ready => "complete".to_owned(),
                        Readiness::Failed(_) => "failed".to_owned(),
                        Readiness::Pending(_) => {
                            let a = v
                                .pointer("/status/active")
                                .and_then(Value::as_i64)
                                .unwrap_or(0);
                            format!("{a} active")
                        }
                    }
                };
                (obs, r)
            }
        };
        let run = o
            .value
            .pointer("/spec/template/metadata/labels/run")
            .and_then(Value::as_str)
            .unwrap_or(&o.key.name)
            .to_owned();
        let ns = o.key.namespace.clone().unwrap_or_default();
        let own_pods: Vec<&Value> = pods.get(&(ns, run)).into_iter().flatten().collect();
        let mut problems: Vec<String> = own_pods
            .iter()
            .flat_map(|p| normalize::pod_problems(p))
            .collect();
        problems.dedup();
        let pods = own_pods.iter().map(|p| PodPlacement::of(p)).collect();
        Ok::<_, ClusterError>(StatusRow {
            node: o.node.clone(),
            owner: o.owner.clone(),
            key: o.key.clone(),
            desired,
            observed,
            readiness,
            problems,
            pods,
        })
    }))
    .buffered(concurrency.max(1))
    .try_collect()
    .await
}
