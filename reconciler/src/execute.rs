//! The imperative shell: gather facts on every host (one round trip each, in parallel up to a
//! cap), build the [`Plan`], and execute that same plan in phases — masters (host changes, then
//! their cluster steps), then workers in parallel. A failing or unreachable host stops only
//! itself; workers are skipped, with the reason, when no master converged.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::Semaphore;

use crate::change::{Action, Change, ClusterStep};
use crate::facts::{self, HostFacts};
use crate::host::Host;
use crate::images;
use crate::plan::{self, ClusterCheck, HostPlan, Plan};
use crate::progress::{Log, Progress, tail};
use crate::roles::{HostSpec, LocalFacts, Resource};
use crate::shell::{path_expr, prelude, sh_quote};

/// Lines of a failing step's output shown on the terminal.
pub const TAIL_LINES: usize = 15;

/// Steps done through the Kubernetes API (implemented over kube-rs in [`kube_steps`]; a fake
/// in tests).
pub trait ClusterOps: Send + Sync {
    /// Read-only: is the step already satisfied?
    fn check(&self, step: &ClusterStep) -> impl Future<Output = ClusterCheck> + Send;
    /// Do it; returns a line for the log.
    fn run(&self, step: &ClusterStep) -> impl Future<Output = Result<String, String>> + Send;
}

/// Gather one host's facts (one script, one round trip); with `containerd`, also what its
/// containerd holds (images, content blobs).
pub async fn gather<H: Host>(
    host: &H,
    spec: &HostSpec,
    containerd: bool,
) -> Result<HostFacts, String> {
    let mut req = plan::fact_request(spec);
    req.containerd = containerd;
    let script = req.script();
    tracing::trace!(host = %host.name(), "facts script:\n{script}");
    let out = host.run(&script).await.map_err(|e| e.to_string())?;
    if !out.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "gathering facts failed (exit {}): {}",
            out.status,
            tail(err.trim(), 3).replace('\n', " | ")
        ));
    }
    facts::parse(
        host.name(),
        &out.stdout_str(),
        &String::from_utf8_lossy(&out.stderr),
    )
    .map_err(|e| e.to_string())
}

/// SHA-256 and mode of the local files the specs fetch into.
pub fn local_facts(specs: &[HostSpec]) -> LocalFacts {
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut lf = LocalFacts::default();
    for spec in specs {
        for item in &spec.items {
            if let Resource::Fetch { dest, .. } = &item.resource {
                let v = std::fs::read(dest).ok().map(|b| {
                    let mode = std::fs::metadata(dest)
                        .map(|m| m.permissions().mode() & 0o7777)
                        .unwrap_or(0o644);
                    (hex::encode(sha2::Sha256::digest(&b)), mode)
                });
                lf.files.insert(dest.clone(), v);
            }
        }
    }
    lf
}

/// Plan every host: facts in parallel (at most `parallel` at once), cluster steps checked
/// when the master has nothing left to do on the host side; the images of `images` (host →
/// the images its pods run, empty without `imageSources`) against its containerd, whose
/// facts come in the same round trip, and the old versions beyond the `keep_images` previous
/// ones of each image repository it runs (removed after the cluster part, `- image`).
pub async fn plan_all<H: Host, C: ClusterOps>(
    specs: &[HostSpec],
    hosts: &BTreeMap<String, Result<Arc<H>, String>>,
    cluster: &C,
    parallel: usize,
    images: &images::Wanted,
    keep_images: u32,
) -> Plan {
    let local = local_facts(specs);
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let futs = specs.iter().map(|spec| {
        let sem = sem.clone();
        let local = &local;
        async move {
            let _permit = sem.acquire().await;
            let unreachable = |error: String| HostPlan {
                host: spec.host.name.clone(),
                address: spec.host.address.clone(),
                role: spec.host.role,
                user: spec.host.ssh.user.clone(),
                changes: Vec::new(),
                unchanged: 0,
                error: Some(error),
                warnings: Vec::new(),
                images: Vec::new(),
                image_removals: Vec::new(),
            };
            let host = match hosts.get(&spec.host.name) {
                Some(Ok(h)) => h.clone(),
                Some(Err(e)) => return unreachable(e.clone()),
                None => return unreachable("not connected".into()),
            };
            let t = std::time::Instant::now();
            let wanted = images.get(&spec.host.name);
            let facts = match gather(host.as_ref(), spec, wanted.is_some()).await {
                Ok(f) => f,
                Err(e) => return unreachable(e),
            };
            tracing::debug!(host = %spec.host.name, ms = t.elapsed().as_millis() as u64, "facts gathered");
            // Cluster steps can be checked only once the host side is done (kubeconfig
            // fetched); otherwise they are "known after apply".
            let host_only = plan::plan_host(
                &HostSpec {
                    cluster: Vec::new(),
                    ..spec.clone()
                },
                &facts,
                local,
                &[],
            );
            let checks = match &host_only {
                // Read-only checks: all of a host's steps at once.
                Ok(hp) if hp.changes.is_empty() => {
                    let t = std::time::Instant::now();
                    let v = join_all(spec.cluster.iter().map(|step| cluster.check(step))).await;
                    tracing::debug!(host = %spec.host.name, ms = t.elapsed().as_millis() as u64, "cluster steps checked");
                    v
                }
                _ => spec
                    .cluster
                    .iter()
                    .map(|_| ClusterCheck::Unknown("known after the host steps".into()))
                    .collect(),
            };
            match plan::plan_host(spec, &facts, local, &checks) {
                Ok(mut p) => {
                    if let Some(w) = wanted {
                        p.images = images::plan_host(w, facts.containerd.as_ref());
                        p.image_removals =
                            images::plan_removals(w, facts.containerd.as_ref(), keep_images);
                    }
                    p
                }
                Err(e) => unreachable(e.to_string()),
            }
        }
    });
    Plan::new(join_all(futs).await)
}

/// How one host ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HostOutcome {
    Converged { changed: usize },
    Failed { step: String, error: String },
    Unreachable { error: String },
    Skipped { reason: String },
}

impl HostOutcome {
    pub fn ok(&self) -> bool {
        matches!(self, HostOutcome::Converged { .. })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub hosts: Vec<(String, HostOutcome)>,
    pub changed: usize,
    /// What each host received in the images phase.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub images: Vec<(String, images::Received)>,
    /// Old image versions each host removed after the new pods were ready.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub image_removals: Vec<(String, Vec<String>)>,
}

impl ApplyReport {
    pub fn ok(&self) -> bool {
        self.hosts.iter().all(|(_, o)| o.ok())
    }
    pub fn outcome(&self, host: &str) -> Option<&HostOutcome> {
        self.hosts.iter().find(|(h, _)| h == host).map(|(_, o)| o)
    }
    pub fn summary(&self) -> String {
        let count = |f: fn(&HostOutcome) -> bool| self.hosts.iter().filter(|(_, o)| f(o)).count();
        format!(
            "Apply: {} change(s) made; {} host(s) converged, {} failed, {} unreachable, {} skipped",
            self.changed,
            count(|o| matches!(o, HostOutcome::Converged { .. })),
            count(|o| matches!(o, HostOutcome::Failed { .. })),
            count(|o| matches!(o, HostOutcome::Unreachable { .. })),
            count(|o| matches!(o, HostOutcome::Skipped { .. })),
        )
    }
}

/// Everything `apply` needs besides the plan.
pub struct Context<'a, H: Host, C: ClusterOps> {
    pub hosts: &'a BTreeMap<String, Result<Arc<H>, String>>,
    pub cluster: &'a C,
    pub progress: &'a Progress,
    pub log: &'a Log,
    pub parallel: usize,
}

