//! The image phases: after each host's runtime is set up and before its Kubernetes changes, it
//! receives the blobs it lacks; after the cluster part (the new pods ready), each removes the
//! old versions no pod uses.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::Semaphore;

use super::outcome::{ApplyReport, Context, HostOutcome, StepFailure, TAIL_LINES};
use crate::cluster::bootstrap::ClusterOps;
use crate::host::Host;
use crate::host::Input;
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
    receive(host, &script, &images::send_input(changes)).await
}

/// Run a receiving script (from this machine, as a relay, or fetching from one) and read what
/// it reported.
async fn receive<H: Host>(
    host: &H,
    script: &str,
    input: &[Input],
) -> Result<images::Received, StepFailure> {
    let out = host
        .run_with_input(script, input)
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
            Err(StepFailure { error, .. }) => report.fail(&host, "old images", error),
        }
    }
    busy
}

/// The images phase (after the hosts' runtime, before their Kubernetes changes and the
/// cluster): every host whose runtime converged and has images to import gets them, in parallel up to the cap. A host whose images fail is
/// `Failed` at step `images`. With `imagesFrom`, in two waves: first the hosts that receive
/// from this machine (the relays among them also the blobs kept for their fetchers, and a key
/// made for this apply), then the fetchers, each from its relay; then every relay forgets the
/// key and the kept blobs, also when a fetcher failed.
pub async fn apply_images<H: Host, C: ClusterOps>(
    plan: &Plan,
    report: &mut ApplyReport,
    cx: &Context<'_, H, C>,
) {
    let ready = |hp: &HostPlan| report.outcome(&hp.host).is_some_and(HostOutcome::ok);
    let connected = |hp: &HostPlan| match cx.hosts.get(&hp.host) {
        Some(Ok(h)) => Some(h.clone()),
        _ => None,
    };
    // Blobs from a registry source: each downloaded once into the local cache (verified)
    // before any host is sent anything; without them no host gets its images.
    let remote: Vec<images::Blob> = plan
        .hosts
        .iter()
        .filter(|hp| ready(hp))
        .flat_map(|hp| {
            let own = hp.images.iter().flat_map(|c| c.send.iter());
            own.chain(hp.relay.iter().flat_map(|r| r.send.iter()))
        })
        .filter(|b| b.remote.is_some() && !b.path.is_file())
        .cloned()
        .collect();
    if !remote.is_empty() {
        let n = remote.len();
        let fetched = tokio::task::spawn_blocking(move || images::fetch_blobs(&remote)).await;
        let error = match fetched {
            Ok(Ok(bytes)) => {
                cx.log.write(
                    "",
                    &format!(
                        "images: {n} blob(s), {} fetched from the registry",
                        images::human_bytes(bytes)
                    ),
                    "",
                );
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("the registry download stopped: {e}")),
        };
        if let Some(error) = error {
            let receiving: Vec<String> = plan
                .hosts
                .iter()
                .filter(|hp| ready(hp) && (!hp.images.is_empty() || hp.relay.is_some()))
                .map(|hp| hp.host.clone())
                .collect();
            for host in receiving {
                cx.progress
                    .host_done(&host, &format!("failed at images: {error}"), false);
                report.fail(&host, "images", error.clone());
            }
            return;
        }
    }
    // Wave 1: from this machine.
    let mut keys: BTreeMap<String, RelayKey> = BTreeMap::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut jobs = Vec::new();
    for hp in &plan.hosts {
        let direct = !hp.images.is_empty() && hp.images_from.is_none();
        if !(direct || hp.relay.is_some()) || !ready(hp) {
            continue;
        }
        let Some(h) = connected(hp) else { continue };
        let (script, input) = match &hp.relay {
            None => (
                images::receive_script(&hp.user, &hp.images),
                images::send_input(&hp.images),
            ),
            Some(relay) => match relay_key().await {
                Ok(key) => {
                    let script =
                        images::relay_script(&hp.user, &hp.images, relay, &key.public, &key.nonce);
                    keys.insert(hp.host.clone(), key);
                    let mut input = images::send_input(&hp.images);
                    input.extend(relay.send.iter().map(images::Blob::input));
                    (script, input)
                }
                Err(e) => {
                    failed.push((
                        hp.host.clone(),
                        format!("no key for the hosts that fetch from it: {e}"),
                    ));
                    continue;
                }
            },
        };
        jobs.push(ImageJob {
            hp,
            host: h,
            script,
            input,
            from: None,
        });
    }
    let mut done = run_jobs(jobs, cx).await;
    // Wave 2: each fetcher from its relay, if the relay got what it keeps for them.
    let mut jobs = Vec::new();
    // The relay's known_hosts lines, looked up once per relay (not per fetcher).
    let mut host_keys: BTreeMap<String, Result<Vec<String>, String>> = BTreeMap::new();
    for hp in &plan.hosts {
        let Some(from) = &hp.images_from else {
            continue;
        };
        if hp.images.is_empty() || !ready(hp) {
            continue;
        }
        let Some(h) = connected(hp) else { continue };
        let relay_ok = done
            .iter()
            .any(|(r, _, res)| *r == from.host && res.is_ok());
        let key = keys.get(&from.host).filter(|_| relay_ok);
        let prepared = match key {
            None => Err(format!(
                "its relay {} did not get the images it fetches",
                from.host
            )),
            Some(key) => {
                if !host_keys.contains_key(&from.host) {
                    host_keys.insert(from.host.clone(), known_host_lines(from).await);
                }
                host_keys[&from.host].clone().map(|lines| {
                    (
                        images::fetch_script(&hp.user, &hp.images, from, &lines, key.private.len()),
                        vec![Input::Bytes(key.private.clone())],
                    )
                })
            }
        };
        match prepared {
            Ok((script, input)) => jobs.push(ImageJob {
                hp,
                host: h,
                script,
                input,
                from: Some(from.host.clone()),
            }),
            Err(e) => failed.push((hp.host.clone(), e)),
        }
    }
    done.extend(run_jobs(jobs, cx).await);
    // Every relay that got a key forgets it (and the kept blobs).
    for relay in keys.keys() {
        let Some(Ok(h)) = cx.hosts.get(relay) else {
            continue;
        };
        let Some(hp) = plan.host(relay) else { continue };
        match h.run(&images::relay_cleanup_script(&hp.user)).await {
            Ok(out) if out.success() => cx.log.write(relay, "images relay: key and kept blobs removed", ""),
            Ok(out) => failed.push((
                relay.clone(),
                format!(
                    "the relay key (comment {}…) was not removed from authorized_keys (exit {}; it expires after {} h): {}",
                    images::KEY_COMMENT,
                    out.status,
                    images::KEY_HOURS,
                    tail(String::from_utf8_lossy(&out.stderr).trim(), 2).replace('\n', " | ")
                ),
            )),
            Err(e) => failed.push((relay.clone(), format!("the relay key was not removed (it expires after {} h): {e}", images::KEY_HOURS))),
        }
    }
    for (host, n, r) in done {
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
            Err(StepFailure { error, .. }) => failed.push((host, error)),
        }
    }
    for (host, error) in failed {
        cx.progress
            .host_done(&host, &format!("failed at images: {error}"), false);
        report.fail(&host, "images", error);
    }
}

