//! The rendered manifests and the programs agree (contract tests):
//! * the aion-kanban container's command, args and env, given to the built `aion-kanban` binary
//!   (`run --print-config`), resolve to the broker, namespace, device, record DB on the mounted
//!   data volume, services.yml on the mounted config volume and in-cluster kube config;
//! * every rendered microservice pod's env satisfies the client library
//!   ([`ClientConfig::from_vars`]), with services.yml mounted read-only, and the client of a
//!   pod and the runtime of the same namespace resolve the same records queue
//!   (`aion-kanban.records.<namespace>`);
//! * the runtime's broker URL names its namespace's virtual host (cluster mode; `/` in single
//!   mode), its `--device-amqp` maps every other device of the installation to that device's
//!   virtual host, and `AION_SWEEPER_CONFIG` is the data-sweeper.yml host provisioning writes
//!   (roles/services.yml) as seen through the config mount, only where the inventory names one;
//! * queues upstream-style files name in env (`QUEUE_ORIGIN`, `QUEUE_TO*`) exist after the
//!   runtime declared its topology (also after a reload, and when one of them exists already
//!   with other arguments), and an upstream-style client can publish to and consume from them
//!   (real RabbitMQ: `eval "$(scripts/rabbitmq.sh env)"`).
//!
//! The binary is `target/<profile>/aion-kanban` next to this test, built by the test when it is
//! missing or older than its sources, or `AION_KANBAN_BIN` (then a stale binary fails the test).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aion_integration_tests::rabbitmq::kanban::{json_of, start_router};
use aion_integration_tests::rabbitmq::{self, amqp};
use aion_integration_tests::{component, pod_env};
use aion_kanban::client::ClientConfig;
use aion_kanban::router::{RouterOptions, ServicesSource};
use aion_reconcile::manifest::Manifests;
use aion_reconcile::render;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

/// Stands in for the password `apply` generates into the Secret `aion-broker`.
const TEST_PASSWORD: &str = "0123456789abcdef0123456789abcdef";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let t = if p.is_dir() {
            newest_source(&p)
        } else {
            std::fs::metadata(&p).unwrap().modified().unwrap()
        };
        newest = newest.max(t);
    }
    newest
}

/// The built `aion-kanban` binary. Without `AION_KANBAN_BIN`, a missing or stale
/// `target/<profile>/aion-kanban` is built first (`cargo build -p aion-kanban --bin aion-kanban`,
/// `cargo test` builds no binaries of other packages); panics when it is still missing or older
/// than its sources.
fn kanban_binary() -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let explicit = std::env::var_os("AION_KANBAN_BIN").map(PathBuf::from);
    // target/<profile>/deps/rabbitmq-<hash> → target/<profile>/aion-kanban
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = explicit
        .clone()
        .unwrap_or_else(|| profile_dir.join("aion-kanban"));
    let sources = ["kanban/src", "model/src"].map(|s| newest_source(&repo().join(s)));
    let fresh = |bin: &Path| {
        std::fs::metadata(bin)
            .and_then(|m| m.modified())
            .is_ok_and(|t| sources.iter().all(|s| t >= *s))
    };
    if explicit.is_none() && !fresh(&bin) {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.current_dir(repo())
            .args(["build", "-p", "aion-kanban", "--bin", "aion-kanban"])
            // The same target directory as this test binary.
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("running cargo build");
        assert!(st.success(), "cargo build -p aion-kanban: {st}");
    }
    assert!(
        fresh(&bin),
        "{} is missing or older than kanban/src or model/src; build it: cargo build -p aion-kanban",
        bin.display()
    );
    bin
}

