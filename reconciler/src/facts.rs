//! Facts: everything the checks need about one host, gathered by ONE script in one round trip
//! and parsed into [`HostFacts`].
//!
//! [`FactRequest`] lists what to look at (paths, packages, services, users, read-only checks);
//! [`FactRequest::script`] turns it into a POSIX shell script whose output is one record per
//! line, tab-separated, ending with `END`; [`parse`] reads that back. Both are pure.
//!
//! Paths may start with `~/` (the SSH user's home, looked up on the host with `getent`); facts
//! are keyed by the path as written. Every path is prefixed with `$AION_ROOT` (empty on real
//! hosts) so [`crate::host::local::LocalHost`] can run the same script under a scratch root.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;

use crate::shell::{path_expr, prelude, sh_quote};

/// What the checks of one host need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactRequest {
    /// The SSH user whose home `~` means, and whose groups are read.
    pub user: String,
    /// path → whether its content is needed (false: only the SHA-256, e.g. secrets).
    pub paths: BTreeMap<String, bool>,
    pub packages: BTreeSet<String>,
    pub services: BTreeSet<String>,
    pub users: BTreeSet<String>,
    /// check id → read-only shell snippet; exit status 0 means "already done".
    pub checks: BTreeMap<String, String>,
    /// What containerd's `k8s.io` namespace holds (images and content blobs): asked when the
    /// inventory has image sources.
    pub containerd: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathFact {
    Missing,
    File {
        mode: u32,
        owner: String,
        group: String,
        sha256: String,
        content: Option<Vec<u8>>,
    },
    Dir {
        mode: u32,
        owner: String,
        group: String,
    },
    /// Exists but is neither a regular file nor a directory.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFact {
    pub version: String,
    /// dpkg's `db:Status-Abbrev`, e.g. `ii ` (installed) or `hi ` (held, installed).
    pub status: String,
}

impl PackageFact {
    pub fn installed(&self) -> bool {
        self.status.as_bytes().get(1) == Some(&b'i')
    }
    pub fn held(&self) -> bool {
        self.status.as_bytes().first() == Some(&b'h')
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFact {
    /// `systemctl is-enabled` (`enabled`, `disabled`, `static`, ... or empty).
    pub enabled: String,
    /// `systemctl is-active` (`active`, `inactive`, ... or empty).
    pub active: String,
}

/// Everything known about one host after the facts round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// Runtime hostname (`hostname`).
    pub hostname: String,
    /// The SSH user's home directory.
    pub home: String,
    /// systemd is PID 1 (`/run/systemd/system` exists): `hostnamectl` usable.
    pub systemd: bool,
    /// The machine's hardware name (`uname -m`: `x86_64`, `aarch64`, `armv7l`): which variant
    /// of a multi-platform image the host gets.
    pub machine: String,
    pub paths: BTreeMap<String, PathFact>,
    /// Packages dpkg knows; absent = not installed.
    pub packages: BTreeMap<String, PackageFact>,
    pub services: BTreeMap<String, ServiceFact>,
    /// user → groups; None = no such user.
    pub users: BTreeMap<String, Option<BTreeSet<String>>>,
    pub checks: BTreeMap<String, bool>,
    /// containerd's `k8s.io` namespace, when asked for; None when not asked or `ctr` is missing
    /// or cannot reach containerd (then every image has to be sent).
    pub containerd: Option<ContainerdFacts>,
}

/// The label the receiving script (`images`) puts on each image it imports: when (nanoseconds
/// since the epoch). The host itself records the order of versions, so "the previous N" does
/// not depend on tags being comparable; images without it (preloaded, or imported by hand)
/// count as older than any labelled one.
pub const IMPORTED_LABEL: &str = "aion.io/imported";

/// Where a host keeps image blobs that arrived and were verified but are not imported yet
/// (`images::receive_script` moves each one here as soon as its digest checks out, and empties
/// it after an import): an apply cut mid-transfer resumes from them.
pub const IMAGE_BLOB_CACHE: &str = "/var/lib/aion/images/blobs/sha256";

/// What containerd already holds (`ctr -n k8s.io images ls`, `content ls -q`), and the blobs
/// waiting in [`IMAGE_BLOB_CACHE`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerdFacts {
    /// image reference → manifest (or index) digest.
    pub images: BTreeMap<String, String>,
    /// Digests of the committed content blobs.
    pub content: BTreeSet<String>,
    /// image reference → when `apply` imported it (the `aion.io/imported` label, ns since the
    /// epoch); images without the label are not here.
    pub imported: BTreeMap<String, u64>,
    /// Digests of verified blobs in [`IMAGE_BLOB_CACHE`] (a cut transfer's), not yet imported.
    pub staged: BTreeSet<String>,
}

