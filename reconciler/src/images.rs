//! Images for devices without a registry (issue #15, first slice): which images each host runs,
//! where their bytes are on the operator's machine, what each host's containerd lacks, and the
//! script that receives, verifies and imports what is sent.
//!
//! * **Sources** (`imageSources` in the inventory, read by [`read_sources`], the only I/O here
//!   besides reading blobs while sending): OCI image-layout directories (`index.json`,
//!   `blobs/sha256/…`), OCI archives (the same as a tar, read in place by a small tar reader that
//!   records each member's byte offset, so a blob is streamed from the archive without
//!   extracting it) and `images.tsv` lists (`ref<TAB>archive…`, as `scripts/images list` writes).
//!   An image is found by its manifest's `io.containerd.image.name` or
//!   `org.opencontainers.image.ref.name` annotation (a full reference), compared in Docker's
//!   normalised form (`redis:7` is `docker.io/library/redis:7`, as containerd's CRI names it).
//! * **Needs** ([`needed`], pure): every container and init container image of the pods the
//!   rendered manifests put on each host (`nodeSelector` `kubernetes.io/hostname`, else the
//!   object's node). [`resolve`] maps them to source images; an image no source has is an error
//!   naming the host, the object and the reference, raised before any host is contacted.
//! * **Plan** ([`plan_host`], pure): against the host's containerd facts (`ctr images ls`,
//!   `content ls`), one [`ImageChange`] per image the host does not have at that digest, with
//!   only the blobs its content store lacks (a blob shared by two images is sent once).
//! * **Apply** ([`receive_script`], pure): one script per host that receives the blobs on stdin
//!   into a staging directory under [`STAGING_DIR`], checks each one's size and SHA-256 as it
//!   arrives and moves it into the host's blob cache ([`crate::facts::IMAGE_BLOB_CACHE`]), and
//!   once all are there imports an archive of `oci-layout`, `index.json` and the cached blobs
//!   with `ctr -n k8s.io images import -` (containerd takes the blobs it already has from its
//!   content store), then empties the cache. A cut connection leaves only verified blobs in the
//!   cache and nothing imported; the next plan counts them as there (facts) and sends the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::facts::ContainerdFacts;
use crate::host::Input;
use crate::manifest::Manifests;
use crate::shell::{path_expr, sh_quote};

/// Where a host stages received blobs: the blob being received in a fresh `.staging.*`
/// directory per apply (removed at its end), each verified blob in
/// [`crate::facts::IMAGE_BLOB_CACHE`] beneath it until the import.
pub const STAGING_DIR: &str = "/var/lib/aion/images";

const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Manifests and indexes larger than this are refused (they are JSON of a few KiB).
const MAX_JSON: u64 = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("image source {path}: {message}")]
    Source { path: PathBuf, message: String },
    #[error("{path}:{line}:1: {message}")]
    List {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "host {host}: {object}, container {container}: image {reference} is in no image source ({sources})"
    )]
    Missing {
        host: String,
        object: String,
        container: String,
        reference: String,
        sources: String,
    },
}

// ---------------------------------------------------------------------------------------------
// References
// ---------------------------------------------------------------------------------------------

