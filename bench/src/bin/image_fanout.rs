//! Benchmark of issue #15: one ~200 MB image of six layers to 12 hosts without a registry —
//! ours (the library path `aion-reconcile apply` takes for images) against `ctr images import`
//! over `ssh` run by hand, sequential and parallel; then a version bump that changes one ~5 MB
//! layer. Wall time per variant, and the bytes over the operator's uplink: the delta of the
//! testbed bridge's `tx_bytes` (frames this machine's own stack sends into the bridge; frames
//! bridged between two hosts are not counted there), beside the sum over the hosts' veths
//! (what reached the hosts, whoever sent it).
//!
//! Run by `bench/image-fanout.sh`, which makes the 12-host testbed instance, starts a containerd
//! on every host and removes everything at the end; by hand (testbed and containerds up):
//!
//! ```sh
//! image_fanout --inventory inventories/testbed-img/inventory.yml --work /tmp/x \
//!   --reset 'bench/image-fanout.sh containerd reset' [--runs N] [--layers-mib 64,48,40,28,15,5]
//! ```
//!
//! Every variant starts from the state it needs: `--reset` gives every host an empty
//! containerd (stopped, its root emptied, started again) before a.–c.; d. and e. bump hosts
//! that have version 1.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aion_reconcile::execute::send_images;
use aion_reconcile::facts::{self, FactRequest};
use aion_reconcile::host::Host as _;
use aion_reconcile::host::ssh::{SshHost, SshOptions};
use aion_reconcile::images::{self, SourceImage};
use anyhow::{Context, bail};
use futures::future::join_all;

const BRIDGE: &str = "aionbr0";
const REPOSITORY: &str = "aion.local/aion-bench-fanout";

// ---------------------------------------------------------------------------------------------
// The image: uncompressed tar layers of incompressible bytes, an OCI layout directory (both
// versions) and one OCI archive per version.

/// `n` pseudo-random bytes from `seed` (splitmix64 seeding, xorshift64 stream).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let mut x = (z ^ (z >> 31)).max(1);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A ustar header.
fn tar_header(name: &str, size: u64, kind: u8, mode: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(format!("{mode}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A layer: a tar of one directory holding one file of `content`.
fn layer_tar(dir: &str, file: &str, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 4096);
    out.extend_from_slice(&tar_header(&format!("{dir}/"), 0, b'5', "0000755"));
    out.extend_from_slice(&tar_header(
        &format!("{dir}/{file}"),
        content.len() as u64,
        b'0',
        "0000644",
    ));
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.resize(out.len() + 1024, 0);
    out
}

/// `sha256:<hex>` of a file (coreutils' `sha256sum`: the bench needs no hashing crate).
fn digest_of(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    anyhow::ensure!(out.status.success(), "sha256sum {}", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    anyhow::ensure!(hex.len() == 64, "sha256sum {}: {text}", path.display());
    Ok(format!("sha256:{hex}"))
}

/// One image written into the layout: reference, manifest digest, every blob (digest, size;
/// manifest, config, layers) and the layers' digests.
#[derive(Debug, Clone)]
struct Built {
    reference: String,
    digest: String,
    blobs: Vec<(String, u64)>,
    layers: Vec<(String, u64)>,
}

impl Built {
    fn bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.1).sum()
    }
}

struct Layout {
    dir: PathBuf,
    index: Vec<serde_json::Value>,
}

impl Layout {
    fn new(dir: PathBuf) -> anyhow::Result<Layout> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Layout {
            dir,
            index: Vec::new(),
        })
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn put(&self, blob: &[u8]) -> anyhow::Result<(String, u64)> {
        let tmp = self.dir.join("blobs/.new");
        std::fs::write(&tmp, blob)?;
        let d = digest_of(&tmp)?;
        std::fs::rename(&tmp, self.blob_path(&d))?;
        Ok((d, blob.len() as u64))
    }

    /// An image of the given layers (already in the layout) for this machine's platform.
    fn image(&mut self, reference: &str, layers: &[(String, u64)]) -> anyhow::Result<Built> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bench/none"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.0.clone()).collect::<Vec<_>>()},
        })
        .to_string();
        let c = self.put(config.as_bytes())?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c.0, "size": c.1},
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l.0, "size": l.1
            })).collect::<Vec<_>>(),
        })
        .to_string();
        let m = self.put(manifest.as_bytes())?;
        self.index.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m.0, "size": m.1,
            "annotations": {"io.containerd.image.name": reference},
        }));
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::json!({"schemaVersion": 2, "manifests": self.index}).to_string(),
        )?;
        let mut blobs = vec![m.clone(), c];
        blobs.extend(layers.iter().cloned());
        Ok(Built {
            reference: reference.to_string(),
            digest: m.0,
            blobs,
            layers: layers.to_vec(),
        })
    }

    /// An OCI archive (`oci-layout`, `index.json` naming `img` only, its blobs), as
    /// `ctr images export` would write it and `ctr images import` reads it.
    fn archive(&self, img: &Built, path: &Path) -> anyhow::Result<u64> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let entry = self
            .index
            .iter()
            .find(|m| m["digest"] == img.digest.as_str())
            .context("image not in the index")?;
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]}).to_string();
        let file = |f: &mut std::io::BufWriter<std::fs::File>,
                    name: &str,
                    src: &mut dyn std::io::Read,
                    size: u64|
         -> anyhow::Result<()> {
            f.write_all(&tar_header(name, size, b'0', "0000644"))?;
            let n = std::io::copy(src, f)?;
            anyhow::ensure!(n == size, "{name}: {n} of {size} bytes");
            let pad = (512 - size % 512) % 512;
            f.write_all(&vec![0u8; pad as usize])?;
            Ok(())
        };
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        file(&mut f, "oci-layout", &mut &layout[..], layout.len() as u64)?;
        file(
            &mut f,
            "index.json",
            &mut index.as_bytes(),
            index.len() as u64,
        )?;
        f.write_all(&tar_header("blobs/", 0, b'5', "0000755"))?;
        f.write_all(&tar_header("blobs/sha256/", 0, b'5', "0000755"))?;
        for (d, size) in &img.blobs {
            let hex = d.trim_start_matches("sha256:");
            let mut src = std::fs::File::open(self.blob_path(d))?;
            file(&mut f, &format!("blobs/sha256/{hex}"), &mut src, *size)?;
        }
        f.write_all(&[0u8; 1024])?;
        f.flush()?;
        Ok(std::fs::metadata(path)?.len())
    }
}

