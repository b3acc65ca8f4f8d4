//! Plan and apply, as the `plan` and `apply` commands run them; the commands only turn flags
//! into [`Options`] and print.
//!
//! * [`load_and_render`]: the inventory and every host's `services.yml`, rendered to manifests
//!   (also for `render`, `diff` and `status`).
//! * [`prepare`]: load the inventory, render the roles, connect to every host; [`plan_both`]:
//!   the host plan and the cluster part, side by side; [`plan`]: both, for `plan`.
//! * [`apply`]: plan read-only, and when anything would change, the phases in order — lock,
//!   re-plan under the locks, hosts in phases, images, cluster plan, cluster apply, then wait
//!   when asked.
//!   It executes exactly the plan it shows (through the caller's [`ShowPlan`]); re-running
//!   resumes, since the facts show what is already done.
//!
//! Besides the shown plan, only diagnostics (warnings on stderr) and the progress of the run
//! are printed from here; the summary is the caller's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aion_model::Inventory;
use anyhow::Context as _;
use futures::future::join_all;
use tokio::sync::Semaphore;

use crate::cluster::bootstrap::KubeCluster;
use crate::cluster::history::{self, History};
use crate::cluster::{self, ClusterApplyOptions, ClusterPlan};
use crate::execute::{self, ApplyReport, Context, HostOutcome};
use crate::host::ssh::{SshHost, SshOptions};
use crate::images;
use crate::lock::{self, LocalLock};
use crate::manifest::{Manifests, ObjectKey};
use crate::plan::Plan;
use crate::progress::{self, Log, Progress};
use crate::render::HostName;
use crate::revision::Origin;
use crate::roles::{self, HostSpec};
use crate::{kubeclient, output};

/// What `plan` and `apply` need to reach the hosts (their shared flags, as values).
#[derive(Debug, Clone)]
pub struct Options {
    /// Inventory file (native or Ansible-style YAML).
    pub inventory: PathBuf,
    /// Hosts handled at once (SSH connections, facts, applies).
    pub parallel: usize,
    /// Record unknown host keys in the inventory's known_hosts (changed keys are still refused).
    pub accept_new_host_keys: bool,
    pub connect_timeout: Duration,
    /// Keep each host's SSH connection open this long after the run (None: close at the end).
    pub ssh_persist: Option<Duration>,
    /// `apply --max-upload-rate`: one cap on the bytes per second sent to all hosts together.
    pub upload_limit: Option<Arc<crate::host::rate::RateLimit>>,
}

impl Options {
    fn ssh_options(&self, inventory: &Inventory, state_dir: &Path) -> SshOptions {
        SshOptions {
            known_hosts: inventory.known_hosts.clone(),
            accept_new: self.accept_new_host_keys,
            connect_timeout: self.connect_timeout,
            control_dir: state_dir.join("ssh"),
            persist: self.ssh_persist,
            upload_limit: self.upload_limit.clone(),
        }
    }
}

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

/// Load the inventory alone (warnings printed, errors fatal): for the commands that work from
/// what is in the cluster (`history`, `rollback`, `diff --revision`, `down`), which must work
/// even when today's `services.yml` files do not.
pub fn load_inventory(inventory: &Path) -> anyhow::Result<Inventory> {
    // (every load error names the file already)
    let loaded = aion_model::inventory::load(inventory)?;
    report(&loaded.diagnostics, inventory)?;
    Ok(loaded.value)
}

/// Load the inventory and every host's `services.yml` (warnings printed, errors fatal), then
/// render. Shared by `render`, `diff`, `status` and the provisioning commands.
pub fn load_and_render(inventory: &Path) -> anyhow::Result<(Inventory, Manifests)> {
    let loaded = aion_model::inventory::load(inventory)?;
    report(&loaded.diagnostics, inventory)?;
    let inv = loaded.value;
    let mut services: Vec<(HostName, aion_model::ServicesFile)> = Vec::new();
    for host in &inv.hosts {
        if let Some(path) = &host.services {
            let loaded = aion_model::services::load(path)
                .with_context(|| format!("services.yml of host {}", host.name))?;
            report(&loaded.diagnostics, path)?;
            let semantic = aion_model::validate::services(&loaded.value, Some(&inv));
            report(&semantic, path)?;
            services.push((host.name.clone(), loaded.value));
        }
    }
    let manifests = crate::render::render(&inv, &services)?;
    Ok((inv, manifests))
}