/// Docker's normalised form of an image reference, as containerd's CRI names images:
/// `redis:7` → `docker.io/library/redis:7`, `latonaio/x` → `docker.io/latonaio/x:latest`,
/// `aion.local/x:1` unchanged. Digest references keep their digest (and no default tag).
pub fn normalize(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    let mut out = match rest {
        Some(_) if first.contains(['.', ':']) || first == "localhost" => name.to_string(),
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    let last = out.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && digest.is_none() {
        out.push_str(":latest");
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

/// A blob: digest, size and where its bytes are on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(skip)]
    pub offset: u64,
}

impl Blob {
    pub fn input(&self) -> Input {
        Input::File {
            path: self.path.clone(),
            offset: self.offset,
            len: self.size,
        }
    }
}

/// One image a source has: its reference, manifest and every blob (manifest, config, layers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    /// Normalised reference.
    pub reference: String,
    /// The manifest's digest (what containerd's `images ls` shows).
    pub digest: String,
    pub media_type: String,
    /// The manifest first, then the config, then the layers.
    pub blobs: Vec<Blob>,
    /// The source (directory, archive or list) it was found in.
    pub source: PathBuf,
}

impl SourceImage {
    pub fn total_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// Every image of every source, by normalised reference (the first source that has one wins);
/// digest references are found by manifest digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub images: BTreeMap<String, SourceImage>,
    /// The sources, as given (for error messages).
    pub sources: Vec<PathBuf>,
}

impl Catalog {
    pub fn get(&self, reference: &str) -> Option<&SourceImage> {
        let n = normalize(reference);
        if let Some(i) = self.images.get(&n) {
            return Some(i);
        }
        let (_, digest) = n.split_once('@')?;
        self.images.values().find(|i| i.digest == digest)
    }
}

/// An OCI layout's members: relative path → (file, offset, size).
type Members = BTreeMap<String, (PathBuf, u64, u64)>;

/// Read every source (OCI layout directory, OCI archive, `.tsv` list).
pub fn read_sources(paths: &[PathBuf]) -> Result<Catalog, ImageError> {
    let mut cat = Catalog {
        images: BTreeMap::new(),
        sources: paths.to_vec(),
    };
    for path in paths {
        let found = if path.is_dir() {
            read_layout(path, &dir_members(path)?, None)?
        } else if path.extension().is_some_and(|e| e == "tsv") {
            read_list(path)?
        } else {
            read_layout(path, &tar_members(path)?, None)?
        };
        for img in found {
            cat.images.entry(img.reference.clone()).or_insert(img);
        }
    }
    Ok(cat)
}

/// `images.tsv`: `ref<TAB>archive[<TAB>…]` per line (archive relative to the list's directory);
/// each listed archive must hold the listed reference.
fn read_list(path: &Path) -> Result<Vec<SourceImage>, ImageError> {
    let text = std::fs::read_to_string(path).map_err(|e| ImageError::Source {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |message: String| ImageError::List {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split('\t');
        let (Some(reference), Some(archive)) = (f.next(), f.next()) else {
            return Err(at("expected `ref<TAB>archive`".into()));
        };
        let archive = dir.join(archive);
        let members = tar_members(&archive).map_err(|e| at(e.to_string()))?;
        let want = normalize(reference);
        let found = read_layout(&archive, &members, Some(&want)).map_err(|e| at(e.to_string()))?;
        if found.is_empty() {
            return Err(at(format!(
                "{} has no image named {reference}",
                archive.display()
            )));
        }
        out.extend(found);
    }
    Ok(out)
}

/// The members of an OCI layout directory (`index.json`, `blobs/<alg>/<hex>`).
fn dir_members(dir: &Path) -> Result<Members, ImageError> {
    let err = |message: String| ImageError::Source {
        path: dir.to_path_buf(),
        message,
    };
    let mut m = Members::new();
    let index = dir.join("index.json");
    let len = std::fs::metadata(&index)
        .map_err(|e| err(format!("index.json: {e} (not an OCI image layout)")))?
        .len();
    m.insert("index.json".into(), (index, 0, len));
    let blobs = dir.join("blobs");
    for alg in std::fs::read_dir(&blobs).map_err(|e| err(format!("blobs/: {e}")))? {
        let alg = alg.map_err(|e| err(e.to_string()))?;
        if !alg.path().is_dir() {
            continue;
        }
        for b in std::fs::read_dir(alg.path()).map_err(|e| err(e.to_string()))? {
            let b = b.map_err(|e| err(e.to_string()))?;
            let len = b.metadata().map_err(|e| err(e.to_string()))?.len();
            let rel = format!(
                "blobs/{}/{}",
                alg.file_name().to_string_lossy(),
                b.file_name().to_string_lossy()
            );
            m.insert(rel, (b.path(), 0, len));
        }
    }
    Ok(m)
}

/// The regular files of a tar archive with each one's data offset and size, read header by
/// header (ustar, GNU long names, pax `path`/`size`), never extracting anything.
pub fn tar_members(path: &Path) -> Result<Members, ImageError> {
    let err = |message: String| ImageError::Source {
        path: path.to_path_buf(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let total = f.metadata().map_err(|e| err(e.to_string()))?.len();
    let mut m = Members::new();
    let mut pos = 0u64;
    let mut long_name: Option<String> = None;
    let mut pax: BTreeMap<String, String> = BTreeMap::new();
    let mut h = [0u8; 512];
    loop {
        if pos + 512 > total {
            if pos == total && pos > 0 {
                break; // no end-of-archive blocks: accepted
            }
            return Err(err(format!(
                "not a tar archive, or cut short at byte {pos}"
            )));
        }
        f.seek(SeekFrom::Start(pos))
            .map_err(|e| err(e.to_string()))?;
        f.read_exact(&mut h).map_err(|e| err(e.to_string()))?;
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u64
                }
            })
            .sum();
        if octal(&h[148..156]) != Some(sum) {
            return Err(err(format!(
                "not a tar archive (bad header checksum at byte {pos})"
            )));
        }
        let mut size = if h[124] & 0x80 != 0 {
            h[125..136].iter().fold(0u64, |a, &b| (a << 8) | b as u64)
        } else {
            octal(&h[124..136]).ok_or_else(|| err(format!("bad size field at byte {pos}")))?
        };
        let kind = h[156];
        if let Some(s) = pax.get("size") {
            size = s
                .parse()
                .map_err(|_| err(format!("bad pax size at byte {pos}")))?;
        }
        let data = pos + 512;
        if data + size > total {
            return Err(err(format!(
                "cut short: a member at byte {pos} needs {size} bytes"
            )));
        }
        let read_data = |f: &mut std::fs::File| -> Result<Vec<u8>, ImageError> {
            if size > MAX_JSON {
                return Err(err(format!("oversized header member at byte {pos}")));
            }
            let mut v = vec![0u8; size as usize];
            f.seek(SeekFrom::Start(data))
                .map_err(|e| err(e.to_string()))?;
            f.read_exact(&mut v).map_err(|e| err(e.to_string()))?;
            Ok(v)
        };
        match kind {
            b'L' => {
                let v = read_data(&mut f)?;
                long_name = Some(cstr(&v));
            }
            b'x' => {
                let v = read_data(&mut f)?;
                pax = parse_pax(&v);
                // the next header is the member these records are about
                pos = data + size.div_ceil(512) * 512;
                continue;
            }
            b'g' => {}
            b'0' | 0 | b'7' => {
                let name = if let Some(p) = pax.get("path") {
                    p.clone()
                } else if let Some(l) = long_name.take() {
                    l
                } else {
                    let name = cstr(&h[0..100]);
                    let prefix = if &h[257..262] == b"ustar" {
                        cstr(&h[345..500])
                    } else {
                        String::new()
                    };
                    if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}/{name}")
                    }
                };
                let name = name.trim_start_matches("./").trim_start_matches('/');
                m.insert(name.to_string(), (path.to_path_buf(), data, size));
            }
            _ => {}
        }
        if kind != b'L' {
            long_name = None;
        }
        pax.clear();
        pos = data + size.div_ceil(512) * 512;
    }
    Ok(m)
}

