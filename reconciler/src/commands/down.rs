//! `aion-reconcile down` (upstream `aion-stop.sh`): delete everything this inventory manages in
//! the cluster (objects with our ownership labels), in reverse apply order, and its revision
//! history.

use std::path::PathBuf;

use crate::cluster::history::History;
use crate::cluster::{self, ClusterApplyOptions};
use crate::kubeclient;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inventory file.
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Kubeconfig (default: $KUBECONFIG, else the inventory's `kubeconfig`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Only list what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let inv = crate::reconcile::load_inventory(&args.inventory)?;
    let kubeconfig = kubeclient::resolve_kubeconfig(args.kubeconfig.as_deref(), &inv.kubeconfig);
    let rt = kubeclient::runtime()?;
    rt.block_on(async {
        let client = kubeclient::client_from(&kubeconfig).await?;
        if args.dry_run {
            let owned = cluster::list_owned(&client, &inv.name).await?;
            for (k, _) in &owned {
                println!("- {k}");
            }
            println!("{} object(s) would be deleted", owned.len());
            return anyhow::Ok(());
        }
        let opts = ClusterApplyOptions {
            progress: Some(crate::progress::cluster_lines(
                crate::progress::Render::for_stderr(false),
            )),
            ..ClusterApplyOptions::default()
        };
        let deleted = cluster::down(&client, &inv.name, &opts).await?;
        // The history goes too: it describes an installation that is no longer there.
        let revisions = History::of(&client, &inv).delete_all().await?;
        println!(
            "{} object(s) and {revisions} revision(s) of inventory {} deleted",
            deleted.len(),
            inv.name
        );
        anyhow::Ok(())
    })?;
    Ok(0)
}
