//! The images layer's unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::sources::{ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME};
use super::*;
use crate::facts::ContainerdFacts;
use crate::host::Input;
use crate::manifest::Manifests;
use sha2::Digest as _;

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Write `blob` into an OCI layout directory; its digest.
fn put(dir: &Path, blob: &[u8]) -> String {
    let d = digest(blob);
    let p = dir.join("blobs/sha256");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(d.trim_start_matches("sha256:")), blob).unwrap();
    d
}

/// An image in a layout directory: config + the given layers; returns the manifest digest.
fn image(dir: &Path, layers: &[&[u8]]) -> (String, serde_json::Value) {
    image_on(dir, "amd64", None, layers)
}

/// [`image`] for another platform (its config names it).
fn image_on(
    dir: &Path,
    arch: &str,
    variant: Option<&str>,
    layers: &[&[u8]],
) -> (String, serde_json::Value) {
    let mut c = serde_json::json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}});
    if let Some(v) = variant {
        c["variant"] = v.into();
    }
    let config = c.to_string();
    let config = config.as_bytes();
    let cd = put(dir, config);
    let ls: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| {
                serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": put(dir, l), "size": l.len()})
            })
            .collect();
    let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": ls,
        })
        .to_string();
    let md = put(dir, m.as_bytes());
    (
        md.clone(),
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": m.len()}),
    )
}

fn index(dir: &Path, entries: Vec<(serde_json::Value, &str, &str)>) {
    let ms: Vec<serde_json::Value> = entries
        .into_iter()
        .map(|(mut d, key, name)| {
            d["annotations"] = serde_json::json!({ key: name });
            d
        })
        .collect();
    std::fs::write(
        dir.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": ms}).to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn references_are_normalised_as_containerd_names_them() {
    assert_eq!(normalize("redis:7"), "docker.io/library/redis:7");
    assert_eq!(
        normalize("latonaio/sensor"),
        "docker.io/latonaio/sensor:latest"
    );
    assert_eq!(normalize("aion.local/sensor:1"), "aion.local/sensor:1");
    assert_eq!(normalize("localhost:5000/x"), "localhost:5000/x:latest");
    assert_eq!(normalize("localhost/x:2"), "localhost/x:2");
    assert_eq!(normalize("ghcr.io/a/b@sha256:ab"), "ghcr.io/a/b@sha256:ab");
}

/// A layout directory and the same layout as an archive made by the system's tar (GNU long
/// names: blob paths are > 100 characters) give the same images; a blob in the archive is
/// found at the byte offset the reader recorded.
#[test]
fn layout_directory_and_archive_read_alike() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let (md, desc) = image(&dir, &[b"base layer", b"app layer"]);
    index(
        &dir,
        vec![(desc, ANNOTATION_CONTAINERD_NAME, "aion.local/app:1")],
    );
    let archive = t.path().join("app.tar");
    let st = std::process::Command::new("tar")
        .args(["-C"])
        .arg(&dir)
        .args(["-cf"])
        .arg(&archive)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .unwrap();
    assert!(st.success());
    let a = read_sources(std::slice::from_ref(&dir)).unwrap();
    let b = read_sources(std::slice::from_ref(&archive)).unwrap();
    let ia = a.get("aion.local/app:1").unwrap();
    let ib = b.get("aion.local/app:1").unwrap();
    assert_eq!(ia.digest, md);
    assert_eq!(ib.digest, md);
    assert_eq!(ia.blobs.len(), 4);
    let da: Vec<(&str, u64)> = ia
        .blobs
        .iter()
        .map(|b| (b.digest.as_str(), b.size))
        .collect();
    let db: Vec<(&str, u64)> = ib
        .blobs
        .iter()
        .map(|b| (b.digest.as_str(), b.size))
        .collect();
    assert_eq!(da, db);
    // the archive's layer is read in place at its offset
    let layer = &ib.blobs[3];
    assert_eq!(layer.path, archive);
    let bytes = std::fs::read(&archive).unwrap();
    let at = &bytes[layer.offset as usize..(layer.offset + layer.size) as usize];
    assert_eq!(at, b"app layer");
    // not a tar
    let junk = t.path().join("junk.tar");
    std::fs::write(&junk, vec![7u8; 1024]).unwrap();
    let e = read_sources(std::slice::from_ref(&junk)).unwrap_err();
    assert!(e.to_string().contains("not a tar archive"), "{e}");
    // a list names archives; a missing one is an error at its line
    let list = t.path().join("images.tsv");
    std::fs::write(
        &list,
        "aion.local/app:1\tapp.tar\t-\t0\nother:1\tnope.tar\n",
    )
    .unwrap();
    let e = read_sources(std::slice::from_ref(&list)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2:1:", list.display())),
        "{e}"
    );
    std::fs::write(&list, "aion.local/app:1\tapp.tar\t-\t0\n").unwrap();
    assert_eq!(
        read_sources(&[list])
            .unwrap()
            .get("aion.local/app:1")
            .unwrap()
            .digest,
        md
    );
}

