//! The cluster side of aion-reconcile against the real kube-apiserver (scripts/k8s-testenv.sh):
//! create, no-change re-apply, a one-field edit, prune, conflicts, invalid values, down.
//! Each test uses its own namespace and inventory name, so tests don't collide.

use std::collections::BTreeMap;
use std::path::Path;

use aion_integration_tests::k8s;
use aion_model::{Inventory, ServicesFile};
use aion_reconcile::cluster::{self, Action, ClusterError, ExecuteOptions};
use aion_reconcile::manifest::{Manifests, ObjectKey};
use aion_reconcile::render;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

fn inventory(name: &str, namespace: &str) -> Inventory {
    let text = format!(
        "name: {name}\nmode: single\nhosts:\n  - name: edge-master\n    address: 127.0.0.1\n    role: master\n    vars: {{namespace: {namespace}}}\n"
    );
    let loaded =
        aion_model::inventory::load_str(&text, Path::new("/tmp/aion-test/inventory.yml")).unwrap();
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    loaded.value
}

fn services(text: &str) -> ServicesFile {
    let loaded =
        aion_model::services::load_str(text, Path::new("/tmp/aion-test/services.yml")).unwrap();
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    loaded.value
}

fn rendered(inv: &Inventory, services_yml: &str) -> Manifests {
    render::render(inv, &[("edge-master".to_owned(), services(services_yml))]).unwrap()
}

// `startup: yes`: rendered running (the others are rendered idle for on-demand start).
const SERVICES: &str = r#"
microservices:
  alpha:
    always: yes
    startup: yes
    env:
      GREETING: hello
      MYSQL_PORT: 3306
  beta:
    always: yes
    startup: yes
    env:
      LEVEL: info
  gamma:
    always: yes
    startup: yes
    ports:
      - name: http
        protocol: TCP
        port: 8080
  once:
    always: no
    startup: yes
    command: ["/bin/true"]
"#;

/// resourceVersion of every object the inventory owns.
async fn versions(client: &kube::Client, inv: &str) -> BTreeMap<ObjectKey, String> {
    cluster::list_owned(client, inv)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let rv = v["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_owned();
            (k, rv)
        })
        .collect()
}

/// [`versions`] once controllers have stopped writing status (two equal listings 1 s apart):
/// the Deployment and Job controllers update status after each of our writes, which moves
/// resourceVersions without any request from us.
async fn settled_versions(client: &kube::Client, inv: &str) -> BTreeMap<ObjectKey, String> {
    let mut prev = versions(client, inv).await;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = versions(client, inv).await;
        if now == prev {
            return now;
        }
        prev = now;
    }
    panic!("resourceVersions of inventory {inv} never settled");
}

fn keys(plan: &cluster::ClusterPlan, action: Action) -> Vec<String> {
    plan.changes
        .iter()
        .filter(|c| c.action == action)
        .map(|c| c.key.to_string())
        .collect()
}