fn octal(field: &[u8]) -> Option<u64> {
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// pax records: `<len> <key>=<value>\n`.
fn parse_pax(data: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|&b| b == b' ') else {
            break;
        };
        let Ok(len) = std::str::from_utf8(&rest[..sp])
            .unwrap_or("")
            .parse::<usize>()
        else {
            break;
        };
        if len <= sp || len > rest.len() {
            break;
        }
        let rec = String::from_utf8_lossy(&rest[sp + 1..len]);
        if let Some((k, v)) = rec.trim_end_matches('\n').split_once('=') {
            out.insert(k.to_string(), v.to_string());
        }
        rest = &rest[len..];
    }
    out
}

fn read_member(source: &Path, m: &Members, name: &str) -> Result<Vec<u8>, ImageError> {
    let err = |message: String| ImageError::Source {
        path: source.to_path_buf(),
        message,
    };
    let (path, offset, size) = m
        .get(name)
        .ok_or_else(|| err(format!("{name} is missing")))?;
    if *size > MAX_JSON {
        return Err(err(format!("{name} is too large ({size} bytes)")));
    }
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    f.seek(SeekFrom::Start(*offset))
        .map_err(|e| err(e.to_string()))?;
    let mut v = vec![0u8; *size as usize];
    f.read_exact(&mut v)
        .map_err(|e| err(format!("{name}: {e}")))?;
    Ok(v)
}

