//! Device to device (`imagesFrom`): a host fetches the blobs it lacks from another host of the
//! inventory (its *relay*) over the devices' own network, so each blob crosses the operator's
//! link once — the container-deployment-system's flow without a registry on every device.
//!
//! * **Plan** ([`relay_blobs`], pure): the relay receives from the operator, besides its own
//!   images, the blobs its fetchers lack that it will not hold itself (kept apart in
//!   [`RELAY_DIR`], never imported); each fetcher's [`ImageChange`]s name the relay (`from`).
//! * **Trust:** no device gets a lasting key to another. For one apply, the operator makes a
//!   key pair; the relay's login user authorises its public key with `restrict`, `from=` the
//!   fetchers' addresses, an `expiry-time` and a forced command ([`SERVE_SCRIPT`]) that can
//!   only print blobs by digest ([`relay_script`]); each fetcher gets the private key on stdin
//!   (into its staging directory, removed on exit) and checks the relay's host key against the
//!   operator's known_hosts lines for it ([`fetch_script`]); after the fetchers ended, the key
//!   is removed and the kept blobs deleted ([`relay_cleanup_script`]), also when one failed.
//! * **Fetch:** the relay's blobs stream through `ssh` into the same `get` that checks size and
//!   SHA-256 of what the operator sends, then the same import: a cut stream leaves only
//!   verified blobs in the fetcher's cache, and the next apply fetches the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::shell::{path_expr, sh_quote};

use super::plan::ImageChange;
use super::sources::{Blob, SourceImage};
use super::transfer::{STAGING_DIR, get_lines, import_tail, receive_header};

/// Where a relay keeps the blobs it received only for its fetchers (not imported there).
pub const RELAY_DIR: &str = "/var/lib/aion/images/relay";
/// The relay's forced command: prints the blobs named by its arguments (digests), from the
/// kept blobs, the blob cache or containerd's content store; refuses anything else.
pub const SERVE_SCRIPT: &str = "/var/lib/aion/images/serve-blobs";
/// The comment of an authorised relay key (followed by the apply's nonce): every line with it
/// is removed by the next relay script or cleanup.
pub const KEY_COMMENT: &str = "aion-image-relay-";
/// How long an authorised relay key is accepted for new connections (a fetch already running
/// is not cut): long enough for every fetcher to start, short enough that a key left by an
/// apply that crashed is useless soon.
pub const KEY_HOURS: u32 = 2;

/// How a fetcher reaches its relay: from the inventory at plan time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelaySource {
    pub host: String,
    pub address: String,
    #[serde(skip)]
    pub port: u16,
    /// The relay's SSH login user (whose `authorized_keys` gets the key for one apply).
    #[serde(skip)]
    pub user: String,
    /// The operator's known_hosts file with the relay's host key (None: ssh's default).
    #[serde(skip)]
    pub known_hosts: Option<PathBuf>,
}

impl RelaySource {
    /// The name the relay's host key is recorded under: `addr`, or `[addr]:port`.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.address.clone()
        } else {
            format!("[{}]:{}", self.address, self.port)
        }
    }
}

/// Which host fetches from which (`imagesFrom`, validated: the relay is another host that
/// receives from the operator): fetcher → how it reaches its relay.
pub fn routes(inv: &aion_model::inventory::Inventory) -> BTreeMap<String, RelaySource> {
    inv.hosts
        .iter()
        .filter_map(|h| {
            let r = inv.host(h.images_from.as_deref()?)?;
            Some((
                h.name.clone(),
                RelaySource {
                    host: r.name.clone(),
                    address: r.address.clone(),
                    port: r.ssh.port,
                    user: r.ssh.user.clone(),
                    known_hosts: inv.known_hosts.clone(),
                },
            ))
        })
        .collect()
}

/// What a relay does for its fetchers in one apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Relay {
    /// The hosts that fetch from it (with images to fetch).
    #[serde(rename = "for")]
    pub for_hosts: Vec<String>,
    /// Their addresses (the key is accepted only from these when all are IP addresses).
    #[serde(skip)]
    pub for_addresses: Vec<String>,
    /// Blobs it receives from the operator only to pass on, and their bytes.
    pub blobs: usize,
    pub bytes: u64,
    #[serde(skip)]
    pub send: Vec<Blob>,
}

impl Relay {
    /// The plan line's text after the sign.
    pub fn describe(&self) -> String {
        format!(
            "relay images for {} ({} to send: {} blob(s) kept only for them)",
            self.for_hosts.join(", "),
            super::plan::human_bytes(self.bytes),
            self.blobs
        )
    }
}

