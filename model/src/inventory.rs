//! The inventory: which devices make up one AION installation and how to reach them.
//!
//! Native format (`schemas/inventory.schema.json`, documented in the README):
//!
//! ```yaml
//! # yaml-language-server: $schema=../../schemas/inventory.schema.json
//! name: lab                 # names the installation; used in ownership labels
//! mode: cluster             # single | cluster
//! knownHosts: known_hosts   # relative to the inventory file
//! services: services.yml    # default services.yml for every device
//! vars:                     # defaults for every host (each host may override)
//!   kubernetesVersion: "1.37.2"
//!   podCidr: 10.244.10.0/16
//! ssh: {user: aion, port: 22, key: id_ed25519}
//! hosts:
//!   - name: edge-master
//!     address: 10.77.0.2
//!     role: master
//!   - name: edge-worker-1
//!     address: 10.77.0.3
//!     role: worker
//!     vars: {gpu: true}
//!     services: worker1-services.yml
//! ```
//!
//! An Ansible-style YAML inventory (`all:`/`children:`/`hosts:`/`vars:`) is also accepted and
//! converted into the same [`Inventory`].

use std::path::PathBuf;

use crate::span::Span;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One master runs everything (namespace `default`, or `prj`).
    Single,
    /// A master plus workers; microservices pinned to workers, a namespace per worker.
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Master,
    Worker,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// The inventory file itself.
    pub source: PathBuf,
    /// Installation name (ownership label value). Defaults to the file stem.
    pub name: String,
    pub mode: Mode,
    /// known_hosts file used with strict host-key checking (absolute after loading).
    pub known_hosts: Option<PathBuf>,
    /// Where `apply` writes / `diff` reads the admin kubeconfig fetched from the master
    /// (absolute after loading). Default: `<inventory dir>/.aion/kubeconfig`.
    pub kubeconfig: PathBuf,
    pub hosts: Vec<Host>,
    pub span: Span,
}

impl Inventory {
    pub fn masters(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.role == Role::Master)
    }
    pub fn workers(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.role == Role::Worker)
    }
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// Device name = hostname set on the device = Kubernetes node name.
    pub name: String,
    /// IP address or DNS name to reach it over SSH.
    pub address: String,
    pub role: Role,
    pub ssh: SshSettings,
    pub vars: HostVars,
    /// The `services.yml` this device runs (absolute after loading), if any.
    pub services: Option<PathBuf>,
    /// The `data-sweeper.yml` this device runs (absolute after loading), if any.
    pub data_sweeper: Option<PathBuf>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSettings {
    pub user: String,
    pub port: u16,
    /// Private key (absolute after loading); None → ssh's own defaults/agent.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVars {
    /// GPU present → nvidia default runtime in daemon.json.
    pub gpu: bool,
    /// Kubernetes version pin for kubelet/kubeadm/kubectl, e.g. `1.37.2`.
    pub kubernetes_version: String,
    /// Pod network CIDR given to `kubeadm init`; default `10.244.10.0/16`.
    pub pod_cidr: String,
    /// Extra API server certificate SANs.
    pub extra_sans: Vec<String>,
    /// Image prefix for microservices (`<prefix>/<name>:<tag>`); default `latonaio`.
    pub registry_prefix: String,
    /// AION namespace on this host. Single mode: `default` (or `prj`); cluster mode: workers
    /// default to their own name, the master to `default`.
    pub namespace: String,
}

pub const DEFAULT_POD_CIDR: &str = "10.244.10.0/16";
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.37.2";
pub const DEFAULT_REGISTRY_PREFIX: &str = "latonaio";