/// One host's receiving script and its input.
struct ImageJob<'p, H> {
    hp: &'p HostPlan,
    host: Arc<H>,
    script: String,
    input: Vec<Input>,
    /// The relay it fetches from.
    from: Option<String>,
}

/// Run receiving scripts in parallel up to the cap, each with its progress and log lines.
/// Returns (host, images imported, what it received or why not); a failure's progress is
/// reported by the caller.
async fn run_jobs<H: Host, C: ClusterOps>(
    jobs: Vec<ImageJob<'_, H>>,
    cx: &Context<'_, H, C>,
) -> Vec<(String, usize, Result<images::Received, StepFailure>)> {
    let sem = Semaphore::new(cx.parallel.max(1));
    join_all(jobs.into_iter().map(|job| {
        let sem = &sem;
        async move {
            let _permit = sem.acquire().await;
            let hp = job.hp;
            let bytes: u64 = hp.images.iter().map(|i| i.bytes).sum();
            let mut what = match &job.from {
                Some(r) => format!(
                    "images: {} ({} from {r})",
                    hp.images.len(),
                    images::human_bytes(bytes)
                ),
                None => format!(
                    "images: {} ({} to send)",
                    hp.images.len(),
                    images::human_bytes(bytes)
                ),
            };
            if let Some(relay) = &hp.relay {
                what.push_str(&format!(
                    ", {} kept for {}",
                    images::human_bytes(relay.bytes),
                    relay.for_hosts.join(", ")
                ));
            }
            cx.progress.step(&hp.host, 0, 1, &what);
            let r = receive(job.host.as_ref(), &job.script, &job.input)
                .await
                .map(|got| images::Received {
                    from: job.from.clone(),
                    ..got
                });
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
                            "images ok: {} blob(s), {} byte(s) received{}",
                            got.blobs.len(),
                            got.bytes(),
                            job.from
                                .as_ref()
                                .map(|r| format!(" from {r}"))
                                .unwrap_or_default()
                        ),
                        &lines.join("\n"),
                    );
                    let how = match &job.from {
                        Some(r) => format!("{} from {r}", images::human_bytes(got.bytes())),
                        None => format!("{} sent", images::human_bytes(got.bytes())),
                    };
                    // The host goes on with its Kubernetes changes: not done yet.
                    cx.progress.step(
                        &hp.host,
                        0,
                        1,
                        &format!("{} image(s) imported ({how})", got.imported.len()),
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
                }
            }
            (hp.host.clone(), hp.images.len(), r)
        }
    }))
    .await
}