/// The blobs a relay must receive only to pass on: those its fetchers' changes send that it
/// neither has (`relay_content`) nor gets with its own images (`relay_images`: after its
/// import every blob of them is in its content store). In the fetchers' order, each once.
pub fn relay_blobs<'a>(
    fetchers: impl IntoIterator<Item = &'a [ImageChange]>,
    relay_content: &BTreeSet<String>,
    relay_images: &[SourceImage],
) -> Vec<Blob> {
    let mut held: BTreeSet<&str> = relay_content.iter().map(String::as_str).collect();
    for img in relay_images {
        held.extend(img.blobs.iter().map(|b| b.digest.as_str()));
    }
    let mut out: Vec<Blob> = Vec::new();
    for changes in fetchers {
        for b in changes.iter().flat_map(|c| &c.send) {
            if !held.contains(b.digest.as_str()) && !out.iter().any(|o| o.digest == b.digest) {
                out.push(b.clone());
            }
        }
    }
    out
}

/// The key line a relay authorises: the public key `public` (one OpenSSH line), forced to
/// [`SERVE_SCRIPT`], no pty or forwarding (`restrict`), only from `from` when all are IP
/// addresses, until `$exp` (set by the script). As shell words: printf's format and arguments.
fn key_line(user: &str, public: &str, nonce: &str, from: &[String]) -> String {
    let serve = if user == "root" {
        format!("/bin/sh {SERVE_SCRIPT} $SSH_ORIGINAL_COMMAND")
    } else {
        format!("sudo -n /bin/sh {SERVE_SCRIPT} $SSH_ORIGINAL_COMMAND")
    };
    let from = if !from.is_empty() && from.iter().all(|a| a.parse::<std::net::IpAddr>().is_ok()) {
        format!("from=\"{}\",", from.join(","))
    } else {
        String::new()
    };
    let key = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "'%s%s%s\\n' {} \"$exp\" {}",
        sh_quote(&format!("restrict,{from}expiry-time=\"")),
        sh_quote(&format!(
            "\",command=\"{serve}\" {key} {KEY_COMMENT}{nonce}"
        )),
    )
}

/// Rewrite the login user's `authorized_keys` without aion's relay keys, then append what
/// `append` prints (shell commands); owner and mode kept, replaced by rename. Without
/// `append` (the cleanup), a missing file stays missing.
fn rewrite_authorized_keys(append: Option<&str>) -> String {
    let missing = match append {
        Some(_) => {
            "{ mkdir -p \"${AK%/*}\"; : > \"$AK\"; chmod 600 \"$AK\"; chown \"$U\" \"$AK\" 2>/dev/null || true; }"
        }
        None => "AK=",
    };
    let append = append.unwrap_or(":;");
    format!(
        "AK={ak}\n[ -e \"$AK\" ] || {missing}\nif [ -n \"$AK\" ]; then\n\
         t=$(mktemp \"${{AK%/*}}/.aion-tmp.XXXXXX\")\n\
         {{ grep -v -e {pat} \"$AK\" || true; {append} }} > \"$t\"\n\
         chmod --reference=\"$AK\" \"$t\" && chown --reference=\"$AK\" \"$t\" && mv -f \"$t\" \"$AK\" || {{ rm -f \"$t\"; exit 9; }}\nfi\n",
        ak = path_expr("~/.ssh/authorized_keys"),
        pat = sh_quote(&format!(" {KEY_COMMENT}[0-9a-f]*$")),
    )
}

/// The relay's forced command (see [`SERVE_SCRIPT`]). Its paths are relative to where it is
/// (the staging directory), so that it names the same directories as the scripts that wrote
/// them, also under a test's root.
fn serve_script() -> String {
    let rel = |p: &str| {
        p.strip_prefix(STAGING_DIR)
            .unwrap_or(p)
            .trim_start_matches('/')
            .to_string()
    };
    format!(
        "#!/bin/sh\n# Written by aion-reconcile (imagesFrom): prints image blobs by digest to the hosts that fetch from this one.\n\
         here=$(dirname \"$0\")\n\
         for d in \"$@\"; do\n  \
         case $d in ''|*[!0-9a-f]*) echo \"refused: '$d' is not a blob digest\" >&2; exit 2 ;; esac\n  \
         [ ${{#d}} = 64 ] || {{ echo \"refused: '$d' is not a blob digest\" >&2; exit 2; }}\n  \
         if [ -f \"$here/{relay}/$d\" ]; then cat \"$here/{relay}/$d\" || exit 3\n  \
         elif [ -f \"$here/{cache}/$d\" ]; then cat \"$here/{cache}/$d\" || exit 3\n  \
         else ctr -n k8s.io content get \"sha256:$d\" || {{ echo \"this host has no blob sha256:$d\" >&2; exit 3; }}\n  fi\ndone\n",
        relay = rel(&format!("{RELAY_DIR}/sha256")),
        cache = rel(crate::facts::IMAGE_BLOB_CACHE),
    )
}

