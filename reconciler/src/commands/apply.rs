//! `aion-reconcile apply`: plan first (read-only, no lock); when nothing would change, say so
//! and stop — no lock taken, no command with side effects run. Otherwise take the locks,
//! plan again under them (someone may have changed the hosts meanwhile) and execute that same
//! plan — masters, their cluster steps, workers in parallel — then the cluster part, and print
//! a summary. Re-running resumes: facts show what is already done.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::commands::plan::{
    ClusterPart, Common, Format, Prepared, close, nothing_to_do, plan_both, plan_cluster, prepare,
    print_plan,
};
use crate::execute::{self, ApplyReport, Context, HostOutcome};
use crate::lock::{self, LocalLock};
use crate::plan::Plan;
use crate::progress::{Log, Progress};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// A lock on the master older than this many seconds is considered stale and taken over.
    #[arg(long, default_value_t = 7200)]
    pub lock_stale_after: u64,
    /// After applying (or finding nothing to change), wait until every workload of the
    /// installation runs: Deployments available, Jobs complete, Services with a cluster IP. Pod
    /// problems (ImagePullBackOff, CrashLoopBackOff, Unschedulable, ...) are reported.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub timeout: u64,
}

/// How an `apply` ended.
#[derive(Debug)]
pub struct Outcome {
    /// The plan that was executed (or, when nothing had to change, the plan that showed it).
    pub plan: Plan,
    pub report: ApplyReport,
    /// The cluster part: a summary line, or why it failed or was skipped.
    pub cluster: Result<String, String>,
    /// The full log (none when nothing had to change: nothing ran).
    pub log: Option<PathBuf>,
    /// Whether the locks were taken (false when nothing had to change).
    pub locked: bool,
    /// With `--wait`: whether every workload became ready (a summary line), or what did not.
    pub readiness: Option<Result<String, String>>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.report.ok()
            && self.cluster.is_ok()
            && self.readiness.as_ref().is_none_or(|r| r.is_ok())
    }

    /// The closing text: counts, the cluster part, one line per host that did not converge
    /// (with its failed step, error or skip reason), the log's path.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if self.locked {
            out.push_str(&self.report.summary());
        } else {
            out.push_str(&format!(
                "Apply: nothing to change; {} host(s) already converged (no lock taken, no command run)",
                self.report.hosts.len()
            ));
        }
        out.push('\n');
        match &self.cluster {
            Ok(s) => out.push_str(s),
            Err(e) => out.push_str(&format!("cluster: {e}")),
        }
        out.push('\n');
        match &self.readiness {
            Some(Ok(s)) => out.push_str(&format!("{s}\n")),
            Some(Err(e)) => out.push_str(&format!("wait: {e}\n")),
            None => {}
        }
        for (h, o) in &self.report.hosts {
            if !o.ok() {
                out.push_str(&format!("  {h}: {}\n", describe(o)));
            }
        }
        if let Some(log) = &self.log {
            out.push_str(&format!("Full log: {}\n", log.display()));
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "plan": self.plan,
            "report": self.report,
            "cluster": self.cluster.as_ref().map_err(|e| e.clone()),
            "log": self.log,
            "locked": self.locked,
            "readiness": self.readiness.as_ref().map(|r| r.as_ref().map_err(|e| e.clone())),
        })
    }
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let outcome = run_blocking(args)?;
    match args.common.output {
        Format::Text => print!("{}", outcome.summary()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&outcome.to_json())?),
    }
    Ok(if outcome.ok() { 0 } else { 1 })
}

/// [`apply`] on its own runtime (what `run` does, without printing the summary).
pub fn run_blocking(args: &Args) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(apply(args))
}

/// Plan, and if anything would change: lock, re-plan, execute. Prints the plan (text mode)
/// and the progress; the summary is the caller's.
pub async fn apply(args: &Args) -> anyhow::Result<Outcome> {
    let mut outcome = apply_changes(args).await?;
    if args.wait && outcome.report.ok() && outcome.cluster.is_ok() {
        outcome.readiness = Some(wait_for_workloads(args).await);
    }
    Ok(outcome)
}