fn load_inventory(
    rel: &str,
) -> (
    aion_model::Inventory,
    Vec<(String, aion_model::ServicesFile)>,
) {
    let path = repo().join(rel);
    let inv = aion_model::inventory::load(&path)
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .value;
    let services = inv
        .hosts
        .iter()
        .filter_map(|h| {
            let f = h.services.as_ref()?;
            let s = aion_model::services::load(f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .value;
            Some((h.name.clone(), s))
        })
        .collect();
    (inv, services)
}

fn single_inventory() -> aion_model::Inventory {
    let text = "name: wiring\nmode: single\nhosts:\n  - name: edge-master\n    address: 10.0.0.2\n    role: master\n";
    aion_model::inventory::load_str(text, Path::new("/etc/aion/inventory.yml"))
        .unwrap()
        .value
}

fn workloads(m: &Manifests) -> impl Iterator<Item = (&str, &Value)> {
    m.nodes.iter().flat_map(|n| {
        n.objects
            .iter()
            .filter(|o| matches!(o.key.kind.as_str(), "Deployment" | "Job"))
            .map(move |o| (n.node.as_str(), &o.value))
    })
}

/// A pod's volumes: mount name → (mountPath, readOnly, hostPath).
fn mounts(pod: &Value, container: &Value) -> BTreeMap<String, (String, bool, String)> {
    let host: HashMap<&str, &str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["hostPath"]["path"].as_str().unwrap_or(""),
            )
        })
        .collect();
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            (
                name.to_string(),
                (
                    m["mountPath"].as_str().unwrap().to_string(),
                    m["readOnly"].as_bool().unwrap_or(false),
                    host.get(name).copied().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

/// The mount `path` is inside (name, (mountPath, readOnly, hostPath)), if any.
fn mount_of<'a>(
    mounts: &'a BTreeMap<String, (String, bool, String)>,
    path: &str,
) -> Option<(&'a String, &'a (String, bool, String))> {
    mounts.iter().find(|(_, (mp, _, _))| {
        path == mp.as_str() || path.starts_with(&format!("{}/", mp.trim_end_matches('/')))
    })
}

/// Run the rendered aion-kanban container of every node with `--print-config` and check what
/// the binary resolved.
fn check_core(
    rel: &str,
    inv: &aion_model::Inventory,
    services: &[(String, aion_model::ServicesFile)],
) {
    let bin = kanban_binary();
    let m = render::render(inv, services).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let master_ns = &m.nodes[0].namespace;
    let cluster = inv.mode == aion_model::Mode::Cluster;
    // Each node's device name (services.yml `deviceName`, else the node name) and vhost.
    let device_of = |node: &str| {
        services
            .iter()
            .find(|(h, _)| h == node || !cluster)
            .map(|(_, s)| s.device_name.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| node.to_string())
    };
    let vhosts: Vec<(String, String)> = m
        .nodes
        .iter()
        .map(|n| {
            let v = if cluster {
                n.namespace.clone()
            } else {
                "%2f".into()
            };
            (device_of(&n.node), v)
        })
        .collect();
    // Where host provisioning writes each host's data-sweeper.yml (roles/services.yml).
    let specs = aion_reconcile::roles::load(inv).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let sweeper_on_host = |node: &str| -> Option<String> {
        let spec = specs.iter().find(|s| s.host.name == node)?;
        spec.items.iter().find_map(|i| match &i.resource {
            aion_reconcile::roles::resource::Resource::File { path, .. }
                if path.ends_with("/data-sweeper.yml") =>
            {
                Some(path.clone())
            }
            _ => None,
        })
    };
    let mut checked = 0;
    let mut clients = 0;
    let mut sweepers = 0;
    for node in &m.nodes {
        let ns = &node.namespace;
        let d = &node
            .objects
            .iter()
            .find(|o| o.key.kind == "Deployment" && o.key.name == "aion-kanban")
            .unwrap_or_else(|| panic!("{rel}: no aion-kanban Deployment for {}", node.node))
            .value;
        let pod = &d["spec"]["template"]["spec"];
        let c = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "aion-kanban")
            .unwrap();
        let mounts = mounts(pod, c);
        // Stand-ins for the mounted volumes.
        let tmp = tempfile::tempdir().unwrap();
        let local: BTreeMap<String, PathBuf> = mounts
            .iter()
            .map(|(name, (mp, _, _))| (mp.clone(), tmp.path().join(name)))
            .collect();
        for p in local.values() {
            std::fs::create_dir_all(p).unwrap();
        }
        let remap = |v: &str| -> String {
            match mount_of(&mounts, v) {
                Some((_, (mp, _, _))) => {
                    let rest = &v[mp.len()..];
                    format!("{}{rest}", local[mp].display())
                }
                None => v.to_string(),
            }
        };
        // As the kubelet gives them: the pod's namespace, a stand-in for the broker Secret's
        // generated password, `$(VAR)` references expanded.
        let resolved = pod_env::resolve(c, d["metadata"]["namespace"].as_str().unwrap(), |_, _| {
            TEST_PASSWORD.to_owned()
        });
        let container_env: HashMap<String, String> = resolved.iter().cloned().collect();
        let env: Vec<(String, String)> = resolved
            .iter()
            .map(|(k, v)| (k.clone(), remap(v)))
            .collect();
        // What host provisioning writes into the config directory.
        let services_in_pod = container_env
            .get("AION_SERVICES")
            .unwrap_or_else(|| panic!("{rel}: aion-kanban has no AION_SERVICES"));
        let (_, (_, read_only, host_path)) = mount_of(&mounts, services_in_pod)
            .unwrap_or_else(|| panic!("{rel}: {services_in_pod} is not on a mounted volume"));
        assert!(*read_only, "{rel}: the config volume is not read-only");
        assert_eq!(host_path, &format!("/var/lib/aion/{ns}/config"));
        let file = services
            .iter()
            .find(|(h, _)| h == &node.node || inv.mode == aion_model::Mode::Single)
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        let services_local = remap(services_in_pod);
        let source = inv
            .host(&node.node)
            .and_then(|h| h.services.clone())
            .filter(|p| p.exists());
        match source {
            Some(p) => std::fs::copy(&p, &services_local).map(drop).unwrap(),
            None => std::fs::write(&services_local, "microservices: {}\n").unwrap(),
        }

        let command: Vec<&str> = c["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(command, ["aion-kanban"], "{rel}: command");
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| remap(&pod_env::expand(v.as_str().unwrap(), &resolved)))
            .collect();
        assert!(
            !args.iter().any(|a| a.contains("$(")),
            "{rel}: an unexpanded reference in {args:?}"
        );
        let out = std::process::Command::new(&bin)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(&args)
            .arg("--print-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{rel}: aion-kanban {args:?} --print-config: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let got = json_of(&out.stdout);

        let device = if file.device_name.is_empty() {
            node.node.clone()
        } else {
            file.device_name.clone()
        };
        let vhost = if cluster { ns.as_str() } else { "%2f" };
        assert_eq!(
            got["amqp"],
            format!("amqp://rabbitmq.{master_ns}.svc.cluster.local:5672/{vhost}"),
            "{rel}"
        );
        let others: Vec<String> = vhosts
            .iter()
            .filter(|(d, _)| *d != device)
            .map(|(d, v)| format!("{d}=amqp://rabbitmq.{master_ns}.svc.cluster.local:5672/{v}"))
            .collect();
        assert_eq!(got["device_amqp"], json!(others), "{rel}: {}", node.node);
        if cluster {
            assert_eq!(others.len(), m.nodes.len() - 1, "{rel}: {}", node.node);
        }
        assert_eq!(got["namespace"], json!(ns), "{rel}");
        assert_eq!(got["device"], json!(device), "{rel}");
        assert_eq!(got["kubeconfig"], "in-cluster", "{rel}");
        // The live page on the pod's own interfaces, on the port `aion-reconcile status` asks.
        assert_eq!(
            got["live"],
            format!("0.0.0.0:{}", aion_reconcile::live::LIVE_PORT),
            "{rel}"
        );
        assert_eq!(got["services"], json!(services_local), "{rel}");
        assert_eq!(
            got["microservices"],
            json!(file.microservices.len()),
            "{rel}"
        );
        // The record DB and the data dir the binary resolved are on the (writable) data volume
        // of this namespace: map them back to container paths.
        let unmap = |v: &Value| -> String {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("{rel}: not a path: {v}"));
            local
                .iter()
                .find_map(|(mp, dir)| {
                    let d = dir.display().to_string();
                    (v == d || v.starts_with(&format!("{d}/")))
                        .then(|| format!("{mp}{}", &v[d.len()..]))
                })
                .unwrap_or_else(|| panic!("{rel}: {v} is not on a mounted volume"))
        };
        let db_in_pod = unmap(&got["db"]);
        let (_, (data_mount, read_only, host_path)) = mount_of(&mounts, &db_in_pod).unwrap();
        assert!(!read_only, "{rel}: the record DB's volume is read-only");
        assert_eq!(host_path, &format!("/var/lib/aion/{ns}/Data"), "{rel}");
        assert_ne!(&db_in_pod, data_mount, "{rel}: the DB is the mount itself");
        assert_eq!(unmap(&got["data_dir"]), *data_mount, "{rel}");

        // The built-in sweeper reads the file provisioning writes for this host, through the
        // config mount; no sweeper where the inventory names none.
        let on_host = if inv.mode == aion_model::Mode::Single && node.node != m.nodes[0].node {
            None
        } else {
            sweeper_on_host(&node.node)
        };
        match on_host {
            Some(host_file) => {
                let in_pod = unmap(&got["sweeper_config"]);
                let (_, (mount_path, _, host_dir)) = mount_of(&mounts, &in_pod)
                    .unwrap_or_else(|| panic!("{rel}: {in_pod} is not on a mounted volume"));
                let seen = format!("{host_dir}{}", &in_pod[mount_path.len()..]);
                assert_eq!(seen, host_file, "{rel}: {}", node.node);
                sweepers += 1;
            }
            None => assert_eq!(got["sweeper_config"], Value::Null, "{rel}: {}", node.node),
        }

        // The runtime consumes its namespace's records queue, and every producer-side client
        // of this namespace (rendered pod env → ClientConfig) publishes its records there.
        let records = format!("aion-kanban.records.{ns}");
        assert_eq!(
            got["records_queue"],
            json!(records),
            "{rel}: runtime of {ns}"
        );
        for o in &node.objects {
            let w = &o.value;
            if !matches!(o.key.kind.as_str(), "Deployment" | "Job")
                || w["metadata"]["labels"]["app.kubernetes.io/component"] != "microservice"
            {
                continue;
            }
            assert_eq!(
                w["metadata"]["namespace"],
                json!(ns),
                "{rel}: {}",
                o.key.name
            );
            let env: HashMap<String, String> = pod_env::resolve(
                &w["spec"]["template"]["spec"]["containers"][0],
                ns,
                |_, _| TEST_PASSWORD.to_owned(),
            )
            .into_iter()
            .collect();
            let cfg = ClientConfig::from_vars(|k| env.get(k).cloned())
                .unwrap_or_else(|e| panic!("{rel}: {}: {e}", o.key.name));
            if cfg.services.is_none() {
                continue; // routes via the router: publishes no records
            }
            assert_eq!(
                aion_kanban::topology::records_queue_name(cfg.namespace.as_deref()),
                records,
                "{rel}: client {} in {ns}",
                o.key.name
            );
            clients += 1;
        }
        checked += 1;
    }
    assert_eq!(checked, m.nodes.len());
    assert!(clients > 0, "{rel}: no producer-side client pod checked");
    let named = inv
        .hosts
        .iter()
        .filter(|h| h.data_sweeper.is_some())
        .count();
    if cluster {
        assert_eq!(sweepers, named, "{rel}: sweepers");
    }
}