/// The relay's script: receive its own images' blobs (into the cache, then import them, as
/// [`super::receive_script`]) and the blobs kept only for its fetchers (into [`RELAY_DIR`]),
/// each checked on arrival; write [`SERVE_SCRIPT`]; authorise `public` for this apply (see
/// [`key_line`]). Exit 8: no GNU `date -d` for the expiry; 9: authorized_keys not rewritten.
pub fn relay_script(
    user: &str,
    changes: &[ImageChange],
    relay: &Relay,
    public: &str,
    nonce: &str,
) -> String {
    let mut s = receive_header(user);
    let kept = format!("{}/sha256", RELAY_DIR);
    s.push_str(&format!("K={}\nmkdir -p \"$K\"\n", path_expr(&kept)));
    s.push_str(&get_lines(changes.iter().flat_map(|c| &c.send), None));
    s.push_str(&get_lines(relay.send.iter(), Some("\"$K\"")));
    // Its own new blobs stay servable as files too (hard links, no copy): `cat` serves them
    // faster than `ctr content get` once they are imported.
    s.push_str(
        "for f in \"$C\"/*; do if [ -f \"$f\" ]; then ln -f \"$f\" \"$K/${f##*/}\"; fi; done\n",
    );
    s.push_str(&import_tail(changes));
    s.push_str(&format!(
        "t=$(mktemp \"$D/.serve.XXXXXX\")\nprintf '%s' {} > \"$t\"\nchmod 755 \"$t\"\nmv -f \"$t\" {}\n",
        sh_quote(&serve_script()),
        path_expr(SERVE_SCRIPT)
    ));
    s.push_str(&format!(
        "exp=$(date -d '+{KEY_HOURS} hours' +%Y%m%d%H%M) || {{ echo \"no GNU date here: cannot give the relay key an expiry\" >&2; exit 8; }}\n"
    ));
    s.push_str(&rewrite_authorized_keys(Some(&format!(
        "printf {};",
        key_line(user, public, nonce, &relay.for_addresses)
    ))));
    s
}

/// After its fetchers ended: the relay's key removed from `authorized_keys`, the kept blobs
/// deleted (what it imported for itself stays).
pub fn relay_cleanup_script(user: &str) -> String {
    let mut s = crate::shell::prelude(user);
    s.push_str("set -e\n");
    s.push_str(&rewrite_authorized_keys(None));
    s.push_str(&format!("rm -rf {}\n", path_expr(RELAY_DIR)));
    s
}

/// A fetcher's script: the private key (its first `key_len` bytes of stdin) and the relay's
/// known_hosts lines into the staging directory; `ssh` to the relay asking for the blobs its
/// changes need, in order, streamed into the same `get` (size and SHA-256 checked) and import
/// as [`super::receive_script`]. Exit 7: no ssh client, or the fetch failed (ssh's message on
/// stderr).
pub fn fetch_script(
    user: &str,
    changes: &[ImageChange],
    from: &RelaySource,
    known_hosts: &[String],
    key_len: usize,
) -> String {
    let mut s = receive_header(user);
    s.push_str(&format!(
        "command -v ssh >/dev/null 2>&1 || {{ echo \"no ssh client on this host: it cannot fetch images from {h} (install openssh-client, or remove imagesFrom)\" >&2; exit 7; }}\n\
         via={via}\nhead -c {key_len} > \"$S/key\"\nchmod 600 \"$S/key\"\nprintf '%s\\n' {kh} > \"$S/known_hosts\"\nmkfifo \"$S/in\"\n",
        h = from.host,
        via = sh_quote(&format!("the fetch from {}", from.host)),
        kh = known_hosts
            .iter()
            .map(|l| sh_quote(l))
            .collect::<Vec<_>>()
            .join(" "),
    ));
    let digests: Vec<String> = changes
        .iter()
        .flat_map(|c| &c.send)
        .map(|b| sh_quote(b.digest.trim_start_matches("sha256:")))
        .collect();
    s.push_str(&format!(
        "ssh -F /dev/null -i \"$S/key\" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
         -o UserKnownHostsFile=\"$S/known_hosts\" -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=15 \
         -o ServerAliveInterval=15 -p {port} {dest} {digests} > \"$S/in\" &\nsp=$!\nexec < \"$S/in\"\n",
        port = from.port,
        dest = sh_quote(&format!("{}@{}", from.user, from.address)),
        digests = digests.join(" "),
    ));
    s.push_str(&get_lines(changes.iter().flat_map(|c| &c.send), None));
    s.push_str(&format!(
        "if wait \"$sp\"; then sp=; else sp=; echo \"fetching blobs from {} failed (ssh's message above)\" >&2; exit 7; fi\n",
        from.host
    ));
    s.push_str(&import_tail(changes));
    s
}
