//! The image path against a real containerd on this machine (Debian's, the testbed's version),
//! without the testbed: a private containerd (own root, state and socket in a scratch
//! directory, no CRI plugin) behind a `LocalHost`, whose `ctr` is the real one pointed at that
//! socket. The facts script reads what it holds; the receiving script imports image A whole,
//! then image B — which shares A's base layer — from an archive WITHOUT that layer (containerd
//! takes it from its content store; the image is complete and unpacked); a blob that does not
//! match its digest is refused and nothing is imported.
//!
//! Needs root and `containerd` + `ctr` (Debian's package); without them it prints `SKIPPED`, or
//! fails under `AION_REQUIRE_TESTBED=1` (CI).

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use aion_integration_tests::component;
use aion_integration_tests::oci::{self, Layout, noise, tar};
use aion_reconcile::facts::{self, FactRequest};
use aion_reconcile::host::Host as _;
use aion_reconcile::host::local::LocalHost;
use aion_reconcile::images;

/// The private containerd, stopped (by its pid) when dropped.
struct Containerd(Child);

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path) -> Containerd {
    let sock = dir.join("c.sock");
    let config = format!(
        "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        sock = sock.display(),
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start containerd");
    let c = Containerd(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "containerd did not start: {}",
            std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c
}

fn available() -> Result<(), String> {
    let ok = |c: &str| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ok("containerd") || !ok("ctr") {
        return Err("containerd and ctr are not installed".into());
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("containerd needs root".into());
    }
    Ok(())
}

/// A `LocalHost` in `dir` whose `ctr` is the real one at a private containerd started there
/// (stopped when the returned guard drops).
fn private_host(dir: &Path) -> (Containerd, LocalHost) {
    let ctd = dir.join("ctd");
    std::fs::create_dir_all(&ctd).unwrap();
    let containerd = start(&ctd);
    // `ctr` on the host's PATH is the real one, at this containerd's socket.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        bin.join("ctr"),
        format!(
            "#!/bin/sh\nexec /usr/bin/ctr --address {} \"$@\"\n",
            ctd.join("c.sock").display()
        ),
    )
    .unwrap();
    let mut perm = std::fs::metadata(bin.join("ctr")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(bin.join("ctr"), perm).unwrap();
    let root = dir.join("host");
    std::fs::create_dir_all(&root).unwrap();
    let host = LocalHost {
        name: "local".into(),
        root,
        bin: Some(bin),
    };
    (containerd, host)
}

/// `plan`'s blobs sent to `host` as apply sends them: the receiving script's result.
async fn send(host: &LocalHost, plan: &[images::ImageChange]) -> aion_reconcile::host::Output {
    host.run_with_input(
        &images::receive_script("root", plan),
        &images::send_input(plan),
    )
    .await
    .unwrap()
}

/// The facts script's answer on `host`, containerd's included.
async fn all_facts(host: &LocalHost) -> facts::HostFacts {
    let req = FactRequest {
        user: "root".into(),
        containerd: true,
        ..FactRequest::default()
    };
    let out = host.run(&req.script()).await.unwrap();
    facts::parse(
        "local",
        &out.stdout_str(),
        &String::from_utf8_lossy(&out.stderr),
    )
    .unwrap()
}

fn required() -> bool {
    if let Err(why) = available() {
        // Debian's containerd is installed for the testbed's nodes: under CI it is required.
        let env = aion_integration_tests::testbed::REQUIRE_ENV;
        if std::env::var(env).is_ok_and(|v| v == "1") {
            panic!("{env}=1 but {why}");
        }
        eprintln!("SKIPPED: {why}");
        return false;
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_containerd_imports_what_was_sent_and_only_what_was_sent() {
    if !required() {
        return;
    }
    let _hosts = component::exclusive_async().await;
    let t = tempfile::tempdir().unwrap();
    let (_containerd, host) = private_host(t.path());
    let root = host.root.clone();
    let facts = || async { all_facts(&host).await.containerd.expect("ctr answers") };

    let nonce = oci::nonce();
    let mut layout = Layout::new(t.path().join("layout"));
    let base = tar("imgtest", &[("base.bin", &noise(nonce, 256 * 1024))]);
    let a = layout.image(
        "aion.local/aion-imgtest-a:1",
        &[
            base.clone(),
            tar("imgtest", &[("a.bin", &noise(nonce + 1, 32 * 1024))]),
        ],
    );
    let b = layout.image(
        "aion.local/aion-imgtest-b:1",
        &[
            base.clone(),
            tar("imgtest", &[("b.bin", &noise(nonce + 2, 64 * 1024))]),
        ],
    );
    let c = layout.image(
        "aion.local/aion-imgtest-c:1",
        &[
            base,
            tar("imgtest", &[("c.bin", &noise(nonce + 3, 8 * 1024))]),
        ],
    );
    let catalog = images::read_sources(std::slice::from_ref(&layout.dir)).unwrap();
    let get = |r: &str| catalog.get(r).unwrap().clone();

    // Nothing there yet: A whole.
    let have = facts().await;
    assert!(
        have.images.is_empty() && have.content.is_empty(),
        "{have:?}"
    );
    let plan = images::plan_host(&[get(&a.reference)], Some(&have));
    assert_eq!((plan[0].blobs, plan[0].bytes), (4, a.bytes()));
    let out = send(&host, &plan).await;
    assert!(out.success(), "{}", out.combined());
    let got = images::parse_received(&out.stdout_str());
    assert_eq!(got.bytes(), a.bytes());
    assert_eq!(got.imported, vec![(a.reference.clone(), a.digest.clone())]);

    // The facts see A and its blobs; B needs only its own three.
    let have = facts().await;
    assert_eq!(have.images.get(&a.reference), Some(&a.digest), "{have:?}");
    for (d, _) in &a.blobs {
        assert!(have.content.contains(d), "{d} not in {:?}", have.content);
    }
    let plan = images::plan_host(&[get(&a.reference), get(&b.reference)], Some(&have));
    assert_eq!(plan.len(), 1);
    let own_b = b.bytes() - b.blobs[2].1;
    assert_eq!((plan[0].blobs, plan[0].bytes), (3, own_b));
    let out = send(&host, &plan).await;
    assert!(out.success(), "{}", out.combined());
    let got = images::parse_received(&out.stdout_str());
    eprintln!(
        "B: {} bytes sent in {} blobs; the image is {} bytes",
        got.bytes(),
        got.blobs.len(),
        b.bytes()
    );
    assert_eq!(got.bytes(), own_b);
    assert_eq!(got.imported, vec![(b.reference.clone(), b.digest.clone())]);
    // B is complete (its base from the content store) and unpacked.
    let check = host
        .run("ctr -n k8s.io images check\n")
        .await
        .unwrap()
        .stdout_str();
    let line = check
        .lines()
        .find(|l| l.starts_with(&b.reference))
        .unwrap_or_else(|| panic!("{check}"));
    // (config and both layers present: `complete (3/3)`; UNPACKED true)
    assert!(
        line.contains("complete (3/3)") && line.ends_with("true"),
        "{line}"
    );
    let have = facts().await;
    assert!(images::plan_host(&[get(&a.reference), get(&b.reference)], Some(&have)).is_empty());

    // C's own layer does not match its digest: refused, nothing imported, no staging left.
    let path = layout.blob_path(&c.layers[1]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[600] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let plan = images::plan_host(&[get(&c.reference)], Some(&have));
    let out = send(&host, &plan).await;
    assert_eq!(out.status, 4, "{}", out.combined());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&c.layers[1]) && err.contains("nothing imported"),
        "{err}"
    );
    let have = facts().await;
    assert!(!have.images.contains_key(&c.reference), "{have:?}");
    assert!(!have.content.contains(&c.layers[1]));
    // No staging directory left; the bad blob is not among the verified ones kept for a resume.
    let staging = root.join(images::STAGING_DIR.trim_start_matches('/'));
    let left: Vec<String> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["blobs"]);
    assert!(!have.staged.contains(&c.layers[1]), "{have:?}");
}

/// A multi-platform index (this machine's architecture and another): the host is sent the
/// index and its own variant only; containerd names the image by the index, has the image
/// complete and unpacked for its platform, and holds none of the other platform's content;
/// the next plan sends nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_multi_platform_index_is_imported_with_only_this_hosts_variant() {
    if !required() {
        return;
    }
    let _hosts = component::exclusive_async().await;
    let t = tempfile::tempdir().unwrap();
    let (_containerd, host) = private_host(t.path());
    let nonce = oci::nonce();
    let other = oci::other_arch();
    let mut layout = Layout::new(t.path().join("layout"));
    let shared = tar("imgtest", &[("data.bin", &noise(nonce, 64 * 1024))]);
    let mine = layout.unnamed(
        oci::this_arch(),
        &[
            shared.clone(),
            tar("imgtest", &[("own.bin", &noise(nonce + 1, 16 * 1024))]),
        ],
        &["/imgtest/none"],
    );
    let theirs = layout.unnamed(
        other,
        &[
            shared,
            tar("imgtest", &[("own.bin", &noise(nonce + 2, 16 * 1024))]),
        ],
        &["/imgtest/none"],
    );
    let multi = layout.index(
        "aion.local/aion-imgtest-multi:1",
        &[(&mine, oci::this_arch()), (&theirs, other)],
    );
    let catalog = images::read_sources(std::slice::from_ref(&layout.dir)).unwrap();
    let img = catalog.get(&multi.reference).unwrap().clone();

    let f = all_facts(&host).await;
    assert!(!f.machine.is_empty(), "uname -m in the facts");
    let chosen = images::for_machine(&[img], &f.machine).unwrap();
    let plan = images::plan_host(&chosen, f.containerd.as_ref());
    assert_eq!(
        (plan[0].blobs, plan[0].bytes),
        (1 + mine.blobs.len(), multi.bytes() + mine.bytes()),
        "the index and this platform's manifest, config and layers"
    );
    let out = send(&host, &plan).await;
    assert!(out.success(), "{}", out.combined());
    let got = images::parse_received(&out.stdout_str());
    assert_eq!(got.bytes(), multi.bytes() + mine.bytes());
    assert_eq!(
        got.imported,
        vec![(multi.reference.clone(), multi.digest.clone())],
        "named by the index's digest"
    );
    let check = host
        .run("ctr -n k8s.io images check\n")
        .await
        .unwrap()
        .stdout_str();
    let line = check
        .lines()
        .find(|l| l.starts_with(&multi.reference))
        .unwrap_or_else(|| panic!("{check}"));
    eprintln!("{line}");
    assert!(
        line.contains("complete (3/3)") && line.ends_with("true"),
        "complete and unpacked for this platform: {line}"
    );
    let have = all_facts(&host).await.containerd.unwrap();
    for d in [&theirs.digest, &theirs.blobs[1].0, &theirs.layers[1]] {
        assert!(!have.content.contains(d), "{other}'s {d} was not sent");
    }
    assert!(
        images::plan_host(&chosen, Some(&have)).is_empty(),
        "the next plan sends nothing"
    );
}

/// A registry as the source (Debian's docker-registry on loopback): what is needed is read
/// from it — a single-platform image and a two-platform index pushed there as `docker push`
/// would — manifests and configs at plan, layers only at apply and only those the host lacks,
/// each downloaded once (a second fetch downloads nothing), verified, then sent and imported
/// like a file source's; a tag the registry does not have is an error naming it.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_source_is_fetched_once_and_imported() {
    if !required() {
        return;
    }
    let Some(registry) = aion_integration_tests::registry::start() else {
        return;
    };
    let _hosts = component::exclusive_async().await;
    let t = tempfile::tempdir().unwrap();
    let (_containerd, host) = private_host(t.path());
    let nonce = oci::nonce();
    let other = oci::other_arch();
    let mut layout = Layout::new(t.path().join("layout"));
    let base = tar("imgtest", &[("base.bin", &noise(nonce, 128 * 1024))]);
    let single = layout.image(
        "aion.local/aion-imgtest-reg-a:1",
        &[
            base.clone(),
            tar("imgtest", &[("a.bin", &noise(nonce + 2, 16 * 1024))]),
        ],
    );
    let mine = layout.unnamed(
        oci::this_arch(),
        &[
            base.clone(),
            tar("imgtest", &[("m.bin", &noise(nonce + 4, 16 * 1024))]),
        ],
        &["/imgtest/none"],
    );
    let theirs = layout.unnamed(
        other,
        &[tar("imgtest", &[("m.bin", &noise(nonce + 6, 16 * 1024))])],
        &["/imgtest/none"],
    );
    let multi = layout.index(
        "aion.local/aion-imgtest-reg-m:1",
        &[(&mine, oci::this_arch()), (&theirs, other)],
    );
    let pushed = registry.push_layout(&layout.dir, &|name| {
        let (repo, tag) = name
            .trim_start_matches("aion.local/")
            .split_once(':')
            .unwrap();
        (format!("imgtest/{repo}"), tag.to_string())
    });
    assert_eq!(pushed.len(), 2, "{pushed:?}");
    let source = images::Registry::new(&registry.url);
    let cache = t.path().join("cache");
    let refs: std::collections::BTreeSet<String> = pushed.iter().cloned().collect();
    let found = images::read_images(std::slice::from_ref(&source), &refs, &cache).unwrap();
    let digests: Vec<(&str, &str)> = found
        .iter()
        .map(|i| (i.reference.as_str(), i.digest.as_str()))
        .collect();
    let (ref_a, ref_m) = (&pushed[0], &pushed[1]);
    assert_eq!(
        digests,
        [
            (ref_a.as_str(), single.digest.as_str()),
            (ref_m.as_str(), multi.digest.as_str())
        ],
        "the registry serves the same manifests, by the same digests"
    );
    // At plan only the manifests and the single image's config came over.
    let layer_cached = |d: &str| cache.join(d.replace(':', "/")).is_file();
    assert!(
        !single.layers.iter().any(|l| layer_cached(l)),
        "no layer before apply"
    );

    let f = all_facts(&host).await;
    let chosen = images::for_machine(&found, &f.machine).unwrap();
    let plan = images::plan_host(&chosen, f.containerd.as_ref());
    assert_eq!(plan.len(), 2);
    // The base layer is in both; fetched once. The other platform's layer never.
    let fetched = images::fetch_blobs(plan.iter().flat_map(|c| c.send.iter())).unwrap();
    let base_size = single.blobs[2].1;
    let want: u64 = single.blobs[2..].iter().map(|b| b.1).sum::<u64>()
        + mine.blobs[1].1 // config of the variant (an index's configs come at apply)
        + mine.blobs[3].1;
    assert_eq!(
        fetched, want,
        "each layer once (base {base_size} bytes shared)"
    );
    assert!(
        !layer_cached(&theirs.layers[0]),
        "the {other} layer was fetched"
    );
    assert_eq!(
        images::fetch_blobs(plan.iter().flat_map(|c| c.send.iter())).unwrap(),
        0,
        "a second fetch downloads nothing"
    );
    let out = send(&host, &plan).await;
    assert!(out.success(), "{}", out.combined());
    let got = images::parse_received(&out.stdout_str());
    assert_eq!(
        got.imported,
        vec![
            (ref_a.clone(), single.digest.clone()),
            (ref_m.clone(), multi.digest.clone())
        ]
    );
    let check = host
        .run("ctr -n k8s.io images check\n")
        .await
        .unwrap()
        .stdout_str();
    for r in [ref_a, ref_m] {
        let line = check
            .lines()
            .find(|l| l.starts_with(r.as_str()))
            .unwrap_or_else(|| panic!("{check}"));
        assert!(
            line.contains("complete (3/3)") && line.ends_with("true"),
            "{line}"
        );
    }
    // A tag the registry does not have is not found (plan then names the host, the object and
    // the reference, as for any source); a registry that does not answer is an error naming it.
    let missing = format!("{}/imgtest/aion-imgtest-reg-a:2", registry.domain);
    let found = images::read_images(&[source], &[missing].into(), &cache).unwrap();
    assert!(found.is_empty(), "{found:?}");
    let gone = images::Registry::new(&format!(
        "http://127.0.0.1:{}",
        aion_integration_tests::registry::free_port()
    ));
    let e = images::read_images(
        std::slice::from_ref(&gone),
        &[format!("{}/app:1", gone.domain)].into(),
        &cache,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!(
            "image source {}: GET {}/v2/app/manifests/1: ",
            gone.url, gone.url
        )),
        "{e}"
    );
}

