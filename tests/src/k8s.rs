//! The real Kubernetes control plane for integration tests (etcd, kube-apiserver and
//! kube-controller-manager started by `scripts/k8s-testenv.sh`).
//!
//! Tests call [`require`]. It reads `AION_TEST_KUBECONFIG` (printed by
//! `scripts/k8s-testenv.sh env`). When the variable is unset the test is skipped with a loud
//! `SKIPPED:` line, except under CI (`AION_REQUIRE_K8S=1`), where it fails.
//!
//! If a test panics while it holds a [`TestCluster`], the paths of the control plane's log files
//! are printed so the failure can be matched with what the apiserver saw.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rand::Rng;

/// Kubeconfig of the admin user of the test control plane.
pub const KUBECONFIG_ENV: &str = "AION_TEST_KUBECONFIG";
/// When `1`, a missing control plane fails the test instead of skipping it.
pub const REQUIRE_ENV: &str = "AION_REQUIRE_K8S";
/// State directory of `scripts/k8s-testenv.sh` (logs live in `<state>/logs`).
pub const STATE_ENV: &str = "AION_K8S_STATE";
/// Label put on every namespace made by [`TestCluster::fresh_namespace`].
pub const TEST_NAMESPACE_LABEL: &str = "aion.test/ephemeral";

const SERVICES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// A running control plane, found through `AION_TEST_KUBECONFIG`.
#[derive(Debug)]
pub struct TestCluster {
    kubeconfig: PathBuf,
    state_dir: PathBuf,
}

/// Returns the test control plane, or `None` (after printing `SKIPPED: ...`) when none is
/// configured.
///
/// # Panics
/// When `AION_TEST_KUBECONFIG` is unset or names a missing file and `AION_REQUIRE_K8S=1`,
/// or when it is set but the file does not exist.
pub fn require() -> Option<TestCluster> {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
    let Some(kubeconfig) = std::env::var_os(KUBECONFIG_ENV).filter(|v| !v.is_empty()) else {
        if required {
            panic!(
                "{REQUIRE_ENV}=1 but {KUBECONFIG_ENV} is not set: start the control plane with \
                 `scripts/k8s-testenv.sh start && eval \"$(scripts/k8s-testenv.sh env)\"`"
            );
        }
        eprintln!(
            "SKIPPED: {KUBECONFIG_ENV} is not set, so this test needs a real kube-apiserver and \
             did not run (run `scripts/k8s-testenv.sh start && eval \"$(scripts/k8s-testenv.sh env)\"`; \
             set {REQUIRE_ENV}=1 to make this a failure)"
        );
        return None;
    };
    let kubeconfig = PathBuf::from(kubeconfig);
    assert!(
        kubeconfig.is_file(),
        "{KUBECONFIG_ENV}={} does not exist: is the control plane started? \
         (`scripts/k8s-testenv.sh status`)",
        kubeconfig.display()
    );
    // The script keeps the kubeconfig in its state directory; AION_K8S_STATE overrides.
    let state_dir = std::env::var_os(STATE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| kubeconfig.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    Some(TestCluster {
        kubeconfig,
        state_dir,
    })
}

impl TestCluster {
    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `kubectl` of the control-plane build (`AION_KUBECTL`) against this cluster: its stdout,
    /// or the failure with both outputs.
    ///
    /// # Panics
    /// When `AION_KUBECTL` is unset (`scripts/k8s-testenv.sh env` sets it).
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let bin = std::env::var("AION_KUBECTL").expect("AION_KUBECTL (scripts/k8s-testenv.sh env)");
        let out = std::process::Command::new(bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Every record of `aion-kanban log --json` in a namespace's runtime pod (what an operator
    /// reads there), newest 10,000.
    ///
    /// # Panics
    /// When the command fails or prints a line that is not JSON.
    pub fn kanban_log(&self, ns: &str) -> Vec<serde_json::Value> {
        let out = self
            .kubectl(&[
                "-n",
                ns,
                "exec",
                "deploy/aion-kanban",
                "--",
                "/usr/local/bin/aion-kanban",
                "log",
                "--json",
                "-n",
                "10000",
            ])
            .unwrap_or_else(|e| panic!("aion-kanban log in {ns}: {e}"));
        out.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("aion-kanban log in {ns}: {e}: {l}"))
            })
            .collect()
    }

    /// Log files of etcd, kube-apiserver and kube-controller-manager.
    pub fn log_files(&self) -> Vec<PathBuf> {
        SERVICES
            .iter()
            .map(|s| self.state_dir.join("logs").join(format!("{s}.log")))
            .collect()
    }

    /// A client for the admin user (system:masters).
    ///
    /// # Panics
    /// When the kubeconfig cannot be read or turned into a client; the message names the file.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).unwrap_or_else(|e| {
            panic!("cannot read kubeconfig {}: {e}", self.kubeconfig.display())
        });
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("invalid kubeconfig {}: {e}", self.kubeconfig.display()));
        Client::try_from(config).unwrap_or_else(|e| {
            panic!(
                "cannot build a client from {}: {e}",
                self.kubeconfig.display()
            )
        })
    }

    /// Creates a namespace `t-<random>` labelled [`TEST_NAMESPACE_LABEL`] and returns its name.
    ///
    /// # Panics
    /// When the apiserver refuses to create it.
    pub async fn fresh_namespace(&self) -> String {
        let name = format!("t-{}", random_suffix(10));
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name, "labels": { TEST_NAMESPACE_LABEL: "true" } },
        }))
        .expect("static Namespace is valid");
        let api: Api<Namespace> = Api::all(self.client().await);
        if let Err(e) = api.create(&PostParams::default(), &ns).await {
            panic!("creating namespace {name} failed: {e}");
        }
        name
    }

    /// Deletes a namespace made by [`fresh_namespace`](Self::fresh_namespace); the
    /// controller-manager finalizes it in the background.
    ///
    /// # Panics
    /// When the delete request fails for another reason than "not found".
    pub async fn delete_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client().await);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => panic!("deleting namespace {name} failed: {e}"),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "control plane logs (kubeconfig {}):",
                self.kubeconfig.display()
            );
            for log in self.log_files() {
                eprintln!("  {}", log.display());
            }
        }
    }
}