#[derive(serde::Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

fn blob_name(digest: &str) -> Option<String> {
    let (alg, hex) = digest.split_once(':')?;
    let ok = alg == "sha256" && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| format!("blobs/{alg}/{hex}"))
}

/// The images named in a layout's `index.json` (only `only`, when given).
fn read_layout(
    source: &Path,
    m: &Members,
    only: Option<&str>,
) -> Result<Vec<SourceImage>, ImageError> {
    let err = |message: String| ImageError::Source {
        path: source.to_path_buf(),
        message,
    };
    let index: Index = serde_json::from_slice(&read_member(source, m, "index.json")?)
        .map_err(|e| err(format!("index.json: {e}")))?;
    let blob = |d: &Descriptor, what: &str| -> Result<Blob, ImageError> {
        let name = blob_name(&d.digest)
            .ok_or_else(|| err(format!("{what}: unsupported digest {}", d.digest)))?;
        let (path, offset, size) = m
            .get(&name)
            .ok_or_else(|| err(format!("{what} {} is not in the source", d.digest)))?;
        if *size != d.size {
            return Err(err(format!(
                "{what} {}: {size} bytes in the source, {} in its descriptor",
                d.digest, d.size
            )));
        }
        Ok(Blob {
            digest: d.digest.clone(),
            size: d.size,
            path: path.clone(),
            offset: *offset,
        })
    };
    let mut out = Vec::new();
    for d in &index.manifests {
        let names: Vec<String> = [ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME]
            .iter()
            .filter_map(|k| d.annotations.get(*k))
            // a bare tag (`latest`) names no repository
            .filter(|n| n.contains('/') || n.contains(':'))
            .map(|n| normalize(n))
            .collect();
        let Some(reference) = names.first().cloned() else {
            continue;
        };
        if only.is_some_and(|o| !names.iter().any(|n| n == o)) {
            continue;
        }
        let what = format!("image {reference}");
        let manifest_blob = blob(d, &format!("{what}: manifest"))?;
        let bytes = read_member(source, m, &blob_name(&d.digest).unwrap_or_default())?;
        let man: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("{what}: manifest {}: {e}", d.digest)))?;
        if man.manifests.is_some() {
            return Err(err(format!(
                "{what}: {} is a multi-platform index; only single-platform image manifests are sent so far",
                d.digest
            )));
        }
        let config = man
            .config
            .as_ref()
            .ok_or_else(|| err(format!("{what}: manifest {} has no config", d.digest)))?;
        let mut blobs = vec![manifest_blob, blob(config, &format!("{what}: config"))?];
        for l in &man.layers {
            blobs.push(blob(l, &format!("{what}: layer"))?);
        }
        let media_type = if d.media_type.is_empty() {
            man.media_type.clone()
        } else {
            d.media_type.clone()
        };
        for r in names {
            out.push(SourceImage {
                reference: r,
                digest: d.digest.clone(),
                media_type: media_type.clone(),
                blobs: blobs.clone(),
                source: source.to_path_buf(),
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Needs (pure)
// ---------------------------------------------------------------------------------------------

/// host → the images its pods run (resolved in the sources); empty without `imageSources`.
pub type Wanted = BTreeMap<String, Vec<SourceImage>>;

/// One image a pod on a host runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Need {
    /// As written in the pod spec.
    pub reference: String,
    /// The object (`Deployment/ns/name`).
    pub object: String,
    pub container: String,
}

/// Every container and init container image of the pods the manifests put on each host:
/// host → needs, in object order.
pub fn needed(manifests: &Manifests) -> BTreeMap<String, Vec<Need>> {
    let mut out: BTreeMap<String, Vec<Need>> = BTreeMap::new();
    for o in manifests.objects() {
        let pod = match o.key.kind.as_str() {
            "Pod" => o.value.pointer("/spec"),
            "CronJob" => o.value.pointer("/spec/jobTemplate/spec/template/spec"),
            "Deployment" | "Job" | "DaemonSet" | "StatefulSet" | "ReplicaSet" => {
                o.value.pointer("/spec/template/spec")
            }
            _ => None,
        };
        let Some(pod) = pod else { continue };
        let host = pod
            .pointer("/nodeSelector/kubernetes.io~1hostname")
            .and_then(|v| v.as_str())
            .unwrap_or(&o.node)
            .to_string();
        for list in ["initContainers", "containers"] {
            for c in pod
                .get(list)
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(image) = c.get("image").and_then(|v| v.as_str()) {
                    out.entry(host.clone()).or_default().push(Need {
                        reference: image.to_string(),
                        object: o.key.to_string(),
                        container: c
                            .get("name")
                            .and_then(|v| v.as_str())
                            .unwrap_or("?")
                            .to_string(),
                    });
                }
            }
        }
    }
    out
}

/// Each host's images from the catalog (each once, by normalised reference, in first-need
/// order); every image no source has is an error naming host, object and reference.
pub fn resolve(
    needs: &BTreeMap<String, Vec<Need>>,
    catalog: &Catalog,
) -> Result<BTreeMap<String, Vec<SourceImage>>, Vec<ImageError>> {
    let mut out: BTreeMap<String, Vec<SourceImage>> = BTreeMap::new();
    let mut errors = Vec::new();
    let sources = catalog
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for (host, list) in needs {
        let imgs = out.entry(host.clone()).or_default();
        let mut missing = BTreeSet::new();
        for n in list {
            match catalog.get(&n.reference) {
                Some(img) => {
                    let mut img = img.clone();
                    img.reference = normalize(&n.reference);
                    if !imgs.iter().any(|i| i.reference == img.reference) {
                        imgs.push(img);
                    }
                }
                None => {
                    if missing.insert(n.reference.clone()) {
                        errors.push(ImageError::Missing {
                            host: host.clone(),
                            object: n.object.clone(),
                            container: n.container.clone(),
                            reference: n.reference.clone(),
                            sources: sources.clone(),
                        });
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------------------------
// Plan (pure)
// ---------------------------------------------------------------------------------------------

/// One image a host gets: imported from the blobs it lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageChange {
    /// Normalised reference (the name containerd gets).
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// The digest the host has under this reference now, when another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// Bytes and blobs to send (those the host's content store lacks).
    pub bytes: u64,
    pub blobs: usize,
    /// Every blob of the image and their bytes.
    pub blobs_total: usize,
    pub bytes_total: u64,
    pub media_type: String,
    /// The blobs to send, in order.
    #[serde(skip)]
    pub send: Vec<Blob>,
    /// Where the image comes from.
    #[serde(skip)]
    pub source: PathBuf,
    /// The manifest's size (for the index sent with the blobs).
    #[serde(skip)]
    pub manifest_size: u64,
}

/// What a host lacks of `images`: an [`ImageChange`] for each one it does not have at that
/// digest, sending only blobs neither its content store, nor its blob cache (verified blobs of
/// a cut transfer), nor an earlier image of this plan has.
/// Without containerd facts (no ctr yet) everything is sent.
pub fn plan_host(images: &[SourceImage], have: Option<&ContainerdFacts>) -> Vec<ImageChange> {
    let empty = ContainerdFacts::default();
    let have = have.unwrap_or(&empty);
    let mut sending: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for img in images {
        let current = have.images.get(&img.reference);
        if current == Some(&img.digest) {
            continue;
        }
        let send: Vec<Blob> = img
            .blobs
            .iter()
            .filter(|b| {
                !have.content.contains(&b.digest)
                    && !have.staged.contains(&b.digest)
                    && sending.insert(&b.digest)
            })
            .cloned()
            .collect();
        out.push(ImageChange {
            reference: img.reference.clone(),
            digest: img.digest.clone(),
            replaces: current.cloned(),
            bytes: send.iter().map(|b| b.size).sum(),
            blobs: send.len(),
            blobs_total: img.blobs.len(),
            bytes_total: img.total_bytes(),
            media_type: img.media_type.clone(),
            send,
            source: img.source.clone(),
            manifest_size: img.blobs.first().map_or(0, |b| b.size),
        });
    }
    out
}

/// `1.5 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

impl ImageChange {
    /// The plan line's text after the sign: `image <ref> — <digest> (<bytes> to send: n of m
    /// blobs)`, `… replaces <old digest>` when the host has the reference at another digest.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "image {} — {} ({} to send: {} of {} blobs)",
            self.reference,
            self.digest,
            human_bytes(self.bytes),
            self.blobs,
            self.blobs_total
        );
        if let Some(old) = &self.replaces {
            s.push_str(&format!(" replaces {old}"));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Old versions (pure): what a version up leaves behind
// ---------------------------------------------------------------------------------------------

/// The label the receiving script puts on each image it imports (defined beside the facts that
/// read it).
pub use crate::facts::IMPORTED_LABEL;

/// An old version of an image a host no longer needs: `- image <ref>` in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRemoval {
    /// Normalised reference (the name containerd has).
    pub reference: String,
    /// The manifest digest it names on the host (removed only while it still does).
    pub digest: String,
    /// The other names of the same image (the CRI's `sha256:<id>` and `<repo>@sha256:…`
    /// names), removed with it: while any name is left, containerd keeps the content.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// The repository of a tag reference (`aion.local/app:2` → `aion.local/app`); None for the
/// names that are not tags (`sha256:<id>`, `<repo>@sha256:…`): those are aliases.
pub fn repository(reference: &str) -> Option<&str> {
    if reference.contains('@') || reference.starts_with("sha256:") {
        return None;
    }
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => Some(&reference[..slash + i]),
        None => Some(reference),
    }
}

/// The old versions a host can drop: images in its containerd of the same repository as an
/// image it runs (`images`), under another tag and at another digest, beyond the `keep` most
/// recently imported ones (by [`IMPORTED_LABEL`], newest first; unlabelled ones are the oldest,
/// then by reference, highest first). Whether a pod still uses one is checked by `apply` when
/// it removes them, after the new pods are ready ([`not_in_use`]).
pub fn plan_removals(
    images: &[SourceImage],
    have: Option<&ContainerdFacts>,
    keep: u32,
) -> Vec<ImageRemoval> {
    let Some(have) = have else {
        return Vec::new();
    };
    let wanted_refs: BTreeSet<&str> = images.iter().map(|i| i.reference.as_str()).collect();
    let wanted_digests: BTreeSet<&str> = images.iter().map(|i| i.digest.as_str()).collect();
    let repos: BTreeSet<&str> = images
        .iter()
        .filter_map(|i| repository(&i.reference))
        .collect();
    // repository → its old tags (reference, digest, imported at)
    let mut old: BTreeMap<&str, Vec<(&str, &str, u64)>> = BTreeMap::new();
    for (r, d) in &have.images {
        let Some(repo) = repository(r) else { continue };
        if repos.contains(repo)
            && !wanted_refs.contains(r.as_str())
            && !wanted_digests.contains(d.as_str())
        {
            let at = have.imported.get(r).copied().unwrap_or(0);
            old.entry(repo).or_default().push((r, d, at));
        }
    }
    let mut out = Vec::new();
    for (_, mut tags) in old {
        tags.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| b.0.cmp(a.0)));
        let (kept, gone) = tags.split_at(tags.len().min(keep as usize));
        for (r, d, _) in gone {
            // The image's other names go with it, unless a kept or wanted tag names it too.
            let shared =
                kept.iter().any(|k| k.1 == *d) || gone.iter().any(|g| g.1 == *d && g.0 < *r);
            let aliases = if shared {
                Vec::new()
            } else {
                have.images
                    .iter()
                    .filter(|(n, nd)| nd == d && repository(n).is_none())
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            out.push(ImageRemoval {
                reference: r.to_string(),
                digest: d.to_string(),
                aliases,
            });
        }
    }
    out
}

/// The removals no pod uses: `in_use` holds what the host's pods name (their images, as
/// normalised references, and their image IDs: digests and `<repo>@sha256:…`). Returns (to
/// remove, still in use).
pub fn not_in_use(
    removals: &[ImageRemoval],
    in_use: &BTreeSet<String>,
) -> (Vec<ImageRemoval>, Vec<ImageRemoval>) {
    removals.iter().cloned().partition(|r| {
        !in_use.contains(&r.reference)
            && !in_use.contains(&r.digest)
            && !r.aliases.iter().any(|a| in_use.contains(a))
    })
}

/// Marker line of [`remove_script`]: an image removed (reference).
pub const REMOVED: &str = "REMOVED";

/// The script that removes `removals` from the host's containerd (`k8s.io`), each only while
/// its reference still names the planned digest (someone may have re-tagged it since the
/// plan), with its aliases, synchronously (`--sync`: the content is gone when it reports).
pub fn remove_script(user: &str, removals: &[ImageRemoval]) -> String {
    let mut s = crate::shell::prelude(user);
    s.push_str("set -e\nhave=$(ctr -n k8s.io images ls | awk 'NR > 1 {print $1 \" \" $3}')\n");
    for r in removals {
        let want = format!("{} {}", r.reference, r.digest);
        let mut names = vec![sh_quote(&r.reference)];
        names.extend(r.aliases.iter().map(|a| sh_quote(a)));
        s.push_str(&format!(
            "if printf '%s\\n' \"$have\" | grep -qxF {w}; then ctr -n k8s.io images rm --sync {n} >&2; printf '{REMOVED}\\t%s\\n' {r}; fi\n",
            w = sh_quote(&want),
            n = names.join(" "),
            r = sh_quote(&r.reference),
        ));
    }
    s
}

/// The references [`remove_script`] reported removed.
pub fn parse_removed(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(REMOVED)?.strip_prefix('\t'))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Apply (pure): the receiving script and its input
// ---------------------------------------------------------------------------------------------

/// The `index.json` sent with the blobs: each image's manifest, named for containerd.
pub fn index_json(changes: &[ImageChange]) -> String {
    let manifests: Vec<serde_json::Value> = changes
        .iter()
        .map(|c| {
            serde_json::json!({
                "mediaType": c.media_type,
                "digest": c.digest,
                "size": c.manifest_size,
                "annotations": { ANNOTATION_CONTAINERD_NAME: c.reference },
            })
        })
        .collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    })
    .to_string()
}

/// The blobs to send, in the order [`receive_script`] reads them (each once).
pub fn send_input(changes: &[ImageChange]) -> Vec<Input> {
    changes
        .iter()
        .flat_map(|c| c.send.iter().map(Blob::input))
        .collect()
}

/// Marker lines the receiving script prints on stdout.
pub const RECEIVED: &str = "RECEIVED";
pub const IMPORTED: &str = "IMPORTED";

/// The script that receives `changes`' blobs on stdin (in [`send_input`]'s order), one at a
/// time into a fresh staging directory under [`STAGING_DIR`]; checks each blob's size and
/// SHA-256 as soon as it is there and moves it into the blob cache
/// ([`crate::facts::IMAGE_BLOB_CACHE`]); once every blob is in, imports them with
/// `ctr -n k8s.io images import -` (an archive of `oci-layout`, `index.json` and the cache;
/// containerd takes the others from its content store), checks that containerd names each image
/// at its digest, and empties the cache. The staging directory is removed on every exit (also
/// on SIGPIPE: when the connection is cut, the first message to the closed stderr would
/// otherwise kill the shell before its exit trap, as seen on the testbed); a
/// cut stream leaves the blobs verified so far in the cache, for the next apply not to send
/// again. Exit 3: a blob arrived short; 4: a blob does not match its digest (nothing imported
/// in either case); 5: after the import an image is missing; 6: no `ctr`.
pub fn receive_script(user: &str, changes: &[ImageChange]) -> String {
    let mut s = crate::shell::prelude(user);
    s.push_str(
        "command -v ctr >/dev/null 2>&1 || { echo \"no ctr on this host: containerd must be installed before images are imported\" >&2; exit 6; }\n",
    );
    s.push_str(&format!(
        "set -e\nD={}\nC={}\nmkdir -p \"$C\"\nS=$(mktemp -d \"$D/.staging.XXXXXX\")\n\
         trap 'rm -rf \"$S\"' EXIT\ntrap 'exit 130' INT TERM HUP PIPE\n\
         get() {{\n  head -c \"$2\" > \"$S/blob\"\n  n=$(stat -c %s \"$S/blob\")\n  \
         if [ \"$n\" != \"$2\" ]; then echo \"blob sha256:$1: received $n of $2 bytes (the stream ended early); nothing imported\" >&2; exit 3; fi\n  \
         h=$(sha256sum \"$S/blob\" | cut -d' ' -f1)\n  \
         if [ \"$h\" != \"$1\" ]; then echo \"refused: blob sha256:$1 does not match its digest (its content is sha256:$h); nothing imported\" >&2; exit 4; fi\n  \
         mv \"$S/blob\" \"$C/$1\"\n  \
         printf '{RECEIVED}\\tsha256:%s\\t%s\\n' \"$1\" \"$2\"\n}}\n",
        path_expr(STAGING_DIR),
        path_expr(crate::facts::IMAGE_BLOB_CACHE),
    ));
    for c in changes {
        for b in &c.send {
            let hex = b.digest.trim_start_matches("sha256:");
            s.push_str(&format!("get {} {}\n", sh_quote(hex), b.size));
        }
    }
    // The archive's `blobs/sha256` is the cache: this apply's blobs and those a cut one left.
    s.push_str(&format!(
        "printf '%s' '{{\"imageLayoutVersion\":\"1.0.0\"}}' > \"$S/oci-layout\"\nprintf '%s' {} > \"$S/index.json\"\n\
         (cd \"$S\" && tar -cf - oci-layout index.json -C \"$D\" blobs) | ctr -n k8s.io images import - >&2\n\
         have=$(ctr -n k8s.io images ls | awk 'NR > 1 {{print $1 \" \" $3}}')\n\
         t=$(date +%s%N)\n",
        sh_quote(&index_json(changes))
    ));
    for c in changes {
        let want = format!("{} {}", c.reference, c.digest);
        s.push_str(&format!(
            "if printf '%s\\n' \"$have\" | grep -qxF {w}; then ctr -n k8s.io images label {r} \"{IMPORTED_LABEL}=$t\" >/dev/null; printf '{IMPORTED}\\t%s\\n' {w}; else echo \"after the import, containerd has no \"{w} >&2; exit 5; fi\n",
            w = sh_quote(&want),
            r = sh_quote(&c.reference),
        ));
    }
    // Imported: containerd has the content now.
    s.push_str("rm -f \"$C\"/*\n");
    s
}

/// What the receiving script reported: blobs received (digest, bytes) and images imported
/// (reference, digest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Received {
    pub blobs: Vec<(String, u64)>,
    pub imported: Vec<(String, String)>,
}

impl Received {
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.1).sum()
    }
}

/// Read the markers of [`receive_script`]'s stdout.
pub fn parse_received(stdout: &str) -> Received {
    let mut r = Received::default();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            [RECEIVED, d, n] => {
                if let Ok(n) = n.parse() {
                    r.blobs.push((d.to_string(), n));
                }
            }
            [IMPORTED, rd] => {
                if let Some((reference, digest)) = rd.split_once(' ') {
                    r.imported.push((reference.to_string(), digest.to_string()));
                }
            }
            _ => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
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
        let root = t.path().join("root");
        let bin = t.path().join("bin");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        // fake ctr: `images import -` keeps the archive; `images ls` lists what it imported
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
        let h = crate::host::local::LocalHost {
            name: "l".into(),
            root: root.clone(),
            bin: Some(bin),
        };
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

    #[test]
    fn removals_a_pod_uses_are_kept() {
        let r = |reference: &str, digest: &str, aliases: &[&str]| ImageRemoval {
            reference: reference.into(),
            digest: digest.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
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
            },
            ImageRemoval {
                reference: "aion.local/b:1".into(),
                digest: "sha256:bold".into(),
                aliases: vec![],
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
}
