//! Lifecycle of microservice instances through the Kubernetes API.
//!
//! The reconciler renders one workload per instance, named `<base>-NNN` (upstream's object
//! names, doc §2): a Deployment for `always` services, a Job otherwise. Services that are not
//! `startup` are rendered idle (Deployment with 0 replicas, Job with `suspend: true`) and the
//! runtime starts them when a kanban arrives for them:
//! * Deployment with 0 replicas → scaled to 1;
//! * suspended Job → unsuspended; finished Job → deleted and created again from its own spec
//!   (a new run); running Job → left alone.
//!
//! `startup` instances are started at boot; `always` instances are checked periodically and
//! scaled back up if something scaled them to 0.
//!
//! `multiple` (upstream's `scale_container.go`): a start request for an instance that is
//! already running is refused when `false` (the default; the kanban stays queued for the
//! running instance); with `true` it re-applies the instance as upstream did, which for a
//! running Job means a new run (deleted and created again; its unacknowledged kanban is
//! delivered again to the new run). Parallel copies only ever come from `scale`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aion_model::Microservice;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{kind} {namespace}/{name}: {source}")]
    Kube {
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("{kind} {namespace}/{name} does not exist (the reconciler renders it)")]
    Missing {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("Job {namespace}/{name} was deleted for a new run but did not go away in time")]
    Stuck { namespace: String, name: String },
}

/// What `ensure_running` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    AlreadyRunning,
    ScaledUp,
    Unsuspended,
    Recreated,
    /// Already running and `multiple: false`: the second start is refused, the kanban stays
    /// queued for the running instance.
    Refused,
    /// Checked recently; no API call made.
    Cached,
}

pub struct KubeLifecycle {
    client: kube::Client,
    namespace: String,
    recent: Mutex<HashMap<String, Instant>>,
    /// Instances started (at boot or on demand) and not terminated: `always` ones among them
    /// are kept running.
    started: Mutex<HashSet<String>>,
    /// How long a successful check is trusted before asking the apiserver again.
    pub cache_for: Duration,
}

