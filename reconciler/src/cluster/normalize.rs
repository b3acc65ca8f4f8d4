//! Pure helpers of the cluster side: normalising live/dry-run objects before comparing them,
//! YAML text and unified diffs, per-kind readiness. No I/O; unit-tested without a cluster.

use serde_json::{Map, Value};
use similar::TextDiff;

/// Annotations the API server or controllers write that are never ours to diff.
const NOISY_ANNOTATIONS: &[&str] = &[
    "deployment.kubernetes.io/revision",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// Annotation on microservice workloads rendered idle (`startup: no`): the runtime starts them.
pub const ANNOTATION_START: &str = "aion.latona.io/start";
pub const START_ON_DEMAND: &str = "on-demand";

fn on_demand(v: &Value) -> bool {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION_START))
        .and_then(Value::as_str)
        == Some(START_ON_DEMAND)
}

/// The desired object to apply over `live`, keeping what the runtime decides on on-demand
/// workloads: a Deployment's `spec.replicas` and a Job's `spec.suspend`. Rendered idle, they
/// are started by aion-kanban when a kanban arrives; applying the rendered 0 / `true` again
/// would stop a running instance and make every `plan` after a start show a change.
/// Only when both sides are on-demand: an instance switched to `startup: yes` gets the
/// rendered value (it starts), and one switched to `startup: no` stops.
pub fn keep_runtime_fields(desired: &Value, live: Option<&Value>) -> Value {
    let mut out = desired.clone();
    let Some(live) = live else { return out };
    if !on_demand(desired) || !on_demand(live) {
        return out;
    }
    let field = match desired.get("kind").and_then(Value::as_str) {
        Some("Deployment") => "replicas",
        Some("Job") => "suspend",
        _ => return out,
    };
    if let (Some(v), Some(spec)) = (
        live.pointer(&format!("/spec/{field}")),
        out.get_mut("spec").and_then(Value::as_object_mut),
    ) {
        spec.insert(field.to_owned(), v.clone());
    }
    out
}

/// `metadata.deletionTimestamp` of an object that is already being deleted.
pub fn being_deleted(v: &Value) -> Option<&str> {
    v.pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
}

/// Strip what the server owns (`managedFields`, `resourceVersion`, `uid`, `generation`,
/// timestamps, `status`, controller annotations) and sort keys, so that a live object and a
/// server-side dry-run of our apply compare equal exactly when applying would change nothing.
pub fn normalize(value: &Value) -> Value {
    let mut v = value.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("status");
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "managedFields",
                "resourceVersion",
                "uid",
                "generation",
                "creationTimestamp",
                "selfLink",
            ] {
                meta.remove(k);
            }
            let empty =
                if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                    for k in NOISY_ANNOTATIONS {
                        ann.remove(*k);
                    }
                    ann.is_empty()
                } else {
                    false
                };
            if empty {
                meta.remove("annotations");
            }
        }
    }
    sort_keys(v)
}