/// A key pair made for one apply's relays (`ssh-keygen` on this machine, in a private
/// temporary directory removed at once): the private key goes to the fetchers on stdin, the
/// public one to the relay's `authorized_keys` under a comment with `nonce`.
struct RelayKey {
    private: Vec<u8>,
    public: String,
    nonce: String,
}

async fn relay_key() -> Result<RelayKey, String> {
    let mut nonce = [0u8; 8];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?,
        &mut nonce,
    )
    .map_err(|e| format!("/dev/urandom: {e}"))?;
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("aion-relay-key-{nonce}"));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let made = make_key(&dir, &nonce).await;
    let _ = std::fs::remove_dir_all(&dir);
    made
}

async fn make_key(dir: &std::path::Path, nonce: &str) -> Result<RelayKey, String> {
    let path = dir.join("key");
    let out = tokio::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-C")
        .arg(format!("{}{nonce}", images::KEY_COMMENT))
        .arg("-f")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let private = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let public = std::fs::read_to_string(path.with_extension("pub"))
        .map_err(|e| format!("{}.pub: {e}", path.display()))?;
    Ok(RelayKey {
        private,
        public: public.trim().to_string(),
        nonce: nonce.to_string(),
    })
}

/// The operator's known_hosts lines for the relay (`ssh-keygen -F`, which also finds hashed
/// entries): the fetcher checks the relay's host key against them, as this machine does.
async fn known_host_lines(from: &images::RelaySource) -> Result<Vec<String>, String> {
    let mut cmd = tokio::process::Command::new("ssh-keygen");
    cmd.arg("-F").arg(from.known_hosts_name());
    if let Some(f) = &from.known_hosts {
        cmd.arg("-f").arg(f);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("ssh-keygen -F: {e}"))?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        return Err(format!(
            "no host key of its relay {} ({}) in {}: it could not check whom it fetches from",
            from.host,
            from.known_hosts_name(),
            from.known_hosts
                .as_ref()
                .map_or("~/.ssh/known_hosts".to_string(), |p| p
                    .display()
                    .to_string())
        ));
    }
    Ok(lines)
}
