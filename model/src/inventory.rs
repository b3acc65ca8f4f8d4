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
    pub hosts: Vec<Host>,
    pub span: Span,
}

/// One entry of `imageSources`: a path (absolute after loading) and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    pub path: PathBuf,
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
struct ImageOverrides {
    rabbitmq: Option<String>,
    redis: Option<String>,
    flannel: Option<String>,
    flannel_cni_plugin: Option<String>,
}

impl ImageOverrides {
    fn over(&mut self, o: &ImageOverrides) {
        macro_rules! ov {
            ($($f:ident),*) => { $( if o.$f.is_some() { self.$f = o.$f.clone(); } )* };
        }
        ov!(rabbitmq, redis, flannel, flannel_cni_plugin);
    }

    fn resolve(self) -> CoreImages {
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
use crate::read::{Reader, suggest};
use crate::yaml::{Node, join_pointer};

pub const TOP_KEYS: &[&str] = &[
    "name",
    "mode",
    "knownHosts",
    "kubeconfig",
    "revisionHistory",
    "imageSources",
    "previousImages",
    "services",
    "dataSweeper",
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
];
pub const SSH_KEYS: &[&str] = &["user", "port", "key"];
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
    check_at(&loaded.value, &located, &mut loaded.diagnostics);
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

impl Default for HostVars {
    /// Every variable at its documented default (`namespace` empty: decided per host).
    fn default() -> Self {
        default_vars()
    }
}

fn default_vars() -> HostVars {
    HostVars {
        gpu: false,
        kubernetes_version: DEFAULT_KUBERNETES_VERSION.into(),
        pod_cidr: DEFAULT_POD_CIDR.into(),
        extra_sans: Vec::new(),
        registry_prefix: DEFAULT_REGISTRY_PREFIX.into(),
        namespace: String::new(),
        image_repository: DEFAULT_IMAGE_REPOSITORY.into(),
        cgroup_driver: CgroupDriver::Systemd,
        images: CoreImages::default(),
        flannel_iface: None,
    }
}

/// Where settings were written: setting (the native key, e.g. `podCidr`) → the JSON pointer
/// and position of its value, so that a rule about a value points at that value even when it
/// came from the inventory-wide `vars:` or an Ansible group.
#[derive(Default, Clone)]
struct Origins(Vec<(&'static str, String, Span)>);

impl Origins {
    fn set(&mut self, key: &'static str, pointer: &str, span: Span) {
        match self.0.iter_mut().find(|o| o.0 == key) {
            Some(o) => {
                o.1 = pointer.to_owned();
                o.2 = span;
            }
            None => self.0.push((key, pointer.to_owned(), span)),
        }
    }
    fn get(&self, key: &str) -> Option<(String, Span)> {
        self.0
            .iter()
            .find(|o| o.0 == key)
            .map(|o| (o.1.clone(), o.2.clone()))
    }
    fn over(&mut self, o: &Origins) {
        for (k, p, s) in &o.0 {
            self.set(k, p, s.clone());
        }
    }
}

/// Per-host settings before defaults: `None` = not set at this level.
#[derive(Default, Clone)]
struct Partial {
    /// Where each setting that is `Some` was written.
    at: Origins,
    address: Option<String>,
    role: Option<Role>,
    user: Option<String>,
    port: Option<u16>,
    key: Option<String>,
    gpu: Option<bool>,
    kubernetes_version: Option<String>,
    pod_cidr: Option<String>,
    extra_sans: Option<Vec<String>>,
    registry_prefix: Option<String>,
    namespace: Option<String>,
    services: Option<String>,
    data_sweeper: Option<String>,
    image_repository: Option<String>,
    cgroup_driver: Option<CgroupDriver>,
    images: ImageOverrides,
    flannel_iface: Option<String>,
}

impl Partial {
    fn over(&mut self, o: &Partial) {
        macro_rules! ov {
            ($($f:ident),*) => { $( if o.$f.is_some() { self.$f = o.$f.clone(); } )* };
        }
        ov!(
            address,
            role,
            user,
            port,
            key,
            gpu,
            kubernetes_version,
            pod_cidr,
            extra_sans,
            registry_prefix,
            namespace,
            services,
            data_sweeper,
            image_repository,
            cgroup_driver,
            flannel_iface
        );
        self.images.over(&o.images);
        self.at.over(&o.at);
    }
}

/// `value` read from `n` at `p` for `key`: when there is one, remember where it was written.
fn noted<T>(
    r: &Reader,
    at: &mut Origins,
    key: &'static str,
    n: &Node,
    p: &str,
    value: Option<T>,
) -> Option<T> {
    if value.is_some() {
        at.set(key, p, r.span(n));
    }
    value
}

fn read_port(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<u16> {
    let v = r.int32(n, p, field)?;
    match u16::try_from(v) {
        Ok(port) if port > 0 => Some(port),
        _ => {
            r.diags.push(
                Diagnostic::error(
                    "invalid-value",
                    format!("`{field}` must be a TCP port (1–65535), found {v}"),
                    r.span(n),
                    p,
                )
                .with_hint("the SSH port is usually 22"),
            );
            None
        }
    }
}

fn read_revision_history(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<u32> {
    let v = r.int32(n, p, field)?;
    match u32::try_from(v) {
        Ok(keep) if (1..=1000).contains(&keep) => Some(keep),
        _ => {
            r.diags.push(
                Diagnostic::error(
                    "invalid-value",
                    format!("`{field}` must be between 1 and 1000 revisions, found {v}"),
                    r.span(n),
                    p,
                )
                .with_hint("the default keeps the last 10 revisions"),
            );
            None
        }
    }
}

fn read_previous_images(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<u32> {
    let v = r.int32(n, p, field)?;
    match u32::try_from(v) {
        Ok(keep) if keep <= 100 => Some(keep),
        _ => {
            r.diags.push(
                Diagnostic::error(
                    "invalid-value",
                    format!("`{field}` must be between 0 and 100 previous versions, found {v}"),
                    r.span(n),
                    p,
                )
                .with_hint(
                    "the default keeps 1 previous version of each image for rollback; 0 keeps none",
                ),
            );
            None
        }
    }
}

fn read_role(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<Role> {
    read_choice(
        r,
        (n, p, field),
        &[("master", Role::Master), ("worker", Role::Worker)],
        "one host is the master (control plane); the others are workers",
    )
}

fn read_cgroup_driver(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<CgroupDriver> {
    read_choice(
        r,
        (n, p, field),
        &[
            ("systemd", CgroupDriver::Systemd),
            ("cgroupfs", CgroupDriver::Cgroupfs),
        ],
        "systemd where systemd is the init system (kubeadm's default), else cgroupfs",
    )
}

fn read_images(r: &mut Reader, n: &Node, p: &str, field: &str) -> ImageOverrides {
    let mut out = ImageOverrides::default();
    let Some(f) = r.fields(n, p, field, IMAGE_KEYS) else {
        return out;
    };
    if let Some((n, p)) = f.get("rabbitmq") {
        out.rabbitmq = r.string(n, &p, "rabbitmq");
    }
    if let Some((n, p)) = f.get("redis") {
        out.redis = r.string(n, &p, "redis");
    }
    if let Some((n, p)) = f.get("flannel") {
        out.flannel = r.string(n, &p, "flannel");
    }
    if let Some((n, p)) = f.get("flannelCniPlugin") {
        out.flannel_cni_plugin = r.string(n, &p, "flannelCniPlugin");
    }
    out
}

fn read_mode(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<Mode> {
    read_choice(
        r,
        (n, p, field),
        &[("single", Mode::Single), ("cluster", Mode::Cluster)],
        "single: one master runs everything; cluster: a master plus workers",
    )
}

/// A string field that must be one of two words; anything else is `invalid-value` naming both.
fn read_choice<T: Copy>(
    r: &mut Reader,
    (n, p, field): (&Node, &str, &str),
    choices: &[(&str, T); 2],
    hint: &str,
) -> Option<T> {
    let s = r.string(n, p, field)?;
    if let Some((_, v)) = choices.iter().find(|(word, _)| *word == s) {
        return Some(*v);
    }
    let [(a, _), (b, _)] = choices;
    r.diags.push(
        Diagnostic::error(
            "invalid-value",
            format!("`{field}` is `{a}` or `{b}`, found {s:?}"),
            r.span(n),
            p,
        )
        .with_hint(hint),
    );
    None
}

fn read_ssh(r: &mut Reader, n: &Node, p: &str, into: &mut Partial) {
    let Some(f) = r.fields(n, p, "ssh", SSH_KEYS) else {
        return;
    };
    if let Some((n, p)) = f.get("user") {
        into.user = r.string(n, &p, "user");
    }
    if let Some((n, p)) = f.get("port") {
        into.port = read_port(r, n, &p, "port");
    }
    if let Some((n, p)) = f.get("key") {
        let v = r.string(n, &p, "key").filter(|s| !s.is_empty());
        into.key = noted(r, &mut into.at, "key", n, &p, v);
    }
}

fn read_vars(r: &mut Reader, n: &Node, p: &str, into: &mut Partial) {
    let Some(f) = r.fields(n, p, "vars", VAR_KEYS) else {
        return;
    };
    if let Some((n, p)) = f.get("gpu") {
        into.gpu = r.bool(n, &p, "gpu");
    }
    if let Some((n, p)) = f.get("kubernetesVersion") {
        let v = r.string(n, &p, "kubernetesVersion");
        into.kubernetes_version = noted(r, &mut into.at, "kubernetesVersion", n, &p, v);
    }
    if let Some((n, p)) = f.get("podCidr") {
        let v = r.string(n, &p, "podCidr");
        into.pod_cidr = noted(r, &mut into.at, "podCidr", n, &p, v);
    }
    if let Some((n, p)) = f.get("extraSans") {
        let v = r.string_list(n, &p, "extraSans");
        into.extra_sans = noted(r, &mut into.at, "extraSans", n, &p, v);
    }
    if let Some((n, p)) = f.get("registryPrefix") {
        into.registry_prefix = r.string(n, &p, "registryPrefix");
    }
    if let Some((n, p)) = f.get("namespace") {
        let v = r.string(n, &p, "namespace");
        into.namespace = noted(r, &mut into.at, "namespace", n, &p, v);
    }
    if let Some((n, p)) = f.get("imageRepository") {
        into.image_repository = r.string(n, &p, "imageRepository");
    }
    if let Some((n, p)) = f.get("cgroupDriver") {
        into.cgroup_driver = read_cgroup_driver(r, n, &p, "cgroupDriver");
    }
    if let Some((n, p)) = f.get("images") {
        into.images = read_images(r, n, &p, "images");
    }
    if let Some((n, p)) = f.get("flannelIface") {
        into.flannel_iface = r.string(n, &p, "flannelIface");
    }
}

/// Where the loader found each host (its JSON pointer) and each setting (see [`Origins`]).
struct Located {
    hosts: Vec<(String, Origins)>,
    global: Origins,
}

struct Draft {
    pointer: String,
    name: String,
    partial: Partial,
    span: Span,
}

/// Inventory-wide settings (native top level, or Ansible `all.vars`).
#[derive(Default)]
struct Globals {
    /// Where `mode` and `knownHosts` were written.
    at: Origins,
    name: Option<String>,
    mode: Option<Mode>,
    known_hosts: Option<String>,
    kubeconfig: Option<String>,
    revision_history: Option<u32>,
    previous_images: Option<u32>,
    /// `imageSources` as written: path, position, pointer.
    image_sources: Vec<(String, Span, String)>,
}

fn finish(
    file: &Path,
    dir: &Path,
    root: &Node,
    g: Globals,
    drafts: Vec<Draft>,
    r: Reader,
) -> (Loaded<Inventory>, Located) {
    let located = Located {
        hosts: drafts
            .iter()
            .map(|d| (d.pointer.clone(), d.partial.at.clone()))
            .collect(),
        global: g.at.clone(),
    };
    let workers = drafts
        .iter()
        .filter(|d| d.partial.role != Some(Role::Master))
        .count();
    let Globals {
        at: _,
        name,
        mode,
        known_hosts,
        kubeconfig,
        revision_history,
        previous_images,
        image_sources,
    } = g;
    let mode = mode.unwrap_or(if workers == 0 {
        Mode::Single
    } else {
        Mode::Cluster
    });
    let hosts = drafts
        .into_iter()
        .map(|d| {
            let p = d.partial;
            let role = p.role.unwrap_or(Role::Worker);
            let def = default_vars();
            let namespace =
                p.namespace
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| match (mode, role) {
                        (Mode::Cluster, Role::Worker) => d.name.clone(),
                        _ => "default".into(),
                    });
            Host {
                address: p
                    .address
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| d.name.clone()),
                role,
                ssh: SshSettings {
                    user: p
                        .user
                        .filter(|u| !u.is_empty())
                        .unwrap_or_else(|| DEFAULT_SSH_USER.into()),
                    port: p.port.unwrap_or(DEFAULT_SSH_PORT),
                    key: p.key.map(|k| resolve_path(dir, &k)),
                },
                vars: HostVars {
                    gpu: p.gpu.unwrap_or(def.gpu),
                    kubernetes_version: p
                        .kubernetes_version
                        .filter(|s| !s.is_empty())
                        .unwrap_or(def.kubernetes_version),
                    pod_cidr: p.pod_cidr.filter(|s| !s.is_empty()).unwrap_or(def.pod_cidr),
                    extra_sans: p.extra_sans.unwrap_or_default(),
                    registry_prefix: p
                        .registry_prefix
                        .filter(|s| !s.is_empty())
                        .unwrap_or(def.registry_prefix),
                    namespace,
                    image_repository: p
                        .image_repository
                        .filter(|s| !s.is_empty())
                        .unwrap_or(def.image_repository),
                    cgroup_driver: p.cgroup_driver.unwrap_or(def.cgroup_driver),
                    images: p.images.resolve(),
                    flannel_iface: p.flannel_iface.filter(|s| !s.is_empty()),
                },
                services: p
                    .services
                    .filter(|s| !s.is_empty())
                    .map(|s| resolve_path(dir, &s)),
                data_sweeper: p
                    .data_sweeper
                    .filter(|s| !s.is_empty())
                    .map(|s| resolve_path(dir, &s)),
                name: d.name,
                span: d.span,
            }
        })
        .collect();
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "aion".into());
    let loaded = Loaded {
        value: Inventory {
            source: file.to_path_buf(),
            name: name.filter(|s| !s.is_empty()).unwrap_or(stem),
            mode,
            known_hosts: known_hosts
                .filter(|s| !s.is_empty())
                .map(|s| resolve_path(dir, &s)),
            kubeconfig: kubeconfig
                .filter(|s| !s.is_empty())
                .map(|s| resolve_path(dir, &s))
                .unwrap_or_else(|| dir.join(".aion").join("kubeconfig")),
            revision_history: revision_history.unwrap_or(DEFAULT_REVISION_HISTORY),
            previous_images: previous_images.unwrap_or(DEFAULT_PREVIOUS_IMAGES),
            image_sources: image_sources
                .into_iter()
                .map(|(path, span, pointer)| ImageSource {
                    path: resolve_path(dir, &path),
                    span,
                    pointer,
                })
                .collect(),
            hosts,
            span: r.span(root),
        },
        diagnostics: r.diags,
    };
    (loaded, located)
}

fn from_native(root: &Node, file: &Path, dir: &Path) -> (Loaded<Inventory>, Located) {
    let mut r = Reader::new(std::sync::Arc::new(file.to_path_buf()));
    let mut name = None;
    let mut mode = None;
    let mut known_hosts = None;
    let mut kubeconfig = None;
    let mut revision_history = None;
    let mut previous_images = None;
    let mut image_sources = Vec::new();
    let mut global_at = Origins::default();
    let mut base = Partial::default();
    let mut drafts = Vec::new();
    if let Some(f) = r.fields(root, "", "the inventory", TOP_KEYS) {
        if let Some((n, p)) = f.get("name") {
            name = r.string(n, &p, "name");
        }
        if let Some((n, p)) = f.get("mode") {
            let v = read_mode(&mut r, n, &p, "mode");
            mode = noted(&r, &mut global_at, "mode", n, &p, v);
        }
        if let Some((n, p)) = f.get("knownHosts") {
            let v = r.string(n, &p, "knownHosts");
            known_hosts = noted(&r, &mut global_at, "knownHosts", n, &p, v);
        }
        if let Some((n, p)) = f.get("kubeconfig") {
            kubeconfig = r.string(n, &p, "kubeconfig");
        }
        if let Some((n, p)) = f.get("revisionHistory") {
            revision_history = read_revision_history(&mut r, n, &p, "revisionHistory");
        }
        if let Some((n, p)) = f.get("previousImages") {
            previous_images = read_previous_images(&mut r, n, &p, "previousImages");
        }
        if let Some((n, p)) = f.get("imageSources") {
            image_sources = read_image_sources(&mut r, n, &p, "imageSources");
        }
        if let Some((n, p)) = f.get("services") {
            let v = r.string(n, &p, "services");
            base.services = noted(&r, &mut base.at, "services", n, &p, v);
        }
        if let Some((n, p)) = f.get("dataSweeper") {
            let v = r.string(n, &p, "dataSweeper");
            base.data_sweeper = noted(&r, &mut base.at, "dataSweeper", n, &p, v);
        }
        if let Some((n, p)) = f.get("ssh") {
            read_ssh(&mut r, n, &p, &mut base);
        }
        if let Some((n, p)) = f.get("vars") {
            read_vars(&mut r, n, &p, &mut base);
        }
        match f.get("hosts") {
            None => r.diags.push(
                Diagnostic::error("no-hosts", "the inventory has no `hosts:` list", r.span(root), "")
                    .with_hint("add `hosts:` with at least the master: `- {name: edge-master, address: 10.0.0.2, role: master}`"),
            ),
            Some((n, p)) => match n.as_seq() {
                None if n.is_null() => {}
                None => r.type_error(n, &p, "hosts", "a list of hosts"),
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let hp = format!("{p}/{i}");
                        let Some(hf) = r.fields(item, &hp, "a host", HOST_KEYS) else {
                            continue;
                        };
                        let mut partial = base.clone();
                        let mut own = Partial::default();
                        let mut host_name = String::new();
                        match hf.get("name") {
                            Some((n, p)) => {
                                let v = r.string(n, &p, "name");
                                host_name = noted(&r, &mut own.at, "name", n, &p, v).unwrap_or_default();
                            }
                            None => r.diags.push(
                                Diagnostic::error("missing-key", "a host needs `name:`", r.span(item), hp.clone())
                                    .with_hint("the name is the device's hostname and Kubernetes node name"),
                            ),
                        }
                        match hf.get("address") {
                            Some((n, p)) => {
                                let v = r.string(n, &p, "address");
                                own.address = noted(&r, &mut own.at, "address", n, &p, v);
                            }
                            None => r.diags.push(
                                Diagnostic::error("missing-key", format!("host `{host_name}` needs `address:`"), r.span(item), hp.clone())
                                    .with_hint("the IP address or DNS name to reach it over SSH"),
                            ),
                        }
                        match hf.get("role") {
                            Some((n, p)) => {
                                let v = read_role(&mut r, n, &p, "role");
                                own.role = noted(&r, &mut own.at, "role", n, &p, v);
                            }
                            None => r.diags.push(
                                Diagnostic::error("missing-key", format!("host `{host_name}` needs `role:` (master or worker)"), r.span(item), hp.clone())
                                    .with_hint("exactly one host is `role: master`"),
                            ),
                        }
                        if let Some((n, p)) = hf.get("ssh") {
                            read_ssh(&mut r, n, &p, &mut own);
                        }
                        if let Some((n, p)) = hf.get("vars") {
                            read_vars(&mut r, n, &p, &mut own);
                        }
                        if let Some((n, p)) = hf.get("services") {
                            let v = r.string(n, &p, "services");
                            own.services = noted(&r, &mut own.at, "services", n, &p, v);
                        }
                        if let Some((n, p)) = hf.get("dataSweeper") {
                            let v = r.string(n, &p, "dataSweeper");
                            own.data_sweeper = noted(&r, &mut own.at, "dataSweeper", n, &p, v);
                        }
                        partial.over(&own);
                        drafts.push(Draft {
                            pointer: hp.clone(),
                            name: host_name,
                            partial,
                            span: r.span(item),
                        });
                    }
                }
            },
        }
    }
    finish(
        file,
        dir,
        root,
        Globals {
            at: global_at,
            name,
            mode,
            known_hosts,
            kubeconfig,
            revision_history,
            previous_images,
            image_sources,
        },
        drafts,
        r,
    )
}

/// One Ansible variable into a partial (aion_* typos warned).
fn ansible_var(r: &mut Reader, key: &str, n: &Node, p: &str, into: &mut Partial, global: bool) {
    match key {
        "ansible_host" => {
            let v = r.string(n, p, key);
            into.address = noted(r, &mut into.at, "address", n, p, v);
        }
        "ansible_user" => into.user = r.string(n, p, key),
        "ansible_port" => into.port = read_port(r, n, p, key),
        "ansible_ssh_private_key_file" | "ansible_private_key_file" => {
            let v = r.string(n, p, key).filter(|s| !s.is_empty());
            into.key = noted(r, &mut into.at, "key", n, p, v);
        }
        "aion_role" => {
            let v = read_role(r, n, p, key);
            into.role = noted(r, &mut into.at, "role", n, p, v);
        }
        "aion_gpu" => into.gpu = r.bool(n, p, key),
        "aion_kubernetes_version" => {
            let v = r.string(n, p, key);
            into.kubernetes_version = noted(r, &mut into.at, "kubernetesVersion", n, p, v);
        }
        "aion_pod_cidr" => {
            let v = r.string(n, p, key);
            into.pod_cidr = noted(r, &mut into.at, "podCidr", n, p, v);
        }
        "aion_extra_sans" => {
            let v = r.string_list(n, p, key);
            into.extra_sans = noted(r, &mut into.at, "extraSans", n, p, v);
        }
        "aion_registry_prefix" => into.registry_prefix = r.string(n, p, key),
        "aion_namespace" => {
            let v = r.string(n, p, key);
            into.namespace = noted(r, &mut into.at, "namespace", n, p, v);
        }
        "aion_services" => {
            let v = r.string(n, p, key);
            into.services = noted(r, &mut into.at, "services", n, p, v);
        }
        "aion_data_sweeper" => {
            let v = r.string(n, p, key);
            into.data_sweeper = noted(r, &mut into.at, "dataSweeper", n, p, v);
        }
        "aion_image_repository" => into.image_repository = r.string(n, p, key),
        "aion_cgroup_driver" => into.cgroup_driver = read_cgroup_driver(r, n, p, key),
        "aion_images" => into.images = read_images(r, n, p, key),
        "aion_flannel_iface" => into.flannel_iface = r.string(n, p, key),
        "ansible_ssh_pass" | "ansible_password" | "ansible_become_pass" => {
            r.diags.push(
                Diagnostic::warning(
                    "unsupported-var",
                    format!("`{key}` is ignored: aion-reconcile logs in with SSH keys only"),
                    r.span(n),
                    p,
                )
                .with_hint(
                    "set `ansible_ssh_private_key_file` (and remove the password from the file)",
                ),
            );
        }
        k if k.starts_with("aion_") && !(global && ANSIBLE_GLOBAL_VARS.contains(&k)) => {
            let mut all: Vec<&str> = ANSIBLE_HOST_VARS.to_vec();
            all.extend_from_slice(ANSIBLE_GLOBAL_VARS);
            let mut d = Diagnostic::warning(
                "unknown-key",
                format!("unknown AION variable `{k}` (ignored)"),
                r.span(n),
                p,
            );
            d = match suggest(k, &all) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("AION variables: {}", all.join(", "))),
            };
            r.diags.push(d);
        }
        _ => {}
    }
}

struct AnsibleWalk<'a> {
    r: Reader,
    /// Host name → (accumulated settings, first span, first pointer, master group seen).
    hosts: Vec<(String, Partial, Span, String, bool)>,
    globals: Vec<(&'a str, &'a Node, String)>,
}

impl<'a> AnsibleWalk<'a> {
    fn group(
        &mut self,
        name: &str,
        node: &'a Node,
        ptr: &str,
        inherited: &Partial,
        master: bool,
        depth: usize,
    ) {
        if depth > 32 {
            return;
        }
        let master = master || MASTER_GROUPS.contains(&name);
        let what = format!("group `{name}`");
        let Some(f) = self
            .r
            .fields(node, ptr, &what, &["hosts", "children", "vars"])
        else {
            return;
        };
        let mut vars = inherited.clone();
        if let Some((vn, vp)) = f.get("vars")
            && let Some(entries) = self.r.map_entries(vn, &vp, "vars")
        {
            for (k, _, v) in entries {
                let p = join_pointer(&vp, &k);
                let global = name == "all";
                if global && ANSIBLE_GLOBAL_VARS.contains(&k.as_str()) {
                    let key: &'static str = ANSIBLE_GLOBAL_VARS
                        .iter()
                        .find(|g| **g == k)
                        .expect("contained");
                    self.globals.push((key, v, p.clone()));
                }
                ansible_var(&mut self.r, &k, v, &p, &mut vars, global);
            }
        }
        if let Some((hn, hp)) = f.get("hosts")
            && let Some(entries) = self.r.map_entries(hn, &hp, "hosts")
        {
            for (host, key, v) in entries {
                let p = join_pointer(&hp, &host);
                let mut own = vars.clone();
                if let Some(hv) = self.r.map_entries(v, &p, &format!("host `{host}`")) {
                    for (k, _, val) in hv {
                        let vp = join_pointer(&p, &k);
                        ansible_var(&mut self.r, &k, val, &vp, &mut own, false);
                    }
                }
                match self.hosts.iter_mut().find(|h| h.0 == host) {
                    Some(h) => {
                        h.1.over(&own);
                        h.4 |= master;
                    }
                    None => {
                        // An Ansible host's name is its key.
                        own.at.set("name", &p, self.r.span(key));
                        self.hosts
                            .push((host, own, self.r.span(key), p.clone(), master));
                    }
                }
            }
        }
        if let Some((cn, cp)) = f.get("children")
            && let Some(entries) = self.r.map_entries(cn, &cp, "children")
        {
            for (child, _, v) in entries {
                let p = join_pointer(&cp, &child);
                self.group(&child, v, &p, &vars, master, depth + 1);
            }
        }
    }
}

fn from_ansible(root: &Node, file: &Path, dir: &Path) -> (Loaded<Inventory>, Located) {
    let mut w = AnsibleWalk {
        r: Reader::new(std::sync::Arc::new(file.to_path_buf())),
        hosts: Vec::new(),
        globals: Vec::new(),
    };
    let top = root.as_map().unwrap_or_default();
    // `all` first (its vars are inherited by every other top-level group).
    let all_vars = {
        let mut v = Partial::default();
        if let Some(all) = root.get("all") {
            w.group("all", all, "/all", &Partial::default(), false, 0);
            if let Some(vars) = all.get("vars")
                && let Some(pairs) = vars.as_map()
            {
                let mut scratch = Reader::new(std::sync::Arc::new(file.to_path_buf()));
                for pair in pairs {
                    if let Some(k) = pair.key.text() {
                        let p = join_pointer("/all/vars", k);
                        ansible_var(&mut scratch, k, &pair.value, &p, &mut v, true);
                    }
                }
            }
        }
        v
    };
    for pair in top {
        let Some(k) = pair.key.text() else { continue };
        if k == "all" {
            continue;
        }
        let p = join_pointer("", k);
        w.group(k, &pair.value, &p, &all_vars, false, 0);
    }
    let mut name = None;
    let mut mode = None;
    let mut known_hosts = None;
    let mut kubeconfig = None;
    let mut revision_history = None;
    let mut previous_images = None;
    let mut image_sources = Vec::new();
    let mut global_at = Origins::default();
    for (k, n, p) in std::mem::take(&mut w.globals) {
        match k {
            "aion_name" => name = w.r.string(n, &p, k),
            "aion_mode" => {
                let v = read_mode(&mut w.r, n, &p, k);
                mode = noted(&w.r, &mut global_at, "mode", n, &p, v);
            }
            "aion_known_hosts" => {
                let v = w.r.string(n, &p, k);
                known_hosts = noted(&w.r, &mut global_at, "knownHosts", n, &p, v);
            }
            "aion_kubeconfig" => kubeconfig = w.r.string(n, &p, k),
            "aion_revision_history" => revision_history = read_revision_history(&mut w.r, n, &p, k),
            "aion_previous_images" => previous_images = read_previous_images(&mut w.r, n, &p, k),
            "aion_image_sources" => image_sources = read_image_sources(&mut w.r, n, &p, k),
            _ => {}
        }
    }
    let drafts: Vec<Draft> = std::mem::take(&mut w.hosts)
        .into_iter()
        .map(|(name, mut partial, span, pointer, master)| {
            if partial.role.is_none() {
                partial.role = Some(if master { Role::Master } else { Role::Worker });
            }
            Draft {
                pointer,
                name,
                partial,
                span,
            }
        })
        .collect();
    if drafts.is_empty() {
        w.r.diags.push(
            Diagnostic::error("no-hosts", "the Ansible inventory names no hosts", w.r.span(root), "")
                .with_hint("put hosts under `all: {children: {masters: {hosts: {...}}, workers: {hosts: {...}}}}`"),
        );
    }
    finish(
        file,
        dir,
        root,
        Globals {
            at: global_at,
            name,
            mode,
            known_hosts,
            kubeconfig,
            revision_history,
            previous_images,
            image_sources,
        },
        drafts,
        w.r,
    )
}

/// `imageSources`: a list of paths, each kept with its position (for errors about it).
fn read_image_sources(
    r: &mut Reader,
    n: &Node,
    p: &str,
    field: &str,
) -> Vec<(String, Span, String)> {
    if n.is_null() {
        return Vec::new();
    }
    let Some(items) = n.as_seq() else {
        r.type_error(n, p, field, "a list of paths");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{p}/{i}");
        if let Some(s) = r.string(item, &ip, field)
            && !s.is_empty()
        {
            out.push((s, r.span(item), ip));
        }
    }
    out
}

fn valid_cidr(s: &str) -> bool {
    let Some((addr, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u8>() else {
        return false;
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => bits <= 32,
        Ok(std::net::IpAddr::V6(_)) => bits <= 128,
        Err(_) => false,
    }
}

fn valid_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
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
    check_at(inv, &located, diags);
}

/// [`check`] with each host's JSON pointer (Ansible hosts live under their group) and where
/// each setting was written: every finding's pointer and position name the value it is about
/// (the host's entry when that value was not written but derived, e.g. the namespace of a
/// worker from its name).
fn check_at(inv: &Inventory, located: &Located, diags: &mut Vec<Diagnostic>) {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    let mut addrs: Vec<(&str, usize)> = Vec::new();
    let none = Origins::default();
    for (i, h) in inv.hosts.iter().enumerate() {
        let (ptr, origins) = located
            .hosts
            .get(i)
            .map(|(p, o)| (p.clone(), o))
            .unwrap_or_else(|| (String::new(), &none));
        // (pointer, position) of a setting's value, else of the host's entry.
        let at = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| origins.get(k))
                .unwrap_or_else(|| (ptr.clone(), h.span.clone()))
        };
        let (name_ptr, name_span) = at(&["name"]);
        if let Some((_, line)) = seen.iter().find(|(n, _)| *n == h.name) {
            diags.push(
                Diagnostic::error(
                    "host-duplicate",
                    format!(
                        "host name `{}` is used twice (first at line {line})",
                        h.name
                    ),
                    name_span.clone(),
                    name_ptr.clone(),
                )
                .with_hint(
                    "host names are hostnames and Kubernetes node names; they must be unique",
                ),
            );
        } else {
            seen.push((&h.name, name_span.line));
        }
        // An address not written is the host's name.
        let (addr_ptr, addr_span) = at(&["address", "name"]);
        if let Some((_, line)) = addrs.iter().find(|(a, _)| *a == h.address) {
            diags.push(
                Diagnostic::warning(
                    "address-duplicate",
                    format!(
                        "address `{}` is used by two hosts (first at line {line})",
                        h.address
                    ),
                    addr_span.clone(),
                    addr_ptr.clone(),
                )
                .with_hint("two entries for one machine are almost always a mistake"),
            );
        } else {
            addrs.push((&h.address, addr_span.line));
        }
        if !h.name.is_empty() && !crate::k8s::is_dns1123_subdomain(&h.name) {
            diags.push(
                Diagnostic::error(
                    "invalid-host-name",
                    format!("host name `{}` is not a valid Kubernetes node name", h.name),
                    name_span.clone(),
                    name_ptr.clone(),
                )
                .with_hint(
                    "use lowercase letters, digits, `-` and `.` (RFC 1123), e.g. `edge-worker-1`",
                ),
            );
        }
        if !valid_cidr(&h.vars.pod_cidr) {
            let (pointer, span) = at(&["podCidr"]);
            diags.push(
                Diagnostic::error(
                    "invalid-cidr",
                    format!(
                        "podCidr `{}` of host `{}` is not a CIDR",
                        h.vars.pod_cidr, h.name
                    ),
                    span,
                    pointer,
                )
                .with_hint(format!("write it like `{DEFAULT_POD_CIDR}`")),
            );
        }
        if !valid_version(&h.vars.kubernetes_version) {
            let (pointer, span) = at(&["kubernetesVersion"]);
            diags.push(
                Diagnostic::error(
                    "invalid-version",
                    format!(
                        "kubernetesVersion `{}` of host `{}` is not MAJOR.MINOR.PATCH",
                        h.vars.kubernetes_version, h.name
                    ),
                    span,
                    pointer,
                )
                .with_hint(format!(
                    "quote a full version: `kubernetesVersion: \"{DEFAULT_KUBERNETES_VERSION}\"`"
                )),
            );
        }
        for san in &h.vars.extra_sans {
            if san.parse::<std::net::IpAddr>().is_err() && !crate::k8s::is_dns1123_subdomain(san) {
                let (pointer, span) = at(&["extraSans"]);
                diags.push(
                    Diagnostic::error(
                        "invalid-san",
                        format!("extra SAN `{san}` of host `{}` is neither an IP address nor a DNS name", h.name),
                        span,
                        pointer,
                    )
                    .with_hint("use an IP address or a lowercase DNS name"),
                );
            }
        }
        if !crate::k8s::is_dns1123_label(&h.vars.namespace) {
            // Not written: a worker's namespace is its name.
            let (pointer, span) = at(&["namespace", "name"]);
            diags.push(
                Diagnostic::error(
                    "invalid-namespace",
                    format!(
                        "namespace `{}` of host `{}` is not a valid Kubernetes namespace",
                        h.vars.namespace, h.name
                    ),
                    span,
                    pointer,
                )
                .with_hint("lowercase letters, digits and `-`, at most 63 characters"),
            );
        }
        for (what, key, p) in [
            ("services", "services", h.services.as_deref()),
            ("dataSweeper", "dataSweeper", h.data_sweeper.as_deref()),
            ("ssh key", "key", h.ssh.key.as_deref()),
        ] {
            if let Some(p) = p
                && !p.exists()
            {
                let (pointer, span) = at(&[key]);
                diags.push(
                    Diagnostic::warning(
                        "file-missing",
                        format!(
                            "{what} file {} of host `{}` does not exist",
                            p.display(),
                            h.name
                        ),
                        span,
                        pointer,
                    )
                    .with_hint("relative paths are resolved against the inventory's directory"),
                );
            }
        }
    }
    let masters: Vec<&Host> = inv.masters().collect();
    match masters.len() {
        0 if !inv.hosts.is_empty() => diags.push(
            Diagnostic::error(
                "no-master",
                "no host has `role: master`",
                inv.span.clone(),
                "",
            )
            .with_hint(
                "mark the control-plane host `role: master` (Ansible: put it in a `masters` group)",
            ),
        ),
        n if n > 1 => {
            // The second master's `role` (its entry when a group made it a master).
            let i = inv
                .hosts
                .iter()
                .position(|h| std::ptr::eq(h, masters[1]))
                .unwrap_or(0);
            let (pointer, span) = located
                .hosts
                .get(i)
                .and_then(|(p, o)| {
                    o.get("role")
                        .or_else(|| Some((p.clone(), masters[1].span.clone())))
                })
                .unwrap_or_else(|| (String::new(), inv.span.clone()));
            diags.push(
                Diagnostic::error(
                    "multiple-masters",
                    format!(
                        "{n} hosts are masters ({}); AION runs one control-plane node",
                        masters
                            .iter()
                            .map(|h| h.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    span,
                    pointer,
                )
                .with_hint("make exactly one host `role: master`"),
            );
        }
        _ => {}
    }
    let global = |key: &str| {
        located
            .global
            .get(key)
            .unwrap_or_else(|| (String::new(), inv.span.clone()))
    };
    if inv.mode == Mode::Single && inv.workers().next().is_some() {
        let (pointer, span) = global("mode");
        diags.push(
            Diagnostic::error(
                "single-with-workers",
                "`mode: single` but the inventory has workers",
                span,
                pointer,
            )
            .with_hint("use `mode: cluster`, or remove the workers"),
        );
    }
    for src in &inv.image_sources {
        if !src.path.exists() {
            diags.push(
                Diagnostic::error(
                    "image-source-missing",
                    format!("image source {} does not exist", src.path.display()),
                    src.span.clone(),
                    src.pointer.clone(),
                )
                .with_hint("an OCI image-layout directory, an OCI archive (.tar) or an images.tsv list; relative paths are resolved against the inventory's directory"),
            );
        }
    }
    if let Some(k) = &inv.known_hosts
        && !k.exists()
    {
        let (pointer, span) = global("knownHosts");
        diags.push(
            Diagnostic::warning(
                "file-missing",
                format!("knownHosts file {} does not exist", k.display()),
                span,
                pointer,
            )
            .with_hint("strict host-key checking needs it; relative paths are resolved against the inventory's directory"),
        );
    }
}
