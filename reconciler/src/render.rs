//! Render: inventory × `services.yml` × templates → per-node Kubernetes manifests. Pure. The
//! types it fills ([`Manifests`], [`ObjectKey`], the ownership labels) are in [`crate::manifest`],
//! with the one I/O, [`Manifests::write_to`].
//!
//! The templates live in `templates/` (minijinja, undefined variables are errors) and are
//! compiled into the binary. Template names end in `.yaml.j2`, so minijinja escapes every
//! interpolated value as JSON (and the templates use `tojson` explicitly): a scalar such as `yes`
//! or `3306` stays a string and no value can inject YAML. The rendered text is parsed back into JSON
//! values (what `diff`/`apply` send) and kept as text (what `render` writes), so both views are the
//! same bytes.
//!
//! Layout decided here:
//! * **single** mode: every microservice and the AION core on the master, in the master's
//!   namespace (`default`, or the host var `namespace`, e.g. `prj`); no nodeSelector unless a
//!   microservice sets `targetNode`.
//! * **cluster** mode: per host, its namespace (workers: their name) holding that host's core
//!   (Redis, aion-kanban, RBAC) and microservices, pinned with `kubernetes.io/hostname`;
//!   RabbitMQ once, in the master's namespace. A microservice with `targetNode` is rendered in
//!   the namespace of every host whose services.yml lists it, pinned to the target node (as
//!   upstream; that namespace's aion-kanban runtime starts it there).
//! * the broker: one virtual host per namespace (cluster mode; `/` in single mode), created with
//!   the user by a definitions file imported at boot ([`broker`]); every pod's URL names its own
//!   namespace's virtual host, and each aion-kanban runtime gets `--device-amqp` for every other
//!   device of the installation.

pub mod broker;
mod pod_env;
mod subset;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use aion_model::inventory::{Host, Inventory, Mode, Role};
use aion_model::services::{Microservice, ServicesFile};
use aion_model::span::Span;
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::manifest::{
    LABEL_COMPONENT, LABEL_INSTANCE, LABEL_INVENTORY, LABEL_MANAGED_BY, LABEL_NAME, LABEL_NODE,
    MANAGED_BY, Manifests, NodeManifests, Object, ObjectKey, kind_rank,
};

pub use pod_env::{AION_HOME, CLIENT_DEFAULTS, CONFIG_MOUNT, SERVICES_IN_POD, SWEEPER_IN_POD};
use pod_env::{data_host_path, env_list};

/// The node (device) name a `services.yml` belongs to.
pub type HostName = String;

const TEMPLATES: &[(&str, &str)] = &[
    (
        "core/namespace.yaml.j2",
        include_str!("../../templates/core/namespace.yaml.j2"),
    ),
    (
        "core/rbac.yaml.j2",
        include_str!("../../templates/core/rbac.yaml.j2"),
    ),
    (
        "core/rabbitmq.yaml.j2",
        include_str!("../../templates/core/rabbitmq.yaml.j2"),
    ),
    (
        "core/broker-credentials.yaml.j2",
        include_str!("../../templates/core/broker-credentials.yaml.j2"),
    ),
    (
        "core/redis.yaml.j2",
        include_str!("../../templates/core/redis.yaml.j2"),
    ),
    (
        "core/kanban.yaml.j2",
        include_str!("../../templates/core/kanban.yaml.j2"),
    ),
    (
        "microservice/workload.yaml.j2",
        include_str!("../../templates/microservice/workload.yaml.j2"),
    ),
    (
        "microservice/service.yaml.j2",
        include_str!("../../templates/microservice/service.yaml.j2"),
    ),
    (
        "core/runtimeclass.yaml.j2",
        include_str!("../../templates/core/runtimeclass.yaml.j2"),
    ),
    (
        "microservice/serviceaccount.yaml.j2",
        include_str!("../../templates/microservice/serviceaccount.yaml.j2"),
    ),
];

/// Why rendering failed. Each variant names where.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{at}: {object}: {message}")]
    Invalid {
        /// File position of the offending value (or of the microservice entry).
        at: Span,
        /// The object or microservice concerned.
        object: String,
        message: String,
    },
    #[error("inventory {inventory}: {message}")]
    Inventory { inventory: PathBuf, message: String },
    #[error("template {template} for {object}: {source}")]
    Template {
        template: String,
        object: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("template {template} for {object} produced invalid YAML: {message}")]
    Output {
        template: String,
        object: String,
        message: String,
    },
}

