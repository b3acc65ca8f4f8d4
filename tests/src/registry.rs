//! A real registry for the tests: Debian's `docker-registry` (the CNCF distribution registry)
//! on a free loopback port with its storage in a scratch directory, stopped when dropped; and
//! a push of an OCI layout's images with the distribution API, as `docker push` does.
//!
//! [`start`] returns None (after `SKIPPED:`) without the package, or fails under
//! `AION_REQUIRE_TESTBED=1` (CI installs it with the testbed's packages).

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The running registry.
pub struct Registry {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT`, the domain of the references it serves.
    pub domain: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start a registry, or None when the package is missing (a failure under CI).
pub fn start() -> Option<Registry> {
    if Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_err()
    {
        let env = crate::testbed::REQUIRE_ENV;
        let why = "docker-registry is not installed (Debian's package docker-registry)";
        if std::env::var(env).is_ok_and(|v| v == "1") {
            panic!("{env}=1 but {why}");
        }
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().join("data").display()
    );
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start docker-registry");
    let url = format!("http://127.0.0.1:{port}");
    let reg = Registry {
        child,
        url: url.clone(),
        domain: format!("127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ureq::get(&format!("{url}/v2/"))
            .call()
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "docker-registry did not answer on {url}: {}",
            std::fs::read_to_string(reg._dir.path().join("registry.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(reg)
}

impl Registry {
    /// Where the registry stores a blob (its filesystem driver's layout): a test may change the
    /// bytes it serves, which a registry does not check again when serving.
    pub fn stored_blob(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Push every image `index.json` of the OCI layout `layout` names (by
    /// `io.containerd.image.name` or `org.opencontainers.image.ref.name`) to `repo:tag` here,
    /// with the blobs and manifests it needs (an index's variants included, as far as the
    /// layout has them). Returns the references pushed (`domain/repo:tag`).
    pub fn push_layout(
        &self,
        layout: &Path,
        as_repo: &dyn Fn(&str) -> (String, String),
    ) -> Vec<String> {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mut pushed = Vec::new();
        for d in index["manifests"].as_array().unwrap() {
            let name = d["annotations"]["io.containerd.image.name"]
                .as_str()
                .or_else(|| d["annotations"]["org.opencontainers.image.ref.name"].as_str());
            let Some(name) = name else { continue };
            let (repo, tag) = as_repo(name);
            self.push_manifest(layout, &repo, d, Some(&tag));
            pushed.push(format!("{}/{repo}:{tag}", self.domain));
        }
        pushed
    }

    fn push_manifest(&self, layout: &Path, repo: &str, d: &serde_json::Value, tag: Option<&str>) {
        let digest = d["digest"].as_str().unwrap();
        let bytes = read_blob(layout, digest).expect("the manifest is in the layout");
        let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        if let Some(children) = m["manifests"].as_array() {
            for c in children {
                if read_blob(layout, c["digest"].as_str().unwrap()).is_some() {
                    self.push_manifest(layout, repo, c, None);
                }
            }
        } else {
            let mut blobs = vec![m["config"].clone()];
            blobs.extend(m["layers"].as_array().unwrap().iter().cloned());
            for b in blobs {
                let bd = b["digest"].as_str().unwrap();
                self.push_blob(
                    repo,
                    bd,
                    &read_blob(layout, bd).expect("blob in the layout"),
                );
            }
        }
        let media_type = m["mediaType"]
            .as_str()
            .or_else(|| d["mediaType"].as_str())
            .unwrap()
            .to_string();
        let url = format!("{}/v2/{repo}/manifests/{}", self.url, tag.unwrap_or(digest));
        let r = ureq::put(&url)
            .header("Content-Type", &media_type)
            .send(&bytes[..])
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        assert_eq!(r.status(), 201, "PUT {url}");
    }

    fn push_blob(&self, repo: &str, digest: &str, bytes: &[u8]) {
        let start = format!("{}/v2/{repo}/blobs/uploads/", self.url);
        let r = ureq::post(&start)
            .send_empty()
            .unwrap_or_else(|e| panic!("POST {start}: {e}"));
        assert_eq!(r.status(), 202, "POST {start}");
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.url)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        let r = ureq::put(&put)
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .unwrap_or_else(|e| panic!("PUT {put}: {e}"));
        assert_eq!(r.status(), 201, "PUT {put}");
    }
}

fn read_blob(layout: &Path, digest: &str) -> Option<Vec<u8>> {
    std::fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .ok()
}
