//! Images for devices without a registry, on the real testbed (real containerd on every host):
//! OCI images built here (layout directory, uncompressed tar layers written in Rust) are named by
//! a microservice on every host; the testbed's own images (`images.tsv` of `scripts/images`) are
//! the second source, for the core, which the hosts already have.
//!
//! 1. The hosts are provisioned without image sources (nothing about images happens).
//! 2. With `imageSources`: the first plan shows image A on every host with every blob's bytes;
//!    apply sends exactly those; the second plan shows nothing to send.
//! 3. Image B shares A's base layer: the plan and apply send only B's own blobs (bytes counted).
//! 4. A connection cut mid-transfer (the SSH master killed while image D's blobs stream at a
//!    capped rate): nothing imported, the blobs verified so far stay on the host; the next
//!    facts report them, the next transfer sends only the rest and the image is complete.
//! 5. Image C, one of whose blobs in the source does not match its digest: refused on every
//!    host, nothing imported, no staging left.
//! 6. An image no source has: `plan` fails naming the host, the object and the reference.
//!
//! `old_versions_are_removed_after_the_new_pods_are_ready` runs version 2 from a multi-platform
//! index (this machine's variant and another platform's): its pods run, only this platform's
//! blobs reach the hosts, and it is kept and removed by its index digest like any version.
//!
//! Every image of the test is named `aion.local/aion-imgtest-…`; a guard removes them from
//! every host's containerd at the end, also on failure, then the cluster objects and the hosts
//! are reset as the other testbed tests leave them.
//!
//! Fails (never skips) under `AION_REQUIRE_TESTBED=1 AION_REQUIRE_K8S=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aion_integration_tests::component;
use aion_integration_tests::k8s;
use aion_integration_tests::oci::{self, Layout, noise, tar};
use aion_integration_tests::testbed::{self, Testbed, common, inventory_copy, rt};
use aion_reconcile::reconcile;

/// Every image of this test is `aion.local/<PREFIX>…`.
const PREFIX: &str = "aion-imgtest-";

/// The testbed's images list (`scripts/images`): the core's images, which the hosts have.
fn testbed_images_list() -> PathBuf {
    let dir = std::env::var_os("AION_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/aion/images")
        });
    let list = dir.join("images.tsv");
    assert!(
        list.is_file(),
        "{} missing: the testbed's images are listed there by `scripts/images build`",
        list.display()
    );
    list
}

/// Each host's services file: the test's microservices (idle: `startup: no`, so no pod runs
/// the test images; they are needed all the same).
fn write_services(tb: &Testbed, dir: &Path, names: &[&str]) {
    write_services_each(tb, dir, |_| names.to_vec());
}

/// Each host's services file with the microservices `names` gives for it.
fn write_services_each<'a>(
    tb: &Testbed,
    dir: &Path,
    names: impl Fn(&testbed::TestbedHost) -> Vec<&'a str>,
) {
    for h in &tb.hosts {
        let mut s = format!("deviceName: {}\nmicroservices:\n", h.name);
        for n in names(h) {
            s.push_str(&format!(
                "  {PREFIX}{n}:\n    startup: no\n    always: yes\n    scale: 1\n    tag: \"1\"\n"
            ));
        }
        std::fs::write(dir.join(format!("services-{}.yml", h.name)), s).unwrap();
    }
}

/// The testbed inventory with each host running its services file from `dir`, and the given
/// image sources.
fn inventory(tb: &Testbed, dir: &Path, sources: &[PathBuf]) -> PathBuf {
    inventory_with(tb, dir, sources, "")
}

/// [`inventory`] with more top-level settings (`top`, whole lines).
fn inventory_with(tb: &Testbed, dir: &Path, sources: &[PathBuf], top: &str) -> PathBuf {
    let services_dir = dir.to_path_buf();
    let sources = sources.to_vec();
    let top = top.to_string();
    inventory_copy(tb, dir, move |text| {
        let mut out = top.clone();
        if !sources.is_empty() {
            out.push_str("imageSources:\n");
            for s in &sources {
                out.push_str(&format!("  - {}\n", s.display()));
            }
        }
        for line in text.lines() {
            // The testbed's own sources (its images.tsv) are given by the caller, or none.
            if line.trim_start().starts_with("services: ") || line.starts_with("imageSources:") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if let Some(name) = line.strip_prefix("  - name: ") {
                out.push_str(&format!(
                    "    services: {}\n",
                    services_dir
                        .join(format!("services-{}.yml", name.trim()))
                        .display()
                ));
            }
        }
        out
    })
}

fn apply(inventory: &Path) -> reconcile::Outcome {
    let args = aion_reconcile::commands::apply::Args {
        common: common(inventory),
        lock_stale_after: 7200,
        wait: false,
        atomic: false,
        timeout: 600,
        max_upload_rate: None,
    };
    let outcome = aion_reconcile::commands::apply::run_blocking(&args).unwrap();
    print!("{}", outcome.summary());
    outcome
}

fn plan(inventory: &Path) -> anyhow::Result<aion_reconcile::plan::Plan> {
    let (plan, _cluster) = rt().block_on(reconcile::plan(&common(inventory).options()))?;
    print!(
        "{}",
        aion_reconcile::plan_text::render_text(
            &plan,
            aion_reconcile::plan_text::Style { color: false }
        )
    );
    Ok(plan)
}

/// Each host's images of this test in its containerd: reference → digest.
fn host_images(tb: &Testbed) -> BTreeMap<String, BTreeMap<String, String>> {
    tb.hosts
        .iter()
        .map(|h| {
            let out = tb.run_as_root(h, "ctr -n k8s.io images ls");
            let imgs = out
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() >= 3 && f[0].contains(PREFIX))
                        .then(|| (f[0].to_string(), f[2].to_string()))
                })
                .collect();
            (h.name.clone(), imgs)
        })
        .collect()
}

