//! The cluster steps of a host plan ([`KubeCluster`]) on the real kube-apiserver, through the
//! same comparison and apply as the AION objects: a template with kinds aion does not manage
//! (a ClusterRole, found by discovery) is checked, applied, then unchanged; a master's taints
//! are seen and removed; a node that never becomes Ready times out with an error naming it.

use std::time::Duration;

use aion_integration_tests::k8s;
use aion_reconcile::change::ClusterStep;
use aion_reconcile::cluster::ClusterError;
use aion_reconcile::cluster::bootstrap::{ClusterOps, KubeCluster};
use aion_reconcile::plan::ClusterCheck;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

/// Deletes the cluster-scoped objects a test made, also when it fails.
struct Cleanup {
    kubeconfig: std::path::PathBuf,
    role: String,
    node: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (kubeconfig, role, node) = (
            self.kubeconfig.clone(),
            self.role.clone(),
            self.node.clone(),
        );
        // A thread and a runtime of its own, and a client of its own: the test's runtime is
        // blocked here (and a kube client's background task lives on the runtime that made it).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(client) = aion_reconcile::kubeclient::client_from(&kubeconfig).await else {
                    return;
                };
                let dp = DeleteParams::default();
                let _ = Api::<ClusterRole>::all(client.clone())
                    .delete(&role, &dp)
                    .await;
                let _ = Api::<Node>::all(client).delete(&node, &dp).await;
            });
        })
        .join();
    }
}

#[tokio::test]
async fn manifest_taints_and_node_readiness_through_the_cluster_layer() {
    let Some(tc) = k8s::require() else { return };
    aion_reconcile::kubeclient::install_crypto_provider();
    let client = tc.client().await;
    let ns = tc.fresh_namespace().await;
    let (role, node) = (format!("{ns}-reader"), format!("{ns}-master"));
    let _cleanup = Cleanup {
        kubeconfig: tc.kubeconfig().to_owned(),
        role: role.clone(),
        node: node.clone(),
    };
    let objects = vec![
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "net-conf", "namespace": ns},
               "data": {"net-conf.json": "{\"Network\": \"10.244.0.0/16\"}"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": role},
               "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]}),
    ];
    let kc = KubeCluster::new(
        tc.kubeconfig().to_owned(),
        vec![("net.yaml".into(), objects)],
    );
    let manifest = ClusterStep::ApplyManifest("net.yaml".into());

    // 1. Not there: both objects to create, the cluster-scoped kind resolved by discovery.
    match kc.check(&manifest).await {
        ClusterCheck::Needed(d) => {
            assert!(
                d.contains("+ConfigMap/net-conf") && d.contains(&format!("+ClusterRole/{role}")),
                "{d}"
            )
        }
        other => panic!("before apply: {other:?}"),
    }
    let done = kc.run(&manifest).await.unwrap();
    assert!(done.contains(&format!("ClusterRole/{role}")), "{done}");
    assert_eq!(kc.check(&manifest).await, ClusterCheck::Unchanged);

    // 2. Changed by hand: seen as a change, applied back, unchanged again.
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let mut live = roles.get(&role).await.unwrap();
    live.rules.as_mut().unwrap()[0].verbs = vec!["get".into(), "list".into()];
    roles
        .replace(&role, &PostParams::default(), &live)
        .await
        .unwrap();
    match kc.check(&manifest).await {
        ClusterCheck::Needed(d) => assert_eq!(d, format!("~ClusterRole/{role}")),
        other => panic!("after a change by hand: {other:?}"),
    }
    kc.run(&manifest).await.unwrap();
    assert_eq!(kc.check(&manifest).await, ClusterCheck::Unchanged);

    // 3. A master's taints (a Node object; no kubelet behind it): seen, removed, others kept.
    let nodes: Api<Node> = Api::all(client.clone());
    let n: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
        "spec": {"taints": [
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
            {"key": "example.org/keep", "effect": "NoSchedule"}]}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &n).await.unwrap();
    let untaint = ClusterStep::Untaint { node: node.clone() };
    assert_eq!(
        kc.check(&untaint).await,
        ClusterCheck::Needed("taints present".into())
    );
    kc.run(&untaint).await.unwrap();
    assert_eq!(kc.check(&untaint).await, ClusterCheck::Unchanged);
    let keys: Vec<String> = nodes
        .get(&node)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    // (the node controller adds its own not-ready taint to a node without kubelet)
    assert!(
        keys.contains(&"example.org/keep".to_string())
            && !keys
                .iter()
                .any(|k| k.starts_with("node-role.kubernetes.io/")),
        "{keys:?}"
    );

    // 4. A node with no kubelet never becomes Ready: the wait ends with its name.
    let ready = ClusterStep::WaitNodeReady {
        node: node.clone(),
        timeout_seconds: 1,
    };
    assert_eq!(
        kc.check(&ready).await,
        ClusterCheck::Needed("not Ready".into())
    );
    let t = std::time::Instant::now();
    match kc.run(&ready).await {
        Err(ClusterError::NodeNotReady { node: n, secs: 1 }) => assert_eq!(n, node),
        other => panic!("waiting for a node without kubelet: {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(30));

    // 5. Without a kubeconfig (before `kubeadm init`): known after apply, an error naming it.
    let none = KubeCluster::new("/nonexistent/admin.conf".into(), Vec::new());
    match none.check(&untaint).await {
        ClusterCheck::Unknown(e) => assert!(e.contains("/nonexistent/admin.conf"), "{e}"),
        other => panic!("{other:?}"),
    }
    tc.delete_namespace(&ns).await;
}