/// Print diagnostics on stderr; any error fails.
fn report(diags: &[aion_model::Diagnostic], what: &Path) -> anyhow::Result<()> {
    let mut errors = 0;
    for d in diags {
        eprintln!("{d}");
        if d.is_error() {
            errors += 1;
        }
    }
    if errors > 0 {
        anyhow::bail!(
            "{}: {errors} error(s); run `aion-reconcile validate` for details",
            what.display()
        );
    }
    Ok(())
}

/// Everything loaded and connected, ready to plan.
pub struct Prepared {
    pub inventory: aion_model::Inventory,
    pub specs: Vec<HostSpec>,
    pub hosts: BTreeMap<String, Result<Arc<SshHost>, String>>,
    pub cluster: KubeCluster,
    /// `<inventory dir>/.aion`: local lock, logs, SSH control sockets.
    pub state_dir: PathBuf,
    /// host → the images its pods run, resolved in `imageSources` (empty without them).
    pub images: images::Wanted,
}

/// Load the inventory, render the roles (duplicate hostnames and bad roles fail here, before
/// any connection), then connect to every host in parallel.
pub async fn prepare(o: &Options) -> anyhow::Result<Prepared> {
    let loaded = aion_model::inventory::load(&o.inventory)?;
    let mut fatal = Vec::new();
    for d in &loaded.diagnostics {
        if d.is_error() {
            fatal.push(d.to_string());
        } else {
            eprintln!("{d}");
        }
    }
    if !fatal.is_empty() {
        anyhow::bail!(
            "inventory {} has errors:\n{}",
            o.inventory.display(),
            fatal.join("\n")
        );
    }
    let inventory = loaded.value;
    let specs = roles::load(&inventory)?;
    // Images: an image no source has fails here, before any connection.
    let images = wanted_images(&o.inventory, &inventory)?;
    let flannel = roles::render_template(&inventory, "flannel.yaml")?;
    let cluster = KubeCluster::new(
        inventory.kubeconfig.clone(),
        vec![("flannel.yaml".into(), flannel)],
    );
    let state_dir = state_dir(&inventory.source);
    let opts = o.ssh_options(&inventory, &state_dir);
    let sem = Semaphore::new(o.parallel);
    let conns = join_all(inventory.hosts.iter().map(|h| {
        let (sem, opts) = (&sem, &opts);
        async move {
            let _p = sem.acquire().await;
            let t = std::time::Instant::now();
            let conn = SshHost::connect(h, opts).await;
            tracing::debug!(host = %h.name, ms = t.elapsed().as_millis() as u64, "connected");
            (
                h.name.clone(),
                conn.map(Arc::new).map_err(|e| e.to_string()),
            )
        }
    }))
    .await;
    Ok(Prepared {
        inventory,
        specs,
        hosts: conns.into_iter().collect(),
        cluster,
        state_dir,
        images,
    })
}

