//! The SSH testbed behaves like separate machines: real SSH logins with strict host keys,
//! distinct addresses and hostnames, private writable files, a non-root sudo login, and
//! stand-ins that keep the real tools' contracts and log their calls.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use aion_integration_tests::component;
use aion_integration_tests::testbed::{self, TestbedHost};
use aion_model::Role;

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
}

#[test]
fn generated_inventory_loads_without_errors_and_names_one_master() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::shared();
    assert_eq!(
        tb.hosts.iter().filter(|h| h.role == Role::Master).count(),
        1,
        "{:?}",
        tb.hosts
    );
    assert!(tb.workers().count() >= 1);
    assert!(tb.master().address.starts_with("10.213.0."));
    assert!(tb.known_hosts.is_file() && tb.key.is_file());
    // The pipeline, one part per host: the master's services.yml and the workers' own files.
    let mut names = Vec::new();
    for h in &tb.hosts {
        let own = tb.dir().join(format!("services-{}.yml", h.name));
        let services = if own.is_file() {
            own
        } else {
            tb.dir().join("services.yml")
        };
        let loaded = aion_model::services::load(&services)
            .unwrap_or_else(|e| panic!("{}: {e}", services.display()));
        names.extend(loaded.value.microservices.iter().map(|m| m.name.clone()));
    }
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        ["processor", "sensor", "sink"],
        "the sensor -> processor -> sink pipeline across the hosts' services files"
    );
}

#[test]
fn every_host_answers_over_ssh_with_its_own_address_hostname_and_user() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::shared();
    let mut hostnames = HashSet::new();
    for h in &tb.hosts {
        let out = tb.run(
            h,
            "hostname; id -un; ip -4 -o addr show dev eth0 | awk '{print $4}'",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{}: {out}", h.address);
        assert!(
            hostnames.insert(lines[0].to_owned()),
            "hostname {} seen twice",
            lines[0]
        );
        assert_eq!(lines[1], h.user, "{} logs in as {}", h.address, h.user);
        assert_eq!(lines[2], format!("{}/24", h.address));
    }
    assert_eq!(hostnames.len(), tb.hosts.len());
}

#[test]
fn non_root_login_has_passwordless_sudo() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::shared();
    let h = tb
        .hosts
        .iter()
        .find(|h| !h.is_root_login())
        .expect("at least one testbed host logs in as a non-root user");
    assert_ne!(tb.run(h, "id -u").trim(), "0");
    assert_eq!(tb.run(h, "sudo -n id -u").trim(), "0");
    assert_eq!(tb.run_as_root(h, "id -un").trim(), "root");
}

#[test]
fn files_are_private_per_host_and_atomic_renames_work() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::shared();
    let marker = unique("probe");
    let dirs = [
        "/etc",
        "/etc/docker",
        "/etc/kubernetes",
        "/etc/apt/sources.list.d",
        "/var/lib/aion",
        "/var/lib/kubelet",
        "/usr/local/bin",
    ];
    let (first, rest) = tb.hosts.split_first().expect("hosts");
    // Write temp file + rename in every directory provisioning writes (EBUSY with bind mounts).
    let mut script = String::from("set -e\n");
    for d in dirs {
        script.push_str(&format!(
            "mkdir -p {d} && printf %s {marker} > {d}/.{marker}.tmp && mv -f {d}/.{marker}.tmp {d}/{marker}\n"
        ));
    }
    script.push_str(&format!(
        "printf tb-probe > /etc/.hn.tmp && mv -f /etc/.hn.tmp /etc/hostname.{marker}\n"
    ));
    tb.run_as_root(first, &script);
    for d in dirs {
        assert_eq!(
            tb.run(first, &format!("cat {d}/{marker}")),
            marker,
            "{d} on {}",
            first.name
        );
        for other in rest {
            let out = tb
                .ssh(other, &format!("test -e {d}/{marker}"))
                .expect("ssh");
            assert!(
                !out.status.success(),
                "{d}/{marker} written on {} is visible on {}",
                first.name,
                other.name
            );
        }
        assert!(
            !Path::new(d).join(&marker).exists(),
            "{d}/{marker} leaked to the machine running the testbed"
        );
    }
    let mut cleanup = String::new();
    for d in dirs {
        cleanup.push_str(&format!("rm -f {d}/{marker}; "));
    }
    cleanup.push_str(&format!("rm -f /etc/hostname.{marker}"));
    tb.run_as_root(first, &cleanup);
}

