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

    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
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
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let other = if oci::this_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
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