#[test]
fn kanban_container_resolves_in_the_binary_single_example() {
    let (inv, services) = load_inventory("inventories/single/inventory.yml");
    check_core("inventories/single", &inv, &services);
}

#[test]
fn kanban_container_resolves_in_the_binary_cluster_example() {
    let (inv, services) = load_inventory("inventories/cluster/inventory.yml");
    assert!(services.len() >= 2);
    check_core("inventories/cluster", &inv, &services);
}

/// Every rendered microservice pod's env satisfies `Client::from_env`; our defaults fill what
/// the file leaves out, the file's own values win.
#[test]
fn microservice_pods_satisfy_the_client() {
    let inputs = repo().join("reconciler/tests/golden/inputs");
    let mut pods = 0;
    for example in [
        "aion-service-definitions-face-recognition",
        "aion-core-sample",
        "container-deployment-system",
    ] {
        let file = inputs.join(format!("{example}.yml"));
        let services = aion_model::services::load(&file).unwrap().value;
        let inv = single_inventory();
        let m = render::render(&inv, &[("edge-master".into(), services.clone())]).unwrap();
        for (_, w) in workloads(&m) {
            if w["metadata"]["labels"]["app.kubernetes.io/component"] != "microservice" {
                continue;
            }
            let name = w["metadata"]["name"].as_str().unwrap();
            let pod = &w["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            let env: HashMap<String, String> =
                pod_env::resolve(c, "default", |_, _| TEST_PASSWORD.to_owned())
                    .into_iter()
                    .collect();
            let cfg = ClientConfig::from_vars(|k| env.get(k).cloned())
                .unwrap_or_else(|e| panic!("{example}: {name}: {e}"));
            let ms = services
                .microservices
                .iter()
                .find(|ms| (1..=ms.scale.max(1)).any(|n| ms.instance_name(n) == name))
                .unwrap();
            let user = |k: &str| ms.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            assert_eq!(
                cfg.url,
                user("RABBITMQ_URL").unwrap_or_else(|| {
                    format!(
                        "amqp://aion:{TEST_PASSWORD}@rabbitmq.default.svc.cluster.local:5672/%2f"
                    )
                }),
                "{name}"
            );
            assert_eq!(
                cfg.queues,
                vec![user("QUEUE_ORIGIN").unwrap_or_else(|| format!("{name}.in"))],
                "{name}"
            );
            assert_eq!(
                cfg.queue_to,
                user("QUEUE_TO").unwrap_or_else(|| format!("{name}.out")),
                "{name}"
            );
            assert_eq!(
                cfg.device.as_deref(),
                env.get("DEVICE_NAME").map(|s| s.as_str())
            );
            let Some(services_path) = cfg.services else {
                // Only a file with its own QUEUE_TO goes without producer-side routing.
                assert!(user("QUEUE_TO").is_some(), "{name}: no AION_SERVICES");
                continue;
            };
            // What `Output::new` needs: its instance found by QUEUE_TO in services.yml.
            assert_eq!(
                aion_kanban::output::instance_of_output(&services, &cfg.queue_to),
                Some((ms.name.clone(), env["MS_NUMBER"].parse().unwrap())),
                "{name}"
            );
            let mounts = mounts(pod, c);
            let (_, (_, read_only, host_path)) = mount_of(&mounts, services_path.to_str().unwrap())
                .unwrap_or_else(|| panic!("{name}: services.yml is not mounted"));
            assert!(*read_only, "{name}: config mount is writable");
            assert_eq!(host_path, "/var/lib/aion/default/config", "{name}");
            pods += 1;
        }
    }
    assert!(pods >= 10, "only {pods} microservice pods checked");
}

/// The queues named in the face-recognition example's env, as upstream's operator script would
/// have declared them.
const FACE_QUEUES: [&str; 5] = [
    "azure-face-api-identifier-kube-queue",
    "get-response-of-face-api-kube-queue",
    "send-data-to-azure-iot-hub-queue",
    "azure-face-api-registrator-kube-queue",
    "register-face-to-guest-table-kube-queue",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_env_queues_are_declared_and_usable() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("wq");
    let input =
        repo().join("reconciler/tests/golden/inputs/aion-service-definitions-face-recognition.yml");
    let text = std::fs::read_to_string(&input).unwrap();
    // One more env queue that already exists with other arguments (x-max-length): kept as it
    // is, with a warning, and the rest of the topology is declared.
    let conflict = format!("{p}conflict");
    let anchor = "      QUEUE_ORIGIN: register-face-to-guest-table-kube-queue\n";
    let text = text.replacen(
        anchor,
        &format!("{anchor}      QUEUE_TO_CONFLICT: {conflict}\n"),
        1,
    );
    assert!(text.contains(&conflict));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yml");
    std::fs::write(&file, &text).unwrap();
    let cfg = aion_model::services::load(&file).unwrap().value;
    let (named, problems) = aion_kanban::topology::env_named(&cfg);
    assert!(problems.is_empty(), "{problems:?}");
    let named: Vec<String> = named.into_iter().map(|q| q.name).collect();
    for q in FACE_QUEUES {
        assert!(named.iter().any(|n| n == q), "{q} not in {named:?}");
    }

    let (conn, ch) = amqp::connect(&b.url).await;
    amqp::delete(&ch, &named).await;
    // Upstream's operator script: durable, no arguments — compatible with ours.
    ch.queue_declare(
        FACE_QUEUES[0].into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut other = FieldTable::default();
    other.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
    ch.queue_declare(
        conflict.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        other,
    )
    .await
    .unwrap();

    let mut opts = RouterOptions::new(ServicesSource::File(file.clone()), b.url.clone());
    opts.data_dir = dir.path().join("Data");
    let reload = opts.reload.clone();
    let r = start_router(opts, None);
    const WAIT: Duration = Duration::from_secs(15);
    for q in &named {
        assert!(
            amqp::wait_declared(&conn, q, WAIT).await,
            "{q} was not declared"
        );
    }
    // The session went on past the conflicting queue: the router consumes its output queues
    // (a kanban without a route is taken off the queue and recorded as no-route).
    let out = "register-face-to-guest-table-kube-001.out";
    amqp::publish(&ch, out, br#"{"connectionKey":"default"}"#).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while amqp::queue_len(&conn, out).await != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "router is not consuming {out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The conflicting queue kept its own arguments: a sixth message pushes the first one out.
    for i in 0..6 {
        amqp::publish(&ch, &conflict, format!("{{\"i\":{i}}}").as_bytes()).await;
    }
    assert_eq!(amqp::queue_len(&conn, &conflict).await, Some(5));

    // An upstream-style client: check the queues exist (QueueInspect), publish to QUEUE_TO,
    // consume QUEUE_ORIGIN with prefetch 1 and ack.
    // registrator's QUEUE_TO is register-face-to-guest-table's QUEUE_ORIGIN.
    let (to, origin) = (FACE_QUEUES[4], FACE_QUEUES[4]);
    let client_ch = conn.create_channel().await.unwrap();
    for q in [FACE_QUEUES[3], to] {
        client_ch
            .queue_declare(
                q.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("QueueInspect {q}: {e}"));
    }
    amqp::publish(&ch, to, br#"{"face":"id-1"}"#).await;
    client_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = client_ch
        .basic_consume(
            origin.into(),
            "tag1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("no message on the upstream-style consumer")
        .unwrap()
        .unwrap();
    assert_eq!(json_of(&d.data), json!({"face": "id-1"}));
    assert_eq!(
        d.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    d.acker.ack(BasicAckOptions::default()).await.unwrap();
    let _ = client_ch.close(200, "done".into()).await;

    // Reload: a queue added to env is declared too, the others stay.
    let added = format!("{p}added");
    let text2 = text.replacen(
        anchor,
        &format!("{anchor}      QUEUE_TO_ADDED: {added}\n"),
        1,
    );
    std::fs::write(&file, &text2).unwrap();
    reload.notify_one();
    assert!(
        amqp::wait_declared(&conn, &added, WAIT).await,
        "{added} was not declared after the reload"
    );
    for q in &named {
        assert!(amqp::queue_len(&conn, q).await.is_some(), "{q} is gone");
    }

    r.stop().await;
    let mut all: Vec<String> = aion_integration_tests::rabbitmq::kanban::all_queues(&cfg);
    all.extend(named);
    all.push(added);
    amqp::delete(&ch, &all).await;
}