/// The two versions: the same layers but the last (the application layer, `changed_mib`),
/// whose bytes differ in version 2.
struct Images {
    layout: PathBuf,
    v1: Built,
    v2: Built,
    archive_v1: PathBuf,
    archive_v1_bytes: u64,
    archive_v2: PathBuf,
    archive_v2_bytes: u64,
    /// The layer that changed, in version 2 (digest, bytes).
    changed: (String, u64),
}

fn make_images(work: &Path, layers_mib: &[u64], nonce: u64) -> anyhow::Result<Images> {
    let mut layout = Layout::new(work.join("layout"))?;
    let mut layers = Vec::new();
    for (i, mib) in layers_mib.iter().enumerate() {
        let content = noise(nonce + i as u64, (*mib << 20) as usize);
        layers.push(layout.put(&layer_tar(&format!("layer{i}"), "data.bin", &content))?);
    }
    let last = layers_mib.len() - 1;
    let content = noise(nonce + 1000, (layers_mib[last] << 20) as usize);
    let changed = layout.put(&layer_tar(&format!("layer{last}"), "data.bin", &content))?;
    let v1 = layout.image(&format!("{REPOSITORY}:1"), &layers)?;
    let mut layers2 = layers.clone();
    layers2[last] = changed.clone();
    let v2 = layout.image(&format!("{REPOSITORY}:2"), &layers2)?;
    let archive_v1 = work.join("image-v1.oci.tar");
    let archive_v2 = work.join("image-v2.oci.tar");
    let archive_v1_bytes = layout.archive(&v1, &archive_v1)?;
    let archive_v2_bytes = layout.archive(&v2, &archive_v2)?;
    Ok(Images {
        layout: layout.dir,
        v1,
        v2,
        archive_v1,
        archive_v1_bytes,
        archive_v2,
        archive_v2_bytes,
        changed,
    })
}

// ---------------------------------------------------------------------------------------------
// Counters and hosts.

