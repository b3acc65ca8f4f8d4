//! Roles: data files (`roles/*.yml`, compiled into the binary) that list typed [`Resource`]s.
//!
//! A role file is rendered with minijinja (strict: an unknown variable is an error) against the
//! host's variables ([`host_context`]), then parsed as YAML. Loops and conditions live in the
//! template; what each resource means lives in the engine ([`resource`]).
//!
//! ```yaml
//! name: docker
//! hosts: all            # all | master | worker
//! resources:
//!   - package: {names: [docker.io]}
//!   - file: {path: /etc/docker/daemon.json, content: "...", notify: docker}
//! cluster:              # master roles only: steps done through the cluster API afterwards
//!   - apply_manifest: flannel.yaml
//! ```

pub mod resource;

use std::collections::BTreeMap;

use aion_model::inventory::{Host, Inventory, Role};
use serde::{Deserialize, Serialize};

use crate::change::ClusterStep;

pub use resource::{LocalFacts, Resource, ResourceError};

/// The built-in roles, in the order they run on a host.
pub const BUILTIN: &[(&str, &str)] = &[
    ("hostname", include_str!("../../../roles/hostname.yml")),
    (
        "directories",
        include_str!("../../../roles/directories.yml"),
    ),
    ("kernel", include_str!("../../../roles/kernel.yml")),
    ("containerd", include_str!("../../../roles/containerd.yml")),
    ("docker", include_str!("../../../roles/docker.yml")),
    ("kubernetes", include_str!("../../../roles/kubernetes.yml")),
    ("master", include_str!("../../../roles/master.yml")),
    ("worker", include_str!("../../../roles/worker.yml")),
    ("services", include_str!("../../../roles/services.yml")),
];

/// The roles whose changes run after the images phase: from the Kubernetes packages on, the
/// kubelet starts pods (kubeadm's, Flannel's), so a device without a registry must have their
/// images by then; the roles before them set up the container runtime the images go into.
pub const AFTER_IMAGES: &[&str] = &["kubernetes", "master", "worker", "services"];

/// Templates available to `cluster` steps.
pub const TEMPLATES: &[(&str, &str)] = &[(
    "flannel.yaml",
    include_str!("../../../templates/flannel.yaml"),
)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppliesTo {
    All,
    Master,
    Worker,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    name: String,
    hosts: AppliesTo,
    #[serde(default)]
    resources: Option<Vec<Resource>>,
    #[serde(default)]
    cluster: Option<Vec<ClusterStep>>,
}

/// One resource with its identity (`role/kind:key`).
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub role: String,
    pub resource: Resource,
}

/// Everything one host should be.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub host: Host,
    pub items: Vec<Item>,
    pub cluster: Vec<ClusterStep>,
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("role {role} for host {host}: template: {message}")]
    Template {
        role: String,
        host: String,
        message: String,
    },
    #[error("role {role} for host {host}: {message}")]
    Yaml {
        role: String,
        host: String,
        message: String,
    },
    #[error("host {host}: {source}")]
    Resource {
        host: String,
        #[source]
        source: ResourceError,
    },
    #[error(
        "hosts {first} and {second} would both get the hostname {hostname:?}: hostnames must be unique"
    )]
    DuplicateHostname {
        hostname: String,
        first: String,
        second: String,
    },
    #[error("host {host}: resource {id} appears twice")]
    DuplicateId { host: String, id: String },
    #[error("the inventory has no master host")]
    NoMaster,
    #[error("host {host}: {source}")]
    Services {
        host: String,
        #[source]
        source: aion_model::diag::LoadError,
    },
}

