//! Facts and the plan: one script per host (one round trip, in parallel up to a cap), the
//! cluster steps checked once a master has nothing left to do on the host side.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::Semaphore;

use crate::cluster::bootstrap::ClusterOps;
use crate::facts::{self, ContainerdFacts, FactsError, HostFacts};
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
    routes: &BTreeMap<String, images::RelaySource>,
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
                images_from: None,
                relay: None,
            };
            let host = match hosts.get(&spec.host.name) {
                Some(Ok(h)) => h.clone(),
                Some(Err(e)) => return (unreachable(e.to_string()), None, None),
                None => return (unreachable("not connected".into()), None, None),
            };
            let t = std::time::Instant::now();
            let wanted = images.get(&spec.host.name);
            let facts = match gather(host.as_ref(), spec, wanted.is_some()).await {
                Ok(f) => f,
                Err(e) => return (unreachable(crate::output::chain(&e)), None, None),
            };
            // Each image as this host's platform gets it (one variant of a multi-platform
            // index); an image that cannot run here stops the host before anything is sent.
            let wanted = match wanted.map(|w| images::for_machine(w, &facts.machine)) {
                None => None,
                Some(Ok(w)) => Some(w),
                Some(Err(e)) => return (unreachable(e), None, None),
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
                    if let Some(w) = &wanted {
                        p.images = images::plan_host(w, facts.containerd.as_ref());
                        p.image_removals =
                            images::plan_removals(w, facts.containerd.as_ref(), keep_images);
                    }
                    (p, facts.containerd, wanted)
                }
                Err(e) => (unreachable(e.to_string()), None, None),
            }
        }
    });
    let mut plans = Vec::new();
    let mut content = Vec::new();
    let mut chosen = images::Wanted::new();
    for (p, c, w) in join_all(futs).await {
        if let Some(w) = w {
            chosen.insert(p.host.clone(), w);
        }
        plans.push(p);
        content.push(c);
    }
    route_images(&mut plans, &content, &chosen, routes);
    Plan::new(plans)
}

