//! `aion-reconcile status`: per node and microservice, desired vs observed (replicas ready, job
//! complete, pending, image pull errors) and each pod's phase and node.

use std::path::PathBuf;

use crate::cluster::{self, Readiness};
use crate::kubeclient;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inventory file.
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Kubeconfig (default: $KUBECONFIG, else the inventory's `kubeconfig`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = super::diff::Format::Text)]
    pub output: super::diff::Format,
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let (inv, manifests) = crate::reconcile::load_and_render(&args.inventory)?;
    let kubeconfig = kubeclient::resolve_kubeconfig(args.kubeconfig.as_deref(), &inv.kubeconfig);
    let rt = kubeclient::runtime()?;
    let rows = rt.block_on(async {
        let client = kubeclient::client_from(&kubeconfig).await?;
        anyhow::Ok(cluster::status(&client, &manifests, cluster::DEFAULT_CONCURRENCY).await?)
    })?;
    if args.output == super::diff::Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let headers = [
        "NODE",
        "MICROSERVICE",
        "OBJECT",
        "DESIRED",
        "OBSERVED",
        "PODS",
        "STATE",
    ];
    let mut table: Vec<[String; 7]> = Vec::new();
    for r in &rows {
        let state = match &r.readiness {
            Readiness::Ready => "ready".to_owned(),
            Readiness::Pending(m) => format!("pending: {m}"),
            Readiness::Failed(m) => format!("failed: {m}"),
        };
        let state = if r.problems.is_empty() {
            state
        } else {
            format!("{state}; {}", r.problems.join("; "))
        };
        // Where each pod runs and in which phase: `Running@edge-1`, `Pending@-` (unscheduled).
        let pods = if r.pods.is_empty() {
            "-".to_owned()
        } else {
            r.pods
                .iter()
                .map(|p| {
                    let node = if p.node.is_empty() { "-" } else { &p.node };
                    format!("{}@{node}", p.phase)
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        table.push([
            r.node.clone(),
            r.owner.clone(),
            r.key.to_string(),
            r.desired.clone(),
            r.observed.clone(),
            pods,
            state,
        ]);
    }
    let mut widths = headers.map(str::len);
    for row in &table {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 6 {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s
    };
    println!("{}", line(headers));
    for row in &table {
        println!("{}", line(row.each_ref().map(String::as_str)));
    }
    let ready = rows
        .iter()
        .filter(|r| r.readiness == Readiness::Ready)
        .count();
    println!("{ready}/{} workloads ready", rows.len());
    Ok(0)
}
