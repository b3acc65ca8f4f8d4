//! Command line: raw flags (clap) → each command validates its own config → run → one place
//! (`main`) maps the outcome or the error to an exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;

#[derive(Debug, Parser)]
#[command(name = "aion-reconcile", version, about = "Provision AION edge hosts and reconcile the cluster", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check services.yml files (and an inventory) against the schema and upstream's rules.
    Validate(commands::validate::Args),
    /// Show what `apply` would change on every host and in the cluster.
    Plan(commands::plan::Args),
    /// Converge every host of the inventory, then the cluster.
    Apply(commands::apply::Args),
    /// Show what would change in the cluster (server-side dry-run against live objects).
    Diff(commands::diff::Args),
    /// Write per-node manifests to a directory (deterministic).
    Render(commands::render::Args),
    /// Desired vs observed, per node and microservice.
    Status(commands::status::Args),
    /// Delete everything aion-reconcile manages in the cluster, in reverse order.
    Down(commands::down::Args),
    /// The cluster revisions recorded by `apply` and `rollback`, and what each changed.
    History(commands::history::Args),
    /// Return the cluster to a recorded revision (shows the diff, then applies it).
    Rollback(commands::rollback::Args),
    /// Draw the kanban graph (devices, microservice instances, nextService) as SVG, DOT or Mermaid.
    Graph(commands::graph::Args),
    /// Print the URL a device of another installation (listed under `peers`) sends kanbans here with.
    PeerUrl(commands::peers::PeerUrlArgs),
    /// Store, from stdin, the URL another installation issued to one of this installation's devices.
    RemoteCredentials(commands::peers::RemoteCredentialsArgs),
}

impl Command {
    /// Exit code for an error (not a finding) in this command. `validate` and `diff` follow
    /// their conventions (2 / >1 = could not run); everything else uses 1, like Terraform.
    fn error_exit_code(&self) -> u8 {
        match self {
            Command::Validate(_) | Command::Diff(_) => 2,
            _ => 1,
        }
    }
}

/// Entry point of the binary. Every command returns its own success exit code (e.g. 2 for
/// "changes present" under `--detailed-exitcode`); errors are printed once, here.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::output::init_tracing();
    let result = match &cli.command {
        Command::Validate(a) => commands::validate::run(a),
        Command::Plan(a) => commands::plan::run(a),
        Command::Apply(a) => commands::apply::run(a),
        Command::Diff(a) => commands::diff::run(a),
        Command::Render(a) => commands::render::run(a),
        Command::Status(a) => commands::status::run(a),
        Command::Down(a) => commands::down::run(a),
        Command::Graph(a) => commands::graph::run(a),
        Command::PeerUrl(a) => commands::peers::peer_url(a),
        Command::RemoteCredentials(a) => commands::peers::remote_credentials(a),
        Command::History(a) => commands::history::run(a),
        Command::Rollback(a) => commands::rollback::run(a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            crate::output::print_error(&err);
            ExitCode::from(cli.command.error_exit_code())
        }
    }
}
