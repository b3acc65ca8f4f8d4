//! Two installations on running pods (#18): the development testbed (installation A, inventory
//! `testbed`) and a second testbed instance beside it (installation B, `testbed-x`: its own
//! master and worker, its own broker pod in its own namespace, on the shared control plane).
//! Each broker is reached from the other side only through its NodePort entry, with the
//! credentials the other installation issued:
//!
//! fresh hosts → both `apply --wait` (B's entry on another port: node ports are cluster-wide;
//! B's entry TLS-only with `entryTls`, a certificate for its master's address) →
//! A's sensor on its worker sends to B's sink (`devices.<B's master>.addr`), B's sensor to A's
//! sink → `peer-url` on one side, `remote-credentials` on the other (B's worker first gets a
//! wrong password) → A's kanbans reach B's sink with their files (sha256 equal to the sensor's),
//! logged as forwarded in from A's device, over a TLS connection of the user `peer.<A's device>`
//! on B's broker (the CA handed over with the URL); B's worker is refused with the broker's
//! reason and nothing of it reaches A → with the right password B's kanbans reach A's sink →
//! both plans unchanged, and neither installation's broker password nor a peer's nor the entry's
//! private key appears in a plan (text or JSON), a pod log or a file under either inventory →
//! `down` of both leaves no pod containers.
//!
//! Fails (never skips) under `AION_REQUIRE_TESTBED=1 AION_REQUIRE_K8S=1`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aion_integration_tests::component;
use aion_integration_tests::k8s::{self, TestCluster, assert_hidden};
use aion_integration_tests::rabbitmq;
use aion_integration_tests::testbed::{self, Instance, ResetIfFailed, Testbed, TestbedHost};
use aion_reconcile::cluster::peers;
use aion_reconcile::reconcile::{self, ClusterPart};
use aion_reconcile::render::broker;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{ListParams, LogParams};

/// Installation B's entry port: A's keeps the default (node ports are cluster-wide, and both
/// installations share the testbed's one control plane).
const B_ENTRY_PORT: u16 = 32095;

/// One installation of the test: its testbed hosts and its inventory in a scratch directory.
struct Installation<'a> {
    tb: &'a Testbed,
    dir: tempfile::TempDir,
    inventory: PathBuf,
}

impl Installation<'_> {
    fn master(&self) -> &TestbedHost {
        self.tb.master()
    }

    fn worker(&self) -> &TestbedHost {
        self.tb.workers().next().expect("a worker")
    }

    /// The namespace a host's pods run in (the master's may be set by its vars).
    fn namespace(&self, host: &TestbedHost) -> String {
        let inv = aion_model::inventory::load(&self.inventory).unwrap().value;
        inv.host(&host.name).unwrap().vars.namespace.clone()
    }

    /// Where the master's sink stores what it receives.
    fn sink_dir(&self) -> String {
        format!(
            "/var/lib/aion/{}/Data/sink_1/stored",
            self.namespace(self.master())
        )
    }
}

/// A copy of `tb`'s inventory in a scratch directory, its services files there too: the master
/// runs a sink, the first worker a sensor that sends to the sink of `to` (another
/// installation's master at its address), other workers nothing; `extra` is appended.
fn installation<'a>(tb: &'a Testbed, to: &TestbedHost, extra: &str) -> Installation<'a> {
    let dir = tempfile::tempdir().unwrap();
    let own = format!("services: {}/", dir.path().display());
    let inventory = testbed::inventory_copy(tb, dir.path(), |t| {
        t.replace(&format!("services: {}/", tb.dir().display()), &own) + extra
    });
    let master = tb.master();
    std::fs::write(
        dir.path().join("services.yml"),
        format!(
            "deviceName: {m}\nmicroservices:\n  sink:\n    startup: yes\n    always: yes\n    \
             scale: 1\n    targetNode: {m}\n",
            m = master.name
        ),
    )
    .unwrap();
    for (i, w) in tb.workers().enumerate() {
        let text = if i == 0 {
            format!(
                "deviceName: {w}\ndevices:\n  {to}:\n    addr: {addr}\nmicroservices:\n  sensor:\n    \
                 startup: yes\n    always: yes\n    scale: 1\n    targetNode: {w}\n    env:\n      \
                 INTERVAL_MS: \"1000\"\n    nextService:\n      default:\n        - name: sink\n          \
                 device: {to}\n",
                w = w.name,
                to = to.name,
                addr = to.address
            )
        } else {
            format!("deviceName: {}\nmicroservices:\n", w.name)
        };
        std::fs::write(dir.path().join(format!("services-{}.yml", w.name)), text).unwrap();
    }
    Installation { tb, dir, inventory }
}