/// A layer with this machine's static busybox, and a command that loops until SIGTERM (so an
/// old pod goes at once): a microservice that runs.
fn busybox_loop() -> (Vec<u8>, [&'static str; 4]) {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian's busybox-static)");
    let bin = aion_integration_tests::oci::tar_modes("bin", &[("busybox", &busybox, "0000755")]);
    let cmd = [
        "/bin/busybox",
        "sh",
        "-c",
        "trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done",
    ];
    (bin, cmd)
}

/// Every pod in the test cluster.
fn all_pods(cluster: &k8s::TestCluster) -> Vec<k8s_openapi::api::core::v1::Pod> {
    rt().block_on(async {
        let client = aion_reconcile::kubeclient::client_from(cluster.kubeconfig())
            .await
            .unwrap();
        kube::Api::<k8s_openapi::api::core::v1::Pod>::all(client)
            .list(&Default::default())
            .await
            .unwrap()
            .items
    })
}

/// `down` of the test's inventory in `dir`, on the test cluster.
fn down_args(dir: &Path, cluster: &k8s::TestCluster) -> aion_reconcile::commands::down::Args {
    aion_reconcile::commands::down::Args {
        inventory: dir.join("inventory.yml"),
        kubeconfig: Some(cluster.kubeconfig().to_owned()),
        dry_run: false,
    }
}

/// At the end, also on failure: the test's images out of every host's containerd, then the
/// cluster objects and the hosts as the other testbed tests expect them.
struct Cleanup<'a> {
    tb: &'a Testbed,
    down: Option<aion_reconcile::commands::down::Args>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        // Every name of the test's images: theirs and the `sha256:<id>` names the CRI adds
        // (same target digest) — unless a name outside the test holds that content too (the
        // registry test's copy of the core is `aion.local/aion-kanban` under another name).
        let rm = format!(
            "command -v ctr >/dev/null || {{ echo cleaned; exit 0; }}; \
             ctr -n k8s.io images ls | awk -v p={PREFIX} 'NR > 1 {{ r[NR] = $1; d[NR] = $3; if (index($1, p)) t[$3] = 1; else if ($1 !~ /^sha256:/ && $1 !~ /@sha256:/) keep[$3] = 1 }} END {{ for (i in r) if (index(r[i], p) || (d[i] in t && !(d[i] in keep))) print r[i] }}' | \
             while read -r r; do ctr -n k8s.io images rm --sync \"$r\" >/dev/null; done; \
             rm -rf /var/lib/aion/images/.staging.*; echo cleaned"
        );
        for h in &self.tb.hosts {
            let ok = self
                .tb
                .ssh(h, &testbed::as_root(h, &rm))
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cleaned"));
            eprintln!(
                "cleanup: test images removed from {}: {}",
                h.name,
                if ok { "yes" } else { "FAILED" }
            );
        }
        if let Some(down) = self.down.take() {
            let _ = aion_reconcile::commands::down::run(&down);
        }
        if !std::thread::panicking() {
            self.tb.reset_all();
        } else {
            // (panic-free while unwinding: ResetIfFailed's way)
            let _guard = testbed::ResetIfFailed(self.tb);
        }
    }
}