#[tokio::test]
async fn apply_noop_edit_prune_down() {
    let Some(tc) = k8s::require() else { return };
    aion_reconcile::kubeclient::install_crypto_provider();
    let client = tc.client().await;
    let ns = tc.fresh_namespace().await;
    let inv = inventory(&ns, &ns);
    let opts = ExecuteOptions::default();

    // 1. First apply creates everything.
    let m = rendered(&inv, SERVICES);
    let total = m.objects().count();
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    // The namespace exists already (made by the test), so it is adopted (changed: our labels).
    assert_eq!(keys(&plan, Action::Change), [format!("Namespace/{ns}")]);
    assert_eq!(
        plan.counts.create,
        total - 1,
        "{}",
        plan.render_text(false, false)
    );
    let report = cluster::execute(&client, &plan, &opts).await.unwrap();
    assert_eq!(report.created.len(), total - 1);
    let v1 = settled_versions(&client, &ns).await;
    assert_eq!(v1.len(), total, "every rendered object carries our labels");

    // 2. Second apply changes nothing: no request that writes, resourceVersions unchanged.
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert!(!plan.has_changes(), "{}", plan.render_text(false, true));
    assert_eq!(plan.counts.unchanged, total);
    let report = cluster::execute(&client, &plan, &opts).await.unwrap();
    assert!(report.created.is_empty() && report.configured.is_empty() && report.deleted.is_empty());
    assert_eq!(versions(&client, &ns).await, v1);

    // 3. Edit one field of one microservice: the diff shows only that field, apply touches
    //    only that object.
    let edited = SERVICES.replace("LEVEL: info", "LEVEL: debug");
    let m2 = rendered(&inv, &edited);
    let plan = cluster::plan(&client, &m2, &inv).await.unwrap();
    assert_eq!(
        keys(&plan, Action::Change),
        [format!("Deployment/{ns}/beta-001")]
    );
    assert_eq!(plan.counts.unchanged, total - 1);
    let diff = plan
        .changes
        .iter()
        .find(|c| c.action == Action::Change)
        .unwrap();
    let diff = diff.diff.as_deref().unwrap();
    let changed: Vec<String> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .map(|l| format!("{}{}", &l[..1], l[1..].trim()))
        .collect();
    assert_eq!(changed, ["-value: info", "+value: debug"], "{diff}");
    let report = cluster::execute(&client, &plan, &opts).await.unwrap();
    assert_eq!(
        report
            .configured
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        [format!("Deployment/{ns}/beta-001")]
    );
    let v2 = versions(&client, &ns).await;
    for (k, rv) in &v1 {
        if k.name == "beta-001" {
            assert_ne!(&v2[k], rv, "{k} was changed");
        } else {
            assert_eq!(&v2[k], rv, "{k} must not be touched");
        }
    }

    // 4. Remove a microservice: exactly its objects are pruned.
    let removed = edited.replace(
        "  gamma:\n    always: yes\n    startup: yes\n    ports:\n      - name: http\n        protocol: TCP\n        port: 8080\n",
        "",
    );
    assert_ne!(removed, edited);
    let m3 = rendered(&inv, &removed);
    let plan = cluster::plan(&client, &m3, &inv).await.unwrap();
    let mut deleted = keys(&plan, Action::Delete);
    deleted.sort();
    assert_eq!(
        deleted,
        [
            format!("Deployment/{ns}/gamma-001"),
            format!("Service/{ns}/gamma-001-srv")
        ]
    );
    assert!(keys(&plan, Action::Change).is_empty() && keys(&plan, Action::Create).is_empty());
    // An object of another inventory in the same namespace, with our managed-by label, is
    // never pruned.
    let foreign = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "not-ours", "namespace": ns,
                     "labels": {"app.kubernetes.io/managed-by": "aion-reconcile",
                                "aion.latona.io/inventory": "someone-else"}},
        "data": {"k": "v"}
    });
    cluster::apply_objects(&client, &[foreign]).await.unwrap();
    let plan = cluster::plan(&client, &m3, &inv).await.unwrap();
    assert_eq!(plan.counts.delete, 2);
    cluster::execute(&client, &plan, &opts).await.unwrap();
    let v3 = versions(&client, &ns).await;
    assert_eq!(v3.len(), total - 2);
    assert!(v3.keys().all(|k| !k.name.starts_with("gamma-")));
    let cm_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("", "v1", "ConfigMap"),
        "configmaps",
    );
    let cms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &cm_ar);
    assert!(cms.get_opt("not-ours").await.unwrap().is_some());

    // 5. down deletes what this inventory owns, and nothing else.
    let deleted = cluster::down(&client, &ns, &opts).await.unwrap();
    assert_eq!(deleted.len(), total - 2);
    let left = cluster::list_owned(&client, &ns).await.unwrap();
    assert!(
        left.iter()
            .all(|(_, v)| v["metadata"]["deletionTimestamp"].is_string()),
        "{left:?}"
    );
    tc.delete_namespace(&ns).await;
}

/// A fresh namespace (also the inventory's name) with [`SERVICES`] rendered and applied into it.
async fn applied_in_fresh_namespace(
    tc: &k8s::TestCluster,
) -> (kube::Client, String, Inventory, Manifests) {
    aion_reconcile::kubeclient::install_crypto_provider();
    let client = tc.client().await;
    let ns = tc.fresh_namespace().await;
    let inv = inventory(&ns, &ns);
    let m = rendered(&inv, SERVICES);
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    cluster::execute(&client, &plan, &ExecuteOptions::default())
        .await
        .unwrap();
    (client, ns, inv, m)
}

