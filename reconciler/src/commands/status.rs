//! `aion-reconcile status`: per node and microservice, desired vs observed (replicas ready, job
//! complete, pending, image pull errors) and each pod's phase and node; for each microservice
//! instance, what its namespace's runtime reports live (state, input queue depth, kanbans per
//! second in and out: [`crate::live`]).

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
    #[arg(short, long, value_enum, default_value_t = crate::output::OutputFormat::Text)]
    pub output: crate::output::OutputFormat,
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let (inv, manifests) = crate::reconcile::load_and_render(&args.inventory)?;
    let kubeconfig = kubeclient::resolve_kubeconfig(args.kubeconfig.as_deref(), &inv.kubeconfig);
    let rt = kubeclient::runtime()?;
    let (rows, live) = rt.block_on(async {
        let client = kubeclient::client_from(&kubeconfig).await?;
        let rows = cluster::status(&client, &manifests, cluster::DEFAULT_CONCURRENCY).await?;
        let namespaces = runtime_namespaces(&rows);
        let live = crate::live::fetch(&client, &namespaces).await;
        anyhow::Ok((rows, live))
    })?;
    if args.output == crate::output::OutputFormat::Json {
        let doc = serde_json::json!({"objects": rows, "namespaces": live});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    let headers = [
        "NODE",
        "MICROSERVICE",
        "OBJECT",
        "DESIRED",
        "OBSERVED",
        "PODS",
        "INSTANCE",
        "QUEUE",
        "IN/s",
        "OUT/s",
        "STATE",
    ];
    let mut table: Vec<[String; 11]> = Vec::new();
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
        let [instance, queue, rate_in, rate_out] = r
            .key
            .namespace
            .as_deref()
            .and_then(|ns| crate::live::columns(&live, ns, &r.key.name))
            .unwrap_or_else(|| ["-".into(), "-".into(), "-".into(), "-".into()]);
        table.push([
            r.node.clone(),
            r.owner.clone(),
            r.key.to_string(),
            r.desired.clone(),
            r.observed.clone(),
            pods,
            instance,
            queue,
            rate_in,
            rate_out,
            state,
        ]);
    }
    let mut widths = headers.map(str::len);
    for row in &table {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 11]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 10 {
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
    for l in &live {
        if let Some(e) = &l.error {
            println!("live data of {}: unavailable ({e})", l.namespace);
        }
    }
    Ok(0)
}

/// Namespaces with a rendered `aion-kanban` Deployment (each serves its live page).
fn runtime_namespaces(rows: &[cluster::StatusRow]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .filter(|r| r.key.kind == "Deployment" && r.key.name == "aion-kanban")
        .filter_map(|r| r.key.namespace.clone())
        .collect();
    out.dedup();
    out
}
