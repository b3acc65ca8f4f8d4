//! What each host's containerd lacks: only the blobs its content store does not have.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use crate::facts::ContainerdFacts;

use super::sources::{Blob, SourceImage};

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
    /// Of a multi-platform index: the platform whose variant the host gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The host the blobs come from (`imagesFrom`), instead of this machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
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
            platform: super::platform::is_index(&img.media_type)
                .then(|| img.platform.as_ref().map(ToString::to_string))
                .flatten(),
            from: None,
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
        let how = match &self.from {
            Some(h) => format!("from {h}"),
            None => "to send".into(),
        };
        let variant = match &self.platform {
            Some(p) => format!("{p} of the index; "),
            None => String::new(),
        };
        let mut s = format!(
            "image {} — {} ({variant}{} {how}: {} of {} blobs)",
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