/// Execute `plan`: masters first, then workers (in parallel up to the cap).
pub async fn apply<H: Host, C: ClusterOps>(plan: &Plan, cx: &Context<'_, H, C>) -> ApplyReport {
    let mut outcomes: BTreeMap<String, HostOutcome> = BTreeMap::new();
    let (masters, workers): (Vec<&HostPlan>, Vec<&HostPlan>) = plan
        .hosts
        .iter()
        .partition(|h| h.role == aion_model::inventory::Role::Master);
    let master_results = run_phase(&masters, None, cx).await;
    let mut join_master: Option<Arc<H>> = None;
    let mut failed_masters = Vec::new();
    for (hp, outcome) in masters.iter().zip(master_results) {
        if outcome.ok() {
            if join_master.is_none() {
                join_master = cx
                    .hosts
                    .get(&hp.host)
                    .and_then(|r| r.as_ref().ok())
                    .cloned();
            }
        } else {
            failed_masters.push(hp.host.clone());
        }
        outcomes.insert(hp.host.clone(), outcome);
    }
    if join_master.is_none() {
        let reason = format!("master {} did not converge", failed_masters.join(", "));
        for hp in &workers {
            cx.progress
                .host_done(&hp.host, &format!("skipped: {reason}"), false);
            outcomes.insert(
                hp.host.clone(),
                HostOutcome::Skipped {
                    reason: reason.clone(),
                },
            );
        }
    } else {
        let results = run_phase(&workers, join_master.as_deref(), cx).await;
        for (hp, outcome) in workers.iter().zip(results) {
            outcomes.insert(hp.host.clone(), outcome);
        }
    }
    let mut changed = 0;
    let hosts = plan
        .hosts
        .iter()
        .filter_map(|hp| {
            let o = outcomes.remove(&hp.host)?;
            if let HostOutcome::Converged { changed: n } = &o {
                changed += n;
            }
            Some((hp.host.clone(), o))
        })
        .collect();
    ApplyReport {
        hosts,
        changed,
        images: Vec::new(),
        image_removals: Vec::new(),
    }
}

/// Send and import one host's images: the blobs it lacks streamed over the open connection
/// into a staging directory, each checked (size, SHA-256) on the host before
/// `ctr -n k8s.io images import` (see [`images::receive_script`]). Ok: what it received;
/// Err: (short error, full output for the log).
pub async fn send_images<H: Host>(
    host: &H,
    user: &str,
    changes: &[images::ImageChange],
) -> Result<images::Received, (String, String)> {
    let script = images::receive_script(user, changes);
    let input = images::send_input(changes);
    let out = host
        .run_with_input(&script, &input)
        .await
        .map_err(|e| (e.to_string(), String::new()))?;
    if !out.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err((
            format!(
                "images not imported (exit {}): {}",
                out.status,
                tail(err.trim(), 3).replace('\n', " | ")
            ),
            out.combined(),
        ));
    }
    Ok(images::parse_received(&out.stdout_str()))
}

