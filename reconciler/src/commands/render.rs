//! `aion-reconcile render -i INV --out-dir DIR`: per-node manifest files, byte-for-byte
//! deterministic, for review or GitOps.

use std::path::{Path, PathBuf};

use aion_model::Inventory;
use anyhow::Context;

use crate::manifest::Manifests;
use crate::render::HostName;

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

/// Load the inventory and every host's `services.yml` (warnings printed, errors fatal), then
/// render. Shared by `render`, `diff`, `status` and the provisioning commands.
pub fn load_and_render(inventory: &Path) -> anyhow::Result<(Inventory, Manifests)> {
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
    let manifests = crate::render::render(&inv, &services)?;
    Ok((inv, manifests))
}
