//! A registry the operator's machine reaches, as an image source (`imageSources:
//! [http://host:port]`): it serves the references whose domain is its `host[:port]`, as a pull
//! would. Read with the OCI distribution API (`/v2/<name>/manifests/<tag|digest>`,
//! `/v2/<name>/blobs/<digest>`), anonymously or with the bearer token its challenge offers.
//!
//! At plan: the manifest (an index's too, and each variant's), and a single manifest's config
//! (its platform), each small, verified by digest and kept in a local blob cache beside the
//! inventory. Layers only at apply, and only those some host lacks ([`fetch_blobs`]): each is
//! downloaded once per apply whatever the number of hosts, to a temporary name, verified by
//! size and SHA-256, then renamed into the cache, from where it is sent like a file source's
//! blob. The devices never talk to the registry.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest as _;

use super::error::ImageError;
use super::platform::Platform;
use super::sources::{Blob, Config, Descriptor, Manifest, SourceImage, Variant};

/// What a manifest request accepts: OCI's and Docker's manifests and indexes.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";
/// Manifests, indexes and configs larger than this are refused (they are JSON of a few KiB).
const MAX_JSON: u64 = 4 << 20;

/// One registry of `imageSources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// `http(s)://host[:port]`, no trailing slash.
    pub url: String,
    /// The domain of the references it serves (`host[:port]`).
    pub domain: String,
}

impl Registry {
    pub fn new(url: &str) -> Registry {
        let url = url.trim_end_matches('/').to_string();
        let domain = url
            .split_once("://")
            .map_or(url.as_str(), |(_, rest)| rest)
            .to_string();
        Registry { url, domain }
    }

    /// `(repository, tag or digest)` of a normalised reference this registry serves.
    pub fn serves<'a>(&self, reference: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = reference.strip_prefix(&self.domain)?.strip_prefix('/')?;
        if let Some((repo, digest)) = rest.split_once('@') {
            return Some((repo, digest));
        }
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        match rest[slash..].rfind(':') {
            Some(i) => Some((&rest[..slash + i], &rest[slash + i + 1..])),
            None => Some((rest, "latest")),
        }
    }

    fn blob_url(&self, repo: &str, digest: &str) -> String {
        format!("{}/v2/{repo}/blobs/{digest}", self.url)
    }
}

/// A registry's answers: the agent (its connections kept), and the bearer token of the last
/// challenge answered.
struct Client {
    registry: Registry,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Client {
    fn new(registry: Registry) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            // (layers stream for as long as they take; a stalled read ends the request)
            .timeout_recv_body(None)
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .build()
            .into();
        Client {
            registry,
            agent,
            token: None,
        }
    }

    fn err(&self, message: String) -> ImageError {
        ImageError::Source {
            path: PathBuf::from(&self.registry.url),
            message,
        }
    }

