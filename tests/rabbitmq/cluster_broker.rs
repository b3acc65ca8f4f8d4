//! Cluster mode's one broker, on a real RabbitMQ (`scripts/rabbitmq.sh start`, instance `a` at
//! `AION_RABBITMQ_URL`): the broker definitions `render` produces (ConfigMap `rabbitmq-config`:
//! virtual hosts, permissions) and the user file of the Secret `apply` generates, for a fresh
//! password, are imported with `rabbitmqctl import_definitions` in the order the broker reads
//! its definitions directory, then
//! * the rendered user logs in to each namespace's virtual host (and not with a wrong password,
//!   nor to a virtual host that was not rendered);
//! * two aion-kanban runtimes configured as the rendered Deployments say (broker URL, device,
//!   namespace, `--device-amqp`), on two virtual hosts of the one broker, with services files that
//!   share microservice names, do not receive each other's kanbans;
//! * a kanban with `nextDeviceName` naming the other device is forwarded through the
//!   `--device-amqp` mapping (the services file's `devices` address leads nowhere) and arrives in
//!   the other namespace's virtual host.
//!
//! The virtual hosts are named after this run's namespaces and deleted at the end (also when the
//! test fails); the user `aion` stays on the test broker (with this run's password).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aion_integration_tests::rabbitmq::kanban::{ids, services, start_router};
use aion_integration_tests::rabbitmq::{self, amqp};
use aion_integration_tests::{component, pod_env};
use aion_kanban::router::{RouterOptions, ServicesSource};
use aion_reconcile::cluster::generated;
use aion_reconcile::manifest::Manifests;
use aion_reconcile::render;
use aion_reconcile::render::broker;
use base64::Engine;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

/// Deletes the virtual hosts on broker `a` when dropped.
struct Vhosts(Vec<String>);

