//! The cluster side: compare rendered manifests with the live cluster ([`plan`]), converge it
//! ([`execute`]), report ([`status`]) and tear down ([`down`]).
//!
//! * Comparison is a **server-side dry-run apply** (field manager [`FIELD_MANAGER`]) against the
//!   live object, both [normalised](normalize::normalize): no client-side defaulting noise, and an
//!   object whose dry-run equals the live one is left alone (its resourceVersion never moves).
//! * **Ownership**: every rendered object carries `app.kubernetes.io/managed-by=aion-reconcile`
//!   and `aion.latona.io/inventory=<inventory>`. Prune and `down` list only objects carrying both
//!   labels for *this* inventory, of the kinds we render ([`MANAGED_KINDS`]); nothing else is ever
//!   deleted.
//! * **Order**: namespaces, RBAC, config, workloads, services ([`crate::manifest::kind_rank`]);
//!   deletes in reverse. Within one rank, requests run with bounded concurrency.

pub mod generated;
pub mod history;
pub mod normalize;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aion_model::inventory::Inventory;
use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy,
};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Serialize;
use serde_json::Value;

use crate::manifest::{
    FIELD_MANAGER, LABEL_INVENTORY, LABEL_MANAGED_BY, LABEL_NAME, LABEL_NODE, MANAGED_BY,
    Manifests, ObjectKey, kind_rank,
};
pub use normalize::Readiness;

/// Default number of API requests in flight.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// A kind we render, and therefore may prune.
#[derive(Debug, Clone, Copy)]
pub struct ManagedKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

/// Every kind the templates produce, in apply order.
pub const MANAGED_KINDS: &[ManagedKind] = &[
    ManagedKind {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
    },
    ManagedKind {
        group: "node.k8s.io",
        version: "v1",
        kind: "RuntimeClass",
        plural: "runtimeclasses",
        namespaced: false,
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        namespaced: true,
    },
    ManagedKind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "Role",
        plural: "roles",
        namespaced: true,
    },
    ManagedKind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "RoleBinding",
        plural: "rolebindings",
        namespaced: true,
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        namespaced: true,
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
    },
    ManagedKind {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        namespaced: true,
    },
    ManagedKind {
        group: "batch",
        version: "v1",
        kind: "Job",
        plural: "jobs",
        namespaced: true,
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        namespaced: true,
    },
];

fn managed_kind(kind: &str) -> Option<&'static ManagedKind> {
    MANAGED_KINDS.iter().find(|k| k.kind == kind)
}

impl ManagedKind {
    fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
    fn api(&self, client: &kube::Client, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = self.api_resource();
        match (self.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        }
    }
}

/// The label selector for everything this inventory owns.
pub fn ownership_selector(inventory: &str) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INVENTORY}={inventory}")
}

/// Errors of the cluster layer; each names the object or inventory concerned.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{object}: {source}")]
    Api {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("{object}: kind {kind} is not one aion-reconcile manages")]
    UnsupportedKind { object: String, kind: String },
    #[error("the API server rejected {count} object(s); nothing was applied:\n{list}")]
    Invalid { count: usize, list: String },
    #[error(
        "{count} object(s) have fields owned by another field manager; nothing was applied \
         (re-run with --force-conflicts to take ownership):\n{list}"
    )]
    Conflicts { count: usize, list: String },
    #[error("timed out after {secs}s waiting for {count} object(s):\n{list}")]
    NotReady {
        secs: u64,
        count: usize,
        list: String,
    },
    #[error("{count} object(s) failed:\n{list}")]
    Failed { count: usize, list: String },
    #[error("cannot generate the {0}; nothing was applied")]
    Generate(String),
}

fn api_err(key: &ObjectKey, source: kube::Error) -> ClusterError {
    ClusterError::Api {
        object: key.to_string(),
        source,
    }
}

/// What applying would do to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectAction {
    /// Absent in the cluster.
    Create,
    /// Present; the dry-run differs from the live object.
    Change,
    /// Present, but a changed field is immutable (Job template): delete, then create.
    Replace,
    /// Ours (labels) and no longer desired.
    Delete,
    /// Ours, no longer desired, and already being deleted (a `Terminating` namespace waiting
    /// for its contents, an object held by a finalizer): nothing to do; `apply --wait` waits
    /// for it to be gone.
    Deleting,
    /// Present and equal: not touched.
    Unchanged,
    /// Another field manager owns a field we set to a different value.
    Conflict,
    /// The API server rejects the object.
    Invalid,
}

