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
//!
//! Here: the types and [`load`]; the two loaders in `native` and `ansible`, what they share
//! (defaults, field readers, where each setting was written, `finish`) in `fields`; the
//! inventory-wide rules in [`crate::validate`], beside the services rules.

use std::path::PathBuf;

use crate::span::Span;

mod ansible;
pub(crate) mod fields;
mod native;

use ansible::from_ansible;
pub(crate) use fields::{Located, Origins};
use native::from_native;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One master runs everything (namespace `default`, or `prj`).
    Single,
    /// A master plus workers; microservices pinned to workers, a namespace per worker.
    Cluster,
}

impl std::fmt::Display for Mode {
    /// As in the inventory: `single`, `cluster`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Single => "single",
            Mode::Cluster => "cluster",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Worker,
}

impl std::fmt::Display for Role {
    /// As in the inventory: `master`, `worker`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Worker => "worker",
        })
    }
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
    /// Cluster revisions kept (`history`, `rollback`): the newest this many; older ones are
    /// pruned when a new one is recorded. Default [`DEFAULT_REVISION_HISTORY`].
    pub revision_history: u32,
    /// Where the images the hosts run come from on the operator's machine, in order (the first
    /// source that has a reference wins): OCI image-layout directories, OCI archives (tar) and
    /// `images.tsv` lists (`imageSources`, Ansible `aion_image_sources`).
    pub image_sources: Vec<ImageSource>,
    /// After a version up, how many previous versions of each image repository a host keeps in
    /// its containerd for rollback (`previousImages`, Ansible `aion_previous_images`); older
    /// ones no pod uses are removed. Default [`DEFAULT_PREVIOUS_IMAGES`].
    pub previous_images: u32,
    /// Devices of other installations allowed to send kanbans to this one (`peers`, Ansible
    /// `aion_peers`): each gets its own broker user, which may only deliver to the inbound
    /// queue of the devices it is allowed to reach.
    pub peers: Vec<Peer>,
    /// The NodePort other installations reach this installation's broker on (`entryPort`,
    /// Ansible `aion_entry_port`). Rendered only when there are peers. Default
    /// [`DEFAULT_ENTRY_PORT`], upstream's AMQP NodePort.
    pub entry_port: u16,
    /// TLS on that entry (`entryTls`, Ansible `aion_entry_tls`): the broker's certificate and
    /// key and the CA that signed it, files on the operator's machine (absolute after loading).
    /// When set, the entry speaks TLS only.
    pub entry_tls: Option<EntryTls>,
    pub hosts: Vec<Host>,
    pub span: Span,
}

/// One entry of `peers`: a device of another installation and where it may send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The sending device's name (its services.yml `deviceName`).
    pub device: String,
    /// Hosts of this installation it may send to; empty: all of them.
    pub to: Vec<String>,
    /// Where each `to` entry was written (position, pointer).
    pub to_at: Vec<(Span, String)>,
    pub span: Span,
    /// JSON pointer of the entry, e.g. `/peers/0`.
    pub pointer: String,
}

impl Peer {
    /// Whether this peer may send to `host`.
    pub fn may_reach(&self, host: &str) -> bool {
        self.to.is_empty() || self.to.iter().any(|h| h == host)
    }
}

/// `entryTls`: PEM files on the operator's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryTls {
    /// The CA certificate that signed `cert` (handed to peers with their URL).
    pub ca: PathBuf,
    /// The broker's certificate for the entry (its SANs name the address peers use).
    pub cert: PathBuf,
    /// Its private key (goes only into the Secret `aion-entry-tls`, never into a rendered file).
    pub key: PathBuf,
    /// Where `ca`, `cert` and `key` were written.
    pub at: [Span; 3],
    pub span: Span,
    /// JSON pointer of `entryTls`.
    pub pointer: String,
}

/// The broker's entry port for other installations when the inventory does not say:
/// upstream's RabbitMQ NodePort (32094).
pub const DEFAULT_ENTRY_PORT: u16 = 32094;

/// One entry of `imageSources`: a path (absolute after loading) and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// The file or directory (for a registry: the URL as written, unresolved).
    pub path: PathBuf,
    /// A registry the operator's machine reaches (`http://` or `https://` entry, as written
    /// without a trailing `/`): it serves the references whose domain is its `host[:port]`.
    pub registry: Option<String>,
    pub span: Span,
    /// JSON pointer of the entry, e.g. `/imageSources/0`.
    pub pointer: String,
}

/// Revisions kept when the inventory does not say (as Helm's `--history-max`).
pub const DEFAULT_REVISION_HISTORY: u32 = 10;

