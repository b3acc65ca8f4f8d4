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
    pub paths: BTreeMap<String, PathFact>,
    /// Packages dpkg knows; absent = not installed.
    pub packages: BTreeMap<String, PackageFact>,
    pub services: BTreeMap<String, ServiceFact>,
    /// user → groups; None = no such user.
    pub users: BTreeMap<String, Option<BTreeSet<String>>>,
    pub checks: BTreeMap<String, bool>,
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

/// Quote `s` for a POSIX shell (single quotes).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Shell expression for `path` on the host: `~/x` → the user's home, everything under `$R`.
pub fn path_expr(path: &str) -> String {
    match path.strip_prefix("~/") {
        Some(rest) => format!("\"$R$UH\"{}", sh_quote(&format!("/{rest}"))),
        None if path == "~" => "\"$R$UH\"".to_string(),
        None => format!("\"$R\"{}", sh_quote(path)),
    }
}

/// The first lines of every script: the scratch root, the user and their home.
pub fn prelude(user: &str) -> String {
    format!(
        "R=\"${{AION_ROOT:-}}\"\nU={}\nUH=$(getent passwd \"$U\" | cut -d: -f6)\n",
        sh_quote(user)
    )
}

impl FactRequest {
    /// The one script that prints every fact (read-only).
    pub fn script(&self) -> String {
        let mut s = prelude(&self.user);
        s.push_str(
            r#"printf 'HOSTNAME\t%s\n' "$(hostname 2>/dev/null)"
printf 'HOME\t%s\n' "$UH"
if [ -d /run/systemd/system ]; then printf 'SYSTEMD\t1\n'; fi
f() {
  if [ -d "$1" ]; then printf 'D\t%s\t' "$2"; stat --printf '%a\t%U\t%G\n' "$1"
  elif [ -f "$1" ]; then
    printf 'F\t%s\t' "$2"; stat --printf '%a\t%U\t%G\t' "$1"; sha256sum < "$1" | cut -d' ' -f1 | tr -d '\n'
    if [ "$3" = 1 ]; then printf '\t'; base64 -w0 < "$1"; fi; echo
  elif [ -e "$1" ] || [ -L "$1" ]; then printf 'O\t%s\n' "$2"
  else printf 'M\t%s\n' "$2"; fi
}
"#,
        );
        for (path, content) in &self.paths {
            s.push_str(&format!(
                "f {} {} {}\n",
                path_expr(path),
                sh_quote(path),
                if *content { 1 } else { 0 }
            ));
        }
        if !self.packages.is_empty() {
            let names: Vec<String> = self.packages.iter().map(|p| sh_quote(p)).collect();
            s.push_str(&format!(
                "dpkg-query -W -f='P\\t${{Package}}\\t${{Version}}\\t${{db:Status-Abbrev}}\\n' {} 2>/dev/null || true\n",
                names.join(" ")
            ));
        }
        for svc in &self.services {
            let q = sh_quote(svc);
            s.push_str(&format!(
                "printf 'S\\t%s\\t%s\\t%s\\n' {q} \"$(systemctl is-enabled {q} 2>/dev/null)\" \"$(systemctl is-active {q} 2>/dev/null)\"\n"
            ));
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
        s.push_str("echo END\n");
        s
    }
}

/// Parse the output of [`FactRequest::script`].
pub fn parse(host: &str, stdout: &str, stderr: &str) -> Result<HostFacts, FactsError> {
    let mut facts = HostFacts::default();
    let mut ended = false;
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
            ["SYSTEMD", _] => facts.systemd = true,
            ["M", p] => {
                facts.paths.insert(p.to_string(), PathFact::Missing);
            }
            ["O", p] => {
                facts.paths.insert(p.to_string(), PathFact::Other);
            }
            ["D", p, m, o, g] => {
                let f = PathFact::Dir {
                    mode: mode(m)?,
                    owner: o.to_string(),
                    group: g.to_string(),
                };
                facts.paths.insert(p.to_string(), f);
            }
            ["F", p, m, o, g, sha, rest @ ..] => {
                let content = match rest {
                    [] => None,
                    [b64] => Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .map_err(|_| bad("bad base64 content"))?,
                    ),
                    _ => return Err(bad("too many fields")),
                };
                let f = PathFact::File {
                    mode: mode(m)?,
                    owner: o.to_string(),
                    group: g.to_string(),
                    sha256: sha.to_string(),
                    content,
                };
                facts.paths.insert(p.to_string(), f);
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
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_record_kind() {
        let out = "HOSTNAME\ttb-host-0\nHOME\t/home/aion\nSYSTEMD\t1\n\
                   M\t/etc/docker/daemon.json\nD\t/var/lib/aion\t755\troot\troot\n\
                   F\t~/.profile\t644\taion\taion\tabc\taGVsbG8K\n\
                   F\t/etc/kubernetes/admin.conf\t600\troot\troot\tdef\n\
                   P\tdocker.io\t26.1.5\tii \nP\tkubelet\t1.37.2-1.1\thi \n\
                   S\tdocker\tenabled\tactive\nG\taion\taion sudo\nG\tghost\nC\tswap\t0\nC\tinit\t1\nEND\n";
        let f = parse("h", out, "").unwrap();
        assert_eq!(f.hostname, "tb-host-0");
        assert_eq!(f.home, "/home/aion");
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
            PathFact::File { content: None, .. }
        ));
        assert!(f.packages["docker.io"].installed() && !f.packages["docker.io"].held());
        assert!(f.packages["kubelet"].held());
        assert_eq!(f.services["docker"].active, "active");
        assert!(f.users["aion"].as_ref().unwrap().contains("sudo"));
        assert_eq!(f.users["ghost"], None);
        assert!(f.checks["swap"] && !f.checks["init"]);
    }

    #[test]
    fn truncated_output_is_an_error_naming_the_host() {
        let e = parse("edge-1", "HOSTNAME\tx\n", "sh: killed").unwrap_err();
        assert!(e.to_string().contains("edge-1") && e.to_string().contains("killed"));
        let e = parse("edge-1", "WHAT\n", "").unwrap_err();
        assert!(matches!(e, FactsError::Malformed { line: 1, .. }));
    }

    #[test]
    fn paths_are_quoted_and_rooted() {
        assert_eq!(path_expr("/etc/x y"), "\"$R\"'/etc/x y'");
        assert_eq!(path_expr("~/a'b"), "\"$R$UH\"'/a'\\''b'");
    }
}
