//! The host phases, around the images phase (so a device without a registry has the node's
//! images before its kubelet starts): first every host's runtime (the changes of the roles
//! before [`crate::roles::AFTER_IMAGES`]: hostname … containerd) in parallel; after the images,
//! the rest — masters (host changes, then their cluster steps), then workers in parallel. Each
//! host's changes run in order; a failing or unreachable host stops only itself.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::Semaphore;

use super::batch::run_batch;
use super::outcome::{ApplyReport, Context, HostOutcome, StepFailure, StepResult, TAIL_LINES};
use crate::change::{Action, Change};
use crate::cluster::bootstrap::ClusterOps;
use crate::host::Host;
use crate::plan::{HostPlan, Plan};
use crate::progress::tail;
use crate::shell::{path_expr, prelude, sh_quote};

/// The first host phase: every host's changes before the images (its runtime), all hosts in
/// parallel up to the cap. A host that converged here is `Converged` with those changes.
pub async fn apply_runtime<H: Host, C: ClusterOps>(
    plan: &Plan,
    cx: &Context<'_, H, C>,
) -> ApplyReport {
    let all: Vec<&HostPlan> = plan.hosts.iter().collect();
    let jobs: Vec<(&HostPlan, Range<usize>)> = all
        .iter()
        .map(|hp| (*hp, 0..hp.images_boundary()))
        .collect();
    let results = run_phase(&jobs, None, false, cx).await;
    let mut changed = 0;
    let hosts = all
        .iter()
        .zip(results)
        .map(|(hp, o)| {
            if let HostOutcome::Converged { changed: n } = &o {
                changed += n;
            }
            (hp.host.clone(), o)
        })
        .collect();
    ApplyReport {
        hosts,
        changed,
        images: Vec::new(),
        image_removals: Vec::new(),
    }
}

/// The second host phase (after the images): each host that got this far runs the rest of
/// its changes, masters first (host changes, then their cluster steps), then workers in
/// parallel up to the cap; workers are skipped, with the reason, when no master converged.
pub async fn apply<H: Host, C: ClusterOps>(
    plan: &Plan,
    report: &mut ApplyReport,
    cx: &Context<'_, H, C>,
) {
    let ready = |hp: &HostPlan| report.outcome(&hp.host).is_some_and(HostOutcome::ok);
    let rest = |hp: &HostPlan| hp.images_boundary()..hp.changes.len();
    let (masters, workers): (Vec<&HostPlan>, Vec<&HostPlan>) = plan
        .hosts
        .iter()
        .partition(|h| h.role == aion_model::inventory::Role::Master);
    let ready_masters: Vec<(&HostPlan, Range<usize>)> = masters
        .iter()
        .filter(|hp| ready(hp))
        .map(|hp| (*hp, rest(hp)))
        .collect();
    let mut outcomes = run_phase(&ready_masters, None, true, cx).await;
    let mut join_master: Option<Arc<H>> = None;
    for ((hp, _), outcome) in ready_masters.iter().zip(&outcomes) {
        if outcome.ok() && join_master.is_none() {
            join_master = cx
                .hosts
                .get(&hp.host)
                .and_then(|r| r.as_ref().ok())
                .cloned();
        }
    }
    let ready_workers: Vec<(&HostPlan, Range<usize>)> = workers
        .iter()
        .filter(|hp| ready(hp))
        .map(|hp| (*hp, rest(hp)))
        .collect();
    let mut done: Vec<&HostPlan> = ready_masters.iter().map(|(hp, _)| *hp).collect();
    if join_master.is_none() {
        let failed: Vec<&str> = masters.iter().map(|hp| hp.host.as_str()).collect();
        let reason = format!("master {} did not converge", failed.join(", "));
        for (hp, _) in &ready_workers {
            cx.progress
                .host_done(&hp.host, &format!("skipped: {reason}"), false);
            done.push(hp);
            outcomes.push(HostOutcome::Skipped {
                reason: reason.clone(),
            });
        }
    } else {
        done.extend(ready_workers.iter().map(|(hp, _)| *hp));
        outcomes.extend(run_phase(&ready_workers, join_master.as_deref(), true, cx).await);
    }
    for (hp, outcome) in done.into_iter().zip(outcomes) {
        let Some((_, o)) = report.hosts.iter_mut().find(|(h, _)| *h == hp.host) else {
            continue;
        };
        match (&*o, outcome) {
            (HostOutcome::Converged { changed: before }, HostOutcome::Converged { changed: n }) => {
                *o = HostOutcome::Converged {
                    changed: before + n,
                };
                report.changed += n;
            }
            (_, outcome) => *o = outcome,
        }
    }
}