    /// [`Client::get`], but None for HTTP 404.
    fn get_unless_404(
        &mut self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<Option<ureq::http::Response<ureq::Body>>, ImageError> {
        self.request(url, accept, true)
    }

    /// GET `url`; on 401 with a Bearer challenge, the anonymous token it offers, then again.
    fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, ImageError> {
        self.request(url, accept, false)
            .map(|r| r.expect("None only for a 404 when allowed"))
    }

    fn request(
        &mut self,
        url: &str,
        accept: Option<&str>,
        none_if_404: bool,
    ) -> Result<Option<ureq::http::Response<ureq::Body>>, ImageError> {
        for attempt in 0..2 {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(t) = &self.token {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            let resp = req
                .call()
                .map_err(|e| self.err(format!("GET {url}: {e}")))?;
            if resp.status() == 401 && attempt == 0 {
                let challenge = header(&resp, "www-authenticate");
                self.token = Some(self.bearer_token(&challenge, url)?);
                continue;
            }
            if resp.status() == 404 && none_if_404 {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(self.err(format!("GET {url}: HTTP {}", resp.status())));
            }
            return Ok(Some(resp));
        }
        Err(self.err(format!(
            "GET {url}: refused (HTTP 401) with the token its challenge gave"
        )))
    }

    /// The anonymous token of a `Bearer realm="…",service="…",scope="…"` challenge.
    fn bearer_token(&self, challenge: &str, url: &str) -> Result<String, ImageError> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Err(self.err(format!(
                "GET {url}: HTTP 401 ({}); only anonymous access and bearer tokens are supported",
                if challenge.is_empty() {
                    "no challenge"
                } else {
                    challenge
                }
            )));
        };
        let field = |name: &str| {
            params.split(',').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_string())
            })
        };
        let realm = field("realm")
            .ok_or_else(|| self.err(format!("GET {url}: challenge without realm: {challenge}")))?;
        let mut query = Vec::new();
        for k in ["service", "scope"] {
            if let Some(v) = field(k) {
                query.push(format!("{k}={}", v.replace(' ', "%20")));
            }
        }
        let token_url = if query.is_empty() {
            realm
        } else {
            format!("{realm}?{}", query.join("&"))
        };
        let mut resp = self
            .agent
            .get(&token_url)
            .call()
            .map_err(|e| self.err(format!("token from {token_url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(self.err(format!("token from {token_url}: HTTP {}", resp.status())));
        }
        let bytes =
            read_small(&mut resp).map_err(|e| self.err(format!("token from {token_url}: {e}")))?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.err(format!("token from {token_url}: {e}")))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| self.err(format!("token from {token_url}: no token in the answer")))
    }

    /// A manifest or index by tag or digest: its bytes, checked against the digest when asked
    /// by one, and its digest. None when the registry does not have it (HTTP 404).
    fn manifest(
        &mut self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<(Vec<u8>, String, String)>, ImageError> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.registry.url);
        let Some(mut resp) = self.get_unless_404(&url, Some(ACCEPT))? else {
            return Ok(None);
        };
        let content_type = header(&resp, "content-type");
        let bytes = read_small(&mut resp).map_err(|e| self.err(format!("GET {url}: {e}")))?;
        let digest = sha256(&bytes);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(self.err(format!(
                "GET {url}: the manifest does not match its digest (its content is {digest})"
            )));
        }
        Ok(Some((bytes, digest, content_type)))
    }

    /// A small blob (a config), verified, into the cache.
    fn small_blob(
        &mut self,
        repo: &str,
        d: &Descriptor,
        cache: &Path,
    ) -> Result<Vec<u8>, ImageError> {
        if d.size > MAX_JSON {
            return Err(self.err(format!(
                "{repo}: config {} is too large ({} bytes)",
                d.digest, d.size
            )));
        }
        let url = self.registry.blob_url(repo, &d.digest);
        let mut resp = self.get(&url, None)?;
        let bytes = read_small(&mut resp).map_err(|e| self.err(format!("GET {url}: {e}")))?;
        if sha256(&bytes) != d.digest || bytes.len() as u64 != d.size {
            return Err(self.err(format!(
                "GET {url}: the blob does not match its digest and size"
            )));
        }
        keep(cache, &d.digest, &bytes).map_err(|e| self.err(e))?;
        Ok(bytes)
    }
}