#[test]
fn images_are_sent_once_only_what_is_missing_and_verified() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::exclusive();
    let Some(cluster) = k8s::require() else {
        return;
    };
    let list = testbed_images_list();
    let dir = tempfile::tempdir().unwrap();
    let nonce = oci::nonce();

    // Images: A and B share a base layer (different per run: nothing of it is on a host yet).
    let mut layout = Layout::new(dir.path().join("layout"));
    let base = tar("imgtest", &[("base.bin", &noise(nonce, 384 * 1024))]);
    let a = layout.image(
        &format!("aion.local/{PREFIX}a:1"),
        &[
            base.clone(),
            tar("imgtest", &[("a.bin", &noise(nonce + 1, 48 * 1024))]),
        ],
    );
    let b = layout.image(
        &format!("aion.local/{PREFIX}b:1"),
        &[
            base.clone(),
            tar("imgtest", &[("b.bin", &noise(nonce + 2, 96 * 1024))]),
        ],
    );
    let c = layout.image(
        &format!("aion.local/{PREFIX}c:1"),
        &[
            base,
            tar("imgtest", &[("c.bin", &noise(nonce + 3, 16 * 1024))]),
        ],
    );
    assert_eq!(a.layers[0], b.layers[0]);
    let sources = vec![layout.dir.clone(), list];

    let down = || down_args(dir.path(), &cluster);
    write_services(&tb, dir.path(), &["a"]);
    inventory(&tb, dir.path(), &[]);
    let _cleanup = Cleanup {
        tb: &tb,
        down: Some(down()),
    };
    tb.reset_all();
    assert_eq!(aion_reconcile::commands::down::run(&down()).unwrap(), 0);

    // 1. Provision the hosts, no image sources.
    let inv = inventory(&tb, dir.path(), &[]);
    let t0 = std::time::Instant::now();
    let outcome = apply(&inv);
    assert!(outcome.ok(), "provisioning apply:\n{}", outcome.summary());
    assert!(outcome.report.images.is_empty());
    eprintln!("provisioning apply: {:.0} s", t0.elapsed().as_secs_f64());

    // 2. With image sources: A on every host, every blob.
    let inv = inventory(&tb, dir.path(), &sources);
    let p = plan(&inv).unwrap();
    for h in &tb.hosts {
        let hp = p.host(&h.name).unwrap();
        assert_eq!(hp.error, None);
        let refs: Vec<&str> = hp.images.iter().map(|i| i.reference.as_str()).collect();
        assert_eq!(
            refs,
            [a.reference.as_str()],
            "{}: only the test image (the core is there)",
            h.name
        );
        let i = &hp.images[0];
        assert_eq!(i.digest, a.digest);
        assert_eq!((i.bytes, i.blobs, i.blobs_total), (a.bytes(), 4, 4));
        assert_eq!(i.replaces, None);
    }
    let text = aion_reconcile::plan_text::render_text(
        &p,
        aion_reconcile::plan_text::Style { color: false },
    );
    assert!(
        text.contains(&format!(
            "  + image {} — {} ({} to send: 4 of 4 blobs)",
            a.reference,
            a.digest,
            aion_reconcile::images::human_bytes(a.bytes())
        )),
        "{text}"
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["hosts"][0]["images"][0]["bytes"], a.bytes());
    assert_eq!(json["hosts"][0]["images"][0]["reference"], a.reference);

    let outcome = apply(&inv);
    assert!(outcome.ok(), "apply with A:\n{}", outcome.summary());
    assert_eq!(outcome.report.images.len(), tb.hosts.len());
    for (host, got) in &outcome.report.images {
        eprintln!(
            "{host}: A: {} bytes in {} blobs",
            got.bytes(),
            got.blobs.len()
        );
        assert_eq!(got.bytes(), a.bytes(), "{host}");
        assert_eq!(got.imported, vec![(a.reference.clone(), a.digest.clone())]);
    }
    for (host, imgs) in host_images(&tb) {
        assert_eq!(imgs.get(&a.reference), Some(&a.digest), "{host}: {imgs:?}");
    }
    let p = plan(&inv).unwrap();
    assert_eq!(p.counts.images, 0, "second plan: nothing to send");
    assert!(p.hosts.iter().all(|h| h.images.is_empty()));

    // 3. B shares A's base layer: only B's own blobs (manifest, config, its layer).
    write_services(&tb, dir.path(), &["a", "b"]);
    let own_b: u64 = b.bytes() - b.blobs[2].1;
    let p = plan(&inv).unwrap();
    for hp in &p.hosts {
        assert_eq!(hp.images.len(), 1, "{}", hp.host);
        let i = &hp.images[0];
        assert_eq!(i.reference, b.reference);
        assert_eq!(
            (i.bytes, i.blobs, i.blobs_total),
            (own_b, 3, 4),
            "{}",
            hp.host
        );
    }
    let outcome = apply(&inv);
    assert!(outcome.ok(), "apply with B:\n{}", outcome.summary());
    for (host, got) in &outcome.report.images {
        eprintln!(
            "{host}: B: {} bytes in {} blobs (of {} in the image)",
            got.bytes(),
            got.blobs.len(),
            b.bytes()
        );
        assert_eq!(got.bytes(), own_b, "{host}: only B's own blobs");
        assert!(got.blobs.iter().all(|(d, _)| *d != b.layers[0]));
    }
    // containerd took the base layer from its content store: B is there, unpacked.
    for (host, imgs) in host_images(&tb) {
        assert_eq!(imgs.get(&b.reference), Some(&b.digest), "{host}: {imgs:?}");
    }
    for h in &tb.hosts {
        let out = tb.run_as_root(
            h,
            &format!(
                "ctr -n k8s.io images check | grep -F {} || true",
                testbed::shell_quote(&b.reference)
            ),
        );
        assert!(out.contains("complete"), "{}: {out}", h.name);
    }

    // 4. A cut connection, then a resume: D streams to one host at 1 MiB/s; once two of its
    //     blobs are in the host's cache, the SSH master is killed.
    let d = layout.image(
        &format!("aion.local/{PREFIX}d:1"),
        &[
            tar("imgtest", &[("d1.bin", &noise(nonce + 10, 1536 * 1024))]),
            tar("imgtest", &[("d2.bin", &noise(nonce + 11, 1536 * 1024))]),
            tar("imgtest", &[("d3.bin", &noise(nonce + 12, 1536 * 1024))]),
        ],
    );
    cut_and_resume(&tb, &inv, &sources, &d);

    // 5. C's own layer does not match its digest in the source: refused, nothing imported.
    write_services(&tb, dir.path(), &["a", "b", "c"]);
    let c_layer = layout.blob_path(&c.layers[1]);
    let mut bad = std::fs::read(&c_layer).unwrap();
    let last = bad.len() - 1025; // inside the file's data, before the end blocks
    bad[last] ^= 0xff;
    std::fs::write(&c_layer, &bad).unwrap();
    let outcome = apply(&inv);
    assert!(!outcome.ok(), "a corrupt blob must fail the apply");
    for h in &tb.hosts {
        match outcome.report.outcome(&h.name) {
            Some(aion_reconcile::execute::HostOutcome::Failed { step, error }) => {
                assert_eq!(step, "images");
                assert!(
                    error.contains("does not match") && error.contains(&c.layers[1]),
                    "{}: {error}",
                    h.name
                );
            }
            other => panic!("{}: {other:?}", h.name),
        }
        // No staging directory left; the blob cache holds only verified blobs (for the next
        // apply to resume from), never the one that did not match.
        let left = tb.run_as_root(h, "ls -A /var/lib/aion/images");
        assert_eq!(left.trim(), "blobs", "{}: staging left behind", h.name);
        let cached = tb.run_as_root(
            h,
            "cd /var/lib/aion/images/blobs/sha256 && for f in *; do [ -f \"$f\" ] && \
             echo \"$f $(sha256sum < \"$f\" | cut -d' ' -f1)\"; done; true",
        );
        for line in cached.lines() {
            let (name, sum) = line.split_once(' ').unwrap();
            assert_eq!(
                name, sum,
                "{}: cached blob {name} is not what its name says",
                h.name
            );
            assert_ne!(
                format!("sha256:{name}"),
                c.layers[1],
                "{}: the bad blob was kept",
                h.name
            );
        }
    }
    assert!(
        outcome.cluster.is_err(),
        "the cluster part is skipped when the images failed"
    );
    for (host, imgs) in host_images(&tb) {
        assert!(
            !imgs.contains_key(&c.reference),
            "{host}: C imported: {imgs:?}"
        );
    }

    // 6. An image no source has: plan fails naming host, object and reference.
    write_services(&tb, dir.path(), &["a", "ghost"]);
    let e = plan(&inv).unwrap_err();
    let msg = format!("{e:#}");
    for h in &tb.hosts {
        assert!(
            msg.contains(&format!("host {}: Deployment/", h.name))
                && msg.contains(&format!(
                    "image aion.local/{PREFIX}ghost:1 is in no image source"
                )),
            "{msg}"
        );
    }
    assert!(msg.contains("nothing was sent"), "{msg}");
    let after = host_images(&tb);
    assert!(
        after
            .values()
            .all(|imgs| !imgs.keys().any(|r| r.contains("ghost"))),
        "{after:?}"
    );
}

