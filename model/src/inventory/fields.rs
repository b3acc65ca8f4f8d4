//! What the native and the Ansible loader share: defaults, where each setting was written
//! ([`Origins`]), the partial host they fill ([`Partial`]), the typed field readers, and
//! [`finish`], which turns partials into the [`Inventory`].

use std::path::Path;

use crate::diag::{Diagnostic, Loaded};
use crate::read::Reader;
use crate::span::Span;
use crate::yaml::Node;

use super::*;

impl Default for HostVars {
    /// Every variable at its documented default (`namespace` empty: decided per host).
    fn default() -> Self {
        default_vars()
    }
}

pub(crate) fn default_vars() -> HostVars {
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
pub(crate) struct Origins(pub(crate) Vec<(&'static str, String, Span)>);

impl Origins {
    pub(crate) fn set(&mut self, key: &'static str, pointer: &str, span: Span) {
        match self.0.iter_mut().find(|o| o.0 == key) {
            Some(o) => {
                o.1 = pointer.to_owned();
                o.2 = span;
            }
            None => self.0.push((key, pointer.to_owned(), span)),
        }
    }
    pub(crate) fn get(&self, key: &str) -> Option<(String, Span)> {
        self.0
            .iter()
            .find(|o| o.0 == key)
            .map(|o| (o.1.clone(), o.2.clone()))
    }
    pub(crate) fn over(&mut self, o: &Origins) {
        for (k, p, s) in &o.0 {
            self.set(k, p, s.clone());
        }
    }
}

/// Per-host settings before defaults: `None` = not set at this level.
#[derive(Default, Clone)]
pub(crate) struct Partial {
    /// Where each setting that is `Some` was written.
    pub(crate) at: Origins,
    pub(crate) address: Option<String>,
    pub(crate) role: Option<Role>,
    pub(crate) user: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) key: Option<String>,
    pub(crate) gpu: Option<bool>,
    pub(crate) kubernetes_version: Option<String>,
    pub(crate) pod_cidr: Option<String>,
    pub(crate) extra_sans: Option<Vec<String>>,
    pub(crate) registry_prefix: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) services: Option<String>,
    pub(crate) data_sweeper: Option<String>,
    pub(crate) images_from: Option<String>,
    pub(crate) image_repository: Option<String>,
    pub(crate) cgroup_driver: Option<CgroupDriver>,
    pub(crate) images: ImageOverrides,
    pub(crate) flannel_iface: Option<String>,
}

impl Partial {
    pub(crate) fn over(&mut self, o: &Partial) {
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
            images_from,
            image_repository,
            cgroup_driver,
            flannel_iface
        );
        self.images.over(&o.images);
        self.at.over(&o.at);
    }
}

