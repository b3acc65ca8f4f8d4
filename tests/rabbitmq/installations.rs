//! Two installations exchange kanbans (#18), each with its own broker (instances `a` and `b` of
//! `scripts/rabbitmq.sh`), each rendered from its own inventory that lists the other's device as
//! a peer. What each broker imports is what `render` and the generated Secret produce for it: the
//! peer's user (`25-peers.json`, password derived from a fresh installation password) and its
//! permissions (`30-permissions.json`, the peer entries). Each runtime runs as its rendered
//! Deployment says (`--peers`), with the credentials the other side issued (`peer_url`, what
//! `aion-reconcile peer-url` prints) in its `--remote-credentials` directory. Then:
//! * a kanban with a file crosses from A to B and one crosses back from B to A;
//! * the peer user can do nothing else on the other broker: no publishing to the default
//!   exchange (so to no queue but the inbound one), no reading, no declaring, no `user_id` of
//!   another user; a forwarded kanban claiming another device is dead-lettered with the reason;
//! * wrong credentials: the sender is refused at login, the kanban is dead-lettered on the
//!   sender's side with the broker's reason, nothing is delivered;
//! * a peer removed from the receiving inventory is refused by the runtime (`--peers`), even
//!   though its broker user still exists.
//!
//! Each installation is one host in cluster mode with its own namespace, so its virtual host is
//! this run's own: nothing here meets another test's queues. Users and virtual hosts are removed
//! at the end, also when the test fails.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aion_integration_tests::component;
use aion_integration_tests::rabbitmq::kanban::{json_of, services, start_router};
use aion_integration_tests::rabbitmq::{self, amqp};
use aion_kanban::router::{RouterOptions, ServicesSource};
use aion_model::peer::{PEER_EXCHANGE, peer_user};
use aion_reconcile::cluster::generated;
use aion_reconcile::manifest::Manifests;
use aion_reconcile::render;
use aion_reconcile::render::broker;
use base64::Engine;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// Removes virtual hosts and users from a broker instance when dropped.
struct Cleanup(Vec<(&'static str, &'static str, String)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (which, what, name) in &self.0 {
            if let Err(e) = rabbitmq::ctl(which, &[what, name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// One installation: its inventory (one host, cluster mode, namespace = `ns`), rendered.
fn installation(ns: &str, peers: &str) -> (Manifests, String) {
    let text = format!(
        "name: {ns}\nmode: cluster\n{peers}hosts:\n  - name: {ns}-m\n    address: 127.0.0.1\n    role: master\n    vars: {{namespace: {ns}}}\n"
    );
    let inv = aion_model::inventory::load_str(&text, Path::new("inventory.yml"))
        .unwrap()
        .value;
    (render::render(&inv, &[]).unwrap(), format!("{ns}-m"))
}

/// Import into broker `which` what the installation's broker imports at boot for its peers:
/// their users (the generated Secret's peers file, for `password`) and their permissions (the
/// rendered ConfigMap's peer entries), after creating its virtual host. Returns the peers'
/// permissions as imported.
fn import_peer_definitions(which: &str, m: &Manifests, password: &str, dir: &Path) -> Vec<Value> {
    let cm = m
        .objects()
        .find(|o| o.key.kind == "ConfigMap" && o.key.name == "rabbitmq-config")
        .expect("rendered ConfigMap rabbitmq-config");
    let placeholder = m
        .objects()
        .find(|o| o.key.kind == "Secret" && o.key.name == broker::SECRET_NAME)
        .expect("rendered Secret aion-broker");
    let secret = generated::with_password(&placeholder.value, password);
    let peers_file = base64::engine::general_purpose::STANDARD
        .decode(
            secret["data"][broker::SECRET_PEERS_FILE]
                .as_str()
                .expect("the generated Secret holds the peers' users"),
        )
        .unwrap();
    let perms: Value =
        serde_json::from_str(cm.value["data"][broker::PERMISSIONS_FILE].as_str().unwrap()).unwrap();
    // The `aion` user's own entries are cluster_broker's subject; here only the peers'.
    let peer_perms: Vec<Value> = perms["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["user"].as_str().unwrap().starts_with("peer."))
        .cloned()
        .collect();
    let files = [
        (
            broker::VHOSTS_FILE,
            cm.value["data"][broker::VHOSTS_FILE]
                .as_str()
                .unwrap()
                .as_bytes()
                .to_vec(),
        ),
        (broker::SECRET_PEERS_FILE, peers_file),
        (
            broker::PERMISSIONS_FILE,
            serde_json::to_vec(&json!({ "permissions": peer_perms })).unwrap(),
        ),
    ];
    for (name, bytes) in files {
        let path = dir.join(format!("{which}-{name}"));
        std::fs::write(&path, bytes).unwrap();
        rabbitmq::ctl(which, &["import_definitions", path.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("import_definitions {name} into {which}: {e}"));
    }
    peer_perms
}

/// `--peers=…` of the rendered runtime of `node`.
fn rendered_peers(m: &Manifests, node: &str) -> Vec<String> {
    let d = m
        .objects()
        .find(|o| o.node == node && o.key.kind == "Deployment" && o.key.name == "aion-kanban")
        .unwrap();
    let args = d.value["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    let list = args
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--peers="))
        .expect("the runtime is always told its peers");
    list.split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// `amqp://guest:guest@host:port/%2f` → the same broker, virtual host `vhost`.
fn on_vhost(url: &str, vhost: &str) -> String {
    let base = url.rsplit_once('/').unwrap().0;
    format!("{base}/{vhost}")
}

fn port_of(url: &str) -> u16 {
    let hp = url.rsplit_once('@').unwrap().1.split('/').next().unwrap();
    hp.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The reason (`x-aion-reason`) of the one message `queue` gets within [`WAIT`]; fails with
/// `what` when none comes.
async fn dead_letter_reason(ch: &lapin::Channel, queue: &str, what: &str) -> String {
    let dlq = amqp::take(ch, queue, 1, WAIT).await;
    assert_eq!(dlq.len(), 1, "{what}");
    aion_kanban::amqp::header_str(&dlq[0].1, "x-aion-reason").unwrap_or_default()
}

/// A runtime's options on the test brokers: its data under `home` (created), the credentials
/// other installations issued to it in `creds`, the peers it accepts (`--peers`).
fn runtime_options(
    file: &aion_model::ServicesFile,
    url: &str,
    home: &Path,
    creds: Option<&Path>,
    peers: Option<Vec<String>>,
) -> RouterOptions {
    let mut o = RouterOptions::new(ServicesSource::Value(Arc::new(file.clone())), url);
    o.data_dir = home.join("Data");
    o.remote_credentials = creds.map(Path::to_path_buf);
    o.peers = peers;
    std::fs::create_dir_all(&o.data_dir).unwrap();
    o
}

async fn login(url: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(url, ConnectionProperties::default()).await
}

/// Two installations, one per test broker, each listing the other's device as a peer, with the
/// peers' definitions imported as rendered and generated; removed again when dropped.
struct Pair {
    p: String,
    ns_a: String,
    ns_b: String,
    dev_a: String,
    dev_b: String,
    m_a: Manifests,
    m_b: Manifests,
    node_a: String,
    node_b: String,
    pw_a: String,
    pw_b: String,
    /// Each installation's own vhost on its own broker (guest stands for the user `aion`).
    url_a: String,
    url_b: String,
    /// The peer permissions imported into broker b.
    perms_b: Vec<Value>,
    dir: tempfile::TempDir,
    _cleanup: Cleanup,
}

impl Pair {
    fn set_up(b: &rabbitmq::Brokers, prefix: &str) -> Pair {
        let p = rabbitmq::unique(prefix);
        let (ns_a, ns_b) = (format!("{p}-a"), format!("{p}-b"));
        let (dev_a, dev_b) = (format!("{p}-dev-a"), format!("{p}-dev-b"));
        let (m_a, node_a) = installation(&ns_a, &format!("peers:\n  - device: {dev_b}\n"));
        let (m_b, node_b) = installation(&ns_b, &format!("peers:\n  - device: {dev_a}\n"));
        let (pw_a, pw_b) = (
            generated::fresh_password().unwrap(),
            generated::fresh_password().unwrap(),
        );
        let cleanup = Cleanup(vec![
            ("a", "delete_vhost", ns_a.clone()),
            ("b", "delete_vhost", ns_b.clone()),
            ("a", "delete_user", peer_user(&dev_b)),
            ("b", "delete_user", peer_user(&dev_a)),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let perms_b = import_peer_definitions("b", &m_b, &pw_b, dir.path());
        import_peer_definitions("a", &m_a, &pw_a, dir.path());
        for (which, ns) in [("a", &ns_a), ("b", &ns_b)] {
            rabbitmq::ctl(
                which,
                &["set_permissions", "-p", ns, "guest", ".*", ".*", ".*"],
            )
            .unwrap();
        }
        Pair {
            url_a: on_vhost(&b.url, &ns_a),
            url_b: on_vhost(&b.url_b, &ns_b),
            p,
            ns_a,
            ns_b,
            dev_a,
            dev_b,
            m_a,
            m_b,
            node_a,
            node_b,
            pw_a,
            pw_b,
            perms_b,
            dir,
            _cleanup: cleanup,
        }
    }

    /// Both runtimes, their homes `<dir>/a` and `<dir>/b`: A's reaches B's entry only through
    /// `link` (a proxy in front of broker b) with the URL B issued to A's device; B accepts A's
    /// device as its inventory renders it.
    fn start_runtimes_through(
        &self,
        link: &str,
        file_a: &aion_model::ServicesFile,
        file_b: &aion_model::ServicesFile,
    ) -> (rabbitmq::kanban::Router, rabbitmq::kanban::Router) {
        let link_port: u16 = link.rsplit_once(':').unwrap().1.parse().unwrap();
        let creds_a = self.dir.path().join("remotes-a");
        std::fs::create_dir_all(&creds_a).unwrap();
        std::fs::write(
            creds_a.join(&self.dev_b),
            broker::peer_url(&self.pw_b, &self.dev_a, link_port, &self.ns_b, false),
        )
        .unwrap();
        let home = |x: &str| self.dir.path().join(x);
        let oa = runtime_options(file_a, &self.url_a, &home("a"), Some(&creds_a), None);
        let ob = runtime_options(
            file_b,
            &self.url_b,
            &home("b"),
            None,
            Some(rendered_peers(&self.m_b, &self.node_b)),
        );
        (start_router(oa, None), start_router(ob, None))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_exchange_kanbans_through_their_peer_entries() {
    use sha2::{Digest, Sha256};
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let pair = Pair::set_up(&b, "fx");
    let Pair {
        p,
        ns_a,
        ns_b,
        dev_a,
        dev_b,
        m_a,
        m_b,
        node_a,
        node_b,
        pw_a,
        pw_b,
        url_a,
        url_b,
        dir,
        ..
    } = &pair;
    let dev_wrong = format!("{p}-dev-w");
    assert_eq!(
        pair.perms_b,
        [
            json!({"user": peer_user(dev_a), "vhost": ns_b, "configure": "^$",
                "write": "^aion-kanban\\.peers$", "read": "^$"})
        ]
    );

    // Each side's services: `src` sends to the other device's `sink`; the other device's
    // address is where its broker's entry is (127.0.0.1 here; the port is in the credentials).
    let file_a = services(&format!(
        "deviceName: {dev_a}\ndevices:\n  {dev_b}: {{addr: 127.0.0.1}}\n  {dev_wrong}: {{addr: 127.0.0.1}}\nmicroservices:\n  src:\n    nextService:\n      default: [{{name: sink, device: {dev_b}}}]\n      wrong: [{{name: sink, device: {dev_wrong}}}]\n  sink: {{}}\n"
    ));
    let file_b = services(&format!(
        "deviceName: {dev_b}\ndevices:\n  {dev_a}: {{addr: 127.0.0.1}}\nmicroservices:\n  src:\n    nextService:\n      default: [{{name: sink, device: {dev_a}}}]\n  sink: {{}}\n"
    ));
    // The credentials each installation issued to the other's device, as `peer-url` prints
    // them, stored where the rendered runtime reads them; and one with a wrong password.
    let creds_a = dir.path().join("remotes-a");
    let creds_b = dir.path().join("remotes-b");
    std::fs::create_dir_all(&creds_a).unwrap();
    std::fs::create_dir_all(&creds_b).unwrap();
    std::fs::write(
        creds_a.join(dev_b),
        broker::peer_url(pw_b, dev_a, port_of(&b.url_b), ns_b, false),
    )
    .unwrap();
    std::fs::write(
        creds_a.join(&dev_wrong),
        broker::peer_url("not-the-password", dev_a, port_of(&b.url_b), ns_b, false),
    )
    .unwrap();
    std::fs::write(
        creds_b.join(dev_a),
        broker::peer_url(pw_a, dev_b, port_of(&b.url), ns_a, false),
    )
    .unwrap();

    let home_a = dir.path().join("a");
    let home_b = dir.path().join("b");
    let oa = runtime_options(
        &file_a,
        url_a,
        &home_a,
        Some(&creds_a),
        Some(rendered_peers(m_a, node_a)),
    );
    assert_eq!(oa.peers.as_deref(), Some(std::slice::from_ref(dev_b)));
    let options_b =
        |peers: Vec<String>| runtime_options(&file_b, url_b, &home_b, Some(&creds_b), Some(peers));
    let ra = start_router(oa, None);
    let rb = start_router(options_b(rendered_peers(m_b, node_b)), None);
    let (conn_a, ch_a) = amqp::connect(url_a).await;
    let (conn_b, ch_b) = amqp::connect(url_b).await;
    for conn in [&conn_a, &conn_b] {
        assert!(amqp::wait_declared(conn, "src-001.out", WAIT).await);
        assert!(amqp::wait_declared(conn, "aion-kanban.inbound", WAIT).await);
    }

    // A → B with a file; B → A without.
    let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::create_dir_all(home_a.join("Data/src_1")).unwrap();
    std::fs::write(home_a.join("Data/src_1/frame.bin"), &data).unwrap();
    let k = json!({"connectionKey": "default", "fileList": ["Data/src_1/frame.bin"], "metadata": {"id": 1}});
    amqp::publish(&ch_a, "src-001.out", k.to_string().as_bytes()).await;
    let k = json!({"connectionKey": "default", "metadata": {"id": 2}});
    amqp::publish(&ch_b, "src-001.out", k.to_string().as_bytes()).await;
    let got_b = amqp::take(&ch_b, "sink-001.in", 1, WAIT).await;
    assert_eq!(got_b.len(), 1, "A's kanban did not reach B");
    let v = json_of(&got_b[0].0);
    assert_eq!(v["metadata"]["id"], 1);
    assert_eq!(v["nextDeviceName"], dev_b.as_str());
    let stored = home_b.join("Data/sink_1/frame.bin");
    assert_eq!(v["fileList"], json!([stored.to_string_lossy()]));
    assert_eq!(
        Sha256::digest(std::fs::read(&stored).unwrap()),
        Sha256::digest(&data),
        "the file arrived changed"
    );
    let got_a = amqp::take(&ch_a, "sink-001.in", 1, WAIT).await;
    assert_eq!(got_a.len(), 1, "B's kanban did not reach A");
    assert_eq!(json_of(&got_a[0].0)["metadata"]["id"], 2);

    // The peer user on B's broker can deliver to the inbound queue only.
    let peer_url_b = broker::peer_url(pw_b, dev_a, port_of(&b.url_b), ns_b, false)
        .replace("{addr}", "127.0.0.1");
    let peer = login(&peer_url_b).await.expect("the peer user logs in");
    let refused = |what: &str, r: Result<(), lapin::Error>| match r {
        Err(e) => assert!(
            e.to_string().contains("ACCESS_REFUSED") || e.to_string().contains("PRECONDITION"),
            "{what}: {e}"
        ),
        Ok(()) => panic!("{what}: allowed"),
    };
    let publish = |exchange: &'static str, key: String, props: BasicProperties| {
        let peer = &peer;
        async move {
            let ch = peer.create_channel().await?;
            ch.confirm_select(Default::default()).await?;
            ch.basic_publish(
                exchange.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                b"{}",
                props,
            )
            .await?
            .await?;
            // A refusal closes the channel asynchronously: ask something to see it.
            ch.basic_qos(1, Default::default()).await?;
            Ok::<(), lapin::Error>(())
        }
    };
    refused(
        "publishing to sink-001.in through the default exchange",
        publish("", "sink-001.in".into(), BasicProperties::default()).await,
    );
    refused(
        "publishing with another user's user_id",
        publish(
            PEER_EXCHANGE,
            "aion-kanban.inbound".into(),
            BasicProperties::default().with_user_id("guest".into()),
        )
        .await,
    );
    let ch = peer.create_channel().await.unwrap();
    refused(
        "reading the inbound queue",
        ch.basic_get("aion-kanban.inbound".into(), BasicGetOptions::default())
            .await
            .map(|_| ()),
    );
    let ch = peer.create_channel().await.unwrap();
    refused(
        "declaring a queue",
        ch.queue_declare(
            format!("{p}-mine").as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(|_| ()),
    );
    // Allowed through the peer exchange, but claiming to be another device: dead-lettered.
    let forged = json!({"service": "sink", "number": 1, "fromDevice": "someone-else",
                        "kanban": {"metadata": {"id": 99}}});
    let ch = peer.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        PEER_EXCHANGE.into(),
        "aion-kanban.inbound".into(),
        BasicPublishOptions::default(),
        forged.to_string().as_bytes(),
        BasicProperties::default().with_user_id(peer_user(dev_a).as_str().into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let reason = dead_letter_reason(
        &ch_b,
        "aion-kanban.inbound.dlq",
        "the forged kanban was not dead-lettered",
    )
    .await;
    assert!(
        reason.contains("someone-else") && reason.contains(&peer_user(dev_a)),
        "{reason}"
    );
    drop(peer);

    // Wrong credentials: refused at login, dead-lettered on the sender's side with the reason.
    let k = json!({"connectionKey": "wrong", "metadata": {"id": 3}});
    amqp::publish(&ch_a, "src-001.out", k.to_string().as_bytes()).await;
    let reason = dead_letter_reason(
        &ch_a,
        "src.dlq",
        "the kanban for the wrong credentials was not dead-lettered",
    )
    .await;
    assert!(
        reason.contains(&dev_wrong) && reason.contains("refused the login"),
        "{reason}"
    );

    // B's inventory no longer lists A's device: its runtime refuses A's kanbans, although the
    // broker user (definitions only ever add users) still lets A in.
    rb.stop().await;
    let (m_b2, _) = installation(ns_b, "");
    let peers_b2 = rendered_peers(&m_b2, node_b);
    assert!(peers_b2.is_empty(), "{peers_b2:?}");
    let rb = start_router(options_b(peers_b2), None);
    let k = json!({"connectionKey": "default", "metadata": {"id": 4}});
    amqp::publish(&ch_a, "src-001.out", k.to_string().as_bytes()).await;
    let reason = dead_letter_reason(
        &ch_b,
        "aion-kanban.inbound.dlq",
        "the removed peer's kanban was not refused",
    )
    .await;
    assert!(reason.contains("not among this device's peers"), "{reason}");
    // Nothing was delivered anywhere else.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(amqp::queue_len(&conn_b, "sink-001.in").await, Some(0));
    assert_eq!(amqp::queue_len(&conn_a, "sink-001.in").await, Some(0));
    ra.stop().await;
    rb.stop().await;
    drop((conn_a, conn_b));
}

/// A file far larger than one AMQP message crosses to the other installation through its peer
/// entry as chunks, and the link between the installations is cut mid-transfer: the kanban
/// arrives once, its file whole (sha256 equal), and no partial file is ever visible under its
/// name. 48 MiB in CI; `AION_LARGE_FILE_MIB=200` for the 200 MB (run by hand, see
/// docs/kanban.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_crosses_to_another_installation_through_a_link_cut() {
    use sha2::{Digest, Sha256};
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let pair = Pair::set_up(&b, "lf");
    let mib: usize = std::env::var("AION_LARGE_FILE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let size = mib << 20;
    let home_a = pair.dir.path().join("a");
    let home_b = pair.dir.path().join("b");
    let file_a = services(&format!(
        "deviceName: {}\ndevices:\n  {}: {{addr: 127.0.0.1}}\nmicroservices:\n  src:\n    nextService:\n      default: [{{name: sink, device: {}}}]\n",
        pair.dev_a, pair.dev_b, pair.dev_b
    ));
    let file_b = services(&format!(
        "deviceName: {}\nmicroservices:\n  sink: {{}}\n",
        pair.dev_b
    ));
    // Incompressible bytes, written and hashed in pieces (bounded memory at any size).
    std::fs::create_dir_all(home_a.join("Data/src_1")).unwrap();
    let want = {
        use std::io::Write;
        let mut f = std::fs::File::create(home_a.join("Data/src_1/clip.bin")).unwrap();
        let mut h = Sha256::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut piece = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for w in piece.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
            }
            h.update(&piece);
            f.write_all(&piece).unwrap();
        }
        hex::encode(h.finalize())
    };

    // B's entry is reached only through the link, which drops once after a third went across.
    let b_port = port_of(&b.url_b);
    let (proxy, cut) =
        rabbitmq::link_cutting_proxy(format!("127.0.0.1:{b_port}"), (size / 3) as u64).await;
    let (ra, rb) = pair.start_runtimes_through(&proxy, &file_a, &file_b);
    let (conn_a, ch_a) = amqp::connect(&pair.url_a).await;
    let (conn_b, ch_b) = amqp::connect(&pair.url_b).await;
    assert!(amqp::wait_declared(&conn_a, "src-001.out", WAIT).await);
    assert!(amqp::wait_declared(&conn_b, "sink-001.in", WAIT).await);

    // Whenever the file is visible under its name, it is whole.
    let stored = home_b.join("Data/sink_1/clip.bin");
    let watch = {
        let stored = stored.clone();
        tokio::spawn(async move {
            let mut seen_partial = None;
            for _ in 0..60_000 {
                if let Ok(m) = std::fs::metadata(&stored) {
                    if m.len() != size as u64 {
                        seen_partial = Some(m.len());
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen_partial
        })
    };
    let started = std::time::Instant::now();
    let k = json!({"connectionKey": "default", "fileList": ["Data/src_1/clip.bin"], "metadata": {"id": 1}});
    amqp::publish(&ch_a, "src-001.out", k.to_string().as_bytes()).await;
    let patience = Duration::from_secs(120 + (mib as u64) * 2);
    let got = amqp::take(&ch_b, "sink-001.in", 1, patience).await;
    assert_eq!(got.len(), 1, "the kanban with its file did not arrive");
    eprintln!(
        "{mib} MiB crossed to the other installation through a link cut in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        cut.load(std::sync::atomic::Ordering::SeqCst),
        "the link was never cut: the test did not test a cut"
    );
    assert_eq!(watch.await.unwrap(), None, "a partial file was visible");
    let v = json_of(&got[0].0);
    assert_eq!(v["fileList"], json!([stored.to_string_lossy()]));
    let got_sha = {
        let mut f = std::fs::File::open(&stored).unwrap();
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).unwrap();
        hex::encode(h.finalize())
    };
    assert_eq!(got_sha, want, "the file arrived changed");
    // Once: nothing more arrives (the cut transfer was restarted, not delivered twice).
    let more = amqp::take(&ch_b, "sink-001.in", 1, Duration::from_secs(3)).await;
    assert!(more.is_empty(), "delivered twice: {more:?}");
    ra.stop().await;
    rb.stop().await;
    drop((conn_a, conn_b, ch_a));
}

/// An outbox per remote device: a kanban whose forward waits on a stalled link to the other
/// installation holds neither this device's own kanbans nor their acks. While a kanban with a
/// 4 MiB file sits in the outbox (the link stopped carrying, the connection still open),
/// kanbans between this device's services are routed and acknowledged (out of order, behind
/// the one still in flight); when the link carries again the forward completes, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_to_one_device_holds_no_other_kanban() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let pair = Pair::set_up(&b, "ob");
    let home_a = pair.dir.path().join("a");
    let home_b = pair.dir.path().join("b");
    let file_a = services(&format!(
        "deviceName: {a}\ndevices:\n  {b}: {{addr: 127.0.0.1}}\nmicroservices:\n  src:\n    nextService:\n      default: [{{name: sink, device: {b}}}]\n  local:\n    nextService:\n      default: [{{name: near}}]\n  near: {{}}\n",
        a = pair.dev_a,
        b = pair.dev_b
    ));
    let file_b = services(&format!(
        "deviceName: {}\nmicroservices:\n  sink: {{}}\n",
        pair.dev_b
    ));
    std::fs::create_dir_all(home_a.join("Data/src_1")).unwrap();
    let size = 4 << 20;
    std::fs::write(home_a.join("Data/src_1/clip.bin"), vec![7u8; size]).unwrap();

    let b_port = port_of(&b.url_b);
    let (proxy, stalled) = rabbitmq::stalling_proxy(format!("127.0.0.1:{b_port}")).await;
    let (ra, rb) = pair.start_runtimes_through(&proxy, &file_a, &file_b);
    let (conn_a, ch_a) = amqp::connect(&pair.url_a).await;
    let (conn_b, ch_b) = amqp::connect(&pair.url_b).await;
    assert!(amqp::wait_declared(&conn_a, "local-001.out", WAIT).await);
    assert!(amqp::wait_declared(&conn_b, "sink-001.in", WAIT).await);
    let unacked = |queue: &'static str| {
        let ns = pair.ns_a.clone();
        move || {
            let out = rabbitmq::ctl(
                "a",
                &[
                    "list_queues",
                    "-q",
                    "-p",
                    &ns,
                    "name",
                    "messages_unacknowledged",
                ],
            )
            .unwrap();
            out.lines()
                .filter_map(|l| l.split_once('\t'))
                .find(|(name, _)| *name == queue)
                .and_then(|(_, n)| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        }
    };

    // 1. The link carries: a first kanban crosses (the outbox's connection is up).
    let k = |id: u64, files: &[&str]| {
        json!({"connectionKey": "default", "fileList": files, "metadata": {"id": id}}).to_string()
    };
    amqp::publish(&ch_a, "src-001.out", k(0, &[]).as_bytes()).await;
    assert_eq!(amqp::take(&ch_b, "sink-001.in", 1, WAIT).await.len(), 1);

    // 2. The link stalls; a kanban with its file goes into the outbox and stays there.
    stalled.store(true, std::sync::atomic::Ordering::SeqCst);
    amqp::publish(
        &ch_a,
        "src-001.out",
        k(1, &["Data/src_1/clip.bin"]).as_bytes(),
    )
    .await;
    let src_unacked = unacked("src-001.out");
    let deadline = std::time::Instant::now() + WAIT;
    while src_unacked() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the router did not take the kanban"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 3. Meanwhile this device's own kanbans are routed, and acknowledged behind the one in
    //    the outbox (more than the settler's batch of held-back acks, and fewer).
    for i in 0..40u64 {
        amqp::publish(&ch_a, "local-001.out", k(100 + i, &[]).as_bytes()).await;
    }
    let got = amqp::take(&ch_a, "near-001.in", 40, WAIT).await;
    assert_eq!(
        got.len(),
        40,
        "local kanbans routed while the link is stalled"
    );
    let local_unacked = unacked("local-001.out");
    let deadline = std::time::Instant::now() + WAIT;
    while local_unacked() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the local kanbans were not acknowledged behind the stalled forward"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(src_unacked(), 1, "the stalled kanban is still in flight");
    assert!(
        amqp::take(&ch_b, "sink-001.in", 1, Duration::from_secs(1))
            .await
            .is_empty(),
        "nothing crossed the stalled link"
    );

    // 4. The link carries again: the kanban arrives with its whole file, once, and is acked.
    stalled.store(false, std::sync::atomic::Ordering::SeqCst);
    let got = amqp::take(&ch_b, "sink-001.in", 1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1, "the held kanban did not arrive");
    let v = json_of(&got[0].0);
    assert_eq!(v["metadata"]["id"], 1);
    let stored = home_b.join("Data/sink_1/clip.bin");
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), size as u64);
    assert!(
        amqp::take(&ch_b, "sink-001.in", 1, Duration::from_secs(2))
            .await
            .is_empty(),
        "delivered twice"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while src_unacked() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the forwarded kanban was not acked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ra.stop().await;
    rb.stop().await;
    drop((conn_a, conn_b, ch_a));
}

/// The other installation's entry speaks TLS (`entryTls`): the sender reaches it with the
/// `amqps://` URL and the CA that installation handed over with it, and the kanban arrives; a
/// sender holding another CA does not trust the entry, says why and delivers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_entry_is_trusted_only_with_the_issued_ca() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    aion_reconcile::kubeclient::install_crypto_provider();
    let pair = Pair::set_up(&b, "tl");
    let pki = rabbitmq::test_pki();
    let entry = rabbitmq::tls_entry(format!("127.0.0.1:{}", port_of(&b.url_b)), &pki).await;
    let entry_port: u16 = entry.rsplit_once(':').unwrap().1.parse().unwrap();
    crossing_a_tls_entry(&pair, &pki, entry_port).await;
}

/// The TLS listener as `render` writes it for `entryTls` (`broker::config(true)`: port,
/// certificate files, no client certificates), on Debian's rabbitmq-server itself (broker b,
/// restarted with those settings, the mount directory pointed at the test's PEM files, another
/// port), is the entry: the kanban crosses with the issued CA, another CA is refused. Checked
/// by hand before; now automated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_tls_listener_serves_the_entry() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::exclusive_async().await;
    aion_reconcile::kubeclient::install_crypto_provider();
    let pair = Pair::set_up(&b, "tr");
    let pki = rabbitmq::test_pki();
    let files = pair.dir.path().join("entry-tls");
    std::fs::create_dir_all(&files).unwrap();
    for (from, to) in ["ca.pem", "server.pem", "server.key"]
        .iter()
        .zip(broker::ENTRY_TLS_KEYS)
    {
        std::fs::copy(pki.dir.path().join(from), files.join(to)).unwrap();
    }
    // Port 5674: beside the loopback brokers' 5672/5673 (the rendered 5671 is the pod's).
    let entry_port: u16 = 5674;
    let rendered = broker::config(true);
    let settings: String = rendered
        .lines()
        .filter(|l| l.starts_with("listeners.ssl.") || l.starts_with("ssl_options."))
        .map(|l| {
            l.replace(broker::ENTRY_TLS_DIR, &files.display().to_string())
                .replace(
                    &format!("= {}", broker::TLS_PORT),
                    &format!("= 127.0.0.1:{entry_port}"),
                )
                + "\n"
        })
        .collect();
    assert_eq!(settings.lines().count(), 6, "{rendered}");
    let _tls = rabbitmq::ExtraConf::apply("b", &settings).expect("broker b with the TLS listener");
    let status = rabbitmq::ctl("b", &["status"]).unwrap();
    assert!(
        status.contains(&format!("port: {entry_port}, protocol: amqp/ssl")),
        "broker b has no TLS listener on {entry_port}:\n{status}"
    );
    crossing_a_tls_entry(&pair, &pki, entry_port).await;
}

/// A sends through the TLS entry at `entry_port` in front of B: with the issued CA the kanban
/// arrives; a device whose credentials hold another CA does not trust the entry, its kanban is
/// dead-lettered naming the certificate, nothing is delivered.
async fn crossing_a_tls_entry(pair: &Pair, pki: &rabbitmq::TestPki, entry_port: u16) {
    let dev_untrusting = format!("{}-dev-u", pair.p);
    let home_a = pair.dir.path().join("a");
    let file_a = services(&format!(
        "deviceName: {a}\ndevices:\n  {b}: {{addr: 127.0.0.1}}\n  {u}: {{addr: 127.0.0.1}}\nmicroservices:\n  src:\n    nextService:\n      default: [{{name: sink, device: {b}}}]\n      other: [{{name: sink, device: {u}}}]\n",
        a = pair.dev_a,
        b = pair.dev_b,
        u = dev_untrusting,
    ));
    // What `peer-url` prints for a TLS entry: the amqps:// URL, then the CA.
    let issued = broker::peer_url(&pair.pw_b, &pair.dev_a, entry_port, &pair.ns_b, true);
    assert!(issued.starts_with("amqps://"), "{issued}");
    let creds = pair.dir.path().join("remotes-a");
    std::fs::create_dir_all(&creds).unwrap();
    let stored =
        aion_reconcile::cluster::peers::check_issued_url(&format!("{issued}\n{}", pki.ca_pem))
            .unwrap();
    std::fs::write(creds.join(&pair.dev_b), stored).unwrap();
    std::fs::write(
        creds.join(&dev_untrusting),
        format!("{issued}\n{}", pki.other_ca_pem),
    )
    .unwrap();
    let oa = runtime_options(&file_a, &pair.url_a, &home_a, Some(&creds), None);
    let file_b = services(&format!(
        "deviceName: {}\nmicroservices:\n  sink: {{}}\n",
        pair.dev_b
    ));
    let ob = runtime_options(
        &file_b,
        &pair.url_b,
        &pair.dir.path().join("b"),
        None,
        Some(rendered_peers(&pair.m_b, &pair.node_b)),
    );
    let ra = start_router(oa, None);
    let rb = start_router(ob, None);
    let (conn_a, ch_a) = amqp::connect(&pair.url_a).await;
    let (conn_b, ch_b) = amqp::connect(&pair.url_b).await;
    assert!(amqp::wait_declared(&conn_a, "src-001.out", WAIT).await);
    assert!(amqp::wait_declared(&conn_b, "sink-001.in", WAIT).await);

    let k = json!({"connectionKey": "default", "metadata": {"id": 1}});
    amqp::publish(&ch_a, "src-001.out", k.to_string().as_bytes()).await;
    let got = amqp::take(&ch_b, "sink-001.in", 1, WAIT).await;
    assert_eq!(got.len(), 1, "the kanban did not cross the TLS entry");
    assert_eq!(json_of(&got[0].0)["metadata"]["id"], 1);

    let k = json!({"connectionKey": "other", "metadata": {"id": 2}});
    amqp::publish(&ch_a, "src-001.out", k.to_string().as_bytes()).await;
    let reason = dead_letter_reason(
        &ch_a,
        "src.dlq",
        "the kanban for the untrusted entry was not dead-lettered",
    )
    .await;
    assert!(
        reason.contains(&dev_untrusting) && reason.contains("certificate"),
        "{reason}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(amqp::queue_len(&conn_b, "sink-001.in").await, Some(0));
    ra.stop().await;
    rb.stop().await;
    drop((conn_a, conn_b));
}