/// Recursively sort object keys (maps keep insertion order with `preserve_order`).
pub fn sort_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::with_capacity(entries.len());
            for (k, v) in entries {
                out.insert(k, sort_keys(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// YAML text of a value (for diffs and review); a Secret's values are
/// [masked](super::generated::mask).
pub fn to_yaml(v: &Value) -> String {
    let v = &super::generated::mask(v);
    serde_saphyr::to_string(v)
        .unwrap_or_else(|_| serde_json::to_string_pretty(v).unwrap_or_default() + "\n")
}

/// Unified diff (3 lines of context) between two YAML texts; empty when equal.
pub fn unified_diff(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    if old == new {
        return String::new();
    }
    let diff = TextDiff::from_lines(old, new);
    diff.unified_diff()
        .context_radius(3)
        .header(old_label, new_label)
        .to_string()
}

/// Colour a unified diff: `+` green, `-` red, `@@` cyan. Identity when `color` is false.
pub fn colorize_diff(diff: &str, color: bool) -> String {
    if !color {
        return diff.to_owned();
    }
    let mut out = String::with_capacity(diff.len() + diff.len() / 4);
    for line in diff.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        use crate::output::{Tone, paint};
        let painted = if body.starts_with("+++") || body.starts_with("---") {
            paint(body, Tone::Strong, true)
        } else if body.starts_with('+') {
            paint(body, Tone::Added, true)
        } else if body.starts_with('-') {
            paint(body, Tone::Removed, true)
        } else if body.starts_with("@@") {
            paint(body, Tone::Hunk, true)
        } else {
            body.to_owned()
        };
        out.push_str(&painted);
        out.push_str(nl);
    }
    out
}

/// Readiness of one live object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "lowercase")]
pub enum Readiness {
    Ready,
    Pending(String),
    Failed(String),
}

fn int(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

fn condition<'a>(v: &'a Value, ty: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

fn condition_true(v: &Value, ty: &str) -> bool {
    condition(v, ty)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

/// Per-kind readiness rules (kapp/kstatus style):
/// * Deployment: the controller has observed the current generation and `updated`/`available`
///   replicas reach `spec.replicas`; a `ProgressDeadlineExceeded` condition is a failure.
/// * Job: `Complete` → ready, `Failed` → failed; suspended (an on-demand instance before its
///   first kanban) or running with a ready pod (a microservice waiting for kanbans) → ready.
/// * Service: has a cluster IP (or is headless/ExternalName).
/// * Namespace: phase `Active`.
/// * everything else: ready once it exists.
pub fn readiness(kind: &str, v: &Value) -> Readiness {
    match kind {
        "Deployment" => {
            let generation = int(v, "/metadata/generation").unwrap_or(0);
            let observed = int(v, "/status/observedGeneration").unwrap_or(-1);
            if observed < generation {
                return Readiness::Pending(
                    "waiting for the controller to observe the change".into(),
                );
            }
            if let Some(c) = condition(v, "Progressing")
                && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
            {
                return Readiness::Failed(
                    c.get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("progress deadline exceeded")
                        .to_owned(),
                );
            }
            let want = int(v, "/spec/replicas").unwrap_or(1);
            let updated = int(v, "/status/updatedReplicas").unwrap_or(0);
            let available = int(v, "/status/availableReplicas").unwrap_or(0);
            // During a rolling update the old pods keep serving (and count as available) until
            // the new ones are: only when no old pod is left is the new version what runs.
            let total = int(v, "/status/replicas").unwrap_or(updated);
            let old = total - updated;
            if old > 0 {
                return Readiness::Pending(format!(
                    "{old} old replica(s) still running; {available}/{want} available, {updated} updated"
                ));
            }
            if updated >= want && available >= want {
                Readiness::Ready
            } else {
                Readiness::Pending(format!("{available}/{want} available, {updated} updated"))
            }
        }
        "Job" => {
            if condition_true(v, "Complete") {
                Readiness::Ready
            } else if condition_true(v, "Failed") {
                let msg = condition(v, "Failed")
                    .and_then(|c| c.get("message").or_else(|| c.get("reason")))
                    .and_then(Value::as_str)
                    .unwrap_or("job failed");
                Readiness::Failed(msg.to_owned())
            } else if v.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true)
                || int(v, "/status/ready").unwrap_or(0) >= 1
            {
                Readiness::Ready
            } else {
                let active = int(v, "/status/active").unwrap_or(0);
                Readiness::Pending(format!("{active} active, not complete"))
            }
        }
        "Service" => {
            let ty = v
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            if ty == "ExternalName"
                || v.pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            {
                Readiness::Ready
            } else {
                Readiness::Pending("no cluster IP yet".into())
            }
        }
        "Namespace" => match v.pointer("/status/phase").and_then(Value::as_str) {
            Some("Active") | None => Readiness::Ready,
            Some(p) => Readiness::Pending(format!("phase {p}")),
        },
        _ => Readiness::Ready,
    }
}

/// Problems visible on a pod: image pull errors, crash loops, unschedulable.
pub fn pod_problems(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for ptr in ["/status/initContainerStatuses", "/status/containerStatuses"] {
        for cs in pod
            .pointer(ptr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(w) = cs.pointer("/state/waiting") {
                let reason = w.get("reason").and_then(Value::as_str).unwrap_or("");
                if !reason.is_empty()
                    && reason != "ContainerCreating"
                    && reason != "PodInitializing"
                {
                    let msg = w.get("message").and_then(Value::as_str).unwrap_or("");
                    out.push(if msg.is_empty() {
                        reason.to_owned()
                    } else {
                        format!("{reason}: {msg}")
                    });
                }
            }
        }
    }
    if let Some(c) = condition(pod, "PodScheduled")
        && c.get("status").and_then(Value::as_str) == Some("False")
    {
        let reason = c
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("Unschedulable");
        let msg = c.get("message").and_then(Value::as_str).unwrap_or("");
        out.push(format!("{reason}: {msg}").trim_end_matches(": ").to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalize_strips_server_fields_and_sorts() {
        let live = json!({
            "kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": {"name": "a", "uid": "u", "resourceVersion": "7", "generation": 3,
                         "creationTimestamp": "t", "managedFields": [{}],
                         "annotations": {"deployment.kubernetes.io/revision": "2"}},
            "spec": {"replicas": 1},
            "status": {"replicas": 1}
        });
        let n = normalize(&live);
        assert_eq!(
            n,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"}, "spec": {"replicas": 1}})
        );
        let keys: Vec<&String> = n.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec"]);
    }

    #[test]
    fn normalize_keeps_user_annotations() {
        let v = json!({"metadata": {"name": "a", "annotations": {"x": "1", "kubectl.kubernetes.io/last-applied-configuration": "{}"}}});
        assert_eq!(
            normalize(&v),
            json!({"metadata": {"annotations": {"x": "1"}, "name": "a"}})
        );
    }

    #[test]
    fn diff_shows_only_the_changed_line() {
        let a = to_yaml(&json!({"spec": {"image": "a:1", "replicas": 1}}));
        let b = to_yaml(&json!({"spec": {"image": "a:2", "replicas": 1}}));
        let d = unified_diff(&a, &b, "live", "desired");
        let changed: Vec<&str> = d
            .lines()
            .filter(|l| {
                (l.starts_with('+') || l.starts_with('-'))
                    && !l.starts_with("+++")
                    && !l.starts_with("---")
            })
            .collect();
        assert_eq!(changed, ["-  image: a:1", "+  image: a:2"]);
        assert!(unified_diff(&a, &a, "l", "d").is_empty());
    }

    #[test]
    fn colour_only_when_asked() {
        let d = "--- a\n+++ b\n@@ -1 +1 @@\n-x\n+y\n";
        assert_eq!(colorize_diff(d, false), d);
        let c = colorize_diff(d, true);
        assert!(c.contains("\u{1b}[32m+y"), "{c:?}");
        assert!(c.contains("\u{1b}[31m-x"), "{c:?}");
    }

    #[test]
    fn deployment_readiness() {
        let mut d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 1},
                           "status": {"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": 1}});
        assert!(matches!(readiness("Deployment", &d), Readiness::Pending(_)));
        d["status"]["observedGeneration"] = json!(2);
        assert_eq!(readiness("Deployment", &d), Readiness::Ready);
        d["status"]["availableReplicas"] = json!(0);
        assert_eq!(
            readiness("Deployment", &d),
            Readiness::Pending("0/1 available, 1 updated".into())
        );
        d["status"]["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]);
        assert_eq!(
            readiness("Deployment", &d),
            Readiness::Failed("too slow".into())
        );
    }

    /// A rolling update whose new pod never starts (a broken image): the new ReplicaSet's pod
    /// exists (`updatedReplicas: 1`) and the old pod still serves (`availableReplicas: 1`).
    /// That is not ready: the old pod is counted in `replicas`. Before, `--wait` (and
    /// `--atomic`) took it for ready.
    #[test]
    fn a_rolling_update_with_old_pods_left_is_not_ready() {
        let d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 1},
                       "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1,
                                  "availableReplicas": 1, "unavailableReplicas": 1}});
        assert_eq!(
            readiness("Deployment", &d),
            Readiness::Pending("1 old replica(s) still running; 1/1 available, 1 updated".into())
        );
    }

    /// After the runtime started an on-demand instance, the plan keeps its replicas/suspend:
    /// before, `plan` showed `replicas: 1 → 0` and `apply` stopped the running instance.
    #[test]
    fn runtime_owned_fields_are_kept_on_on_demand_workloads() {
        let ann = json!({"aion.latona.io/start": "on-demand"});
        let desired = json!({"kind": "Deployment", "metadata": {"name": "p-001", "annotations": ann},
                             "spec": {"replicas": 0, "template": {}}});
        let live = json!({"kind": "Deployment", "metadata": {"name": "p-001", "annotations": ann},
                          "spec": {"replicas": 1, "template": {}}});
        let kept = keep_runtime_fields(&desired, Some(&live));
        assert_eq!(kept["spec"]["replicas"], 1);
        assert_eq!(kept["spec"]["template"], json!({}));
        // Nothing live yet: created idle.
        assert_eq!(keep_runtime_fields(&desired, None), desired);
        // Live was rendered `startup: yes` (no annotation) and is now on-demand: it stops.
        let was_startup = json!({"kind": "Deployment", "metadata": {"name": "p-001"},
                                 "spec": {"replicas": 1}});
        assert_eq!(
            keep_runtime_fields(&desired, Some(&was_startup))["spec"]["replicas"],
            0
        );
        // Now `startup: yes` (no annotation desired): the rendered value wins.
        let startup = json!({"kind": "Deployment", "metadata": {"name": "p-001"},
                             "spec": {"replicas": 1}});
        let idle = json!({"kind": "Deployment", "metadata": {"annotations": ann},
                          "spec": {"replicas": 0}});
        assert_eq!(
            keep_runtime_fields(&startup, Some(&idle))["spec"]["replicas"],
            1
        );
        // Jobs: `suspend`.
        let job =
            json!({"kind": "Job", "metadata": {"annotations": ann}, "spec": {"suspend": true}});
        let running =
            json!({"kind": "Job", "metadata": {"annotations": ann}, "spec": {"suspend": false}});
        assert_eq!(
            keep_runtime_fields(&job, Some(&running))["spec"]["suspend"],
            false
        );
    }

    #[test]
    fn job_and_service_readiness() {
        // An on-demand Job before its first kanban, and a running microservice Job.
        assert_eq!(
            readiness("Job", &json!({"spec": {"suspend": true}})),
            Readiness::Ready
        );
        assert_eq!(
            readiness("Job", &json!({"status": {"active": 1, "ready": 1}})),
            Readiness::Ready
        );
        assert!(matches!(
            readiness("Job", &json!({"status": {"active": 1, "ready": 0}})),
            Readiness::Pending(_)
        ));
        let j = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(readiness("Job", &j), Readiness::Ready);
        let j = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}});
        assert_eq!(
            readiness("Job", &j),
            Readiness::Failed("BackoffLimitExceeded".into())
        );
        assert!(matches!(
            readiness("Job", &json!({})),
            Readiness::Pending(_)
        ));
        assert_eq!(
            readiness("Service", &json!({"spec": {"clusterIP": "10.0.0.1"}})),
            Readiness::Ready
        );
        assert!(matches!(
            readiness("Service", &json!({"spec": {}})),
            Readiness::Pending(_)
        ));
        assert_eq!(readiness("ConfigMap", &json!({})), Readiness::Ready);
    }

    #[test]
    fn pod_problems_reports_image_pull_errors() {
        let pod = json!({"status": {"containerStatuses": [
            {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}},
            {"state": {"waiting": {"reason": "ContainerCreating"}}}
        ], "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes"}]}});
        assert_eq!(
            pod_problems(&pod),
            [
                "ImagePullBackOff: Back-off pulling image \"x\"",
                "Unschedulable: 0/1 nodes"
            ]
        );
    }
}