#[derive(Serialize)]
struct PortCtx {
    name: String,
    protocol: String,
    port: i32,
    node_port: i32,
}

#[derive(Serialize)]
struct VolumeCtx {
    name: String,
    container_path: String,
    host_path: String,
    propagation: &'static str,
}

#[derive(Serialize)]
struct ResourcesCtx {
    requests: Vec<(String, String)>,
    limits: Vec<(String, String)>,
}

#[derive(Serialize)]
struct MicroserviceCtx {
    name: String,
    ns: String,
    labels: Vec<(String, String)>,
    always: bool,
    /// `startup: no` renders the instance idle for the runtime to start on demand.
    startup: bool,
    service_account: String,
    /// `runtimeClassName` (`nvidia` on `gpu: true` hosts); empty: the node's default.
    runtime_class: String,
    node_selector: String,
    image: String,
    /// Its manifest digest from `imageSources` (the pod template's annotation), if known.
    image_digest: Option<String>,
    command: Option<Vec<String>>,
    privileged: bool,
    ports: Vec<PortCtx>,
    node_port: bool,
    env: Vec<(String, String)>,
    volumes: Vec<VolumeCtx>,
    resources: Option<ResourcesCtx>,
    data_host_path: String,
    config_host_path: String,
    /// Where the config directory is mounted read-only; `None` when the user's
    /// `volumeMountPathList` mounts that path itself (upstream's data-sweeper does).
    config_mount: Option<&'static str>,
}

#[derive(Serialize)]
struct CoreCtx {
    ns: String,
    node: String,
    /// This device's name for aion-kanban (`AION_DEVICE`): as the microservices' `DEVICE_NAME`.
    device: String,
    labels: Vec<(String, String)>,
    node_selector: String,
    rabbitmq_image: String,
    redis_image: String,
    kanban_image: String,
    /// Their manifest digests from `imageSources`, if known.
    rabbitmq_digest: Option<String>,
    redis_digest: Option<String>,
    kanban_digest: Option<String>,
    rabbitmq_url: String,
    /// The broker's `conf.d` file, its rendered definition files (virtual hosts, permissions)
    /// and their checksum (master only uses them).
    rabbitmq_conf: String,
    rabbitmq_vhosts: String,
    rabbitmq_permissions: String,
    rabbitmq_checksum: String,
    /// `aion-kanban` arguments: `run`, one `--device-amqp NAME=URL` per other device, and
    /// `--peers` (the devices of other installations that may send to this one).
    kanban_args: Vec<String>,
    /// The peer devices whose broker users the generated Secret holds (comma-separated, empty
    /// when there are none).
    peers: String,
    /// The NodePort of the broker's entry for other installations (with peers only).
    entry_port: Option<u16>,
    /// `entryTls`' files as the placeholder Secret's annotation (`{key: path}` JSON), empty
    /// without TLS on the entry.
    entry_tls_files: String,
    /// `AION_SWEEPER_CONFIG` (the built-in data sweeper) when the inventory names a
    /// data-sweeper.yml for this host.
    sweeper_config: Option<String>,
    data_host_path: String,
    config_host_path: String,
}

struct Renderer {
    env: Environment<'static>,
    inventory: String,
    /// Normalised image reference → manifest digest, for the images `imageSources` has.
    digests: BTreeMap<String, String>,
}

impl Renderer {
    /// The manifest digest `imageSources` has for `image` (rendered as the pod template's
    /// [`IMAGE_DIGEST_ANNOTATION`], so that a tag rebuilt with new content rolls its pods).
    fn digest_of(&self, image: &str) -> Option<String> {
        self.digests.get(&crate::images::normalize(image)).cloned()
    }

