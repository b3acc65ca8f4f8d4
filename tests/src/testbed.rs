//! The SSH testbed: simulated edge devices made by `scripts/testbed up` (network, UTS and
//! mount namespaces on bridge `aionbr0`, each with a real sshd). See docs/testbed.md.
//!
//! Tests call [`require`]. It reads the inventory `scripts/testbed up` wrote
//! (`inventories/testbed/inventory.yml`, or `AION_TESTBED_INVENTORY`) and checks that every
//! host answers on its SSH port. When the testbed is not up the test is skipped with a loud
//! `SKIPPED:` line, except under CI (`AION_REQUIRE_TESTBED=1`), where it fails.
//!
//! [`Testbed::ssh`] runs a command on a host through the system `ssh` client with the
//! inventory's key and known_hosts and `StrictHostKeyChecking=yes`, exactly as provisioning
//! reaches a real device.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use aion_model::{Role, Severity};

/// When `1`, a missing testbed fails the test instead of skipping it.
pub const REQUIRE_ENV: &str = "AION_REQUIRE_TESTBED";
/// Overrides the inventory path (default: `<workspace>/inventories/testbed/inventory.yml`).
pub const INVENTORY_ENV: &str = "AION_TESTBED_INVENTORY";
/// Where each host's stand-ins append one line per call.
pub const STANDIN_LOG: &str = "/var/log/aion-standins.log";
/// Bridge address of the machine running the testbed (the control plane listens there too).
pub const BRIDGE_ADDRESS: &str = "10.213.0.1";

/// One simulated device, as the generated inventory describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestbedHost {
    /// Inventory name (the hostname provisioning gives the device, e.g. `aion-worker-1`).
    pub name: String,
    pub address: String,
    pub role: Role,
    pub user: String,
    pub port: u16,
}

impl TestbedHost {
    pub fn is_root_login(&self) -> bool {
        self.user == "root"
    }
}

/// A running testbed, found through its generated inventory.
#[derive(Debug, Clone)]
pub struct Testbed {
    pub inventory: PathBuf,
    pub known_hosts: PathBuf,
    pub key: PathBuf,
    pub hosts: Vec<TestbedHost>,
}

/// Default inventory path: `inventories/testbed/inventory.yml` in the workspace.
pub fn default_inventory() -> PathBuf {
    repo_root().join("inventories/testbed/inventory.yml")
}

/// Returns the testbed, or `None` (after printing `SKIPPED: ...`) when it is not up.
///
/// # Panics
/// When the testbed is not up and `AION_REQUIRE_TESTBED=1`; when the generated inventory does
/// not load or lacks the key/known_hosts (always a bug, never a skip).
pub fn require() -> Option<Testbed> {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
    let inventory = std::env::var_os(INVENTORY_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(default_inventory);
    let missing = |why: String| -> Option<Testbed> {
        if required {
            panic!(
                "{REQUIRE_ENV}=1 but the testbed is not usable: {why} (run `scripts/testbed up` as root)"
            );
        }
        eprintln!(
            "SKIPPED: this test needs the SSH testbed and did not run: {why} \
             (run `scripts/testbed up` as root; set {REQUIRE_ENV}=1 to make this a failure)"
        );
        None
    };
    if !inventory.is_file() {
        return missing(format!("{} does not exist", inventory.display()));
    }
    let testbed = match Testbed::load(&inventory) {
        Ok(t) => t,
        Err(e) => panic!(
            "the testbed inventory {} is broken: {e}",
            inventory.display()
        ),
    };
    if let Some(h) = testbed
        .hosts
        .iter()
        .find(|h| !port_open(&h.address, h.port))
    {
        return missing(format!(
            "{} lists {} ({}:{}), which does not answer (stale inventory? `scripts/testbed status`)",
            inventory.display(),
            h.name,
            h.address,
            h.port
        ));
    }
    Some(testbed)
}

fn port_open(address: &str, port: u16) -> bool {
    let Ok(ip) = address.parse() else {
        return false;
    };
    TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2)).is_ok()
}