/// Run each host's range of changes, in parallel up to the cap. `last`: this is the host's
/// last phase (its progress line ends here when it converges).
async fn run_phase<H: Host, C: ClusterOps>(
    jobs: &[(&HostPlan, Range<usize>)],
    master: Option<&H>,
    last: bool,
    cx: &Context<'_, H, C>,
) -> Vec<HostOutcome> {
    let sem = Semaphore::new(cx.parallel.max(1));
    join_all(jobs.iter().map(|(hp, range)| {
        let sem = &sem;
        async move {
            let _permit = sem.acquire().await;
            run_host(hp, range.clone(), master, last, cx).await
        }
    }))
    .await
}

/// Run `hp.changes[range]` in order; the first failure stops the host.
async fn run_host<H: Host, C: ClusterOps>(
    hp: &HostPlan,
    range: Range<usize>,
    master: Option<&H>,
    last: bool,
    cx: &Context<'_, H, C>,
) -> HostOutcome {
    if let Some(e) = &hp.error {
        cx.progress
            .host_done(&hp.host, &format!("unreachable: {e}"), false);
        return HostOutcome::Unreachable { error: e.clone() };
    }
    let host = match cx.hosts.get(&hp.host) {
        Some(Ok(h)) => h.clone(),
        Some(Err(e)) => {
            return HostOutcome::Unreachable {
                error: e.to_string(),
            };
        }
        None => {
            return HostOutcome::Unreachable {
                error: "not connected".into(),
            };
        }
    };
    let total = hp.changes.len();
    let mut i = range.start;
    while i < range.end {
        // Consecutive scripts go in one round trip (one script, a marker around each step);
        // fetches, joins and cluster steps run on their own.
        let batch: Vec<&Change> = hp.changes[i..range.end]
            .iter()
            .take_while(|c| {
                matches!(
                    c.action,
                    Action::Script {
                        secret_output: false,
                        ..
                    }
                )
            })
            .collect();
        if batch.len() > 1 {
            let label = format!("{} … {}", batch[0].id, batch[batch.len() - 1].id);
            cx.progress.step(&hp.host, i, total, &label);
            let results = match run_batch(&hp.user, &batch, host.as_ref()).await {
                Ok(r) => r,
                Err(e) => {
                    // The transport broke mid-script: which of these steps ran on the host
                    // is unknown here (files are written atomically, so each is either done
                    // or not); the next plan shows what is left.
                    let step = label.clone();
                    let error = format!(
                        "{e} (during these steps; some may have been applied, the next plan shows what is left)"
                    );
                    cx.log
                        .write(&hp.host, &format!("{step} FAILED: {error}"), "");
                    cx.progress
                        .host_done(&hp.host, &format!("failed at {step}: {error}"), false);
                    return HostOutcome::Failed { step, error };
                }
            };
            for (change, result) in batch.iter().zip(&results) {
                if let Some(outcome) = record(hp, change, result.clone(), cx) {
                    return outcome;
                }
            }
            if results.len() < batch.len() {
                // Transport broke before every step reported.
                let change = batch[results.len()];
                let r = Err(StepFailure::with_output(
                    "the SSH session ended before this step reported".to_string(),
                    String::new(),
                ));
                if let Some(outcome) = record(hp, change, r, cx) {
                    return outcome;
                }
            }
            i += batch.len();
            continue;
        }
        let change = &hp.changes[i];
        cx.progress.step(&hp.host, i, total, &change.id);
        let result = run_action(&hp.user, &change.action, host.as_ref(), master, cx).await;
        if let Some(outcome) = record(hp, change, result, cx) {
            return outcome;
        }
        i += 1;
    }
    if last {
        let msg = if total == 0 && hp.images.is_empty() {
            "no changes".to_string()
        } else {
            format!("{} change(s) made", total + hp.images.len())
        };
        cx.progress.host_done(&hp.host, &msg, true);
    }
    HostOutcome::Converged {
        changed: range.len(),
    }
}