/// `docker save` of Docker 25 and later writes an OCI layout into the tar (`oci-layout`,
/// `index.json`, `blobs/sha256/…`) beside its own `manifest.json` and `repositories`; the index
/// names the image by `io.containerd.image.name` (the full reference) and by
/// `org.opencontainers.image.ref.name` with only the tag. Such an archive is an image source as it
/// is: found by its full reference, never as an image named after the bare tag. (Shape as
/// Docker documents it; no Docker engine runs here to write one.)
#[test]
fn a_docker_save_archive_is_read_as_its_oci_layout() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("saved");
    let (md, mut desc) = image(&dir, &[b"debian layer", b"redis layer"]);
    desc["annotations"] = serde_json::json!({
        ANNOTATION_CONTAINERD_NAME: "docker.io/library/redis:7",
        ANNOTATION_REF_NAME: "7",
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [desc]}).to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        r#"[{"Config":"blobs/sha256/00","RepoTags":["redis:7"],"Layers":[]}]"#,
    )
    .unwrap();
    std::fs::write(dir.join("repositories"), r#"{"redis":{"7":"00"}}"#).unwrap();
    let archive = t.path().join("redis.tar");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&archive)
        .args([
            "blobs",
            "index.json",
            "manifest.json",
            "oci-layout",
            "repositories",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let cat = read_sources(std::slice::from_ref(&archive)).unwrap();
    let img = cat
        .get("redis:7")
        .expect("found by its reference, as a pod names it");
    assert_eq!(img.digest, md);
    assert_eq!(img.reference, "docker.io/library/redis:7");
    assert_eq!(img.blobs.len(), 4, "manifest, config, two layers");
    assert_eq!(cat.images.len(), 1, "{:?}", cat.images.keys());
}

fn manifests(objs: Vec<(&str, &str, serde_json::Value)>) -> Manifests {
    use crate::manifest::{NodeManifests, Object, ObjectKey};
    Manifests {
        inventory: "t".into(),
        nodes: objs
            .into_iter()
            .map(|(node, name, pod)| NodeManifests {
                node: node.into(),
                namespace: node.into(),
                objects: vec![Object {
                    key: ObjectKey {
                        api_version: "apps/v1".into(),
                        kind: "Deployment".into(),
                        namespace: Some(node.into()),
                        name: name.into(),
                    },
                    node: node.into(),
                    owner: "o".into(),
                    value: serde_json::json!({"spec": {"template": {"spec": pod}}}),
                    text: String::new(),
                }],
            })
            .collect(),
    }
}

/// Needs follow the pod's node (nodeSelector first); a missing image is an error naming the
/// host, the object and the reference; the plan sends only what the host lacks, a blob
/// shared by two images once, and `~` an image the host has at another digest.
#[test]
fn needs_resolve_and_plan() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let (a, da) = image(&dir, &[b"base", b"a's own"]);
    let (b, db) = image(&dir, &[b"base", b"b's own bigger"]);
    index(
        &dir,
        vec![
            (da, ANNOTATION_CONTAINERD_NAME, "aion.local/a:1"),
            (db, ANNOTATION_REF_NAME, "aion.local/b:1"),
        ],
    );
    let cat = read_sources(std::slice::from_ref(&dir)).unwrap();
    let m = manifests(vec![
        (
            "w1",
            "app",
            serde_json::json!({"initContainers": [{"name": "init", "image": "aion.local/b:1"}],
                                    "containers": [{"name": "a", "image": "aion.local/a:1"}]}),
        ),
        (
            "m",
            "pinned",
            serde_json::json!({"nodeSelector": {"kubernetes.io/hostname": "w2"},
                                    "containers": [{"name": "x", "image": "aion.local/a:1"}]}),
        ),
    ]);
    let needs = needed(&m);
    assert_eq!(needs.keys().collect::<Vec<_>>(), ["w1", "w2"]);
    assert_eq!(needs["w1"][0].container, "init");
    let wanted = resolve(&needs, &cat).unwrap();
    assert_eq!(wanted["w1"].len(), 2);

    // nothing on the host: every blob, the shared base once
    let p = plan_host(&wanted["w1"], None);
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].reference.as_str(), p[0].blobs), ("aion.local/b:1", 4));
    // the base layer and the (identical) config go with b only
    assert_eq!(p[1].blobs, 2);
    let config = wanted["w1"][1].blobs[1].size;
    assert_eq!(p[1].bytes, p[1].bytes_total - 4 - config);
    assert!(p[0].describe().starts_with(&format!(
        "image aion.local/b:1 — {b} ({} B to send: 4 of 4 blobs)",
        p[0].bytes
    )));
    // the host has a at this digest, b at another, and the base blob
    let base = digest(b"base");
    let have = ContainerdFacts {
        images: [
            ("aion.local/a:1".to_string(), a.clone()),
            ("aion.local/b:1".to_string(), "sha256:old".to_string()),
        ]
        .into(),
        content: [base.clone()].into(),
        imported: BTreeMap::new(),
        staged: BTreeSet::new(),
    };
    let p = plan_host(&wanted["w1"], Some(&have));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].replaces.as_deref(), Some("sha256:old"));
    assert_eq!(p[0].blobs, 3);
    assert!(p[0].send.iter().all(|s| s.digest != base));
    assert!(p[0].describe().ends_with(" replaces sha256:old"));
    // everything there: nothing to do
    let have = ContainerdFacts {
        images: [
            ("aion.local/a:1".to_string(), a),
            ("aion.local/b:1".to_string(), b),
        ]
        .into(),
        content: BTreeSet::new(),
        imported: BTreeMap::new(),
        staged: BTreeSet::new(),
    };
    assert!(plan_host(&wanted["w1"], Some(&have)).is_empty());

    // an image no source has
    let m = manifests(vec![(
        "w1",
        "ghost",
        serde_json::json!({"containers": [{"name": "g", "image": "aion.local/ghost:9"}]}),
    )]);
    let e = resolve(&needed(&m), &cat).unwrap_err();
    assert_eq!(e.len(), 1);
    let text = e[0].to_string();
    assert!(
            text.starts_with("host w1: Deployment/w1/ghost, container g: image aion.local/ghost:9 is in no image source"),
            "{text}"
        );
}