/// A registry that serves a layer whose bytes do not match its digest (its storage changed
/// behind it): the download is refused naming the blob, nothing of it is kept in the cache,
/// and nothing can be sent; the next fetch, once the registry serves the right bytes, gets it.
#[test]
fn a_registry_blob_that_does_not_match_its_digest_is_refused() {
    let Some(registry) = aion_integration_tests::registry::start() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let nonce = oci::nonce();
    let mut layout = Layout::new(t.path().join("layout"));
    let img = layout.image(
        "aion.local/aion-imgtest-bad:1",
        &[tar("imgtest", &[("x.bin", &noise(nonce, 64 * 1024))])],
    );
    let pushed = registry.push_layout(&layout.dir, &|_| ("imgtest/bad".into(), "1".into()));
    let cache = t.path().join("cache");
    let source = images::Registry::new(&registry.url);
    let found = images::read_images(
        std::slice::from_ref(&source),
        &pushed.iter().cloned().collect(),
        &cache,
    )
    .unwrap();
    let layer = &img.layers[0];
    let stored = registry.stored_blob(layer);
    let good = std::fs::read(&stored).expect("the registry's copy of the layer");
    let mut bad = good.clone();
    bad[700] ^= 0xff;
    std::fs::write(&stored, &bad).unwrap();
    let e = images::fetch_blobs(found[0].blobs.iter())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("blob {layer} from ")) && e.contains("refused, nothing kept"),
        "{e}"
    );
    let blob = found[0].blobs.iter().find(|b| &b.digest == layer).unwrap();
    assert!(!blob.path.exists(), "a refused blob is not in the cache");
    let left: Vec<_> = std::fs::read_dir(blob.path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    std::fs::write(&stored, &good).unwrap();
    let got = images::fetch_blobs(found[0].blobs.iter()).unwrap();
    assert_eq!(got, img.blobs[2].1, "the layer, once it is right");
    assert!(blob.path.is_file());
}