/// Send `img` to the first worker over its own SSH connection at 1 MiB/s, kill the connection's
/// master once two blobs are verified on the host, then check the resume: the facts report the
/// verified blobs, a new transfer sends only the others, containerd has the whole image, and
/// the host's blob cache is empty again.
fn cut_and_resume(
    tb: &Testbed,
    inventory: &Path,
    sources: &[PathBuf],
    img: &aion_integration_tests::oci::Built,
) {
    use aion_reconcile::host::Host as _;
    use aion_reconcile::host::rate::RateLimit;
    use aion_reconcile::host::ssh::{SshHost, SshOptions};
    use aion_reconcile::images;
    let target = tb.workers().next().unwrap().clone();
    let inv = aion_model::inventory::load(inventory).unwrap().value;
    let host = inv.hosts.iter().find(|h| h.name == target.name).unwrap();
    let control = tempfile::tempdir().unwrap();
    let opts = |limit: Option<u64>| SshOptions {
        known_hosts: inv.known_hosts.clone(),
        accept_new: false,
        connect_timeout: std::time::Duration::from_secs(5),
        control_dir: control.path().join("ssh"),
        persist: None,
        upload_limit: limit.map(|r| std::sync::Arc::new(RateLimit::new(r))),
    };
    let catalog = images::read_sources(sources).unwrap();
    let source = catalog.get(&img.reference).unwrap().clone();
    rt().block_on(async {
        let h = SshHost::connect(host, &opts(Some(1 << 20))).await.unwrap();
        let first = images::plan_host(std::slice::from_ref(&source), Some(&containerd_facts(&h).await));
        assert_eq!(first[0].blobs, 5, "manifest, config, three layers");
        let script = images::receive_script("root", &first);
        let input = images::send_input(&first);
        {
        let send = h.run_with_input(&script, &input);
        tokio::pin!(send);
        // Watch the host's cache from another connection; cut once three blobs (manifest,
        // config, the first layer) are verified.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let cut = loop {
            tokio::select! {
                r = &mut send => panic!("the transfer ended before the cut: {r:?}"),
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
            let n = tb.run_as_root(&target, "ls /var/lib/aion/images/blobs/sha256 2>/dev/null | wc -l");
            if n.trim().parse::<usize>().unwrap_or(0) >= 3 {
                break kill_masters(control.path());
            }
            assert!(std::time::Instant::now() < deadline, "no blob arrived in 60 s");
        };
        assert!(cut > 0, "no SSH master to kill");
        let r = send.await;
        assert!(
            r.as_ref().map_or(true, |o| !o.success()),
            "the cut transfer succeeded: {r:?}"
        );
        }
        h.close().await;
        // The receiving script ends on the host by itself (its stdin closed) and removes its
        // staging directory; only the cache stays.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = tb.run_as_root(&target, "ls -A /var/lib/aion/images");
            if left.trim() == "blobs" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "staging left after the cut: {left}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }

        // Resume over a new connection (no cap).
        let h = SshHost::connect(host, &opts(None)).await.unwrap();
        let have = containerd_facts(&h).await;
        assert!(!have.images.contains_key(&img.reference), "imported after a cut");
        assert!(have.staged.len() >= 3, "verified blobs kept: {:?}", have.staged);
        assert!(
            have.staged.contains(&img.layers[0]) || have.staged.contains(&img.layers[1]),
            "a layer among the verified blobs: {:?}",
            have.staged
        );
        let staged_bytes: u64 = img
            .blobs
            .iter()
            .filter(|(d, _)| have.staged.contains(d))
            .map(|(_, n)| n)
            .sum();
        let second = images::plan_host(std::slice::from_ref(&source), Some(&have));
        assert_eq!(second[0].bytes, img.bytes() - staged_bytes, "only what is missing");
        let out = h
            .run_with_input(
                &images::receive_script("root", &second),
                &images::send_input(&second),
            )
            .await
            .unwrap();
        assert!(out.success(), "{}", out.combined());
        let got = images::parse_received(&out.stdout_str());
        eprintln!(
            "cut and resume on {}: {} bytes verified before the cut, {} sent after, {} in the image",
            target.name,
            staged_bytes,
            got.bytes(),
            img.bytes()
        );
        assert_eq!(got.bytes(), img.bytes() - staged_bytes);
        assert_eq!(got.imported, [(img.reference.clone(), img.digest.clone())]);
        let have = containerd_facts(&h).await;
        assert_eq!(have.images.get(&img.reference), Some(&img.digest));
        assert!(have.staged.is_empty(), "cache left: {:?}", have.staged);
        let check = tb.run_as_root(
            &target,
            &format!(
                "ctr -n k8s.io images check | grep -F {} || true",
                testbed::shell_quote(&img.reference)
            ),
        );
        assert!(check.contains("complete"), "{check}");
        h.close().await;
    });
}

/// What the host's containerd holds, and the verified blobs waiting in its cache.
async fn containerd_facts(
    h: &aion_reconcile::host::ssh::SshHost,
) -> aion_reconcile::facts::ContainerdFacts {
    use aion_reconcile::host::Host as _;
    let req = aion_reconcile::facts::FactRequest {
        user: "root".into(),
        containerd: true,
        ..aion_reconcile::facts::FactRequest::default()
    };
    let out = h.run(&req.script()).await.unwrap();
    aion_reconcile::facts::parse(
        h.name(),
        &out.stdout_str(),
        &String::from_utf8_lossy(&out.stderr),
    )
    .unwrap()
    .containerd
    .expect("containerd answers")
}