/// Runs `down` for each inventory when dropped (also after a failed assertion): the objects of
/// both installations leave the shared cluster while their kubelets still run.
struct DownOnDrop<'a> {
    inventories: Vec<PathBuf>,
    cluster: &'a TestCluster,
}

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        for inventory in &self.inventories {
            let args = aion_reconcile::commands::down::Args {
                inventory: inventory.clone(),
                kubeconfig: Some(self.cluster.kubeconfig().to_owned()),
                dry_run: false,
            };
            if let Err(e) = aion_reconcile::commands::down::run(&args) {
                eprintln!("down {}: {e:#}", inventory.display());
            }
        }
    }
}

/// The newest kanban the master's sink of `inst` stored with a file, and that file's name,
/// waiting up to `secs`; `None` at the deadline.
fn stored_kanban(inst: &Installation, secs: u64) -> Option<(serde_json::Value, String)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = testbed::newest_stored_kanban(inst.tb, inst.master(), &inst.sink_dir()) {
            let file = v["metadata"]["storedFiles"][0]
                .as_str()
                .unwrap()
                .to_string();
            return Some((v, file));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn sha256_of(tb: &Testbed, host: &TestbedHost, path: &str) -> String {
    let out = tb.run_as_root(host, &format!("sha256sum {path}"));
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The records of `aion-kanban log` in `ns` of kanbans forwarded in from `device`.
fn forwarded_in_from(cluster: &TestCluster, ns: &str, device: &str) -> usize {
    let source = format!("device:{device}");
    cluster
        .kanban_log(ns)
        .iter()
        .filter(|r| r["source"] == source.as_str() && r["outcome"] == "forwarded-in")
        .count()
}

/// Every container log of every pod in `namespaces`, concatenated.
async fn pod_logs(client: &kube::Client, namespaces: &[String]) -> String {
    let mut all = String::new();
    for ns in namespaces {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        for p in pods.list(&ListParams::default()).await.unwrap() {
            let name = p.metadata.name.clone().unwrap_or_default();
            for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
                let params = LogParams {
                    container: Some(c.name.clone()),
                    ..LogParams::default()
                };
                if let Ok(text) = pods.logs(&name, &params).await {
                    all.push_str(&format!("== {ns}/{name}/{}\n{text}", c.name));
                }
            }
        }
    }
    all
}

/// What `aion-reconcile peer-url -i <issuer> --to <to> <device> | aion-reconcile
/// remote-credentials -i <holder> --host <host> <to's device>` does, with `edit` applied to
/// the URL on its way (a wrong password); the URL as issued.
async fn hand_over(
    client: &kube::Client,
    issuer: &Installation<'_>,
    to: &TestbedHost,
    holder: &Installation<'_>,
    host: &TestbedHost,
    edit: impl Fn(&str) -> String,
) -> String {
    let inv = aion_model::inventory::load(&issuer.inventory)
        .unwrap()
        .value;
    let issue = peers::issue(&inv, &host.name, Some(&to.name)).unwrap();
    let url = peers::issued_url(client, &issue).await.unwrap();
    let stored = peers::check_issued_url(&edit(&url)).unwrap();
    peers::store_remote(client, &holder.namespace(host), &to.name, &stored)
        .await
        .unwrap();
    url
}

#[test]
fn two_installations_exchange_kanbans_through_their_entries_on_running_pods() {
    let Some(tb_a) = testbed::require() else {
        return;
    };
    let _hosts = component::exclusive();
    let Some(cluster) = k8s::require() else {
        return;
    };
    let _reset_if_failed = ResetIfFailed(&tb_a);
    tb_a.reset_all();
    // B's devices: fresh hosts from 10.213.0.120, removed when the test ends.
    let other = Instance::up("x", 120, 1);
    let tb_b = &other.testbed;

    let a = installation(
        &tb_a,
        tb_b.master(),
        &format!(
            "peers:\n  - device: {}\n    to: [{}]\n",
            tb_b.workers().next().unwrap().name,
            tb_a.master().name
        ),
    );
    // B's entry speaks TLS only, with a certificate for B's master's address; A's does not.
    let pki = rabbitmq::test_pki_for(&tb_b.master().address);
    let b = installation(
        tb_b,
        tb_a.master(),
        &format!(
            "entryPort: {B_ENTRY_PORT}\npeers:\n  - device: {}\n    to: [{}]\n\
             entryTls: {{ca: {d}/ca.pem, cert: {d}/server.pem, key: {d}/server.key}}\n",
            a.worker().name,
            tb_b.master().name,
            d = pki.dir.path().display()
        ),
    );
    let _down = DownOnDrop {
        inventories: vec![a.inventory.clone(), b.inventory.clone()],
        cluster: &cluster,
    };
    // Objects an earlier, failed run left in the cluster: deleted, and their namespaces gone
    // (the pods of hosts reset since are removed by the pod garbage collector) before they
    // are made again.
    drop(DownOnDrop {
        inventories: vec![a.inventory.clone(), b.inventory.clone()],
        cluster: &cluster,
    });
    testbed::rt().block_on(async {
        let namespaces: Api<Namespace> = Api::all(cluster.client().await);
        let name = |i: &Installation| {
            aion_model::inventory::load(&i.inventory)
                .unwrap()
                .value
                .name
        };
        let selector = format!("aion.latona.io/inventory in ({},{})", name(&a), name(&b));
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let left = namespaces
                .list(&ListParams::default().labels(&selector))
                .await
                .unwrap();
            if left.items.is_empty() {
                break;
            }
            let names: Vec<_> = left
                .items
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect();
            assert!(
                Instant::now() < deadline,
                "namespaces of an earlier run still there: {names:?}"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });

    // 1. Both installations, each on its own hosts, with its own broker and entry.
    for inst in [&a, &b] {
        let t0 = Instant::now();
        let outcome = aion_reconcile::commands::apply::run_blocking(&testbed::apply_args(
            &inst.inventory,
            true,
        ))
        .unwrap();
        print!("{}", outcome.summary());
        assert!(outcome.ok(), "apply --wait failed:\n{}", outcome.summary());
        eprintln!(
            "apply --wait of {}: {:.0} s",
            inst.inventory.display(),
            t0.elapsed().as_secs_f64()
        );
    }
    let (ns_a, ns_b) = (a.namespace(a.master()), b.namespace(b.master()));
    assert_ne!(ns_a, ns_b, "the two brokers live in different namespaces");

    testbed::rt().block_on(async {
        let client = cluster.client().await;
        let pw_a = k8s::secret_key(&client, &ns_a, broker::SECRET_NAME, "password")
            .await
            .expect("A's broker password");
        let pw_b = k8s::secret_key(&client, &ns_b, broker::SECRET_NAME, "password")
            .await
            .expect("B's broker password");
        assert_ne!(pw_a, pw_b, "each installation generated its own password");

        // 2. Credentials: B issues A's worker a URL for B's master and A stores it; A issues
        //    B's worker one for A's master, stored with a wrong password first.
        let url_b = hand_over(&client, &b, b.master(), &a, a.worker(), str::to_owned).await;
        let (url_line, ca) = url_b
            .split_once('\n')
            .expect("a TLS entry's URL comes with its CA");
        assert!(
            url_line.starts_with(&format!("amqps://peer.{}:", a.worker().name))
                && url_line.ends_with(&format!("@{{addr}}:{B_ENTRY_PORT}/{ns_b}")),
            "B's URL names A's device, B's TLS entry port and B's master's virtual host: {}",
            url_line.replace(&broker::peer_password(&pw_b, &a.worker().name), "***")
        );
        assert_eq!(
            ca.trim(),
            pki.ca_pem.trim(),
            "the CA of B's entry is handed over"
        );
        let wrong = "not-the-issued-password";
        let right_for_b = broker::peer_password(&pw_a, &b.worker().name);
        hand_over(&client, &a, a.master(), &b, b.worker(), |u| {
            u.replace(&right_for_b, wrong)
        })
        .await;

        // 3. A → B: the sensor's kanban with its file reaches B's sink through B's entry.
        let Some((kanban, file)) = stored_kanban(&b, 240) else {
            panic!(
                "no kanban from A reached B's sink in 240 s; A's runtime:\n{}",
                pod_logs(&client, &[a.namespace(a.worker())]).await
            );
        };
        let seq = kanban["metadata"]["seq"].as_u64().expect("seq");
        assert_eq!(
            sha256_of(tb_b, b.master(), &format!("{}/{file}", b.sink_dir())),
            sha256_of(
                &tb_a,
                a.worker(),
                &format!(
                    "/var/lib/aion/{}/Data/sensor_1/reading-{seq}.csv",
                    a.namespace(a.worker())
                )
            ),
            "kanban {seq}'s file crossed unchanged"
        );
        assert!(
            forwarded_in_from(&cluster, &ns_b, &a.worker().name) > 0,
            "B's runtime logs kanbans forwarded in from {}",
            a.worker().name
        );
        let connections = cluster
            .kubectl(&[
                "-n",
                &ns_b,
                "exec",
                "deploy/rabbitmq",
                "--",
                "rabbitmqctl",
                "-q",
                "list_connections",
                "user",
                "vhost",
                "ssl",
            ])
            .unwrap();
        assert!(
            connections
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == [
                        format!("peer.{}", a.worker().name).as_str(),
                        ns_b.as_str(),
                        "true"
                    ]),
            "A's device is connected to B's broker as its peer user, over TLS:\n{connections}"
        );

        // 4. B → A with the wrong password: refused at login, the reason in B's runtime log,
        //    nothing delivered to A's sink.
        let ns_bw = b.namespace(b.worker());
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let log = pod_logs(&client, std::slice::from_ref(&ns_bw)).await;
            if log.contains(&format!("device `{}` refused the login", a.master().name)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "B's worker was not refused with a reason in 180 s:\n{log}"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        assert!(
            stored_kanban(&a, 0).is_none(),
            "nothing reaches A's sink with a wrong password"
        );
        assert_eq!(forwarded_in_from(&cluster, &ns_a, &b.worker().name), 0);

        // 5. The right password: B's kanbans reach A's sink, read at the next connection
        //    (no pod restarted).
        hand_over(&client, &a, a.master(), &b, b.worker(), str::to_owned).await;
        let Some((kanban, file)) = stored_kanban(&a, 240) else {
            panic!(
                "no kanban from B reached A's sink in 240 s; B's runtime:\n{}",
                pod_logs(&client, std::slice::from_ref(&ns_bw)).await
            );
        };
        let seq = kanban["metadata"]["seq"].as_u64().expect("seq");
        assert_eq!(
            sha256_of(&tb_a, a.master(), &format!("{}/{file}", a.sink_dir())),
            sha256_of(
                tb_b,
                b.worker(),
                &format!("/var/lib/aion/{ns_bw}/Data/sensor_1/reading-{seq}.csv")
            ),
            "kanban {seq}'s file crossed unchanged"
        );
        assert!(forwarded_in_from(&cluster, &ns_a, &b.worker().name) > 0);

        // The entry's private key: the first line of its PEM body (in any plain copy of it).
        let entry_key = std::fs::read_to_string(pki.dir.path().join("server.key"))
            .unwrap()
            .lines()
            .find(|l| !l.starts_with("-----"))
            .expect("a PEM body")
            .to_string();
        // 6. No credential anywhere it must not be: plans (text and JSON; both converged, the
        //    handed-over Secrets are not the reconciler's), pod logs, files under either
        //    inventory (rendered output, state, apply logs).
        let secrets = [
            pw_a.as_str(),
            pw_b.as_str(),
            &broker::peer_password(&pw_b, &a.worker().name),
            &right_for_b,
            &entry_key,
        ];
        for inst in [&a, &b] {
            let (plan, cluster_part) = reconcile::plan(&testbed::common(&inst.inventory).options())
                .await
                .unwrap();
            let Ok(ClusterPart::Planned(c)) = cluster_part else {
                panic!(
                    "{}: the cluster part was not planned",
                    inst.inventory.display()
                );
            };
            assert!(
                !plan.has_changes() && !c.has_changes(),
                "{} converged:\n{}",
                inst.inventory.display(),
                c.render_text(false, true)
            );
            for text in [
                c.render_text(false, true),
                serde_json::to_string(&c).unwrap(),
                serde_json::to_string(&plan).unwrap(),
            ] {
                for s in secrets {
                    assert_hidden(&text, s, "a plan");
                }
            }
            testbed::assert_files_do_not_hold(inst.dir.path(), &secrets);
        }
        let all_namespaces: Vec<String> = [&a, &b]
            .iter()
            .flat_map(|i| i.tb.hosts.iter().map(|h| i.namespace(h)))
            .collect();
        let logs = pod_logs(&client, &all_namespaces).await;
        for s in secrets {
            assert_hidden(&logs, s, "the pods' logs");
        }
    });

    // 7. down: no pod containers left on any host of either installation.
    for inst in [&a, &b] {
        let args = aion_reconcile::commands::down::Args {
            inventory: inst.inventory.clone(),
            kubeconfig: None,
            dry_run: false,
        };
        assert_eq!(aion_reconcile::commands::down::run(&args).unwrap(), 0);
        testbed::wait_for_no_pod_containers(inst.tb);
    }
    tb_a.reset_all();
}
