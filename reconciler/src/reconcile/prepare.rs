//! Loading, preparing (roles rendered, hosts connected) and planning: what `plan`, `apply`
//! and the read-only commands share.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aion_model::Inventory;
use anyhow::Context as _;
use futures::future::join_all;
use tokio::sync::Semaphore;

use crate::cluster::bootstrap::KubeCluster;
use crate::cluster::{self, ClusterPlan};
use crate::execute::{self};
use crate::host::Connections;
use crate::host::ssh::{SshHost, SshOptions};
use crate::images;
use crate::kubeclient;
use crate::manifest::Manifests;
use crate::plan::Plan;
use crate::render::HostName;
use crate::roles::{self, HostSpec};

/// What `plan` and `apply` need to reach the hosts (their shared flags, as values).
#[derive(Debug, Clone)]
pub struct Options {
    /// Inventory file (native or Ansible-style YAML).
    pub inventory: PathBuf,
    /// Hosts handled at once (SSH connections, facts, applies).
    pub parallel: usize,
    /// Record unknown host keys in the inventory's known_hosts (changed keys are still refused).
    pub accept_new_host_keys: bool,
    pub connect_timeout: Duration,
    /// Keep each host's SSH connection open this long after the run (None: close at the end).
    pub ssh_persist: Option<Duration>,
    /// `apply --max-upload-rate`: one cap on the bytes per second sent to all hosts together.
    pub upload_limit: Option<Arc<crate::host::rate::RateLimit>>,
}

impl Options {
    pub(super) fn ssh_options(&self, inventory: &Inventory, state_dir: &Path) -> SshOptions {
        SshOptions {
            known_hosts: inventory.known_hosts.clone(),
            accept_new: self.accept_new_host_keys,
            connect_timeout: self.connect_timeout,
            control_dir: state_dir.join("ssh"),
            persist: self.ssh_persist,
            upload_limit: self.upload_limit.clone(),
        }
    }
}

/// Load the inventory alone (warnings printed, errors fatal): for the commands that work from
/// what is in the cluster (`history`, `rollback`, `diff --revision`, `down`), which must work
/// even when today's `services.yml` files do not.
pub fn load_inventory(inventory: &Path) -> anyhow::Result<Inventory> {
    // (every load error names the file already)
    let loaded = aion_model::inventory::load(inventory)?;
    report(&loaded.diagnostics, inventory)?;
    Ok(loaded.value)
}

/// Load the inventory and every host's `services.yml` (warnings printed, errors fatal), then
/// render. Shared by `render`, `diff`, `status` and the provisioning commands.
pub fn load_and_render(inventory: &Path) -> anyhow::Result<(Inventory, Manifests)> {
    let (inv, manifests, _) = load_render_catalog(inventory)?;
    Ok((inv, manifests))
}