/// Previous versions of an image repository a host keeps when the inventory does not say: one,
/// the version a rollback goes back to.
pub const DEFAULT_PREVIOUS_IMAGES: u32 = 1;

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
    /// The host of this inventory this device fetches its missing image blobs from, over the
    /// devices' own network, instead of from the operator's machine (`imagesFrom`, Ansible
    /// `aion_images_from`; written at the top level it applies to every other host). That host
    /// receives them from the operator first, so each blob crosses the operator's link once.
    pub images_from: Option<String>,
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
    /// Where the Kubernetes images come from (kubeadm's `imageRepository`: pause, kube-proxy,
    /// CoreDNS); default `registry.k8s.io`. A device without a registry names its own.
    pub image_repository: String,
    /// The cgroup driver of the kubelet and containerd; default `systemd`.
    pub cgroup_driver: CgroupDriver,
    /// Images of the core and the pod network (defaults: upstream's).
    pub images: CoreImages,
    /// The interface Flannel uses between nodes (`--iface`); default: the one of the default
    /// route. Devices with several interfaces, or none with a default route, name it.
    pub flannel_iface: Option<String>,
}

/// The kubelet's and containerd's cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Hosts with systemd as init (kubeadm's default).
    Systemd,
    /// Hosts without systemd.
    Cgroupfs,
}

impl CgroupDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Systemd => "systemd",
            CgroupDriver::Cgroupfs => "cgroupfs",
        }
    }
}

/// Image references of the pieces aion runs besides the microservices and `aion-kanban`
/// (whose image is `<registryPrefix>/aion-kanban:<version>`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CoreImages {
    pub rabbitmq: String,
    pub redis: String,
    pub flannel: String,
    pub flannel_cni_plugin: String,
}

impl Default for CoreImages {
    fn default() -> Self {
        CoreImages {
            rabbitmq: "rabbitmq:3.13-management-alpine".into(),
            redis: "redis:7.2-alpine".into(),
            flannel: "ghcr.io/flannel-io/flannel:v0.26.4".into(),
            flannel_cni_plugin: "ghcr.io/flannel-io/flannel-cni-plugin:v1.6.2-flannel1".into(),
        }
    }
}

/// `images:` as written at one level: each key overrides the default on its own.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImageOverrides {
    pub(crate) rabbitmq: Option<String>,
    pub(crate) redis: Option<String>,
    pub(crate) flannel: Option<String>,
    pub(crate) flannel_cni_plugin: Option<String>,
}

impl ImageOverrides {
    pub(crate) fn over(&mut self, o: &ImageOverrides) {
        macro_rules! ov {
            ($($f:ident),*) => { $( if o.$f.is_some() { self.$f = o.$f.clone(); } )* };
        }
        ov!(rabbitmq, redis, flannel, flannel_cni_plugin);
    }

    pub(crate) fn resolve(self) -> CoreImages {
        let d = CoreImages::default();
        let pick = |o: Option<String>, d: String| o.filter(|s| !s.is_empty()).unwrap_or(d);
        CoreImages {
            rabbitmq: pick(self.rabbitmq, d.rabbitmq),
            redis: pick(self.redis, d.redis),
            flannel: pick(self.flannel, d.flannel),
            flannel_cni_plugin: pick(self.flannel_cni_plugin, d.flannel_cni_plugin),
        }
    }
}

pub const DEFAULT_POD_CIDR: &str = "10.244.10.0/16";
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.37.2";
pub const DEFAULT_REGISTRY_PREFIX: &str = "latonaio";
pub const DEFAULT_IMAGE_REPOSITORY: &str = "registry.k8s.io";

pub const DEFAULT_SSH_USER: &str = "aion";
pub const DEFAULT_SSH_PORT: u16 = 22;

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

use std::path::Path;

use crate::diag::{Diagnostic, LoadError, Loaded};
use crate::yaml::Node;

