//! `aion-reconcile render -i INV --out-dir DIR`: per-node manifest files, byte-for-byte
//! deterministic, for review or GitOps.

use std::path::PathBuf;

use anyhow::Context;

use crate::reconcile::load_and_render;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inventory file (native or Ansible-style YAML).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Directory for `<node>.yaml` files (created if missing; other files are left alone).
    #[arg(long)]
    pub out_dir: PathBuf,
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let (_, manifests) = load_and_render(&args.inventory)?;
    let written = manifests
        .write_to(&args.out_dir)
        .with_context(|| format!("writing manifests to {}", args.out_dir.display()))?;
    let count: usize = manifests.nodes.iter().map(|n| n.objects.len()).sum();
    for p in &written {
        println!("{}", p.display());
    }
    eprintln!("{count} objects for {} node(s)", manifests.nodes.len());
    Ok(0)
}