/// Associative lists in the object kinds we render, with their merge keys (from the Kubernetes
/// API's `x-kubernetes-list-map-keys`). Any other list is treated as atomic.
fn list_keys(field: &str) -> Option<&'static [&'static str]> {
    Some(match field {
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" => &["name"],
        "volumeMounts" => &["mountPath"],
        "ports" => &["containerPort", "port", "protocol"],
        _ => return None,
    })
}

/// Maps and structs the API declares atomic (owned as a whole).
fn atomic_map(field: &str) -> bool {
    matches!(field, "selector" | "nodeSelector" | "fieldRef" | "roleRef")
}

fn fields_of(v: &Value, field: Option<&str>) -> Value {
    match v {
        Value::Object(m) if !field.is_some_and(atomic_map) => {
            let mut out = Map::new();
            for (k, v) in m {
                out.insert(format!("f:{k}"), fields_of(v, Some(k)));
            }
            Value::Object(out)
        }
        Value::Array(items) => match field.and_then(list_keys) {
            Some(keys) => {
                let mut out = Map::new();
                for item in items {
                    let Some(obj) = item.as_object() else {
                        return Value::Object(Map::new());
                    };
                    let mut key = Map::new();
                    let mut names: Vec<&&str> =
                        keys.iter().filter(|k| obj.contains_key(**k)).collect();
                    names.sort();
                    for k in names {
                        key.insert((*k).to_owned(), obj[*k].clone());
                    }
                    let mut entry = Map::new();
                    entry.insert(".".into(), Value::Object(Map::new()));
                    if let Value::Object(fields) = fields_of(item, None) {
                        entry.extend(fields);
                    }
                    out.insert(
                        format!(
                            "k:{}",
                            serde_json::to_string(&Value::Object(key)).unwrap_or_default()
                        ),
                        Value::Object(entry),
                    );
                }
                Value::Object(out)
            }
            None => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    }
}

/// The `fieldsV1` set a server-side apply of `desired` leaves to its field manager (for the kinds
/// and fields we render). `apiVersion`, `kind`, `metadata.name/namespace` are not tracked.
pub fn applied_fields(desired: &Value) -> Value {
    let mut d = desired.clone();
    if let Some(o) = d.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("name");
            m.remove("namespace");
            if m.is_empty() {
                o.remove("metadata");
            }
        }
    }
    fields_of(&d, None)
}