pub const TOP_KEYS: &[&str] = &[
    "name",
    "mode",
    "knownHosts",
    "kubeconfig",
    "revisionHistory",
    "imageSources",
    "previousImages",
    "peers",
    "entryPort",
    "entryTls",
    "services",
    "dataSweeper",
    "imagesFrom",
    "ssh",
    "vars",
    "hosts",
];
pub const HOST_KEYS: &[&str] = &[
    "name",
    "address",
    "role",
    "ssh",
    "vars",
    "services",
    "dataSweeper",
    "imagesFrom",
];
pub const SSH_KEYS: &[&str] = &["user", "port", "key"];
pub const PEER_KEYS: &[&str] = &["device", "to"];
pub const ENTRY_TLS_KEYS: &[&str] = &["ca", "cert", "key"];
pub const VAR_KEYS: &[&str] = &[
    "gpu",
    "kubernetesVersion",
    "podCidr",
    "extraSans",
    "registryPrefix",
    "namespace",
    "imageRepository",
    "cgroupDriver",
    "images",
    "flannelIface",
];
pub const IMAGE_KEYS: &[&str] = &["rabbitmq", "redis", "flannel", "flannelCniPlugin"];
/// Ansible variables read from an Ansible-style inventory (others are ignored).
pub const ANSIBLE_HOST_VARS: &[&str] = &[
    "ansible_host",
    "ansible_user",
    "ansible_port",
    "ansible_ssh_private_key_file",
    "ansible_private_key_file",
    "aion_role",
    "aion_gpu",
    "aion_kubernetes_version",
    "aion_pod_cidr",
    "aion_extra_sans",
    "aion_registry_prefix",
    "aion_namespace",
    "aion_services",
    "aion_data_sweeper",
    "aion_images_from",
    "aion_image_repository",
    "aion_cgroup_driver",
    "aion_images",
    "aion_flannel_iface",
];
/// Inventory-wide Ansible variables (in `all.vars`).
pub const ANSIBLE_GLOBAL_VARS: &[&str] = &[
    "aion_name",
    "aion_mode",
    "aion_known_hosts",
    "aion_kubeconfig",
    "aion_revision_history",
    "aion_image_sources",
    "aion_previous_images",
    "aion_peers",
    "aion_entry_port",
    "aion_entry_tls",
];
/// Ansible groups whose hosts are masters.
pub const MASTER_GROUPS: &[&str] = &["master", "masters", "kube_control_plane"];

/// Read and load an inventory (native or Ansible-style YAML).
pub fn load(path: &Path) -> Result<Loaded<Inventory>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(&text, path)
}

/// Load an inventory from text; `file` names it and anchors relative paths.
pub fn load_str(text: &str, file: &Path) -> Result<Loaded<Inventory>, LoadError> {
    let looks_ini = text.lines().any(|l| {
        let l = l.trim();
        l.starts_with('[') && l.ends_with(']') && !l.contains([',', ' ', '"', '\''])
    });
    let file_arc = std::sync::Arc::new(file.to_path_buf());
    let root = match crate::yaml::parse_str(text, file) {
        Ok(root) => root,
        Err(e) if looks_ini => {
            return Err(LoadError::Shape(Box::new(
                Diagnostic::error(
                    "inventory-shape",
                    format!(
                        "this looks like an INI inventory, which is not read ({})",
                        e.message
                    ),
                    e.span,
                    "",
                )
                .with_hint("convert it to YAML with `ansible-inventory -i FILE --list --yaml`"),
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if root.as_map().is_none() {
        let mut d = Diagnostic::error(
            "inventory-shape",
            format!("an inventory is a YAML mapping, found {}", root.describe()),
            root.span(&file_arc),
            "",
        );
        d = if looks_ini {
            d.with_hint("INI inventories are not read; convert it with `ansible-inventory -i FILE --list --yaml`")
        } else {
            d.with_hint("see docs/model.md for the inventory format")
        };
        return Err(LoadError::Shape(Box::new(d)));
    }
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let ansible = is_ansible(&root);
    let (mut loaded, located) = if ansible {
        from_ansible(&root, file, &dir)
    } else {
        from_native(&root, file, &dir)
    };
    let schema_diags = crate::schema::check(crate::schema::Kind::Inventory, &root, &file_arc);
    crate::schema::merge(&mut loaded.diagnostics, schema_diags);
    crate::validate::check_inventory_at(&loaded.value, &located, &mut loaded.diagnostics);
    crate::diag::sort(&mut loaded.diagnostics);
    Ok(loaded)
}

/// Ansible-style when no native top-level key is present (the top-level keys are then groups,
/// usually just `all`). The schema makes the same choice.
fn is_ansible(root: &Node) -> bool {
    let Some(pairs) = root.as_map() else {
        return false;
    };
    !pairs.is_empty()
        && !pairs
            .iter()
            .any(|p| p.key.text().is_some_and(|k| TOP_KEYS.contains(&k)))
}

/// `~/x` → `$HOME/x`; relative → against the inventory's directory.
pub fn resolve_path(dir: &Path, p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

/// Inventory-wide rules (codes: `host-duplicate`, `address-duplicate`, `invalid-host-name`,
/// `no-master`, `multiple-masters`, `single-with-workers`, `invalid-cidr`, `invalid-version`,
/// `invalid-san`, `invalid-namespace`, `file-missing`).
/// Without the loader's record of where settings were written, a finding about a host points
/// at the host's entry (`/hosts/<i>`).
pub fn check(inv: &Inventory, diags: &mut Vec<Diagnostic>) {
    let located = Located {
        hosts: (0..inv.hosts.len())
            .map(|i| (format!("/hosts/{i}"), Origins::default()))
            .collect(),
        global: Origins::default(),
    };
    crate::validate::check_inventory_at(inv, &located, diags);
}