impl Testbed {
    /// Reads the generated inventory through the model crate (the same loader `aion-reconcile`
    /// uses). Errors name the file and what is wrong.
    pub fn load(inventory: &Path) -> Result<Testbed, String> {
        let loaded = aion_model::inventory::load(inventory).map_err(|e| e.to_string())?;
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        if !errors.is_empty() {
            return Err(errors.join("\n"));
        }
        let inv = loaded.value;
        let known_hosts = inv
            .known_hosts
            .clone()
            .ok_or_else(|| "no knownHosts entry".to_string())?;
        let mut key = None;
        let hosts = inv
            .hosts
            .iter()
            .map(|h| {
                if key.is_none() {
                    key.clone_from(&h.ssh.key);
                }
                TestbedHost {
                    name: h.name.clone(),
                    address: h.address.clone(),
                    role: h.role,
                    user: h.ssh.user.clone(),
                    port: h.ssh.port,
                }
            })
            .collect::<Vec<_>>();
        let key = key.ok_or_else(|| "no ssh key in the inventory".to_string())?;
        if hosts.is_empty() {
            return Err("no hosts".into());
        }
        Ok(Testbed {
            inventory: inv.source.clone(),
            known_hosts,
            key,
            hosts,
        })
    }

    pub fn master(&self) -> &TestbedHost {
        self.hosts
            .iter()
            .find(|h| h.role == Role::Master)
            .expect("the testbed inventory has a master")
    }

    pub fn workers(&self) -> impl Iterator<Item = &TestbedHost> {
        self.hosts.iter().filter(|h| h.role == Role::Worker)
    }

    /// The directory holding inventory.yml, known_hosts, id_ed25519 and services.yml.
    pub fn dir(&self) -> &Path {
        self.inventory.parent().unwrap_or(Path::new("."))
    }

