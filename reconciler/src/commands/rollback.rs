//! `aion-reconcile rollback`: the cluster back to a recorded revision (default: the previous
//! applied one). Shows the diff from the live cluster to that revision — the same diff as
//! `diff` — and applies it with the same server-side apply and prune as `apply`, after `--yes`
//! or a "yes" on the terminal. The rollback is recorded as a new revision. Host provisioning is
//! not touched. The work is [`crate::reconcile::rollback`].

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::history::RollbackPlan;
use crate::commands::plan::Common;
use crate::output::OutputFormat;
use crate::reconcile::{self, RollbackOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// The revision to return to (`history` lists them); default: the previous applied one.
    #[arg(long, value_name = "REVISION")]
    pub to: Option<u32>,
    /// Apply without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Kubeconfig (default: $KUBECONFIG, else the inventory's `kubeconfig`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// A lock on the master older than this many seconds is considered stale and taken over.
    #[arg(long, default_value_t = 7200)]
    pub lock_stale_after: u64,
    /// Wait until the revision's workloads are ready.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub timeout: u64,
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let json = args.common.output == OutputFormat::Json;
    let yes = args.yes;
    let confirm = move |p: &RollbackPlan| -> anyhow::Result<bool> {
        if !json {
            println!(
                "Rollback to revision {} ({}, {}): only cluster objects change; host provisioning is not touched.",
                p.target.number,
                p.target.describe(),
                p.target.time
            );
            print!("{}", p.plan.render_text(crate::output::use_color(), true));
        }
        if !p.plan.has_changes() || yes {
            return Ok(true);
        }
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "rollback to revision {} needs confirmation: re-run with --yes",
                p.target.number
            );
        }
        eprint!(
            "Roll back to revision {}? Only 'yes' is accepted: ",
            p.target.number
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        Ok(answer.trim() == "yes")
    };
    let r = RollbackOptions {
        to: args.to,
        kubeconfig: args.kubeconfig.clone(),
        lock_stale_after: Duration::from_secs(args.lock_stale_after),
        wait: args.wait.then(|| Duration::from_secs(args.timeout)),
        render: crate::progress::Render::for_stderr(json),
    };
    let rt = crate::kubeclient::runtime()?;
    let outcome = rt.block_on(reconcile::rollback(&args.common.options(), &r, &confirm))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!("{}", outcome.summary);
        match &outcome.readiness {
            Some(Ok(s)) => println!("{s}"),
            Some(Err(e)) => println!("wait: {e}"),
            None => {}
        }
    }
    Ok(if outcome.ok() { 0 } else { 1 })
}
