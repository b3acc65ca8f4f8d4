//! The cluster steps of a host plan ([`ClusterStep`]): Flannel's manifest, the master's taints,
//! a node's readiness and the settings `kubeadm init` fixed. [`KubeCluster`] does them over the
//! same layer as the AION objects: the same field manager, the same dry-run comparison
//! ([`super::plan`]), the same server-side apply ([`super::apply`]) and the same polling
//! ([`super::wait::Poll`]); only the kinds differ (Flannel's are found by discovery, not in
//! [`super::MANAGED_KINDS`], and are never pruned).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope, pinned_kind};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::apply::apply_with;
use super::error::{ClusterError, api_err};
use super::plan::{ObjectAction, dry_run_compare};
use super::wait::Poll;
use crate::change::ClusterStep;
use crate::manifest::ObjectKey;
use crate::output::chain;
use crate::plan::ClusterCheck;

/// Steps done through the Kubernetes API ([`KubeCluster`]; a fake in the executor's tests).
pub trait ClusterOps: Send + Sync {
    /// Read-only: is the step already satisfied?
    fn check(&self, step: &ClusterStep) -> impl Future<Output = ClusterCheck> + Send;
    /// Do it; returns a line for the log.
    fn run(&self, step: &ClusterStep) -> impl Future<Output = Result<String, ClusterError>> + Send;
}

/// The taints that keep workloads off a control-plane node.
const TAINTS: [&str; 2] = [
    "node-role.kubernetes.io/master",
    "node-role.kubernetes.io/control-plane",
];

/// How long `untaint` waits for the master's node to register after `kubeadm init`.
const NODE_REGISTRATION: Duration = Duration::from_secs(60);

/// The cluster steps over kube-rs, with the admin kubeconfig the master's steps fetched (the
/// client is made on first use: before `kubeadm init` there is none).
pub struct KubeCluster {
    kubeconfig: PathBuf,
    client: OnceCell<kube::Client>,
    /// Rendered templates by name: the objects of each.
    manifests: Vec<(String, Vec<Value>)>,
}

impl KubeCluster {
    pub fn new(kubeconfig: PathBuf, manifests: Vec<(String, Vec<Value>)>) -> KubeCluster {
        KubeCluster {
            kubeconfig,
            client: OnceCell::new(),
            manifests,
        }
    }

    async fn client(&self) -> Result<kube::Client, ClusterError> {
        if !self.kubeconfig.exists() {
            return Err(ClusterError::NoKubeconfig(self.kubeconfig.clone()));
        }
        self.client
            .get_or_try_init(|| async { crate::kubeclient::client_from(&self.kubeconfig).await })
            .await
            .cloned()
            .map_err(ClusterError::from)
    }