impl Drop for Vhosts {
    fn drop(&mut self) {
        for v in &self.0 {
            if let Err(e) = rabbitmq::ctl("a", &["delete_vhost", v]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// A rendered in-cluster URL (`amqp://user:pass@rabbitmq.<ns>.svc.cluster.local:5672/<vhost>`)
/// pointed at the test broker of `test_url` instead: same user, password and virtual host.
fn on_test_broker(rendered: &str, test_url: &str) -> String {
    let host_port = |u: &str| -> (usize, usize) {
        let at = u.rfind('@').expect("URL with credentials") + 1;
        let end = at + u[at..].find('/').expect("URL with a path");
        (at, end)
    };
    let (a, b) = host_port(rendered);
    let (ta, tb) = host_port(test_url);
    format!("{}{}{}", &rendered[..a], &test_url[ta..tb], &rendered[b..])
}

fn kanban_container<'a>(m: &'a Manifests, node: &str) -> (&'a str, &'a Value) {
    let o = m
        .objects()
        .find(|o| o.node == node && o.key.kind == "Deployment" && o.key.name == "aion-kanban")
        .unwrap_or_else(|| panic!("no aion-kanban Deployment for {node}"));
    (
        o.key.namespace.as_deref().unwrap(),
        &o.value["spec"]["template"]["spec"]["containers"][0],
    )
}

fn env_value(env: &[(String, String)], key: &str) -> String {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no env {key}: {env:?}"))
}

/// `--device-amqp NAME=URL` pairs of a rendered container's args, expanded as the kubelet does
/// with the container's `env`.
fn device_amqp(c: &Value, env: &[(String, String)]) -> HashMap<String, String> {
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| pod_env::expand(a.as_str().unwrap(), env))
        .collect();
    assert_eq!(args[0], "run");
    // Last: the devices of other installations that may send here (none in this inventory).
    assert_eq!(
        args.last().map(String::as_str),
        Some("--peers="),
        "{args:?}"
    );
    args[1..args.len() - 1]
        .chunks(2)
        .map(|pair| {
            assert_eq!(pair[0], "--device-amqp", "{args:?}");
            let (n, u) = pair[1].split_once('=').unwrap();
            (n.to_string(), u.to_string())
        })
        .collect()
}

async fn login(url: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(url, ConnectionProperties::default()).await
}

/// How many consumers `queue` has (passive declare on a throw-away channel).
async fn consumers(conn: &Connection, queue: &str) -> u32 {
    let ch = conn.create_channel().await.expect("channel");
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .unwrap_or_else(|e| panic!("{queue}: {e}"));
    let _ = ch.close(200, "probe".into()).await;
    q.consumer_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_isolated_on_one_broker_and_device_amqp_crosses() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("vh");
    let (master, worker) = (format!("{p}-m"), format!("{p}-w"));
    let (dev_a, dev_b) = (format!("{p}-dev-a"), format!("{p}-dev-b"));
    let inv_text = format!(
        "name: {p}\nmode: cluster\nhosts:\n  - name: {master}\n    address: 127.0.0.1\n    role: master\n    vars: {{namespace: {master}}}\n  - name: {worker}\n    address: 127.0.0.1\n    role: worker\n"
    );
    let inv = aion_model::inventory::load_str(&inv_text, std::path::Path::new("inventory.yml"))
        .unwrap()
        .value;
    // The same microservice names in both files. Device B's address in `devices` leads
    // nowhere (nothing listens on 127.0.0.9): only the --device-amqp mapping reaches it.
    let ms =
        "microservices:\n  shared:\n    nextService:\n      default: [{name: sink}]\n  sink: {}\n";
    let file_a = services(&format!(
        "deviceName: {dev_a}\ndevices:\n  {dev_b}: {{addr: 127.0.0.9}}\n{ms}"
    ));
    let file_b = services(&format!("deviceName: {dev_b}\n{ms}"));
    let m = render::render(
        &inv,
        &[
            (master.clone(), file_a.clone()),
            (worker.clone(), file_b.clone()),
        ],
    )
    .unwrap();

    // The broker definitions, as the ConfigMap and the generated Secret hold them, imported
    // into the test broker in file-name order (as the broker reads its definitions directory).
    let cm = m
        .objects()
        .find(|o| o.key.kind == "ConfigMap" && o.key.name == "rabbitmq-config")
        .expect("rendered ConfigMap rabbitmq-config");
    let vhosts: Value =
        serde_json::from_str(cm.value["data"][broker::VHOSTS_FILE].as_str().unwrap()).unwrap();
    assert_eq!(
        vhosts["vhosts"],
        json!([{"name": master.clone()}, {"name": worker.clone()}])
    );
    let password = generated::fresh_password().unwrap();
    let placeholder = m
        .objects()
        .find(|o| o.key.kind == "Secret" && o.key.name == broker::SECRET_NAME)
        .expect("rendered Secret aion-broker");
    let secret = generated::with_password(&placeholder.value, &password);
    let secret_file = |key: &str| {
        let b64 = secret["data"][key].as_str().unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    let _cleanup = Vhosts(vec![master.clone(), worker.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let files = [
        (
            broker::VHOSTS_FILE,
            cm.value["data"][broker::VHOSTS_FILE]
                .as_str()
                .unwrap()
                .as_bytes()
                .to_vec(),
        ),
        (
            broker::SECRET_USER_FILE,
            secret_file(broker::SECRET_USER_FILE),
        ),
        (
            broker::PERMISSIONS_FILE,
            cm.value["data"][broker::PERMISSIONS_FILE]
                .as_str()
                .unwrap()
                .as_bytes()
                .to_vec(),
        ),
    ];
    for (name, bytes) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        rabbitmq::ctl("a", &["import_definitions", path.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("import_definitions {name}: {e}"));
    }
    let in_pod = |c: &Value, ns: &str| -> Vec<(String, String)> {
        pod_env::resolve(c, ns, |name, key| {
            assert_eq!(
                (name, key),
                (broker::SECRET_NAME, broker::SECRET_PASSWORD_KEY)
            );
            String::from_utf8(secret_file(key)).unwrap()
        })
    };

    // Each runtime as its Deployment says, pointed at the test broker.
    let mut routers = Vec::new();
    let mut ms_urls = Vec::new();
    for (node, file) in [(&master, &file_a), (&worker, &file_b)] {
        let (ns, c) = kanban_container(&m, node);
        let env = in_pod(c, ns);
        let url = on_test_broker(&env_value(&env, "AION_RABBITMQ_URL"), &b.url);
        // The microservices of the namespace get the same virtual host.
        let ms_pod = m
            .objects()
            .find(|o| o.node == *node && o.key.name == "shared-001")
            .unwrap();
        let ms_url = on_test_broker(
            &env_value(
                &in_pod(
                    &ms_pod.value["spec"]["template"]["spec"]["containers"][0],
                    ns,
                ),
                "RABBITMQ_URL",
            ),
            &b.url,
        );
        assert_eq!(ms_url, url, "{node}");
        let conn = login(&url)
            .await
            .unwrap_or_else(|e| panic!("user aion cannot log in to {ns}'s vhost ({url}): {e}"));
        drop(conn);
        let mut opts = RouterOptions::new(ServicesSource::Value(Arc::new(file.clone())), url);
        opts.device = Some(env_value(&env, "AION_DEVICE"));
        opts.namespace = Some(ns.to_string());
        opts.device_amqp = device_amqp(c, &env)
            .into_iter()
            .map(|(d, u)| (d, on_test_broker(&u, &b.url)))
            .collect();
        // The data volume exists in the pod (hostPath DirectoryOrCreate).
        opts.data_dir = dir.path().join(format!("{node}/Data"));
        std::fs::create_dir_all(&opts.data_dir).unwrap();
        routers.push(start_router(opts, None));
        ms_urls.push(ms_url);
    }
    // The password is checked, and only rendered virtual hosts exist.
    assert!(
        ms_urls[0].contains(&format!("aion:{password}@")),
        "{}",
        ms_urls[0]
    );
    let wrong = ms_urls[0].replacen(&format!("aion:{password}@"), "aion:wrong@", 1);
    assert!(
        login(&wrong).await.is_err(),
        "logged in with a wrong password"
    );
    let nowhere = format!("{}-nope", ms_urls[0]);
    assert!(login(&nowhere).await.is_err(), "logged in to {nowhere}");

    let (conn_a, ch_a) = amqp::connect(&ms_urls[0]).await;
    let (conn_b, ch_b) = amqp::connect(&ms_urls[1]).await;
    for conn in [&conn_a, &conn_b] {
        for q in ["shared-001.out", "sink-001.in", "aion-kanban.inbound"] {
            assert!(amqp::wait_declared(conn, q, WAIT).await, "{q} not declared");
        }
    }
    // `aion-kanban.inbound` exists once per namespace (in its vhost), and each is consumed by
    // its own namespace's runtime alone: two runtimes on one broker never take each other's
    // forwarded kanbans.
    for (conn, side) in [(&conn_a, "A"), (&conn_b, "B")] {
        // The runtime declares its queues before it consumes them: wait for the first.
        let deadline = std::time::Instant::now() + WAIT;
        let mut n = consumers(conn, "aion-kanban.inbound").await;
        while n == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            n = consumers(conn, "aion-kanban.inbound").await;
        }
        assert_eq!(n, 1, "{side}'s inbound: one consumer, its own runtime");
    }
    for id in [1, 2, 3] {
        let k = json!({"connectionKey": "default", "metadata": {"id": id}});
        amqp::publish(&ch_a, "shared-001.out", k.to_string().as_bytes()).await;
    }
    for id in [101, 102, 103] {
        let k = json!({"connectionKey": "default", "metadata": {"id": id}});
        amqp::publish(&ch_b, "shared-001.out", k.to_string().as_bytes()).await;
    }
    let k = json!({"connectionKey": "default", "nextDeviceName": dev_b, "metadata": {"id": 50}});
    amqp::publish(&ch_a, "shared-001.out", k.to_string().as_bytes()).await;

    let got_b = amqp::take(&ch_b, "sink-001.in", 4, WAIT).await;
    assert_eq!(
        ids(&got_b),
        [50, 101, 102, 103],
        "device B's sink: its own kanbans and the one forwarded from A"
    );
    let got_a = amqp::take(&ch_a, "sink-001.in", 3, WAIT).await;
    assert_eq!(ids(&got_a), [1, 2, 3], "device A's sink: only its own");
    // Nothing else turns up late on either side.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (conn, side) in [(&conn_a, "A"), (&conn_b, "B")] {
        assert_eq!(
            amqp::queue_len(conn, "sink-001.in").await,
            Some(0),
            "{side}"
        );
        assert_eq!(
            amqp::queue_len(conn, "aion-kanban.inbound").await,
            Some(0),
            "{side}"
        );
    }
    for r in routers {
        r.stop().await;
    }
    drop((conn_a, conn_b));
}

#[test]
fn rendered_urls_are_pointed_at_the_test_broker() {
    assert_eq!(
        on_test_broker(
            "amqp://aion:pw@rabbitmq.default.svc.cluster.local:5672/edge-1",
            "amqp://guest:guest@127.0.0.1:5673/%2f"
        ),
        "amqp://aion:pw@127.0.0.1:5673/edge-1"
    );
}