/// A header's text ("" when absent or not text).
fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A JSON body (manifest, config, token), at most [`MAX_JSON`] bytes.
fn read_small(resp: &mut ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, ureq::Error> {
    resp.body_mut().with_config().limit(MAX_JSON).read_to_vec()
}

/// `sha256:<hex>` of `b` (not `revision::sha256_hex`: `revision` depends on `images`).
fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Where the cache keeps a blob.
fn cached(cache: &Path, digest: &str) -> PathBuf {
    cache.join(digest.replace(':', "/"))
}

/// A manifest or index read from the registry, kept in the cache as the blob it is sent as.
fn keep_manifest(cache: &Path, digest: &str, bytes: &[u8]) -> Result<Blob, String> {
    Ok(Blob {
        digest: digest.to_string(),
        size: bytes.len() as u64,
        path: keep(cache, digest, bytes)?,
        offset: 0,
        remote: None,
    })
}

/// Write verified bytes into the cache (temporary name, then rename).
fn keep(cache: &Path, digest: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    let path = cached(cache, digest);
    if path.is_file() {
        return Ok(path);
    }
    let dir = path.parent().unwrap_or(cache);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    tmp.write_all(bytes)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    tmp.persist(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// A blob of `repo` as a [`Blob`]: in the cache (there already, or to be fetched at apply).
fn remote_blob(registry: &Registry, repo: &str, d: &Descriptor, cache: &Path) -> Blob {
    Blob {
        digest: d.digest.clone(),
        size: d.size,
        path: cached(cache, &d.digest),
        offset: 0,
        remote: Some(registry.blob_url(repo, &d.digest)),
    }
}

/// Every reference of `references` that one of `registries` serves and has, read from it into
/// an image (the first registry that has it); manifests and configs are kept in `cache`.
/// References no registry has are left out (the caller names them, with the host and the
/// microservice); a registry that cannot be read is an error.
pub fn read_images(
    registries: &[Registry],
    references: &BTreeSet<String>,
    cache: &Path,
) -> Result<Vec<SourceImage>, ImageError> {
    let mut out = Vec::new();
    for registry in registries {
        let mut client = Client::new(registry.clone());
        for reference in references {
            let Some((repo, tag)) = registry.serves(reference) else {
                continue;
            };
            if out.iter().any(|i: &SourceImage| &i.reference == reference) {
                continue;
            }
            if let Some(img) = read_image(&mut client, reference, repo, tag, cache)? {
                out.push(img);
            }
        }
    }
    Ok(out)
}

fn read_image(
    client: &mut Client,
    reference: &str,
    repo: &str,
    tag: &str,
    cache: &Path,
) -> Result<Option<SourceImage>, ImageError> {
    let registry = client.registry.clone();
    let what = format!("image {reference}");
    let Some((bytes, digest, content_type)) = client.manifest(repo, tag)? else {
        return Ok(None);
    };
    let top = keep_manifest(cache, &digest, &bytes).map_err(|e| client.err(e))?;
    let man: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| client.err(format!("{what}: manifest {digest}: {e}")))?;
    let media_type = if man.media_type.is_empty() {
        content_type
    } else {
        man.media_type.clone()
    };
    // config + layers of one image manifest
    let no_config = |d: &str| ImageError::Source {
        path: PathBuf::from(&registry.url),
        message: format!("{what}: manifest {d} has no config"),
    };
    let image_blobs = |man: &Manifest, d: &str| -> Result<Vec<Blob>, ImageError> {
        let config = man.config.as_ref().ok_or_else(|| no_config(d))?;
        let mut blobs = vec![remote_blob(&registry, repo, config, cache)];
        blobs.extend(
            man.layers
                .iter()
                .map(|l| remote_blob(&registry, repo, l, cache)),
        );
        Ok(blobs)
    };
    let (blobs, platform, variants) = match &man.manifests {
        None => {
            let blobs = image_blobs(&man, &digest)?;
            let config = man.config.as_ref().expect("checked by image_blobs");
            let c: Config = serde_json::from_slice(&client.small_blob(repo, config, cache)?)
                .map_err(|e| client.err(format!("{what}: config {}: {e}", config.digest)))?;
            ([vec![top], blobs].concat(), c.platform(), Vec::new())
        }
        Some(children) => {
            let mut variants = Vec::new();
            for c in children {
                let Some(platform) = c.platform.clone() else {
                    continue;
                };
                if platform.is_unknown() {
                    continue; // an attestation, not an image
                }
                let Some((bytes, d, _)) = client.manifest(repo, &c.digest)? else {
                    continue; // a platform the registry does not have
                };
                let manifest = keep_manifest(cache, &d, &bytes).map_err(|e| client.err(e))?;
                let child: Manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| client.err(format!("{what}: manifest {d}: {e}")))?;
                if child.manifests.is_some() {
                    continue;
                }
                variants.push(Variant {
                    platform,
                    blobs: [vec![manifest], image_blobs(&child, &d)?].concat(),
                });
            }
            if variants.is_empty() {
                return Err(client.err(format!(
                    "{what}: the multi-platform index {digest} names no platform"
                )));
            }
            (vec![top], None::<Platform>, variants)
        }
    };
    Ok(Some(SourceImage {
        reference: reference.to_string(),
        digest,
        media_type,
        blobs,
        platform,
        variants,
        source: PathBuf::from(&registry.url),
    }))
}

/// Download every blob of `blobs` that comes from a registry and is not in the cache yet,
/// each once: streamed to a temporary name beside its place, checked for size and SHA-256,
/// then renamed. What is there after an error is only verified blobs.
pub fn fetch_blobs<'a>(blobs: impl IntoIterator<Item = &'a Blob>) -> Result<u64, ImageError> {
    let mut seen = BTreeSet::new();
    // One client per registry: its connections and its token serve every blob from it.
    let mut clients: BTreeMap<String, Client> = BTreeMap::new();
    let mut fetched = 0;
    for b in blobs {
        let Some(url) = &b.remote else { continue };
        if b.path.is_file() || !seen.insert(b.digest.clone()) {
            continue;
        }
        let base = &url[..url.find("/v2/").unwrap_or(url.len())];
        let client = clients
            .entry(base.to_string())
            .or_insert_with(|| Client::new(Registry::new(base)));
        let mut resp = client.get(url, None)?;
        let dir = b.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| client.err(format!("{}: {e}", dir.display())))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| client.err(format!("{}: {e}", dir.display())))?;
        let mut hasher = sha2::Sha256::new();
        let mut reader = resp
            .body_mut()
            .with_config()
            .limit(b.size.saturating_add(1))
            .reader();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            let k = reader
                .read(&mut buf)
                .map_err(|e| client.err(format!("GET {url}: {e}")))?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
            tmp.write_all(&buf[..k])
                .map_err(|e| client.err(format!("{}: {e}", dir.display())))?;
            n += k as u64;
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if n != b.size || got != b.digest {
            return Err(client.err(format!(
                "blob {} from {url}: {n} of {} bytes, content {got}: refused, nothing kept",
                b.digest, b.size
            )));
        }
        tmp.persist(&b.path)
            .map_err(|e| client.err(format!("{}: {e}", b.path.display())))?;
        fetched += n;
    }
    Ok(fetched)
}