#[test]
fn hostname_can_be_changed_only_through_etc_hostname_and_hostname() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::shared();
    let h = tb.workers().last().expect("a worker");
    // No systemd on the hosts: hostnamectl is absent, as on any host without systemd as PID 1.
    let out = tb.ssh(h, "command -v hostnamectl").expect("ssh");
    assert!(
        !out.status.success(),
        "hostnamectl must be absent on {}",
        h.name
    );
    let before = tb.run(h, "hostname").trim().to_owned();
    let probe = format!("tbprobe{}", std::process::id());
    tb.run_as_root(h, &format!("hostname {probe}"));
    assert_eq!(tb.run(h, "hostname").trim(), probe);
    // Only this host's UTS namespace changed.
    for other in tb.hosts.iter().filter(|o| o.address != h.address) {
        assert_ne!(tb.run(other, "hostname").trim(), probe);
    }
    let local = Command::new("hostname").output().expect("hostname");
    assert_ne!(String::from_utf8_lossy(&local.stdout).trim(), probe);
    tb.run_as_root(h, &format!("hostname {before}"));
}

#[test]
fn a_changed_or_unknown_host_key_is_refused() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::shared();
    let dir = std::env::temp_dir().join(unique("tb-known-hosts"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("other");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let other_pub = std::fs::read_to_string(key.with_extension("pub")).expect("pub key");
    let h: &TestbedHost = tb.master();
    // A known_hosts that maps the master's address to another key: a man in the middle.
    let wrong = dir.join("known_hosts_wrong");
    let fields: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    std::fs::write(&wrong, format!("{} {}\n", h.address, fields.join(" "))).expect("write");
    let out = tb
        .ssh_command_with(h, &wrong)
        .arg("true")
        .output()
        .expect("ssh");
    assert_eq!(
        out.status.code(),
        Some(255),
        "a wrong host key must be refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Host key verification failed") || err.contains("IDENTIFICATION HAS CHANGED"),
        "{err}"
    );
    // An empty known_hosts: strict checking refuses an unknown host.
    let empty = dir.join("known_hosts_empty");
    std::fs::write(&empty, "").expect("write");
    let out = tb
        .ssh_command_with(h, &empty)
        .arg("true")
        .output()
        .expect("ssh");
    assert_eq!(
        out.status.code(),
        Some(255),
        "an unknown host key must be refused"
    );
    // The real known_hosts is accepted.
    assert_eq!(tb.run(h, "echo ok").trim(), "ok");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn package_and_service_stand_ins_keep_the_real_contracts() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::shared();
    let h = tb.workers().next().expect("a worker");
    let out = tb.scratch(
        h,
        r#"
n0=$(wc -l < /var/log/aion-standins.log)
echo "kubeadm-before=$(kubeadm version -o short >/dev/null 2>&1; echo $?)"
apt-get install -y kubelet >/dev/null 2>&1; echo "kubelet-without-repo=$?"
echo 'deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.37/deb/ /' > /etc/apt/sources.list.d/kubernetes.list
apt-get update >/dev/null; apt-get install -y docker.io kubelet=1.37.2-1.1 kubeadm >/dev/null; echo "install=$?"
echo "status=$(dpkg-query -W -f='${Status} ${Version}' kubelet)"
apt-mark hold kubelet >/dev/null; echo "held=$(apt-mark showhold | tr '\n' ,)"
echo "kubeadm-after=$(kubeadm version -o short)"
echo "docker-active=$(systemctl is-active docker)"
systemctl is-active kubelet >/dev/null; echo "kubelet-active-rc=$?"
systemctl start no-such-unit 2>/dev/null; echo "start-unknown-rc=$?"
echo '{"features":{"buildkit":true}}' > /etc/docker/daemon.json; systemctl restart docker; echo "restart-good=$?"
echo '{"no-such-option":1}' > /etc/docker/daemon.json; systemctl restart docker 2>/dev/null; echo "restart-bad=$?"
echo "docker-after-bad=$(systemctl is-active docker)"
swapoff -a; echo "swapoff=$?"
mkdir -p /etc/apt/keyrings
curl -fsSL https://pkgs.k8s.io/core:/stable:/v1.37/deb/Release.key | gpg --dearmor -o /etc/apt/keyrings/k.gpg 2>/dev/null; echo "key=$?"
test -s /etc/apt/keyrings/k.gpg && echo key-written
curl -fsS https://deb.debian.org/ >/dev/null 2>&1; echo "offline=$?"
tail -n +$((n0 + 1)) /var/log/aion-standins.log | grep -c ' apt-get install ' | sed 's/^/logged-installs=/'
# Two starts of one unit at once leave one daemon, and a stop leaves none (systemd queues one
# job per unit; the stand-in once spawned a second, unsupervised containerd).
me=$(readlink /proc/self/ns/mnt)
count() { n=0; for p in $(pgrep -x containerd); do [ "$(readlink /proc/$p/ns/mnt 2>/dev/null)" = "$me" ] && n=$((n + 1)); done; echo $n; }
systemctl start containerd & systemctl start containerd & wait
sleep 3
echo "containerds-after-two-starts=$(count)"
systemctl stop containerd >/dev/null 2>&1
sleep 1
echo "containerds-after-stop=$(count)"
"#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let expect = [
        "kubeadm-before=127",
        "kubelet-without-repo=100",
        "install=0",
        "status=install ok installed 1.37.2-1.1",
        "held=kubelet,",
        "kubeadm-after=v1.37.2",
        "docker-active=active",
        "kubelet-active-rc=3",
        "start-unknown-rc=5",
        "restart-good=0",
        "restart-bad=1",
        "docker-after-bad=inactive",
        "swapoff=0",
        "key=0",
        "key-written",
        "offline=6",
        "logged-installs=2",
        "containerds-after-two-starts=1",
        "containerds-after-stop=0",
    ];
    for line in expect {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` on {}:\n{text}\nstderr:\n{}",
            h.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Nothing of that reached the host itself.
    let after = tb
        .ssh(h, "dpkg-query -W -f='${Status}' kubeadm")
        .expect("ssh");
    assert!(
        !String::from_utf8_lossy(&after.stdout).contains("installed"),
        "the scratch overlay leaked into {}",
        h.name
    );
}

/// A host whose steps are further apart than `--ssh-persist` keeps its connection for the whole
/// run (seen with real nodes: the master's connection expired while the workers joined, and
/// their `kubeadm token create` on the master failed with "SSH session broke").
#[test]
fn connection_outlives_the_persist_time_during_a_run() {
    use aion_reconcile::host::Host as _;
    use aion_reconcile::host::ssh::{SshHost, SshOptions};
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::shared();
    let inv = aion_model::inventory::load(&tb.inventory).unwrap().value;
    let host = inv
        .hosts
        .iter()
        .find(|h| h.name == tb.master().name)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = SshOptions {
        known_hosts: Some(tb.known_hosts.clone()),
        accept_new: false,
        connect_timeout: std::time::Duration::from_secs(5),
        control_dir: dir.path().join("ssh"),
        persist: Some(std::time::Duration::from_secs(1)),
        upload_limit: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let h = SshHost::connect(host, &opts).await.unwrap();
        let text =
            |o: &aion_reconcile::host::Output| String::from_utf8_lossy(&o.stdout).trim().to_owned();
        assert_eq!(text(&h.run("echo one").await.unwrap()), "one");
        // Idle for three times the persist time, as a master is while its workers join.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let out = h.run("echo two").await;
        assert!(
            out.as_ref().is_ok_and(|o| text(o) == "two"),
            "the connection did not survive an idle gap: {out:?}"
        );
        h.close().await;
    });
}