/// The receiving script on a local host (a fake `ctr` records the import): the blobs are
/// checked and imported, the staging directory is gone afterwards; a blob whose content does
/// not match its digest is refused and nothing is imported.
#[tokio::test]
async fn receive_script_verifies_before_import() {
    use crate::host::Host as _;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let (_, da) = image(&dir, &[b"base", b"a's own"]);
    index(
        &dir,
        vec![(da, ANNOTATION_CONTAINERD_NAME, "aion.local/a:1")],
    );
    let cat = read_sources(std::slice::from_ref(&dir)).unwrap();
    let img = cat.get("aion.local/a:1").unwrap().clone();
    let h = host_with_fake_ctr(t.path());
    let root = h.root.clone();
    let have = ContainerdFacts {
        images: BTreeMap::new(),
        content: [digest(b"base")].into(),
        imported: BTreeMap::new(),
        staged: BTreeSet::new(),
    };
    let changes = plan_host(std::slice::from_ref(&img), Some(&have));
    let script = receive_script("root", &changes);
    let out = h
        .run_with_input(&script, &send_input(&changes))
        .await
        .unwrap();
    assert!(out.success(), "{}", out.combined());
    let got = parse_received(&out.stdout_str());
    assert_eq!(got.blobs.len(), 3);
    assert_eq!(got.bytes(), changes[0].bytes);
    assert_eq!(
        got.imported,
        vec![("aion.local/a:1".to_string(), img.digest.clone())]
    );
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(root.join("imported.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("index.json") && listing.contains("oci-layout"));
    assert!(!listing.contains(digest(b"base").trim_start_matches("sha256:")));
    let staging = root.join(STAGING_DIR.trim_start_matches('/'));
    let cache = root.join(crate::facts::IMAGE_BLOB_CACHE.trim_start_matches('/'));
    // No staging directory left, and the cache emptied by the import.
    assert_eq!(names(&staging), ["blobs"]);
    assert!(names(&cache).is_empty(), "{:?}", names(&cache));

    // a blob whose bytes do not match its digest: refused, nothing imported
    std::fs::remove_file(root.join("imported.tar")).unwrap();
    let own = changes[0]
        .send
        .iter()
        .find(|b| b.size == 7)
        .unwrap()
        .clone();
    std::fs::write(&own.path, b"A's own").unwrap();
    let out = h
        .run_with_input(&script, &send_input(&changes))
        .await
        .unwrap();
    assert_eq!(out.status, 4, "{}", out.combined());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&own.digest) && err.contains("nothing imported"),
        "{err}"
    );
    assert!(!root.join("imported.tar").exists());
    assert_eq!(names(&staging), ["blobs"]);
    // Only verified blobs are kept (each named by its content's digest), not the bad one.
    let kept = names(&cache);
    assert!(!kept.contains(&own.digest.trim_start_matches("sha256:").to_string()));
    for k in &kept {
        let bytes = std::fs::read(cache.join(k)).unwrap();
        assert_eq!(digest(&bytes), format!("sha256:{k}"));
    }
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A fake `ctr` for a [`LocalHost`](crate::host::local::LocalHost) under `t`: `images
/// import -` keeps the archive, `images ls` lists what it imported, `content ls` nothing.
fn host_with_fake_ctr(t: &Path) -> crate::host::local::LocalHost {
    let root = t.join("root");
    let bin = t.join("bin");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
            bin.join("ctr"),
            "#!/bin/sh\ncase \"$*\" in\n\
             *'images import -'*) cat > \"$AION_ROOT/imported.tar\";;\n\
             *'images ls'*) echo 'REF TYPE DIGEST'; [ -f \"$AION_ROOT/imported.tar\" ] || exit 0; i=$(tar -xOf \"$AION_ROOT/imported.tar\" index.json);\n\
               n=$(echo \"$i\" | sed 's/.*\"io.containerd.image.name\":\"\\([^\"]*\\)\".*/\\1/'); d=$(echo \"$i\" | sed 's/.*\"digest\":\"\\([^\"]*\\)\".*/\\1/'); echo \"$n x $d\";;\n\
             esac\n",
        )
        .unwrap();
    let mut perm = std::fs::metadata(bin.join("ctr")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(bin.join("ctr"), perm).unwrap();
    crate::host::local::LocalHost {
        name: "l".into(),
        root,
        bin: Some(bin),
    }
}

/// A transfer cut in the middle of a blob: the blobs verified before it stay in the host's
/// cache and nothing is imported; the next facts report them, the next plan sends only the
/// rest, and the import that follows takes both (every digest checked) and empties the cache.
#[tokio::test]
async fn a_cut_transfer_resumes_from_the_verified_blobs() {
    use crate::host::Host as _;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let (_, d) = image(&dir, &[b"first layer", b"second layer", b"third layer!"]);
    index(
        &dir,
        vec![(d, ANNOTATION_CONTAINERD_NAME, "aion.local/r:1")],
    );
    let img = read_sources(std::slice::from_ref(&dir))
        .unwrap()
        .get("aion.local/r:1")
        .unwrap()
        .clone();
    let h = host_with_fake_ctr(t.path());
    let facts = || async {
        let req = crate::facts::FactRequest {
            user: "root".into(),
            containerd: true,
            ..crate::facts::FactRequest::default()
        };
        let out = h.run(&req.script()).await.unwrap();
        crate::facts::parse(
            "l",
            &out.stdout_str(),
            &String::from_utf8_lossy(&out.stderr),
        )
        .unwrap()
        .containerd
        .unwrap()
    };
    let first = plan_host(std::slice::from_ref(&img), Some(&facts().await));
    assert_eq!(first[0].blobs, 5, "manifest, config, three layers");
    // The stream ends half-way through the fourth blob (the connection is cut).
    let mut input = send_input(&first);
    let cut_at = 3;
    let Input::File { path, offset, len } = input[cut_at].clone() else {
        panic!("blobs are read from files")
    };
    input.truncate(cut_at);
    input.push(Input::File {
        path,
        offset,
        len: len / 2,
    });
    let out = h
        .run_with_input(&receive_script("root", &first), &input)
        .await
        .unwrap();
    assert_eq!(out.status, 3, "{}", out.combined());
    assert!(!h.root.join("imported.tar").exists(), "nothing imported");
    let verified: Vec<String> = first[0].send[..cut_at]
        .iter()
        .map(|b| b.digest.clone())
        .collect();
    let have = facts().await;
    assert_eq!(
        have.staged,
        verified.iter().cloned().collect::<BTreeSet<_>>(),
        "the verified blobs are reported"
    );

    // The next plan sends only what is still missing; the import takes both.
    let second = plan_host(std::slice::from_ref(&img), Some(&have));
    let rest: Vec<&str> = second[0].send.iter().map(|b| b.digest.as_str()).collect();
    let expected: Vec<&str> = first[0].send[cut_at..]
        .iter()
        .map(|b| b.digest.as_str())
        .collect();
    assert_eq!(rest, expected);
    assert_eq!(
        second[0].bytes,
        first[0].send[cut_at..].iter().map(|b| b.size).sum::<u64>()
    );
    let out = h
        .run_with_input(&receive_script("root", &second), &send_input(&second))
        .await
        .unwrap();
    assert!(out.success(), "{}", out.combined());
    let got = parse_received(&out.stdout_str());
    assert_eq!(got.bytes(), second[0].bytes);
    assert_eq!(
        got.imported,
        [("aion.local/r:1".to_string(), img.digest.clone())]
    );
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(h.root.join("imported.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for b in &img.blobs {
        assert!(
            listing.contains(&format!(
                "blobs/sha256/{}",
                b.digest.trim_start_matches("sha256:")
            )),
            "{} not in the imported archive:\n{listing}",
            b.digest
        );
    }
    assert!(
        facts().await.staged.is_empty(),
        "the cache is emptied by the import"
    );
}

fn source(reference: &str, digest: &str) -> SourceImage {
    SourceImage {
        reference: reference.into(),
        digest: digest.into(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        blobs: vec![],
        platform: None,
        variants: vec![],
        source: PathBuf::new(),
    }
}

fn facts(images: &[(&str, &str, Option<u64>)]) -> ContainerdFacts {
    ContainerdFacts {
        images: images
            .iter()
            .map(|(r, d, _)| (r.to_string(), d.to_string()))
            .collect(),
        content: BTreeSet::new(),
        imported: images
            .iter()
            .filter_map(|(r, _, at)| Some((r.to_string(), (*at)?)))
            .collect(),
        staged: BTreeSet::new(),
    }
}

#[test]
fn repositories_of_tags_and_aliases() {
    assert_eq!(repository("aion.local/app:2"), Some("aion.local/app"));
    assert_eq!(
        repository("localhost:5000/app:2"),
        Some("localhost:5000/app")
    );
    assert_eq!(repository("localhost:5000/app"), Some("localhost:5000/app"));
    assert_eq!(repository("sha256:abc"), None);
    assert_eq!(repository("aion.local/app@sha256:abc"), None);
}

/// Version up: the old tags of a repository the host runs, beyond the `keep` most recently
/// imported, are removed with their aliases; other repositories, the running tag, a tag at
/// the running digest and a host without facts are left alone.
#[test]
fn old_versions_beyond_the_kept_ones_are_removed() {
    let run = [source("aion.local/app:4", "sha256:d4")];
    let have = facts(&[
        ("aion.local/app:1", "sha256:d1", None),
        ("aion.local/app:2", "sha256:d2", Some(200)),
        ("aion.local/app:3", "sha256:d3", Some(300)),
        ("aion.local/app:4", "sha256:d4", Some(400)),
        ("aion.local/app:latest", "sha256:d4", None),
        ("aion.local/app@sha256:d2", "sha256:d2", None),
        ("sha256:cfg2", "sha256:d2", None),
        ("sha256:cfg3", "sha256:d3", None),
        ("aion.local/other:1", "sha256:o1", None),
    ]);
    let gone = |keep| {
        plan_removals(&run, Some(&have), keep)
            .into_iter()
            .map(|r| (r.reference, r.digest, r.aliases))
            .collect::<Vec<_>>()
    };
    // keep 1: app:3 (newest import) stays; app:2 goes with its aliases; app:1 (no label:
    // oldest) goes
    assert_eq!(
        gone(1),
        [
            (
                "aion.local/app:2".to_string(),
                "sha256:d2".to_string(),
                vec![
                    "aion.local/app@sha256:d2".to_string(),
                    "sha256:cfg2".to_string()
                ]
            ),
            ("aion.local/app:1".into(), "sha256:d1".into(), vec![]),
        ]
    );
    assert_eq!(gone(2).len(), 1);
    assert_eq!(gone(3), []);
    assert_eq!(gone(0).len(), 3);
    assert_eq!(plan_removals(&run, None, 1), []);
    // two old tags of one image: its aliases go with the last of them only
    let have = facts(&[
        ("aion.local/app:4", "sha256:d4", None),
        ("aion.local/app:a", "sha256:d1", None),
        ("aion.local/app:b", "sha256:d1", None),
        ("sha256:cfg1", "sha256:d1", None),
    ]);
    let r = plan_removals(&run, Some(&have), 0);
    assert_eq!(r.len(), 2);
    assert_eq!(r.iter().map(|r| r.aliases.len()).sum::<usize>(), 1, "{r:?}");
}

/// A tag rebuilt with new content: the old content, held only by the CRI's names for it, is
/// removed by them (not counted against `previousImages`); content named only by a
/// `sha256:<id>`, or of a repository the host does not run, or wanted, is left.
#[test]
fn a_retagged_images_old_content_is_removed_by_its_cri_names() {
    let run = [source("aion.local/app:1", "sha256:new")];
    let have = facts(&[
        ("aion.local/app:1", "sha256:new", Some(200)),
        ("aion.local/app@sha256:old", "sha256:old", None),
        ("sha256:cfgold", "sha256:old", None),
        ("aion.local/app@sha256:new", "sha256:new", None),
        ("sha256:lonely", "sha256:lone", None),
        ("aion.local/other@sha256:o", "sha256:o", None),
    ]);
    let gone: Vec<(String, String, Vec<String>)> = plan_removals(&run, Some(&have), 1)
        .into_iter()
        .map(|r| (r.reference, r.digest, r.aliases))
        .collect();
    assert_eq!(
        gone,
        [(
            "aion.local/app@sha256:old".to_string(),
            "sha256:old".to_string(),
            vec!["sha256:cfgold".to_string()]
        )]
    );
    // planned before the import: the tag still names the old content, the plan moves it
    let before = facts(&[
        ("aion.local/app:1", "sha256:old", Some(100)),
        ("aion.local/app@sha256:old", "sha256:old", None),
        ("sha256:cfgold", "sha256:old", None),
    ]);
    let planned = plan_removals(&run, Some(&before), 1);
    assert_eq!(
        planned
            .iter()
            .map(|r| (r.reference.as_str(), r.digest.as_str()))
            .collect::<Vec<_>>(),
        [("aion.local/app@sha256:old", "sha256:old")]
    );
    // only a `sha256:<id>` name: the moving tag says whose it is
    let before = facts(&[
        ("aion.local/app:1", "sha256:old", Some(100)),
        ("sha256:cfgold", "sha256:old", None),
    ]);
    let planned = plan_removals(&run, Some(&before), 1);
    assert_eq!(
        planned
            .iter()
            .map(|r| (r.reference.as_str(), r.digest.as_str(), r.aliases.len()))
            .collect::<Vec<_>>(),
        [("sha256:cfgold", "sha256:old", 0)]
    );
    assert_eq!(planned[0].retagged.as_deref(), Some("aion.local/app:1"));
    // no other name: nothing to plan (containerd collects it)
    let before = facts(&[("aion.local/app:1", "sha256:old", Some(100))]);
    assert_eq!(plan_removals(&run, Some(&before), 1), []);
    // still named by an old tag: a version like any other (kept as the previous one)
    let have = facts(&[
        ("aion.local/app:1", "sha256:new", Some(200)),
        ("aion.local/app:0", "sha256:old", Some(100)),
        ("aion.local/app@sha256:old", "sha256:old", None),
    ]);
    assert_eq!(plan_removals(&run, Some(&have), 1), []);
}

#[test]
fn removals_a_pod_uses_are_kept() {
    let r = |reference: &str, digest: &str, aliases: &[&str]| ImageRemoval {
        reference: reference.into(),
        digest: digest.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        retagged: None,
    };
    let all = [
        r("aion.local/a:1", "sha256:a", &[]),
        r("aion.local/b:1", "sha256:b", &[]),
        r("aion.local/c:1", "sha256:c", &["sha256:cfgc"]),
        r("aion.local/d:1", "sha256:d", &[]),
    ];
    let in_use: BTreeSet<String> = ["aion.local/a:1", "sha256:b", "sha256:cfgc"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (remove, busy) = not_in_use(&all, &in_use);
    assert_eq!(remove, [all[3].clone()]);
    assert_eq!(busy.len(), 3);
}

/// The removal script against a `ctr` stand-in: removes a reference only while it names
/// the planned digest, with its aliases, and reports what it removed.
#[tokio::test]
async fn remove_script_removes_only_at_the_planned_digest() {
    use crate::host::Host as _;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("ctr.log");
    std::fs::write(
            bin.join("ctr"),
            format!(
                "#!/bin/sh\nif [ \"$3 $4\" = 'images ls' ]; then printf 'REF TYPE DIGEST SIZE PLATFORMS LABELS\\naion.local/a:1 x sha256:a 1 KiB linux/amd64 -\\naion.local/b:1 x sha256:bnew 1 KiB linux/amd64 -\\n'; exit 0; fi\nprintf '%s\\n' \"$*\" >> {}\n",
                log.display()
            ),
        )
        .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(bin.join("ctr"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let removals = [
        ImageRemoval {
            reference: "aion.local/a:1".into(),
            digest: "sha256:a".into(),
            aliases: vec!["sha256:cfga".into()],
            retagged: None,
        },
        ImageRemoval {
            reference: "aion.local/b:1".into(),
            digest: "sha256:bold".into(),
            aliases: vec![],
            retagged: None,
        },
    ];
    let h = crate::host::local::LocalHost {
        name: "l".into(),
        root: dir.path().to_path_buf(),
        bin: Some(bin),
    };
    let out = h.run(&remove_script("root", &removals)).await.unwrap();
    assert!(out.success(), "{}", out.combined());
    assert_eq!(parse_removed(&out.stdout_str()), ["aion.local/a:1"]);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "-n k8s.io images rm --sync aion.local/a:1 sha256:cfga\n"
    );
}

/// A [`LocalHost`](crate::host::local::LocalHost) under `t/<name>` with a fake `ctr` that
/// imports several images (lists each by name and digest from the archive's index) and serves
/// `content get` from what it imported, and a fake `ssh` that acts as the relay's sshd would:
/// refuses a relay not in the known_hosts file it is given ("Host key verification failed")
/// and a key that `relay_root`'s root `authorized_keys` does not hold ("Permission denied"),
/// else runs the relay's serve script with the requested digests.
fn relay_test_host(t: &Path, name: &str, relay_root: &Path) -> crate::host::local::LocalHost {
    let root = t.join(name).join("root");
    let bin = t.join(name).join("bin");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let ctr = "#!/bin/sh\nfor a; do last=$a; done\ncase \"$*\" in\n\
         *'images import -'*) cat > \"$AION_ROOT/imported.tar\";;\n\
         *'images ls'*) echo 'REF TYPE DIGEST'; [ -f \"$AION_ROOT/imported.tar\" ] || exit 0;\n  \
           tar -xOf \"$AION_ROOT/imported.tar\" index.json | grep -o '\"digest\":\"[^\"]*\",\"size\":[0-9]*,\"annotations\":{\"io.containerd.image.name\":\"[^\"]*\"' | sed 's/\"digest\":\"\\([^\"]*\\)\".*name\":\"\\([^\"]*\\)\"/\\2 x \\1/';;\n\
         *'content get'*) tar -xOf \"$AION_ROOT/imported.tar\" \"blobs/sha256/${last#sha256:}\";;\n\
         esac\n";
    let ssh = format!(
        "#!/bin/sh\nkey=; kh=\n\
         while [ $# -gt 0 ]; do case $1 in -i) key=$2; shift 2;; -o) case $2 in UserKnownHostsFile=*) kh=${{2#UserKnownHostsFile=}};; esac; shift 2;; -p|-F) shift 2;; -*) shift;; *) break;; esac; done\n\
         echo \"$1\" > \"$AION_ROOT/ssh-dest\"; shift\n\
         grep -q '^relay.example ' \"$kh\" || {{ echo 'Host key verification failed.' >&2; exit 255; }}\n\
         pub=$(ssh-keygen -y -f \"$key\" | cut -d' ' -f2)\n\
         grep -qF \"$pub\" '{relay}/root/.ssh/authorized_keys' || {{ echo 'Permission denied (publickey).' >&2; exit 255; }}\n\
         AION_ROOT='{relay}' exec sh '{relay}{serve}' \"$@\"\n",
        relay = relay_root.display(),
        serve = SERVE_SCRIPT,
    );
    for (n, text) in [("ctr", ctr.to_string()), ("ssh", ssh)] {
        std::fs::write(bin.join(n), text).unwrap();
        let mut perm = std::fs::metadata(bin.join(n)).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(bin.join(n), perm).unwrap();
    }
    crate::host::local::LocalHost {
        name: name.into(),
        root,
        bin: Some(bin),
    }
}

/// Device to device, the scripts on two local hosts: the relay receives its own image A (and
/// imports it) and B's own blobs only for its fetcher (kept, not imported); it authorises the
/// apply's key — restricted, from the fetcher's address, with an expiry, forced to the serve
/// script — keeping the operator's line and dropping a stale relay key; the fetcher gets the
/// private key on stdin, checks the relay's host key, fetches A and B (every blob checked) and
/// imports both. The serve script refuses anything but digests. After the cleanup the key is
/// gone (a fetch is refused) and so are the kept blobs.
#[tokio::test]
async fn a_host_fetches_from_its_relay_with_a_key_made_for_one_apply() {
    use crate::host::Host as _;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let (_, da) = image(&dir, &[b"base layer", b"a's own"]);
    let (_, db) = image(&dir, &[b"base layer", b"b's own layer"]);
    index(
        &dir,
        vec![
            (da, ANNOTATION_CONTAINERD_NAME, "aion.local/a:1"),
            (db, ANNOTATION_CONTAINERD_NAME, "aion.local/b:1"),
        ],
    );
    let cat = read_sources(std::slice::from_ref(&dir)).unwrap();
    let a = cat.get("aion.local/a:1").unwrap().clone();
    let b = cat.get("aion.local/b:1").unwrap().clone();
    let relay_host = relay_test_host(t.path(), "relay", &t.path().join("relay/root"));
    let fetcher = relay_test_host(t.path(), "fetcher", &relay_host.root);
    let rroot = relay_host.root.clone();

    let own = plan_host(std::slice::from_ref(&a), None);
    let mut fetched = plan_host(&[a.clone(), b.clone()], None);
    let kept = relay_blobs(
        [fetched.as_slice()],
        &BTreeSet::new(),
        std::slice::from_ref(&a),
    );
    // (both images have the same config blob here)
    assert_eq!(kept.len(), 2, "B's manifest and own layer: {kept:?}");
    assert!(
        kept.iter()
            .all(|k| !a.blobs.iter().any(|x| x.digest == k.digest))
    );
    let relay = Relay {
        for_hosts: vec!["fetcher".into()],
        for_addresses: vec!["10.0.0.5".into()],
        blobs: kept.len(),
        bytes: kept.iter().map(|b| b.size).sum(),
        send: kept,
    };
    for c in &mut fetched {
        c.from = Some("relay".into());
    }

    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("k");
    let made = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "aion-image-relay-00ff",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let private = std::fs::read(&key).unwrap();
    let ak = rroot.join("root/.ssh/authorized_keys");
    std::fs::create_dir_all(ak.parent().unwrap()).unwrap();
    std::fs::write(
        &ak,
        "ssh-ed25519 AAAAoperator operator@laptop\nrestrict,command=\"x\" ssh-ed25519 AAAAstale aion-image-relay-0123abcd\n",
    )
    .unwrap();

    let script = relay_script("root", &own, &relay, &public, "00ff");
    let mut input = send_input(&own);
    input.extend(relay.send.iter().map(Blob::input));
    let out = relay_host.run_with_input(&script, &input).await.unwrap();
    assert!(out.success(), "{}", out.combined());
    let got = parse_received(&out.stdout_str());
    assert_eq!(got.blobs.len(), 4 + 2);
    assert_eq!(got.imported, vec![(a.reference.clone(), a.digest.clone())]);
    // kept: B's two, and A's four (hard links of what it imported, served by `cat`)
    assert_eq!(
        names(&rroot.join(RELAY_DIR.trim_start_matches('/')).join("sha256")).len(),
        6
    );
    let lines: Vec<String> = std::fs::read_to_string(&ak)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], "ssh-ed25519 AAAAoperator operator@laptop");
    let l = &lines[1];
    assert!(
        l.starts_with("restrict,from=\"10.0.0.5\",expiry-time=\""),
        "{l}"
    );
    let exp = &l["restrict,from=\"10.0.0.5\",expiry-time=\"".len()..][..12];
    assert!(exp.chars().all(|c| c.is_ascii_digit()), "{l}");
    let pubkey = public.split_whitespace().nth(1).unwrap();
    assert!(
        l.ends_with(&format!(
            "\",command=\"/bin/sh {SERVE_SCRIPT} $SSH_ORIGINAL_COMMAND\" ssh-ed25519 {pubkey} aion-image-relay-00ff"
        )),
        "{l}"
    );

    let from = RelaySource {
        host: "relay".into(),
        address: "10.0.0.9".into(),
        port: 22,
        user: "root".into(),
        known_hosts: None,
    };
    let known = vec!["relay.example ssh-ed25519 AAAAhostkey".to_string()];
    let fetch = fetch_script("root", &fetched, &from, &known, private.len());
    let out = fetcher
        .run_with_input(&fetch, &[Input::Bytes(private.clone())])
        .await
        .unwrap();
    assert!(out.success(), "{}", out.combined());
    let got = parse_received(&out.stdout_str());
    assert_eq!(got.bytes(), a.total_bytes() + relay.bytes);
    assert_eq!(
        got.imported,
        vec![
            (a.reference.clone(), a.digest.clone()),
            (b.reference.clone(), b.digest.clone())
        ]
    );
    assert_eq!(
        std::fs::read_to_string(fetcher.root.join("ssh-dest"))
            .unwrap()
            .trim(),
        "root@10.0.0.9"
    );
    // The private key lived only in the staging directory, which is gone.
    assert_eq!(
        names(&fetcher.root.join(STAGING_DIR.trim_start_matches('/'))),
        ["blobs"]
    );
    // A host key that is not the relay's: refused before anything is read.
    let out = fetcher
        .run_with_input(
            &fetch_script(
                "root",
                &fetched,
                &from,
                &["other ssh-ed25519 AAAA".into()],
                private.len(),
            ),
            &[Input::Bytes(private.clone())],
        )
        .await
        .unwrap();
    assert!(!out.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"));

    // The serve script prints digests only.
    let serve = std::process::Command::new("sh")
        .arg(rroot.join(SERVE_SCRIPT.trim_start_matches('/')))
        .arg("../../../etc/passwd")
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(2));
    assert!(serve.stdout.is_empty());

    let out = relay_host.run(&relay_cleanup_script("root")).await.unwrap();
    assert!(out.success(), "{}", out.combined());
    assert_eq!(
        std::fs::read_to_string(&ak).unwrap(),
        "ssh-ed25519 AAAAoperator operator@laptop\n"
    );
    assert!(!rroot.join(RELAY_DIR.trim_start_matches('/')).exists());
    let out = fetcher
        .run_with_input(&fetch, &[Input::Bytes(private)])
        .await
        .unwrap();
    assert!(!out.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status, 3, "{err}");
    assert!(
        err.contains("Permission denied") && err.contains("the fetch from relay"),
        "{err}"
    );
}

#[test]
fn machines_map_to_platforms_and_variants_match_as_containerd_does() {
    let p = |m: &str| Platform::of_machine(m).unwrap();
    assert_eq!(p("x86_64").to_string(), "linux/amd64");
    assert_eq!(p("aarch64").to_string(), "linux/arm64");
    assert_eq!(p("armv7l").to_string(), "linux/arm/v7");
    assert_eq!(Platform::of_machine("m68k"), None);
    let img = |a: &str, v: Option<&str>| Platform {
        os: "linux".into(),
        architecture: a.into(),
        variant: v.map(str::to_string),
    };
    // arm64 alone is arm64/v8
    assert_eq!(p("aarch64").rank(&img("arm64", Some("v8"))), Some(0));
    assert_eq!(p("aarch64").rank(&img("amd64", None)), None);
    // a v7 host runs v7 first, then v6; a v6 host never runs v7
    assert!(p("armv7l").rank(&img("arm", Some("v7"))) < p("armv7l").rank(&img("arm", Some("v6"))));
    assert_eq!(p("armv6l").rank(&img("arm", Some("v7"))), None);
    assert_eq!(p("x86_64").rank(&img("amd64", None)), Some(0));
}

/// A two-platform index (amd64, arm64) with an attestation entry and a platform whose
/// manifest the layout lacks (a partial export): the layout, the index digest, and each
/// variant's manifest digest and blob digests.
fn multi_platform_layout(dir: &Path) -> (String, BTreeMap<&'static str, (String, Vec<String>)>) {
    let shared: &[u8] = b"layer both platforms share (a data layer)";
    let (amd, amd_d) = image_on(dir, "amd64", None, &[b"amd64 binaries", shared]);
    let (arm, arm_d) = image_on(dir, "arm64", Some("v8"), &[b"arm64 binaries", shared]);
    let blobs = |m: &str| -> Vec<String> {
        let man: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                dir.join("blobs/sha256")
                    .join(m.trim_start_matches("sha256:")),
            )
            .unwrap(),
        )
        .unwrap();
        let mut v = vec![
            m.to_string(),
            man["config"]["digest"].as_str().unwrap().to_string(),
        ];
        v.extend(
            man["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string()),
        );
        v
    };
    let variants = BTreeMap::from([
        ("amd64", (amd.clone(), blobs(&amd))),
        ("arm64", (arm.clone(), blobs(&arm))),
    ]);
    let with = |mut d: serde_json::Value, p: serde_json::Value| {
        d["platform"] = p;
        d
    };
    let attestation = put(dir, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#);
    let idx = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            with(amd_d, serde_json::json!({"architecture": "amd64", "os": "linux"})),
            with(arm_d, serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"})),
            // not in this layout (exported for two platforms only)
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 500,
             "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
             "platform": {"architecture": "s390x", "os": "linux"}},
            // BuildKit's attestation: no image, its config is not even there
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": attestation,
             "size": std::fs::metadata(dir.join("blobs/sha256").join(attestation.trim_start_matches("sha256:"))).unwrap().len(),
             "platform": {"architecture": "unknown", "os": "unknown"}},
        ],
    })
    .to_string();
    let id = put(dir, idx.as_bytes());
    index(
        dir,
        vec![(
            serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": idx.len()}),
            ANNOTATION_REF_NAME,
            "example.org/multi:1",
        )],
    );
    (id, variants)
}

