//! `apply`: the phases in order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aion_model::Inventory;

use super::locks::Locks;
use super::phase::{PhaseError, PhaseResult};
use super::prepare::{
    Options, Prepared, close, load_and_render, nothing_to_do, plan_both, plan_hosts, prepare,
};
use crate::cluster::bootstrap::KubeCluster;
use crate::cluster::history::{self, History};
use crate::cluster::{self, ClusterApplyOptions, ClusterPlan};
use crate::execute::{self, ApplyReport, Context, HostOutcome};
use crate::host::ssh::SshHost;
use crate::images;
use crate::manifest::{Manifests, ObjectKey};
use crate::plan::Plan;
use crate::progress::{self, Log, Progress};
use crate::revision::Origin;
use crate::{kubeclient, output};

/// What only `apply` needs.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// A lock on the master older than this is considered stale and taken over.
    pub lock_stale_after: Duration,
    /// Wait this long, after applying (or finding nothing to change), for every workload of the
    /// installation to become ready; None: do not wait.
    pub wait: Option<Duration>,
    /// `--atomic`: after the cluster apply, wait this long for what changed to become ready;
    /// if it does not, roll back to the previous revision.
    pub atomic: Option<Duration>,
    /// How long, after the cluster part, the new pods may take to become ready before old
    /// image versions are removed (they are kept when they are not ready by then).
    pub ready_timeout: Duration,
    /// How progress shows on stderr (JSON lines with `-o json`).
    pub render: progress::Render,
}