#[tokio::test]
async fn conflicts_with_another_manager_are_reported() {
    let Some(tc) = k8s::require() else { return };
    let (client, ns, inv, m) = applied_in_fresh_namespace(&tc).await;

    // Someone else takes the image of alpha-001 (forced apply by another field manager).
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps", "v1", "Deployment"),
        "deployments",
    );
    let deployments: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let patch = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "alpha-001", "namespace": ns},
        "spec": {"template": {"spec": {"containers": [{"name": "alpha-001", "image": "intruder/alpha:evil"}]}}}
    });
    deployments
        .patch(
            "alpha-001",
            &PatchParams::apply("intruder").force(),
            &Patch::Apply(&patch),
        )
        .await
        .unwrap();

    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert_eq!(
        keys(&plan, Action::Conflict),
        [format!("Deployment/{ns}/alpha-001")]
    );
    let c = plan
        .changes
        .iter()
        .find(|c| c.action == Action::Conflict)
        .unwrap();
    let msg = c.message.as_deref().unwrap();
    assert!(msg.contains("intruder") && msg.contains("image"), "{msg}");
    let text = plan.render_text(false, false);
    assert!(
        text.contains(&format!("! Deployment/{ns}/alpha-001")),
        "{text}"
    );

    let before = settled_versions(&client, &ns).await;
    let err = cluster::execute(&client, &plan, &ExecuteOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::Conflicts { count: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--force-conflicts"), "{err}");
    assert_eq!(
        versions(&client, &ns).await,
        before,
        "nothing applied on conflict"
    );

    let forced = ExecuteOptions {
        force_conflicts: true,
        ..ExecuteOptions::default()
    };
    cluster::execute(&client, &plan, &forced).await.unwrap();
    let live = deployments.get("alpha-001").await.unwrap();
    let live = serde_json::to_value(&live).unwrap();
    assert_eq!(
        live["spec"]["template"]["spec"]["containers"][0]["image"],
        "latonaio/alpha:latest"
    );
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert!(!plan.has_changes(), "{}", plan.render_text(false, true));

    cluster::down(&client, &ns, &ExecuteOptions::default())
        .await
        .unwrap();
    tc.delete_namespace(&ns).await;
}

#[tokio::test]
async fn invalid_values_fail_before_anything_is_sent() {
    let Some(tc) = k8s::require() else { return };
    aion_reconcile::kubeclient::install_crypto_provider();
    let client = tc.client().await;
    let ns = tc.fresh_namespace().await;
    let inv = inventory(&ns, &ns);

    // Caught by render (no request at all), with the file position.
    let bad = "microservices:\n  usb:\n    always: yes\n    volumeMountPathList: [\"/dev:/dev:Bidirectional\"]\n";
    let err = render::render(&inv, &[("edge-master".to_owned(), services(bad))]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("/tmp/aion-test/services.yml:"), "{msg}");
    assert!(msg.contains("privileged"), "{msg}");

    // Caught by the server's dry-run: plan marks it invalid and execute refuses before
    // sending anything.
    let bad = "microservices:\n  hungry:\n    always: yes\n    resources:\n      requests: {cpu: \"2\"}\n      limits: {cpu: \"1\"}\n";
    let m = rendered(&inv, bad);
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert_eq!(
        keys(&plan, Action::Invalid),
        [format!("Deployment/{ns}/hungry-001")]
    );
    let err = cluster::execute(&client, &plan, &ExecuteOptions::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ClusterError::Invalid { count: 1, .. }),
        "{msg}"
    );
    assert!(msg.contains("hungry-001") && msg.contains("cpu"), "{msg}");
    assert!(
        cluster::list_owned(&client, &ns).await.unwrap().is_empty(),
        "nothing may be created"
    );
    tc.delete_namespace(&ns).await;
}

