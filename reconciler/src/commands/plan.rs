//! `aion-reconcile plan`: gather facts on every host (one SSH round trip each) and show what
//! `apply` would change, per host and resource. Nothing is changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use tokio::sync::Semaphore;

use crate::execute::{self, kube_steps::KubeCluster};
use crate::host::ssh::{SshHost, SshOptions};
use crate::plan::Plan;
use crate::plan_text;
use crate::roles::{self, HostSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Flags shared by `plan` and `apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Inventory file (native or Ansible-style YAML).
    #[arg(short, long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// Hosts handled at once (SSH connections, facts, applies).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Record unknown host keys in the inventory's known_hosts (changed keys are still refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// SSH connect timeout in seconds.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
    /// Keep each host's SSH connection open this many idle seconds after the run, for the
    /// next `plan`/`apply` to reuse (0: close at the end).
    #[arg(long, default_value_t = 60)]
    pub ssh_persist: u64,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Exit 0 when nothing would change, 2 when something would, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

/// Everything loaded and connected, ready to plan.
pub struct Prepared {
    pub inventory: aion_model::Inventory,
    pub specs: Vec<HostSpec>,
    pub hosts: BTreeMap<String, Result<Arc<SshHost>, String>>,
    pub cluster: KubeCluster,
    /// `<inventory dir>/.aion`: local lock, logs, SSH control sockets.
    pub state_dir: PathBuf,
}

/// Load the inventory, render the roles (duplicate hostnames and bad roles fail here, before
/// any connection), then connect to every host in parallel.
pub async fn prepare(c: &Common) -> anyhow::Result<Prepared> {
    let loaded = aion_model::inventory::load(&c.inventory)
        .with_context(|| format!("loading inventory {}", c.inventory.display()))?;
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
            c.inventory.display(),
            fatal.join("\n")
        );
    }
    let inventory = loaded.value;
    let specs = roles::load(&inventory)?;
    let flannel = roles::render_template(&inventory, "flannel.yaml")?;
    let cluster = KubeCluster::new(
        inventory.kubeconfig.clone(),
        vec![("flannel.yaml".into(), flannel)],
    );
    let state_dir = state_dir(&inventory.source);
    let opts = SshOptions {
        known_hosts: inventory.known_hosts.clone(),
        accept_new: c.accept_new_host_keys,
        connect_timeout: Duration::from_secs(c.connect_timeout),
        control_dir: state_dir.join("ssh"),
        persist: (c.ssh_persist > 0).then(|| Duration::from_secs(c.ssh_persist)),
    };
    let sem = Semaphore::new(c.parallel as usize);
    let conns = join_all(inventory.hosts.iter().map(|h| {
        let (sem, opts) = (&sem, &opts);
        async move {
            let _p = sem.acquire().await;
            let t = std::time::Instant::now();
            let conn = SshHost::connect(h, opts).await;
            tracing::debug!(host = %h.name, ms = t.elapsed().as_millis() as u64, "connected");
            (
                h.name.clone(),
                conn.map(Arc::new).map_err(|e| e.to_string()),
            )
        }
    }))
    .await;
    Ok(Prepared {
        inventory,
        specs,
        hosts: conns.into_iter().collect(),
        cluster,
        state_dir,
    })
}

pub fn state_dir(inventory: &Path) -> PathBuf {
    inventory.parent().unwrap_or(Path::new(".")).join(".aion")
}

/// Close every SSH master connection.
pub async fn close(hosts: BTreeMap<String, Result<Arc<SshHost>, String>>) {
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

pub fn print_plan(plan: &Plan, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Text => print!(
            "{}",
            plan_text::render_text(
                plan,
                plan_text::Style {
                    color: crate::output::use_color()
                }
            )
        ),
        Format::Json => println!("{}", serde_json::to_string_pretty(plan)?),
    }
    Ok(())
}

/// The cluster part of the plan: the rendered per-node manifests against the live cluster
/// (`cluster::plan`), once the master's admin kubeconfig has been fetched.
pub enum ClusterPart {
    /// No kubeconfig yet: the cluster is planned after the master is initialised.
    NotYet,
    Planned(Box<crate::cluster::ClusterPlan>),
}

pub async fn plan_cluster(inventory: &Path, kubeconfig: &Path) -> anyhow::Result<ClusterPart> {
    if !kubeconfig.exists() {
        return Ok(ClusterPart::NotYet);
    }
    let t = std::time::Instant::now();
    let (inv, manifests) = crate::commands::render::load_and_render(inventory)?;
    let client = crate::kubeclient::client_from(kubeconfig).await?;
    let plan = crate::cluster::plan(&client, &manifests, &inv).await?;
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "cluster part planned");
    Ok(ClusterPart::Planned(Box::new(plan)))
}

/// The host plan and the cluster part, planned at the same time (both are read-only; the
/// cluster part needs only the kubeconfig, not the host facts).
pub async fn plan_both(c: &Common, p: &Prepared) -> (Plan, anyhow::Result<ClusterPart>) {
    tokio::join!(
        execute::plan_all(&p.specs, &p.hosts, &p.cluster, c.parallel as usize),
        plan_cluster(&c.inventory, &p.inventory.kubeconfig)
    )
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

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let p = prepare(&args.common).await?;
        let (plan, cluster) = plan_both(&args.common, &p).await;
        close(p.hosts).await;
        let cluster_changes = matches!(&cluster, Ok(ClusterPart::Planned(c)) if c.has_changes());
        match args.common.output {
            Format::Text => {
                print_plan(&plan, Format::Text)?;
                match &cluster {
                    Ok(ClusterPart::NotYet) => {
                        println!(
                            "Cluster: planned after the master is initialised (no kubeconfig yet)"
                        )
                    }
                    Ok(ClusterPart::Planned(c)) => {
                        print!("{}", c.render_text(crate::output::use_color(), true))
                    }
                    Err(e) => println!("Cluster: cannot plan: {}", crate::output::chain(&**e)),
                }
            }
            Format::Json => {
                let c = match &cluster {
                    Ok(ClusterPart::Planned(c)) => serde_json::to_value(c)?,
                    Ok(ClusterPart::NotYet) => serde_json::Value::Null,
                    Err(e) => serde_json::json!({"error": crate::output::chain(&**e)}),
                };
                let v = serde_json::json!({"hosts": plan, "cluster": c});
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        Ok(if plan.counts.failed_hosts > 0 || cluster.is_err() {
            1
        } else if args.detailed_exitcode && (plan.has_changes() || cluster_changes) {
            2
        } else {
            0
        })
    })
}
