//! `aion-reconcile plan` / `apply` on the SSH testbed (simulated edge hosts, real sshd, tool
//! stand-ins, the real kube-apiserver): fresh hosts → apply → every role's effect on the hosts
//! and in the cluster → a second apply changes nothing and runs no command with side effects →
//! one changed variable shows up as exactly that change → an unreachable host fails alone and
//! the next apply converges it → single mode untaints the master.
//!
//! Fails (never skips) under `AION_REQUIRE_TESTBED=1` when the testbed is not up.

use std::path::Path;

use aion_integration_tests::component;
use aion_integration_tests::k8s;
use aion_integration_tests::testbed::{
    self, ResetIfFailed, Testbed, TestbedHost, common, inventory_copy, last_octet, rt,
};
use aion_reconcile::execute::HostOutcome;
use aion_reconcile::plan::Plan;
use aion_reconcile::reconcile::{Outcome, PhaseError, close, plan_hosts, prepare};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use kube::Api;

fn plan(inventory: &Path) -> Plan {
    rt().block_on(async {
        let o = common(inventory).options();
        let p = prepare(&o).await.unwrap();
        let plan = plan_hosts(&o, &p).await;
        close(p.hosts).await;
        plan
    })
}

fn apply_args(inventory: &Path) -> aion_reconcile::commands::apply::Args {
    aion_reconcile::commands::apply::Args {
        common: common(inventory),
        lock_stale_after: 7200,
        wait: false,
        atomic: false,
        timeout: 300,
        max_upload_rate: None,
    }
}

/// `apply` as the CLI runs it (prints the plan, progress and summary); the exit code.
fn apply(inventory: &Path) -> u8 {
    aion_reconcile::commands::apply::run(&apply_args(inventory)).unwrap()
}

/// `apply`, returning how it ended (the summary is printed too, for the test log).
fn apply_outcome(inventory: &Path) -> Outcome {
    let o = aion_reconcile::commands::apply::run_blocking(&apply_args(inventory)).unwrap();
    print!("{}", o.summary());
    o
}

/// `stat` of a path on a host with nanosecond mtime (empty when missing).
fn mtime(tb: &Testbed, h: &TestbedHost, path: &str) -> String {
    tb.run_as_root(h, &format!("stat -c '%y' {path} 2>/dev/null || true"))
}

fn calls_since(tb: &Testbed, h: &TestbedHost, n: usize) -> Vec<String> {
    tb.standin_calls(h).into_iter().skip(n).collect()
}

/// The keys of a Node's taints.
fn taint_keys(node: Node) -> Vec<String> {
    node.spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect()
}