    /// A template's objects, each with its key and the API it lives in (every distinct kind
    /// resolved once, concurrently).
    async fn objects(
        &self,
        client: &kube::Client,
        template: &str,
    ) -> Result<Vec<(ObjectKey, &Value, Api<DynamicObject>)>, ClusterError> {
        let objects = self
            .manifests
            .iter()
            .find(|(n, _)| n == template)
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| ClusterError::UnknownTemplate(template.to_owned()))?;
        let mut keyed = Vec::with_capacity(objects.len());
        for obj in objects {
            let key = ObjectKey::of(obj).ok_or_else(|| ClusterError::UnsupportedKind {
                object: format!("an object of {template} without apiVersion/kind/metadata.name"),
                kind: obj
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .into(),
            })?;
            keyed.push((key, obj));
        }
        let mut kinds: Vec<(String, String)> = keyed
            .iter()
            .map(|(k, _)| (k.api_version.clone(), k.kind.clone()))
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        let resolved =
            futures::future::try_join_all(kinds.into_iter().map(|(av, kind)| async move {
                let (group, version) = av.split_once('/').unwrap_or(("", &av));
                pinned_kind(client, &GroupVersionKind::gvk(group, version, &kind))
                    .await
                    .map(|r| ((av.clone(), kind.clone()), r))
                    .map_err(|source| ClusterError::Api {
                        object: format!("kind {kind} ({av})"),
                        source,
                    })
            }))
            .await?;
        let resolved: HashMap<_, _> = resolved.into_iter().collect();
        Ok(keyed
            .into_iter()
            .map(|(key, obj)| {
                let (ar, caps) = &resolved[&(key.api_version.clone(), key.kind.clone())];
                let api = api_in(client, &key, ar, caps);
                (key, obj, api)
            })
            .collect())
    }

    /// Objects of a template that a server-side apply would change (`+Kind/name` to create,
    /// `~Kind/name` to change): every object compared at once, as the cluster plan does.
    async fn manifest_drift(&self, template: &str) -> Result<Vec<String>, ClusterError> {
        let client = self.client().await?;
        let objects = self.objects(&client, template).await?;
        let checks = objects.iter().map(|(key, obj, api)| async move {
            let live = api
                .get_opt(&key.name)
                .await
                .map_err(|e| api_err(key, e))?
                .map(|o| serde_json::to_value(&o).unwrap_or(Value::Null));
            // forced: Flannel's objects may have been applied by hand (kubectl) before
            let (action, _, _) = dry_run_compare(api, key, obj, live, true).await?;
            Ok::<_, ClusterError>(match action {
                ObjectAction::Unchanged => None,
                ObjectAction::Create => Some(format!("+{}/{}", key.kind, key.name)),
                _ => Some(format!("~{}/{}", key.kind, key.name)),
            })
        });
        let drift = futures::future::try_join_all(checks).await?;
        Ok(drift.into_iter().flatten().collect())
    }

    /// kubeadm's `ClusterConfiguration` (kube-system/kubeadm-config), if there is one.
    async fn kubeadm_cluster_configuration(&self) -> Result<Option<String>, ClusterError> {
        let cms: Api<ConfigMap> = Api::namespaced(self.client().await?, "kube-system");
        let cm = cms
            .get_opt("kubeadm-config")
            .await
            .map_err(|source| ClusterError::Api {
                object: "ConfigMap/kube-system/kubeadm-config".into(),
                source,
            })?;
        Ok(cm
            .and_then(|c| c.data)
            .and_then(|mut d| d.remove("ClusterConfiguration")))
    }

    async fn node(&self, node: &str) -> Result<Option<Node>, ClusterError> {
        get_node(&Api::all(self.client().await?), node).await
    }
}

async fn get_node(nodes: &Api<Node>, node: &str) -> Result<Option<Node>, ClusterError> {
    nodes.get_opt(node).await.map_err(node_err(node))
}

fn node_err(node: &str) -> impl FnOnce(kube::Error) -> ClusterError {
    let object = format!("Node/{node}");
    move |source| ClusterError::Api { object, source }
}

/// Poll `node` until `done` holds for it (it exists and, e.g., is Ready); None when `poll`
/// runs out first.
async fn poll_node(
    nodes: &Api<Node>,
    node: &str,
    poll: Poll,
    done: impl Fn(&Node) -> bool,
) -> Result<Option<Node>, ClusterError> {
    loop {
        if let Some(n) = get_node(nodes, node).await?
            && done(&n)
        {
            return Ok(Some(n));
        }
        if !poll.tick().await {
            return Ok(None);
        }
    }
}

/// The API `key` lives in (its namespace when namespaced).
fn api_in(
    client: &kube::Client,
    key: &ObjectKey,
    ar: &ApiResource,
    caps: &ApiCapabilities,
) -> Api<DynamicObject> {
    match (&caps.scope, key.namespace.as_deref()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), ar),
        (Scope::Cluster, _) => Api::all_with(client.clone(), ar),
    }
}

fn has_master_taint(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| TAINTS.contains(&t.key.as_str())))
}

fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl ClusterOps for KubeCluster {
    async fn check(&self, step: &ClusterStep) -> ClusterCheck {
        let unknown = |e: ClusterError| ClusterCheck::Unknown(chain(&e));
        let not_registered =
            |node: &str| ClusterCheck::Unknown(format!("node {node} not registered yet"));
        match step {
            ClusterStep::ApplyManifest(name) => match self.manifest_drift(name).await {
                Ok(d) if d.is_empty() => ClusterCheck::Unchanged,
                Ok(d) => ClusterCheck::Needed(d.join(" ")),
                Err(e) => unknown(e),
            },
            ClusterStep::Untaint { node } => match self.node(node).await {
                Ok(Some(n)) if !has_master_taint(&n) => ClusterCheck::Unchanged,
                Ok(Some(_)) => ClusterCheck::Needed("taints present".into()),
                Ok(None) => not_registered(node),
                Err(e) => unknown(e),
            },
            ClusterStep::WaitNodeReady { node, .. } => match self.node(node).await {
                Ok(Some(n)) if is_ready(&n) => ClusterCheck::Unchanged,
                Ok(Some(_)) => ClusterCheck::Needed("not Ready".into()),
                Ok(None) => not_registered(node),
                Err(e) => unknown(e),
            },
            ClusterStep::InitSettings {
                host,
                pod_cidr,
                extra_sans,
                kubernetes_version,
            } => match self.kubeadm_cluster_configuration().await {
                Ok(Some(cc)) => {
                    match init_settings_warnings(
                        host,
                        pod_cidr,
                        extra_sans,
                        kubernetes_version,
                        &cc,
                    ) {
                        Ok(w) if w.is_empty() => ClusterCheck::Unchanged,
                        Ok(w) => ClusterCheck::Warnings(w),
                        Err(e) => ClusterCheck::Warnings(vec![format!(
                            "{host}: cannot compare the init settings: kube-system/kubeadm-config ClusterConfiguration: {e}"
                        )]),
                    }
                }
                Ok(None) => ClusterCheck::Unknown("no kubeadm-config yet".into()),
                Err(e) => unknown(e),
            },
        }
    }

    async fn run(&self, step: &ClusterStep) -> Result<String, ClusterError> {
        let client = self.client().await?;
        match step {
            // read-only (the planner never makes a change of it)
            ClusterStep::InitSettings { .. } => Ok("nothing to do (read-only)".into()),
            ClusterStep::ApplyManifest(name) => {
                // in the template's order (Flannel's namespace and RBAC before its DaemonSet)
                let mut done = Vec::new();
                for (key, obj, api) in self.objects(&client, name).await? {
                    apply_with(&api, &key, obj, true).await?;
                    done.push(format!("{}/{}", key.kind, key.name));
                }
                Ok(format!("applied {}", done.join(", ")))
            }
            ClusterStep::Untaint { node } => {
                let nodes: Api<Node> = Api::all(client);
                let poll = Poll::new(NODE_REGISTRATION, Duration::from_secs(1));
                let Some(n) = poll_node(&nodes, node, poll, |_| true).await? else {
                    return Err(ClusterError::NodeNotRegistered {
                        node: node.clone(),
                        secs: NODE_REGISTRATION.as_secs(),
                    });
                };
                let keep: Vec<_> = n
                    .spec
                    .and_then(|s| s.taints)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| !TAINTS.contains(&t.key.as_str()))
                    .collect();
                let patch = serde_json::json!({"spec": {"taints": keep}});
                nodes
                    .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(node_err(node))?;
                Ok(format!("removed master/control-plane taints from {node}"))
            }
            ClusterStep::WaitNodeReady {
                node,
                timeout_seconds,
            } => {
                let nodes: Api<Node> = Api::all(client);
                let poll = Poll::new(
                    Duration::from_secs(*timeout_seconds),
                    Duration::from_secs(2),
                );
                match poll_node(&nodes, node, poll, is_ready).await? {
                    Some(_) => Ok(format!("node {node} is Ready")),
                    None => Err(ClusterError::NodeNotReady {
                        node: node.clone(),
                        secs: *timeout_seconds,
                    }),
                }
            }
        }
    }
}

