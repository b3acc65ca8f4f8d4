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
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("inventories/testbed/inventory.yml")
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
    /// other tests provision. Background processes `body` starts must be stopped by `body`.
    pub fn scratch(&self, host: &TestbedHost, body: &str) -> Output {
        let script = format!(
            r#"set -e
T=$1
for d in /etc /usr /var/lib /var/log /root /home; do k=$(echo "$d" | tr / _); mkdir -p "$T/u$k" "$T/w$k"
  mount -t overlay scratch -o "lowerdir=$d,upperdir=$T/u$k,workdir=$T/w$k" "$d"; done
mount -t tmpfs scratch /run
mount -t tmpfs scratch /tmp
mkdir -p /run/lock
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