/// Each host's images from the inventory's `imageSources` (none without them): the images of
/// the pods the rendered manifests put on it, found in the sources. Every image no source has
/// is reported (host, object, reference), and nothing goes on.
pub fn wanted_images(path: &Path, inventory: &Inventory) -> anyhow::Result<images::Wanted> {
    if inventory.image_sources.is_empty() {
        return Ok(images::Wanted::new());
    }
    let (_, manifests) = load_and_render(path)?;
    let paths: Vec<PathBuf> = inventory
        .image_sources
        .iter()
        .map(|s| s.path.clone())
        .collect();
    let catalog = images::read_sources(&paths)?;
    images::resolve(&images::needed(&manifests), &catalog).map_err(|errors| {
        anyhow::anyhow!(
            "{} image(s) in no image source; nothing was sent:\n{}",
            errors.len(),
            errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

pub fn state_dir(inventory: &Path) -> PathBuf {
    inventory.parent().unwrap_or(Path::new(".")).join(".aion")
}

/// Close every SSH master connection.
pub async fn close(hosts: BTreeMap<String, Result<Arc<SshHost>, String>>) {
    join_all(
        hosts
            .into_values()
            .filter_map(Result::ok)
            .map(|h| async move {
                if let Ok(h) = Arc::try_unwrap(h) {
                    h.close().await;
                }
            }),
    )
    .await;
}

/// The cluster part of the plan: the rendered per-node manifests against the live cluster
/// (`cluster::plan`), once the master's admin kubeconfig has been fetched.
pub enum ClusterPart {
    /// No kubeconfig yet: the cluster is planned after the master is initialised.
    NotYet,
    Planned(Box<ClusterPlan>),
}

pub async fn plan_cluster(inventory: &Path, kubeconfig: &Path) -> anyhow::Result<ClusterPart> {
    if !kubeconfig.exists() {
        return Ok(ClusterPart::NotYet);
    }
    let t = std::time::Instant::now();
    let (inv, manifests) = load_and_render(inventory)?;
    let client = kubeclient::client_from(kubeconfig).await?;
    let plan = cluster::plan(&client, &manifests, &inv).await?;
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "cluster part planned");
    Ok(ClusterPart::Planned(Box::new(plan)))
}

/// The host plan and the cluster part, planned at the same time (both are read-only; the
/// cluster part needs only the kubeconfig, not the host facts).
pub async fn plan_both(o: &Options, p: &Prepared) -> (Plan, anyhow::Result<ClusterPart>) {
    tokio::join!(
        execute::plan_all(
            &p.specs,
            &p.hosts,
            &p.cluster,
            o.parallel,
            &p.images,
            p.inventory.previous_images,
        ),
        plan_cluster(&o.inventory, &p.inventory.kubeconfig)
    )
}

/// `plan`: connect, plan both parts, close. Nothing is changed.
pub async fn plan(o: &Options) -> anyhow::Result<(Plan, anyhow::Result<ClusterPart>)> {
    let p = prepare(o).await?;
    let (plan, cluster) = plan_both(o, &p).await;
    close(p.hosts).await;
    Ok((plan, cluster))
}

/// Nothing for `apply` to do: every host planned without changes and the cluster part
/// planned without changes. Then: the cluster part's summary line.
pub fn nothing_to_do(plan: &Plan, cluster: &anyhow::Result<ClusterPart>) -> Option<String> {
    match cluster {
        Ok(ClusterPart::Planned(c))
            if !plan.has_changes() && plan.counts.failed_hosts == 0 && !c.has_changes() =>
        {
            Some(c.summary())
        }
        _ => None,
    }
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
    /// The revision this apply recorded (the cluster changed), or the rollback's revision when
    /// an `--atomic` apply was rolled back.
    pub revision: Option<u32>,
    /// Old image versions: what was removed, or why none were (the new pods did not become
    /// ready); None when the plan had none to remove.
    pub old_images: Option<Result<String, String>>,
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
/// stop — no lock taken, no command with side effects run. Otherwise the phases below, in
/// order. The locks are released and the SSH connections closed whatever happens.
pub async fn apply(
    o: &Options,
    a: &ApplyOptions,
    show_plan: ShowPlan<'_>,
) -> anyhow::Result<Outcome> {
    let p = prepare(o).await?;
    let (plan, cluster) = plan_both(o, &p).await;
    let result = if let Some(cluster_summary) = nothing_to_do(&plan, &cluster) {
        show_plan(Shown::Hosts(&plan))?;
        Ok(Outcome::nothing_to_do(plan, cluster_summary))
    } else {
        async {
            // 1. Lock: the local lock, then the one on the master.
            let locks = Locks::acquire(&p, a.lock_stale_after).await?;
            let result = async {
                // 2. Re-plan under the locks (someone may have changed the hosts meanwhile);
                //    this is the plan shown and executed.
                let plan = execute::plan_all(
                    &p.specs,
                    &p.hosts,
                    &p.cluster,
                    o.parallel,
                    &p.images,
                    p.inventory.previous_images,
                )
                .await;
                show_plan(Shown::Hosts(&plan))?;
                let log = Arc::new(Log::create(&p.state_dir.join("logs"))?);
                // 3. Hosts in phases: masters (host changes, then their cluster steps), then
                //    the workers in parallel. One renderer shows the hosts' steps and, later,
                //    the cluster's objects.
                let progress = Arc::new(Progress::new(progress::fancy()));
                let events = progress::cluster_events(progress.clone(), log.clone());
                let cx = Context {
                    hosts: &p.hosts,
                    cluster: &p.cluster,
                    progress: &progress,
                    log: &log,
                    parallel: o.parallel,
                };
                let mut report = execute::apply(&plan, &cx).await;
                // 4. Images: each converged host gets the images it lacks (only the blobs
                //    it lacks, checked on the host before the import), before the cluster
                //    part runs pods that need them.
                execute::apply_images(&plan, &mut report, &cx).await;
                // 5. Cluster plan: the rendered manifests against the live cluster, once every
                //    host converged (the manifests pin pods to those nodes).
                let (cluster, revision) = match plan_cluster_after(&report, o, &p).await {
                    // 6. Cluster apply: server-side apply in kind order, then prune; record the
                    //    revision; under --atomic, wait for what changed, else roll back.
                    Ok(desired) if desired.plan.has_changes() => {
                        show_plan(Shown::Cluster(&desired.plan))?;
                        let applied = apply_cluster(&desired, a.atomic, events.clone()).await?;
                        match &applied.summary {
                            Ok(s) => progress.cluster_done(s, true),
                            Err(_) => progress.cluster_done("failed", false),
                        }
                        (applied.summary, applied.revision)
                    }
                    Ok(_) => (Ok("cluster: no changes".to_string()), None),
                    Err(e) => (Err(e), None),
                };
                if let Err(e) = &cluster {
                    log.write("cluster", "FAILED", e);
                }
                // 7. Old images: once the cluster part converged and the new pods are ready,
                //    each host removes the old versions no pod on it uses (the previous N of
                //    each repository stay, for rollback).
                let old_images = if plan.counts.image_removals > 0 && cluster.is_ok() {
                    Some(remove_old_images(o, &p, &plan, &mut report, &cx, a.ready_timeout).await)
                } else {
                    None
                };
                if let Some(Err(e)) = &old_images {
                    log.write("old images", "KEPT", e);
                }
                anyhow::Ok(Outcome {
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
            .await;
            locks.release().await;
            result
        }
        .await
    };
    close(p.hosts).await;
    let mut outcome = result?;
    // 7. Wait, when asked and everything applied: every rendered workload ready.
    if let Some(timeout) = a.wait
        && outcome.report.ok()
        && outcome.cluster.is_ok()
    {
        outcome.readiness = Some(wait_for_workloads(&o.inventory, timeout).await);
    }
    Ok(outcome)
}

/// The locks `apply` holds while it changes anything: the local one
/// (`<state dir>/reconcile.lock`) and the one on the master.
struct Locks {
    holder: String,
    /// Released when dropped, after the master's.
    _local: LocalLock,
    /// The master and its SSH user; None when the master is unreachable: nothing can converge
    /// then anyway (workers depend on it), and the plan reports it.
    remote: Option<(Arc<SshHost>, String)>,
}

impl Locks {
    async fn acquire(p: &Prepared, stale_after: Duration) -> anyhow::Result<Locks> {
        let master = p
            .inventory
            .masters()
            .next()
            .and_then(|m| match p.hosts.get(&m.name) {
                Some(Ok(h)) => Some((h.clone(), m.ssh.user.clone())),
                _ => None,
            });
        Locks::take(&p.state_dir, master, stale_after).await
    }

    /// The local lock in `state_dir`, then the master's (when connected).
    async fn take(
        state_dir: &Path,
        master: Option<(Arc<SshHost>, String)>,
        stale_after: Duration,
    ) -> anyhow::Result<Locks> {
        let holder = lock::holder_id();
        let local = LocalLock::acquire(&state_dir.join("reconcile.lock"), &holder)?;
        if let Some((h, user)) = &master {
            lock::acquire_remote(h.as_ref(), user, &holder, stale_after).await?;
        }
        Ok(Locks {
            holder,
            _local: local,
            remote: master,
        })
    }

    async fn release(self) {
        if let Some((h, user)) = &self.remote {
            lock::release_remote(h.as_ref(), user, &self.holder).await;
        }
    }
}

/// What the cluster should hold: the inventory and manifests the cluster plan was made from.
struct Desired {
    inventory: Inventory,
    manifests: Manifests,
    plan: ClusterPlan,
}

/// Phase 5: the cluster part, planned after the hosts; skipped (an error naming the hosts) when
/// not every host converged.
async fn plan_cluster_after(
    report: &ApplyReport,
    o: &Options,
    p: &Prepared,
) -> Result<Desired, String> {
    if !report.ok() {
        let failed: Vec<&str> = report
            .hosts
            .iter()
            .filter(|(_, outcome)| !outcome.ok())
            .map(|(h, _)| h.as_str())
            .collect();
        return Err(format!(
            "skipped: not every host converged ({})",
            failed.join(", ")
        ));
    }
    if !p.inventory.kubeconfig.exists() {
        return Err("no kubeconfig after the master steps".to_string());
    }
    let planned = async {
        let (inventory, manifests) = load_and_render(&o.inventory)?;
        let client = kubeclient::client_from(&inventory.kubeconfig).await?;
        let plan = cluster::plan(&client, &manifests, &inventory).await?;
        anyhow::Ok(Desired {
            inventory,
            manifests,
            plan,
        })
    };
    planned.await.map_err(|e| output::chain(&*e))
}

/// How phase 6 ended.
struct ClusterApplied {
    /// A summary, or what failed (under `--atomic`: what did not become ready, and the
    /// rollback).
    summary: Result<String, String>,
    revision: Option<u32>,
}

/// Phase 6: apply the cluster plan and record the revision; under `--atomic`, wait for what
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
                summary: Err(output::chain(&e)),
                revision: None,
            });
        }
    };
    let inputs = history::input_hashes(&d.inventory)?;
    let number = match history
        .record(&d.manifests, Origin::Apply, inputs, keep)
        .await
    {
        Ok(n) => n,
        Err(e) => {
            return Ok(ClusterApplied {
                summary: Err(format!(
                    "{}; but its revision could not be recorded: {}",
                    applied.summary(),
                    output::chain(&e)
                )),
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
                summary: Err(msg),
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
                summary: Err(msg),
                revision: failed,
            }
        }
    }
}

/// Phase 7, `--wait`: every Deployment, Job and Service this inventory renders becomes ready
/// (Deployments the runtime scales to 0 count as ready at 0), and pruned objects are gone.
/// Progress goes to stderr as `<object>: <what>`.
/// Step 7 of [`apply`]: wait until every workload is ready and no pod on a host with old
/// versions is still terminating (its containers may still run the old image), then remove
/// on each host the old versions no pod there names.
async fn remove_old_images(
    o: &Options,
    p: &Prepared,
    plan: &Plan,
    report: &mut ApplyReport,
    cx: &Context<'_, SshHost, KubeCluster>,
    timeout: Duration,
) -> Result<String, String> {
    let start = std::time::Instant::now();
    wait_for_workloads(&o.inventory, timeout)
        .await
        .map_err(|e| format!("old image versions kept: the new pods are not ready: {e}"))?;
    let client = kubeclient::client_from(&p.inventory.kubeconfig)
        .await
        .map_err(|e| output::chain(&e))?;
    let hosts: std::collections::BTreeSet<&str> = plan
        .hosts
        .iter()
        .filter(|h| !h.image_removals.is_empty())
        .map(|h| h.host.as_str())
        .collect();
    let in_use = loop {
        let (in_use, terminating) = pod_images(&client, &hosts).await?;
        if terminating.is_empty() {
            break in_use;
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "old image versions kept: pods still terminating after {} s: {}",
                timeout.as_secs(),
                terminating.join(", ")
            ));
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
    String,
> {
    use k8s_openapi::api::core::v1::Pod;
    let pods = kube::Api::<Pod>::all(client.clone())
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|e| format!("listing pods: {e}"))?;
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

async fn wait_for_workloads(inventory: &Path, timeout: Duration) -> Result<String, String> {
    let (inv, manifests) = load_and_render(inventory).map_err(|e| output::chain(&*e))?;
    let keys: Vec<ObjectKey> = manifests
        .objects()
        .map(|o| o.key.clone())
        .filter(|k| matches!(k.kind.as_str(), "Deployment" | "Job" | "Service"))
        .collect();
    let client = kubeclient::client_from(&inv.kubeconfig)
        .await
        .map_err(|e| output::chain(&e))?;
    let opts = ClusterApplyOptions {
        progress: Some(progress::cluster_lines(progress::fancy())),
        ..Default::default()
    };
    let start = std::time::Instant::now();
    cluster::wait_ready(&client, &keys, timeout, &opts)
        .await
        .map_err(|e| e.to_string())?;
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
    .map_err(|e| output::chain(&e))
}

/// What `rollback` needs besides [`Options`] (whose inventory, SSH settings are used to take
/// the master's lock; no other host is contacted).
#[derive(Debug, Clone)]
pub struct RollbackOptions {
    /// The revision to return to; None: the previous applied one.
    pub to: Option<u32>,
    /// Kubeconfig instead of the inventory's.
    pub kubeconfig: Option<PathBuf>,
    pub lock_stale_after: Duration,
    /// Wait this long for the rolled-back workloads to be ready; None: do not wait.
    pub wait: Option<Duration>,
}

/// Shows a rollback's plan and says whether to go on (`--yes`, or the operator's answer).
pub type ConfirmRollback<'a> = &'a (dyn Fn(&history::RollbackPlan) -> anyhow::Result<bool> + Sync);

/// How a `rollback` ended.
#[derive(Debug, serde::Serialize)]
pub struct RollbackOutcome {
    /// The revision returned to.
    pub target: u32,
    /// The revision recorded for the rollback; None when nothing had to change or it was not
    /// confirmed.
    pub revision: Option<u32>,
    /// The cluster part's summary (`cluster: N created, …`), or why nothing ran.
    pub summary: String,
    /// With `--wait`: ready, or what is not.
    pub readiness: Option<Result<String, String>>,
}

impl RollbackOutcome {
    pub fn ok(&self) -> bool {
        self.readiness.as_ref().is_none_or(|r| r.is_ok())
    }
}

/// `rollback`: the cluster back to a recorded revision. Loads the inventory only (today's
/// `services.yml` files play no part), takes the same locks as `apply` (refused while another
/// apply holds them), plans from the live cluster to the revision with the apply machinery,
/// shows that plan through `confirm`, applies it (server-side apply and prune) and records it as
/// a new revision. Host provisioning is not touched.
pub async fn rollback(
    o: &Options,
    r: &RollbackOptions,
    confirm: ConfirmRollback<'_>,
) -> anyhow::Result<RollbackOutcome> {
    let inv = load_inventory(&o.inventory)?;
    let kubeconfig = kubeclient::resolve_kubeconfig(r.kubeconfig.as_deref(), &inv.kubeconfig);
    let client = kubeclient::client_from(&kubeconfig).await?;
    let state_dir = state_dir(&inv.source);
    // The master's lock needs its SSH connection; without one, only the local lock is held
    // (the cluster may be reachable when SSH is not), and the operator is told.
    let master = match inv.masters().next() {
        Some(m) => match SshHost::connect(m, &o.ssh_options(&inv, &state_dir)).await {
            Ok(h) => Some((Arc::new(h), m.ssh.user.clone())),
            Err(e) => {
                eprintln!(
                    "warning: master {} unreachable over SSH ({e}); only the local lock is held",
                    m.name
                );
                None
            }
        },
        None => None,
    };
    let locks = Locks::take(&state_dir, master, r.lock_stale_after).await?;
    let result = async {
        let history = History::of(&client, &inv);
        let opts = ClusterApplyOptions {
            progress: Some(progress::cluster_lines(progress::fancy())),
            ..ClusterApplyOptions::default()
        };
        let plan = history::plan_rollback(&client, &history, r.to, opts.concurrency).await?;
        let target = plan.target.number;
        if !plan.plan.has_changes() {
            confirm(&plan)?;
            return anyhow::Ok(RollbackOutcome {
                target,
                revision: None,
                summary: format!(
                    "nothing to roll back: the cluster already equals revision {target}"
                ),
                readiness: None,
            });
        }
        if !confirm(&plan)? {
            return anyhow::Ok(RollbackOutcome {
                target,
                revision: None,
                summary: "not confirmed: nothing changed".into(),
                readiness: None,
            });
        }
        let (report, number) =
            history::execute_rollback(&client, &history, &plan, None, inv.revision_history, &opts)
                .await?;
        let readiness = match r.wait {
            Some(t) => {
                let keys: Vec<ObjectKey> = plan
                    .target
                    .manifests()
                    .objects()
                    .filter(|o| matches!(o.key.kind.as_str(), "Deployment" | "Job"))
                    .map(|o| o.key.clone())
                    .collect();
                Some(
                    cluster::wait_ready(&client, &keys, t, &opts)
                        .await
                        .map(|()| format!("ready: {} workload object(s)", keys.len()))
                        .map_err(|e| output::chain(&e)),
                )
            }
            None => None,
        };
        anyhow::Ok(RollbackOutcome {
            target,
            revision: Some(number),
            summary: format!(
                "{}; rolled back to revision {target}, recorded as revision {number}",
                report.summary()
            ),
            readiness,
        })
    }
    .await;
    let remote = locks.remote.clone();
    locks.release().await;
    if let Some((h, _)) = remote {
        close(BTreeMap::from([("master".to_string(), Ok(h))])).await;
    }
    result
}
