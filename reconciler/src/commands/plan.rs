//! `aion-reconcile plan`: gather facts on every host (one SSH round trip each) and show what
//! `apply` would change, per host and resource, and in the cluster. Nothing is changed. The
//! planning is [`crate::reconcile`]'s; this module parses the flags and prints.

use crate::output::OutputFormat;
use std::path::PathBuf;
use std::time::Duration;

use crate::plan::Plan;
use crate::plan_text;
use crate::reconcile::{self, ClusterPart};

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
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl Common {
    /// The flags as [`reconcile::Options`].
    pub fn options(&self) -> reconcile::Options {
        reconcile::Options {
            inventory: self.inventory.clone(),
            parallel: self.parallel as usize,
            accept_new_host_keys: self.accept_new_host_keys,
            connect_timeout: Duration::from_secs(self.connect_timeout),
            ssh_persist: (self.ssh_persist > 0).then(|| Duration::from_secs(self.ssh_persist)),
            upload_limit: None,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Exit 0 when nothing would change, 2 when something would, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

pub fn print_plan(plan: &Plan, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Text => print!(
            "{}",
            plan_text::render_text(
                plan,
                plan_text::Style {
                    color: crate::output::use_color()
                }
            )
        ),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(plan)?),
    }
    Ok(())
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (plan, cluster) = reconcile::plan(&args.common.options()).await?;
        let cluster_changes = matches!(&cluster, Ok(ClusterPart::Planned(c)) if c.has_changes());
        match args.common.output {
            OutputFormat::Text => {
                print_plan(&plan, OutputFormat::Text)?;
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
            OutputFormat::Json => {
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