/// Kill -9 the master of every control socket under `dir` (`ssh -O check` names its pid): the
/// connection is cut, not closed. Returns how many were killed.
fn kill_masters(dir: &Path) -> usize {
    let mut killed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if std::os::unix::fs::FileTypeExt::is_socket(&ft) {
                let out = std::process::Command::new("ssh")
                    .args(["-S"])
                    .arg(&p)
                    .args(["-O", "check", "x"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stderr);
                if let Some(pid) = text
                    .split("pid=")
                    .nth(1)
                    .and_then(|r| r.split(')').next())
                    .and_then(|p| p.trim().parse::<i32>().ok())
                {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status();
                    killed += 1;
                }
            }
        }
    }
    killed
}

/// Each host's services file: one running microservice `<PREFIX>v` at `tag`.
fn write_running_service(tb: &Testbed, dir: &Path, tag: u32) {
    for h in &tb.hosts {
        let s = format!(
            "deviceName: {}\nmicroservices:\n  {PREFIX}v:\n    startup: yes\n    always: yes\n    scale: 1\n    tag: \"{tag}\"\n",
            h.name
        );
        std::fs::write(dir.join(format!("services-{}.yml", h.name)), s).unwrap();
    }
}

/// Each host's content blobs (`ctr content ls -q`).
fn host_content(tb: &Testbed, h: &testbed::TestbedHost) -> Vec<String> {
    tb.run_as_root(h, "ctr -n k8s.io content ls -q")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Version up: a running microservice goes 1 → 2 → 3. After 1 → 2 the previous version stays
/// (default `previousImages: 1`); the plan for 3 shows `- image …v:1` on every host (text and
/// JSON); apply removes it (its own blobs leave the content store) only once the pods of 3 are
/// ready and none runs 1 or 2 any more, and keeps 2; a second plan shows nothing.
#[test]
fn old_versions_are_removed_after_the_new_pods_are_ready() {
    let _hosts = component::exclusive();
    let Some(tb) = testbed::require() else { return };
    let Some(cluster) = k8s::require() else {
        return;
    };
    let list = testbed_images_list();
    let dir = tempfile::tempdir().unwrap();
    let nonce = oci::nonce();

    // Three versions: the same busybox layer (a static binary from this machine) and a small
    // layer of its own each; the container loops until SIGTERM, so an old pod goes at once.
    let (bin, cmd) = busybox_loop();
    let mut layout = Layout::new(dir.path().join("layout"));
    // Version 2 is a multi-platform index, as a mixed fleet's images are: this machine's
    // variant and another platform's (whose own layer no host may receive); its `layers` are
    // those of this machine's variant.
    let other = oci::other_arch();
    let mut foreign_layer = String::new();
    let v: Vec<_> = (1..=3u64)
        .map(|n| {
            let reference = format!("aion.local/{PREFIX}v:{n}");
            let layers = [
                bin.clone(),
                // (`noise` ignores the seed's lowest bit: even steps)
                tar("imgtest", &[("v.bin", &noise(nonce + 2 * n, 32 * 1024))]),
            ];
            if n != 2 {
                return layout.image_cmd(&reference, &layers, &cmd);
            }
            let mine = layout.unnamed(oci::this_arch(), &layers, &cmd);
            let theirs = layout.unnamed(
                other,
                &[tar("imgtest", &[("v.bin", &noise(nonce + 100, 32 * 1024))])],
                &cmd,
            );
            foreign_layer = theirs.layers[0].clone();
            oci::Built {
                layers: mine.layers.clone(),
                ..layout.index(&reference, &[(&mine, oci::this_arch()), (&theirs, other)])
            }
        })
        .collect();
    let sources = vec![layout.dir.clone(), list];

    let down = || down_args(dir.path(), &cluster);
    write_running_service(&tb, dir.path(), 1);
    let inv = inventory(&tb, dir.path(), &sources);
    let _cleanup = Cleanup {
        tb: &tb,
        down: Some(down()),
    };
    tb.reset_all();
    assert_eq!(aion_reconcile::commands::down::run(&down()).unwrap(), 0);

    // 1, then 2: nothing to remove yet (1 is the previous version).
    for n in 1..=2u32 {
        write_running_service(&tb, dir.path(), n);
        let p = plan(&inv).unwrap();
        assert_eq!(p.counts.image_removals, 0, "version {n}");
        let outcome = apply(&inv);
        assert!(outcome.ok(), "apply of version {n}:\n{}", outcome.summary());
        assert_eq!(outcome.old_images, None);
        for (host, imgs) in host_images(&tb) {
            assert_eq!(
                imgs.get(&v[n as usize - 1].reference),
                Some(&v[n as usize - 1].digest),
                "{host}"
            );
        }
    }

    // 3: the plan shows 1's removal on every host, in text and JSON.
    write_running_service(&tb, dir.path(), 3);
    let p = plan(&inv).unwrap();
    assert_eq!(p.counts.image_removals, tb.hosts.len());
    let text = aion_reconcile::plan_text::render_text(
        &p,
        aion_reconcile::plan_text::Style { color: false },
    );
    for hp in &p.hosts {
        let refs: Vec<&str> = hp
            .image_removals
            .iter()
            .map(|r| r.reference.as_str())
            .collect();
        assert_eq!(refs, [v[0].reference.as_str()], "{}", hp.host);
        assert_eq!(hp.image_removals[0].digest, v[0].digest);
        assert_eq!(hp.images.len(), 1, "{}", hp.host);
        assert_eq!(hp.images[0].reference, v[2].reference);
    }
    assert!(
        text.contains(&format!("  - image {} — {}", v[0].reference, v[0].digest)),
        "{text}"
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json["hosts"][0]["image_removals"][0]["reference"],
        v[0].reference
    );

    let own_layer_1 = v[0].layers[1].clone();
    let outcome = apply(&inv);
    assert!(outcome.ok(), "apply of version 3:\n{}", outcome.summary());
    assert!(
        matches!(&outcome.old_images, Some(Ok(s)) if s.starts_with(&format!("old images: {} removed", tb.hosts.len()))),
        "{:?}",
        outcome.old_images
    );
    assert_eq!(outcome.report.image_removals.len(), tb.hosts.len());
    for (host, gone) in &outcome.report.image_removals {
        assert_eq!(gone, &[v[0].reference.clone()], "{host}");
    }
    // On every host: 3 and 2 there, 1 gone with its own layer; no pod runs 1 or 2.
    for h in &tb.hosts {
        let imgs = &host_images(&tb)[&h.name];
        assert_eq!(imgs.get(&v[2].reference), Some(&v[2].digest), "{}", h.name);
        assert_eq!(imgs.get(&v[1].reference), Some(&v[1].digest), "{}", h.name);
        assert!(!imgs.contains_key(&v[0].reference), "{}: {imgs:?}", h.name);
        assert!(
            !imgs.values().any(|d| *d == v[0].digest),
            "{}: an alias of 1 left: {imgs:?}",
            h.name
        );
        let content = host_content(&tb, h);
        assert!(
            !content.contains(&own_layer_1) && !content.contains(&v[0].digest),
            "{}: 1's blobs still in the content store",
            h.name
        );
        assert!(content.contains(&v[1].layers[1]), "{}", h.name);
        assert!(
            !content.contains(&foreign_layer),
            "{}: the {other} variant of 2 was sent",
            h.name
        );
    }
    // The revisions of 2 and 3 record the digest each sent (newest last).
    let revisions = rt().block_on(async {
        let client = aion_reconcile::kubeclient::client_from(cluster.kubeconfig())
            .await
            .unwrap();
        let inventory = aion_reconcile::reconcile::load_inventory(&inv).unwrap();
        aion_reconcile::cluster::history::History::of(&client, &inventory)
            .decoded()
            .await
            .unwrap()
    });
    let digests: Vec<_> = revisions
        .iter()
        .rev()
        .take(2)
        .map(|(_, r)| r.as_ref().unwrap().digests.clone())
        .collect();
    assert_eq!(
        digests[0].get(&v[2].reference),
        Some(&v[2].digest),
        "{digests:?}"
    );
    assert_eq!(
        digests[1].get(&v[1].reference),
        Some(&v[1].digest),
        "{digests:?}"
    );
    let pods: Vec<String> = all_pods(&cluster)
        .into_iter()
        .flat_map(|p| p.spec.into_iter().flat_map(|s| s.containers))
        .filter_map(|c| c.image)
        .collect();
    let pods = pods.join("\n");
    assert!(
        !pods.contains(&v[0].reference) && !pods.contains(&v[1].reference),
        "{pods}"
    );
    assert!(pods.contains(&v[2].reference), "{pods}");

    // A second plan: nothing.
    let p = plan(&inv).unwrap();
    assert_eq!((p.counts.images, p.counts.image_removals), (0, 0));

    // 4: tag 3 rebuilt with new content (a new source, first in the list). The pod template's
    // digest annotation changes, so the pods roll onto the new content; the old content,
    // named only by the CRI's names for it (if the CRI made any), is removed with them.
    let mut rebuilt = Layout::new(dir.path().join("rebuilt"));
    let v3b = rebuilt.image_cmd(
        &v[2].reference,
        &[
            bin.clone(),
            tar("imgtest", &[("v.bin", &noise(nonce + 20, 32 * 1024))]),
        ],
        &cmd,
    );
    assert_ne!(v3b.digest, v[2].digest);
    let sources = vec![
        rebuilt.dir.clone(),
        layout.dir.clone(),
        testbed_images_list(),
    ];
    let inv = inventory(&tb, dir.path(), &sources);
    // Every name (the CRI's `sha256:<id>` ones too) at a digest, on a host.
    let names_at = |h: &testbed::TestbedHost, digest: &str| -> Vec<String> {
        tb.run_as_root(h, "ctr -n k8s.io images ls")
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && f[2] == digest).then(|| f[0].to_string())
            })
            .collect()
    };
    let p = plan(&inv).unwrap();
    for (h, hp) in tb.hosts.iter().zip(&p.hosts) {
        assert_eq!(hp.images.len(), 1, "{}", hp.host);
        assert_eq!(hp.images[0].replaces.as_deref(), Some(v[2].digest.as_str()));
        let aliases: Vec<String> = names_at(h, &v[2].digest)
            .into_iter()
            .filter(|n| *n != v[2].reference)
            .collect();
        let planned: Vec<&str> = hp
            .image_removals
            .iter()
            .map(|r| r.reference.as_str())
            .collect();
        eprintln!(
            "{}: the CRI's names of the old content: {aliases:?}; planned removals: {planned:?}",
            hp.host
        );
        if aliases.is_empty() {
            assert!(planned.is_empty(), "{}: {planned:?}", hp.host);
        } else {
            assert_eq!(planned.len(), 1, "{}", hp.host);
            assert!(aliases.iter().any(|a| a == planned[0]), "{}", hp.host);
            assert_eq!(
                hp.image_removals[0].retagged.as_deref(),
                Some(v[2].reference.as_str())
            );
        }
    }
    let outcome = apply(&inv);
    assert!(
        outcome.ok(),
        "apply of the rebuilt tag 3:\n{}",
        outcome.summary()
    );
    for (host, imgs) in host_images(&tb) {
        assert_eq!(imgs.get(&v[2].reference), Some(&v3b.digest), "{host}");
        assert_eq!(
            imgs.get(&v[1].reference),
            Some(&v[1].digest),
            "{host}: 2 kept"
        );
    }
    for h in &tb.hosts {
        assert_eq!(
            names_at(h, &v[2].digest),
            Vec::<String>::new(),
            "{}: a name of the old content left",
            h.name
        );
    }
    let annotations: Vec<String> = all_pods(&cluster)
        .into_iter()
        .filter(|p| {
            p.spec
                .iter()
                .flat_map(|s| &s.containers)
                .any(|c| c.image.as_deref().is_some_and(|i| i.contains(PREFIX)))
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            p.metadata
                .annotations
                .unwrap_or_default()
                .get(aion_reconcile::render::IMAGE_DIGEST_ANNOTATION)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(annotations.len(), tb.hosts.len(), "{annotations:?}");
    assert!(
        annotations.iter().all(|a| *a == v3b.digest),
        "the pods run the rebuilt content: {annotations:?}"
    );
    let p = plan(&inv).unwrap();
    assert_eq!((p.counts.images, p.counts.image_removals), (0, 0));
}

/// Device to device (`imagesFrom: <master>`): the master receives from this machine its own
/// image D and the blobs of E that only the workers run (kept apart, not imported there); the
/// workers fetch D and E from the master over the testbed's network, checked and imported as
/// from this machine. The plan says so (`from`, the relay line, bytes over this machine's link
/// once); apply's report agrees; afterwards the master holds no relay key and no kept blob, and
/// a second plan has nothing to send.
#[test]
fn workers_fetch_their_images_from_the_master() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::exclusive();
    let Some(cluster) = k8s::require() else {
        return;
    };
    let list = testbed_images_list();
    let dir = tempfile::tempdir().unwrap();
    let nonce = oci::nonce();
    let mut layout = Layout::new(dir.path().join("layout"));
    let base = tar("imgtest", &[("base.bin", &noise(nonce, 512 * 1024))]);
    let d = layout.image(
        &format!("aion.local/{PREFIX}d:1"),
        &[
            base.clone(),
            tar("imgtest", &[("d.bin", &noise(nonce + 1, 64 * 1024))]),
        ],
    );
    let e = layout.image(
        &format!("aion.local/{PREFIX}e:1"),
        &[
            base,
            tar("imgtest", &[("e.bin", &noise(nonce + 2, 200 * 1024))]),
        ],
    );
    let sources = vec![layout.dir.clone(), list];
    let master = tb.hosts[0].name.clone();
    let workers: Vec<String> = tb.hosts[1..].iter().map(|h| h.name.clone()).collect();
    let down = || down_args(dir.path(), &cluster);
    let m = master.clone();
    write_services_each(&tb, dir.path(), move |h| {
        if h.name == m {
            vec!["d"]
        } else {
            vec!["d", "e"]
        }
    });
    inventory(&tb, dir.path(), &[]);
    let _cleanup = Cleanup {
        tb: &tb,
        down: Some(down()),
    };
    tb.reset_all();
    assert_eq!(aion_reconcile::commands::down::run(&down()).unwrap(), 0);
    let outcome = apply(&inventory(&tb, dir.path(), &[]));
    assert!(outcome.ok(), "provisioning apply:\n{}", outcome.summary());

    let inv = inventory_with(
        &tb,
        dir.path(),
        &sources,
        &format!("imagesFrom: {master}\n"),
    );
    // E's own blobs: its manifest, config and layer (the base comes with D).
    let e_own: u64 = e.bytes() - e.blobs[2].1;
    let p = plan(&inv).unwrap();
    let mp = p.host(&master).unwrap();
    assert_eq!(mp.images_from, None);
    assert_eq!(mp.images.len(), 1);
    assert_eq!(
        (
            mp.images[0].reference.as_str(),
            mp.images[0].from.as_deref()
        ),
        (d.reference.as_str(), None)
    );
    let relay = mp
        .relay
        .as_ref()
        .expect("the master relays for the workers");
    assert_eq!(relay.for_hosts, workers);
    assert_eq!(
        (relay.blobs, relay.bytes),
        (3, e_own),
        "kept for the workers: E's own blobs"
    );
    for w in &workers {
        let hp = p.host(w).unwrap();
        assert_eq!(
            hp.images_from.as_ref().map(|r| r.host.as_str()),
            Some(master.as_str())
        );
        let got: Vec<(&str, u64, Option<&str>)> = hp
            .images
            .iter()
            .map(|i| (i.reference.as_str(), i.bytes, i.from.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (d.reference.as_str(), d.bytes(), Some(master.as_str())),
                (e.reference.as_str(), e_own, Some(master.as_str()))
            ],
            "{w}"
        );
    }
    assert_eq!(
        p.counts.image_bytes,
        d.bytes() + e_own,
        "each blob once over this machine's link"
    );
    assert_eq!(
        p.counts.image_bytes_between_hosts,
        workers.len() as u64 * (d.bytes() + e_own)
    );
    let text = aion_reconcile::plan_text::render_text(
        &p,
        aion_reconcile::plan_text::Style { color: false },
    );
    assert!(
        text.contains(&format!("  + relay images for {}", workers.join(", "))),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "({} from {master}: 4 of 4 blobs)",
            aion_reconcile::images::human_bytes(d.bytes())
        )),
        "{text}"
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["hosts"][1]["imagesFrom"]["host"], master.as_str());
    assert_eq!(json["hosts"][0]["relay"]["bytes"], e_own);

    let outcome = apply(&inv);
    assert!(
        outcome.ok(),
        "apply, workers from the master:\n{}",
        outcome.summary()
    );
    let received: BTreeMap<&str, &aion_reconcile::images::Received> = outcome
        .report
        .images
        .iter()
        .map(|(h, r)| (h.as_str(), r))
        .collect();
    let mr = received[master.as_str()];
    assert_eq!((mr.from.as_deref(), mr.bytes()), (None, d.bytes() + e_own));
    assert_eq!(mr.imported, vec![(d.reference.clone(), d.digest.clone())]);
    for w in &workers {
        let r = received[w.as_str()];
        assert_eq!(
            (r.from.as_deref(), r.bytes()),
            (Some(master.as_str()), d.bytes() + e_own),
            "{w}"
        );
        assert_eq!(r.imported.len(), 2, "{w}");
    }
    let imgs = host_images(&tb);
    assert_eq!(imgs[&master].get(&d.reference), Some(&d.digest));
    assert_eq!(
        imgs[&master].get(&e.reference),
        None,
        "E is only kept on the master, not imported"
    );
    for w in &workers {
        assert_eq!(imgs[w].get(&d.reference), Some(&d.digest), "{w}");
        assert_eq!(imgs[w].get(&e.reference), Some(&e.digest), "{w}");
    }
    let left = tb.run_as_root(
        &tb.hosts[0],
        &format!(
            "ls -A {} 2>/dev/null | wc -l; grep -c {} ~{}/.ssh/authorized_keys || true",
            aion_reconcile::images::RELAY_DIR,
            aion_reconcile::images::KEY_COMMENT,
            tb.hosts[0].user
        ),
    );
    assert_eq!(
        left.split_whitespace().collect::<Vec<_>>(),
        ["0", "0"],
        "the master keeps no relay blob and no relay key"
    );
    let p = plan(&inv).unwrap();
    assert_eq!(p.counts.images, 0, "second plan: nothing to send");
    assert!(p.hosts.iter().all(|h| h.relay.is_none()));
}

