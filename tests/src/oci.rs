//! OCI images written by the tests themselves (no registry is reachable): uncompressed tar
//! layers, an OCI image-layout directory, images for this machine's platform.

use std::path::PathBuf;

use sha2::Digest as _;

pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// A ustar archive of `files` (path → content) under one directory.
pub fn tar(dir: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let files: Vec<(&str, &[u8], &str)> = files.iter().map(|(n, c)| (*n, *c, "0000644")).collect();
    tar_modes(dir, &files)
}

/// A ustar archive of `files` (path → content, octal mode such as `0000755`) under one
/// directory.
pub fn tar_modes(dir: &str, files: &[(&str, &[u8], &str)]) -> Vec<u8> {
    fn header(name: &str, size: usize, kind: u8, mode: &str) -> [u8; 512] {
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
    let mut out = Vec::new();
    out.extend_from_slice(&header(&format!("{dir}/"), 0, b'5', "0000755"));
    for (name, content, mode) in files {
        out.extend_from_slice(&header(&format!("{dir}/{name}"), content.len(), b'0', mode));
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// `n` pseudo-random bytes from `seed` (xorshift): layers that do not compress away and differ
/// per run.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    // splitmix64 of the seed: every seed its own non-zero xorshift state (`seed | 1` made
    // seeds 2k and 2k+1 give the same bytes).
    let mut x = {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).max(1)
    };
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// This machine's architecture as OCI names it.
pub fn this_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Different per run (nanoseconds since the epoch): seeds [`noise`] so a test's layers are on
/// no host yet.
pub fn nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Another architecture than this machine's (for a variant no host here may receive).
pub fn other_arch() -> &'static str {
    if this_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

/// An OCI image-layout directory being written.
pub struct Layout {
    pub dir: PathBuf,
    index: Vec<serde_json::Value>,
}

/// One image written into a layout: its reference, manifest digest, blobs (digest, size) and
/// each layer's digest.
#[derive(Debug, Clone)]
pub struct Built {
    pub reference: String,
    pub digest: String,
    pub blobs: Vec<(String, u64)>,
    pub layers: Vec<String>,
}

impl Built {
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.1).sum()
    }
}

impl Layout {
    pub fn new(dir: PathBuf) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir,
            index: Vec::new(),
        }
    }

    pub fn put(&self, blob: &[u8]) -> (String, u64) {
        let d = digest(blob);
        std::fs::write(self.blob_path(&d), blob).unwrap();
        (d, blob.len() as u64)
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// An image of `layers` (uncompressed tars) named `reference`, for this machine's platform.
    pub fn image(&mut self, reference: &str, layers: &[Vec<u8>]) -> Built {
        self.image_cmd(reference, layers, &["/imgtest/none"])
    }

    /// An image of `layers` whose containers run `cmd`.
    pub fn image_cmd(&mut self, reference: &str, layers: &[Vec<u8>], cmd: &[&str]) -> Built {
        let built = self.unnamed(this_arch(), layers, cmd);
        self.name(
            reference,
            "application/vnd.oci.image.manifest.v1+json",
            &built.blobs[0],
        );
        Built {
            reference: reference.to_string(),
            ..built
        }
    }

    /// A multi-platform index named `reference` of `variants` (images written by
    /// [`Layout::unnamed`], each with its architecture): the index's digest, and as blobs the
    /// index only.
    pub fn index(&mut self, reference: &str, variants: &[(&Built, &str)]) -> Built {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": variants.iter().map(|(b, arch)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": b.digest, "size": b.blobs[0].1,
                "platform": {"architecture": arch, "os": "linux"},
            })).collect::<Vec<_>>(),
        })
        .to_string();
        let i = self.put(index.as_bytes());
        self.name(reference, "application/vnd.oci.image.index.v1+json", &i);
        Built {
            reference: reference.to_string(),
            digest: i.0.clone(),
            blobs: vec![i],
            layers: Vec::new(),
        }
    }

    /// `reference` → the manifest or index `blob` in `index.json`.
    fn name(&mut self, reference: &str, media_type: &str, blob: &(String, u64)) {
        self.index.push(serde_json::json!({
            "mediaType": media_type,
            "digest": blob.0, "size": blob.1,
            "annotations": {"io.containerd.image.name": reference},
        }));
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::json!({"schemaVersion": 2, "manifests": self.index}).to_string(),
        )
        .unwrap();
    }

    /// An image for `arch` that `index.json` does not name (a variant of an index).
    pub fn unnamed(&mut self, arch: &str, layers: &[Vec<u8>], cmd: &[&str]) -> Built {
        let ls: Vec<(String, u64)> = layers.iter().map(|l| self.put(l)).collect();
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": cmd},
            "rootfs": {"type": "layers", "diff_ids": ls.iter().map(|l| l.0.clone()).collect::<Vec<_>>()},
        })
        .to_string();
        let c = self.put(config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c.0, "size": c.1},
            "layers": ls.iter().map(|l| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l.0, "size": l.1
            })).collect::<Vec<_>>(),
        })
        .to_string();
        let m = self.put(manifest.as_bytes());
        let mut blobs = vec![m.clone(), c];
        blobs.extend(ls.iter().cloned());
        Built {
            reference: String::new(),
            digest: m.0,
            blobs,
            layers: ls.into_iter().map(|l| l.0).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::noise;

    #[test]
    fn neighbouring_seeds_give_different_bytes() {
        for seed in [0u64, 1, 2, 3, 1_000, 1_001, u64::MAX - 1] {
            assert_ne!(noise(seed, 64), noise(seed + 1, 64), "seed {seed}");
        }
        assert_eq!(noise(7, 64), noise(7, 64), "deterministic");
    }
}
