//! A change: one thing `apply` does on a host, as data. `plan` prints it (`+` create / `~`
//! change, a summary, an optional unified diff) and `apply` executes its [`Action`], from the
//! same value, so the preview cannot drift from the action.
//!
//! The roles' resources produce changes ([`crate::roles::resource`]), the plan collects them per
//! host ([`crate::plan`]) and the executor runs them ([`crate::execute`]); this module is the
//! leaf they share. It also holds [`ClusterStep`], the step through the Kubernetes API that an
//! action can carry (parsed from the `cluster:` list of a role file).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Create,
    Change,
}

/// What `apply` does for one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a script on the host (as root). `secret_output`: never log what it prints.
    Script { script: String, secret_output: bool },
    /// Copy a host file to the operator's machine (mode 0600).
    Fetch { src: String, dest: PathBuf },
    /// `kubeadm join` with a join command created on the master at that moment.
    Join { node_name: String },
    /// A step through the Kubernetes API (after the master's host changes).
    Cluster(ClusterStep),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `role/kind:key`.
    pub id: String,
    pub role: String,
    pub kind: ChangeKind,
    pub summary: String,
    /// Unified diff of a file's content (never for secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(skip)]
    pub action: Action,
}

/// Steps done through the Kubernetes API after the master's host steps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ClusterStep {
    /// Apply every object of a template (server-side apply).
    ApplyManifest(String),
    /// Remove the `node-role.kubernetes.io/{master,control-plane}:NoSchedule` taints (single mode).
    Untaint { node: String },
    /// Wait until the node reports Ready.
    WaitNodeReady { node: String, timeout_seconds: u64 },
    /// Read-only: the settings `kubeadm init` fixed (kube-system/kubeadm-config) against the
    /// inventory's. They cannot change after init, so a difference is a warning in the plan,
    /// never a change.
    InitSettings {
        host: String,
        pod_cidr: String,
        extra_sans: Vec<String>,
        kubernetes_version: String,
    },
}