/// A registry as the image source of a real installation: the core (`aion-kanban`, from the
/// testbed's own archive) and a running microservice are pushed to Debian's docker-registry on
/// this machine, the inventory's `registryPrefix` names it and `imageSources` lists it before
/// the testbed's `images.tsv` (the node images, RabbitMQ, Redis). apply reads the manifests,
/// downloads each layer once into the inventory's `.aion/registry-blobs`, sends every host what
/// it lacks; the pods run on every host; the second plan sends nothing.
#[test]
fn a_registry_source_serves_the_core_and_a_running_microservice() {
    let _hosts = component::exclusive();
    let Some(tb) = testbed::require() else { return };
    let Some(cluster) = k8s::require() else {
        return;
    };
    let Some(registry) = aion_integration_tests::registry::start() else {
        return;
    };
    let list = testbed_images_list();
    let dir = tempfile::tempdir().unwrap();
    let nonce = oci::nonce();
    // The registry's repositories are under a prefix with the test's name, so the cleanup
    // finds every image it put on the hosts.
    let prefix = format!("{}/{PREFIX}reg", registry.domain);

    // The microservice: a busybox loop, as in the version test.
    let (bin, cmd) = busybox_loop();
    let mut layout = Layout::new(dir.path().join("layout"));
    let v = layout.image_cmd(
        "v:1",
        &[bin, tar("imgtest", &[("v.bin", &noise(nonce, 32 * 1024))])],
        &cmd,
    );
    let as_repo = |repo: &str| {
        let repo = repo.to_string();
        move |name: &str| {
            let tag = name.rsplit_once(':').unwrap().1.to_string();
            (format!("{PREFIX}reg/{repo}"), tag)
        }
    };
    registry.push_layout(&layout.dir, &as_repo(&format!("{PREFIX}v")));
    // The core's image: the testbed's archive (an OCI archive) unpacked and pushed.
    let tsv = std::fs::read_to_string(&list).unwrap();
    let (kanban, archive) = tsv
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            f[0].starts_with("aion.local/aion-kanban:")
                .then(|| (f[0].to_string(), list.parent().unwrap().join(f[1])))
        })
        .expect("aion-kanban in the testbed's images.tsv");
    let unpacked = dir.path().join("kanban");
    std::fs::create_dir_all(&unpacked).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(st.success(), "unpack {}", archive.display());
    let pushed = registry.push_layout(&unpacked, &as_repo("aion-kanban"));
    let kanban_ref = format!("{prefix}/{}", kanban.trim_start_matches("aion.local/"));
    assert_eq!(pushed, std::slice::from_ref(&kanban_ref));
    let v_ref = format!("{prefix}/{PREFIX}v:1");

    write_running_service(&tb, dir.path(), 1);
    let inv = inventory(&tb, dir.path(), &[PathBuf::from(&registry.url), list]);
    let text = std::fs::read_to_string(&inv).unwrap();
    assert!(text.contains("  registryPrefix: aion.local\n"), "{text}");
    std::fs::write(
        &inv,
        text.replace(
            "  registryPrefix: aion.local\n",
            &format!("  registryPrefix: {prefix}\n"),
        ),
    )
    .unwrap();
    let down = || down_args(dir.path(), &cluster);
    let _cleanup = Cleanup {
        tb: &tb,
        down: Some(down()),
    };
    tb.reset_all();
    assert_eq!(aion_reconcile::commands::down::run(&down()).unwrap(), 0);

    let p = plan(&inv).unwrap();
    for hp in &p.hosts {
        let refs: Vec<&str> = hp.images.iter().map(|i| i.reference.as_str()).collect();
        assert!(
            refs.contains(&kanban_ref.as_str()) && refs.contains(&v_ref.as_str()),
            "{}: {refs:?}",
            hp.host
        );
    }
    let cache = dir.path().join(".aion/registry-blobs/sha256");
    let cached = || std::fs::read_dir(&cache).map_or(0, |d| d.count());
    let at_plan = cached();
    let outcome = apply(&inv);
    assert!(outcome.ok(), "{}", outcome.summary());
    // Each layer came over once, whatever the number of hosts: the cache holds one file per
    // blob (manifests and configs at plan, layers at apply).
    assert!(cached() > at_plan, "layers fetched at apply");
    for h in &tb.hosts {
        let list = tb.run_as_root(h, "ctr -n k8s.io images ls");
        assert!(
            list.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 3 && f[0] == v_ref && f[2] == v.digest
            }),
            "{}: {v_ref} at {}:\n{list}",
            h.name,
            v.digest
        );
        assert!(list.contains(&kanban_ref), "{}:\n{list}", h.name);
    }
    // The microservice's pods run on every host.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let running: Vec<String> = all_pods(&cluster)
            .into_iter()
            .filter(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.spec.iter().any(|s| {
                        s.containers
                            .iter()
                            .any(|c| c.image.as_deref() == Some(&v_ref))
                    })
            })
            .filter_map(|p| p.spec.and_then(|s| s.node_name))
            .collect();
        if tb.hosts.iter().all(|h| running.contains(&h.name)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pods of {v_ref} running on {running:?}"
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let p = plan(&inv).unwrap();
    assert_eq!(p.counts.images, 0, "the second plan sends nothing");
}