    /// `ssh` with the inventory's key, strict host-key checking against `known_hosts`, no
    /// agent, no password prompts. Append the remote command with `.arg(...)`.
    pub fn ssh_command_with(&self, host: &TestbedHost, known_hosts: &Path) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&self.key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
                "-p",
            ])
            .arg(host.port.to_string())
            .arg("-l")
            .arg(&host.user)
            .arg(&host.address)
            .arg("--")
            .stdin(Stdio::null());
        c
    }

    pub fn ssh_command(&self, host: &TestbedHost) -> Command {
        self.ssh_command_with(host, &self.known_hosts)
    }

    /// Runs `script` (a shell command line) on `host` and returns its output, whatever the
    /// exit status.
    pub fn ssh(&self, host: &TestbedHost, script: &str) -> io::Result<Output> {
        self.ssh_command(host).arg(script).output()
    }

    /// Runs `script` on `host` and returns its stdout.
    ///
    /// # Panics
    /// When ssh cannot run or the command exits non-zero; the message names the host, the
    /// command, the exit status and stderr.
    pub fn run(&self, host: &TestbedHost, script: &str) -> String {
        let out = self
            .ssh(host, script)
            .unwrap_or_else(|e| panic!("cannot run ssh to {}: {e}", host.address));
        assert!(
            out.status.success(),
            "on {} ({}@{}): `{script}` failed with {}\nstdout:\n{}\nstderr:\n{}",
            host.name,
            host.user,
            host.address,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`run`](Self::run), as root: through `sudo -n` when the login user is not root.
    pub fn run_as_root(&self, host: &TestbedHost, script: &str) -> String {
        self.run(host, &as_root(host, script))
    }

    /// Runs `body` (bash) as root on `host` inside a throwaway copy-on-write layer over the
    /// host's /etc, /usr, /var/lib, /var/log, /root, /home and a fresh /run and /tmp, in its own UTS namespace (a
    /// nested mount namespace entered over SSH). Whatever `body` installs or writes is gone
    /// when it returns, so tests can exercise the stand-ins without changing the host that
    /// other tests provision. Background processes `body` starts must be stopped by `body`
    /// (`systemctl stop kubelet containerd` when it installed them).
    pub fn scratch(&self, host: &TestbedHost, body: &str) -> Output {
        let script = format!(
            r#"set -e
T=$1
for d in /etc /usr /var/lib /var/log /root /home; do k=$(echo "$d" | tr / _); mkdir -p "$T/u$k" "$T/w$k"
  mount -t overlay scratch -o "lowerdir=$d,upperdir=$T/u$k,workdir=$T/w$k" "$d"; done
mount -t tmpfs scratch /run
mount -t tmpfs scratch /tmp
mkdir -p /run/lock "$T/containerd" /var/lib/containerd
# containerd's snapshots cannot live on the overlay: a fresh directory of its own.
mount --bind "$T/containerd" /var/lib/containerd
set +e
{body}
"#
        );
        let wrapped = format!(
            "T=$(mktemp -d /tmp/tbscratch.XXXXXX) || exit 1; \
             unshare --mount --uts --propagation private --fork bash -c {} scratch \"$T\"; \
             rc=$?; rm -rf \"$T\"; exit $rc",
            shell_quote(&script)
        );
        self.ssh(host, &as_root(host, &wrapped))
            .unwrap_or_else(|e| panic!("cannot run ssh to {}: {e}", host.address))
    }

    /// Lines the stand-ins on `host` logged (`<time> uid=<uid> <tool> <args...>`).
    pub fn standin_calls(&self, host: &TestbedHost) -> Vec<String> {
        self.run(host, &format!("cat {STANDIN_LOG}"))
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Wraps `script` in `sudo -n sh -c '...'` unless the host logs in as root.
pub fn as_root(host: &TestbedHost, script: &str) -> String {
    if host.is_root_login() {
        script.to_owned()
    } else {
        format!("sudo -n sh -c {}", shell_quote(script))
    }
}

/// Single-quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------------------------
// Fresh hosts: what the provisioning and real-node tests start and end with
// ---------------------------------------------------------------------------------------------

/// The runtime the testbed tests drive async code on (two workers, like the CLI's).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A copy of the testbed inventory in a scratch directory (own kubeconfig, lock and logs),
/// with `edit` applied to its text.
pub fn inventory_copy(tb: &Testbed, dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let src = std::fs::read_to_string(&tb.inventory).unwrap();
    let abs = |name: &str| tb.dir().join(name).display().to_string();
    // Every services file (the default and the hosts' own) by its absolute path.
    let text: String = src
        .lines()
        .map(|l| match l.split_once("services: ") {
            Some((indent, file)) if indent.trim().is_empty() && !file.starts_with('/') => {
                format!("{indent}services: {}\n", abs(file.trim()))
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let text = text
        .replace(
            "knownHosts: known_hosts",
            &format!("knownHosts: {}", abs("known_hosts")),
        )
        .replace("key: id_ed25519", &format!("key: {}", abs("id_ed25519")));
    let path = dir.join("inventory.yml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// The host's index in the testbed (0 = master): its address's last octet less the first.
pub fn index(h: &TestbedHost) -> u32 {
    last_octet(h) - 10
}

pub fn last_octet(h: &TestbedHost) -> u32 {
    h.address
        .rsplit('.')
        .next()
        .and_then(|o| o.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("{}: not an IPv4 address", h.address))
}

/// The shell script that undoes everything provisioning does (prints `reset-done`): kubeadm
/// reset (pods removed through the CRI), the packages removed (their daemons stopped), the pod
/// network's leftovers that kubeadm reset leaves to the operator (CNI configuration, `cni0`,
/// `flannel.1`), files and settings of the roles, the hostname.
pub fn reset_script(h: &TestbedHost) -> String {
    let home = if h.user == "root" {
        "/root".to_string()
    } else {
        format!("/home/{}", h.user)
    };
    format!(
        r#"kubeadm reset -f >/dev/null 2>&1 || true
apt-mark unhold kubelet kubeadm kubectl >/dev/null 2>&1 || true
for p in kubelet kubeadm kubectl kubernetes-cni cri-tools docker.io containerd runc; do apt-get remove -y "$p" >/dev/null 2>&1 || true; done
ip link del cni0 2>/dev/null || true
ip link del flannel.1 2>/dev/null || true
rm -rf /etc/cni/net.d /var/lib/cni /run/flannel /opt/cni
rm -rf /var/lib/aion /etc/docker/daemon.json /etc/containerd /etc/apt/sources.list.d/kubernetes.list /etc/apt/keyrings/kubernetes-apt-keyring.gpg /etc/kubernetes {home}/.kube {home}/{name}
rm -f /etc/sysctl.d/99-aion-kubernetes.conf /etc/modules-load.d/aion-kubernetes.conf
echo 0 > /proc/sys/net/ipv4/ip_forward
apt-get update >/dev/null 2>&1 || true  # forget the pkgs.k8s.io package lists, as on a fresh host
sed -i '/^export AION_HOME=/d; /^export DOCKER_BUILDKIT=/d' {home}/.profile
gpasswd -d {user} docker >/dev/null 2>&1 || true
echo tb-host-{i} > /etc/hostname; hostname tb-host-{i}
sed -i '/^127.0.1.1 /d' /etc/hosts
echo reset-done"#,
        name = h.name,
        user = h.user,
        i = index(h)
    )
}

impl Testbed {
    /// Undo everything provisioning does, so the host is as `scripts/testbed up` left it.
    pub fn reset(&self, h: &TestbedHost) {
        let out = self.run_as_root(h, &reset_script(h));
        assert!(
            out.contains("reset-done"),
            "reset of {} failed: {out}",
            h.name
        );
    }

    /// Every host as `scripts/testbed up` left it, and no Node objects for them. Done before a
    /// test that provisions (fresh hosts) and after it, so the testbed tests that run later see
    /// fresh hosts too.
    pub fn reset_all(&self) {
        for h in &self.hosts {
            self.reset(h);
        }
        // `kubeadm reset` leaves the Node objects (as on a real cluster); remove them so the
        // hosts can join again under their names.
        if let Some(cluster) = crate::k8s::require() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = cluster.client().await;
                let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
                    kube::Api::all(client.clone());
                let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                    kube::Api::all(client.clone());
                for h in &self.hosts {
                    let _ = nodes.delete(&h.name, &Default::default()).await;
                    // Pods still bound to that node name (DaemonSet pods: Flannel, kube-proxy)
                    // would be taken over by the next kubelet of that name before the pod
                    // garbage collector removes them, with their init containers counted as
                    // done: Flannel's CNI configuration would never be written again.
                    let bound = kube::api::ListParams::default()
                        .fields(&format!("spec.nodeName={}", h.name));
                    if let Ok(list) = pods.list(&bound).await {
                        for p in list.items {
                            let (Some(ns), Some(name)) = (p.metadata.namespace, p.metadata.name)
                            else {
                                continue;
                            };
                            let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
                                kube::Api::namespaced(client.clone(), &ns);
                            let _ = api
                                .delete(&name, &kube::api::DeleteParams::default().grace_period(0))
                                .await;
                        }
                    }
                }
            });
        }
    }
}

/// Resets the hosts when the test ends by a failed assertion, so the testbed tests that run
/// after it start from fresh hosts instead of failing on this test's leftovers. Best effort and
/// panic-free (it runs while unwinding); the test resets them itself when it passes.
pub struct ResetIfFailed<'a>(pub &'a Testbed);

impl Drop for ResetIfFailed<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for h in &self.0.hosts {
            let done = self
                .0
                .ssh(h, &as_root(h, &reset_script(h)))
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("reset-done"));
            eprintln!(
                "after the failure: reset of {} {}",
                h.name,
                if done { "done" } else { "FAILED" }
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What several real-node tests share
// ---------------------------------------------------------------------------------------------

/// The flags every command shares, as a test passes them (strict host keys, 16 hosts at once).
pub fn common(inventory: &Path) -> aion_reconcile::commands::plan::Common {
    aion_reconcile::commands::plan::Common {
        inventory: inventory.to_owned(),
        parallel: 16,
        accept_new_host_keys: false,
        connect_timeout: 5,
        ssh_persist: 60,
        output: aion_reconcile::output::OutputFormat::Text,
    }
}

/// `apply` (with `--wait` when `wait`), as the tests run it.
pub fn apply_args(inventory: &Path, wait: bool) -> aion_reconcile::commands::apply::Args {
    aion_reconcile::commands::apply::Args {
        common: common(inventory),
        lock_stale_after: 7200,
        wait,
        atomic: false,
        timeout: 600,
        max_upload_rate: None,
    }
}

/// Fails when a file under `dir` holds one of `secrets`, plainly or base64-encoded (rendered
/// output, the inventory's state, apply logs).
///
/// # Panics
/// When one does, or when `dir` holds no file at all (nothing was checked).
pub fn assert_files_do_not_hold(dir: &Path, secrets: &[&str]) {
    let mut checked = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let text = String::from_utf8_lossy(&bytes);
                for secret in secrets {
                    crate::k8s::assert_hidden(&text, secret, &p.display().to_string());
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no file under {}", dir.display());
}

/// The newest kanban a sink stored in `dir` on `host` (`<seq>.json`, see `examples/src/bin/sink.rs`)
/// that came with a file, if there is one yet.
pub fn newest_stored_kanban(
    tb: &Testbed,
    host: &TestbedHost,
    dir: &str,
) -> Option<serde_json::Value> {
    let out = tb.run_as_root(
        host,
        &format!(
            "cd {dir} 2>/dev/null && f=$(ls -t *.json 2>/dev/null | head -n 1) && [ -n \"$f\" ] && cat \"$f\" || true"
        ),
    );
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .filter(|v| {
            v["metadata"]["storedFiles"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        })
}

/// Waits (up to 180 s) until no host of `tb` runs a container of a pod but the nodes' own
/// (kube-system, Flannel): what `down` must leave.
///
/// # Panics
/// When some are still there at the deadline; the message names them.
pub fn wait_for_no_pod_containers(tb: &Testbed) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    for h in &tb.hosts {
        loop {
            let out = tb.run_as_root(
                h,
                "crictl --runtime-endpoint unix:///run/containerd/containerd.sock ps -o json",
            );
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let foreign: Vec<String> = v["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    let ns = c["labels"]["io.kubernetes.pod.namespace"]
                        .as_str()
                        .unwrap_or("");
                    (ns != "kube-system" && ns != "kube-flannel").then(|| {
                        format!(
                            "{ns}/{}",
                            c["labels"]["io.kubernetes.pod.name"].as_str().unwrap_or("")
                        )
                    })
                })
                .collect();
            if foreign.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: containers left after down: {foreign:?}",
                h.name
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A second instance: another installation's devices beside the development testbed
// ---------------------------------------------------------------------------------------------

/// A second testbed instance (`AION_TESTBED_NAME=testbed-<tag>`, its own hosts from
/// `10.213.0.<first_octet>` on the same bridge, its own inventory `inventories/testbed-<tag>/`,
/// sharing the one control plane), brought up fresh by [`Instance::up`] and removed with
/// `scripts/testbed down` when dropped, also when the test fails.
pub struct Instance {
    name: String,
    first_octet: u8,
    pub testbed: Testbed,
}

impl Instance {
    /// `scripts/testbed up --workers <workers>` for instance `testbed-<tag>` (fresh hosts: one
    /// left by an earlier, failed run is removed first).
    ///
    /// # Panics
    /// When `up` fails (its output is in the message) or its inventory does not load.
    pub fn up(tag: &str, first_octet: u8, workers: u32) -> Instance {
        let name = format!("testbed-{tag}");
        let _ = instance_script(&name, first_octet, &["down"]);
        let out = instance_script(
            &name,
            first_octet,
            &["up", "--workers", &workers.to_string()],
        )
        .unwrap_or_else(|e| panic!("cannot run scripts/testbed: {e}"));
        assert!(
            out.status.success(),
            "scripts/testbed up for {name} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let inventory = repo_root()
            .join("inventories")
            .join(&name)
            .join("inventory.yml");
        let testbed =
            Testbed::load(&inventory).unwrap_or_else(|e| panic!("{}: {e}", inventory.display()));
        Instance {
            name,
            first_octet,
            testbed,
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        match instance_script(&self.name, self.first_octet, &["down"]) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "scripts/testbed down for {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cannot run scripts/testbed down for {}: {e}", self.name),
        }
    }
}

/// `scripts/testbed <args>` for the instance `name`.
fn instance_script(name: &str, first_octet: u8, args: &[&str]) -> io::Result<Output> {
    Command::new("bash")
        .arg(repo_root().join("scripts/testbed"))
        .args(args)
        .env("AION_TESTBED_NAME", name)
        .env("AION_TESTBED_FIRST_HOST", first_octet.to_string())
        .stdin(Stdio::null())
        .output()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(user: &str) -> TestbedHost {
        TestbedHost {
            name: "h".into(),
            address: "10.213.0.12".into(),
            role: Role::Worker,
            user: user.into(),
            port: 22,
        }
    }

    #[test]
    fn shell_quote_survives_single_quotes() {
        assert_eq!(shell_quote("echo 'a b'"), r"'echo '\''a b'\'''");
    }

    #[test]
    fn as_root_uses_sudo_only_for_non_root_logins() {
        assert_eq!(as_root(&host("root"), "id -u"), "id -u");
        assert_eq!(as_root(&host("aion"), "id -u"), "sudo -n sh -c 'id -u'");
    }

    #[test]
    fn ssh_command_checks_host_keys_strictly() {
        let tb = Testbed {
            inventory: "/i/inventory.yml".into(),
            known_hosts: "/i/known_hosts".into(),
            key: "/i/id_ed25519".into(),
            hosts: vec![host("aion")],
        };
        let c = tb.ssh_command(&tb.hosts[0]);
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains("UserKnownHostsFile=/i/known_hosts"),
            "{joined}"
        );
        assert!(joined.contains("StrictHostKeyChecking=yes"), "{joined}");
        assert!(joined.ends_with("-l aion 10.213.0.12 --"), "{joined}");
        assert_eq!(tb.dir(), Path::new("/i"));
    }
}