/// The old-images phase (after the cluster part, once the new pods are ready): each host that
/// converged removes its planned old versions that no pod on it uses (`in_use`: host → the
/// images and image IDs its pods name); one still in use is kept for a later apply. A host
/// whose removal fails is `Failed` at step `old images`. Returns the removals kept in use.
pub async fn remove_old_images<H: Host, C: ClusterOps>(
    plan: &Plan,
    report: &mut ApplyReport,
    cx: &Context<'_, H, C>,
    in_use: &BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Vec<(String, images::ImageRemoval)> {
    let empty = std::collections::BTreeSet::new();
    let mut busy = Vec::new();
    let mut todo = Vec::new();
    for hp in &plan.hosts {
        if hp.image_removals.is_empty() || !report.outcome(&hp.host).is_some_and(HostOutcome::ok) {
            continue;
        }
        let Some(Ok(h)) = cx.hosts.get(&hp.host) else {
            continue;
        };
        let (remove, used) =
            images::not_in_use(&hp.image_removals, in_use.get(&hp.host).unwrap_or(&empty));
        busy.extend(used.into_iter().map(|r| (hp.host.clone(), r)));
        if !remove.is_empty() {
            todo.push((hp, h.clone(), remove));
        }
    }
    let sem = Semaphore::new(cx.parallel.max(1));
    let results = join_all(todo.iter().map(|(hp, h, remove)| {
        let sem = &sem;
        async move {
            let _permit = sem.acquire().await;
            let r = match h.run(&images::remove_script(&hp.user, remove)).await {
                Ok(out) if out.success() => Ok(images::parse_removed(&out.stdout_str())),
                Ok(out) => Err((
                    format!(
                        "old images not removed (exit {}): {}",
                        out.status,
                        tail(String::from_utf8_lossy(&out.stderr).trim(), 3).replace('\n', " | ")
                    ),
                    out.combined(),
                )),
                Err(e) => Err((e.to_string(), String::new())),
            };
            match &r {
                Ok(gone) => cx.log.write(
                    &hp.host,
                    &format!("old images removed: {}", gone.len()),
                    &gone.join("\n"),
                ),
                Err((e, out)) => cx
                    .log
                    .write(&hp.host, &format!("old images FAILED: {e}"), out),
            }
            (hp.host.clone(), r)
        }
    }))
    .await;
    for (host, r) in results {
        match r {
            Ok(gone) => report.image_removals.push((host, gone)),
            Err((error, _)) => {
                if let Some((_, o)) = report.hosts.iter_mut().find(|(h, _)| *h == host) {
                    *o = HostOutcome::Failed {
                        step: "old images".into(),
                        error,
                    };
                }
            }
        }
    }
    busy
}

/// The images phase (after the host changes, before the cluster): every host that converged
/// and has images to import gets them, in parallel up to the cap. A host whose images fail is
/// `Failed` at step `images`.
pub async fn apply_images<H: Host, C: ClusterOps>(
    plan: &Plan,
    report: &mut ApplyReport,
    cx: &Context<'_, H, C>,
) {
    let sem = Semaphore::new(cx.parallel.max(1));
    let todo: Vec<(&HostPlan, Arc<H>)> = plan
        .hosts
        .iter()
        .filter(|hp| !hp.images.is_empty() && report.outcome(&hp.host).is_some_and(HostOutcome::ok))
        .filter_map(|hp| match cx.hosts.get(&hp.host) {
            Some(Ok(h)) => Some((hp, h.clone())),
            _ => None,
        })
        .collect();
    let results = join_all(todo.iter().map(|(hp, h)| {
        let sem = &sem;
        async move {
            let _permit = sem.acquire().await;
            let what = format!(
                "images: {} ({} to send)",
                hp.images.len(),
                images::human_bytes(hp.images.iter().map(|i| i.bytes).sum())
            );
            cx.progress.step(&hp.host, 0, 1, &what);
            let r = send_images(h.as_ref(), &hp.user, &hp.images).await;
            match &r {
                Ok(got) => {
                    let lines: Vec<String> = got
                        .imported
                        .iter()
                        .map(|(r, d)| format!("imported {r} {d}"))
                        .collect();
                    cx.log.write(
                        &hp.host,
                        &format!(
                            "images ok: {} blob(s), {} byte(s) received",
                            got.blobs.len(),
                            got.bytes()
                        ),
                        &lines.join("\n"),
                    );
                    cx.progress.host_done(
                        &hp.host,
                        &format!(
                            "{} image(s) imported ({} sent)",
                            got.imported.len(),
                            images::human_bytes(got.bytes())
                        ),
                        true,
                    );
                }
                Err((error, output)) => {
                    cx.log
                        .write(&hp.host, &format!("images FAILED: {error}"), output);
                    cx.progress.failure(
                        &hp.host,
                        "images",
                        &cx.log.redact(&tail(output, TAIL_LINES)),
                    );
                    cx.progress
                        .host_done(&hp.host, &format!("failed at images: {error}"), false);
                }
            }
            (hp.host.clone(), hp.images.len(), r)
        }
    }))
    .await;
    for (host, n, r) in results {
        match r {
            Ok(got) => {
                report.changed += n;
                if let Some((_, HostOutcome::Converged { changed })) =
                    report.hosts.iter_mut().find(|(h, _)| *h == host)
                {
                    *changed += n;
                }
                report.images.push((host, got));
            }
            Err((error, _)) => {
                if let Some((_, o)) = report.hosts.iter_mut().find(|(h, _)| *h == host) {
                    *o = HostOutcome::Failed {
                        step: "images".into(),
                        error,
                    };
                }
            }
        }
    }
}

async fn run_phase<H: Host, C: ClusterOps>(
    hps: &[&HostPlan],
    master: Option<&H>,
    cx: &Context<'_, H, C>,
) -> Vec<HostOutcome> {
    let sem = Semaphore::new(cx.parallel.max(1));
    join_all(hps.iter().map(|hp| {
        let sem = &sem;
        async move {
            let _permit = sem.acquire().await;
            run_host(hp, master, cx).await
        }
    }))
    .await
}

async fn run_host<H: Host, C: ClusterOps>(
    hp: &HostPlan,
    master: Option<&H>,
    cx: &Context<'_, H, C>,
) -> HostOutcome {
    if let Some(e) = &hp.error {
        cx.progress
            .host_done(&hp.host, &format!("unreachable: {e}"), false);
        return HostOutcome::Unreachable { error: e.clone() };
    }
    let host = match cx.hosts.get(&hp.host) {
        Some(Ok(h)) => h.clone(),
        Some(Err(e)) => return HostOutcome::Unreachable { error: e.clone() },
        None => {
            return HostOutcome::Unreachable {
                error: "not connected".into(),
            };
        }
    };
    let total = hp.changes.len();
    let mut i = 0;
    while i < total {
        // Consecutive scripts go in one round trip (one script, a marker around each step);
        // fetches, joins and cluster steps run on their own.
        let batch: Vec<&Change> = hp.changes[i..]
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
                let r = Err((
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
    let msg = if total == 0 {
        "no changes".to_string()
    } else {
        format!("{total} change(s) made")
    };
    cx.progress.host_done(&hp.host, &msg, true);
    HostOutcome::Converged { changed: total }
}

type StepResult = Result<String, (String, String)>;

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
        Err((error, output)) => {
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

const MARK: &str = "@@AION-STEP";

/// Several script steps in one round trip: each in a `set -e` subshell between markers on
/// stdout and stderr; the first failing step ends the script. Returns one result per step
/// that ran (fewer than `batch` when the transport broke or a step failed).
/// Err: the transport broke (the script's fate on the host is unknown).
async fn run_batch<H: Host>(
    user: &str,
    batch: &[&Change],
    host: &H,
) -> Result<Vec<StepResult>, String> {
    let mut script = prelude(user);
    for (n, c) in batch.iter().enumerate() {
        let Action::Script { script: body, .. } = &c.action else {
            continue;
        };
        script.push_str(&format!(
            "printf '\\n{MARK} {n}\\n'; printf '\\n{MARK} {n}\\n' >&2\n\
             ( set -e\n{body}\n)\nrc=$?\n\
             printf '\\n{MARK} {n} end %s\\n' \"$rc\"; printf '\\n{MARK} {n} end\\n' >&2\n\
             [ \"$rc\" -eq 0 ] || exit \"$rc\"\n"
        ));
    }
    let out = host.run(&script).await.map_err(|e| e.to_string())?;
    let stdout = split_marked(&out.stdout_str());
    let stderr = split_marked(&String::from_utf8_lossy(&out.stderr));
    let mut results = Vec::new();
    for n in 0..batch.len() {
        let Some((text, status)) = stdout.get(&n) else {
            break;
        };
        let mut text = text.clone();
        if let Some((err, _)) = stderr.get(&n)
            && !err.trim().is_empty()
        {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(err);
        }
        match status {
            Some(0) => results.push(Ok(text)),
            Some(rc) => {
                results.push(Err((format!("exit status {rc}"), text)));
                break;
            }
            None => {
                results.push(Err((
                    format!("the step did not finish (exit status {})", out.status),
                    text,
                )));
                break;
            }
        }
    }
    Ok(results)
}

/// Split marked output into step number → (text, exit status if the end marker was seen).
fn split_marked(text: &str) -> BTreeMap<usize, (String, Option<i32>)> {
    let mut map: BTreeMap<usize, (String, Option<i32>)> = BTreeMap::new();
    let mut current: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if let Some(rest) = bare.strip_prefix(MARK) {
            let mut words = rest.split_whitespace();
            if let Some(n) = words.next().and_then(|w| w.parse::<usize>().ok()) {
                if words.next() == Some("end") {
                    let status = words.next().and_then(|w| w.parse().ok());
                    if let Some(e) = map.get_mut(&n) {
                        e.1 = status;
                        // the marker's leading newline is not the step's output
                        if e.0.ends_with('\n') {
                            e.0.pop();
                        }
                    }
                    current = None;
                } else {
                    map.insert(n, (String::new(), None));
                    current = Some(n);
                }
                continue;
            }
        }
        if let Some(n) = current
            && let Some(e) = map.get_mut(&n)
        {
            e.0.push_str(line);
        }
    }
    map
}

/// Run one action. Ok: text for the log; Err: (short error, full output for the log).
async fn run_action<H: Host, C: ClusterOps>(
    user: &str,
    action: &Action,
    host: &H,
    master: Option<&H>,
    cx: &Context<'_, H, C>,
) -> Result<String, (String, String)> {
    match action {
        Action::Script {
            script,
            secret_output,
        } => {
            let full = format!("set -e\n{}{script}", prelude(user));
            let out = host
                .run(&full)
                .await
                .map_err(|e| (e.to_string(), String::new()))?;
            let text = if *secret_output {
                "(output not logged: secret)".to_string()
            } else {
                out.combined()
            };
            if out.success() {
                Ok(text)
            } else {
                Err((format!("exit status {}", out.status), text))
            }
        }
        Action::Fetch { src, dest } => {
            let script = format!("{}cat {}\n", prelude(user), path_expr(src));
            let out = host
                .run(&script)
                .await
                .map_err(|e| (e.to_string(), String::new()))?;
            if !out.success() {
                return Err((
                    format!("reading {src} failed (exit {})", out.status),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
            write_local_secret(dest, &out.stdout)
                .map_err(|e| (format!("writing {}: {e}", dest.display()), String::new()))?;
            Ok(format!(
                "fetched {src} to {} (0600; content not logged)",
                dest.display()
            ))
        }
        Action::Join { node_name } => {
            let Some(master) = master else {
                return Err(("no master to create a join token".into(), String::new()));
            };
            let out = master
                .run("kubeadm token create --print-join-command --ttl 10m\n")
                .await
                .map_err(|e| (e.to_string(), String::new()))?;
            if !out.success() {
                return Err((
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
                return Err((
                    "unexpected output from `kubeadm token create --print-join-command`".into(),
                    String::new(),
                ));
            }
            let script = format!("set -e\n{join} --node-name {}\n", sh_quote(node_name));
            let out = host
                .run(&script)
                .await
                .map_err(|e| (e.to_string(), String::new()))?;
            let text = cx.log.redact(&out.combined());
            if out.success() {
                Ok(text)
            } else {
                Err((format!("kubeadm join exit status {}", out.status), text))
            }
        }
        Action::Cluster(step) => cx.cluster.run(step).await.map_err(|e| (e.clone(), e)),
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

pub mod kube_steps {
    //! [`KubeCluster`]: the cluster steps over the Kubernetes API (kube-rs), with the admin
    //! kubeconfig fetched from the master. Flannel is applied with server-side apply; a
    //! server-side dry-run compared with the live object decides whether anything changes.

    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use kube::api::{Api, DynamicObject, Patch, PatchParams};
    use kube::core::GroupVersionKind;
    use kube::discovery::{Scope, pinned_kind};
    use serde_json::Value;
    use tokio::sync::OnceCell;

    use super::ClusterOps;
    use crate::change::ClusterStep;
    use crate::manifest::FIELD_MANAGER;
    use crate::plan::ClusterCheck;

    const TAINTS: [&str; 2] = [
        "node-role.kubernetes.io/master",
        "node-role.kubernetes.io/control-plane",
    ];

    pub struct KubeCluster {
        kubeconfig: PathBuf,
        client: OnceCell<kube::Client>,
        /// Rendered templates by name: the objects of each.
        manifests: Vec<(String, Vec<Value>)>,
    }

    impl KubeCluster {
        pub fn new(kubeconfig: PathBuf, manifests: Vec<(String, Vec<Value>)>) -> KubeCluster {
            KubeCluster {
                kubeconfig,
                client: OnceCell::new(),
                manifests,
            }
        }

        async fn client(&self) -> Result<kube::Client, String> {
            if !self.kubeconfig.exists() {
                return Err(format!(
                    "no kubeconfig at {} yet",
                    self.kubeconfig.display()
                ));
            }
            self.client
                .get_or_try_init(|| async {
                    crate::kubeclient::client_from(&self.kubeconfig)
                        .await
                        .map_err(|e| e.to_string())
                })
                .await
                .cloned()
        }

        fn objects(&self, name: &str) -> Result<&[Value], String> {
            self.manifests
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
                .ok_or_else(|| format!("unknown template {name}"))
        }

        async fn api_for(
            &self,
            client: &kube::Client,
            obj: &Value,
        ) -> Result<(Api<DynamicObject>, String), String> {
            let api_version = obj["apiVersion"].as_str().unwrap_or_default();
            let kind = obj["kind"].as_str().unwrap_or_default();
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let (ar, caps) = pinned_kind(client, &gvk)
                .await
                .map_err(|e| format!("{kind}: {e}"))?;
            Ok(api_with(client, obj, &ar, &caps))
        }

        /// Objects of a template that a server-side apply would change (by name). Every
        /// object is checked at once (a GET and a server-side dry-run apply, concurrently),
        /// after the distinct kinds are resolved once each.
        async fn manifest_drift(&self, name: &str) -> Result<Vec<String>, String> {
            let client = self.client().await?;
            let objects = self.objects(name)?;
            let mut kinds: Vec<(&str, &str)> = objects
                .iter()
                .map(|o| {
                    (
                        o["apiVersion"].as_str().unwrap_or_default(),
                        o["kind"].as_str().unwrap_or_default(),
                    )
                })
                .collect();
            kinds.sort_unstable();
            kinds.dedup();
            let resolved = futures::future::try_join_all(kinds.iter().map(|(av, kind)| {
                let client = &client;
                async move {
                    let (group, version) = av.split_once('/').unwrap_or(("", av));
                    pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
                        .await
                        .map(|r| ((*av, *kind), r))
                        .map_err(|e| format!("{kind}: {e}"))
                }
            }))
            .await?;
            let resolved: std::collections::HashMap<_, _> = resolved.into_iter().collect();
            let checks = objects.iter().map(|obj| {
                let (client, resolved) = (&client, &resolved);
                async move {
                    let key = (
                        obj["apiVersion"].as_str().unwrap_or_default(),
                        obj["kind"].as_str().unwrap_or_default(),
                    );
                    let (ar, caps) = &resolved[&key];
                    let (api, label) = api_with(client, obj, ar, caps);
                    let oname = obj["metadata"]["name"].as_str().unwrap_or_default();
                    let pp = PatchParams::apply(FIELD_MANAGER).force().dry_run();
                    let patch = Patch::Apply(obj);
                    let (live, dry) =
                        tokio::join!(api.get_opt(oname), api.patch(oname, &pp, &patch));
                    let live = live.map_err(|e| format!("{label}: {e}"))?;
                    let Some(live) = live else {
                        // (the dry run may fail, e.g. in a namespace that does not exist yet)
                        return Ok(Some(format!("+{label}")));
                    };
                    let dry = dry.map_err(|e| format!("{label}: {e}"))?;
                    let changed = strip(serde_json::to_value(&dry).unwrap_or_default())
                        != strip(serde_json::to_value(&live).unwrap_or_default());
                    Ok::<_, String>(changed.then(|| format!("~{label}")))
                }
            });
            let drift = futures::future::try_join_all(checks).await?;
            Ok(drift.into_iter().flatten().collect())
        }

        /// kubeadm's `ClusterConfiguration` (kube-system/kubeadm-config), if there is one.
        async fn kubeadm_cluster_configuration(&self) -> Result<Option<String>, String> {
            let client = self.client().await?;
            let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(client, "kube-system");
            let cm = cms
                .get_opt("kubeadm-config")
                .await
                .map_err(|e| format!("kube-system/kubeadm-config: {e}"))?;
            Ok(cm
                .and_then(|c| c.data)
                .and_then(|mut d| d.remove("ClusterConfiguration")))
        }

        async fn node(
            &self,
            node: &str,
        ) -> Result<Option<k8s_openapi::api::core::v1::Node>, String> {
            let client = self.client().await?;
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
            nodes
                .get_opt(node)
                .await
                .map_err(|e| format!("node {node}: {e}"))
        }
    }

    /// The API for `obj` (its namespace when namespaced) and a `Kind/name` label.
    fn api_with(
        client: &kube::Client,
        obj: &Value,
        ar: &kube::discovery::ApiResource,
        caps: &kube::discovery::ApiCapabilities,
    ) -> (Api<DynamicObject>, String) {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let api = match (&caps.scope, obj["metadata"]["namespace"].as_str()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), ar),
            (Scope::Cluster, _) => Api::all_with(client.clone(), ar),
        };
        (api, format!("{kind}/{name}"))
    }

    fn strip(mut v: Value) -> Value {
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
            m.remove("resourceVersion");
            m.remove("generation");
        }
        v
    }

    fn has_master_taint(n: &k8s_openapi::api::core::v1::Node) -> bool {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| TAINTS.contains(&t.key.as_str())))
    }

    fn is_ready(n: &k8s_openapi::api::core::v1::Node) -> bool {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }

    impl ClusterOps for KubeCluster {
        async fn check(&self, step: &ClusterStep) -> ClusterCheck {
            match step {
                ClusterStep::ApplyManifest(name) => match self.manifest_drift(name).await {
                    Ok(d) if d.is_empty() => ClusterCheck::Unchanged,
                    Ok(d) => ClusterCheck::Needed(d.join(" ")),
                    Err(e) => ClusterCheck::Unknown(e),
                },
                ClusterStep::Untaint { node } => match self.node(node).await {
                    Ok(Some(n)) if !has_master_taint(&n) => ClusterCheck::Unchanged,
                    Ok(Some(_)) => ClusterCheck::Needed("taints present".into()),
                    Ok(None) => ClusterCheck::Unknown(format!("node {node} not registered yet")),
                    Err(e) => ClusterCheck::Unknown(e),
                },
                ClusterStep::WaitNodeReady { node, .. } => match self.node(node).await {
                    Ok(Some(n)) if is_ready(&n) => ClusterCheck::Unchanged,
                    Ok(Some(_)) => ClusterCheck::Needed("not Ready".into()),
                    Ok(None) => ClusterCheck::Unknown(format!("node {node} not registered yet")),
                    Err(e) => ClusterCheck::Unknown(e),
                },
                ClusterStep::InitSettings {
                    host,
                    pod_cidr,
                    extra_sans,
                    kubernetes_version,
                } => match self.kubeadm_cluster_configuration().await {
                    Ok(Some(cc)) => match crate::plan::init_settings_warnings(
                        host,
                        pod_cidr,
                        extra_sans,
                        kubernetes_version,
                        &cc,
                    ) {
                        Ok(w) if w.is_empty() => ClusterCheck::Unchanged,
                        Ok(w) => ClusterCheck::Warnings(w),
                        Err(e) => ClusterCheck::Warnings(vec![format!(
                            "{host}: cannot compare the init settings: {e}"
                        )]),
                    },
                    Ok(None) => ClusterCheck::Unknown("no kubeadm-config yet".into()),
                    Err(e) => ClusterCheck::Unknown(e),
                },
            }
        }

        async fn run(&self, step: &ClusterStep) -> Result<String, String> {
            let client = self.client().await?;
            match step {
                // read-only (the planner never makes a change of it)
                ClusterStep::InitSettings { .. } => Ok("nothing to do (read-only)".into()),
                ClusterStep::ApplyManifest(name) => {
                    let mut done = Vec::new();
                    for obj in self.objects(name)? {
                        let (api, label) = self.api_for(&client, obj).await?;
                        let oname = obj["metadata"]["name"].as_str().unwrap_or_default();
                        api.patch(
                            oname,
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(obj),
                        )
                        .await
                        .map_err(|e| format!("{label}: {e}"))?;
                        done.push(label);
                    }
                    Ok(format!("applied {}", done.join(", ")))
                }
                ClusterStep::Untaint { node } => {
                    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let n = loop {
                        match nodes.get_opt(node).await.map_err(|e| e.to_string())? {
                            Some(n) => break n,
                            None if Instant::now() < deadline => {
                                tokio::time::sleep(Duration::from_secs(1)).await
                            }
                            None => return Err(format!("node {node} is not registered")),
                        }
                    };
                    let keep: Vec<_> = n
                        .spec
                        .and_then(|s| s.taints)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|t| !TAINTS.contains(&t.key.as_str()))
                        .collect();
                    let patch = serde_json::json!({"spec": {"taints": keep}});
                    nodes
                        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| format!("node {node}: {e}"))?;
                    Ok(format!("removed master/control-plane taints from {node}"))
                }
                ClusterStep::WaitNodeReady {
                    node,
                    timeout_seconds,
                } => {
                    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
                    let deadline = Instant::now() + Duration::from_secs(*timeout_seconds);
                    loop {
                        if let Some(n) = nodes.get_opt(node).await.map_err(|e| e.to_string())?
                            && is_ready(&n)
                        {
                            return Ok(format!("node {node} is Ready"));
                        }
                        if Instant::now() > deadline {
                            return Err(format!("node {node} not Ready after {timeout_seconds} s"));
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The engine end to end on [`LocalHost`]s: real scripts, stand-in commands under a scratch
    //! root, a fake cluster.

    use std::path::Path;
    use std::sync::Mutex;

    use aion_model::inventory::{Host as InvHost, HostVars, Inventory, Mode, Role, SshSettings};

    use super::*;
    use crate::change::ChangeKind;
    use crate::host::local::LocalHost;

    const STANDINS: &[(&str, &str)] = &[
        (
            "hostname",
            r#"if [ $# -gt 0 ]; then echo "$1" > "$AION_ROOT/run-hostname"; else cat "$AION_ROOT/run-hostname" 2>/dev/null || echo localhost; fi"#,
        ),
        (
            "systemctl",
            r#"mkdir -p "$AION_ROOT/svc"; case $1 in
  is-enabled) cat "$AION_ROOT/svc/$2.enabled" 2>/dev/null || { echo disabled; exit 1; } ;;
  is-active) cat "$AION_ROOT/svc/$2.active" 2>/dev/null || { echo inactive; exit 3; } ;;
  enable) echo enabled > "$AION_ROOT/svc/$2.enabled" ;;
  start|restart) echo active > "$AION_ROOT/svc/$2.active" ;;
esac"#,
        ),
        (
            "dpkg-query",
            r#"for a in "$@"; do case $a in -*) ;; *) [ -f "$AION_ROOT/dpkg/$a" ] && printf 'P\t%s\t%s\n' "$a" "$(cat "$AION_ROOT/dpkg/$a")" ;; esac; done; exit 0"#,
        ),
        (
            "apt-get",
            r#"mkdir -p "$AION_ROOT/dpkg"; [ "$1" = install ] || exit 0; for a in "$@"; do case $a in -*|install) ;; *) n=${a%%=*}; v=${a#*=}; [ "$v" = "$a" ] && v=1.0; v=${v%\*}; printf '%s1.1\tii ' "$v" > "$AION_ROOT/dpkg/$n" ;; esac; done"#,
        ),
        (
            "apt-mark",
            r#"shift; for n in "$@"; do v=$(cut -f1 "$AION_ROOT/dpkg/$n"); printf '%s\thi ' "$v" > "$AION_ROOT/dpkg/$n"; done"#,
        ),
        (
            "getent",
            r#"case $1 in passwd) echo "$2:x:0:0::/home/$2:/bin/sh" ;; group) [ -f "$AION_ROOT/group-$2" ] ;; esac"#,
        ),
        (
            "groupadd",
            r#"for a in "$@"; do g=$a; done; touch "$AION_ROOT/group-$g""#,
        ),
        ("usermod", r#"echo "$2" >> "$AION_ROOT/groups-$3""#),
        (
            "id",
            r#"if [ "$1" = -nG ]; then echo "$2 $(cat "$AION_ROOT/groups-$2" 2>/dev/null | tr '\n' ' ')"; fi"#,
        ),
        (
            "kubeadm",
            r#"case $1 in
  init) mkdir -p "$AION_ROOT/etc/kubernetes"; echo "apiVersion: v1 # admin $*" > "$AION_ROOT/etc/kubernetes/admin.conf" ;;
  token) echo "kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:00112233445566778899aabbccddeeff" ;;
  join) echo "$*" > "$AION_ROOT/join-args"; mkdir -p "$AION_ROOT/etc/kubernetes"; touch "$AION_ROOT/etc/kubernetes/kubelet.conf" ;;
esac"#,
        ),
    ];

    /// Roles exercising every resource type (the built-in ones need real package names).
    const ROLES: &[(&str, &str)] = &[
        (
            "base",
            r#"name: base
hosts: all
resources:
  - hostname: {name: "{{ host }}"}
  - directory: {path: /var/lib/aion}
  - directory: {path: "/var/lib/aion/{{ namespace }}/config", mode: "0750"}
  - directory: {path: "~/{{ host }}", owner: "{{ user }}"}
  - package: {names: [kubelet, kubeadm], version: "{{ kubernetes_version }}", hold: true}
  - file: {path: /etc/docker/daemon.json, content: "{\"gpu\": {{ gpu | tojson }}}\n", notify: docker}
  - service: {name: docker}
  - user_in_group: {user: "{{ user }}", group: docker}
  - line_in_file: {path: "~/.profile", line: "export A=1", match_prefix: "export A="}
  - line_in_file: {path: "~/.profile", line: "export B=1"}
  - command: {name: marker, check: 'test -f "$R/marker"', run: 'touch "$R/marker"'}
"#,
        ),
        (
            "master",
            r#"name: master
hosts: master
resources:
  - command: {name: kubeadm init, check: 'test -f "$R/etc/kubernetes/admin.conf"', run: "kubeadm init --pod-network-cidr={{ pod_cidr | sh }}"}
  - copy: {src: /etc/kubernetes/admin.conf, path: "~/.kube/config", owner: "{{ user }}"}
  - fetch: {src: /etc/kubernetes/admin.conf, dest: "{{ kubeconfig }}"}
cluster:
  - apply_manifest: flannel.yaml
"#,
        ),
        (
            "worker",
            r#"name: worker
hosts: worker
resources:
  - kubeadm_join: {node_name: "{{ host }}"}
"#,
        ),
    ];

    fn inv_host(name: &str, role: Role) -> InvHost {
        InvHost {
            name: name.into(),
            address: "127.0.0.1".into(),
            role,
            ssh: SshSettings {
                user: "root".into(),
                port: 22,
                key: None,
            },
            vars: HostVars {
                gpu: false,
                kubernetes_version: "1.37.2".into(),
                pod_cidr: "10.244.10.0/16".into(),
                extra_sans: vec![],
                registry_prefix: "latonaio".into(),
                namespace: "default".into(),
                ..Default::default()
            },
            services: None,
            data_sweeper: None,
            span: Default::default(),
        }
    }

    struct Bed {
        dir: tempfile::TempDir,
        inv: Inventory,
        hosts: BTreeMap<String, Result<Arc<LocalHost>, String>>,
    }

    fn bed() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, body) in STANDINS {
            use std::os::unix::fs::PermissionsExt as _;
            let p = bin.join(name);
            std::fs::write(
                &p,
                format!("#!/bin/sh\necho \"{name} $*\" >> \"$AION_ROOT/calls.log\"\n{body}\n"),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let inv = Inventory {
            source: dir.path().join("inventory.yml"),
            name: "t".into(),
            mode: Mode::Cluster,
            known_hosts: None,
            kubeconfig: dir.path().join(".aion/kubeconfig"),
            revision_history: aion_model::inventory::DEFAULT_REVISION_HISTORY,
            previous_images: aion_model::inventory::DEFAULT_PREVIOUS_IMAGES,
            image_sources: Vec::new(),
            hosts: vec![inv_host("m1", Role::Master), inv_host("w1", Role::Worker)],
            span: Default::default(),
        };
        let mut hosts = BTreeMap::new();
        for h in &inv.hosts {
            let root = dir.path().join(&h.name);
            std::fs::create_dir_all(&root).unwrap();
            let lh = LocalHost {
                name: h.name.clone(),
                root,
                bin: Some(bin.clone()),
            };
            hosts.insert(h.name.clone(), Ok(Arc::new(lh)));
        }
        Bed { dir, inv, hosts }
    }

    #[derive(Default)]
    struct FakeCluster {
        applied: Mutex<Vec<String>>,
    }

    impl ClusterOps for FakeCluster {
        async fn check(&self, step: &ClusterStep) -> ClusterCheck {
            if self.applied.lock().unwrap().contains(&format!("{step:?}")) {
                ClusterCheck::Unchanged
            } else {
                ClusterCheck::Needed("missing".into())
            }
        }
        async fn run(&self, step: &ClusterStep) -> Result<String, String> {
            self.applied.lock().unwrap().push(format!("{step:?}"));
            Ok("applied".into())
        }
    }

    fn calls(dir: &Path, host: &str) -> String {
        std::fs::read_to_string(dir.join(host).join("calls.log")).unwrap_or_default()
    }

    async fn run_apply(
        b: &Bed,
        specs: &[HostSpec],
        cluster: &FakeCluster,
    ) -> (Plan, ApplyReport, String) {
        let plan = plan_all(specs, &b.hosts, cluster, 4, &images::Wanted::new(), 1).await;
        let log = Log::create(&b.dir.path().join("logs")).unwrap();
        let progress = Progress::new(false);
        let cx = Context {
            hosts: &b.hosts,
            cluster,
            progress: &progress,
            log: &log,
            parallel: 4,
        };
        let report = apply(&plan, &cx).await;
        let log_text = std::fs::read_to_string(log.path()).unwrap();
        (plan, report, log_text)
    }

    #[tokio::test]
    async fn apply_converges_then_second_run_changes_nothing() {
        let b = bed();
        let specs = crate::roles::load_with(&b.inv, ROLES).unwrap();
        let cluster = FakeCluster::default();
        let (plan, report, log) = run_apply(&b, &specs, &cluster).await;
        assert!(report.ok(), "{report:?}\n{log}");
        let m = plan.host("m1").unwrap();
        assert!(
            m.changes
                .iter()
                .any(|c| c.id == "base/hostname:m1" && c.kind == ChangeKind::Change)
        );
        assert!(
            m.changes.iter().any(|c| c.id == "base/restart:docker"),
            "daemon.json notifies docker"
        );
        assert!(
            m.changes
                .last()
                .is_some_and(|c| c.id == "cluster/apply:flannel.yaml")
        );

        // Effects on the hosts.
        let root = b.dir.path().join("m1");
        assert_eq!(
            std::fs::read_to_string(root.join("run-hostname"))
                .unwrap()
                .trim(),
            "m1"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "m1\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("home/root/.profile")).unwrap(),
            "export A=1\nexport B=1\n"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(root.join("var/lib/aion/default/config"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);
        assert_eq!(
            std::fs::read_to_string(root.join("dpkg/kubelet")).unwrap(),
            "1.37.2-1.1\thi "
        );
        assert_eq!(
            std::fs::read_to_string(root.join("svc/docker.active"))
                .unwrap()
                .trim(),
            "active"
        );
        let kubeconfig = std::fs::metadata(&b.inv.kubeconfig).unwrap();
        assert_eq!(kubeconfig.permissions().mode() & 0o777, 0o600);
        assert!(root.join("home/root/.kube/config").exists());
        assert!(
            calls(b.dir.path(), "m1").contains("kubeadm init --pod-network-cidr=10.244.10.0/16")
        );
        let join = std::fs::read_to_string(b.dir.path().join("w1/join-args")).unwrap();
        assert!(join.contains("--node-name w1"), "{join}");
        assert!(
            !b.dir.path().join("w1/etc/kubernetes/admin.conf").exists(),
            "admin.conf never reaches a worker"
        );
        // The join token never reaches the log.
        assert!(
            !log.contains("0123456789abcdef") && !log.contains("00112233445566778899"),
            "{log}"
        );

        // Second run: nothing to do, and no command with side effects runs.
        let before: Vec<String> = ["m1", "w1"]
            .iter()
            .map(|h| calls(b.dir.path(), h))
            .collect();
        let (plan2, report2, _) = run_apply(&b, &specs, &cluster).await;
        assert!(
            !plan2.has_changes(),
            "{}",
            crate::plan_text::render_text(&plan2, crate::plan_text::Style { color: false })
        );
        assert_eq!(report2.changed, 0);
        for (i, h) in ["m1", "w1"].iter().enumerate() {
            let new_calls = calls(b.dir.path(), h)[before[i].len()..].to_string();
            for side_effect in [
                "apt-get",
                "apt-mark",
                "usermod",
                "groupadd",
                "kubeadm",
                "systemctl enable",
                "systemctl start",
                "systemctl restart",
                "hostname m",
                "hostname w",
            ] {
                let ran = new_calls.lines().any(|l| l.starts_with(side_effect));
                assert!(
                    !ran,
                    "{h} ran {side_effect} on a converged host:\n{new_calls}"
                );
            }
        }

        // One changed variable → exactly that change in the plan (plus the restart it notifies).
        let mut inv = b.inv.clone();
        inv.hosts[1].vars.gpu = true;
        let specs = crate::roles::load_with(&inv, ROLES).unwrap();
        let plan3 = plan_all(&specs, &b.hosts, &cluster, 4, &images::Wanted::new(), 1).await;
        assert!(plan3.host("m1").unwrap().changes.is_empty());
        let ids: Vec<&str> = plan3
            .host("w1")
            .unwrap()
            .changes
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(
            ids,
            ["base/file:/etc/docker/daemon.json", "base/restart:docker"]
        );
        let diff = plan3.host("w1").unwrap().changes[0].diff.clone().unwrap();
        assert!(
            diff.contains("-{\"gpu\": false}") && diff.contains("+{\"gpu\": true}"),
            "{diff}"
        );
    }

    #[tokio::test]
    async fn failing_master_skips_its_workers_and_unreachable_host_is_reported() {
        let mut b = bed();
        // kubeadm init fails on the master.
        std::fs::write(
            b.dir.path().join("bin/kubeadm"),
            "#!/bin/sh\necho 'preflight: port 6443 in use' >&2\nexit 3\n",
        )
        .unwrap();
        let specs = crate::roles::load_with(&b.inv, ROLES).unwrap();
        let cluster = FakeCluster::default();
        let (_, report, log) = run_apply(&b, &specs, &cluster).await;
        assert!(!report.ok());
        match report.outcome("m1").unwrap() {
            HostOutcome::Failed { step, .. } => assert_eq!(step, "master/command:kubeadm init"),
            o => panic!("{o:?}"),
        }
        assert!(
            matches!(report.outcome("w1").unwrap(), HostOutcome::Skipped { reason } if reason.contains("m1"))
        );
        assert!(log.contains("preflight: port 6443 in use"));

        // An unreachable worker: the master still converges.
        let b2 = bed();
        b.hosts = b2.hosts.clone();
        let mut hosts = b2.hosts.clone();
        hosts.insert(
            "w1".into(),
            Err("w1: cannot connect over SSH: timeout".into()),
        );
        let bb = Bed {
            dir: b2.dir,
            inv: b2.inv,
            hosts,
        };
        let (plan, report, _) = run_apply(&bb, &specs, &cluster).await;
        assert_eq!(plan.counts.failed_hosts, 1);
        assert!(report.outcome("m1").unwrap().ok());
        assert!(matches!(
            report.outcome("w1").unwrap(),
            HostOutcome::Unreachable { .. }
        ));
    }

    #[test]
    fn marked_output_splits_per_step() {
        let out = "\n@@AION-STEP 0\nhello\n\n@@AION-STEP 0 end 0\n\n@@AION-STEP 1\nboom\n\n@@AION-STEP 1 end 3\n\n@@AION-STEP 2\npartial";
        let m = split_marked(out);
        assert_eq!(m[&0], ("hello\n".to_string(), Some(0)));
        assert_eq!(m[&1], ("boom\n".to_string(), Some(3)));
        assert_eq!(m[&2], ("partial".to_string(), None));
    }

    #[test]
    fn duplicate_hostnames_fail_before_anything_runs() {
        let b = bed();
        let mut inv = b.inv.clone();
        inv.hosts.push(inv_host("M1", Role::Worker));
        let e = crate::roles::load_with(&inv, ROLES)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m1") && e.contains("M1") && e.contains("unique"),
            "{e}"
        );
    }

    #[test]
    fn every_namespace_gets_its_config_and_data_directories() {
        // Upstream's layout: /var/lib/aion/<namespace>/{config,Data} for the namespaces it
        // ships (default, prj) and for any other the inventory names.
        let b = bed();
        for ns in ["default", "prj", "line-3"] {
            let mut inv = b.inv.clone();
            inv.hosts[0].vars.namespace = ns.into();
            let specs = crate::roles::load(&inv).unwrap();
            let ids: Vec<&str> = specs[0].items.iter().map(|i| i.id.as_str()).collect();
            for d in ["config", "Data"] {
                let want = format!("directories/directory:/var/lib/aion/{ns}/{d}");
                assert!(ids.contains(&want.as_str()), "{want} missing: {ids:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_microservice_placed_on_another_host_finds_its_namespace_config_there() {
        // w1's `pong` runs on m1 (targetNode) in namespace w1 and mounts
        // /var/lib/aion/w1/config from m1: m1 must hold w1's services.yml (seen on running
        // pods: the kanban client found no services.yml there and never started).
        let b = bed();
        let mut inv = b.inv.clone();
        inv.hosts[1].vars.namespace = "w1".into();
        let m1_file = b.dir.path().join("m1-services.yml");
        let w1_file = b.dir.path().join("w1-services.yml");
        let m1_text = "microservices:\n  local:\n    always: yes\n";
        let w1_text = "microservices:\n  pong:\n    always: yes\n    targetNode: m1\n  stray:\n    targetNode: elsewhere\n";
        std::fs::write(&m1_file, m1_text).unwrap();
        std::fs::write(&w1_file, w1_text).unwrap();
        inv.hosts[0].services = Some(m1_file);
        inv.hosts[1].services = Some(w1_file.clone());

        let guests = crate::roles::guest_configs(&inv).unwrap();
        assert_eq!(
            guests.keys().collect::<Vec<_>>(),
            ["m1"],
            "only m1 hosts a guest; a target outside the inventory gets nothing"
        );
        assert_eq!(guests["m1"][0].owner, "w1");

        let roles: Vec<(&str, &str)> = crate::roles::BUILTIN
            .iter()
            .filter(|(n, _)| matches!(*n, "directories" | "services"))
            .copied()
            .collect();
        let specs = crate::roles::load_with(&inv, &roles).unwrap();
        let cluster = FakeCluster::default();
        let (_, report, log) = run_apply(&b, &specs, &cluster).await;
        assert!(report.ok(), "{report:?}\n{log}");
        let m1 = b.dir.path().join("m1/var/lib/aion");
        assert_eq!(
            std::fs::read_to_string(m1.join("w1/config/services.yml")).unwrap(),
            w1_text
        );
        assert!(m1.join("w1/Data").is_dir());
        assert_eq!(
            std::fs::read_to_string(m1.join("default/config/services.yml")).unwrap(),
            m1_text,
            "the host's own namespace keeps its own file"
        );
        let w1 = b.dir.path().join("w1/var/lib/aion");
        assert_eq!(
            std::fs::read_to_string(w1.join("w1/config/services.yml")).unwrap(),
            w1_text
        );
        assert!(
            !w1.join("default/config/services.yml").exists(),
            "m1 places nothing on w1"
        );

        let (plan, report, log) = run_apply(&b, &specs, &cluster).await;
        assert!(report.ok(), "{report:?}\n{log}");
        assert!(!plan.has_changes(), "a second apply converges: {plan:?}");
    }

    #[test]
    fn builtin_roles_render_for_single_and_cluster_mode() {
        let b = bed();
        let mut inv = b.inv.clone();
        inv.hosts[0].vars.extra_sans = vec!["edge.example".into(), "10.1.2.3".into()];
        inv.hosts[1].vars.gpu = true;
        inv.hosts[1].vars.namespace = "w1".into();
        let specs = crate::roles::load(&inv).unwrap();
        let ids: Vec<&str> = specs[0].items.iter().map(|i| i.id.as_str()).collect();
        assert!(
            ids.contains(&"master/command:kubeadm init")
                && ids.contains(&"docker/file:/etc/docker/daemon.json"),
            "{ids:?}"
        );
        let init = specs[0]
            .items
            .iter()
            .find(|i| i.id == "master/command:kubeadm init")
            .unwrap();
        let Resource::Command { run, .. } = &init.resource else {
            panic!()
        };
        assert!(
            run.contains("--pod-network-cidr='10.244.10.0/16'")
                && run.contains("--apiserver-cert-extra-sans='edge.example,10.1.2.3'"),
            "{run}"
        );
        assert!(
            specs[0]
                .cluster
                .iter()
                .any(|s| matches!(s, ClusterStep::Untaint { .. })),
            "cluster mode untaints the master too: the broker and the master's core are pinned there"
        );
        let w: Vec<&str> = specs[1].items.iter().map(|i| i.id.as_str()).collect();
        assert!(
            w.contains(&"worker/kubeadm_join:w1")
                && w.contains(&"directories/directory:/var/lib/aion/w1/Data"),
            "{w:?}"
        );
        assert!(
            !w.iter().any(|i| i.contains("admin.conf")),
            "workers never get admin.conf"
        );
        let daemon = specs[1]
            .items
            .iter()
            .find(|i| i.id == "docker/file:/etc/docker/daemon.json")
            .unwrap();
        let Resource::File {
            content: Some(c), ..
        } = &daemon.resource
        else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(c).unwrap();
        assert_eq!(v["default-runtime"], "nvidia");
        assert_eq!(v["features"]["buildkit"], true);
        inv.mode = Mode::Single;
        let specs = crate::roles::load(&inv).unwrap();
        assert!(
            specs[0]
                .cluster
                .iter()
                .any(|s| matches!(s, ClusterStep::Untaint { node } if node == "m1"))
        );
        let flannel = crate::roles::render_template(&inv, "flannel.yaml").unwrap();
        let kinds: Vec<&str> = flannel.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "DaemonSet"
            ]
        );
        assert!(
            flannel[4]["data"]["net-conf.json"]
                .as_str()
                .unwrap()
                .contains("10.244.10.0/16")
        );
    }
}
