//! Typed resources: each knows which facts it needs ([`Resource::request`]) and, given the
//! facts, whether it is already in the desired state or which [`Change`] would bring it there
//! ([`Resource::plan`]). Both are pure; the change carries the exact script `apply` runs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::change::{Action, Change, ChangeKind};
use crate::facts::{FactRequest, HostFacts, PathFact};
use crate::shell::{path_expr, sh_quote, write_file_script};

/// One declarative resource of a role (`roles/*.yml`), after templating.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Resource {
    /// The device's hostname (runtime and persistent).
    Hostname {
        name: String,
    },
    Directory {
        path: String,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        mode: Option<String>,
    },
    /// A whole file. `content` inline, or `source`: a file on the operator's machine.
    File {
        path: String,
        #[serde(default)]
        content: Option<String>,
        #[serde(default)]
        source: Option<PathBuf>,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        mode: Option<String>,
        /// Service restarted when this file changes.
        #[serde(default)]
        notify: Option<String>,
    },
    /// One line present in a file; with `match_prefix`, the first line starting with it is
    /// replaced instead of appending.
    LineInFile {
        path: String,
        line: String,
        #[serde(default)]
        match_prefix: Option<String>,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        mode: Option<String>,
    },
    /// Debian packages, optionally pinned to an upstream version and held.
    Package {
        names: Vec<String>,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        hold: bool,
    },
    Service {
        name: String,
        #[serde(default = "yes")]
        enabled: bool,
        #[serde(default = "yes")]
        started: bool,
    },
    UserInGroup {
        user: String,
        group: String,
    },
    /// A command guarded by a read-only check (exit 0 = already done).
    Command {
        name: String,
        run: String,
        check: String,
    },
    /// Copy a file that exists on the host (possibly only after earlier steps) to `path`.
    /// Contents are treated as secret: compared by SHA-256, never shown.
    Copy {
        src: String,
        path: String,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        mode: Option<String>,
    },
    /// Fetch a (secret) file from the host to the operator's machine, mode 0600.
    Fetch {
        src: String,
        dest: PathBuf,
    },
    /// Join the cluster with a fresh short-lived token created on the master at apply time.
    KubeadmJoin {
        node_name: String,
    },
}

fn yes() -> bool {
    true
}

