//! Platforms: which variant of a multi-platform image a host gets, and whether a
//! single-platform image can run there at all (pure).
//!
//! Edge fleets mix x86 boxes, Jetsons and Raspberry Pis. A host's platform comes from its
//! facts (`uname -m`, mapped to OCI's names as containerd maps `runtime.GOARCH`); an image's
//! from its index entry's `platform` or, for a single manifest, its config's `architecture`,
//! `os` and `variant`. Matching follows containerd's default matcher: the OS and architecture
//! must be equal; `arm64` without a variant is `arm64/v8`; a 32-bit ARM host runs its own
//! variant or an older one (v7 runs v6 and v5), preferring the newest.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    fn new(architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// The platform of a Linux host whose `uname -m` is `machine`; None for a machine name
    /// this table does not know.
    pub fn of_machine(machine: &str) -> Option<Platform> {
        Some(match machine.trim() {
            "x86_64" | "amd64" => Platform::new("amd64", None),
            "aarch64" | "arm64" | "armv8l" => Platform::new("arm64", None),
            "armv7l" | "armv7" => Platform::new("arm", Some("v7")),
            "armv6l" | "armv6" => Platform::new("arm", Some("v6")),
            "armv5tel" | "armv5l" => Platform::new("arm", Some("v5")),
            "i386" | "i686" => Platform::new("386", None),
            "riscv64" => Platform::new("riscv64", None),
            "ppc64le" => Platform::new("ppc64le", None),
            "s390x" => Platform::new("s390x", None),
            _ => return None,
        })
    }

    /// The variant as containerd compares it (`arm64` alone is `arm64/v8`).
    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None) => Some("v8"),
            (_, v) => v,
        }
    }

    /// How well an image for `image` suits a host of this platform: None when it cannot run
    /// here, else a rank (lower is better: the host's own variant before older ones).
    pub fn rank(&self, image: &Platform) -> Option<u32> {
        if self.os != image.os || self.architecture != image.architecture {
            return None;
        }
        let (mine, theirs) = (self.normalized_variant(), image.normalized_variant());
        if mine == theirs {
            return Some(0);
        }
        if self.architecture != "arm" {
            // An image without a variant runs on any variant of its architecture.
            return theirs.is_none().then_some(1);
        }
        let n = |v: Option<&str>| v.and_then(|v| v.strip_prefix('v')?.parse::<u32>().ok());
        match (n(mine), n(theirs)) {
            (Some(m), Some(t)) if t < m => Some(m - t),
            (_, None) => Some(10),
            _ => None,
        }
    }

    /// Index entries that describe no runnable image (BuildKit's attestation manifests).
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" || self.architecture == "unknown"
    }
}

/// A media type of a multi-platform index (OCI's, or Docker's manifest list).
pub fn is_index(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.index.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
    )
}

/// The best of `candidates` for a host of `host`'s platform (its index in `candidates`).
pub fn best<'a>(host: &Platform, candidates: impl Iterator<Item = &'a Platform>) -> Option<usize> {
    candidates
        .enumerate()
        .filter_map(|(i, p)| Some((host.rank(p)?, i)))
        .min()
        .map(|(_, i)| i)
}
