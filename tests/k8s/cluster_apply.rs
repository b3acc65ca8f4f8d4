//! The cluster side of aion-reconcile against the real kube-apiserver (scripts/k8s-testenv.sh):
//! create, no-change re-apply, a one-field edit, prune, conflicts, invalid values, down.
//! Each test uses its own namespace and inventory name, so tests don't collide.

use std::collections::BTreeMap;
use std::path::Path;

use aion_integration_tests::k8s;
use aion_model::{Inventory, ServicesFile};
use aion_reconcile::cluster::history::{History, RollbackPlan};
use aion_reconcile::cluster::{self, ClusterApplyOptions, ClusterError, ObjectAction};
use aion_reconcile::manifest::{Manifests, ObjectKey};
use aion_reconcile::render;
use aion_reconcile::revision::Origin;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

fn inventory(name: &str, namespace: &str) -> Inventory {
    k8s::inventory(&format!(
        "name: {name}\nmode: single\nhosts:\n  - name: edge-master\n    address: 127.0.0.1\n    role: master\n    vars: {{namespace: {namespace}}}\n"
    ))
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

fn keys(plan: &cluster::ClusterPlan, action: ObjectAction) -> Vec<String> {
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
    let opts = ClusterApplyOptions::default();

    // 1. First apply creates everything.
    let m = rendered(&inv, SERVICES);
    let total = m.objects().count();
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    // The namespace exists already (made by the test), so it is adopted (changed: our labels).
    assert_eq!(
        keys(&plan, ObjectAction::Change),
        [format!("Namespace/{ns}")]
    );
    assert_eq!(
        plan.counts.create,
        total - 1,
        "{}",
        plan.render_text(false, false)
    );
    let report = cluster::apply_plan(&client, &plan, &opts).await.unwrap();
    assert_eq!(report.created.len(), total - 1);
    let v1 = settled_versions(&client, &ns).await;
    assert_eq!(v1.len(), total, "every rendered object carries our labels");

    // 2. Second apply changes nothing: no request that writes, resourceVersions unchanged.
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert!(!plan.has_changes(), "{}", plan.render_text(false, true));
    assert_eq!(plan.counts.unchanged, total);
    let report = cluster::apply_plan(&client, &plan, &opts).await.unwrap();
    assert!(report.created.is_empty() && report.configured.is_empty() && report.deleted.is_empty());
    assert_eq!(versions(&client, &ns).await, v1);

    // 3. Edit one field of one microservice: the diff shows only that field, apply touches
    //    only that object.
    let edited = SERVICES.replace("LEVEL: info", "LEVEL: debug");
    let m2 = rendered(&inv, &edited);
    let plan = cluster::plan(&client, &m2, &inv).await.unwrap();
    assert_eq!(
        keys(&plan, ObjectAction::Change),
        [format!("Deployment/{ns}/beta-001")]
    );
    assert_eq!(plan.counts.unchanged, total - 1);
    let diff = plan
        .changes
        .iter()
        .find(|c| c.action == ObjectAction::Change)
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
    let report = cluster::apply_plan(&client, &plan, &opts).await.unwrap();
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
    let mut deleted = keys(&plan, ObjectAction::Delete);
    deleted.sort();
    assert_eq!(
        deleted,
        [
            format!("Deployment/{ns}/gamma-001"),
            format!("Service/{ns}/gamma-001-srv")
        ]
    );
    assert!(
        keys(&plan, ObjectAction::Change).is_empty()
            && keys(&plan, ObjectAction::Create).is_empty()
    );
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
    cluster::apply_plan(&client, &plan, &opts).await.unwrap();
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
    cluster::apply_plan(&client, &plan, &ClusterApplyOptions::default())
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
        keys(&plan, ObjectAction::Conflict),
        [format!("Deployment/{ns}/alpha-001")]
    );
    let c = plan
        .changes
        .iter()
        .find(|c| c.action == ObjectAction::Conflict)
        .unwrap();
    let msg = c.message.as_deref().unwrap();
    assert!(msg.contains("intruder") && msg.contains("image"), "{msg}");
    let text = plan.render_text(false, false);
    assert!(
        text.contains(&format!("! Deployment/{ns}/alpha-001")),
        "{text}"
    );

    let before = settled_versions(&client, &ns).await;
    let err = cluster::apply_plan(&client, &plan, &ClusterApplyOptions::default())
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

    let forced = ClusterApplyOptions {
        force_conflicts: true,
        ..ClusterApplyOptions::default()
    };
    cluster::apply_plan(&client, &plan, &forced).await.unwrap();
    let live = deployments.get("alpha-001").await.unwrap();
    let live = serde_json::to_value(&live).unwrap();
    assert_eq!(
        live["spec"]["template"]["spec"]["containers"][0]["image"],
        "latonaio/alpha:latest"
    );
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert!(!plan.has_changes(), "{}", plan.render_text(false, true));

    cluster::down(&client, &ns, &ClusterApplyOptions::default())
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
        keys(&plan, ObjectAction::Invalid),
        [format!("Deployment/{ns}/hungry-001")]
    );
    let err = cluster::apply_plan(&client, &plan, &ClusterApplyOptions::default())
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
    let opts = ClusterApplyOptions::default();
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
        keys(&plan, ObjectAction::Deleting).contains(&format!("Namespace/{ns}")),
        "{text}"
    );
    assert!(keys(&plan, ObjectAction::Delete).is_empty(), "{text}");
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
        ObjectAction::Replace,
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
        &ClusterApplyOptions::default(),
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
    let inv = k8s::inventory(&text);
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
        keys(&plan, ObjectAction::Create).contains(&"RuntimeClass/nvidia".to_string()),
        "{}",
        plan.render_text(false, false)
    );
    cluster::apply_plan(&client, &plan, &ClusterApplyOptions::default())
        .await
        .unwrap();
    let rc = runtime_classes.get("nvidia").await.unwrap();
    assert_eq!(rc.data["handler"], "nvidia");
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert!(!plan.has_changes(), "{}", plan.render_text(false, true));
    cluster::down(&client, &inv.name, &ClusterApplyOptions::default())
        .await
        .unwrap();
    assert!(runtime_classes.get_opt("nvidia").await.unwrap().is_none());
    tc.delete_namespace(&ns).await;
}