/// Render a template (`templates/`) for the master into its objects.
pub fn render_template(inv: &Inventory, name: &str) -> Result<Vec<serde_json::Value>, RoleError> {
    let master = inv.masters().next().ok_or(RoleError::NoMaster)?;
    let err = |message: String| RoleError::Template {
        role: name.to_string(),
        host: master.name.clone(),
        message,
    };
    let text = TEMPLATES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| err("no such template".into()))?;
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let rendered = env
        .render_str(
            text,
            minijinja::Value::from(minijinja::value::Serde(host_context(inv, master))),
        )
        .map_err(|e| err(format!("{e:#}")))?;
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&rendered).map_err(|e| err(e.to_string()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The variables a role template sees for `host`.
pub fn host_context(inv: &Inventory, host: &Host) -> serde_json::Value {
    let master = inv.masters().next();
    let v = &host.vars;
    let minor = v
        .kubernetes_version
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    serde_json::json!({
        "host": host.name,
        "address": host.address,
        "role": host.role.to_string(),
        "mode": inv.mode.to_string(),
        "user": host.ssh.user,
        "namespace": v.namespace,
        "gpu": v.gpu,
        "image_repository": v.image_repository,
        "pause_image": crate::kubeadm::pause_image(&v.image_repository),
        "cgroup_driver": v.cgroup_driver.as_str(),
        "images": v.images,
        "flannel_iface": v.flannel_iface,
        "kubernetes_version": v.kubernetes_version,
        "kubernetes_minor": minor,
        "pod_cidr": v.pod_cidr,
        "extra_sans": v.extra_sans,
        "master_name": master.map(|m| m.name.clone()),
        "master_address": master.map(|m| m.address.clone()),
        "kubeconfig": inv.kubeconfig.display().to_string(),
        "services_file": host.services.as_ref().map(|p| p.display().to_string()),
        "data_sweeper_file": host.data_sweeper.as_ref().map(|p| p.display().to_string()),
    })
}

/// Another host's `services.yml` that a microservice reads on this host.
///
/// A microservice with `targetNode` runs in its own host's namespace but on the target node,
/// and mounts `/var/lib/aion/<namespace>/config` from the node it runs on (a hostPath): the
/// target node needs that namespace's `services.yml` too, or the kanban client cannot start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestConfig {
    /// The host whose services.yml places the microservice here.
    pub owner: String,
    pub namespace: String,
    pub services_file: String,
}

/// For every host, the other namespaces' configs it must hold (see [`GuestConfig`]), keyed by
/// the target host's inventory name (= its node name). Each services.yml is read once. A
/// target node that is not in the inventory gets nothing (it is not provisioned by us), and a
/// namespace the target host owns itself keeps its own file.
pub fn guest_configs(inv: &Inventory) -> Result<BTreeMap<String, Vec<GuestConfig>>, RoleError> {
    let mut guests: BTreeMap<String, BTreeMap<String, GuestConfig>> = BTreeMap::new();
    for owner in &inv.hosts {
        let Some(file) = &owner.services else {
            continue;
        };
        let loaded = aion_model::services::load(file).map_err(|source| RoleError::Services {
            host: owner.name.clone(),
            source,
        })?;
        for ms in &loaded.value.microservices {
            let Some(target) = inv
                .hosts
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(&ms.target_node))
            else {
                continue;
            };
            if target.name == owner.name || target.vars.namespace == owner.vars.namespace {
                continue;
            }
            guests
                .entry(target.name.clone())
                .or_default()
                .entry(owner.vars.namespace.clone())
                .or_insert_with(|| GuestConfig {
                    owner: owner.name.clone(),
                    namespace: owner.vars.namespace.clone(),
                    services_file: file.display().to_string(),
                });
        }
    }
    Ok(guests
        .into_iter()
        .map(|(host, by_ns)| (host, by_ns.into_values().collect()))
        .collect())
}

/// Render and parse the built-in roles for every host of `inv` (pure but for reading
/// `source:` files), checking hostname uniqueness across the inventory.
pub fn load(inv: &Inventory) -> Result<Vec<HostSpec>, RoleError> {
    load_with(inv, BUILTIN)
}

/// [`load`] with a given set of role files (tests).
pub fn load_with(inv: &Inventory, roles: &[(&str, &str)]) -> Result<Vec<HostSpec>, RoleError> {
    if inv.masters().next().is_none() {
        return Err(RoleError::NoMaster);
    }
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.add_filter("sh", |s: String| crate::shell::sh_quote(&s));
    let mut specs = Vec::new();
    let mut hostnames: BTreeMap<String, String> = BTreeMap::new();
    let guests = guest_configs(inv)?;
    for host in &inv.hosts {
        let mut vars = host_context(inv, host);
        vars["guest_configs"] =
            serde_json::json!(guests.get(&host.name).cloned().unwrap_or_default());
        let ctx = minijinja::Value::from(minijinja::value::Serde(vars));
        let mut spec = HostSpec {
            host: host.clone(),
            items: Vec::new(),
            cluster: Vec::new(),
        };
        let mut ids = std::collections::BTreeSet::new();
        for (role, text) in roles {
            let rendered = env
                .render_str(text, ctx.clone())
                .map_err(|e| RoleError::Template {
                    role: role.to_string(),
                    host: host.name.clone(),
                    message: format!("{e:#}"),
                })?;
            let file: RoleFile =
                serde_saphyr::from_str(&rendered).map_err(|e| RoleError::Yaml {
                    role: role.to_string(),
                    host: host.name.clone(),
                    message: e.to_string(),
                })?;
            let applies = match file.hosts {
                AppliesTo::All => true,
                AppliesTo::Master => host.role == Role::Master,
                AppliesTo::Worker => host.role == Role::Worker,
            };
            if !applies {
                continue;
            }
            for mut resource in file.resources.unwrap_or_default() {
                let id = format!("{}/{}:{}", file.name, resource.kind(), resource.key());
                resource
                    .validate(&id)
                    .map_err(|source| RoleError::Resource {
                        host: host.name.clone(),
                        source,
                    })?;
                if let Resource::Hostname { name } = &resource
                    && let Some(first) =
                        hostnames.insert(name.to_ascii_lowercase(), host.name.clone())
                {
                    return Err(RoleError::DuplicateHostname {
                        hostname: name.clone(),
                        first,
                        second: host.name.clone(),
                    });
                }
                if !ids.insert(id.clone()) {
                    return Err(RoleError::DuplicateId {
                        host: host.name.clone(),
                        id,
                    });
                }
                spec.items.push(Item {
                    id,
                    role: file.name.clone(),
                    resource,
                });
            }
            spec.cluster.extend(file.cluster.unwrap_or_default());
        }
        specs.push(spec);
    }
    Ok(specs)
}