/// A part of the plan `apply` is about to execute, shown before it runs.
pub enum Shown<'a> {
    /// The host plan (with the cluster part's summary), or the plan that shows nothing has to
    /// change.
    Hosts(&'a Plan),
    /// The cluster plan, made once the hosts converged (after `kubeadm init` when that is what
    /// makes the cluster reachable), right before it is applied.
    Cluster(&'a ClusterPlan),
}

/// Shows each part of the plan `apply` is about to execute.
pub type ShowPlan<'a> = &'a (dyn Fn(Shown<'_>) -> anyhow::Result<()> + Sync);

/// How an `apply` ended.
#[derive(Debug)]
pub struct Outcome {
    /// The plan that was executed (or, when nothing had to change, the plan that showed it).
    pub plan: Plan,
    pub report: ApplyReport,
    /// The cluster part: a summary line, or why it failed or was skipped.
    pub cluster: PhaseResult,
    /// The full log (none when nothing had to change: nothing ran).
    pub log: Option<PathBuf>,
    /// Whether the locks were taken (false when nothing had to change).
    pub locked: bool,
    /// With `--wait`: whether every workload became ready (a summary line), or what did not.
    pub readiness: Option<PhaseResult>,
    /// The revision this apply recorded (the cluster changed), or the rollback's revision when
    /// an `--atomic` apply was rolled back.
    pub revision: Option<u32>,
    /// Old image versions: what was removed, or why none were (the new pods did not become
    /// ready); None when the plan had none to remove.
    pub old_images: Option<PhaseResult>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.report.ok()
            && self.cluster.is_ok()
            && self.readiness.as_ref().is_none_or(|r| r.is_ok())
            && self.old_images.as_ref().is_none_or(|r| r.is_ok())
    }

    /// Nothing had to change: every host converged, nothing ran, no lock was taken.
    fn nothing_to_do(plan: Plan, cluster_summary: String) -> Outcome {
        let report = ApplyReport {
            hosts: plan
                .hosts
                .iter()
                .map(|h| (h.host.clone(), HostOutcome::Converged { changed: 0 }))
                .collect(),
            changed: 0,
            images: Vec::new(),
            image_removals: Vec::new(),
        };
        Outcome {
            plan,
            report,
            cluster: Ok(cluster_summary),
            log: None,
            locked: false,
            readiness: None,
            revision: None,
            old_images: None,
        }
    }
}

/// `apply`: plan first (read-only, no lock); when nothing would change, show that plan and
/// stop — no lock taken, no command with side effects run. Otherwise [`phases`] under the
/// locks. The locks are released and the SSH connections closed whatever happens; then, with
/// `--wait`, every workload is waited for.
pub async fn apply(
    o: &Options,
    a: &ApplyOptions,
    show_plan: ShowPlan<'_>,
) -> anyhow::Result<Outcome> {
    let p = prepare(o).await?;
    let (plan, cluster) = plan_both(o, &p).await;
    let result = match nothing_to_do(&plan, &cluster) {
        Some(cluster_summary) => {
            show_plan(Shown::Hosts(&plan)).map(|()| Outcome::nothing_to_do(plan, cluster_summary))
        }
        None => match Locks::acquire(&p, a.lock_stale_after).await {
            Ok(locks) => {
                let result = phases(o, a, &p, show_plan).await;
                locks.release().await;
                result
            }
            Err(e) => Err(e),
        },
    };
    close(p.hosts).await;
    let mut outcome = result?;
    if let Some(timeout) = a.wait
        && outcome.report.ok()
        && outcome.cluster.is_ok()
    {
        outcome.readiness = Some(wait_for_workloads(&o.inventory, timeout, a.render).await);
    }
    Ok(outcome)
}

/// The apply sequence, under the locks: each phase in order. A host that fails stops only
/// itself; the cluster part runs once every host converged.
async fn phases(
    o: &Options,
    a: &ApplyOptions,
    p: &Prepared,
    show_plan: ShowPlan<'_>,
) -> anyhow::Result<Outcome> {
    // 1. Re-plan under the locks (someone may have changed the hosts meanwhile): this is the
    //    plan shown and executed.
    let plan = plan_hosts(o, p).await;
    show_plan(Shown::Hosts(&plan))?;
    // One log and one renderer for the hosts' steps and, later, the cluster's objects.
    let log = Arc::new(Log::create(&p.state_dir.join("logs"))?);
    let progress = Arc::new(Progress::new(a.render));
    let cx = Context {
        hosts: &p.hosts,
        cluster: &p.cluster,
        progress: &progress,
        log: &log,
        parallel: o.parallel,
    };
    // 2. Hosts' runtime: every host's changes up to its container runtime, in parallel.
    let mut report = execute::apply_runtime(&plan, &cx).await;
    // 3. Images: each host gets the blobs it lacks, checked on the host before the import,
    //    before its kubelet (kubeadm's and Flannel's pods) or the cluster part needs them.
    execute::apply_images(&plan, &mut report, &cx).await;
    // 4. Hosts' Kubernetes: masters (host changes, then their cluster steps), then workers.
    execute::apply(&plan, &mut report, &cx).await;
    // 5. Cluster plan, once every host converged (the manifests pin pods to those nodes);
    // 6. cluster apply: server-side apply in kind order, prune, record the revision; under
    //    --atomic, wait for what changed, else roll back.
    let events = progress::cluster_events(progress.clone(), log.clone());
    let (cluster, revision) = match plan_cluster_after(&report, o, p).await {
        Ok(desired) if desired.plan.has_changes() => {
            show_plan(Shown::Cluster(&desired.plan))?;
            let applied = apply_cluster(&desired, a.atomic, events).await?;
            progress.cluster_done(
                applied.summary.as_deref().unwrap_or("failed"),
                applied.summary.is_ok(),
            );
            (applied.summary, applied.revision)
        }
        Ok(_) => (Ok("cluster: no changes".to_string()), None),
        Err(e) => (Err(e), None),
    };
    if let Err(e) = &cluster {
        log.write("cluster", "FAILED", &e.to_string());
    }
    // 7. Old images: once the new pods are ready, each host removes the old versions no pod
    //    on it uses (the previous N of each repository stay, for rollback).
    let old_images = if plan.counts.image_removals > 0 && cluster.is_ok() {
        Some(remove_old_images(o, p, &plan, &mut report, &cx, a).await)
    } else {
        None
    };
    if let Some(Err(e)) = &old_images {
        log.write("old images", "KEPT", &e.to_string());
    }
    Ok(Outcome {
        plan,
        report,
        cluster,
        log: Some(log.path().to_owned()),
        locked: true,
        readiness: None,
        revision,
        old_images,
    })
}

/// What the cluster should hold: the inventory and manifests the cluster plan was made from.
struct Desired {
    inventory: Inventory,
    manifests: Manifests,
    plan: ClusterPlan,
    /// The digests of the images sent from `imageSources` (recorded in the revision).
    digests: BTreeMap<String, String>,
}

/// Phase 4 of [`phases`]: the cluster part, planned after the hosts; skipped (an error naming the hosts) when
/// not every host converged.
async fn plan_cluster_after(
    report: &ApplyReport,
    o: &Options,
    p: &Prepared,
) -> Result<Desired, PhaseError> {
    if !report.ok() {
        let hosts = report
            .hosts
            .iter()
            .filter(|(_, outcome)| !outcome.ok())
            .map(|(h, _)| h.clone())
            .collect();
        return Err(PhaseError::HostsNotConverged { hosts });
    }
    if !p.inventory.kubeconfig.exists() {
        return Err(PhaseError::NoKubeconfig);
    }
    let planned = async {
        let (inventory, manifests) = load_and_render(&o.inventory)?;
        let client = kubeclient::client_from(&inventory.kubeconfig).await?;
        let plan = cluster::plan(&client, &manifests, &inventory).await?;
        anyhow::Ok(Desired {
            inventory,
            manifests,
            plan,
            digests: images::digests(&p.images),
        })
    };
    planned
        .await
        .map_err(|e| PhaseError::Cluster(output::chain(&*e)))
}

/// How phase 5 ended.
struct ClusterApplied {
    /// A summary, or what failed (under `--atomic`: what did not become ready, and the
    /// rollback).
    summary: PhaseResult,
    revision: Option<u32>,
}

/// Phase 5 of [`phases`]: apply the cluster plan and record the revision; under `--atomic`, wait for what
/// changed and roll back to the previous revision when it fails. Without a client for the
/// kubeconfig, the whole apply fails.
async fn apply_cluster(
    d: &Desired,
    atomic: Option<Duration>,
    events: cluster::ProgressFn,
) -> anyhow::Result<ClusterApplied> {
    let client = kubeclient::client_from(&d.inventory.kubeconfig).await?;
    let history = History::of(&client, &d.inventory);
    let keep = d.inventory.revision_history;
    let opts = ClusterApplyOptions {
        progress: Some(events),
        ..ClusterApplyOptions::default()
    };
    let applied = match cluster::apply_plan(&client, &d.plan, &opts).await {
        Ok(r) => r,
        // Nothing recorded: the cluster holds a part of this apply. Under --atomic, the
        // previous revision is restored; otherwise the next apply converges it.
        Err(e) if atomic.is_some() => {
            let why = output::chain(&e);
            return Ok(roll_back_failed(&client, &history, None, why, keep, atomic, &opts).await);
        }
        Err(e) => {
            return Ok(ClusterApplied {
                summary: Err(PhaseError::Cluster(output::chain(&e))),
                revision: None,
            });
        }
    };
    let inputs = history::input_hashes(&d.inventory)?;
    let number = match history
        .record(&d.manifests, Origin::Apply, inputs, &d.digests, keep)
        .await
    {
        Ok(n) => n,
        Err(e) => {
            return Ok(ClusterApplied {
                summary: Err(PhaseError::Cluster(format!(
                    "{}; but its revision could not be recorded: {}",
                    applied.summary(),
                    output::chain(&e)
                ))),
                revision: None,
            });
        }
    };
    let summary = format!("{}; revision {number} recorded", applied.summary());
    let Some(timeout) = atomic else {
        return Ok(ClusterApplied {
            summary: Ok(summary),
            revision: Some(number),
        });
    };
    match cluster::wait_ready(&client, &changed_workloads(&d.plan), timeout, &opts).await {
        Ok(()) => Ok(ClusterApplied {
            summary: Ok(format!("{summary}; everything it changed is ready")),
            revision: Some(number),
        }),
        Err(e) => {
            let why = output::chain(&e);
            Ok(roll_back_failed(&client, &history, Some(number), why, keep, atomic, &opts).await)
        }
    }
}

/// The workloads an `--atomic` apply waits for: the Deployments and Jobs it creates, changes or
/// replaces.
fn changed_workloads(plan: &ClusterPlan) -> Vec<ObjectKey> {
    plan.changes
        .iter()
        .filter(|c| {
            matches!(
                c.action,
                cluster::ObjectAction::Create
                    | cluster::ObjectAction::Change
                    | cluster::ObjectAction::Replace
            ) && matches!(c.key.kind.as_str(), "Deployment" | "Job")
        })
        .map(|c| c.key.clone())
        .collect()
}

/// `--atomic` failed (`failed`: the revision recorded for it, if it got that far): mark it
/// failed, roll back to the previous applied revision and wait for that as long again. The
/// result is always an error naming what failed and why, and what the rollback did.
async fn roll_back_failed(
    client: &kube::Client,
    history: &History,
    failed: Option<u32>,
    why: String,
    keep: u32,
    timeout: Option<Duration>,
    opts: &ClusterApplyOptions,
) -> ClusterApplied {
    let mut msg = match failed {
        Some(n) => format!("revision {n} did not become ready: {why}"),
        None => format!("the apply failed: {why}"),
    };
    if let Some(n) = failed
        && let Err(e) = history.mark_failed(n, &why).await
    {
        msg.push_str(&format!(
            "
could not mark revision {n} failed: {}",
            output::chain(&e)
        ));
    }
    let rolled = async {
        let rollback = history::plan_rollback(client, history, None, opts.concurrency).await?;
        let target = rollback.target.number;
        let (_, number) =
            history::execute_rollback(client, history, &rollback, failed, keep, opts).await?;
        anyhow::Ok((target, number))
    }
    .await;
    match rolled {
        Ok((target, number)) => {
            msg.push_str(&format!(
                "
rolled back to revision {target} (recorded as revision {number})"
            ));
            if let Some(t) = timeout {
                let keys: Vec<ObjectKey> = match history.load(Some(number)).await {
                    Ok(r) => r
                        .manifests()
                        .objects()
                        .filter(|o| matches!(o.key.kind.as_str(), "Deployment" | "Job"))
                        .map(|o| o.key.clone())
                        .collect(),
                    Err(_) => Vec::new(),
                };
                match cluster::wait_ready(client, &keys, t, opts).await {
                    Ok(()) => msg.push_str("; its workloads are ready again"),
                    Err(e) => msg.push_str(&format!(
                        "; but it did not become ready either: {}",
                        output::chain(&e)
                    )),
                }
            }
            ClusterApplied {
                summary: Err(PhaseError::RolledBack(msg)),
                revision: Some(number),
            }
        }
        Err(e) => {
            msg.push_str(&format!(
                "
not rolled back: {}",
                output::chain(&*e)
            ));
            ClusterApplied {
                summary: Err(PhaseError::RolledBack(msg)),
                revision: failed,
            }
        }
    }
}

/// Phase 6 of [`phases`]: wait until every workload is ready and no pod on a host with old
/// versions is still terminating (its containers may still run the old image), then remove
/// on each host the old versions no pod there names.
async fn remove_old_images(
    o: &Options,
    p: &Prepared,
    plan: &Plan,
    report: &mut ApplyReport,
    cx: &Context<'_, SshHost, KubeCluster>,
    a: &ApplyOptions,
) -> PhaseResult {
    let (start, timeout) = (std::time::Instant::now(), a.ready_timeout);
    let kept = PhaseError::OldImagesKept;
    wait_for_workloads(&o.inventory, timeout, a.render)
        .await
        .map_err(|e| kept(format!("the new pods are not ready: {e}")))?;
    let client = kubeclient::client_from(&p.inventory.kubeconfig)
        .await
        .map_err(|e| kept(output::chain(&e)))?;
    let hosts: std::collections::BTreeSet<&str> = plan
        .hosts
        .iter()
        .filter(|h| !h.image_removals.is_empty())
        .map(|h| h.host.as_str())
        .collect();
    let in_use = loop {
        let (in_use, terminating) = pod_images(&client, &hosts)
            .await
            .map_err(|e| kept(format!("listing pods: {}", output::chain(&e))))?;
        if terminating.is_empty() {
            break in_use;
        }
        if start.elapsed() >= timeout {
            return Err(kept(format!(
                "pods still terminating after {} s: {}",
                timeout.as_secs(),
                terminating.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let busy = execute::remove_old_images(plan, report, cx, &in_use).await;
    let removed: usize = report.image_removals.iter().map(|(_, r)| r.len()).sum();
    let mut s = format!(
        "old images: {removed} removed on {} host(s)",
        report.image_removals.len()
    );
    if !busy.is_empty() {
        let names: Vec<String> = busy
            .iter()
            .map(|(h, r)| format!("{h}: {}", r.reference))
            .collect();
        s.push_str(&format!(
            "; kept, a pod still uses them: {}",
            names.join(", ")
        ));
    }
    Ok(s)
}

/// The images the pods on `hosts` name (node → their images as normalised references and
/// their image IDs: `sha256:<id>`, `<repo>@sha256:…` and the bare digest), and the pods there
/// that are terminating.
async fn pod_images(
    client: &kube::Client,
    hosts: &std::collections::BTreeSet<&str>,
) -> Result<
    (
        BTreeMap<String, std::collections::BTreeSet<String>>,
        Vec<String>,
    ),
    kube::Error,
> {
    use k8s_openapi::api::core::v1::Pod;
    let pods = kube::Api::<Pod>::all(client.clone())
        .list(&kube::api::ListParams::default())
        .await?;
    let mut in_use: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut terminating = Vec::new();
    for pod in pods.items {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if !hosts.contains(node.as_str()) {
            continue;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            terminating.push(format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or(""),
                pod.metadata.name.as_deref().unwrap_or("")
            ));
        }
        let set = in_use.entry(node).or_default();
        let spec = pod.spec.as_ref();
        for c in spec.into_iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        }) {
            if let Some(i) = &c.image {
                set.insert(images::normalize(i));
            }
        }
        let status = pod.status.as_ref();
        for cs in status.into_iter().flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        }) {
            set.insert(images::normalize(&cs.image));
            set.insert(cs.image_id.clone());
            if let Some((_, d)) = cs.image_id.split_once('@') {
                set.insert(d.to_string());
            }
        }
    }
    Ok((in_use, terminating))
}

/// `--wait`, after the locks are released: every Deployment, Job and Service this inventory
/// renders becomes ready (Deployments the runtime scales to 0 count as ready at 0), and
/// pruned objects are gone. Progress goes to stderr as `<object>: <what>`.
async fn wait_for_workloads(
    inventory: &Path,
    timeout: Duration,
    render: progress::Render,
) -> PhaseResult {
    let not_ready = PhaseError::NotReady;
    let (inv, manifests) = load_and_render(inventory).map_err(|e| not_ready(output::chain(&*e)))?;
    let keys: Vec<ObjectKey> = manifests
        .objects()
        .map(|o| o.key.clone())
        .filter(|k| matches!(k.kind.as_str(), "Deployment" | "Job" | "Service"))
        .collect();
    let client = kubeclient::client_from(&inv.kubeconfig)
        .await
        .map_err(|e| not_ready(output::chain(&e)))?;
    let opts = ClusterApplyOptions {
        progress: Some(progress::cluster_lines(render)),
        ..Default::default()
    };
    let start = std::time::Instant::now();
    cluster::wait_ready(&client, &keys, timeout, &opts)
        .await
        .map_err(|e| not_ready(output::chain(&e)))?;
    // Pruned objects and those already being deleted (a Terminating namespace) are gone too.
    cluster::wait_pruned(
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
    .map_err(|e| not_ready(output::chain(&e)))
}