impl ObjectAction {
    pub fn symbol(self) -> &'static str {
        match self {
            ObjectAction::Create => "+",
            ObjectAction::Change => "~",
            ObjectAction::Replace => "-/+",
            ObjectAction::Delete => "-",
            ObjectAction::Deleting => "(-)",
            ObjectAction::Unchanged => "=",
            ObjectAction::Conflict => "!",
            ObjectAction::Invalid => "x",
        }
    }
}

/// One object in a [`ClusterPlan`].
#[derive(Debug, Clone, Serialize)]
pub struct ObjectChange {
    pub key: ObjectKey,
    pub action: ObjectAction,
    /// Node whose manifests hold it (from the `aion.latona.io/node` label for deletes).
    pub node: Option<String>,
    /// Microservice name or `core/<part>`.
    pub owner: Option<String>,
    /// Unified diff (uncoloured) of normalised live → dry-run; for creates, of nothing → dry-run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Server message for conflicts, invalid objects and replacements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What to send (None for deletes).
    #[serde(skip)]
    pub desired: Option<Value>,
}

/// Number of objects per action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ObjectCounts {
    pub create: usize,
    pub change: usize,
    pub replace: usize,
    pub delete: usize,
    /// Already being deleted: not work to do.
    pub deleting: usize,
    pub unchanged: usize,
    pub conflict: usize,
    pub invalid: usize,
}

/// The cluster half of a plan: data only; [`execute`] carries it out.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterPlan {
    pub inventory: String,
    pub counts: ObjectCounts,
    /// Desired objects in apply order, then deletions.
    pub changes: Vec<ObjectChange>,
}

impl ClusterPlan {
    fn from_changes(inventory: String, changes: Vec<ObjectChange>) -> ClusterPlan {
        let mut counts = ObjectCounts::default();
        for c in &changes {
            match c.action {
                ObjectAction::Create => counts.create += 1,
                ObjectAction::Change => counts.change += 1,
                ObjectAction::Replace => counts.replace += 1,
                ObjectAction::Delete => counts.delete += 1,
                ObjectAction::Deleting => counts.deleting += 1,
                ObjectAction::Unchanged => counts.unchanged += 1,
                ObjectAction::Conflict => counts.conflict += 1,
                ObjectAction::Invalid => counts.invalid += 1,
            }
        }
        ClusterPlan {
            inventory,
            counts,
            changes,
        }
    }

    /// Whether applying would change anything (conflicts and invalid objects count; objects
    /// already being deleted do not).
    pub fn has_changes(&self) -> bool {
        self.changes
            .iter()
            .any(|c| !matches!(c.action, ObjectAction::Unchanged | ObjectAction::Deleting))
    }

