//! `aion-reconcile diff`: what `apply` would change in the cluster, from a server-side dry-run
//! apply compared with the live objects. Exit codes as `kubectl diff`: 0 no differences,
//! 1 differences, >1 error; with `--detailed-exitcode` (Terraform): 0 none, 2 differences, 1 error.

use crate::output::OutputFormat;
use std::path::PathBuf;

use crate::cluster;
use crate::cluster::history::History;
use crate::kubeclient;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inventory file.
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Kubeconfig (default: $KUBECONFIG, else the inventory's `kubeconfig`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Exit 0 no changes, 2 changes, 1 error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Compare the live cluster with revision N (`history` lists them) instead of what the
    /// inventory renders today: what `rollback --to N` would change.
    #[arg(long, value_name = "N")]
    pub revision: Option<u32>,
    /// API requests in flight.
    #[arg(long, default_value_t = cluster::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    match diff(args) {
        Ok(changed) => Ok(match (changed, args.detailed_exitcode) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        }),
        // Under --detailed-exitcode an error is 1 (the CLI maps `diff` errors to 2 otherwise).
        Err(e) if args.detailed_exitcode => {
            crate::output::print_error(&e);
            Ok(1)
        }
        Err(e) => Err(e),
    }
}

fn diff(args: &Args) -> anyhow::Result<bool> {
    // Against a revision, today's services.yml files play no part (they may not even load).
    let (inv, manifests) = match args.revision {
        Some(_) => (crate::reconcile::load_inventory(&args.inventory)?, None),
        None => {
            let (inv, m) = crate::reconcile::load_and_render(&args.inventory)?;
            (inv, Some(m))
        }
    };
    let kubeconfig = kubeclient::resolve_kubeconfig(args.kubeconfig.as_deref(), &inv.kubeconfig);
    let rt = kubeclient::runtime()?;
    let plan = rt.block_on(async {
        let client = kubeclient::client_from(&kubeconfig).await?;
        let manifests = match (manifests, args.revision) {
            (Some(m), _) => m,
            (None, n) => History::of(&client, &inv).load(n).await?.manifests(),
        };
        anyhow::Ok(cluster::plan_with(&client, &manifests, &inv.name, args.concurrency).await?)
    })?;
    match args.output {
        OutputFormat::Text => print!("{}", plan.render_text(crate::output::use_color(), true)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
    }
    Ok(plan.has_changes())
}