/// Every value in `desired` is present and equal in `live` (lists: same length, item by item).
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, dv)| l.get(k).is_some_and(|lv| is_subset(dv, lv))),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        (d, l) => d == l,
    }
}

/// Whether applying `desired` to `live` is certainly a no-op, without asking the server: every
/// desired value is already live, and our field manager's applied field set is exactly the
/// desired one (so nothing would be removed, and no other manager has taken a field from us).
/// `false` only means "ask the server" (dry-run).
pub fn certainly_unchanged(desired: &Value, live: &Value, manager: &str) -> bool {
    if !is_subset(desired, live) {
        return false;
    }
    let Some(entries) = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return false;
    };
    let ours: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Apply")
                && e.get("subresource").is_none()
        })
        .collect();
    match ours.as_slice() {
        [one] => one.get("fieldsV1") == Some(&applied_fields(desired)),
        _ => false,
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn applied_fields_match_the_servers_shape() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "x", "namespace": "n", "labels": {"run": "x"}},
            "spec": {"selector": {"matchLabels": {"run": "x"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "i",
                        "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                        "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}]}]}}}});
        assert_eq!(
            applied_fields(&d),
            json!({"f:metadata": {"f:labels": {"f:run": {}}},
                   "f:spec": {"f:selector": {}, "f:template": {"f:spec": {"f:containers": {
                       "k:{\"name\":\"c\"}": {".": {}, "f:env": {"k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:valueFrom": {"f:fieldRef": {}}}},
                                               "f:image": {}, "f:name": {},
                                               "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}}}}}}}}})
        );
    }

    #[test]
    fn unchanged_needs_equal_values_and_ownership() {
        let d = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        let mut live = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "uid": "u", "managedFields": [
                {"manager": "aion-reconcile", "operation": "Apply", "fieldsV1": {"f:data": {"f:a": {}}}}]},
            "data": {"a": "1"}});
        assert!(certainly_unchanged(&d, &live, "aion-reconcile"));
        live["data"]["a"] = json!("2");
        assert!(!certainly_unchanged(&d, &live, "aion-reconcile"));
        live["data"]["a"] = json!("1");
        // We used to own another field that the desired object no longer has: SSA would remove it.
        live["metadata"]["managedFields"][0]["fieldsV1"] =
            json!({"f:data": {"f:a": {}, "f:b": {}}});
        assert!(!certainly_unchanged(&d, &live, "aion-reconcile"));
        // Another manager took the field.
        live["metadata"]["managedFields"][0]["fieldsV1"] = json!({});
        assert!(!certainly_unchanged(&d, &live, "aion-reconcile"));
    }
}