/// Fails when `text` holds `secret`, plainly or base64-encoded (a password in a plan, a diff, a
/// log).
///
/// # Panics
/// When it does.
pub fn assert_hidden(text: &str, secret: &str, what: &str) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    assert!(
        !text.contains(secret) && !text.contains(&b64),
        "{what} shows a password:\n{text}"
    );
}

/// The value of `key` in Secret `ns/name`, as text; `None` when the Secret or the key is missing.
///
/// # Panics
/// When the apiserver cannot be asked or the value is not UTF-8.
pub async fn secret_key(client: &Client, ns: &str, name: &str, key: &str) -> Option<String> {
    let s = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()?;
    let data = s.data.unwrap_or_default();
    Some(String::from_utf8(data.get(key)?.0.clone()).unwrap())
}

/// A plan's changes as `plan` prints them, one `<symbol> <key>` each, unchanged objects left out.
pub fn changed(plan: &aion_reconcile::cluster::ClusterPlan) -> Vec<String> {
    plan.changes
        .iter()
        .filter(|c| c.action != aion_reconcile::cluster::ObjectAction::Unchanged)
        .map(|c| format!("{} {}", c.action.symbol(), c.key))
        .collect()
}

/// An inventory from `text` (as the file `/tmp/aion-test/inventory.yml`); panics on any error
/// diagnostic, listing them.
pub fn inventory(text: &str) -> aion_model::Inventory {
    let loaded =
        aion_model::inventory::load_str(text, Path::new("/tmp/aion-test/inventory.yml")).unwrap();
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    loaded.value
}

/// A cluster-mode [`inventory`] named `name`: `edge-master` (namespace `master_ns`) and
/// `edge-worker` (`worker_ns`) on loopback addresses; `top` adds top-level lines.
pub fn cluster_inventory(
    name: &str,
    master_ns: &str,
    worker_ns: &str,
    top: &str,
) -> aion_model::Inventory {
    inventory(&format!(
        "name: {name}\nmode: cluster\n{top}hosts:\n  - name: edge-master\n    address: 127.0.0.1\n    role: master\n    vars: {{namespace: {master_ns}}}\n  - name: edge-worker\n    address: 127.0.0.2\n    role: worker\n    vars: {{namespace: {worker_ns}}}\n"
    ))
}

fn random_suffix(len: usize) -> String {
    const CHARSET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(CHARSET[rng.random_range(0..CHARSET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_suffix_is_a_dns_label() {
        let s = random_suffix(10);
        assert_eq!(s.len(), 10);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn log_files_live_in_the_state_dir() {
        let c = TestCluster {
            kubeconfig: PathBuf::from("/s/admin.kubeconfig"),
            state_dir: PathBuf::from("/s"),
        };
        assert_eq!(
            c.log_files(),
            vec![
                PathBuf::from("/s/logs/etcd.log"),
                PathBuf::from("/s/logs/kube-apiserver.log"),
                PathBuf::from("/s/logs/kube-controller-manager.log"),
            ]
        );
    }
}