fn counter(dev: &str, what: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/statistics/{what}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The bridge's tx_bytes and the sum of the hosts' veths' tx_bytes (root side: what went into
/// the hosts).
#[derive(Debug, Clone, Copy)]
struct Counters {
    bridge_tx: u64,
    veths_tx: u64,
}

fn counters(hosts: &[BenchHost]) -> Counters {
    Counters {
        bridge_tx: counter(BRIDGE, "tx_bytes"),
        veths_tx: hosts.iter().map(|h| counter(&h.veth, "tx_bytes")).sum(),
    }
}

struct BenchHost {
    inv: aion_model::inventory::Host,
    /// The host's veth in the root namespace (`aiontb<last octet>`, scripts/testbed).
    veth: String,
}

struct Setup {
    hosts: Vec<BenchHost>,
    known_hosts: PathBuf,
    key: PathBuf,
    control_dir: PathBuf,
}

impl Setup {
    /// `ssh` as a person would run it by hand: strict host keys against the testbed's
    /// known_hosts, its key, no config file; `sudo -n` for a non-root login.
    fn ssh(&self, h: &BenchHost, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "none", "-o", "BatchMode=yes"])
            .args([
                "-o",
                "ConnectTimeout=10",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
            ])
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-i")
            .arg(&self.key)
            .arg(format!("{}@{}", h.inv.ssh.user, h.inv.address));
        if h.inv.ssh.user == "root" {
            c.arg(cmd);
        } else {
            c.arg(format!("sudo -n {cmd}"));
        }
        c
    }

    fn ssh_options(&self) -> SshOptions {
        SshOptions {
            known_hosts: Some(self.known_hosts.clone()),
            accept_new: false,
            connect_timeout: Duration::from_secs(10),
            control_dir: self.control_dir.clone(),
            persist: None,
            upload_limit: None,
        }
    }
}