    fn new(inventory: &str) -> Renderer {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters are valid"),
        );
        for (name, src) in TEMPLATES {
            env.add_template(name, src)
                .expect("built-in templates compile (covered by tests)");
        }
        // Names of the broker's generated Secret and its files, shared by several templates.
        for (name, value) in [
            ("secret_name", broker::SECRET_NAME),
            ("password_key", broker::SECRET_PASSWORD_KEY),
            ("password_env", broker::PASSWORD_ENV),
            ("user_file", broker::SECRET_USER_FILE),
            ("vhosts_file", broker::VHOSTS_FILE),
            ("permissions_file", broker::PERMISSIONS_FILE),
            ("peers_file", broker::SECRET_PEERS_FILE),
            ("peers_annotation", broker::PEERS_ANNOTATION),
            ("entry_service", broker::ENTRY_SERVICE),
            ("remotes_secret", broker::REMOTES_SECRET),
            ("remote_credentials_dir", broker::REMOTE_CREDENTIALS_DIR),
            ("entry_tls_secret", broker::ENTRY_TLS_SECRET),
            ("entry_tls_dir", broker::ENTRY_TLS_DIR),
            ("definitions_dir", broker::DEFINITIONS_DIR),
            ("image_digest_annotation", IMAGE_DIGEST_ANNOTATION),
        ] {
            env.add_global(name, value);
        }
        Renderer {
            env,
            inventory: inventory.to_owned(),
            digests: BTreeMap::new(),
        }
    }

    /// Render `template` with `ctx` (see [`context`]) and parse each document it produced.
    fn render(
        &self,
        template: &str,
        ctx: &minijinja::Value,
        node: &str,
        owner: &str,
        what: &str,
        out: &mut Vec<Object>,
    ) -> Result<(), RenderError> {
        let tmpl = self
            .env
            .get_template(template)
            .map_err(|e| RenderError::Template {
                template: template.to_owned(),
                object: what.to_owned(),
                source: e,
            })?;
        let text = tmpl.render(ctx).map_err(|e| RenderError::Template {
            template: template.to_owned(),
            object: what.to_owned(),
            source: e,
        })?;
        for doc in split_documents(&text) {
            let value = match subset::parse(&doc) {
                Some(value) => value,
                None => serde_saphyr::from_str(&doc).map_err(|e| RenderError::Output {
                    template: template.to_owned(),
                    object: what.to_owned(),
                    message: e.to_string(),
                })?,
            };
            let key = ObjectKey::of(&value).ok_or_else(|| RenderError::Output {
                template: template.to_owned(),
                object: what.to_owned(),
                message: "document lacks apiVersion, kind or metadata.name".into(),
            })?;
            out.push(Object {
                key,
                node: node.to_owned(),
                owner: owner.to_owned(),
                value,
                text: doc,
            });
        }
        Ok(())
    }

    fn base_labels(&self, node: &str, component: &str, name: &str) -> Vec<(String, String)> {
        vec![
            (LABEL_MANAGED_BY.into(), MANAGED_BY.into()),
            (LABEL_INVENTORY.into(), self.inventory.clone()),
            (LABEL_NODE.into(), node.into()),
            (LABEL_COMPONENT.into(), component.into()),
            (LABEL_NAME.into(), name.into()),
        ]
    }
}

/// A template context: converted once, shared by every template rendered with it.
fn context<C: Serialize>(ctx: &C) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(ctx))
}

/// Split rendered text into YAML documents on `---` lines; comment-only or blank docs dropped.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, docs: &mut Vec<String>| {
        let has_content = cur
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if has_content {
            docs.push(std::mem::take(cur));
        } else {
            cur.clear();
        }
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut cur, &mut docs);
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    flush(&mut cur, &mut docs);
    docs
}

fn invalid(at: &Span, object: impl Into<String>, message: impl Into<String>) -> RenderError {
    RenderError::Invalid {
        at: at.clone(),
        object: object.into(),
        message: message.into(),
    }
}

use aion_model::k8s::is_iana_svc_name as is_port_name;
/// Kubernetes' name rules live in the model crate, which `validate` uses too.
pub use aion_model::k8s::{is_dns1123_label, is_dns1123_subdomain};

/// A label value: ≤ 63, alphanumerics plus `-_.`, starting and ending alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

fn namespace_exists_already(ns: &str) -> bool {
    ns == "default" || ns.starts_with("kube-")
}

struct Placement<'a> {
    host: &'a Host,
    namespace: String,
    /// nodeSelector for the core and for microservices without `targetNode`.
    pin: String,
}