/// [`load_and_render`], and the images of `imageSources` (None without them): their digests
/// are rendered as the pod templates' [`crate::render::IMAGE_DIGEST_ANNOTATION`].
fn load_render_catalog(
    inventory: &Path,
) -> anyhow::Result<(Inventory, Manifests, Option<images::Catalog>)> {
    let loaded = aion_model::inventory::load(inventory)?;
    report(&loaded.diagnostics, inventory)?;
    let inv = loaded.value;
    let mut services: Vec<(HostName, aion_model::ServicesFile)> = Vec::new();
    for host in &inv.hosts {
        if let Some(path) = &host.services {
            let loaded = aion_model::services::load(path)
                .with_context(|| format!("services.yml of host {}", host.name))?;
            report(&loaded.diagnostics, path)?;
            let semantic = aion_model::validate::services(&loaded.value, Some(&inv));
            report(&semantic, path)?;
            services.push((host.name.clone(), loaded.value));
        }
    }
    let mut catalog = if inv.image_sources.is_empty() {
        None
    } else {
        let files: Vec<PathBuf> = inv
            .image_sources
            .iter()
            .filter(|s| s.registry.is_none())
            .map(|s| s.path.clone())
            .collect();
        let mut c = images::read_sources(&files)?;
        c.sources = inv.image_sources.iter().map(|s| s.path.clone()).collect();
        Some(c)
    };
    let digests = |c: &Option<images::Catalog>| {
        c.iter()
            .flat_map(|c| c.images.iter())
            .map(|(r, i)| (r.clone(), i.digest.clone()))
            .collect()
    };
    let mut manifests = crate::render::render_with_digests(&inv, &services, &digests(&catalog))?;
    // A registry source: the images the hosts need that no file source has, read from the
    // registry serving their domain (manifests and configs only), then rendered again with
    // their digests.
    let registries: Vec<images::Registry> = inv
        .image_sources
        .iter()
        .filter_map(|s| s.registry.as_deref().map(images::Registry::new))
        .collect();
    if let Some(c) = catalog.as_mut().filter(|_| !registries.is_empty()) {
        let needs = images::with_node_images(&inv, images::needed(&manifests));
        let missing: BTreeSet<String> = needs
            .values()
            .flatten()
            .filter(|n| c.get(&n.reference).is_none())
            .map(|n| images::normalize(&n.reference))
            .collect();
        let cache = state_dir(inventory).join(REGISTRY_CACHE);
        let found = images::read_images(&registries, &missing, &cache)?;
        if !found.is_empty() {
            for img in found {
                c.images.entry(img.reference.clone()).or_insert(img);
            }
            manifests = crate::render::render_with_digests(&inv, &services, &digests(&catalog))?;
        }
    }
    Ok((inv, manifests, catalog))
}

/// Print diagnostics on stderr; any error fails.
fn report(diags: &[aion_model::Diagnostic], what: &Path) -> anyhow::Result<()> {
    let mut errors = 0;
    for d in diags {
        eprintln!("{d}");
        if d.is_error() {
            errors += 1;
        }
    }
    if errors > 0 {
        anyhow::bail!(
            "{}: {errors} error(s); run `aion-reconcile validate` for details",
            what.display()
        );
    }
    Ok(())
}

/// Everything loaded and connected, ready to plan.
pub struct Prepared {
    pub inventory: aion_model::Inventory,
    pub specs: Vec<HostSpec>,
    pub hosts: Connections<SshHost>,
    pub cluster: KubeCluster,
    /// `<inventory dir>/.aion`: local lock, logs, SSH control sockets.
    pub state_dir: PathBuf,
    /// host → the images its pods run, resolved in `imageSources` (empty without them).
    pub images: images::Wanted,
}

/// Load the inventory, render the roles (duplicate hostnames and bad roles fail here, before
/// any connection), then connect to every host in parallel.
pub async fn prepare(o: &Options) -> anyhow::Result<Prepared> {
    let loaded = aion_model::inventory::load(&o.inventory)?;
    let mut fatal = Vec::new();
    for d in &loaded.diagnostics {
        if d.is_error() {
            fatal.push(d.to_string());
        } else {
            eprintln!("{d}");
        }
    }
    if !fatal.is_empty() {
        anyhow::bail!(
            "inventory {} has errors:\n{}",
            o.inventory.display(),
            fatal.join("\n")
        );
    }
    let inventory = loaded.value;
    let specs = roles::load(&inventory)?;
    // Images: an image no source has fails here, before any connection.
    let images = wanted_images(&o.inventory, &inventory)?;
    let flannel = roles::render_template(&inventory, "flannel.yaml")?;
    let cluster = KubeCluster::new(
        inventory.kubeconfig.clone(),
        vec![("flannel.yaml".into(), flannel)],
    );
    let state_dir = state_dir(&inventory.source);
    let opts = o.ssh_options(&inventory, &state_dir);
    let sem = Semaphore::new(o.parallel);
    let conns = join_all(inventory.hosts.iter().map(|h| {
        let (sem, opts) = (&sem, &opts);
        async move {
            let _p = sem.acquire().await;
            let t = std::time::Instant::now();
            let conn = SshHost::connect(h, opts).await;
            tracing::debug!(host = %h.name, ms = t.elapsed().as_millis() as u64, "connected");
            (h.name.clone(), conn.map(Arc::new).map_err(Arc::new))
        }
    }))
    .await;
    Ok(Prepared {
        inventory,
        specs,
        hosts: conns.into_iter().collect(),
        cluster,
        state_dir,
        images,
    })
}