/// Log a step's result; on failure also show it and return the host's outcome.
fn record<H: Host, C: ClusterOps>(
    hp: &HostPlan,
    change: &Change,
    result: StepResult,
    cx: &Context<'_, H, C>,
) -> Option<HostOutcome> {
    match result {
        Ok(log_text) => {
            cx.log
                .write(&hp.host, &format!("{} ok", change.id), &log_text);
            None
        }
        Err(StepFailure { error, output }) => {
            cx.log
                .write(&hp.host, &format!("{} FAILED: {error}", change.id), &output);
            cx.progress.failure(
                &hp.host,
                &change.id,
                &cx.log.redact(&tail(&output, TAIL_LINES)),
            );
            cx.progress.host_done(
                &hp.host,
                &format!("failed at {}: {error}", change.id),
                false,
            );
            Some(HostOutcome::Failed {
                step: change.id.clone(),
                error,
            })
        }
    }
}
/// Run one action. Ok: text for the log; Err: (short error, full output for the log).
async fn run_action<H: Host, C: ClusterOps>(
    user: &str,
    action: &Action,
    host: &H,
    master: Option<&H>,
    cx: &Context<'_, H, C>,
) -> StepResult {
    match action {
        Action::Script {
            script,
            secret_output,
        } => {
            let full = format!("set -e\n{}{script}", prelude(user));
            let out = host.run(&full).await.map_err(StepFailure::bare)?;
            let text = if *secret_output {
                "(output not logged: secret)".to_string()
            } else {
                out.combined()
            };
            if out.success() {
                Ok(text)
            } else {
                Err(StepFailure::with_output(
                    format!("exit status {}", out.status),
                    text,
                ))
            }
        }
        Action::Fetch { src, dest } => {
            let script = format!("{}cat {}\n", prelude(user), path_expr(src));
            let out = host.run(&script).await.map_err(StepFailure::bare)?;
            if !out.success() {
                return Err(StepFailure::with_output(
                    format!("reading {src} failed (exit {})", out.status),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
            write_local_secret(dest, &out.stdout)
                .map_err(|e| StepFailure::bare(format!("writing {}: {e}", dest.display())))?;
            Ok(format!(
                "fetched {src} to {} (0600; content not logged)",
                dest.display()
            ))
        }
        Action::Join { node_name } => {
            let Some(master) = master else {
                return Err(StepFailure::with_output(
                    "no master to create a join token".into(),
                    String::new(),
                ));
            };
            let out = master
                .run("kubeadm token create --print-join-command --ttl 10m\n")
                .await
                .map_err(StepFailure::bare)?;
            if !out.success() {
                return Err(StepFailure::with_output(
                    format!(
                        "`kubeadm token create` on {} failed (exit {})",
                        master.name(),
                        out.status
                    ),
                    cx.log.redact(&String::from_utf8_lossy(&out.stderr)),
                ));
            }
            let join = out.stdout_str().trim().to_string();
            for w in join.split_whitespace() {
                if w.len() >= 16 || w.contains('.') && w.len() == 23 {
                    cx.log.add_secret(w);
                }
            }
            if !join.starts_with("kubeadm join ") {
                return Err(StepFailure::with_output(
                    "unexpected output from `kubeadm token create --print-join-command`".into(),
                    String::new(),
                ));
            }
            let script = format!("set -e\n{join} --node-name {}\n", sh_quote(node_name));
            let out = host.run(&script).await.map_err(StepFailure::bare)?;
            let text = cx.log.redact(&out.combined());
            if out.success() {
                Ok(text)
            } else {
                Err(StepFailure::with_output(
                    format!("kubeadm join exit status {}", out.status),
                    text,
                ))
            }
        }
        Action::Cluster(step) => cx.cluster.run(step).await.map_err(|e| {
            let error = crate::output::chain(&e);
            StepFailure::with_output(error.clone(), error)
        }),
    }
}

/// Write a secret file on this machine atomically, mode 0600 from the start.
pub fn write_local_secret(dest: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = dest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dest)
}