#[test]
fn a_multi_platform_index_sends_the_index_and_only_the_hosts_variant() {
    let t = tempfile::tempdir().unwrap();
    let (index_digest, variants) = multi_platform_layout(t.path());
    let cat = read_sources(&[t.path().to_path_buf()]).unwrap();
    let img = cat
        .get("example.org/multi:1")
        .expect("the index is an image of the source");
    assert_eq!(
        img.digest, index_digest,
        "named by the index, as containerd names it"
    );
    let platforms: Vec<String> = img
        .variants
        .iter()
        .map(|v| v.platform.to_string())
        .collect();
    assert_eq!(
        platforms,
        ["linux/amd64", "linux/arm64/v8"],
        "no attestation, no absent platform"
    );

    for (machine, arch) in [("x86_64", "amd64"), ("aarch64", "arm64")] {
        let chosen = for_machine(std::slice::from_ref(img), machine).unwrap();
        let sent: Vec<String> = chosen[0].blobs.iter().map(|b| b.digest.clone()).collect();
        let mut want = vec![index_digest.clone()];
        want.extend(variants[arch].1.iter().cloned());
        assert_eq!(
            sent, want,
            "{machine}: the index, then its own variant only"
        );
        assert_eq!(chosen[0].digest, index_digest);
        // What a host without the image is sent: those blobs; the index goes in index.json.
        let changes = plan_host(&chosen, None);
        assert_eq!(changes[0].send.len(), want.len());
        assert_eq!(
            changes[0].media_type,
            "application/vnd.oci.image.index.v1+json"
        );
        let ij: serde_json::Value = serde_json::from_str(&index_json(&changes)).unwrap();
        assert_eq!(ij["manifests"][0]["digest"], index_digest.as_str());
        assert_eq!(
            ij["manifests"][0]["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        let platform = if arch == "amd64" {
            "linux/amd64"
        } else {
            "linux/arm64/v8"
        };
        assert!(
            changes[0]
                .describe()
                .contains(&format!("({platform} of the index; ")),
            "{}",
            changes[0].describe()
        );
        let other = if arch == "amd64" { "arm64" } else { "amd64" };
        assert!(
            !sent.contains(&variants[other].0),
            "{machine}: the {other} manifest is not sent"
        );
    }
    // A 32-bit ARM device: no variant; the error names both sides.
    let e = for_machine(std::slice::from_ref(img), "armv7l").unwrap_err();
    assert_eq!(
        e,
        "image docker.io/example.org/multi:1 has no variant for linux/arm/v7 (the source has linux/amd64, linux/arm64/v8)"
            .replace("docker.io/", ""),
    );
}

#[test]
fn a_single_platform_image_for_another_platform_is_refused_naming_both() {
    let t = tempfile::tempdir().unwrap();
    let (_, arm) = image_on(t.path(), "arm64", None, &[b"arm64 only"]);
    let (_, amd) = image(t.path(), &[b"amd64 only"]);
    index(
        t.path(),
        vec![
            (arm, ANNOTATION_REF_NAME, "example.org/jetson-only:1"),
            (amd, ANNOTATION_REF_NAME, "example.org/x86-only:1"),
        ],
    );
    let cat = read_sources(&[t.path().to_path_buf()]).unwrap();
    let imgs: Vec<SourceImage> = cat.images.values().cloned().collect();
    let e = for_machine(&imgs, "x86_64").unwrap_err();
    assert_eq!(
        e,
        "image example.org/jetson-only:1 is built for linux/arm64 only; the host is linux/amd64"
    );
    let e = for_machine(&imgs, "aarch64").unwrap_err();
    assert!(
        e.contains("example.org/x86-only:1 is built for linux/amd64 only"),
        "{e}"
    );
    // An unknown machine: single images go as they are.
    assert_eq!(for_machine(&imgs, "m68k").unwrap().len(), 2);
}

#[test]
fn an_index_with_no_platform_in_the_source_is_an_error_naming_it() {
    let t = tempfile::tempdir().unwrap();
    let idx = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 500,
         "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
         "platform": {"architecture": "amd64", "os": "linux"}}]})
    .to_string();
    let id = put(t.path(), idx.as_bytes());
    index(
        t.path(),
        vec![(
            serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": idx.len()}),
            ANNOTATION_REF_NAME,
            "example.org/empty:1",
        )],
    );
    let e = read_sources(&[t.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("example.org/empty:1")
            && e.contains("has no platform whose manifest is in the source"),
        "{e}"
    );
}

#[test]
fn a_registry_serves_the_references_of_its_domain() {
    let r = Registry::new("http://10.0.0.5:5000/");
    assert_eq!(r.url, "http://10.0.0.5:5000");
    assert_eq!(r.domain, "10.0.0.5:5000");
    assert_eq!(
        r.serves("10.0.0.5:5000/factory/app:1.2"),
        Some(("factory/app", "1.2"))
    );
    assert_eq!(r.serves("10.0.0.5:5000/app"), Some(("app", "latest")));
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    assert_eq!(
        r.serves(&format!("10.0.0.5:5000/app@{d}")),
        Some(("app", d))
    );
    // another domain, or a port that only starts the same
    assert_eq!(r.serves("docker.io/library/app:1"), None);
    assert_eq!(r.serves("10.0.0.5:50001/app:1"), None);
}
