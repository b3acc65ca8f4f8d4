//! Manifests as data: what `render` produces and the cluster side ([`crate::cluster`]) plans,
//! applies, prunes and reports on. The object identity ([`ObjectKey`]), the rendered objects per
//! node ([`Manifests`], written as one file per node by `render --out-dir`), the ownership
//! labels prune and `down` select on, the apply order of kinds ([`kind_rank`]) and the field
//! manager of every server-side apply. A leaf module: `render` fills these types, `cluster`
//! reads them, and neither needs the other.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// `app.kubernetes.io/managed-by` value on every object we render.
pub const MANAGED_BY: &str = "aion-reconcile";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Ownership label: the inventory (installation) name. Prune and `down` select on it.
pub const LABEL_INVENTORY: &str = "aion.latona.io/inventory";
/// The node (device) whose manifests contain the object.
pub const LABEL_NODE: &str = "aion.latona.io/node";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";

/// Field manager for every apply and dry-run.
pub const FIELD_MANAGER: &str = "aion-reconcile";

/// Identity of a Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    pub api_version: String,
    pub kind: String,
    /// None for cluster-scoped objects (Namespace).
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

impl ObjectKey {
    /// Key of a JSON object (`apiVersion`, `kind`, `metadata.{namespace,name}`).
    pub fn of(value: &serde_json::Value) -> Option<ObjectKey> {
        let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        Some(ObjectKey {
            api_version: s(value.get("apiVersion")?)?,
            kind: s(value.get("kind")?)?,
            namespace: value
                .pointer("/metadata/namespace")
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            name: s(value.pointer("/metadata/name")?)?,
        })
    }
}

/// One rendered object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub key: ObjectKey,
    /// Node whose manifest file holds it.
    pub node: String,
    /// What it belongs to: a microservice name, or `core/<part>`.
    pub owner: String,
    /// The object as sent to the API server.
    pub value: serde_json::Value,
    /// The rendered YAML document (without `---`).
    pub text: String,
}

/// All objects of one node, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeManifests {
    pub node: String,
    pub namespace: String,
    pub objects: Vec<Object>,
}

/// Everything `render` produced for an inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifests {
    /// Inventory name (value of the ownership label).
    pub inventory: String,
    pub nodes: Vec<NodeManifests>,
}

impl Manifests {
    /// Every object, node by node, each node in apply order.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.nodes.iter().flat_map(|n| n.objects.iter())
    }

    /// The file content for one node: a header comment and the documents in apply order.
    pub fn node_file(&self, node: &NodeManifests) -> String {
        let mut out = format!(
            "# Rendered by aion-reconcile for inventory {:?}, node {:?}, namespace {:?}.\n\
             # Generated file: edit services.yml or the inventory instead.\n",
            self.inventory, node.node, node.namespace
        );
        for o in &node.objects {
            out.push_str("---\n");
            out.push_str(&o.text);
            if !o.text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// `(file name, content)` per node: `<node>.yaml`.
    pub fn files(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .map(|n| (format!("{}.yaml", n.node), self.node_file(n)))
            .collect()
    }

    /// Write one file per node into `dir` (created if missing), each atomically (temp + rename).
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        for (name, content) in self.files() {
            let path = dir.join(&name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, content.as_bytes())?;
            std::fs::rename(&tmp, &path)?;
            written.push(path);
        }
        Ok(written)
    }
}

/// Apply-order rank of a kind: namespaces, RBAC, config, workloads, services.
pub fn kind_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "ServiceAccount" | "RuntimeClass" => 1,
        "ClusterRole" | "Role" => 2,
        "ClusterRoleBinding" | "RoleBinding" => 3,
        "ConfigMap" | "Secret" | "PersistentVolume" | "PersistentVolumeClaim" => 4,
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => 5,
        "Service" => 6,
        _ => 7,
    }
}