/// What a resource needs from the operator's machine at plan time (read before planning).
#[derive(Debug, Clone, Default)]
pub struct LocalFacts {
    /// SHA-256 and mode of local files (fetch destinations); None = missing.
    pub files: std::collections::BTreeMap<PathBuf, Option<(String, u32)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("{id}: mode {mode:?} is not an octal number")]
    BadMode { id: String, mode: String },
    #[error("{id}: needs exactly one of `content` and `source`")]
    ContentOrSource { id: String },
    #[error("{id}: cannot read source {path}: {source}")]
    Source {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{id}: path {path:?} must be absolute or start with ~/ and contain no tab or newline")]
    BadPath { id: String, path: String },
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn parse_mode(id: &str, m: Option<&str>, default: u32) -> Result<u32, ResourceError> {
    match m {
        None => Ok(default),
        Some(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| ResourceError::BadMode {
                id: id.into(),
                mode: s.into(),
            }),
    }
}

/// A unified diff of two texts (`None` when either is not UTF-8).
pub fn unified_diff(path: &str, old: &[u8], new: &[u8]) -> Option<String> {
    let (old, new) = (
        std::str::from_utf8(old).ok()?,
        std::str::from_utf8(new).ok()?,
    );
    let diff = similar::TextDiff::from_lines(old, new);
    let mut u = diff.unified_diff();
    u.context_radius(3)
        .header(&format!("{path} (host)"), &format!("{path} (desired)"));
    Some(u.to_string())
}

/// Owner/group/mode of a path as desired (owner defaults to root, group to the owner).
struct Meta {
    owner: String,
    /// None: the owner's login group (not compared).
    group: Option<String>,
    mode: u32,
}

impl Meta {
    fn new(
        id: &str,
        owner: &Option<String>,
        group: &Option<String>,
        mode: &Option<String>,
        default_mode: u32,
    ) -> Result<Meta, ResourceError> {
        let owner = owner.clone().unwrap_or_else(|| "root".into());
        let group = group
            .clone()
            .or_else(|| (owner == "root").then(|| "root".to_string()));
        Ok(Meta {
            owner,
            group,
            mode: parse_mode(id, mode.as_deref(), default_mode)?,
        })
    }
    /// `owner:group` for chown (`owner:` = login group), shell-quoted.
    fn chown(&self) -> String {
        format!(
            "{}:{}",
            sh_quote(&self.owner),
            self.group.as_deref().map(sh_quote).unwrap_or_default()
        )
    }
    fn show(&self) -> String {
        format!("{}:{}", self.owner, self.group.as_deref().unwrap_or("*"))
    }
    fn differs(&self, mode: u32, owner: &str, group: &str) -> Option<String> {
        let mut d = Vec::new();
        if mode != self.mode {
            d.push(format!("mode {mode:04o} → {:04o}", self.mode));
        }
        if owner != self.owner || self.group.as_deref().is_some_and(|g| g != group) {
            d.push(format!("owner {owner}:{group} → {}", self.show()));
        }
        (!d.is_empty()).then(|| d.join(", "))
    }
}

impl Resource {
    /// Short type name (`file`, `package`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Hostname { .. } => "hostname",
            Resource::Directory { .. } => "directory",
            Resource::File { .. } => "file",
            Resource::LineInFile { .. } => "line_in_file",
            Resource::Package { .. } => "package",
            Resource::Service { .. } => "service",
            Resource::UserInGroup { .. } => "user_in_group",
            Resource::Command { .. } => "command",
            Resource::Copy { .. } => "copy",
            Resource::Fetch { .. } => "fetch",
            Resource::KubeadmJoin { .. } => "kubeadm_join",
        }
    }

    /// What identifies it within a role (path, package names, ...).
    pub fn key(&self) -> String {
        match self {
            Resource::Hostname { name } => name.clone(),
            Resource::Directory { path, .. }
            | Resource::File { path, .. }
            | Resource::Copy { path, .. } => path.clone(),
            Resource::LineInFile {
                path,
                line,
                match_prefix,
                ..
            } => {
                format!("{path}[{}]", match_prefix.as_deref().unwrap_or(line).trim())
            }
            Resource::Package { names, .. } => names.join(","),
            Resource::Service { name, .. } | Resource::Command { name, .. } => name.clone(),
            Resource::UserInGroup { user, group } => format!("{user}@{group}"),
            Resource::Fetch { dest, .. } => dest.display().to_string(),
            Resource::KubeadmJoin { node_name } => node_name.clone(),
        }
    }

    /// Checks syntax that templating cannot: paths and modes; reads `source` files.
    pub fn validate(&mut self, id: &str) -> Result<(), ResourceError> {
        let check_path = |p: &str| {
            let ok = (p.starts_with('/') || p.starts_with("~/")) && !p.contains(['\t', '\n']);
            if ok {
                Ok(())
            } else {
                Err(ResourceError::BadPath {
                    id: id.into(),
                    path: p.into(),
                })
            }
        };
        match self {
            Resource::Directory { path, mode, .. } | Resource::LineInFile { path, mode, .. } => {
                check_path(path)?;
                parse_mode(id, mode.as_deref(), 0)?;
            }
            Resource::Copy {
                src, path, mode, ..
            } => {
                check_path(src)?;
                check_path(path)?;
                parse_mode(id, mode.as_deref(), 0)?;
            }
            Resource::Fetch { src, .. } => check_path(src)?,
            Resource::File {
                path,
                content,
                source,
                mode,
                ..
            } => {
                check_path(path)?;
                parse_mode(id, mode.as_deref(), 0)?;
                match (content.is_some(), source.take()) {
                    (true, None) => {}
                    (false, Some(src)) => {
                        let text =
                            std::fs::read_to_string(&src).map_err(|e| ResourceError::Source {
                                id: id.into(),
                                path: src.clone(),
                                source: e,
                            })?;
                        *content = Some(text);
                        *source = Some(src);
                    }
                    _ => return Err(ResourceError::ContentOrSource { id: id.into() }),
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Register the facts this resource's check needs.
    pub fn request(&self, id: &str, req: &mut FactRequest) {
        match self {
            Resource::Hostname { .. } => {
                req.paths.insert("/etc/hostname".into(), true);
            }
            Resource::Directory { path, .. } => {
                req.paths.entry(path.clone()).or_insert(false);
            }
            Resource::File { path, .. } | Resource::LineInFile { path, .. } => {
                req.paths.insert(path.clone(), true);
            }
            Resource::Package { names, .. } => req.packages.extend(names.iter().cloned()),
            Resource::Service { name, .. } => {
                req.services.insert(name.clone());
            }
            Resource::UserInGroup { user, .. } => {
                req.users.insert(user.clone());
            }
            Resource::Command { check, .. } => {
                req.checks.insert(id.into(), check.clone());
            }
            Resource::Copy { src, path, .. } => {
                req.paths.entry(src.clone()).or_insert(false);
                req.paths.entry(path.clone()).or_insert(false);
            }
            Resource::Fetch { src, .. } => {
                req.paths.entry(src.clone()).or_insert(false);
            }
            Resource::KubeadmJoin { .. } => {
                req.checks.insert(
                    id.into(),
                    "test -f \"$R/etc/kubernetes/kubelet.conf\"".into(),
                );
            }
        }
    }

    /// Compare with the facts: `None` when nothing is to be done.
    pub fn plan(
        &self,
        id: &str,
        role: &str,
        facts: &HostFacts,
        local: &LocalFacts,
    ) -> Result<Option<Change>, ResourceError> {
        let change = |kind, summary: String, diff: Option<String>, action: Action| {
            Some(Change {
                id: id.to_string(),
                role: role.to_string(),
                kind,
                summary,
                diff,
                action,
            })
        };
        Ok(match self {
            Resource::Hostname { name } => {
                let file = match facts.path("/etc/hostname") {
                    PathFact::File {
                        content: Some(c), ..
                    } => String::from_utf8_lossy(c).trim().to_string(),
                    _ => String::new(),
                };
                if facts.hostname == *name && file == *name {
                    None
                } else {
                    let mut script = format!(
                        "if [ -z \"$R\" ] && [ -d /run/systemd/system ] && command -v hostnamectl >/dev/null 2>&1; then\n  hostnamectl set-hostname {n}\nelse\n",
                        n = sh_quote(name)
                    );
                    script.push_str(&write_file_script(
                        "/etc/hostname",
                        format!("{name}\n").as_bytes(),
                        0o644,
                        "'root':'root'",
                    ));
                    script.push_str(&format!("hostname {}\nfi\n", sh_quote(name)));
                    change(
                        ChangeKind::Change,
                        format!("hostname {} → {name}", facts.hostname),
                        None,
                        Action::Script {
                            script,
                            secret_output: false,
                        },
                    )
                }
            }
            Resource::Directory {
                path,
                owner,
                group,
                mode,
            } => {
                let meta = Meta::new(id, owner, group, mode, 0o755)?;
                let script = format!(
                    "p={p}\nmkdir -p \"$p\"\nchmod {m:o} \"$p\"\nchown {c} \"$p\"\n",
                    p = path_expr(path),
                    m = meta.mode,
                    c = meta.chown()
                );
                let action = Action::Script {
                    script,
                    secret_output: false,
                };
                match facts.path(path) {
                    PathFact::Missing => change(
                        ChangeKind::Create,
                        format!("directory {path} ({:04o} {})", meta.mode, meta.show()),
                        None,
                        action,
                    ),
                    PathFact::Dir { mode, owner, group } => {
                        meta.differs(*mode, owner, group).and_then(|d| {
                            change(
                                ChangeKind::Change,
                                format!("directory {path}: {d}"),
                                None,
                                action,
                            )
                        })
                    }
                    _ => change(
                        ChangeKind::Change,
                        format!(
                            "directory {path}: exists but is not a directory (apply will fail)"
                        ),
                        None,
                        action,
                    ),
                }
            }
            Resource::File {
                path,
                content,
                owner,
                group,
                mode,
                ..
            } => {
                let meta = Meta::new(id, owner, group, mode, 0o644)?;
                let want = content.clone().unwrap_or_default().into_bytes();
                self.plan_content(id, role, path, &want, &meta, facts)
            }
            Resource::LineInFile {
                path,
                line,
                match_prefix,
                owner,
                group,
                mode,
            } => {
                let (old, meta) = match facts.path(path) {
                    PathFact::File {
                        content: Some(c),
                        mode,
                        owner,
                        group,
                        ..
                    } => (
                        Some(c.clone()),
                        Meta {
                            owner: owner.clone(),
                            group: Some(group.clone()),
                            mode: *mode,
                        },
                    ),
                    _ => (None, Meta::new(id, owner, group, mode, 0o644)?),
                };
                let old_text =
                    String::from_utf8_lossy(old.as_deref().unwrap_or_default()).into_owned();
                let new_text = line_in_text(&old_text, line, match_prefix.as_deref());
                if old.is_some() && new_text == old_text {
                    None
                } else {
                    self.plan_content(id, role, path, new_text.as_bytes(), &meta, facts)
                }
            }
            Resource::Package {
                names,
                version,
                hold,
            } => {
                let mut install = Vec::new();
                let mut to_hold = Vec::new();
                let mut notes = Vec::new();
                for n in names {
                    let fact = facts.packages.get(n).filter(|p| p.installed());
                    let version_ok = |v: &str| {
                        version
                            .as_deref()
                            .is_none_or(|want| v == want || v.starts_with(&format!("{want}-")))
                    };
                    match fact {
                        None => {
                            notes.push(format!(
                                "{n}{}",
                                version
                                    .as_deref()
                                    .map(|v| format!(" {v}"))
                                    .unwrap_or_default()
                            ));
                            install.push(n.clone());
                        }
                        Some(p) if !version_ok(&p.version) => {
                            notes.push(format!(
                                "{n} {} → {}",
                                p.version,
                                version.as_deref().unwrap_or("")
                            ));
                            install.push(n.clone());
                        }
                        Some(_) => {}
                    }
                    if *hold && !fact.is_some_and(|p| p.held()) {
                        to_hold.push(n.clone());
                    }
                }
                if install.is_empty() && to_hold.is_empty() {
                    None
                } else {
                    let mut script = String::from("export DEBIAN_FRONTEND=noninteractive\n");
                    let mut summary = Vec::new();
                    if !install.is_empty() {
                        let specs: Vec<String> = install
                            .iter()
                            .map(|n| {
                                sh_quote(&match version {
                                    Some(v) => format!("{n}={v}-*"),
                                    None => n.clone(),
                                })
                            })
                            .collect();
                        script.push_str("apt-get update -q\n");
                        script.push_str(&format!(
                            "apt-get install -y -q --allow-change-held-packages --allow-downgrades {}\n",
                            specs.join(" ")
                        ));
                        summary.push(format!("install {}", notes.join(", ")));
                    }
                    if !to_hold.is_empty() {
                        let q: Vec<String> = to_hold.iter().map(|n| sh_quote(n)).collect();
                        script.push_str(&format!("apt-mark hold {}\n", q.join(" ")));
                        summary.push(format!("hold {}", to_hold.join(", ")));
                    }
                    let kind = if install.len() == names.len() {
                        ChangeKind::Create
                    } else {
                        ChangeKind::Change
                    };
                    change(
                        kind,
                        format!("packages: {}", summary.join("; ")),
                        None,
                        Action::Script {
                            script,
                            secret_output: false,
                        },
                    )
                }
            }
            Resource::Service {
                name,
                enabled,
                started,
            } => {
                let f = facts.services.get(name);
                let is_enabled = f.is_some_and(|s| s.enabled == "enabled" || s.enabled == "static");
                let is_active = f.is_some_and(|s| s.active == "active");
                let mut script = String::new();
                let mut what = Vec::new();
                if *enabled && !is_enabled {
                    script.push_str(&format!("systemctl enable {}\n", sh_quote(name)));
                    what.push("enable");
                }
                if *started && !is_active {
                    script.push_str(&format!("systemctl start {}\n", sh_quote(name)));
                    what.push("start");
                }
                (!what.is_empty()).then_some(()).and_then(|_| {
                    change(
                        ChangeKind::Change,
                        format!("service {name}: {}", what.join(" + ")),
                        None,
                        Action::Script {
                            script,
                            secret_output: false,
                        },
                    )
                })
            }
            Resource::UserInGroup { user, group } => {
                let member = facts
                    .users
                    .get(user)
                    .and_then(|g| g.as_ref())
                    .is_some_and(|g| g.contains(group));
                if member {
                    None
                } else {
                    let script = format!(
                        "getent group {g} >/dev/null || groupadd -r {g}\nusermod -aG {g} {u}\n",
                        g = sh_quote(group),
                        u = sh_quote(user)
                    );
                    change(
                        ChangeKind::Change,
                        format!("user {user}: add to group {group}"),
                        None,
                        Action::Script {
                            script,
                            secret_output: false,
                        },
                    )
                }
            }
            Resource::Command { name, run, .. } => {
                if facts.checks.get(id).copied().unwrap_or(false) {
                    None
                } else {
                    change(
                        ChangeKind::Create,
                        format!("run: {name}"),
                        None,
                        Action::Script {
                            script: format!("{run}\n"),
                            secret_output: false,
                        },
                    )
                }
            }
            Resource::Copy {
                src,
                path,
                owner,
                group,
                mode,
            } => {
                let meta = Meta::new(id, owner, group, mode, 0o600)?;
                let script = format!(
                    "s={s}\np={p}\nd=$(dirname \"$p\")\nmkdir -p \"$d\"\nt=$(mktemp \"$d/.aion-tmp.XXXXXX\")\n\
                     if cp \"$s\" \"$t\"; then chmod {m:o} \"$t\" && chown {c} \"$t\" && mv -f \"$t\" \"$p\"; else rm -f \"$t\"; exit 1; fi\n",
                    s = path_expr(src),
                    p = path_expr(path),
                    m = meta.mode,
                    c = meta.chown()
                );
                let action = Action::Script {
                    script,
                    secret_output: false,
                };
                match (facts.path(src), facts.path(path)) {
                    (
                        PathFact::File { sha256: a, .. },
                        PathFact::File {
                            sha256: b,
                            mode,
                            owner,
                            group,
                            ..
                        },
                    ) => {
                        if a != b {
                            change(
                                ChangeKind::Change,
                                format!("copy {src} → {path} (content differs; secret, not shown)"),
                                None,
                                action,
                            )
                        } else {
                            meta.differs(*mode, owner, group).and_then(|d| {
                                change(
                                    ChangeKind::Change,
                                    format!("copy {path}: {d}"),
                                    None,
                                    action,
                                )
                            })
                        }
                    }
                    (PathFact::File { .. }, _) => change(
                        ChangeKind::Create,
                        format!("copy {src} → {path}"),
                        None,
                        action,
                    ),
                    _ => change(
                        ChangeKind::Create,
                        format!("copy {src} → {path} (source is made by an earlier step)"),
                        None,
                        action,
                    ),
                }
            }
            Resource::Fetch { src, dest } => {
                let local = local.files.get(dest).cloned().flatten();
                match (facts.path(src), local) {
                    (PathFact::File { sha256, .. }, Some((lsha, lmode)))
                        if *sha256 == lsha && lmode & 0o077 == 0 =>
                    {
                        None
                    }
                    (PathFact::File { .. }, Some(_)) => change(
                        ChangeKind::Change,
                        format!(
                            "fetch {src} → {} (content differs; secret, not shown)",
                            dest.display()
                        ),
                        None,
                        Action::Fetch {
                            src: src.clone(),
                            dest: dest.clone(),
                        },
                    ),
                    (PathFact::File { .. }, None) => change(
                        ChangeKind::Create,
                        format!("fetch {src} → {} (0600)", dest.display()),
                        None,
                        Action::Fetch {
                            src: src.clone(),
                            dest: dest.clone(),
                        },
                    ),
                    _ => change(
                        ChangeKind::Create,
                        format!(
                            "fetch {src} → {} (0600; made by an earlier step)",
                            dest.display()
                        ),
                        None,
                        Action::Fetch {
                            src: src.clone(),
                            dest: dest.clone(),
                        },
                    ),
                }
            }
            Resource::KubeadmJoin { node_name } => {
                if facts.checks.get(id).copied().unwrap_or(false) {
                    None
                } else {
                    change(
                        ChangeKind::Create,
                        format!(
                            "kubeadm join as {node_name} (fresh 10-minute token from the master)"
                        ),
                        None,
                        Action::Join {
                            node_name: node_name.clone(),
                        },
                    )
                }
            }
        })
    }

    fn plan_content(
        &self,
        id: &str,
        role: &str,
        path: &str,
        want: &[u8],
        meta: &Meta,
        facts: &HostFacts,
    ) -> Option<Change> {
        let script = write_file_script(path, want, meta.mode, &meta.chown());
        let notify = match self {
            Resource::File { notify, .. } => notify.clone(),
            _ => None,
        };
        let action = Action::Script {
            script,
            secret_output: false,
        };
        let mk = |kind, summary, diff| {
            Some(Change {
                id: id.into(),
                role: role.into(),
                kind,
                summary,
                diff,
                action: action.clone(),
            })
        };
        let _ = notify;
        match facts.path(path) {
            PathFact::File {
                sha256,
                mode,
                owner,
                group,
                content,
            } => {
                if *sha256 != sha256_hex(want) {
                    let diff = content.as_ref().and_then(|c| unified_diff(path, c, want));
                    let extra = meta
                        .differs(*mode, owner, group)
                        .map(|d| format!(", {d}"))
                        .unwrap_or_default();
                    mk(
                        ChangeKind::Change,
                        format!("file {path}: content{extra}"),
                        diff,
                    )
                } else {
                    meta.differs(*mode, owner, group)
                        .and_then(|d| mk(ChangeKind::Change, format!("file {path}: {d}"), None))
                }
            }
            PathFact::Missing => mk(
                ChangeKind::Create,
                format!(
                    "file {path} ({:04o} {}, {} bytes)",
                    meta.mode,
                    meta.show(),
                    want.len()
                ),
                unified_diff(path, b"", want),
            ),
            _ => mk(
                ChangeKind::Change,
                format!("file {path}: replace what is there with a file"),
                None,
            ),
        }
    }

    /// The path fact after this resource is applied (files only), so later resources of the
    /// same run that touch the same file plan against the new content.
    pub fn after_state(&self, facts: &HostFacts) -> Option<(String, PathFact)> {
        let (path, content, meta) = match self {
            Resource::File {
                path,
                content,
                owner,
                group,
                mode,
                ..
            } => (
                path,
                content.clone().unwrap_or_default().into_bytes(),
                Meta::new("", owner, group, mode, 0o644).ok()?,
            ),
            Resource::LineInFile {
                path,
                line,
                match_prefix,
                owner,
                group,
                mode,
            } => match facts.path(path) {
                PathFact::File {
                    content: Some(c),
                    mode,
                    owner,
                    group,
                    ..
                } => (
                    path,
                    line_in_text(&String::from_utf8_lossy(c), line, match_prefix.as_deref())
                        .into_bytes(),
                    Meta {
                        owner: owner.clone(),
                        group: Some(group.clone()),
                        mode: *mode,
                    },
                ),
                _ => (
                    path,
                    line_in_text("", line, None).into_bytes(),
                    Meta::new("", owner, group, mode, 0o644).ok()?,
                ),
            },
            _ => return None,
        };
        let group = meta
            .group
            .clone()
            .unwrap_or_else(|| match facts.path(path) {
                PathFact::File { group, .. } => group.clone(),
                _ => meta.owner.clone(),
            });
        Some((
            path.clone(),
            PathFact::File {
                mode: meta.mode,
                owner: meta.owner,
                group,
                sha256: sha256_hex(&content),
                content: Some(content),
            },
        ))
    }

    /// Service to restart when this resource changes.
    pub fn notify(&self) -> Option<&str> {
        match self {
            Resource::File { notify, .. } => notify.as_deref(),
            _ => None,
        }
    }
}

/// `text` with `line` present (replacing the first line starting with `prefix` if given).
pub fn line_in_text(text: &str, line: &str, prefix: Option<&str>) -> String {
    if text.lines().any(|l| l == line) {
        return text.to_string();
    }
    if let Some(prefix) = prefix
        && let Some(pos) = text.lines().position(|l| l.starts_with(prefix))
    {
        let mut out: Vec<&str> = text.lines().collect();
        out[pos] = line;
        let mut s = out.join("\n");
        s.push('\n');
        return s;
    }
    let mut s = text.to_string();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(line);
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{PackageFact, ServiceFact};

    fn plan(r: &Resource, f: &HostFacts) -> Option<Change> {
        r.plan("t/x", "t", f, &LocalFacts::default()).unwrap()
    }

    #[test]
    fn line_in_text_appends_replaces_or_keeps() {
        assert_eq!(line_in_text("a\nb", "c", None), "a\nb\nc\n");
        assert_eq!(
            line_in_text("a\nexport X=0\n", "export X=1", Some("export X=")),
            "a\nexport X=1\n"
        );
        assert_eq!(
            line_in_text("a\nexport X=1\n", "export X=1", Some("export X=")),
            "a\nexport X=1\n"
        );
        assert_eq!(line_in_text("", "x", None), "x\n");
    }

    #[test]
    fn file_missing_is_create_same_is_none_other_is_change_with_diff() {
        let r = Resource::File {
            path: "/etc/docker/daemon.json".into(),
            content: Some("{\"a\":1}\n".into()),
            source: None,
            owner: None,
            group: None,
            mode: None,
            notify: Some("docker".into()),
        };
        let mut f = HostFacts::default();
        let c = plan(&r, &f).unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        let file = |content: &str, mode| PathFact::File {
            mode,
            owner: "root".into(),
            group: "root".into(),
            sha256: sha256_hex(content.as_bytes()),
            content: Some(content.as_bytes().to_vec()),
        };
        f.paths
            .insert("/etc/docker/daemon.json".into(), file("{\"a\":1}\n", 0o644));
        assert!(plan(&r, &f).is_none());
        f.paths
            .insert("/etc/docker/daemon.json".into(), file("{\"a\":1}\n", 0o600));
        assert!(plan(&r, &f).unwrap().summary.contains("mode 0600 → 0644"));
        f.paths
            .insert("/etc/docker/daemon.json".into(), file("{\"a\":2}\n", 0o644));
        let c = plan(&r, &f).unwrap();
        assert_eq!(c.kind, ChangeKind::Change);
        let diff = c.diff.unwrap();
        assert!(
            diff.contains("-{\"a\":2}") && diff.contains("+{\"a\":1}"),
            "{diff}"
        );
    }

    #[test]
    fn packages_pinned_and_held() {
        let r = Resource::Package {
            names: vec!["kubelet".into(), "kubeadm".into()],
            version: Some("1.37.2".into()),
            hold: true,
        };
        let mut f = HostFacts::default();
        let c = plan(&r, &f).unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        let Action::Script { script, .. } = &c.action else {
            panic!()
        };
        assert!(
            script.contains("'kubelet=1.37.2-*'")
                && script.contains("apt-mark hold 'kubelet' 'kubeadm'"),
            "{script}"
        );
        let pf = |v: &str, s: &str| PackageFact {
            version: v.into(),
            status: s.into(),
        };
        f.packages.insert("kubelet".into(), pf("1.37.2-1.1", "hi "));
        f.packages.insert("kubeadm".into(), pf("1.37.2-1.1", "hi "));
        assert!(plan(&r, &f).is_none());
        f.packages.insert("kubeadm".into(), pf("1.36.0-1.1", "hi "));
        let c = plan(&r, &f).unwrap();
        assert_eq!(c.kind, ChangeKind::Change);
        assert!(
            c.summary.contains("kubeadm 1.36.0-1.1 → 1.37.2") && !c.summary.contains("kubelet"),
            "{}",
            c.summary
        );
    }

    #[test]
    fn service_user_group_command() {
        let mut f = HostFacts::default();
        let s = Resource::Service {
            name: "docker".into(),
            enabled: true,
            started: true,
        };
        assert!(plan(&s, &f).unwrap().summary.contains("enable + start"));
        f.services.insert(
            "docker".into(),
            ServiceFact {
                enabled: "enabled".into(),
                active: "active".into(),
            },
        );
        assert!(plan(&s, &f).is_none());
        let g = Resource::UserInGroup {
            user: "aion".into(),
            group: "docker".into(),
        };
        assert!(plan(&g, &f).is_some());
        f.users.insert(
            "aion".into(),
            Some(["aion".to_string(), "docker".to_string()].into()),
        );
        assert!(plan(&g, &f).is_none());
        let c = Resource::Command {
            name: "swap off".into(),
            run: "swapoff -a".into(),
            check: "true".into(),
        };
        assert!(plan(&c, &f).is_some());
        f.checks.insert("t/x".into(), true);
        assert!(plan(&c, &f).is_none());
    }

    #[test]
    fn bad_mode_and_path_are_errors_naming_the_resource() {
        let mut r = Resource::Directory {
            path: "relative".into(),
            owner: None,
            group: None,
            mode: None,
        };
        assert!(
            r.validate("dirs/directory:relative")
                .unwrap_err()
                .to_string()
                .contains("dirs/directory:relative")
        );
        let mut r = Resource::Directory {
            path: "/x".into(),
            owner: None,
            group: None,
            mode: Some("99".into()),
        };
        assert!(matches!(
            r.validate("d"),
            Err(ResourceError::BadMode { .. })
        ));
    }
}