/// An inventory file in `dir` (rollback and history load the inventory from disk; its `.aion`
/// state directory, with the local lock, sits beside it). The master's SSH port is closed: the
/// rollback holds only the local lock and says so.
fn inventory_file(dir: &Path, name: &str, namespace: &str, keep: u32) -> std::path::PathBuf {
    let path = dir.join("inventory.yml");
    std::fs::write(
        &path,
        format!(
            "name: {name}\nmode: single\nrevisionHistory: {keep}\nhosts:\n  - name: edge-master\n    address: 127.0.0.1\n    role: master\n    ssh: {{port: 9}}\n    vars: {{namespace: {namespace}}}\n"
        ),
    )
    .unwrap();
    path
}

/// Apply `m` and record it, as `apply` does after a cluster apply with changes.
async fn apply_and_record(
    client: &kube::Client,
    inv: &Inventory,
    m: &Manifests,
    history: &History,
) -> u32 {
    let plan = cluster::plan(client, m, inv).await.unwrap();
    assert!(plan.has_changes(), "{}", plan.render_text(false, false));
    cluster::apply_plan(client, &plan, &ClusterApplyOptions::default())
        .await
        .unwrap();
    let inputs = BTreeMap::from([("inventory".to_string(), "test".to_string())]);
    history
        .record(
            m,
            Origin::Apply,
            inputs,
            &Default::default(),
            inv.revision_history,
        )
        .await
        .unwrap()
}

