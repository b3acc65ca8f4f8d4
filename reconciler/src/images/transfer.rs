//! The receiving script and its input: blobs streamed, verified on arrival, imported.

use serde::Serialize;

use crate::facts::IMPORTED_LABEL;
use crate::host::Input;
use crate::shell::{path_expr, sh_quote};

use super::plan::ImageChange;
use super::sources::{ANNOTATION_CONTAINERD_NAME, Blob};

/// Where a host stages received blobs: the blob being received in a fresh `.staging.*`
/// directory per apply (removed at its end), each verified blob in
/// [`crate::facts::IMAGE_BLOB_CACHE`] beneath it until the import.
pub const STAGING_DIR: &str = "/var/lib/aion/images";

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
    let mut s = receive_header(user);
    s.push_str(&get_lines(changes.iter().flat_map(|c| &c.send), None));
    s.push_str(&import_tail(changes));
    s
}

/// The start of every receiving script: `ctr` checked, the staging directory `$S` (removed on
/// every exit, with the background fetch `$sp` when there is one), and `get DIGEST SIZE [DIR]`,
/// which reads one blob from stdin, checks its size and SHA-256 and moves it into `DIR` (the
/// blob cache `$C` by default).
pub(super) fn receive_header(user: &str) -> String {
    let mut s = crate::shell::prelude(user);
    s.push_str(
        "command -v ctr >/dev/null 2>&1 || { echo \"no ctr on this host: containerd must be installed before images are imported\" >&2; exit 6; }\n",
    );
    s.push_str(&format!(
        "set -e\nD={}\nC={}\nmkdir -p \"$C\"\nS=$(mktemp -d \"$D/.staging.XXXXXX\")\nsp=\nvia='the stream'\n\
         trap '[ -z \"$sp\" ] || kill \"$sp\" 2>/dev/null || true; rm -rf \"$S\"' EXIT\ntrap 'exit 130' INT TERM HUP PIPE\n\
         get() {{\n  head -c \"$2\" > \"$S/blob\"\n  n=$(stat -c %s \"$S/blob\")\n  \
         if [ \"$n\" != \"$2\" ]; then echo \"blob sha256:$1: received $n of $2 bytes ($via ended early); nothing imported\" >&2; exit 3; fi\n  \
         h=$(sha256sum \"$S/blob\" | cut -d' ' -f1)\n  \
         if [ \"$h\" != \"$1\" ]; then echo \"refused: blob sha256:$1 does not match its digest (its content is sha256:$h); nothing imported\" >&2; exit 4; fi\n  \
         mv \"$S/blob\" \"${{3:-$C}}/$1\"\n  \
         printf '{RECEIVED}\\tsha256:%s\\t%s\\n' \"$1\" \"$2\"\n}}\n",
        path_expr(STAGING_DIR),
        path_expr(crate::facts::IMAGE_BLOB_CACHE),
    ));
    s
}

/// One `get` per blob, in order; into `dir` (a shell word) instead of the blob cache.
pub(super) fn get_lines<'a>(blobs: impl Iterator<Item = &'a Blob>, dir: Option<&str>) -> String {
    blobs
        .map(|b| {
            let hex = b.digest.trim_start_matches("sha256:");
            match dir {
                Some(d) => format!("get {} {} {d}\n", sh_quote(hex), b.size),
                None => format!("get {} {}\n", sh_quote(hex), b.size),
            }
        })
        .collect()
}

/// The end of a receiving script: import `changes` from the blob cache, check that containerd
/// names each image at its digest, label it, empty the cache. Nothing when there is nothing to
/// import (a relay that only keeps blobs for others).
pub(super) fn import_tail(changes: &[ImageChange]) -> String {
    if changes.is_empty() {
        return String::new();
    }
    // The archive's `blobs/sha256` is the cache: this apply's blobs and those a cut one left.
    let mut s = format!(
        "printf '%s' '{{\"imageLayoutVersion\":\"1.0.0\"}}' > \"$S/oci-layout\"\nprintf '%s' {} > \"$S/index.json\"\n\
         (cd \"$S\" && tar -cf - oci-layout index.json -C \"$D\" blobs) | ctr -n k8s.io images import - >&2\n\
         have=$(ctr -n k8s.io images ls | awk 'NR > 1 {{print $1 \" \" $3}}')\n\
         t=$(date +%s%N)\n",
        sh_quote(&index_json(changes))
    );
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
    /// The host the blobs came from (`imagesFrom`); None: from this machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
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
