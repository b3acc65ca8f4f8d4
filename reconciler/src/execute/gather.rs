//! Facts and the plan: one script per host (one round trip, in parallel up to a cap), the
//! cluster steps checked once a master has nothing left to do on the host side.

use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::Semaphore;

use crate::cluster::bootstrap::ClusterOps;
use crate::facts::{self, FactsError, HostFacts};
use crate::host::{Connections, Host, HostError};
use crate::images;
use crate::plan::{self, ClusterCheck, HostPlan, Plan};
use crate::progress::tail;
use crate::roles::{HostSpec, LocalFacts, Resource};

/// Why a host's facts could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("gathering facts failed (exit {status}): {stderr_tail}")]
    Script { status: i32, stderr_tail: String },
    #[error(transparent)]
    Facts(#[from] FactsError),
}

/// Gather one host's facts (one script, one round trip); with `containerd`, also what its
/// containerd holds (images, content blobs).
pub async fn gather<H: Host>(
    host: &H,
    spec: &HostSpec,
    containerd: bool,
) -> Result<HostFacts, GatherError> {
    let mut req = plan::fact_request(spec);
    req.containerd = containerd;
    let script = req.script();
    tracing::trace!(host = %host.name(), "facts script:\n{script}");
    let out = host.run(&script).await?;
    if !out.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(GatherError::Script {
            status: out.status,
            stderr_tail: tail(err.trim(), 3).replace('\n', " | "),
        });
    }
    facts::parse(
        host.name(),
        &out.stdout_str(),
        &String::from_utf8_lossy(&out.stderr),
    )
    .map_err(GatherError::from)
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
    hosts: &Connections<H>,
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
                Some(Err(e)) => return unreachable(e.to_string()),
                None => return unreachable("not connected".into()),
            };
            let t = std::time::Instant::now();
            let wanted = images.get(&spec.host.name);
            let facts = match gather(host.as_ref(), spec, wanted.is_some()).await {
                Ok(f) => f,
                Err(e) => return unreachable(crate::output::chain(&e)),
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
