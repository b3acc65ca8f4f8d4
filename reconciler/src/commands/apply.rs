//! `aion-reconcile apply`: lock, gather facts, plan, then execute that same plan — masters,
//! their cluster steps, workers in parallel — and print a summary. Re-running resumes: facts
//! show what is already done.

use std::io::IsTerminal as _;
use std::time::Duration;

use crate::commands::plan::{
    ClusterPart, Common, Format, close, plan_cluster, prepare, print_plan,
};
use crate::execute::{self, Context};
use crate::lock::{self, LocalLock};
use crate::progress::{Log, Progress};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// A lock on the master older than this many seconds is considered stale and taken over.
    #[arg(long, default_value_t = 7200)]
    pub lock_stale_after: u64,
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: &Args) -> anyhow::Result<u8> {
    let c = &args.common;
    let holder = lock::holder_id();
    let state = crate::commands::plan::state_dir(&c.inventory);
    let _local = LocalLock::acquire(&state.join("reconcile.lock"), &holder)?;
    let p = prepare(c).await?;
    let master = p
        .inventory
        .masters()
        .next()
        .map(|m| (m.name.clone(), m.ssh.user.clone()));
    let stale = Duration::from_secs(args.lock_stale_after);
    // The remote lock lives on the master; with the master unreachable nothing can converge
    // anyway (workers depend on it), and the plan reports it.
    let mut locked = None;
    if let Some((name, user)) = &master
        && let Some(Ok(h)) = p.hosts.get(name)
    {
        if let Err(e) = lock::acquire_remote(h.as_ref(), user, &holder, stale).await {
            close(p.hosts).await;
            return Err(e.into());
        }
        locked = Some((h.clone(), user.clone()));
    }
    let result = async {
        let plan = execute::plan_all(&p.specs, &p.hosts, &p.cluster, c.parallel as usize).await;
        if c.output == Format::Text {
            print_plan(&plan, c.output)?;
        }
        let log = Log::create(&p.state_dir.join("logs"))?;
        let fancy = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let progress = Progress::new(fancy);
        let cx = Context {
            hosts: &p.hosts,
            cluster: &p.cluster,
            progress: &progress,
            log: &log,
            parallel: c.parallel as usize,
        };
        let report = execute::apply(&plan, &cx).await;
        // Then the cluster: the per-node manifests (cluster::plan + cluster::execute), only
        // when every host converged (the manifests pin pods to those nodes).
        let cluster = if report.ok() {
            match plan_cluster(&c.inventory, &p.inventory.kubeconfig).await {
                Ok(ClusterPart::Planned(cp)) if cp.has_changes() => {
                    let client = crate::kubeclient::client_from(&p.inventory.kubeconfig).await?;
                    match crate::cluster::execute(&client, &cp, &crate::cluster::ExecuteOptions::default()).await {
                        Ok(r) => Ok(r.summary()),
                        Err(e) => Err(format!("{e:#}")),
                    }
                }
                Ok(ClusterPart::Planned(_)) => Ok("cluster: no changes".to_string()),
                Ok(ClusterPart::NotYet) => Err("no kubeconfig after the master steps".to_string()),
                Err(e) => Err(format!("{e:#}")),
            }
        } else {
            Err("skipped: not every host converged".to_string())
        };
        if let Err(e) = &cluster {
            log.write("cluster", "FAILED", e);
        }
        match c.output {
            Format::Text => {
                println!("{}", report.summary());
                match &cluster {
                    Ok(s) => println!("{s}"),
                    Err(e) => println!("cluster: {e}"),
                }
                for (h, o) in &report.hosts {
                    if !o.ok() {
                        println!(
                            "  {h}: {}",
                            serde_json::to_value(o)
                                .map(|v| describe(&v))
                                .unwrap_or_default()
                        );
                    }
                }
                println!("Full log: {}", log.path().display());
            }
            Format::Json => println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"plan": plan, "report": report, "cluster": cluster.as_ref().map_err(|e| e.clone()), "log": log.path()})
                )?
            ),
        }
        anyhow::Ok(if report.ok() && cluster.is_ok() { 0 } else { 1 })
    }
    .await;
    if let Some((h, user)) = locked {
        lock::release_remote(h.as_ref(), &user, &holder).await;
    }
    close(p.hosts).await;
    result
}

fn describe(v: &serde_json::Value) -> String {
    let obj = v.as_object().cloned().unwrap_or_default();
    obj.iter()
        .map(|(k, v)| {
            format!(
                "{k}: {}",
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
