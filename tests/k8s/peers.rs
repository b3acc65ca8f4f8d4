//! Credentials between installations on the real kube-apiserver (#18): an inventory's `peers`
//! get users in the generated Secret `aion-broker` (passwords derived from the installation's,
//! never in a plan), the plan converges, adding a peer keeps the others' passwords, `peer-url`
//! issues the URL for the virtual host the peer may reach, and `remote-credentials` stores what
//! another installation issued in Secret `aion-remotes`, which no plan shows and no apply prunes.

use aion_integration_tests::k8s::{self, assert_hidden, secret_key};
use aion_reconcile::cluster::{self, ClusterApplyOptions, peers};
use aion_reconcile::render::{self, broker};

/// A NodePort for this test's entry: the tests share one cluster, where node ports are
/// cluster-wide, so each test takes one from its own range (`from`, 300 ports) by its
/// namespace's random name: two runs of the suite on one cluster rarely meet either.
fn entry_port(ns: &str, from: u16) -> u16 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(ns.as_bytes());
    from + u16::from_be_bytes([h[0], h[1]]) % 300
}

#[tokio::test]
async fn peers_get_users_and_urls_and_remote_credentials_are_kept() {
    let Some(tc) = k8s::require() else { return };
    aion_reconcile::kubeclient::install_crypto_provider();
    let client = tc.client().await;
    let (ns_m, ns_w) = (tc.fresh_namespace().await, tc.fresh_namespace().await);
    let cam = format!("{ns_m}-cam");
    let hq = format!("{ns_m}-hq");
    let opts = ClusterApplyOptions::default();
    let port = entry_port(&ns_m, 32100);
    let one = format!("entryPort: {port}\npeers:\n  - device: {cam}\n    to: [edge-worker]\n");
    let inv = k8s::cluster_inventory(&ns_m, &ns_m, &ns_w, &one);
    let m = render::render(&inv, &[]).unwrap();
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    cluster::apply_plan(&client, &plan, &opts).await.unwrap();

    // The peer's user, its password derived from the installation's.
    let password = secret_key(
        &client,
        &ns_m,
        broker::SECRET_NAME,
        broker::SECRET_PASSWORD_KEY,
    )
    .await
    .expect("the broker password");
    let peers_file = secret_key(
        &client,
        &ns_m,
        broker::SECRET_NAME,
        broker::SECRET_PEERS_FILE,
    )
    .await
    .expect("the peers' users");
    assert_eq!(
        peers_file,
        broker::peers_json(&password, std::slice::from_ref(&cam))
    );
    let cam_password = broker::peer_password(&password, &cam);
    // Converged, and no plan shows the peer's password.
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert!(!plan.has_changes(), "{}", plan.render_text(false, true));
    for text in [
        plan.render_text(false, true),
        serde_json::to_string(&plan).unwrap(),
    ] {
        assert_hidden(&text, &cam_password, "the plan");
    }

    // `peer-url`: the worker's virtual host, the entry port, the derived password.
    let issue = peers::issue(&inv, &cam, None).unwrap();
    assert_eq!(
        (issue.host.as_str(), issue.vhost.as_str()),
        ("edge-worker", ns_w.as_str())
    );
    let url = peers::issued_url(&client, &issue).await.unwrap();
    assert_eq!(
        url,
        format!("amqp://peer.{cam}:{cam_password}@{{addr}}:{port}/{ns_w}")
    );

    // A second peer: the Secret and the permissions change (masked), the first password stays.
    let two = format!("{one}  - device: {hq}\n");
    let inv2 = k8s::cluster_inventory(&ns_m, &ns_m, &ns_w, &two);
    let m2 = render::render(&inv2, &[]).unwrap();
    let plan = cluster::plan(&client, &m2, &inv2).await.unwrap();
    let changed = k8s::changed(&plan);
    for want in [
        format!("~ Secret/{ns_m}/aion-broker"),
        format!("~ ConfigMap/{ns_m}/rabbitmq-config"),
    ] {
        assert!(changed.contains(&want), "{want} not in {changed:?}");
    }
    assert_hidden(&plan.render_text(false, true), &password, "the plan");
    cluster::apply_plan(&client, &plan, &opts).await.unwrap();
    let peers_file = secret_key(
        &client,
        &ns_m,
        broker::SECRET_NAME,
        broker::SECRET_PEERS_FILE,
    )
    .await
    .unwrap();
    assert_eq!(
        peers_file,
        broker::peers_json(&password, &[cam.clone(), hq.clone()])
    );
    assert!(
        peers_file.contains(&cam_password),
        "the first peer's password changed"
    );

    // `remote-credentials`: what other installations issued, per remote device, kept by apply.
    let issued =
        peers::check_issued_url("amqp://peer.edge-worker:abc@{addr}:32094/line-2\n").unwrap();
    peers::store_remote(&client, &ns_w, "line-2-gw", &issued)
        .await
        .unwrap();
    peers::store_remote(
        &client,
        &ns_w,
        "line-3-gw",
        "amqp://peer.edge-worker:def@{addr}:32094/%2f",
    )
    .await
    .unwrap();
    peers::store_remote(
        &client,
        &ns_w,
        "line-2-gw",
        "amqp://peer.edge-worker:new@{addr}:32094/line-2",
    )
    .await
    .unwrap();
    let remote = |key: &'static str| secret_key(&client, &ns_w, broker::REMOTES_SECRET, key);
    assert_eq!(
        remote("line-2-gw").await.as_deref(),
        Some("amqp://peer.edge-worker:new@{addr}:32094/line-2")
    );
    assert_eq!(
        remote("line-3-gw").await.as_deref(),
        Some("amqp://peer.edge-worker:def@{addr}:32094/%2f")
    );
    let plan = cluster::plan(&client, &m2, &inv2).await.unwrap();
    assert!(!plan.has_changes(), "{}", plan.render_text(false, true));
    assert!(
        plan.changes
            .iter()
            .all(|c| c.key.name != broker::REMOTES_SECRET),
        "aion-remotes is not the plan's"
    );
    cluster::apply_plan(&client, &plan, &opts).await.unwrap();
    assert!(
        remote("line-3-gw").await.is_some(),
        "apply pruned aion-remotes"
    );

    cluster::down(&client, &inv2.name, &opts).await.unwrap();
    for ns in [&ns_m, &ns_w] {
        tc.delete_namespace(ns).await;
    }
}

