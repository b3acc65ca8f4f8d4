//! `aion-reconcile apply`: plan first (read-only, no lock); when nothing would change, say so
//! and stop — no lock taken, no command with side effects run. Otherwise take the locks,
//! plan again under them (someone may have changed the hosts meanwhile) and execute that same
//! plan — masters, their cluster steps, workers in parallel — then the cluster part, and print
//! a summary. Re-running resumes: facts show what is already done.
//!
//! The phases are [`crate::reconcile::apply`]; this module parses the flags and prints the plan
//! (text mode) and the summary.

use std::time::Duration;

use crate::commands::plan::{Common, print_plan};
use crate::execute::HostOutcome;
use crate::output::OutputFormat;
use crate::reconcile::{self, Outcome, Shown, phase_json};

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
    /// After changing the cluster, wait until what changed is ready (Deployments available,
    /// Jobs complete or serving); if it is not within `--timeout`, or the cluster apply fails,
    /// roll back to the previous revision and exit 1 naming each object that failed and why.
    /// Host provisioning is not rolled back.
    #[arg(long)]
    pub atomic: bool,
    /// How long `--wait` and `--atomic` wait, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub timeout: u64,
    /// Cap on the bytes per second sent to all hosts together (image blobs, files), e.g.
    /// `10M`, `500K`; default: no cap.
    #[arg(long, value_name = "RATE", value_parser = crate::host::rate::parse_rate)]
    pub max_upload_rate: Option<u64>,
}

impl Args {
    /// `apply`'s own flags as [`reconcile::ApplyOptions`].
    pub fn apply_options(&self) -> reconcile::ApplyOptions {
        reconcile::ApplyOptions {
            lock_stale_after: Duration::from_secs(self.lock_stale_after),
            wait: self.wait.then(|| Duration::from_secs(self.timeout)),
            atomic: self.atomic.then(|| Duration::from_secs(self.timeout)),
            ready_timeout: Duration::from_secs(self.timeout),
            render: crate::progress::Render::for_stderr(self.common.output == OutputFormat::Json),
        }
    }
}

/// The printed forms of an [`Outcome`].
impl Outcome {
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
        match &self.old_images {
            Some(Ok(s)) => out.push_str(&format!("{s}\n")),
            Some(Err(e)) => out.push_str(&format!("{e}\n")),
            None => {}
        }
        for (h, gone) in &self.report.image_removals {
            for r in gone {
                out.push_str(&format!("  {h}: removed old image {r}\n"));
            }
        }
        for (h, got) in &self.report.images {
            let how = match &got.from {
                Some(relay) => format!("fetched from {relay}"),
                None => "sent".into(),
            };
            out.push_str(&format!(
                "  {h}: {} image(s) imported, {} {how} in {} blob(s)\n",
                got.imported.len(),
                crate::images::human_bytes(got.bytes()),
                got.blobs.len()
            ));
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
            "cluster": phase_json(&self.cluster),
            "log": self.log,
            "locked": self.locked,
            "readiness": self.readiness.as_ref().map(phase_json),
            "revision": self.revision,
            "old_images": self.old_images.as_ref().map(phase_json),
        })
    }
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let outcome = run_blocking(args)?;
    match args.common.output {
        OutputFormat::Text => print!("{}", outcome.summary()),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&outcome.to_json())?),
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

/// [`reconcile::apply`] with these flags. Prints the plan (text mode) and the progress; the
/// summary is the caller's.
pub async fn apply(args: &Args) -> anyhow::Result<Outcome> {
    let text = args.common.output == OutputFormat::Text;
    let show_plan = move |shown: Shown<'_>| {
        match shown {
            Shown::Hosts(plan) if text => print_plan(plan, OutputFormat::Text)?,
            Shown::Cluster(plan) if text => {
                println!("Cluster changes, planned now that the hosts converged:");
                print!("{}", plan.render_text(crate::output::use_color(), false));
            }
            _ => {}
        }
        Ok(())
    };
    let mut options = args.common.options();
    options.upload_limit = args
        .max_upload_rate
        .map(|r| std::sync::Arc::new(crate::host::rate::RateLimit::new(r)));
    reconcile::apply(&options, &args.apply_options(), &show_plan).await
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