impl KubeLifecycle {
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        KubeLifecycle {
            client,
            namespace: namespace.into(),
            recent: Mutex::new(HashMap::new()),
            started: Mutex::new(HashSet::new()),
            cache_for: Duration::from_secs(5),
        }
    }

    fn err(&self, kind: &'static str, name: &str) -> impl FnOnce(kube::Error) -> LifecycleError {
        let (namespace, name) = (self.namespace.clone(), name.to_string());
        move |source| LifecycleError::Kube {
            kind,
            namespace,
            name,
            source,
        }
    }

    /// Make sure instance `number` of `ms` runs (on-demand start when a kanban arrives).
    pub async fn ensure_running(
        &self,
        ms: &Microservice,
        number: i32,
    ) -> Result<Started, LifecycleError> {
        let name = ms.instance_name(number);
        if let Some(t) = self
            .recent
            .lock()
            .map(|m| m.get(&name).copied())
            .ok()
            .flatten()
            && t.elapsed() < self.cache_for
        {
            return Ok(Started::Cached);
        }
        let r = if ms.always {
            self.ensure_deployment(&name).await
        } else {
            self.ensure_job(&name, ms.multiple).await
        };
        if r.is_ok() {
            if let Ok(mut s) = self.started.lock() {
                s.insert(name.clone());
            }
            if let Ok(mut m) = self.recent.lock() {
                m.insert(name, Instant::now());
            }
        }
        r
    }

    /// Forget cached checks (after a terminate kanban, so the next kanban starts a new run).
    pub fn forget(&self, ms: &Microservice, number: i32) {
        let name = ms.instance_name(number);
        if let Ok(mut m) = self.recent.lock() {
            m.remove(&name);
        }
        if let Ok(mut s) = self.started.lock() {
            s.remove(&name);
        }
    }

    /// Whether this instance was started (at boot or on demand) and not terminated since.
    pub fn was_started(&self, ms: &Microservice, number: i32) -> bool {
        self.started
            .lock()
            .is_ok_and(|s| s.contains(&ms.instance_name(number)))
    }

    async fn ensure_deployment(&self, name: &str) -> Result<Started, LifecycleError> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let d = api
            .get_opt(name)
            .await
            .map_err(self.err("Deployment", name))?
            .ok_or_else(|| LifecycleError::Missing {
                kind: "Deployment",
                namespace: self.namespace.clone(),
                name: name.into(),
            })?;
        let replicas = d.spec.replicas.unwrap_or(1);
        if replicas >= 1 {
            // `multiple: true` re-applies the same Deployment: nothing changes either way.
            return Ok(Started::AlreadyRunning);
        }
        api.patch(
            name,
            &patch_params(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .map_err(self.err("Deployment", name))?;
        Ok(Started::ScaledUp)
    }

    async fn ensure_job(&self, name: &str, multiple: bool) -> Result<Started, LifecycleError> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        let job = api
            .get_opt(name)
            .await
            .map_err(self.err("Job", name))?
            .ok_or_else(|| LifecycleError::Missing {
                kind: "Job",
                namespace: self.namespace.clone(),
                name: name.into(),
            })?;
        if job.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
            api.patch(
                name,
                &patch_params(),
                &Patch::Merge(json!({"spec": {"suspend": false}})),
            )
            .await
            .map_err(self.err("Job", name))?;
            return Ok(Started::Unsuspended);
        }
        if !job_finished(&job) && !multiple {
            tracing::debug!(
                "{name} is running and not `multiple`: start refused, the kanban stays queued"
            );
            return Ok(Started::Refused);
        }
        // A finished Job (or a running one of a `multiple` service): a new run, same spec.
        let fresh = fresh_job(&job);
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        api.delete(name, &dp).await.map_err(self.err("Job", name))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while api
            .get_opt(name)
            .await
            .map_err(self.err("Job", name))?
            .is_some()
        {
            if Instant::now() > deadline {
                return Err(LifecycleError::Stuck {
                    namespace: self.namespace.clone(),
                    name: name.into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.create(&pp, &fresh)
            .await
            .map_err(self.err("Job", name))?;
        Ok(Started::Recreated)
    }
}

/// The runtime's field manager: `replicas` / `suspend` changed by an on-demand start are owned
/// by it in the objects' managedFields (the reconciler keeps them, see its `plan`).
pub const FIELD_MANAGER: &str = "aion-kanban";

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Completed or failed (a `Complete`/`Failed` condition, or succeeded pods and none active).
pub fn job_finished(job: &Job) -> bool {
    let Some(st) = &job.status else { return false };
    let cond = st
        .conditions
        .iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    cond || (st.succeeded.unwrap_or(0) > 0 && st.active.unwrap_or(0) == 0)
}

/// The Job to create for a new run: same name, labels, annotations and pod template, without
/// the fields the apiserver generated (uid, status, controller-uid selector/labels).
pub fn fresh_job(old: &Job) -> Job {
    const GENERATED: [&str; 4] = [
        "controller-uid",
        "batch.kubernetes.io/controller-uid",
        "job-name",
        "batch.kubernetes.io/job-name",
    ];
    let mut j = Job::default();
    j.metadata.name = old.metadata.name.clone();
    j.metadata.namespace = old.metadata.namespace.clone();
    j.metadata.labels = old.metadata.labels.clone().map(|mut l| {
        l.retain(|k, _| !GENERATED.contains(&k.as_str()));
        l
    });
    j.metadata.annotations = old.metadata.annotations.clone();
    if let Some(spec) = &old.spec {
        let mut spec = spec.clone();
        spec.selector = None;
        spec.manual_selector = None;
        spec.suspend = Some(false);
        if let Some(meta) = spec.template.metadata.as_mut()
            && let Some(l) = meta.labels.as_mut()
        {
            l.retain(|k, _| !GENERATED.contains(&k.as_str()));
        }
        j.spec = Some(spec);
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    #[test]
    fn finished_and_fresh_job() {
        let labels = |extra: bool| {
            let mut m = std::collections::BTreeMap::new();
            m.insert("run".to_string(), "a-001".to_string());
            if extra {
                m.insert("controller-uid".to_string(), "x".to_string());
                m.insert(
                    "batch.kubernetes.io/job-name".to_string(),
                    "a-001".to_string(),
                );
            }
            Some(m)
        };
        let job = Job {
            metadata: ObjectMeta {
                name: Some("a-001".into()),
                uid: Some("u".into()),
                resource_version: Some("9".into()),
                labels: labels(true),
                ..Default::default()
            },
            spec: Some(JobSpec {
                selector: Some(LabelSelector::default()),
                suspend: Some(false),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: labels(true),
                        ..Default::default()
                    }),
                    spec: None,
                },
                ..Default::default()
            }),
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: "Complete".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        assert!(job_finished(&job));
        let f = fresh_job(&job);
        assert_eq!(f.metadata.uid, None);
        assert_eq!(f.metadata.resource_version, None);
        assert_eq!(f.metadata.labels, labels(false));
        let spec = f.spec.unwrap();
        assert!(spec.selector.is_none());
        assert_eq!(spec.template.metadata.unwrap().labels, labels(false));
        assert!(f.status.is_none());
        assert!(!job_finished(&Job::default()));
    }
}