/// `entryTls` on the real apiserver: `plan` reads the inventory's files into the Secret
/// `aion-entry-tls` (masked: no plan shows the key), a second plan has nothing to do, a renewed
/// certificate is a change, and `peer-url` issues an `amqps://` URL followed by the CA.
#[tokio::test]
async fn a_tls_entry_secret_comes_from_the_inventorys_files() {
    let Some(tc) = k8s::require() else { return };
    aion_reconcile::kubeclient::install_crypto_provider();
    let client = tc.client().await;
    let (ns_m, ns_w) = (tc.fresh_namespace().await, tc.fresh_namespace().await);
    let dir = tempfile::tempdir().unwrap();
    let write = |f: &str, text: &str| std::fs::write(dir.path().join(f), text).unwrap();
    write(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n",
    );
    write(
        "entry.pem",
        "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n",
    );
    write("entry.key", "the-entry-private-key");
    let d = dir.path().display();
    let port = entry_port(&ns_m, 32400);
    let peers = format!(
        "entryPort: {port}\npeers: [{{device: hq}}]\nentryTls: {{ca: {d}/ca.pem, cert: {d}/entry.pem, key: {d}/entry.key}}\n"
    );
    let inv = k8s::cluster_inventory(&ns_m, &ns_m, &ns_w, &peers);
    let m = render::render(&inv, &[]).unwrap();
    let opts = ClusterApplyOptions::default();
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    for text in [
        plan.render_text(false, true),
        serde_json::to_string(&plan).unwrap(),
    ] {
        assert_hidden(&text, "the-entry-private-key", "the plan");
    }
    cluster::apply_plan(&client, &plan, &opts).await.unwrap();
    let key = secret_key(&client, &ns_m, broker::ENTRY_TLS_SECRET, "tls.key").await;
    assert_eq!(key.as_deref(), Some("the-entry-private-key"));
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert!(!plan.has_changes(), "{}", plan.render_text(false, true));

    write("entry.key", "a-renewed-private-key");
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    let changed = k8s::changed(&plan);
    assert_eq!(changed, [format!("~ Secret/{ns_m}/aion-entry-tls")]);
    assert_hidden(
        &plan.render_text(false, true),
        "a-renewed-private-key",
        "the plan",
    );

    let issue = peers::issue(&inv, "hq", Some("edge-master")).unwrap();
    let issued = peers::issued_url(&client, &issue).await.unwrap();
    let (url, ca) = issued.split_once('\n').unwrap();
    assert!(
        url.starts_with("amqps://peer.hq:") && url.ends_with(&format!(":{port}/{ns_m}")),
        "{url}"
    );
    assert_eq!(
        ca,
        "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----"
    );
    assert!(peers::check_issued_url(&issued).is_ok());

    cluster::down(&client, &inv.name, &opts).await.unwrap();
    for ns in [&ns_m, &ns_w] {
        tc.delete_namespace(ns).await;
    }
}
