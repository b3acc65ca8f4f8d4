//! The test control plane is a real one: server-side apply with field managers, dry-run,
//! apply conflicts and the controller-manager all behave as in a cluster.
//! Needs `AION_TEST_KUBECONFIG` (see `scripts/k8s-testenv.sh`).

use std::time::Duration;

use aion_integration_tests::k8s;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const MANAGER_A: &str = "aion-test-a";
const MANAGER_B: &str = "aion-test-b";

fn deployment(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "web", "image": "registry.invalid/web:1" }] }
            }
        }
    })
}

/// Managers recorded in `metadata.managedFields` as (manager, operation).
fn managers(d: &Deployment) -> Vec<(String, String)> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn apiserver_reports_the_pinned_version() {
    let Some(cluster) = k8s::require() else {
        return;
    };
    let info = cluster
        .client()
        .await
        .apiserver_version()
        .await
        .expect("GET /version");
    // k8s-openapi is built with feature v1_37; the apiserver must be the same minor.
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "37"));
    assert!(
        info.git_version.starts_with("v1.37."),
        "gitVersion {:?} (version ldflags missing?)",
        info.git_version
    );
}

/// Waits until the deployment controller has observed the latest generation and stopped writing
/// status, so that `resourceVersion` only moves when someone changes the object.
async fn settled(api: &Api<Deployment>, name: &str) -> Deployment {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut last_rv = None;
    loop {
        let d = api.get(name).await.expect("get Deployment");
        let observed = d.status.as_ref().and_then(|s| s.observed_generation);
        let status_replicas = d.status.as_ref().and_then(|s| s.replicas);
        let rv = d.metadata.resource_version.clone();
        if observed.is_some()
            && observed == d.metadata.generation
            && status_replicas == d.spec.replicas
            && rv == last_rv
        {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Deployment {name} did not settle within 180 s: is kube-controller-manager running? {:?}",
            d.status
        );
        last_rv = rv;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn server_side_apply_dry_run_and_conflicts() {
    let Some(cluster) = k8s::require() else {
        return;
    };
    let ns = cluster.fresh_namespace().await;
    let client = cluster.client().await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // 1. Server-side apply with a field manager creates the object and records the manager.
    let created = api
        .patch(
            "web",
            &PatchParams::apply(MANAGER_A),
            &Patch::Apply(deployment("web", 1)),
        )
        .await
        .expect("server-side apply by manager A");
    assert_eq!(created.spec.replicas, Some(1));
    assert!(
        managers(&created).contains(&(MANAGER_A.to_string(), "Apply".to_string())),
        "managedFields: {:?}",
        managers(&created)
    );
    // The controller-manager writes status after our apply; wait for it so resourceVersion is
    // stable.
    let before = settled(&api, "web").await;
    let rv = before
        .metadata
        .resource_version
        .clone()
        .expect("resourceVersion");
    let generation = before.metadata.generation;

    // 2. A server-side dry-run returns the would-be result and changes nothing.
    let dry = api
        .patch(
            "web",
            &PatchParams::apply(MANAGER_A).dry_run(),
            &Patch::Apply(deployment("web", 3)),
        )
        .await
        .expect("dry-run apply");
    assert_eq!(dry.spec.replicas, Some(3));
    let stored = api.get("web").await.expect("get after dry-run");
    assert_eq!(stored.spec.replicas, Some(1));
    assert_eq!(stored.metadata.generation, generation);
    assert_eq!(
        stored.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );

    // The same on an object no controller writes to: resourceVersion and data stay as they were.
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
    let cm = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": v}});
    let cm_created = cms
        .patch(
            "settings",
            &PatchParams::apply(MANAGER_A),
            &Patch::Apply(cm("a")),
        )
        .await
        .expect("apply ConfigMap");
    let cm_dry = cms
        .patch(
            "settings",
            &PatchParams::apply(MANAGER_A).dry_run(),
            &Patch::Apply(cm("b")),
        )
        .await
        .expect("dry-run apply ConfigMap");
    assert_eq!(
        cm_dry
            .data
            .as_ref()
            .and_then(|d| d.get("mode"))
            .map(String::as_str),
        Some("b")
    );
    let cm_stored = cms.get("settings").await.expect("get ConfigMap");
    assert_eq!(
        cm_stored
            .data
            .as_ref()
            .and_then(|d| d.get("mode"))
            .map(String::as_str),
        Some("a")
    );
    assert_eq!(
        cm_stored.metadata.resource_version,
        cm_created.metadata.resource_version
    );

    // A dry-run of a new object is not persisted.
    let dry_new = api
        .patch(
            "dry-only",
            &PatchParams::apply(MANAGER_A).dry_run(),
            &Patch::Apply(deployment("dry-only", 1)),
        )
        .await
        .expect("dry-run apply of a new object");
    assert_eq!(dry_new.metadata.name.as_deref(), Some("dry-only"));
    assert!(
        api.get_opt("dry-only").await.expect("get_opt").is_none(),
        "dry-run created dry-only"
    );

    // 3. A second manager changing a field owned by A gets a 409 conflict naming A.
    let err = api
        .patch(
            "web",
            &PatchParams::apply(MANAGER_B),
            &Patch::Apply(deployment("web", 5)),
        )
        .await
        .expect_err("apply by manager B must conflict on spec.replicas");
    match &err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409, "{status:?}");
            assert_eq!(status.reason, "Conflict", "{status:?}");
            assert!(
                status.message.contains(MANAGER_A) && status.message.contains(".spec.replicas"),
                "conflict message should name manager and field: {}",
                status.message
            );
        }
        other => panic!("expected an API 409 conflict, got {other}"),
    }
    // The refused apply changed nothing (status writes by the controller may move
    // resourceVersion, but not the spec or its generation).
    let after_conflict = api.get("web").await.expect("get after conflict");
    assert_eq!(after_conflict.spec.replicas, Some(1));
    assert_eq!(after_conflict.metadata.generation, generation);

    // Forcing takes ownership of the field.
    let forced = api
        .patch(
            "web",
            &PatchParams::apply(MANAGER_B).force(),
            &Patch::Apply(deployment("web", 5)),
        )
        .await
        .expect("forced apply by manager B");
    assert_eq!(forced.spec.replicas, Some(5));
    assert!(managers(&forced).contains(&(MANAGER_B.to_string(), "Apply".to_string())));

    cluster.delete_namespace(&ns).await;
}

#[tokio::test]
async fn controller_manager_creates_the_replicaset() {
    let Some(cluster) = k8s::require() else {
        return;
    };
    let ns = cluster.fresh_namespace().await;
    let client = cluster.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replicasets: Api<ReplicaSet> = Api::namespaced(client, &ns);

    let d = deployments
        .patch(
            "web",
            &PatchParams::apply(MANAGER_A),
            &Patch::Apply(deployment("web", 2)),
        )
        .await
        .expect("apply Deployment");
    let uid = d.metadata.uid.expect("uid");

    // Generous timeout on a busy 2-core machine: this waits for the controller, it does not
    // measure it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let rs = loop {
        let list = replicasets
            .list(&ListParams::default())
            .await
            .expect("list ReplicaSets");
        let owned = list.items.into_iter().find(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.kind == "Deployment" && o.controller == Some(true))
        });
        if let Some(rs) = owned {
            break rs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ReplicaSet owned by Deployment {ns}/web after 180 s: is kube-controller-manager running?"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let spec = rs.spec;
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.selector
            .match_labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .map(String::as_str),
        Some("web")
    );

    cluster.delete_namespace(&ns).await;
}