/// `--wait`: every Deployment, Job and Service this inventory renders becomes ready (Deployments
/// the runtime scales to 0 count as ready at 0). Progress goes to stderr as `<object>: <what>`.
async fn wait_for_workloads(args: &Args) -> Result<String, String> {
    let c = &args.common;
    let (inv, manifests) =
        super::render::load_and_render(&c.inventory).map_err(|e| crate::output::chain(&*e))?;
    let keys: Vec<crate::manifest::ObjectKey> = manifests
        .objects()
        .map(|o| o.key.clone())
        .filter(|k| matches!(k.kind.as_str(), "Deployment" | "Job" | "Service"))
        .collect();
    let client = crate::kubeclient::client_from(&inv.kubeconfig)
        .await
        .map_err(|e| crate::output::chain(&e))?;
    let opts = crate::cluster::ExecuteOptions {
        progress: Some(crate::cluster::stderr_progress()),
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    crate::cluster::wait_ready(&client, &keys, timeout, &opts)
        .await
        .map_err(|e| e.to_string())?;
    // Pruned objects and those already being deleted (a Terminating namespace) are gone too.
    crate::cluster::wait_pruned(
        &client,
        &manifests,
        timeout.saturating_sub(start.elapsed()),
        &opts,
    )
    .await
    .map(|()| {
        format!(
            "ready: {} workload object(s) after {:.0} s",
            keys.len(),
            start.elapsed().as_secs_f64()
        )
    })
    .map_err(|e| crate::output::chain(&e))
}

/// Plan, and if anything would change: lock, re-plan, execute.
async fn apply_changes(args: &Args) -> anyhow::Result<Outcome> {
    let c = &args.common;
    let p = prepare(c).await?;
    let (plan, cluster) = plan_both(c, &p).await;
    if let Some(cluster_summary) = nothing_to_do(&plan, &cluster) {
        if c.output == Format::Text {
            print_plan(&plan, c.output)?;
        }
        let cluster = Ok(cluster_summary);
        let report = ApplyReport {
            hosts: plan
                .hosts
                .iter()
                .map(|h| (h.host.clone(), HostOutcome::Converged { changed: 0 }))
                .collect(),
            changed: 0,
        };
        close(p.hosts).await;
        return Ok(Outcome {
            plan,
            report,
            cluster,
            log: None,
            locked: false,
            readiness: None,
        });
    }
    let result = locked_apply(args, &p).await;
    close(p.hosts).await;
    result
}

/// Take the local lock and the one on the master, plan again under them and execute.
async fn locked_apply(args: &Args, p: &Prepared) -> anyhow::Result<Outcome> {
    let c = &args.common;
    let holder = lock::holder_id();
    let _local = LocalLock::acquire(&p.state_dir.join("reconcile.lock"), &holder)?;
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
        lock::acquire_remote(h.as_ref(), user, &holder, stale).await?;
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
                    match crate::cluster::execute(
                        &client,
                        &cp,
                        &crate::cluster::ExecuteOptions::default(),
                    )
                    .await
                    {
                        Ok(r) => Ok(r.summary()),
                        Err(e) => Err(crate::output::chain(&e)),
                    }
                }
                Ok(ClusterPart::Planned(_)) => Ok("cluster: no changes".to_string()),
                Ok(ClusterPart::NotYet) => Err("no kubeconfig after the master steps".to_string()),
                Err(e) => Err(crate::output::chain(&*e)),
            }
        } else {
            let failed: Vec<&str> = report
                .hosts
                .iter()
                .filter(|(_, o)| !o.ok())
                .map(|(h, _)| h.as_str())
                .collect();
            Err(format!(
                "skipped: not every host converged ({})",
                failed.join(", ")
            ))
        };
        if let Err(e) = &cluster {
            log.write("cluster", "FAILED", e);
        }
        anyhow::Ok(Outcome {
            plan,
            report,
            cluster,
            log: Some(log.path().to_owned()),
            locked: true,
            readiness: None,
        })
    }
    .await;
    if let Some((h, user)) = locked {
        lock::release_remote(h.as_ref(), &user, &holder).await;
    }
    result
}

/// One line for a host that did not converge: the failed step and error, or why it was
/// unreachable or skipped.
fn describe(o: &HostOutcome) -> String {
    match o {
        HostOutcome::Converged { changed } => format!("converged ({changed} change(s))"),
        HostOutcome::Failed { step, error } => format!("failed at {step}: {error}"),
        HostOutcome::Unreachable { error } => format!("unreachable: {error}"),
        HostOutcome::Skipped { reason } => format!("skipped: {reason}"),
    }
}
