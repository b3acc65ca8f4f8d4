//! The image phases: after the host changes, each host receives the blobs it lacks; after the
//! cluster part (the new pods ready), each removes the old versions no pod uses.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::Semaphore;

use super::outcome::{ApplyReport, Context, HostOutcome, StepFailure, TAIL_LINES};
use crate::cluster::bootstrap::ClusterOps;
use crate::host::Host;
use crate::images;
use crate::plan::{HostPlan, Plan};
use crate::progress::tail;

/// Send and import one host's images: the blobs it lacks streamed over the open connection
/// into a staging directory, each checked (size, SHA-256) on the host before
/// `ctr -n k8s.io images import` (see [`images::receive_script`]). Ok: what it received;
/// Err: (short error, full output for the log).
pub async fn send_images<H: Host>(
    host: &H,
    user: &str,
    changes: &[images::ImageChange],
) -> Result<images::Received, StepFailure> {
    let script = images::receive_script(user, changes);
    let input = images::send_input(changes);
    let out = host
        .run_with_input(&script, &input)
        .await
        .map_err(StepFailure::bare)?;
    if !out.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(StepFailure::with_output(
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
                Ok(out) => Err(StepFailure::with_output(
                    format!(
                        "old images not removed (exit {}): {}",
                        out.status,
                        tail(String::from_utf8_lossy(&out.stderr).trim(), 3).replace('\n', " | ")
                    ),
                    out.combined(),
                )),
                Err(e) => Err(StepFailure::bare(e)),
            };
            match &r {
                Ok(gone) => cx.log.write(
                    &hp.host,
                    &format!("old images removed: {}", gone.len()),
                    &gone.join("\n"),
                ),
                Err(StepFailure {
                    error: e,
                    output: out,
                }) => cx
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
            Err(StepFailure { error, .. }) => {
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
                Err(StepFailure { error, output }) => {
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
            Err(StepFailure { error, .. }) => {
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