/// Render the desired objects for an inventory. `services` gives, per host name, the parsed
/// `services.yml` that host runs (hosts without one get only the core).
///
/// # Errors
/// [`RenderError::Invalid`] for values Kubernetes would reject (names, ports, mounts), naming
/// the file position; nothing is sent anywhere.
pub fn render(
    inv: &Inventory,
    services: &[(HostName, ServicesFile)],
) -> Result<Manifests, RenderError> {
    render_with_digests(inv, services, &BTreeMap::new())
}

/// The pod template annotation naming the manifest digest of its image, when `imageSources`
/// has the image: a tag rebuilt with new content changes it, so the pods roll onto the new
/// content (the kubelet would otherwise keep running the old one under the same tag).
pub const IMAGE_DIGEST_ANNOTATION: &str = "aion.latona.io/image-digest";

/// [`render`], with `digests` (normalised reference → manifest digest, from `imageSources`)
/// rendered as each pod template's [`IMAGE_DIGEST_ANNOTATION`].
pub fn render_with_digests(
    inv: &Inventory,
    services: &[(HostName, ServicesFile)],
    digests: &BTreeMap<String, String>,
) -> Result<Manifests, RenderError> {
    let inv_err = |message: String| RenderError::Inventory {
        inventory: inv.source.clone(),
        message,
    };
    if inv.name.is_empty() || !is_label_value(&inv.name) {
        return Err(inv_err(format!(
            "name {:?} is not a valid Kubernetes label value (≤ 63 characters: letters, digits, '-', '_', '.', starting and ending alphanumeric)",
            inv.name
        )));
    }
    let master = inv
        .masters()
        .next()
        .ok_or_else(|| inv_err("no host with role master".into()))?;
    let mut renderer = Renderer::new(&inv.name);
    renderer.digests = digests.clone();

    // Where each host's things go.
    let mut placements: Vec<Placement> = Vec::new();
    match inv.mode {
        Mode::Single => placements.push(Placement {
            host: master,
            namespace: master.vars.namespace.clone(),
            pin: String::new(),
        }),
        Mode::Cluster => {
            let mut hosts: Vec<&Host> = inv.masters().take(1).collect();
            hosts.extend(inv.workers());
            for h in hosts {
                placements.push(Placement {
                    host: h,
                    namespace: h.vars.namespace.clone(),
                    pin: h.name.clone(),
                })
            }
        }
    }
    let mut seen_ns = BTreeMap::new();
    for p in &placements {
        let problem = if !is_dns1123_label(&p.namespace) {
            Some(format!(
                "namespace {:?} is not a valid Kubernetes namespace (lowercase letters, digits and '-', ≤ 63)",
                p.namespace
            ))
        } else if !is_label_value(&p.host.name) {
            Some("host name is not a valid Kubernetes label value".to_owned())
        } else {
            seen_ns
                .insert(p.namespace.clone(), p.host.name.clone())
                .map(|other| {
                    format!(
                        "namespace {:?} is already used by host {other}",
                        p.namespace
                    )
                })
        };
        if let Some(message) = problem {
            return Err(invalid(
                &p.host.span,
                format!("host {}", p.host.name),
                message,
            ));
        }
    }
    for (host, _) in services {
        if inv.host(host).is_none() {
            return Err(inv_err(format!(
                "services given for host {host:?}, which is not in the inventory"
            )));
        }
    }
    let master_ns = placements[0].namespace.clone();
    let cluster = inv.mode == Mode::Cluster;
    // Each placement's device name (as `AION_DEVICE`) and virtual host.
    let device_of = |node: &str, file: &ServicesFile| {
        if file.device_name.is_empty() {
            node.to_owned()
        } else {
            file.device_name.clone()
        }
    };
    let devices: Vec<(String, String)> = placements
        .iter()
        .map(|p| {
            let node = p.host.name.as_str();
            let device = services
                .iter()
                .find(|(h, _)| !cluster || h == node)
                .map_or_else(|| node.to_owned(), |(_, f)| device_of(node, f));
            (device, broker::vhost(cluster, &p.namespace))
        })
        .collect();
    let vhosts: Vec<String> = devices.iter().map(|(_, v)| v.clone()).collect();
    // TLS on the entry: only with peers (no entry without them).
    let entry_tls = inv.entry_tls.as_ref().filter(|_| !inv.peers.is_empty());
    let rabbitmq_conf = broker::config(entry_tls.is_some());
    let rabbitmq_vhosts = broker::vhosts_json(&vhosts);
    // Devices of other installations: the virtual hosts of the hosts each may reach.
    let peer_reach: Vec<(String, Vec<String>)> = inv
        .peers
        .iter()
        .map(|peer| {
            let reach = placements
                .iter()
                .zip(&devices)
                .filter(|(p, _)| peer.may_reach(&p.host.name))
                .map(|(_, (_, vhost))| vhost.clone())
                .collect();
            (peer.device.clone(), reach)
        })
        .collect();
    let peer_devices = inv
        .peers
        .iter()
        .map(|p| p.device.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let rabbitmq_permissions = broker::permissions_json(&vhosts, &peer_reach);
    let rabbitmq_checksum =
        broker::config_checksum(&rabbitmq_conf, &[&rabbitmq_vhosts, &rabbitmq_permissions]);

    let mut nodes = Vec::new();
    let mut node_ports: BTreeMap<i32, String> = BTreeMap::new();
    if !inv.peers.is_empty() {
        // The broker's entry for other installations takes its NodePort first.
        node_ports.insert(
            i32::from(inv.entry_port),
            format!(
                "the broker's entry for peers (`entryPort`, default {})",
                aion_model::inventory::DEFAULT_ENTRY_PORT
            ),
        );
    }
    for (p, (core_device, vhost)) in placements.iter().zip(&devices) {
        let node = p.host.name.as_str();
        let ns = p.namespace.as_str();
        let rabbitmq_url = broker::amqp_url(&master_ns, vhost);
        let mut kanban_args = vec!["run".to_owned()];
        for d in broker::device_amqp(core_device, &devices, &master_ns) {
            kanban_args.push("--device-amqp".to_owned());
            kanban_args.push(d);
        }
        // Always said, also empty: a peer removed from the inventory is refused by the runtime
        // even while its broker user still exists (definitions only add users).
        kanban_args.push(format!(
            "--peers={}",
            inv.peers
                .iter()
                .filter(|peer| peer.may_reach(node))
                .map(|peer| peer.device.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ));
        let mut objects = Vec::new();
        // Microservices: in single mode every services file lands on the master.
        let files: Vec<&(HostName, ServicesFile)> = services
            .iter()
            .filter(|(h, _)| match inv.mode {
                Mode::Single => true,
                Mode::Cluster => h == node,
            })
            .collect();

        // Core.
        let kanban_image = format!(
            "{}/aion-kanban:{}",
            p.host.vars.registry_prefix,
            env!("CARGO_PKG_VERSION")
        );
        let core = |part: &str| CoreCtx {
            ns: ns.to_owned(),
            node: node.to_owned(),
            device: core_device.clone(),
            labels: renderer.base_labels(node, "core", part),
            node_selector: p.pin.clone(),
            rabbitmq_image: p.host.vars.images.rabbitmq.clone(),
            redis_image: p.host.vars.images.redis.clone(),
            kanban_image: kanban_image.clone(),
            rabbitmq_digest: renderer.digest_of(&p.host.vars.images.rabbitmq),
            redis_digest: renderer.digest_of(&p.host.vars.images.redis),
            kanban_digest: renderer.digest_of(&kanban_image),
            rabbitmq_url: rabbitmq_url.clone(),
            rabbitmq_conf: rabbitmq_conf.clone(),
            rabbitmq_vhosts: rabbitmq_vhosts.clone(),
            rabbitmq_permissions: rabbitmq_permissions.clone(),
            rabbitmq_checksum: rabbitmq_checksum.clone(),
            kanban_args: kanban_args.clone(),
            peers: peer_devices.clone(),
            entry_port: (!inv.peers.is_empty()).then_some(inv.entry_port),
            entry_tls_files: entry_tls
                .map(|t| {
                    let files: BTreeMap<&str, String> = broker::ENTRY_TLS_KEYS
                        .into_iter()
                        .zip([&t.ca, &t.cert, &t.key])
                        .map(|(k, p)| (k, p.display().to_string()))
                        .collect();
                    serde_json::to_string(&files).expect("a map of strings serializes")
                })
                .unwrap_or_default(),
            sweeper_config: p
                .host
                .data_sweeper
                .as_ref()
                .map(|_| SWEEPER_IN_POD.to_owned()),
            data_host_path: format!("{AION_HOME}/{ns}/Data"),
            config_host_path: format!("{AION_HOME}/{ns}/config"),
        };
        if !namespace_exists_already(ns) {
            renderer.render(
                "core/namespace.yaml.j2",
                &context(&core("namespace")),
                node,
                "core/namespace",
                ns,
                &mut objects,
            )?;
        }
        renderer.render(
            "core/broker-credentials.yaml.j2",
            &context(&core("broker-credentials")),
            node,
            "core/broker-credentials",
            "broker credentials",
            &mut objects,
        )?;
        renderer.render(
            "core/rbac.yaml.j2",
            &context(&core("aion-kanban")),
            node,
            "core/rbac",
            "aion-kanban RBAC",
            &mut objects,
        )?;
        if p.host.role == Role::Master && inv.hosts.iter().any(|h| h.vars.gpu) {
            renderer.render(
                "core/runtimeclass.yaml.j2",
                &context(&core("runtimeclass")),
                node,
                "core/runtimeclass",
                "nvidia",
                &mut objects,
            )?;
        }
        if p.host.role == Role::Master {
            renderer.render(
                "core/rabbitmq.yaml.j2",
                &context(&core("rabbitmq")),
                node,
                "core/rabbitmq",
                "rabbitmq",
                &mut objects,
            )?;
        }
        renderer.render(
            "core/redis.yaml.j2",
            &context(&core("redis")),
            node,
            "core/redis",
            "redis",
            &mut objects,
        )?;
        renderer.render(
            "core/kanban.yaml.j2",
            &context(&core("aion-kanban")),
            node,
            "core/aion-kanban",
            "aion-kanban",
            &mut objects,
        )?;

        let mut names: BTreeMap<String, String> = BTreeMap::new();
        // Service accounts the microservices name, once each; `default` exists in every
        // namespace and `aion-kanban` is the core's.
        let mut accounts: BTreeSet<String> = ["default", "aion-kanban"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        for (_, file) in files {
            let device_name = device_of(node, file);
            for ms in &file.microservices {
                for i in 1..=ms.scale.max(1) {
                    let ctx = microservice_ctx(
                        &renderer,
                        ms,
                        i,
                        node,
                        ns,
                        &p.pin,
                        &p.host.vars.registry_prefix,
                        &device_name,
                        &file.debug,
                        &rabbitmq_url,
                    )?;
                    if ctx.runtime_class == "nvidia" {
                        // The nvidia runtime exists only on `gpu: true` hosts (containerd role).
                        let host = if ctx.node_selector.is_empty() {
                            node
                        } else {
                            ctx.node_selector.as_str()
                        };
                        if !inv.hosts.iter().any(|h| h.name == host && h.vars.gpu) {
                            return Err(invalid(
                                &ms.span,
                                &ms.name,
                                format!(
                                    "runtimeClassName nvidia needs a host with `gpu: true`; {} runs on {host}, which has none (set `gpu: true` on it, or targetNode a GPU host)",
                                    ctx.name
                                ),
                            ));
                        }
                    }
                    if let Some(prev) = names.insert(ctx.name.clone(), ms.name.clone()) {
                        return Err(invalid(
                            &ms.span,
                            &ms.name,
                            format!(
                                "object name {} is also produced by microservice {prev:?} in namespace {ns}",
                                ctx.name
                            ),
                        ));
                    }
                    for port in ctx.ports.iter().filter(|_| ctx.node_port) {
                        if port.node_port == 0 {
                            continue;
                        }
                        if let Some(prev) = node_ports.insert(port.node_port, ctx.name.clone()) {
                            return Err(invalid(
                                &ms.span,
                                &ms.name,
                                format!(
                                    "nodePort {} is also used by {prev}; node ports are cluster-wide",
                                    port.node_port
                                ),
                            ));
                        }
                    }
                    let value = context(&ctx);
                    if accounts.insert(ctx.service_account.clone()) {
                        renderer.render(
                            "microservice/serviceaccount.yaml.j2",
                            &value,
                            node,
                            &ms.name,
                            &ctx.service_account,
                            &mut objects,
                        )?;
                    }
                    renderer.render(
                        "microservice/workload.yaml.j2",
                        &value,
                        node,
                        &ms.name,
                        &ctx.name,
                        &mut objects,
                    )?;
                    if !ctx.ports.is_empty() {
                        renderer.render(
                            "microservice/service.yaml.j2",
                            &value,
                            node,
                            &ms.name,
                            &ctx.name,
                            &mut objects,
                        )?;
                    }
                }
            }
        }
        objects.sort_by_key(|o| kind_rank(&o.key.kind));
        nodes.push(NodeManifests {
            node: node.to_owned(),
            namespace: ns.to_owned(),
            objects,
        });
    }
    Ok(Manifests {
        inventory: inv.name.clone(),
        nodes,
    })
}

#[allow(clippy::too_many_arguments)]
fn microservice_ctx(
    renderer: &Renderer,
    ms: &Microservice,
    instance: i32,
    node: &str,
    ns: &str,
    pin: &str,
    registry_prefix: &str,
    device_name: &str,
    debug: &str,
    rabbitmq_url: &str,
) -> Result<MicroserviceCtx, RenderError> {
    let name = ms.instance_name(instance);
    let at = &ms.span;
    let obj = || format!("microservice {} ({name})", ms.name);
    // `<name>-NNN-srv` must be an RFC 1035 label: starts with a letter, ≤ 63.
    if !is_dns1123_label(&name)
        || name.len() + 4 > 63
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        return Err(invalid(
            at,
            obj(),
            format!(
                "{name:?} is not a valid object name: the name part must be lowercase letters, digits and '-', start with a letter, and at most 55 characters (objects are named <name>-NNN and <name>-NNN-srv)"
            ),
        ));
    }
    if ms
        .name
        .bytes()
        .any(|b| b.is_ascii_uppercase() || b.is_ascii_whitespace())
    {
        return Err(invalid(
            at,
            obj(),
            "the microservice name is the image name and must be lowercase without spaces",
        ));
    }
    if ms.tag.is_empty()
        || ms.tag.len() > 128
        || !ms
            .tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(invalid(
            at,
            obj(),
            format!("tag {:?} is not a valid image tag", ms.tag),
        ));
    }
    if !is_dns1123_subdomain(&ms.service_account) {
        return Err(invalid(
            at,
            obj(),
            format!(
                "serviceAccount {:?} is not a valid Kubernetes name",
                ms.service_account
            ),
        ));
    }
    if !ms.target_node.is_empty() && !is_label_value(&ms.target_node) {
        return Err(invalid(
            at,
            obj(),
            format!("targetNode {:?} is not a valid node name", ms.target_node),
        ));
    }
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for p in &ms.ports {
        let at = &p.span;
        if !is_port_name(&p.name) {
            return Err(invalid(
                at,
                obj(),
                format!(
                    "port name {:?} is invalid: 1–15 lowercase letters, digits and '-', with at least one letter",
                    p.name
                ),
            ));
        }
        if !(1..=65535).contains(&p.port) {
            return Err(invalid(
                at,
                obj(),
                format!("port {} is out of range 1–65535", p.port),
            ));
        }
        let protocol = if p.protocol.is_empty() {
            "TCP".to_owned()
        } else {
            p.protocol.clone()
        };
        if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            return Err(invalid(
                at,
                obj(),
                format!("protocol {protocol:?} must be TCP, UDP or SCTP"),
            ));
        }
        if ms.is_node_port() && p.node_port != 0 && !(30000..=32767).contains(&p.node_port) {
            return Err(invalid(
                at,
                obj(),
                format!(
                    "nodePort {} is outside the default NodePort range 30000–32767",
                    p.node_port
                ),
            ));
        }
        if !seen.insert((p.port, protocol.clone())) || !seen.insert((-1, p.name.clone())) {
            return Err(invalid(
                at,
                obj(),
                format!("port {} / name {:?} appears twice", p.port, p.name),
            ));
        }
        ports.push(PortCtx {
            name: p.name.clone(),
            protocol,
            port: p.port,
            node_port: p.node_port,
        });
    }
    let mut volumes = Vec::new();
    let config_host_path = format!("{AION_HOME}/{ns}/config");
    // AION_SERVICES (producer-side routing in the Rust client) finds the instance by its
    // QUEUE_TO, so it is set only when QUEUE_TO is ours (`<name>-NNN.out`) and the user did not
    // set AION_SERVICES: a file with its own queue names keeps working as it did.
    // Upstream's convention for a service that reads the config directory (data-sweeper) is
    // `/var/lib/aion/config:<host config dir>` in its own list: that mount is kept as it is,
    // and AION_SERVICES is set only when it is this namespace's config directory.
    let user_env = |key: &str| ms.env.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let queue_to_ours = user_env("QUEUE_TO").is_none_or(|v| *v == format!("{name}.out"));
    let user_config = ms
        .volume_mount_path_list
        .iter()
        .find(|v| v.container_path.trim_end_matches('/') == CONFIG_MOUNT);
    let services_mounted = queue_to_ours
        && user_env("AION_SERVICES").is_none()
        && user_config.is_none_or(|v| {
            v.host_path.trim_end_matches('/') == config_host_path.trim_end_matches('/')
        });
    let config_mount = (services_mounted && user_config.is_none()).then_some(CONFIG_MOUNT);
    let mut mounts = BTreeSet::from(["/var/lib/aion/Data".to_owned()]);
    mounts.extend(config_mount.map(str::to_owned));
    for (k, v) in ms.volume_mount_path_list.iter().enumerate() {
        let at = &v.span;
        if !v.container_path.starts_with('/') || !v.host_path.starts_with('/') {
            return Err(invalid(
                at,
                obj(),
                format!(
                    "volumeMountPathList entry {}:{} needs absolute paths (containerPath:hostPath[:Bidirectional])",
                    v.container_path, v.host_path
                ),
            ));
        }
        if v.bidirectional && !ms.privileged {
            return Err(invalid(
                at,
                obj(),
                format!(
                    "{}: Bidirectional mount propagation needs `privileged: yes` (Kubernetes rejects it otherwise)",
                    v.container_path
                ),
            ));
        }
        if !mounts.insert(v.container_path.trim_end_matches('/').to_owned()) {
            return Err(invalid(
                at,
                obj(),
                format!("mount path {} is used twice", v.container_path),
            ));
        }
        volumes.push(VolumeCtx {
            name: format!("data-{k}"),
            container_path: v.container_path.clone(),
            host_path: v.host_path.clone(),
            propagation: if v.bidirectional {
                "Bidirectional"
            } else {
                "None"
            },
        });
    }
    let env = env_list(
        ms,
        instance,
        device_name,
        debug,
        rabbitmq_url,
        services_mounted,
        ns,
    );
    for (k, _) in &env {
        if k.is_empty() || k.contains('=') || !k.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(invalid(
                at,
                obj(),
                format!("env name {k:?} is invalid (printable ASCII without '=' or spaces)"),
            ));
        }
    }
    let node_selector = if ms.target_node.is_empty() {
        pin.to_owned()
    } else {
        ms.target_node.clone()
    };
    let mut labels = renderer.base_labels(node, "microservice", ms.label_base());
    labels.push((LABEL_INSTANCE.into(), name.clone()));
    let image = format!("{registry_prefix}/{}:{}", ms.name, ms.tag);
    Ok(MicroserviceCtx {
        image_digest: renderer.digest_of(&image),
        image,
        ns: ns.to_owned(),
        labels,
        always: ms.always,
        startup: ms.startup,
        service_account: ms.service_account.clone(),
        runtime_class: ms.runtime_class_name.clone(),
        node_selector,
        command: ms.command.clone().filter(|c| !c.is_empty()),
        privileged: ms.privileged,
        ports,
        node_port: ms.is_node_port(),
        env,
        volumes,
        resources: ms.resources.as_ref().and_then(|r| {
            if r.requests.is_empty() && r.limits.is_empty() {
                None
            } else {
                Some(ResourcesCtx {
                    requests: r
                        .requests
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    limits: r
                        .limits
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
            }
        }),
        data_host_path: data_host_path(ns),
        config_host_path,
        config_mount,
        name,
    })
}

#[cfg(test)]
mod tests;