impl HostFacts {
    pub fn path(&self, p: &str) -> &PathFact {
        self.paths.get(p).unwrap_or(&PathFact::Missing)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FactsError {
    #[error("facts output of {host} is cut short (no END line): {stderr}")]
    Truncated { host: String, stderr: String },
    #[error("facts output of {host}, line {line}: {message}")]
    Malformed {
        host: String,
        line: usize,
        message: String,
    },
}

impl FactRequest {
    /// The one script that prints every fact (read-only).
    pub fn script(&self) -> String {
        let mut s = prelude(&self.user);
        s.push_str(
            r#"printf 'HOSTNAME\t%s\n' "$(hostname 2>/dev/null)"
printf 'HOME\t%s\n' "$UH"
printf 'MACHINE\t%s\n' "$(uname -m 2>/dev/null)"
if [ -d /run/systemd/system ]; then printf 'SYSTEMD\t1\n'; fi
k() {
  if [ -d "$1" ]; then printf 'K\t%s\tD\t%s\n' "$2" "$1"
  elif [ -f "$1" ]; then printf 'K\t%s\tF\t%s\n' "$2" "$1"
  elif [ -e "$1" ] || [ -L "$1" ]; then printf 'K\t%s\tO\t%s\n' "$2" "$1"
  else printf 'K\t%s\tM\t%s\n' "$2" "$1"; fi
}
"#,
        );
        // Paths: kinds with shell builtins, then ONE `stat` over every directory and file, ONE
        // `sha256sum` over every file, and the content (base64) of the files whose content
        // the checks compare. Few processes per host: the facts of a whole inventory are
        // gathered at once, so every fork counts.
        for path in self.paths.keys() {
            s.push_str(&format!("k {} {}\n", path_expr(path), sh_quote(path)));
        }
        if !self.paths.is_empty() {
            s.push_str("set --\n");
            for path in self.paths.keys() {
                let e = path_expr(path);
                s.push_str(&format!(
                    "if [ -d {e} ] || [ -f {e} ]; then set -- \"$@\" {e}; fi\n"
                ));
            }
            s.push_str(
                "[ $# -eq 0 ] || stat --printf 'T\\t%n\\t%a\\t%U\\t%G\\n' -- \"$@\" 2>/dev/null\nset --\n",
            );
            for path in self.paths.keys() {
                let e = path_expr(path);
                s.push_str(&format!("if [ -f {e} ]; then set -- \"$@\" {e}; fi\n"));
            }
            s.push_str(
                "[ $# -eq 0 ] || sha256sum -- \"$@\" 2>/dev/null | while read -r h n; do printf 'H\\t%s\\t%s\\n' \"$n\" \"$h\"; done\n",
            );
            for (path, content) in &self.paths {
                if *content {
                    let e = path_expr(path);
                    s.push_str(&format!(
                        "if [ -f {e} ]; then printf 'B\\t%s\\t' {e}; base64 -w0 < {e}; echo; fi\n"
                    ));
                }
            }
        }
        if !self.packages.is_empty() {
            let names: Vec<String> = self.packages.iter().map(|p| sh_quote(p)).collect();
            s.push_str(&format!(
                "dpkg-query -W -f='P\\t${{Package}}\\t${{Version}}\\t${{db:Status-Abbrev}}\\n' {} 2>/dev/null || true\n",
                names.join(" ")
            ));
        }
        if !self.services.is_empty() {
            // `is-active` prints one line per unit, in order (unknown units: `inactive`), so
            // one call serves every service; `is-enabled` stops at an unknown unit, so one each.
            let names: Vec<String> = self.services.iter().map(|x| sh_quote(x)).collect();
            s.push_str(&format!(
                "set -- $(systemctl is-active {} 2>/dev/null)\n",
                names.join(" ")
            ));
            for q in &names {
                s.push_str(&format!(
                    "printf 'S\\t%s\\t%s\\t%s\\n' {q} \"$(systemctl is-enabled {q} 2>/dev/null)\" \"${{1:-}}\"; [ $# -eq 0 ] || shift\n"
                ));
            }
        }
        for user in &self.users {
            let q = sh_quote(user);
            s.push_str(&format!(
                "if id {q} >/dev/null 2>&1; then printf 'G\\t%s\\t%s\\n' {q} \"$(id -nG {q})\"; else printf 'G\\t%s\\n' {q}; fi\n"
            ));
        }
        for (id, check) in &self.checks {
            s.push_str(&format!(
                "( {check}\n) </dev/null >/dev/null 2>&1; printf 'C\\t%s\\t%s\\n' {} \"$?\"\n",
                sh_quote(id)
            ));
        }
        if self.containerd {
            // Two `ctr` calls; a host without ctr, or whose containerd does not answer, says
            // `CTR 0` (nothing there: everything is sent). Then the verified blobs a cut apply
            // left in the cache (`B` records).
            s.push_str(&format!("aion_blobs={}\n", path_expr(IMAGE_BLOB_CACHE)));
            s.push_str(
                r#"if command -v ctr >/dev/null 2>&1 && ci=$(ctr -n k8s.io images ls 2>/dev/null) && cc=$(ctr -n k8s.io content ls -q 2>/dev/null); then
  printf 'CTR\t1\n'
  printf '%s\n' "$ci" | awk 'NR > 1 && NF >= 3 {printf "I\t%s\t%s\t%s\n", $1, $3, $NF}'
  printf '%s\n' "$cc" | awk 'NF >= 1 {printf "L\t%s\n", $1}'
  for f in "$aion_blobs"/*; do [ -f "$f" ] && printf 'B\tsha256:%s\n' "${f##*/}"; done
else printf 'CTR\t0\n'; fi
"#,
            );
        }
        s.push_str("echo END\n");
        s
    }
}

/// Parse the output of [`FactRequest::script`].
pub fn parse(host: &str, stdout: &str, stderr: &str) -> Result<HostFacts, FactsError> {
    let mut facts = HostFacts::default();
    let mut ended = false;
    // Paths come in parts keyed by the expanded path: the kind (with the path as written),
    // then `stat`, `sha256sum` and content records; joined at the end.
    let mut kinds: Vec<(String, char, String)> = Vec::new();
    let mut stats: BTreeMap<String, (u32, String, String)> = BTreeMap::new();
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, line) in stdout.lines().enumerate() {
        let bad = |message: &str| FactsError::Malformed {
            host: host.to_string(),
            line: i + 1,
            message: message.to_string(),
        };
        let fields: Vec<&str> = line.split('\t').collect();
        let mode = |s: &str| u32::from_str_radix(s, 8).map_err(|_| bad("bad mode"));
        match fields.as_slice() {
            ["HOSTNAME", h] => facts.hostname = h.to_string(),
            ["HOME", h] => facts.home = h.to_string(),
            ["MACHINE", m] => facts.machine = m.to_string(),
            ["SYSTEMD", _] => facts.systemd = true,
            ["K", key, kind, expanded] => kinds.push((
                key.to_string(),
                match *kind {
                    "D" => 'D',
                    "F" => 'F',
                    "O" => 'O',
                    "M" => 'M',
                    _ => return Err(bad("unknown path kind")),
                },
                expanded.to_string(),
            )),
            ["T", expanded, m, o, g] => {
                stats.insert(
                    expanded.to_string(),
                    (mode(m)?, o.to_string(), g.to_string()),
                );
            }
            ["H", expanded, sha] => {
                hashes.insert(expanded.to_string(), sha.to_string());
            }
            ["B", expanded, b64] => {
                let content = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| bad("bad base64 content"))?;
                contents.insert(expanded.to_string(), content);
            }
            ["P", name, version, status] => {
                facts.packages.insert(
                    name.to_string(),
                    PackageFact {
                        version: version.to_string(),
                        status: status.to_string(),
                    },
                );
            }
            ["S", name, enabled, active] => {
                facts.services.insert(
                    name.to_string(),
                    ServiceFact {
                        enabled: enabled.to_string(),
                        active: active.to_string(),
                    },
                );
            }
            ["G", user] => {
                facts.users.insert(user.to_string(), None);
            }
            ["G", user, groups] => {
                let set = groups.split_whitespace().map(str::to_string).collect();
                facts.users.insert(user.to_string(), Some(set));
            }
            ["C", id, status] => {
                facts.checks.insert(id.to_string(), *status == "0");
            }
            ["CTR", "1"] => facts.containerd = Some(ContainerdFacts::default()),
            ["CTR", _] => facts.containerd = None,
            ["I", reference, digest, rest @ ..] if rest.len() <= 1 => {
                let c = facts
                    .containerd
                    .get_or_insert_with(ContainerdFacts::default);
                c.images.insert(reference.to_string(), digest.to_string());
                // The last column of `ctr images ls`: `k=v,k=v` or `-`.
                let at = rest.first().and_then(|labels| {
                    labels.split(',').find_map(|kv| {
                        kv.strip_prefix(IMPORTED_LABEL)
                            .and_then(|v| v.strip_prefix('='))
                            .and_then(|v| v.parse::<u64>().ok())
                    })
                });
                if let Some(at) = at {
                    c.imported.insert(reference.to_string(), at);
                }
            }
            ["L", digest] => {
                facts
                    .containerd
                    .get_or_insert_with(ContainerdFacts::default)
                    .content
                    .insert(digest.to_string());
            }
            ["B", digest] => {
                facts
                    .containerd
                    .get_or_insert_with(ContainerdFacts::default)
                    .staged
                    .insert(digest.to_string());
            }
            ["END"] => ended = true,
            _ => return Err(bad("unexpected record")),
        }
    }
    if !ended {
        return Err(FactsError::Truncated {
            host: host.to_string(),
            stderr: stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | "),
        });
    }
    for (key, kind, expanded) in kinds {
        let stat = stats.remove(&expanded);
        let fact = match (kind, stat) {
            ('D', Some((mode, owner, group))) => PathFact::Dir { mode, owner, group },
            ('F', Some((mode, owner, group))) => PathFact::File {
                mode,
                owner,
                group,
                // (empty when unreadable: never equal to a desired hash)
                sha256: hashes.remove(&expanded).unwrap_or_default(),
                content: contents.remove(&expanded),
            },
            ('O', _) => PathFact::Other,
            // Missing, or gone between the kind test and `stat`.
            _ => PathFact::Missing,
        };
        facts.paths.insert(key, fact);
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_record_kind() {
        let out = "HOSTNAME\ttb-host-0\nHOME\t/home/aion\nMACHINE\taarch64\nSYSTEMD\t1\n\
                   K\t/etc/docker/daemon.json\tM\t/etc/docker/daemon.json\n\
                   K\t/var/lib/aion\tD\t/var/lib/aion\n\
                   K\t~/.profile\tF\t/home/aion/.profile\n\
                   K\t/etc/kubernetes/admin.conf\tF\t/etc/kubernetes/admin.conf\n\
                   K\t/etc/gone\tF\t/etc/gone\nK\t/dev/fifo\tO\t/dev/fifo\n\
                   T\t/var/lib/aion\t755\troot\troot\n\
                   T\t/home/aion/.profile\t644\taion\taion\n\
                   T\t/etc/kubernetes/admin.conf\t600\troot\troot\n\
                   H\t/home/aion/.profile\tabc\nH\t/etc/kubernetes/admin.conf\tdef\n\
                   B\t/home/aion/.profile\taGVsbG8K\n\
                   P\tdocker.io\t26.1.5\tii \nP\tkubelet\t1.37.2-1.1\thi \n\
                   S\tdocker\tenabled\tactive\nG\taion\taion sudo\nG\tghost\nC\tswap\t0\nC\tinit\t1\nEND\n";
        let f = parse("h", out, "").unwrap();
        assert_eq!(f.hostname, "tb-host-0");
        assert_eq!(f.home, "/home/aion");
        assert_eq!(f.machine, "aarch64");
        assert!(f.systemd);
        assert_eq!(f.path("/etc/docker/daemon.json"), &PathFact::Missing);
        assert_eq!(f.path("/nowhere"), &PathFact::Missing);
        assert!(matches!(
            f.path("/var/lib/aion"),
            PathFact::Dir { mode: 0o755, .. }
        ));
        match f.path("~/.profile") {
            PathFact::File {
                content: Some(c),
                owner,
                ..
            } => {
                assert_eq!(c, b"hello\n");
                assert_eq!(owner, "aion");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            f.path("/etc/kubernetes/admin.conf"),
            PathFact::File { content: None, sha256, mode: 0o600, .. } if sha256 == "def"
        ));
        // gone between the kind test and `stat`: missing
        assert_eq!(f.path("/etc/gone"), &PathFact::Missing);
        assert_eq!(f.path("/dev/fifo"), &PathFact::Other);
        assert!(f.packages["docker.io"].installed() && !f.packages["docker.io"].held());
        assert!(f.packages["kubelet"].held());
        assert_eq!(f.services["docker"].active, "active");
        assert!(f.users["aion"].as_ref().unwrap().contains("sudo"));
        assert_eq!(f.users["ghost"], None);
        assert!(f.checks["swap"] && !f.checks["init"]);
    }

    #[test]
    fn containerd_records_and_a_host_without_ctr() {
        let out =
            "CTR\t1\nI\taion.local/a:1\tsha256:aa\nL\tsha256:aa\nL\tsha256:bb\nB\tsha256:cc\nEND\n";
        let f = parse("h", out, "").unwrap();
        let c = f.containerd.unwrap();
        assert_eq!(c.images["aion.local/a:1"], "sha256:aa");
        assert!(c.content.contains("sha256:bb") && c.content.len() == 2);
        assert_eq!(c.staged, ["sha256:cc".to_string()].into());
        assert!(c.imported.is_empty());
        // with `ctr images ls`' labels column: the import time of the images apply imported
        let out = "CTR\t1\nI\taion.local/a:1\tsha256:aa\tio.cri-containerd.image=managed,aion.io/imported=1700000000000000001\n\
                   I\taion.local/a:2\tsha256:bb\t-\nI\tsha256:cc\tsha256:aa\tio.cri-containerd.image=managed\nEND\n";
        let c = parse("h", out, "").unwrap().containerd.unwrap();
        assert_eq!(c.images.len(), 3);
        assert_eq!(
            c.imported.into_iter().collect::<Vec<_>>(),
            [("aion.local/a:1".to_string(), 1_700_000_000_000_000_001)]
        );
        let f = parse("h", "CTR\t0\nEND\n", "").unwrap();
        assert_eq!(f.containerd, None);
        // not asked: no ctr in the script
        assert!(!FactRequest::default().script().contains("ctr"));
        let req = FactRequest {
            containerd: true,
            ..FactRequest::default()
        };
        assert!(req.script().contains("ctr -n k8s.io content ls -q"));
    }

    /// The script runs where there is no ctr (a scratch root without containerd): `CTR 0`.
    #[tokio::test]
    async fn containerd_facts_without_ctr_say_none() {
        use crate::host::Host as _;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // a `ctr` that cannot reach containerd
        std::fs::write(bin.join("ctr"), "#!/bin/sh\nexit 1\n").unwrap();
        let mut p = std::fs::metadata(bin.join("ctr")).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
        std::fs::set_permissions(bin.join("ctr"), p).unwrap();
        let h = crate::host::local::LocalHost {
            name: "l".into(),
            root: dir.path().to_path_buf(),
            bin: Some(bin),
        };
        let req = FactRequest {
            user: "root".into(),
            containerd: true,
            ..FactRequest::default()
        };
        let out = h.run(&req.script()).await.unwrap();
        let f = parse("l", &out.stdout_str(), "").unwrap();
        assert_eq!(f.containerd, None);
    }

    #[test]
    fn truncated_output_is_an_error_naming_the_host() {
        let e = parse("edge-1", "HOSTNAME\tx\n", "sh: killed").unwrap_err();
        assert!(e.to_string().contains("edge-1") && e.to_string().contains("killed"));
        let e = parse("edge-1", "WHAT\n", "").unwrap_err();
        assert!(matches!(e, FactsError::Malformed { line: 1, .. }));
    }
}
