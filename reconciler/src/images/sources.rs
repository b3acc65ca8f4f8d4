//! Image sources on the operator's machine: OCI layout directories, OCI archives (read in
//! place by a small tar reader that records each member's byte offset) and `images.tsv` lists.

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::host::Input;

use super::error::ImageError;
use super::platform::{Platform, best};
use super::reference::normalize;

pub(super) const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
pub(super) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Manifests and indexes larger than this are refused (they are JSON of a few KiB).
const MAX_JSON: u64 = 4 << 20;

/// A blob: digest, size and where its bytes are on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(skip)]
    pub offset: u64,
    /// Where a registry serves it, when it comes from one: fetched into `path` at apply
    /// (`registry::fetch_blobs`) when some host lacks it.
    #[serde(skip)]
    pub remote: Option<String>,
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
    /// The manifest first, then the config, then the layers; of a multi-platform index, the
    /// index, then (once [`SourceImage::for_platform`] chose) the variant's manifest, config
    /// and layers.
    pub blobs: Vec<Blob>,
    /// The platform the image runs on: its config's (a single manifest), the chosen variant's
    /// (an index after [`SourceImage::for_platform`]); None when the config names none.
    pub platform: Option<Platform>,
    /// A multi-platform index's variants whose content the source has (empty for a single
    /// manifest, and once one was chosen).
    pub variants: Vec<Variant>,
    /// The source (directory, archive or list) it was found in.
    pub source: PathBuf,
}

/// One platform's image in a multi-platform index: its manifest, config and layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub platform: Platform,
    pub blobs: Vec<Blob>,
}

impl SourceImage {
    pub fn total_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }

    /// This image as a host of `host`'s platform gets it. A multi-platform index keeps its
    /// digest (containerd names the image by the index, as `ctr images import` and a pull do)
    /// and gets the best variant's blobs after its own; only those are sent, the other
    /// platforms' never. A single manifest is itself, unless its config names another platform.
    /// The error says which platforms there are.
    pub fn for_platform(&self, host: &Platform) -> Result<SourceImage, String> {
        if self.variants.is_empty() {
            return match &self.platform {
                Some(p) if host.rank(p).is_none() => {
                    Err(format!("is built for {p} only; the host is {host}"))
                }
                _ => Ok(self.clone()),
            };
        }
        let Some(i) = best(host, self.variants.iter().map(|v| &v.platform)) else {
            let have: Vec<String> = self
                .variants
                .iter()
                .map(|v| v.platform.to_string())
                .collect();
            return Err(format!(
                "has no variant for {host} (the source has {})",
                have.join(", ")
            ));
        };
        let chosen = &self.variants[i];
        let mut img = self.clone();
        img.blobs.truncate(1);
        img.blobs.extend(chosen.blobs.iter().cloned());
        img.platform = Some(chosen.platform.clone());
        img.variants.clear();
        Ok(img)
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
pub(super) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(super) media_type: String,
    pub(super) digest: String,
    pub(super) size: u64,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) platform: Option<Platform>,
}

#[derive(serde::Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
pub(super) struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub(super) media_type: String,
    pub(super) config: Option<Descriptor>,
    #[serde(default)]
    pub(super) layers: Vec<Descriptor>,
    #[serde(default)]
    pub(super) manifests: Option<Vec<Descriptor>>,
}

/// What an image config says about its platform.
#[derive(serde::Deserialize)]
pub(super) struct Config {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Config {
    /// The platform it names; None without an architecture.
    pub(super) fn platform(self) -> Option<Platform> {
        (!self.architecture.is_empty()).then(|| Platform {
            os: if self.os.is_empty() {
                "linux".into()
            } else {
                self.os
            },
            architecture: self.architecture,
            variant: self.variant.filter(|v| !v.is_empty()),
        })
    }
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
            remote: None,
        })
    };
    // A manifest's config and layers, and the platform its config names.
    let image_blobs = |man: &Manifest,
                       digest: &str,
                       what: &str|
     -> Result<(Vec<Blob>, Option<Platform>), ImageError> {
        let config = man
            .config
            .as_ref()
            .ok_or_else(|| err(format!("{what}: manifest {digest} has no config")))?;
        let mut blobs = vec![blob(config, &format!("{what}: config"))?];
        for l in &man.layers {
            blobs.push(blob(l, &format!("{what}: layer"))?);
        }
        let name = blob_name(&config.digest).unwrap_or_default();
        let c: Config = serde_json::from_slice(&read_member(source, m, &name)?)
            .map_err(|e| err(format!("{what}: config {}: {e}", config.digest)))?;
        Ok((blobs, c.platform()))
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
        let (blobs, platform, variants) = match &man.manifests {
            None => {
                let (blobs, platform) = image_blobs(&man, &d.digest, &what)?;
                ([vec![manifest_blob], blobs].concat(), platform, Vec::new())
            }
            Some(children) => {
                let mut variants = Vec::new();
                for c in children {
                    if c.platform.as_ref().is_some_and(Platform::is_unknown) {
                        continue; // an attestation, not an image
                    }
                    // A platform whose manifest the source lacks (a partial export, as
                    // `docker save` of one platform writes) is not offered.
                    let Some(name) = blob_name(&c.digest).filter(|n| m.contains_key(n)) else {
                        continue;
                    };
                    let bytes = read_member(source, m, &name)?;
                    let child: Manifest = serde_json::from_slice(&bytes)
                        .map_err(|e| err(format!("{what}: manifest {}: {e}", c.digest)))?;
                    if child.manifests.is_some() {
                        continue; // an index in an index: not an image
                    }
                    let (blobs, from_config) = image_blobs(&child, &c.digest, &what)?;
                    let Some(platform) = c.platform.clone().or(from_config) else {
                        continue;
                    };
                    if platform.is_unknown() {
                        continue; // an attestation, not an image
                    }
                    variants.push(Variant {
                        platform,
                        blobs: [vec![blob(c, &format!("{what}: manifest"))?], blobs].concat(),
                    });
                }
                if variants.is_empty() {
                    return Err(err(format!(
                        "{what}: the multi-platform index {} has no platform whose manifest is in the source",
                        d.digest
                    )));
                }
                (vec![manifest_blob], None, variants)
            }
        };
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
                platform: platform.clone(),
                variants: variants.clone(),
                source: source.to_path_buf(),
            });
        }
    }
    Ok(out)
}