/// Issue 16 on the real apiserver: revisions recorded and pruned to the inventory's
/// `revisionHistory`, what changed per microservice, `rollback --to 1` makes the live objects
/// equal to revision 1 (diff empty, untouched objects keep their resourceVersions) and is itself
/// a revision; a corrupted revision is a clear error and nothing is applied; a rollback is
/// refused while another apply holds the lock.
#[tokio::test]
async fn revisions_history_rollback() {
    let Some(tc) = k8s::require() else { return };
    aion_reconcile::kubeclient::install_crypto_provider();
    let client = tc.client().await;
    let ns = tc.fresh_namespace().await;
    let dir = tempfile::tempdir().unwrap();
    let inv_path = inventory_file(dir.path(), &ns, &ns, 3);
    let inv = aion_reconcile::reconcile::load_inventory(&inv_path).unwrap();
    assert_eq!(inv.revision_history, 3);
    let history = History::of(&client, &inv);

    // Revision 1, then 2: beta's env changes, gamma goes, beta's image changes.
    let v1 = rendered(&inv, SERVICES);
    assert_eq!(apply_and_record(&client, &inv, &v1, &history).await, 1);
    let v2_text = SERVICES
        .replace("LEVEL: info", "LEVEL: debug\n    tag: \"2\"")
        .replace(
            "  gamma:\n    always: yes\n    startup: yes\n    ports:\n      - name: http\n        protocol: TCP\n        port: 8080\n",
            "",
        );
    let v2 = rendered(&inv, &v2_text);
    assert_eq!(apply_and_record(&client, &inv, &v2, &history).await, 2);

    // history: what changed per microservice, the image called out.
    let decoded = history.decoded().await.unwrap();
    let entries = aion_reconcile::commands::history::entries(&decoded);
    let text = aion_reconcile::commands::history::render_text(&ns, &entries);
    let second: Vec<(&str, &str)> = entries[1]
        .changes
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.symbol, c.owner.as_str()))
        .collect();
    assert_eq!(second, [("~", "beta"), ("-", "gamma")], "{text}");
    assert!(
        text.contains("~ beta  image ") && text.contains("/beta:2\n"),
        "{text}"
    );

    // A rollback is refused while another apply holds the lock; nothing changes.
    let before = settled_versions(&client, &ns).await;
    let options = aion_reconcile::reconcile::Options {
        inventory: inv_path.clone(),
        parallel: 4,
        accept_new_host_keys: false,
        connect_timeout: std::time::Duration::from_secs(5),
        ssh_persist: None,
        upload_limit: None,
    };
    let to = |n: u32| aion_reconcile::reconcile::RollbackOptions {
        to: Some(n),
        kubeconfig: Some(tc.kubeconfig().to_owned()),
        lock_stale_after: std::time::Duration::from_secs(3600),
        wait: None,
        render: aion_reconcile::progress::Render::Lines,
    };
    let yes = |_: &RollbackPlan| Ok(true);
    {
        let state = aion_reconcile::reconcile::state_dir(&inv_path);
        std::fs::create_dir_all(&state).unwrap();
        let _held = aion_reconcile::lock::LocalLock::acquire(
            &state.join("reconcile.lock"),
            "another apply",
        )
        .unwrap();
        let err = aion_reconcile::reconcile::rollback(&options, &to(1), &yes)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("another apply"), "{err:#}");
    }
    assert_eq!(versions(&client, &ns).await, before);

    // rollback --to 1: the plan shows beta changed back and gamma created again; afterwards
    // the live objects equal revision 1 and the untouched ones kept their resourceVersions.
    let shown = std::sync::Mutex::new(String::new());
    let confirm = |p: &RollbackPlan| {
        *shown.lock().unwrap() = p.plan.render_text(false, false);
        Ok(true)
    };
    let outcome = aion_reconcile::reconcile::rollback(&options, &to(1), &confirm)
        .await
        .unwrap();
    let shown = shown.into_inner().unwrap();
    assert_eq!((outcome.target, outcome.revision), (1, Some(3)), "{shown}");
    assert!(
        shown.contains(&format!("~ Deployment/{ns}/beta-001"))
            && shown.contains(&format!("+ Deployment/{ns}/gamma-001")),
        "{shown}"
    );
    let again = cluster::plan(&client, &v1, &inv).await.unwrap();
    assert!(!again.has_changes(), "{}", again.render_text(false, true));
    let after = versions(&client, &ns).await;
    for (k, rv) in &before {
        if !k.name.starts_with("beta-") {
            assert_eq!(after.get(k), Some(rv), "{k} must not be touched");
        }
    }
    let third = history.load(Some(3)).await.unwrap();
    assert_eq!(third.describe(), "rollback to 1");
    assert_eq!(
        third.manifests(),
        history.load(Some(1)).await.unwrap().manifests()
    );

    // Three more applies: exactly 3 revisions are kept (4, 5, 6).
    for (i, level) in ["a", "b", "c"].iter().enumerate() {
        let m = rendered(
            &inv,
            &SERVICES.replace("LEVEL: info", &format!("LEVEL: {level}")),
        );
        assert_eq!(
            apply_and_record(&client, &inv, &m, &history).await,
            4 + i as u32
        );
    }
    let numbers: Vec<u32> = history
        .list()
        .await
        .unwrap()
        .iter()
        .map(|(h, _)| h.number)
        .collect();
    assert_eq!(numbers, [4, 5, 6]);

    // A corrupted revision: a clear error naming its Secret, nothing applied.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let name = aion_reconcile::revision::secret_name(&ns, 4);
    secrets
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"revision": "bm90IGd6aXA="}})),
        )
        .await
        .unwrap();
    let before = settled_versions(&client, &ns).await;
    let err = aion_reconcile::reconcile::rollback(&options, &to(4), &yes)
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&name) && msg.contains("not gzip"), "{msg}");
    assert_eq!(versions(&client, &ns).await, before);
    // An unknown revision names the ones there are.
    let err = aion_reconcile::reconcile::rollback(&options, &to(1), &yes)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("(revisions: 4, 5, 6)"),
        "{err:#}"
    );

    // down takes the history with it.
    assert_eq!(history.delete_all().await.unwrap(), 3);
    assert!(history.list().await.unwrap().is_empty());
    cluster::down(&client, &ns, &ClusterApplyOptions::default())
        .await
        .unwrap();
    tc.delete_namespace(&ns).await;
}