/// What one variant measured.
struct Measured {
    variant: String,
    wall: Duration,
    /// Delta of the bridge's tx_bytes: the operator's uplink.
    uplink: u64,
    /// Delta of the hosts' veths' tx_bytes: what reached the hosts.
    to_hosts: u64,
    /// Image bytes sent per host (the archive for `ctr import`; ours: `Received::bytes()`).
    per_host: Vec<u64>,
    /// Extra text (phases).
    note: String,
    load: String,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn reset(cmd: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    let st = Command::new("sh").args(["-c", cmd]).status()?;
    if !st.success() {
        bail!("reset `{cmd}` failed: {st}");
    }
    eprintln!(
        "  reset: every host's containerd empty ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every host has `img` at its digest, complete and unpacked (`ctr images check`).
fn verify(s: &Setup, img: &Built) -> anyhow::Result<()> {
    let children: Vec<_> = s
        .hosts
        .iter()
        .map(|h| {
            s.ssh(h, "ctr -n k8s.io images check")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for (h, c) in s.hosts.iter().zip(children) {
        let out = c.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let n = img.layers.len() + 1;
        let ok = text.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&img.reference.as_str())
                && f.get(2) == Some(&img.digest.as_str())
                && l.contains(&format!("complete ({n}/{n})"))
                && l.trim_end().ends_with("true")
        });
        if !ok {
            bail!(
                "{}: {} not there complete and unpacked at {}:\n{text}{}",
                h.inv.name,
                img.reference,
                img.digest,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Variants.

/// By hand: `ssh host ctr -n k8s.io images import - < archive`, one host after the other or
/// all at once.
fn by_hand(
    s: &Setup,
    variant: &str,
    archive: &Path,
    archive_bytes: u64,
    parallel: bool,
) -> anyhow::Result<Measured> {
    let before = counters(&s.hosts);
    let t = Instant::now();
    let spawn = |h: &BenchHost| -> anyhow::Result<std::process::Child> {
        Ok(s.ssh(h, "ctr -n k8s.io images import -")
            .stdin(std::fs::File::open(archive)?)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?)
    };
    let check = |h: &BenchHost, c: std::process::Child| -> anyhow::Result<()> {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{}: ctr import failed ({}): {}",
                h.inv.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    if parallel {
        let children: Vec<_> = s.hosts.iter().map(spawn).collect::<Result<_, _>>()?;
        for (h, c) in s.hosts.iter().zip(children) {
            check(h, c)?;
        }
    } else {
        for h in &s.hosts {
            check(h, spawn(h)?)?;
        }
    }
    let wall = t.elapsed();
    let after = counters(&s.hosts);
    Ok(Measured {
        variant: variant.to_string(),
        wall,
        uplink: after.bridge_tx - before.bridge_tx,
        to_hosts: after.veths_tx - before.veths_tx,
        per_host: vec![archive_bytes; s.hosts.len()],
        note: String::new(),
        load: loadavg(),
    })
}

/// A host's containerd facts, from the facts script with the containerd request (the part of
/// apply's facts script that is about images).
async fn containerd_facts(h: &BenchHost, c: &SshHost) -> anyhow::Result<facts::ContainerdFacts> {
    let req = FactRequest {
        user: h.inv.ssh.user.clone(),
        containerd: true,
        ..FactRequest::default()
    };
    let out = c.run(&req.script()).await?;
    anyhow::ensure!(
        out.success(),
        "{}: facts failed: {}",
        h.inv.name,
        out.combined()
    );
    let f = facts::parse(
        &h.inv.name,
        &out.stdout_str(),
        &String::from_utf8_lossy(&out.stderr),
    )?;
    f.containerd
        .with_context(|| format!("{}: ctr did not answer", h.inv.name))
}

/// Ours, as `apply` runs it for images: connect to every host (one multiplexed SSH master
/// each), gather each one's containerd facts (the facts script with the containerd request),
/// plan with `images::plan_host` against the source image, then `execute::send_images` on every
/// host that lacks something, all hosts at once (apply's cap, `--parallel`, is 16 by default
/// in the tests and above 12 here). The phases follow one another as in `apply` (every host's
/// facts, then the images phase).
async fn ours(s: &Setup, variant: &str, img: &SourceImage) -> anyhow::Result<Measured> {
    let opts = s.ssh_options();
    let before = counters(&s.hosts);
    let t = Instant::now();
    let conns = join_all(s.hosts.iter().map(|h| SshHost::connect(&h.inv, &opts))).await;
    let conns: Vec<SshHost> = conns.into_iter().collect::<Result<_, _>>()?;
    let t_connect = t.elapsed();
    let plans = join_all(s.hosts.iter().zip(&conns).map(|(h, c)| async move {
        let f = containerd_facts(h, c).await?;
        anyhow::Ok(images::plan_host(std::slice::from_ref(img), Some(&f)))
    }))
    .await;
    let plans: Vec<Vec<images::ImageChange>> = plans.into_iter().collect::<Result<_, _>>()?;
    let t_plan = t.elapsed();
    let sent = join_all(s.hosts.iter().zip(&conns).zip(&plans).map(
        |((h, c), changes)| async move {
            if changes.is_empty() {
                return Ok(0);
            }
            match send_images(c, &h.inv.ssh.user, changes).await {
                Ok(got) => {
                    anyhow::ensure!(
                        got.imported.iter().any(|(_, d)| *d == img.digest),
                        "{}: not imported: {got:?}",
                        h.inv.name
                    );
                    Ok(got.bytes())
                }
                Err(e) => bail!("{}: {}\n{}", h.inv.name, e.error, e.output),
            }
        },
    ))
    .await;
    let per_host: Vec<u64> = sent.into_iter().collect::<Result<_, _>>()?;
    let wall = t.elapsed();
    let after = counters(&s.hosts);
    join_all(conns.into_iter().map(SshHost::close)).await;
    let planned: u64 = plans.iter().flatten().map(|c| c.bytes).sum();
    Ok(Measured {
        variant: variant.to_string(),
        wall,
        uplink: after.bridge_tx - before.bridge_tx,
        to_hosts: after.veths_tx - before.veths_tx,
        per_host,
        note: format!(
            "connect {:.2} s, facts+plan {:.2} s, send+import {:.2} s; planned {} B",
            t_connect.as_secs_f64(),
            (t_plan - t_connect).as_secs_f64(),
            (wall - t_plan).as_secs_f64(),
            planned
        ),
        load: loadavg(),
    })
}

/// Device to device (`imagesFrom: <host 0>` for hosts 1..11): the code `apply` runs — every
/// host's facts and `images::plan_host` into a `HostPlan`, `execute::route_images` (the relay
/// keeps what its fetchers lack), then `execute::apply_images` (the relay from this machine,
/// then the fetchers from it over SSH with the apply's key, then the relay's cleanup).
/// Expected: the bridge's tx (uplink) ≈ one copy of the image; the hosts' veths ≈ 12 copies
/// (host-to-host frames are bridged, not sent by this machine).
async fn ours_fanout(s: &Setup, img: &SourceImage) -> anyhow::Result<Option<Measured>> {
    use aion_reconcile::execute::{ApplyReport, Context as ApplyContext, HostOutcome};
    use aion_reconcile::plan::{HostPlan, Plan};
    use std::collections::BTreeMap;
    use std::sync::Arc;
    let opts = s.ssh_options();
    let relay = &s.hosts[0].inv;
    let before = counters(&s.hosts);
    let t = Instant::now();
    let conns = join_all(s.hosts.iter().map(|h| SshHost::connect(&h.inv, &opts))).await;
    let conns: Vec<Arc<SshHost>> = conns
        .into_iter()
        .map(|c| c.map(Arc::new))
        .collect::<Result<_, _>>()?;
    let t_connect = t.elapsed();
    let planned = join_all(s.hosts.iter().zip(&conns).map(|(h, c)| async move {
        let f = containerd_facts(h, c).await?;
        let hp = HostPlan {
            host: h.inv.name.clone(),
            address: h.inv.address.clone(),
            role: h.inv.role,
            user: h.inv.ssh.user.clone(),
            changes: vec![],
            unchanged: 0,
            error: None,
            warnings: vec![],
            images: images::plan_host(std::slice::from_ref(img), Some(&f)),
            image_removals: vec![],
            images_from: None,
            relay: None,
        };
        Ok((hp, Some(f)))
    }))
    .await;
    let (mut plans, content): (Vec<HostPlan>, Vec<_>) = planned
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let wanted: images::Wanted = s
        .hosts
        .iter()
        .map(|h| (h.inv.name.clone(), vec![img.clone()]))
        .collect();
    let routes: BTreeMap<String, images::RelaySource> = s.hosts[1..]
        .iter()
        .map(|h| {
            let r = images::RelaySource {
                host: relay.name.clone(),
                address: relay.address.clone(),
                port: relay.ssh.port,
                user: relay.ssh.user.clone(),
                known_hosts: Some(s.known_hosts.clone()),
            };
            (h.inv.name.clone(), r)
        })
        .collect();
    aion_reconcile::execute::route_images(&mut plans, &content, &wanted, &routes);
    let plan = Plan::new(plans);
    let uplink_planned = plan.counts.image_bytes;
    let t_plan = t.elapsed();
    let hosts: aion_reconcile::host::Connections<SshHost> = s
        .hosts
        .iter()
        .zip(&conns)
        .map(|(h, c)| (h.inv.name.clone(), Ok(c.clone())))
        .collect();
    let mut report = ApplyReport {
        hosts: s
            .hosts
            .iter()
            .map(|h| (h.inv.name.clone(), HostOutcome::Converged { changed: 0 }))
            .collect(),
        changed: 0,
        images: vec![],
        image_removals: vec![],
    };
    let cluster =
        aion_reconcile::cluster::bootstrap::KubeCluster::new(PathBuf::from("/nonexistent"), vec![]);
    let progress = aion_reconcile::progress::Progress::new(aion_reconcile::progress::Render::Lines);
    let log =
        aion_reconcile::progress::Log::create(&std::env::temp_dir().join("aion-bench-fanout"))?;
    let cx = ApplyContext {
        hosts: &hosts,
        cluster: &cluster,
        progress: &progress,
        log: &log,
        parallel: 16,
    };
    aion_reconcile::execute::apply_images(&plan, &mut report, &cx).await;
    let wall = t.elapsed();
    let after = counters(&s.hosts);
    drop(hosts);
    for c in conns {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    anyhow::ensure!(
        report.ok(),
        "fan-out failed: {:?} (log {})",
        report.hosts,
        log.path().display()
    );
    let per_host: Vec<u64> = s
        .hosts
        .iter()
        .map(|h| {
            report
                .images
                .iter()
                .find(|(n, _)| *n == h.inv.name)
                .map_or(0, |(_, r)| r.bytes())
        })
        .collect();
    let _ = std::fs::remove_file(log.path());
    Ok(Some(Measured {
        variant: "f. ours, device to device (hosts 1..11 fetch from host 0)".to_string(),
        wall,
        uplink: after.bridge_tx - before.bridge_tx,
        to_hosts: after.veths_tx - before.veths_tx,
        per_host,
        note: format!(
            "connect {:.2} s, facts+plan {:.2} s, relay+fetch+import {:.2} s; planned uplink {} B",
            t_connect.as_secs_f64(),
            (t_plan - t_connect).as_secs_f64(),
            (wall - t_plan).as_secs_f64(),
            uplink_planned
        ),
        load: loadavg(),
    }))
}

// ---------------------------------------------------------------------------------------------

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut inventory = PathBuf::from("inventories/testbed-img/inventory.yml");
    let mut work: Option<PathBuf> = None;
    let mut reset_cmd: Option<String> = None;
    let mut runs = 1usize;
    let mut layers_mib: Vec<u64> = vec![64, 48, 40, 28, 15, 5];
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--inventory" => inventory = PathBuf::from(v),
            "--work" => work = Some(PathBuf::from(v)),
            "--reset" => reset_cmd = Some(v),
            "--runs" => runs = v.parse()?,
            "--layers-mib" => {
                layers_mib = v
                    .split(',')
                    .map(|x| x.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let work = work.context("--work DIR is required")?;
    let reset_cmd = reset_cmd.context("--reset CMD is required (empties every containerd)")?;
    anyhow::ensure!(layers_mib.len() >= 2, "--layers-mib: at least two layers");

    let loaded = aion_model::inventory::load(&inventory).map_err(|e| anyhow::anyhow!("{e}"))?;
    let inv = loaded.value;
    let known_hosts = inv
        .known_hosts
        .clone()
        .context("inventory has no knownHosts")?;
    let key = inv
        .hosts
        .first()
        .and_then(|h| h.ssh.key.clone())
        .context("inventory has no ssh key")?;
    let hosts: Vec<BenchHost> = inv
        .hosts
        .iter()
        .map(|h| BenchHost {
            veth: format!("aiontb{}", h.address.rsplit('.').next().unwrap_or("")),
            inv: h.clone(),
        })
        .collect();
    std::fs::create_dir_all(&work)?;
    let setup = Setup {
        hosts,
        known_hosts,
        key,
        control_dir: work.join("ssh"),
    };
    eprintln!(
        "hosts: {} ({})",
        setup.hosts.len(),
        setup
            .hosts
            .iter()
            .map(|h| format!("{}@{}", h.inv.ssh.user, h.inv.address))
            .collect::<Vec<_>>()
            .join(" ")
    );

    let t = Instant::now();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let im = make_images(&work, &layers_mib, nonce)?;
    eprintln!(
        "image: {} layers ({} MiB), v1 {} B in {} blobs, v2 {} B; archives {} B / {} B; changed layer {} B ({:.1} s)",
        layers_mib.len(),
        layers_mib
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("+"),
        im.v1.bytes(),
        im.v1.blobs.len(),
        im.v2.bytes(),
        im.archive_v1_bytes,
        im.archive_v2_bytes,
        im.changed.1,
        t.elapsed().as_secs_f64()
    );
    let catalog = images::read_sources(std::slice::from_ref(&im.layout))?;
    let src_v1 = catalog
        .get(&im.v1.reference)
        .context("v1 in layout")?
        .clone();
    let src_v2 = catalog
        .get(&im.v2.reference)
        .context("v2 in layout")?
        .clone();
    anyhow::ensure!(src_v1.digest == im.v1.digest && src_v2.digest == im.v2.digest);
    // Read the archives and the layout once, so the first variant does not pay for the disk.
    for p in [&im.archive_v1, &im.archive_v2] {
        std::io::copy(&mut std::fs::File::open(p)?, &mut std::io::sink())?;
    }

    let mut rows: Vec<(usize, Measured)> = Vec::new();
    for run in 1..=runs {
        eprintln!("== run {run}/{runs} [{}], load {}", chrono_now(), loadavg());
        let mut push = |m: Measured| {
            eprintln!(
                "  {}: {:.2} s, uplink {} MB, to hosts {} MB, per host {} MB {}",
                m.variant,
                m.wall.as_secs_f64(),
                mb(m.uplink),
                mb(m.to_hosts),
                mb(m.per_host.iter().sum::<u64>() / m.per_host.len().max(1) as u64),
                m.note
            );
            rows.push((run, m));
        };
        reset(&reset_cmd)?;
        let m = by_hand(
            &setup,
            "a. by hand, sequential: ssh host ctr import - < archive",
            &im.archive_v1,
            im.archive_v1_bytes,
            false,
        )?;
        verify(&setup, &im.v1)?;
        push(m);
        reset(&reset_cmd)?;
        let m = by_hand(
            &setup,
            "b. by hand, parallel (12 at once)",
            &im.archive_v1,
            im.archive_v1_bytes,
            true,
        )?;
        verify(&setup, &im.v1)?;
        push(m);
        // The bump by hand: hosts with v1 (from b.) get the v2 archive, which holds every blob.
        let m = by_hand(
            &setup,
            "e. bump by hand, parallel: v2 archive to hosts with v1",
            &im.archive_v2,
            im.archive_v2_bytes,
            true,
        )?;
        verify(&setup, &im.v2)?;
        push(m);
        reset(&reset_cmd)?;
        let m = ours(
            &setup,
            "c. ours (facts, plan_host, send_images; 12 at once)",
            &src_v1,
        )
        .await?;
        verify(&setup, &im.v1)?;
        push(m);
        let m = ours(&setup, "d. ours, bump v1 → v2 (hosts have v1)", &src_v2).await?;
        verify(&setup, &im.v2)?;
        push(m);
        reset(&reset_cmd)?;
        if let Some(m) = ours_fanout(&setup, &src_v1).await? {
            verify(&setup, &im.v1)?;
            push(m);
        }
    }
    reset(&reset_cmd)?;

    // The table.
    let n = setup.hosts.len();
    println!(
        "image: {} layers of {} MiB (uncompressed tar, incompressible), {} blobs, {} B; OCI archive {} B; v2 changes the last layer: {} B",
        layers_mib.len(),
        layers_mib
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("+"),
        im.v1.blobs.len(),
        im.v1.bytes(),
        im.archive_v1_bytes,
        im.changed.1
    );
    println!();
    println!(
        "| run | variant | wall (s) | uplink: {BRIDGE} tx (MB) | into the {n} hosts: veths tx (MB) | image bytes sent per host (MB) | wall: ours / fastest by hand (which) | uplink: ours / by hand | load (1/5/15) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for run in 1..=runs {
        let of_run: Vec<&Measured> = rows
            .iter()
            .filter(|(r, _)| *r == run)
            .map(|(_, m)| m)
            .collect();
        // Ours against the fastest by-hand way of the same run: the full distribution (c., and
        // the fan-out once it exists) against a./b., the bump (d.) against the bump by hand (e.).
        let fastest = |prefixes: &[&str]| {
            of_run
                .iter()
                .filter(|m| prefixes.iter().any(|p| m.variant.starts_with(p)))
                .min_by_key(|m| m.wall)
                .copied()
        };
        let full = fastest(&["a.", "b."]);
        let bump = fastest(&["e."]);
        for m in &of_run {
            let per_host = m.per_host.iter().sum::<u64>() / m.per_host.len().max(1) as u64;
            let against = match &m.variant[..2] {
                "c." | "f." => full,
                "d." => bump,
                _ => None,
            };
            let (rw, ru) = match against {
                Some(f) => (
                    format!(
                        "{:.2} ({})",
                        m.wall.as_secs_f64() / f.wall.as_secs_f64(),
                        &f.variant[..1]
                    ),
                    format!("{:.3}", m.uplink as f64 / f.uplink.max(1) as f64),
                ),
                None => ("".into(), "".into()),
            };
            println!(
                "| {run} | {} | {:.2} | {} | {} | {} | {rw} | {ru} | {} |",
                m.variant,
                m.wall.as_secs_f64(),
                mb(m.uplink),
                mb(m.to_hosts),
                mb(per_host),
                m.load
            );
        }
    }
    println!();
    for (run, m) in &rows {
        if m.variant.starts_with("d.") {
            let changed = im.changed.1 as f64;
            let max = m.per_host.iter().copied().max().unwrap_or(0) as f64;
            println!(
                "run {run}, bump: image bytes received per host {} (max {:.3}× the changed layer of {} B; goal ≤ 1.1×); uplink per host {:.3}× the changed layer (SSH, facts script, receiving script included)",
                m.per_host
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                max / changed,
                im.changed.1,
                m.uplink as f64 / n as f64 / changed
            );
        }
        if !m.note.is_empty() {
            println!("run {run}, {}: {}", &m.variant[..2], m.note);
        }
    }
    Ok(())
}

/// UTC time of day, HH:MM:SS.
fn chrono_now() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{:02}:{:02}:{:02} UTC", s / 3600 % 24, s / 60 % 60, s % 60)
}