/// Cut a host off (its link down) or bring it back; back means answering SSH again: right
/// after the link comes up, the kernel may still hold the failed neighbour entry from the cut
/// ("No route to host" for a moment), which is the network's recovery, not what is tested.
fn set_link(tb: &Testbed, h: &TestbedHost, up: bool) {
    // scripts/testbed names a host's veth after the last octet of its address.
    let dev = format!("aiontb{}", last_octet(h));
    let st = std::process::Command::new("ip")
        .args(["link", "set", &dev, if up { "up" } else { "down" }])
        .status()
        .unwrap();
    assert!(st.success(), "ip link set {dev}");
    if !up {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match tb.ssh(h, "true") {
            Ok(o) if o.status.success() => return,
            last => assert!(
                std::time::Instant::now() < deadline,
                "{} does not answer SSH 30 s after its link came back: {last:?}",
                h.name
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn provision_testbed_end_to_end() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::exclusive();
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory_copy(&tb, dir.path(), |t| t);
    let master = tb.master().clone();
    let workers: Vec<TestbedHost> = tb.workers().cloned().collect();
    let _reset_if_failed = ResetIfFailed(&tb);

    // --- fresh hosts: every role has work on every host --------------------------------------
    tb.reset_all();
    let p = plan(&inv);
    assert_eq!(p.counts.failed_hosts, 0, "{p:?}");
    for hp in &p.hosts {
        let roles: std::collections::BTreeSet<&str> =
            hp.changes.iter().map(|c| c.role.as_str()).collect();
        for r in [
            "hostname",
            "directories",
            "docker",
            "kubernetes",
            "services",
        ] {
            assert!(
                roles.contains(r),
                "{}: no {r} changes on a fresh host: {roles:?}",
                hp.host
            );
        }
        // The role file named after the host's role (roles/master.yml, roles/worker.yml).
        let own = hp.role.to_string();
        assert!(
            roles.contains(&own.as_str()),
            "{}: no {own} changes",
            hp.host
        );
    }

    // --- apply converges ---------------------------------------------------------------------
    assert_eq!(apply(&inv), 0, "first apply failed");
    for h in &tb.hosts {
        let home = if h.user == "root" {
            "/root".to_string()
        } else {
            format!("/home/{}", h.user)
        };
        let ns = if h.name == master.name {
            "default".to_string()
        } else {
            h.name.clone()
        };
        let out = tb.run_as_root(
            h,
            &format!(
                r#"hostname; cat /etc/hostname
for d in /var/lib/aion/default/config /var/lib/aion/prj/config /var/lib/aion/Data/deployment /var/lib/aion/{ns}/Data; do test -d $d && echo "dir $d"; done
for d in AionCore DataSweeper BackendService Runtime MysqlKube UI; do stat -c "home %n %U" {home}/{name}/$d; done
dpkg-query -W -f='pkg ${{Package}} ${{Version}} ${{Status}}\n' docker.io kubelet kubeadm kubectl
id -nG {user}
cat /etc/docker/daemon.json
grep -c '^export DOCKER_BUILDKIT=1$' {home}/.profile
cat /etc/apt/sources.list.d/kubernetes.list
cmp /var/lib/aion/{ns}/config/services.yml - < /dev/null >/dev/null 2>&1; sha256sum /var/lib/aion/{ns}/config/services.yml
test -f {home}/.kube/config && echo user-kubeconfig
test -f /etc/kubernetes/admin.conf && echo admin-conf
test -f /etc/kubernetes/kubelet.conf && echo kubelet-conf
"#,
                name = h.name,
                user = h.user
            ),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], h.name, "{}: runtime hostname\n{out}", h.name);
        assert_eq!(lines[1], h.name, "{}: /etc/hostname\n{out}", h.name);
        assert_eq!(
            out.matches("\ndir ").count(),
            4,
            "{}: directories\n{out}",
            h.name
        );
        assert!(
            out.lines()
                .filter(|l| l.starts_with("home ") && l.ends_with(&format!(" {}", h.user)))
                .count()
                == 6,
            "{}: home dirs owned by {}\n{out}",
            h.name,
            h.user
        );
        assert!(
            out.contains("pkg docker.io ") && out.contains("install ok installed"),
            "{out}"
        );
        for k in ["kubelet", "kubeadm", "kubectl"] {
            assert!(
                out.contains(&format!("pkg {k} 1.37.2-1.1 hold ok installed")),
                "{}: {k} pinned and held\n{out}",
                h.name
            );
        }
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().any(|g| g == "docker") && !l.starts_with("pkg")),
            "{}: user in docker group\n{out}",
            h.name
        );
        assert!(out.contains("\"buildkit\": true"), "{out}");
        assert!(
            out.contains("pkgs.k8s.io/core:/stable:/v1.37/deb/"),
            "{out}"
        );
        let local_sha = {
            use std::process::Command;
            // The host's own services file when the inventory names one, else the default.
            let own = tb.dir().join(format!("services-{}.yml", h.name));
            let file = if own.is_file() {
                own
            } else {
                tb.dir().join("services.yml")
            };
            let o = Command::new("sha256sum").arg(file).output().unwrap();
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        };
        assert!(
            out.contains(&local_sha),
            "{}: services.yml copied verbatim\n{out}",
            h.name
        );
        assert!(
            out.contains("kubelet-conf"),
            "{}: kubelet configured\n{out}",
            h.name
        );
        if h.name == master.name {
            assert!(
                out.contains("user-kubeconfig") && out.contains("admin-conf"),
                "{out}"
            );
        } else {
            assert!(
                !out.contains("admin-conf") && !out.contains("user-kubeconfig"),
                "{}: admin.conf must never reach a worker\n{out}",
                h.name
            );
        }
    }
    // The fetched kubeconfig (0600) reaches the real apiserver: Nodes, Flannel.
    let kubeconfig = dir.path().join(".aion/kubeconfig");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777,
        0o600
    );
    rt().block_on(async {
        let client = aion_reconcile::kubeclient::client_from(&kubeconfig)
            .await
            .unwrap();
        let nodes: Api<Node> = Api::all(client.clone());
        // `kubeadm join` returns once the kubelet's TLS bootstrap is done, as the real one does;
        // the real kubelet registers its Node a moment later.
        for h in &tb.hosts {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                match nodes.get_opt(&h.name).await {
                    Ok(Some(_)) => break,
                    r if std::time::Instant::now() > deadline => {
                        panic!("node {} not registered within 60 s: {r:?}", h.name)
                    }
                    _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
                }
            }
        }
        let taints = taint_keys(nodes.get(&master.name).await.unwrap());
        assert!(
            !taints
                .iter()
                .any(|t| t == "node-role.kubernetes.io/control-plane"),
            "cluster mode untaints the master (the broker runs there): {taints:?}"
        );
        Api::<Namespace>::all(client.clone())
            .get("kube-flannel")
            .await
            .unwrap();
        Api::<DaemonSet>::namespaced(client.clone(), "kube-flannel")
            .get("kube-flannel-ds")
            .await
            .unwrap();
        let cm = Api::<ConfigMap>::namespaced(client, "kube-flannel")
            .get("kube-flannel-cfg")
            .await
            .unwrap();
        assert!(
            cm.data.unwrap()["net-conf.json"].contains("10.244.0.0/16"),
            "Flannel network = the inventory's podCidr"
        );
    });

    // --- second apply: 0 changes, no command with side effects, no lock taken ----------------
    let before: Vec<usize> = tb.hosts.iter().map(|h| tb.standin_calls(h).len()).collect();
    let p = plan(&inv);
    assert!(
        !p.has_changes(),
        "converged hosts still have changes:\n{}",
        aion_reconcile::plan_text::render_text(
            &p,
            aion_reconcile::plan_text::Style { color: false }
        )
    );
    // The remote lock is a directory made (and removed) in /var/lib/aion on the master, the
    // local one a file in <inventory dir>/.aion: either would change its parent's mtime.
    let state = dir.path().join(".aion");
    let local_mtime = || std::fs::metadata(&state).unwrap().modified().unwrap();
    let (master_before, local_before) = (mtime(&tb, &master, "/var/lib/aion"), local_mtime());
    assert!(!master_before.is_empty(), "/var/lib/aion on the master");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let o = apply_outcome(&inv);
    assert!(o.ok(), "converged apply failed:\n{}", o.summary());
    assert!(!o.locked, "a converged apply took the lock");
    assert!(
        o.log.is_none(),
        "a converged apply ran something (log {:?})",
        o.log
    );
    assert_eq!(o.report.changed, 0);
    assert!(o.summary().contains("nothing to change"), "{}", o.summary());
    assert_eq!(
        mtime(&tb, &master, "/var/lib/aion"),
        master_before,
        "the converged apply touched /var/lib/aion on the master (lock directory)"
    );
    assert_eq!(
        local_mtime(),
        local_before,
        "the converged apply touched {} (lock file)",
        state.display()
    );
    for (h, n) in tb.hosts.iter().zip(&before) {
        let calls = calls_since(&tb, h, *n);
        let effects: Vec<&String> = calls
            .iter()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().skip(2).collect();
                matches!(
                    w.as_slice(),
                    ["apt-get", "install", ..]
                        | ["apt-get", "update", ..]
                        | ["kubeadm", "init", ..]
                        | ["kubeadm", "join", ..]
                        | ["kubeadm", "token", ..]
                        | ["systemctl", "start" | "enable" | "restart", ..]
                        | ["swapoff", ..]
                        | ["curl", ..]
                )
            })
            .collect();
        assert!(
            effects.is_empty(),
            "{}: a converged apply ran {effects:?}",
            h.name
        );
    }

    // --- one changed variable: exactly that change --------------------------------------------
    let w1 = workers[0].name.clone();
    let gpu_inv = inventory_copy(&tb, dir.path(), |t| {
        t.replace(
            &format!(
                "  - name: {w1}\n    address: {}\n    role: worker\n",
                workers[0].address
            ),
            &format!(
                "  - name: {w1}\n    address: {}\n    role: worker\n    vars: {{gpu: true}}\n",
                workers[0].address
            ),
        )
    });
    let p = plan(&gpu_inv);
    let changed: Vec<(String, String)> = p
        .hosts
        .iter()
        .flat_map(|h| {
            h.changes
                .iter()
                .map(move |c| (h.host.clone(), c.id.clone()))
        })
        .collect();
    assert_eq!(
        changed,
        [
            (
                w1.clone(),
                "containerd/file:/etc/containerd/config.toml".to_string()
            ),
            (
                w1.clone(),
                "docker/file:/etc/docker/daemon.json".to_string()
            ),
            (w1.clone(), "containerd/restart:containerd".to_string()),
            (w1.clone(), "docker/restart:docker".to_string())
        ],
        "plan after setting gpu on {w1}"
    );
    // The kubelet talks to containerd: the nvidia runtime must be its default there too.
    let diff = p.host(&w1).unwrap().changes[0].diff.clone().unwrap();
    assert!(
        diff.contains("+    default_runtime_name = \"nvidia\""),
        "{diff}"
    );
    let diff = p.host(&w1).unwrap().changes[1].diff.clone().unwrap();
    assert!(
        diff.contains("+  \"default-runtime\": \"nvidia\","),
        "{diff}"
    );

    // --- a host cut off in the middle of its apply fails alone; the next apply converges it ---
    // Both workers fresh again; the victim's link goes down once its stand-ins show that
    // its changes have started (docker being installed: hostname and directories done).
    let victim = workers.last().unwrap().clone();
    let others: Vec<TestbedHost> = workers
        .iter()
        .filter(|w| w.name != victim.name)
        .cloned()
        .collect();
    for h in workers.iter() {
        tb.reset(h);
    }
    if let Some(cluster) = k8s::require() {
        rt().block_on(async {
            let nodes = Api::<Node>::all(cluster.client().await);
            for h in workers.iter() {
                let _ = nodes.delete(&h.name, &Default::default()).await;
            }
        });
    }
    let inv = inventory_copy(&tb, dir.path(), |t| t);
    let fresh_changes = plan(&inv).host(&victim.name).unwrap().changes.len();
    let calls_before = tb.standin_calls(&victim).len();
    let running = {
        let inv = inv.clone();
        std::thread::spawn(move || {
            aion_reconcile::commands::apply::run_blocking(&apply_args(&inv)).unwrap()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let trigger = loop {
        let calls = calls_since(&tb, &victim, calls_before);
        if let Some(c) = calls
            .iter()
            .find(|l| l.contains(" apt-get ") && l.contains("install") && l.contains("docker.io"))
        {
            break c.clone();
        }
        assert!(
            !running.is_finished(),
            "apply ended before {} started its changes; its calls: {calls:?}",
            victim.name
        );
        assert!(
            std::time::Instant::now() < deadline,
            "{} never started installing docker",
            victim.name
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    set_link(&tb, &victim, false);
    eprintln!("cut {} after its stand-ins logged: {trigger}", victim.name);
    let o = running.join().unwrap();
    set_link(&tb, &victim, true);
    print!("{}", o.summary());
    assert!(!o.ok(), "apply with {} cut off must fail", victim.name);
    match o.report.outcome(&victim.name) {
        Some(HostOutcome::Failed { .. } | HostOutcome::Unreachable { .. }) => {}
        other => panic!("{}: {other:?}\n{}", victim.name, o.summary()),
    }
    assert!(
        o.summary().lines().any(|l| l
            .trim_start()
            .starts_with(&format!("{}: failed", victim.name))),
        "the summary names the failed host:\n{}",
        o.summary()
    );
    assert!(
        o.summary().contains("1 failed"),
        "counts in the summary:\n{}",
        o.summary()
    );
    for h in std::iter::once(&master).chain(&others) {
        assert!(
            matches!(
                o.report.outcome(&h.name),
                Some(HostOutcome::Converged { .. })
            ),
            "{} must converge although {} was cut off: {:?}",
            h.name,
            victim.name,
            o.report.outcome(&h.name)
        );
    }
    for h in &others {
        assert!(
            matches!(o.report.outcome(&h.name), Some(HostOutcome::Converged { changed }) if *changed > 0),
            "{} (fresh) converged in the same phase",
            h.name
        );
    }
    // What depends on every host converging (the per-node manifests) is skipped, with why.
    match o.cluster.as_ref() {
        Err(PhaseError::HostsNotConverged { hosts }) => {
            assert!(hosts.contains(&victim.name), "{hosts:?}")
        }
        other => panic!(
            "the cluster part must be skipped naming {}: {other:?}",
            victim.name
        ),
    }
    // No half-written files: each file the roles write is absent or whole.
    let local_services_sha = {
        let o = std::process::Command::new("sha256sum")
            .arg(tb.dir().join("services.yml"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let ns = &victim.name;
    let files = tb.run_as_root(
        &victim,
        &format!(
            r#"f=/var/lib/aion/{ns}/config/services.yml; if [ -f $f ]; then echo "services $(sha256sum < $f | cut -d' ' -f1)"; else echo "services absent"; fi
f=/etc/docker/daemon.json; if [ -f $f ]; then python3 -c 'import json,sys; json.load(open(sys.argv[1])); print("daemon.json valid")' $f; else echo "daemon.json absent"; fi
echo "hostname $(cat /etc/hostname)"
"#
        ),
    );
    eprintln!("{} after the cut:\n{files}", victim.name);
    assert!(
        files.contains("services absent")
            || files.contains(&format!("services {local_services_sha}")),
        "{files}"
    );
    assert!(
        files.contains("daemon.json absent") || files.contains("daemon.json valid"),
        "{files}"
    );
    assert!(
        files.contains(&format!("hostname {}\n", victim.name))
            || files.contains("hostname tb-host-"),
        "{files}"
    );
    // Mid-way: some of its changes are done, some are left.
    let left = plan(&inv).host(&victim.name).unwrap().changes.len();
    eprintln!(
        "{}: {left} of {fresh_changes} changes left after the cut",
        victim.name
    );
    assert!(
        left < fresh_changes,
        "{} was cut before any change ({left} of {fresh_changes} left)",
        victim.name
    );
    let o = apply_outcome(&inv);
    assert!(
        o.ok(),
        "apply after {} is back:\n{}",
        victim.name,
        o.summary()
    );
    assert!(!plan(&inv).has_changes());
    let o = apply_outcome(&inv);
    assert!(
        o.ok() && !o.locked,
        "then nothing to change:\n{}",
        o.summary()
    );

    // --- single mode: the master untainted (both taints) -------------------------------------
    let first_worker = format!("  - name: {}\n", workers[0].name);
    // Single mode: the master only, and a services.yml without targetNode (no workers), whose
    // microservice's image the testbed's image source has.
    let single_services = dir.path().join("single-services.yml");
    std::fs::write(
        &single_services,
        format!("deviceName: {}\nmicroservices:\n  sink:\n    startup: yes\n    always: yes\n    scale: 1\n", master.name),
    )
    .unwrap();
    let services_abs = tb.dir().join("services.yml").display().to_string();
    let single = inventory_copy(&tb, dir.path(), |t| {
        let t = t
            .replace("mode: cluster", "mode: single")
            .replace(&services_abs, &single_services.display().to_string());
        t[..t.find(&first_worker).expect("workers follow the master")].to_string()
    });
    let p = plan(&single);
    let m = p.host(&master.name).unwrap();
    assert!(
        m.changes
            .iter()
            .any(|c| c.id == format!("cluster/untaint:{}", master.name)),
        "{:?}",
        m.changes
    );
    assert_eq!(apply(&single), 0);
    rt().block_on(async {
        let client = aion_reconcile::kubeclient::client_from(&kubeconfig)
            .await
            .unwrap();
        let taints = taint_keys(Api::<Node>::all(client).get(&master.name).await.unwrap());
        assert!(
            !taints
                .iter()
                .any(|t| t.starts_with("node-role.kubernetes.io/")),
            "{taints:?}"
        );
    });
    assert!(!plan(&single).has_changes());

    // Leave the hosts fresh for the tests that run after this one.
    tb.reset_all();
}