/// `value` read from `n` at `p` for `key`: when there is one, remember where it was written.
pub(crate) fn noted<T>(
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

pub(crate) fn read_port(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<u16> {
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

pub(crate) fn read_revision_history(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<u32> {
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

pub(crate) fn read_previous_images(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<u32> {
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

pub(crate) fn read_role(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<Role> {
    read_choice(
        r,
        (n, p, field),
        &[("master", Role::Master), ("worker", Role::Worker)],
        "one host is the master (control plane); the others are workers",
    )
}

pub(crate) fn read_cgroup_driver(
    r: &mut Reader,
    n: &Node,
    p: &str,
    field: &str,
) -> Option<CgroupDriver> {
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

pub(crate) fn read_images(r: &mut Reader, n: &Node, p: &str, field: &str) -> ImageOverrides {
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

pub(crate) fn read_mode(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<Mode> {
    read_choice(
        r,
        (n, p, field),
        &[("single", Mode::Single), ("cluster", Mode::Cluster)],
        "single: one master runs everything; cluster: a master plus workers",
    )
}

/// A string field that must be one of two words; anything else is `invalid-value` naming both.
pub(crate) fn read_choice<T: Copy>(
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

pub(crate) fn read_ssh(r: &mut Reader, n: &Node, p: &str, into: &mut Partial) {
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

pub(crate) fn read_vars(r: &mut Reader, n: &Node, p: &str, into: &mut Partial) {
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
pub(crate) struct Located {
    pub(crate) hosts: Vec<(String, Origins)>,
    pub(crate) global: Origins,
}

pub(crate) struct Draft {
    pub(crate) pointer: String,
    pub(crate) name: String,
    pub(crate) partial: Partial,
    pub(crate) span: Span,
}

/// Inventory-wide settings (native top level, or Ansible `all.vars`).
#[derive(Default)]
pub(crate) struct Globals {
    /// Where `mode` and `knownHosts` were written.
    pub(crate) at: Origins,
    pub(crate) name: Option<String>,
    pub(crate) mode: Option<Mode>,
    pub(crate) known_hosts: Option<String>,
    pub(crate) kubeconfig: Option<String>,
    pub(crate) revision_history: Option<u32>,
    pub(crate) previous_images: Option<u32>,
    /// `imageSources` as written: path, position, pointer.
    pub(crate) image_sources: Vec<(String, Span, String)>,
    pub(crate) peers: Vec<Peer>,
    pub(crate) entry_port: Option<u16>,
    /// `entryTls` as written: (ca, cert, key), its position and pointer.
    pub(crate) entry_tls: Option<EntryTlsAsWritten>,
}

pub(crate) fn finish(
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
        peers,
        entry_port,
        entry_tls,
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
                // Written for every host, `imagesFrom` does not apply to the host it names;
                // written for one host naming itself, it is kept for validation to refuse.
                images_from: p.images_from.filter(|s| {
                    !s.is_empty()
                        && (*s != d.name
                            || p.at.get("imagesFrom").is_some_and(|(ptr, _)| {
                                ptr.starts_with(&format!("{}/", d.pointer))
                            }))
                }),
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
                .map(|(path, span, pointer)| {
                    let registry = (path.starts_with("http://") || path.starts_with("https://"))
                        .then(|| path.trim_end_matches('/').to_string());
                    ImageSource {
                        path: if registry.is_some() {
                            PathBuf::from(&path)
                        } else {
                            resolve_path(dir, &path)
                        },
                        registry,
                        span,
                        pointer,
                    }
                })
                .collect(),
            peers,
            entry_port: entry_port.unwrap_or(DEFAULT_ENTRY_PORT),
            entry_tls: entry_tls.map(|([ca, cert, key], span, pointer)| EntryTls {
                ca: resolve_path(dir, &ca.0),
                cert: resolve_path(dir, &cert.0),
                key: resolve_path(dir, &key.0),
                at: [ca.1, cert.1, key.1],
                span,
                pointer,
            }),
            hosts,
            span: r.span(root),
        },
        diagnostics: r.diags,
    };
    (loaded, located)
}

/// `imageSources`: a list of paths, each kept with its position (for errors about it).
pub(crate) fn read_image_sources(
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

/// `peers`: a list of `{device, to}` (devices of other installations that may send here).
pub(crate) fn read_peers(r: &mut Reader, n: &Node, p: &str, field: &str) -> Vec<Peer> {
    if n.is_null() {
        return Vec::new();
    }
    let Some(items) = n.as_seq() else {
        r.type_error(n, p, field, "a list of `{device: NAME, to: [HOST, ...]}`");
        return Vec::new();
    };
    let mut out: Vec<Peer> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{p}/{i}");
        let Some(f) = r.fields(item, &ip, "a peer", PEER_KEYS) else {
            continue;
        };
        let Some((dn, dp)) = f.get("device") else {
            r.diags.push(
                Diagnostic::error("missing-key", "a peer needs `device:`", r.span(item), ip.clone())
                    .with_hint("the name of the other installation's device that may send kanbans here (its services.yml `deviceName`)"),
            );
            continue;
        };
        let Some(device) = r.string(dn, &dp, "device") else {
            continue;
        };
        if !valid_peer_name(&device) {
            r.diags.push(
                Diagnostic::error(
                    "invalid-value",
                    format!("peer device `{device}` is not a valid name"),
                    r.span(dn),
                    dp.clone(),
                )
                .with_hint("lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit (it becomes the broker user `peer.<device>`)"),
            );
            continue;
        }
        if out.iter().any(|o| o.device == device) {
            r.diags.push(
                Diagnostic::error(
                    "duplicate-peer",
                    format!("peer device `{device}` is listed twice"),
                    r.span(dn),
                    dp.clone(),
                )
                .with_hint("list each device once; `to:` names every host it may send to"),
            );
            continue;
        }
        let mut to = Vec::new();
        let mut to_at = Vec::new();
        if let Some((tn, tp)) = f.get("to") {
            match tn.as_seq() {
                Some(hosts) => {
                    for (j, h) in hosts.iter().enumerate() {
                        let hp = format!("{tp}/{j}");
                        if let Some(name) = r.string(h, &hp, "to") {
                            to.push(name);
                            to_at.push((r.span(h), hp));
                        }
                    }
                }
                None if tn.is_null() => {}
                None => r.type_error(tn, &tp, "to", "a list of host names"),
            }
        }
        out.push(Peer {
            device,
            to,
            to_at,
            span: r.span(item),
            pointer: ip,
        });
    }
    out
}

/// A peer device name: a DNS-style name (it is a broker user's suffix and a file name).
fn valid_peer_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `entryTls` as written: `ca`, `cert` and `key` with their positions, then the map's position
/// and pointer.
pub(crate) type EntryTlsAsWritten = ([(String, Span); 3], Span, String);

/// `entryTls`: `{ca, cert, key}`, each a path; all three are needed.
pub(crate) fn read_entry_tls(
    r: &mut Reader,
    n: &Node,
    p: &str,
    field: &str,
) -> Option<EntryTlsAsWritten> {
    if n.is_null() {
        return None;
    }
    let f = r.fields(n, p, field, ENTRY_TLS_KEYS)?;
    let mut out: [(String, Span); 3] = Default::default();
    let mut complete = true;
    for (i, key) in ENTRY_TLS_KEYS.iter().enumerate() {
        match f.get(key) {
            Some((v, vp)) => match r.string(v, &vp, key) {
                Some(s) if !s.is_empty() => out[i] = (s, r.span(v)),
                _ => complete = false,
            },
            None => {
                r.diags.push(
                    Diagnostic::error("missing-key", format!("`{field}` needs `{key}:`"), r.span(n), p)
                        .with_hint("ca: the CA certificate, cert: the broker's certificate for the entry, key: its private key (PEM files)"),
                );
                complete = false;
            }
        }
    }
    complete.then(|| (out, r.span(n), p.to_string()))
}

/// `entryPort`: a NodePort (30000–32767).
pub(crate) fn read_entry_port(r: &mut Reader, n: &Node, p: &str, field: &str) -> Option<u16> {
    let v = r.int32(n, p, field)?;
    match u16::try_from(v) {
        Ok(port) if (30000..=32767).contains(&port) => Some(port),
        _ => {
            r.diags.push(
                Diagnostic::error(
                    "invalid-value",
                    format!("`{field}` must be a NodePort between 30000 and 32767, found {v}"),
                    r.span(n),
                    p,
                )
                .with_hint("the default, 32094, is upstream's RabbitMQ NodePort"),
            );
            None
        }
    }
}

pub(crate) fn valid_cidr(s: &str) -> bool {
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

pub(crate) fn valid_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}