/// `--wait` against the real apiserver: Services and the Namespace are ready at once; workloads
/// whose pods never run (this control plane has no scheduler and no kubelet runs pods) time out
/// with `NotReady`, naming every such object and what it is still waiting for.
#[tokio::test]
async fn wait_names_what_is_not_ready() {
    let Some(tc) = k8s::require() else { return };
    let (client, ns, _, m) = applied_in_fresh_namespace(&tc).await;
    let opts = ExecuteOptions::default();
    let of_kind = |kinds: &[&str]| -> Vec<ObjectKey> {
        m.objects()
            .map(|o| o.key.clone())
            .filter(|k| kinds.contains(&k.kind.as_str()))
            .collect()
    };

    let quick = of_kind(&["Service", "Namespace"]);
    assert!(quick.len() >= 2, "{quick:?}");
    cluster::wait_ready(&client, &quick, std::time::Duration::from_secs(30), &opts)
        .await
        .unwrap();

    let workloads = of_kind(&["Deployment", "Job"]);
    let err = cluster::wait_ready(
        &client,
        &workloads,
        std::time::Duration::from_secs(3),
        &opts,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    match &err {
        ClusterError::NotReady { count, .. } => assert_eq!(*count, workloads.len(), "{msg}"),
        other => panic!("expected NotReady, got {other}"),
    }
    for k in &workloads {
        assert!(msg.contains(&k.to_string()), "{k} missing from: {msg}");
    }
    assert!(msg.contains(&format!("Job/{ns}/once-001: ")), "{msg}");
    assert!(msg.contains("not complete"), "{msg}");
    tc.delete_namespace(&ns).await;
}

/// Objects already being deleted are not work to do (issue: after an apply that pruned a
/// namespace, `plan --detailed-exitcode` exited 2 with `- Namespace/…` until the namespace
/// controller finished). A namespace held `Terminating` by a finalizer on a ConfigMap in it:
/// the plan shows it as being deleted and has no changes; planned as desired again, it is a
/// replacement (created once gone); `wait_pruned` returns once the finalizer is gone.
#[tokio::test]
async fn objects_being_deleted_are_not_work_to_do() {
    let Some(tc) = k8s::require() else { return };
    let (client, ns, inv, m) = applied_in_fresh_namespace(&tc).await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    let held: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "held", "finalizers": ["aion.test/hold"]},
    }))
    .unwrap();
    cms.create(&Default::default(), &held).await.unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces.delete(&ns, &Default::default()).await.unwrap();

    // The inventory no longer renders anything: its namespace is pruned, and already going.
    let empty = Manifests {
        inventory: inv.name.clone(),
        nodes: Vec::new(),
    };
    let plan = cluster::plan_with(&client, &empty, &inv.name, 4)
        .await
        .unwrap();
    let text = plan.render_text(false, false);
    // The namespace, and what is still in it, goes without anything more to do.
    assert!(
        keys(&plan, Action::Deleting).contains(&format!("Namespace/{ns}")),
        "{text}"
    );
    assert!(keys(&plan, Action::Delete).is_empty(), "{text}");
    assert!(
        !plan.has_changes(),
        "nothing to do while it is being deleted:\n{text}"
    );
    assert!(text.contains(&format!("(-) Namespace/{ns}")), "{text}");
    assert!(text.contains("being deleted since"), "{text}");
    assert!(
        plan.summary().contains("being deleted"),
        "{}",
        plan.summary()
    );

    // Desired again while still terminating: created again once it is gone.
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    let ns_change = plan
        .changes
        .iter()
        .find(|c| c.key.kind == "Namespace")
        .unwrap();
    assert_eq!(
        ns_change.action,
        Action::Replace,
        "{}",
        plan.render_text(false, false)
    );
    assert!(plan.has_changes());

    // Released: wait_pruned sees it go.
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    cluster::wait_pruned(
        &client,
        &empty,
        std::time::Duration::from_secs(120),
        &ExecuteOptions::default(),
    )
    .await
    .unwrap();
    assert!(namespaces.get_opt(&ns).await.unwrap().is_none());
}

/// A `gpu: true` host: the cluster-scoped RuntimeClass `nvidia` is created, owned (a second
/// plan has nothing to do) and pruned with the inventory.
#[tokio::test]
async fn runtime_class_for_gpu_hosts_is_applied_and_pruned() {
    let Some(tc) = k8s::require() else { return };
    aion_reconcile::kubeclient::install_crypto_provider();
    let client = tc.client().await;
    let ns = tc.fresh_namespace().await;
    let text = format!(
        "name: {ns}\nmode: single\nhosts:\n  - name: edge-master\n    address: 127.0.0.1\n    role: master\n    vars: {{namespace: {ns}, gpu: true}}\n"
    );
    let inv = aion_model::inventory::load_str(&text, Path::new("/tmp/aion-test/inventory.yml"))
        .unwrap()
        .value;
    let m = rendered(
        &inv,
        "microservices:\n  detector: {runtimeClassName: nvidia, startup: yes}\n",
    );
    let runtime_classes = Api::<DynamicObject>::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("node.k8s.io", "v1", "RuntimeClass"),
            "runtimeclasses",
        ),
    );
    // Another test's inventory may own it (one per cluster): take it over for this one.
    let _ = runtime_classes.delete("nvidia", &Default::default()).await;
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert!(
        keys(&plan, Action::Create).contains(&"RuntimeClass/nvidia".to_string()),
        "{}",
        plan.render_text(false, false)
    );
    cluster::execute(&client, &plan, &ExecuteOptions::default())
        .await
        .unwrap();
    let rc = runtime_classes.get("nvidia").await.unwrap();
    assert_eq!(rc.data["handler"], "nvidia");
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert!(!plan.has_changes(), "{}", plan.render_text(false, true));
    cluster::down(&client, &inv.name, &ExecuteOptions::default())
        .await
        .unwrap();
    assert!(runtime_classes.get_opt("nvidia").await.unwrap().is_none());
    tc.delete_namespace(&ns).await;
}