/// The settings `kubeadm init` fixed, from kubeadm's `ClusterConfiguration` (the
/// `kube-system/kubeadm-config` ConfigMap), against the inventory's: one warning per setting
/// that differs, naming the host and the inventory variable. Pure.
pub fn init_settings_warnings(
    host: &str,
    pod_cidr: &str,
    extra_sans: &[String],
    kubernetes_version: &str,
    cluster_configuration: &str,
) -> Result<Vec<String>, serde_saphyr::Error> {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct ClusterConfiguration {
        networking: Networking,
        api_server: ApiServer,
        kubernetes_version: String,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct Networking {
        pod_subnet: String,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct ApiServer {
        #[serde(rename = "certSANs")]
        cert_sans: Vec<String>,
    }
    let cc: ClusterConfiguration = serde_saphyr::from_str(cluster_configuration)?;
    let fixed = |var: &str, was: &str, now: &str| {
        format!(
            "{host}: {var} cannot change after `kubeadm init`: the cluster was initialised with {was}, the inventory now says {now}; nothing will change it (to apply it: `kubeadm reset` on {host}, then apply again)"
        )
    };
    let mut w = Vec::new();
    if !cc.networking.pod_subnet.is_empty() && cc.networking.pod_subnet != pod_cidr {
        w.push(format!(
            "{}; until then set it back: Flannel's network follows podCidr and would move away from the cluster's pod range",
            fixed("podCidr", &cc.networking.pod_subnet, pod_cidr)
        ));
    }
    let mut was: Vec<&str> = cc.api_server.cert_sans.iter().map(String::as_str).collect();
    let mut now: Vec<&str> = extra_sans.iter().map(String::as_str).collect();
    was.sort_unstable();
    now.sort_unstable();
    if was != now {
        let list = |v: &[&str]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        w.push(fixed("extraSans", &list(&was), &list(&now)));
    }
    let bare = |v: &str| v.trim_start_matches('v').to_string();
    if !cc.kubernetes_version.is_empty() && bare(&cc.kubernetes_version) != bare(kubernetes_version)
    {
        w.push(format!(
            "{host}: kubernetesVersion: the control plane runs {} and the inventory now says {kubernetes_version}; apply pins the packages only — upgrading the control plane is `kubeadm upgrade`, not done by apply",
            cc.kubernetes_version
        ));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CC: &str = "apiServer:\n  certSANs: [edge.example.org]\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.37.2\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 10.244.10.0/16\n  serviceSubnet: 10.96.0.0/12\n";

    #[test]
    fn init_settings_equal_give_no_warning() {
        let w = init_settings_warnings(
            "m",
            "10.244.10.0/16",
            &["edge.example.org".into()],
            "1.37.2",
            CC,
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn changed_pod_cidr_after_init_is_a_warning_naming_host_and_var_never_a_change() {
        let w = init_settings_warnings(
            "edge-master",
            "10.245.0.0/16",
            &["edge.example.org".into()],
            "1.37.2",
            CC,
        )
        .unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("edge-master: podCidr cannot change after `kubeadm init`")
                && w[0].contains("10.244.10.0/16")
                && w[0].contains("10.245.0.0/16"),
            "{}",
            w[0]
        );
        // extra SANs and the version too (order of SANs does not matter)
        let w = init_settings_warnings(
            "edge-master",
            "10.244.10.0/16",
            &["other.example.org".into()],
            "1.38.0",
            CC,
        )
        .unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("extraSans") && w[0].contains("other.example.org"));
        assert!(w[1].contains("kubernetesVersion") && w[1].contains("kubeadm upgrade"));
        assert!(init_settings_warnings("m", "x", &[], "1", "{not: [yaml").is_err());
    }
}
