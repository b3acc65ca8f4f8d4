//! Planning: each rendered object against its live twin (server-side dry-run), plus the prune
//! of what the inventory owns and no longer renders. Data only; [`super::apply_plan`] carries
//! it out.

use std::collections::HashSet;

use aion_model::inventory::Inventory;
use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::Serialize;
use serde_json::Value;

use super::error::{ClusterError, api_err, status_of};
use super::kinds::{identity, list_owned, managed_kind};
use super::options::DEFAULT_CONCURRENCY;
use super::{generated, normalize};
use crate::manifest::{FIELD_MANAGER, LABEL_NAME, LABEL_NODE, Manifests, ObjectKey, kind_rank};

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

/// The cluster half of a plan: data only; [`apply_plan`](super::apply_plan) carries it out.
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
        use crate::output::{Tone, paint};
        let mut out = String::new();
        for c in &self.changes {
            if c.action == ObjectAction::Unchanged {
                continue;
            }
            let tone = match c.action {
                ObjectAction::Create => Tone::Added,
                ObjectAction::Delete => Tone::Removed,
                ObjectAction::Change | ObjectAction::Replace => Tone::Changed,
                ObjectAction::Deleting => Tone::Faint,
                _ => Tone::Error,
            };
            let head = paint(&format!("{} {}", c.action.symbol(), c.key), tone, color);
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
    dry_run_compare(&api, key, desired, live, false).await
}

/// Compare `desired` with `live` (None: the object does not exist) by a server-side dry-run
/// apply through `api`, both [normalised](normalize::normalize): the action, its diff, and a
/// note (the server's message for conflicts, invalid objects and immutable fields). `force`
/// takes the fields over from other field managers instead of reporting a conflict.
pub(super) async fn dry_run_compare(
    api: &Api<DynamicObject>,
    key: &ObjectKey,
    desired: &Value,
    live: Option<Value>,
    force: bool,
) -> Result<(ObjectAction, Option<String>, Option<String>), ClusterError> {
    let mut pp = PatchParams::apply(FIELD_MANAGER).dry_run();
    if force {
        pp = pp.force();
    }
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
        desired = generated::with_files(&desired).map_err(ClusterError::Generate)?;
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