/// Each host's images from the inventory's `imageSources` (none without them): the node's own
/// (kubeadm's, Flannel's) and those of the pods the rendered manifests put on it, found in the
/// sources. Every image no source has
/// is reported (host, object, reference), and nothing goes on.
pub fn wanted_images(path: &Path, inventory: &Inventory) -> anyhow::Result<images::Wanted> {
    if inventory.image_sources.is_empty() {
        return Ok(images::Wanted::new());
    }
    let (_, manifests, catalog) = load_render_catalog(path)?;
    let Some(catalog) = catalog else {
        return Ok(images::Wanted::new());
    };
    let needs = images::with_node_images(inventory, images::needed(&manifests));
    images::resolve(&needs, &catalog).map_err(|errors| {
        anyhow::anyhow!(
            "{} image(s) in no image source; nothing was sent:\n{}",
            errors.len(),
            errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// Under [`state_dir`]: the blobs read from registry sources (manifests and configs at plan,
/// layers at apply), by digest, each verified before it is renamed into place.
pub const REGISTRY_CACHE: &str = "registry-blobs";

pub fn state_dir(inventory: &Path) -> PathBuf {
    inventory.parent().unwrap_or(Path::new(".")).join(".aion")
}

/// Close every SSH master connection.
pub async fn close(hosts: Connections<SshHost>) {
    join_all(
        hosts
            .into_values()
            .filter_map(Result::ok)
            .map(|h| async move {
                if let Ok(h) = Arc::try_unwrap(h) {
                    h.close().await;
                }
            }),
    )
    .await;
}

/// The cluster part of the plan: the rendered per-node manifests against the live cluster
/// (`cluster::plan`), once the master's admin kubeconfig has been fetched.
pub enum ClusterPart {
    /// No kubeconfig yet: the cluster is planned after the master is initialised.
    NotYet,
    Planned(Box<ClusterPlan>),
}

pub async fn plan_cluster(inventory: &Path, kubeconfig: &Path) -> anyhow::Result<ClusterPart> {
    if !kubeconfig.exists() {
        return Ok(ClusterPart::NotYet);
    }
    let t = std::time::Instant::now();
    let (inv, manifests) = load_and_render(inventory)?;
    let client = kubeclient::client_from(kubeconfig).await?;
    let plan = cluster::plan(&client, &manifests, &inv).await?;
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "cluster part planned");
    Ok(ClusterPart::Planned(Box::new(plan)))
}

/// The host plan and the cluster part, planned at the same time (both are read-only; the
/// cluster part needs only the kubeconfig, not the host facts).
pub async fn plan_both(o: &Options, p: &Prepared) -> (Plan, anyhow::Result<ClusterPart>) {
    tokio::join!(
        plan_hosts(o, p),
        plan_cluster(&o.inventory, &p.inventory.kubeconfig)
    )
}

/// The host plan: every host's facts against its roles, images and cluster steps.
pub async fn plan_hosts(o: &Options, p: &Prepared) -> Plan {
    execute::plan_all(
        &p.specs,
        &p.hosts,
        &p.cluster,
        o.parallel,
        &p.images,
        p.inventory.previous_images,
        &images::routes(&p.inventory),
    )
    .await
}

/// `plan`: connect, plan both parts, close. Nothing is changed.
pub async fn plan(o: &Options) -> anyhow::Result<(Plan, anyhow::Result<ClusterPart>)> {
    let p = prepare(o).await?;
    let (plan, cluster) = plan_both(o, &p).await;
    close(p.hosts).await;
    Ok((plan, cluster))
}

/// Nothing for `apply` to do: every host planned without changes and the cluster part
/// planned without changes. Then: the cluster part's summary line.
pub fn nothing_to_do(plan: &Plan, cluster: &anyhow::Result<ClusterPart>) -> Option<String> {
    match cluster {
        Ok(ClusterPart::Planned(c))
            if !plan.has_changes() && plan.counts.failed_hosts == 0 && !c.has_changes() =>
        {
            Some(c.summary())
        }
        _ => None,
    }
}