    /// One line of counts, e.g. `cluster: 2 to create, 1 to change, 0 to delete, 40 unchanged`.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let mut s = format!(
            "cluster (inventory {}): {} to create, {} to change, {} to delete, {} unchanged",
            self.inventory, c.create, c.change, c.delete, c.unchanged
        );
        if c.replace > 0 {
            s.push_str(&format!(", {} to replace", c.replace));
        }
        if c.deleting > 0 {
            s.push_str(&format!(", {} being deleted", c.deleting));
        }
        if c.conflict > 0 {
            s.push_str(&format!(", {} conflicting", c.conflict));
        }
        if c.invalid > 0 {
            s.push_str(&format!(", {} invalid", c.invalid));
        }
        s
    }

    /// Text rendering: one `+ ~ - -/+ ! x` line per object that is not unchanged, the diff of
    /// changed objects (and of created ones when `show_created` is set), then the summary.
    pub fn render_text(&self, color: bool, show_created: bool) -> String {
        use owo_colors::OwoColorize;
        let mut out = String::new();
        for c in &self.changes {
            if c.action == ObjectAction::Unchanged {
                continue;
            }
            let head = format!("{} {}", c.action.symbol(), c.key);
            let head = if color {
                match c.action {
                    ObjectAction::Create => head.green().to_string(),
                    ObjectAction::Delete => head.red().to_string(),
                    ObjectAction::Change | ObjectAction::Replace => head.yellow().to_string(),
                    ObjectAction::Deleting => head.dimmed().to_string(),
                    _ => head.red().bold().to_string(),
                }
            } else {
                head
            };
            out.push_str(&head);
            if let Some(owner) = &c.owner {
                out.push_str(&format!("  ({owner}"));
                if let Some(node) = &c.node {
                    out.push_str(&format!(" on {node}"));
                }
                out.push(')');
            }
            out.push('\n');
            if let Some(m) = &c.message {
                for line in m.lines() {
                    out.push_str("    ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
            let show = match c.action {
                ObjectAction::Change | ObjectAction::Replace => true,
                ObjectAction::Create => show_created,
                _ => false,
            };
            if show && let Some(d) = &c.diff {
                out.push_str(&normalize::colorize_diff(d, color));
            }
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }
}

fn status_of(e: &kube::Error) -> Option<(u16, &str, &str)> {
    match e {
        kube::Error::Api(s) => Some((s.code, s.reason.as_str(), s.message.as_str())),
        _ => None,
    }
}

/// Plan one object. `known_live` is the live object when the ownership listing already returned
/// it (then no GET is needed, and a certain no-op skips the dry-run too).
async fn plan_one(
    client: &kube::Client,
    key: &ObjectKey,
    desired: &Value,
    known_live: Option<&Value>,
) -> Result<(ObjectAction, Option<String>, Option<String>), ClusterError> {
    let mk = managed_kind(&key.kind).ok_or_else(|| ClusterError::UnsupportedKind {
        object: key.to_string(),
        kind: key.kind.clone(),
    })?;
    if let Some(live) = known_live
        && normalize::certainly_unchanged(desired, live, FIELD_MANAGER)
    {
        return Ok((ObjectAction::Unchanged, None, None));
    }
    if known_live.is_some() {
        tracing::debug!(object = %key, "no-op not provable locally; asking the server (dry-run)");
    }
    let api = mk.api(client, key.namespace.as_deref());
    let live = match known_live {
        Some(v) => Some(v.clone()),
        None => api
            .get_opt(&key.name)
            .await
            .map_err(|e| api_err(key, e))?
            .map(|o| serde_json::to_value(&o).unwrap_or(Value::Null)),
    };
    let pp = PatchParams::apply(FIELD_MANAGER).dry_run();
    let dry = api.patch(&key.name, &pp, &Patch::Apply(desired)).await;
    let label = key.to_string();
    match dry {
        Ok(dry) => {
            let dry = normalize::normalize(&serde_json::to_value(&dry).unwrap_or(Value::Null));
            let new = normalize::to_yaml(&dry);
            match live {
                None => {
                    let diff = normalize::unified_diff("", &new, "/dev/null", &label);
                    Ok((ObjectAction::Create, Some(diff), None))
                }
                Some(live) => {
                    let live = normalize::normalize(&live);
                    if live == dry {
                        return Ok((ObjectAction::Unchanged, None, None));
                    }
                    let old = normalize::to_yaml(&live);
                    let diff = normalize::unified_diff(
                        &old,
                        &new,
                        &format!("live/{label}"),
                        &format!("desired/{label}"),
                    );
                    Ok((ObjectAction::Change, Some(diff), None))
                }
            }
        }
        Err(e) => match status_of(&e) {
            Some((409, _, msg)) => Ok((ObjectAction::Conflict, None, Some(msg.to_owned()))),
            Some((422, _, msg)) if live.is_some() && msg.contains("field is immutable") => Ok((
                ObjectAction::Replace,
                None,
                Some(format!("{msg}\n(will be deleted and created again)")),
            )),
            Some((422 | 400, _, msg)) => Ok((ObjectAction::Invalid, None, Some(msg.to_owned()))),
            // The namespace does not exist yet (it is created first by `execute`), so the
            // server cannot dry-run the object: it is a create.
            Some((404, _, _)) if live.is_none() => {
                let new = normalize::to_yaml(&normalize::normalize(desired));
                Ok((
                    ObjectAction::Create,
                    Some(normalize::unified_diff("", &new, "/dev/null", &label)),
                    Some("namespace does not exist yet: not validated by the server".into()),
                ))
            }
            _ => Err(api_err(key, e)),
        },
    }
}

/// List every object of this inventory in the cluster (ownership labels), by managed kind.
pub async fn list_owned(
    client: &kube::Client,
    inventory: &str,
) -> Result<Vec<(ObjectKey, Value)>, ClusterError> {
    let lp = ListParams::default().labels(&ownership_selector(inventory));
    let mut out = Vec::new();
    for mk in MANAGED_KINDS {
        let api = mk.api(client, None);
        let list = api.list(&lp).await.map_err(|e| ClusterError::Api {
            object: format!("list {} of inventory {inventory}", mk.plural),
            source: e,
        })?;
        for item in list.items {
            let mut v = serde_json::to_value(&item).unwrap_or(Value::Null);
            let api_version = if mk.group.is_empty() {
                mk.version.to_owned()
            } else {
                format!("{}/{}", mk.group, mk.version)
            };
            v["apiVersion"] = Value::String(api_version.clone());
            v["kind"] = Value::String(mk.kind.to_owned());
            out.push((
                ObjectKey {
                    api_version,
                    kind: mk.kind.to_owned(),
                    namespace: item.metadata.namespace.clone(),
                    name: item.metadata.name.clone().unwrap_or_default(),
                },
                v,
            ));
        }
    }
    Ok(out)
}

fn identity(k: &ObjectKey) -> (String, Option<String>, String) {
    (k.kind.clone(), k.namespace.clone(), k.name.clone())
}

/// Compare `manifests` with the live cluster: a dry-run apply per desired object, plus the
/// objects this inventory owns that are no longer desired (to prune). Sends no change.
///
/// # Errors
/// API errors other than conflicts/invalid objects (which become [`ObjectAction::Conflict`] /
/// [`ObjectAction::Invalid`] entries), e.g. an unreachable server or missing permissions.
pub async fn plan(
    client: &kube::Client,
    manifests: &Manifests,
    inv: &Inventory,
) -> Result<ClusterPlan, ClusterError> {
    plan_with(client, manifests, &inv.name, DEFAULT_CONCURRENCY).await
}

/// [`plan`] with an explicit inventory name and concurrency.
pub async fn plan_with(
    client: &kube::Client,
    manifests: &Manifests,
    inventory: &str,
    concurrency: usize,
) -> Result<ClusterPlan, ClusterError> {
    // One LIST per kind gives every live object we own (for prune, and as the live side of the
    // comparison, saving a GET per object).
    let owned = list_owned(client, inventory).await?;
    let live: std::collections::HashMap<_, &Value> =
        owned.iter().map(|(k, v)| (identity(k), v)).collect();
    let live = &live;
    let objects: Vec<_> = manifests.objects().collect();
    // Generated values (the broker password) as the cluster holds them, preferring the broker's
    // own namespace: placeholders are planned with it, so they stay unchanged once applied.
    let broker_ns = objects
        .iter()
        .find(|o| o.key.kind == "Deployment" && o.key.name == "rabbitmq")
        .and_then(|o| o.key.namespace.as_deref());
    let password = generated::live_password(owned.iter().map(|(_, v)| v), broker_ns);
    let password = &password;
    let results: Vec<_> = stream::iter(objects.iter().map(|o| async move {
        let known = live.get(&identity(&o.key)).copied();
        let mut desired = normalize::keep_runtime_fields(&o.value, known);
        if let Some(p) = password {
            desired = generated::with_password(&desired, p);
        }
        if let Some(since) = known.and_then(normalize::being_deleted) {
            // Still going away (e.g. a namespace pruned by the last apply, desired again):
            // apply waits until it is gone, then creates it.
            let new = normalize::to_yaml(&normalize::normalize(&desired));
            let r = (
                ObjectAction::Replace,
                Some(normalize::unified_diff(
                    "",
                    &new,
                    "/dev/null",
                    &o.key.to_string(),
                )),
                Some(format!(
                    "being deleted since {since}: created again once it is gone"
                )),
            );
            return Ok::<_, ClusterError>((*o, desired, r));
        }
        let r = plan_one(client, &o.key, &desired, known).await?;
        Ok::<_, ClusterError>((*o, desired, r))
    }))
    .buffered(concurrency.max(1))
    .try_collect()
    .await?;
    let mut changes = Vec::with_capacity(results.len());
    let mut desired: HashSet<_> = HashSet::new();
    for (o, desired_value, (action, diff, message)) in results {
        desired.insert(identity(&o.key));
        changes.push(ObjectChange {
            key: o.key.clone(),
            action,
            node: Some(o.node.clone()),
            owner: Some(o.owner.clone()),
            diff,
            message,
            desired: Some(desired_value),
        });
    }
    // Everything in a namespace that is being deleted goes with it.
    let terminating: HashSet<String> = owned
        .iter()
        .filter(|(k, v)| k.kind == "Namespace" && normalize::being_deleted(v).is_some())
        .map(|(k, _)| k.name.clone())
        .collect();
    let mut prune: Vec<ObjectChange> = owned
        .into_iter()
        .filter(|(k, _)| !desired.contains(&identity(k)))
        .map(|(key, v)| {
            let label = |l: &str| {
                v.pointer("/metadata/labels")
                    .and_then(|m| m.get(l))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            let old = normalize::to_yaml(&normalize::normalize(&v));
            let since = normalize::being_deleted(&v).map(str::to_owned).or_else(|| {
                key.namespace
                    .as_ref()
                    .filter(|ns| terminating.contains(*ns))
                    .map(|ns| format!("namespace {ns} is being deleted"))
            });
            ObjectChange {
                diff: Some(normalize::unified_diff(
                    &old,
                    "",
                    &key.to_string(),
                    "/dev/null",
                )),
                node: label(LABEL_NODE),
                owner: label(LABEL_NAME),
                key,
                action: if since.is_some() {
                    ObjectAction::Deleting
                } else {
                    ObjectAction::Delete
                },
                message: since.map(|t| {
                    if t.starts_with("namespace ") {
                        t
                    } else {
                        format!("being deleted since {t}")
                    }
                }),
                desired: None,
            }
        })
        .collect();
    prune.sort_by(|a, b| (kind_rank(&b.key.kind), &a.key).cmp(&(kind_rank(&a.key.kind), &b.key)));
    changes.extend(prune);
    Ok(ClusterPlan::from_changes(inventory.to_owned(), changes))
}

/// One progress event of [`execute`] / [`down`].
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub key: ObjectKey,
    /// `created`, `configured`, `replaced`, `deleted`, `ready`, `waiting: …`, `failed: …`.
    pub what: String,
}

/// Progress sink: called from the executing task for every event.
pub type ProgressFn = Arc<dyn Fn(&Event) + Send + Sync>;

/// Print events to stderr as `<object>: <what>` lines.
pub fn stderr_progress() -> ProgressFn {
    Arc::new(|e: &Event| eprintln!("{}: {}", e.key, e.what))
}

/// How [`execute`] runs.
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

/// What [`execute`] did.
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

fn emit(opts: &ClusterApplyOptions, key: &ObjectKey, what: impl Into<String>) {
    if let Some(p) = &opts.progress {
        p(&Event {
            key: key.clone(),
            what: what.into(),
        });
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
    let api = mk.api(client, key.namespace.as_deref());
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

async fn delete_key(
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

/// Poll until every object is ready per [`normalize::readiness`], failing fast on a failed one
/// and with [`ClusterError::NotReady`] after `timeout`.
pub async fn wait_ready(
    client: &kube::Client,
    keys: &[ObjectKey],
    timeout: Duration,
    opts: &ClusterApplyOptions,
) -> Result<(), ClusterError> {
    let start = Instant::now();
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
        if start.elapsed() >= timeout {
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
        tokio::time::sleep(Duration::from_secs(1)).await;
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
    let start = Instant::now();
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
        if start.elapsed() >= timeout {
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
        tokio::time::sleep(Duration::from_secs(1)).await;
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

/// Delete everything this inventory owns (ownership labels), in reverse apply order.
/// Namespaces `default` and `kube-*` are never deleted. Returns the deleted objects.
pub async fn down(
    client: &kube::Client,
    inventory: &str,
    opts: &ClusterApplyOptions,
) -> Result<Vec<ObjectKey>, ClusterError> {
    let mut owned: Vec<ObjectKey> = list_owned(client, inventory)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            !(k.kind == "Namespace" && (k.name == "default" || k.name.starts_with("kube-")))
        })
        .collect();
    owned.sort_by(|a, b| (kind_rank(&b.kind), a).cmp(&(kind_rank(&a.kind), b)));
    let mut by_rank: BTreeMap<std::cmp::Reverse<u8>, Vec<ObjectKey>> = BTreeMap::new();
    for k in owned {
        by_rank
            .entry(std::cmp::Reverse(kind_rank(&k.kind)))
            .or_default()
            .push(k);
    }
    let mut deleted = Vec::new();
    let mut failures = Vec::new();
    for (_, batch) in by_rank {
        let results: Vec<_> = stream::iter(batch.into_iter().map(|k| async move {
            let existed = delete_key(client, &k, None).await?;
            Ok::<_, ClusterError>((k, existed))
        }))
        .buffered(opts.concurrency.max(1))
        .collect()
        .await;
        for r in results {
            match r {
                Ok((k, existed)) => {
                    emit(opts, &k, if existed { "deleted" } else { "already gone" });
                    deleted.push(k);
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    if failures.is_empty() {
        Ok(deleted)
    } else {
        Err(ClusterError::Failed {
            count: failures.len(),
            list: failures.join("\n"),
        })
    }
}

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