/// Device to device (`imagesFrom`): each fetcher with images to import gets them from its
/// relay (its changes say `from`), and the relay receives, besides its own, the blobs they
/// lack that it will not hold (see [`images::relay_blobs`]). A relay that could not be planned
/// (unreachable) is not used: its fetchers receive from this machine, with a warning.
pub fn route_images(
    plans: &mut [HostPlan],
    content: &[Option<ContainerdFacts>],
    wanted: &images::Wanted,
    routes: &BTreeMap<String, images::RelaySource>,
) {
    let index: BTreeMap<String, usize> = plans
        .iter()
        .enumerate()
        .map(|(i, p)| (p.host.clone(), i))
        .collect();
    // relay index → its fetchers' indexes
    let mut fetchers: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in plans.iter_mut().enumerate() {
        let Some(route) = routes.get(&p.host) else {
            continue;
        };
        if p.error.is_some() || p.images.is_empty() {
            continue;
        }
        match index.get(&route.host) {
            Some(&r) if r != i => fetchers.entry(r).or_default().push(i),
            _ => continue,
        }
    }
    for (r, fs) in fetchers {
        if let Some(e) = plans[r].error.clone() {
            for &f in &fs {
                let relay = plans[r].host.clone();
                plans[f].warnings.push(format!(
                    "imagesFrom {relay}: it could not be planned ({e}); this host's images are sent from this machine"
                ));
            }
            continue;
        }
        let empty = std::collections::BTreeSet::new();
        let relay_content = content[r].as_ref().map_or(&empty, |c| &c.content);
        let relay_images = wanted.get(&plans[r].host).map(Vec::as_slice).unwrap_or(&[]);
        let send = images::relay_blobs(
            fs.iter().map(|&f| plans[f].images.as_slice()),
            relay_content,
            relay_images,
        );
        for &f in &fs {
            let route = routes[&plans[f].host].clone();
            for c in &mut plans[f].images {
                c.from = Some(route.host.clone());
            }
            plans[f].images_from = Some(route);
        }
        plans[r].relay = Some(images::Relay {
            for_hosts: fs.iter().map(|&f| plans[f].host.clone()).collect(),
            for_addresses: fs.iter().map(|&f| plans[f].address.clone()).collect(),
            blobs: send.len(),
            bytes: send.iter().map(|b| b.size).sum(),
            send,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{Blob, ImageChange, RelaySource};

    fn blob(d: &str, size: u64) -> Blob {
        Blob {
            digest: d.into(),
            size,
            path: Default::default(),
            offset: 0,
            remote: None,
        }
    }

    fn host(name: &str, images: Vec<ImageChange>) -> HostPlan {
        HostPlan {
            host: name.into(),
            address: format!("10.0.0.{}", name.len()),
            role: aion_model::inventory::Role::Worker,
            user: "root".into(),
            changes: vec![],
            unchanged: 0,
            error: None,
            warnings: vec![],
            images,
            image_removals: vec![],
            images_from: None,
            relay: None,
        }
    }

    fn change(send: Vec<Blob>) -> ImageChange {
        ImageChange {
            reference: "aion.local/a:1".into(),
            digest: "sha256:m".into(),
            replaces: None,
            bytes: send.iter().map(|b| b.size).sum(),
            blobs: send.len(),
            blobs_total: send.len(),
            bytes_total: 0,
            media_type: String::new(),
            platform: None,
            from: None,
            send,
            source: Default::default(),
            manifest_size: 0,
        }
    }

    /// The fetchers' changes name the relay; the relay keeps only what it neither has nor
    /// imports itself, once for all; a relay that could not be planned is not used (warning).
    #[test]
    fn fetchers_are_routed_through_their_relay_unless_it_was_not_planned() {
        let routes: BTreeMap<String, RelaySource> = ["w1", "w22"]
            .iter()
            .map(|w| {
                let r = RelaySource {
                    host: "m".into(),
                    address: "10.0.0.1".into(),
                    port: 22,
                    user: "root".into(),
                    known_hosts: None,
                };
                (w.to_string(), r)
            })
            .collect();
        let fetched = vec![blob("sha256:base", 100), blob("sha256:own", 7)];
        let mut plans = vec![
            host("m", vec![]),
            host("w1", vec![change(fetched.clone())]),
            host("w22", vec![change(fetched.clone())]),
        ];
        let content = vec![
            Some(ContainerdFacts {
                content: ["sha256:base".to_string()].into(),
                ..Default::default()
            }),
            None,
            None,
        ];
        route_images(&mut plans, &content, &images::Wanted::new(), &routes);
        let relay = plans[0].relay.as_ref().unwrap();
        assert_eq!(relay.for_hosts, ["w1", "w22"]);
        assert_eq!(relay.for_addresses, ["10.0.0.2", "10.0.0.3"]);
        assert_eq!(
            (relay.blobs, relay.bytes),
            (1, 7),
            "only what the relay lacks, once"
        );
        for p in &plans[1..] {
            assert_eq!(p.images_from.as_ref().unwrap().host, "m");
            assert_eq!(p.images[0].from.as_deref(), Some("m"));
        }
        let plan = Plan::new(plans);
        assert_eq!(
            (
                plan.counts.image_bytes,
                plan.counts.image_bytes_between_hosts
            ),
            (7, 214)
        );

        let mut plans = vec![
            HostPlan {
                error: Some("unreachable".into()),
                ..host("m", vec![])
            },
            host("w1", vec![change(fetched)]),
        ];
        route_images(&mut plans, &[None, None], &images::Wanted::new(), &routes);
        assert!(plans[0].relay.is_none() && plans[1].images_from.is_none());
        assert_eq!(plans[1].images[0].from, None);
        assert!(plans[1].warnings[0].contains("imagesFrom m: it could not be planned"));
    }
}
