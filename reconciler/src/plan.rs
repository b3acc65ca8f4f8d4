//! The plan: per host, the ordered changes that `apply` will make (each with the exact script
//! it runs), plus counts. `plan` prints this value; `apply` executes this same value, so the
//! preview cannot drift from the action. Building it ([`plan_host`]) is pure.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::facts::{FactRequest, HostFacts, sh_quote};
use crate::roles::{ClusterStep, HostSpec, LocalFacts, ResourceError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Create,
    Change,
}

/// What `apply` does for one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a script on the host (as root). `secret_output`: never log what it prints.
    Script { script: String, secret_output: bool },
    /// Copy a host file to the operator's machine (mode 0600).
    Fetch { src: String, dest: PathBuf },
    /// `kubeadm join` with a join command created on the master at that moment.
    Join { node_name: String },
    /// A step through the Kubernetes API (after the master's host changes).
    Cluster(ClusterStep),
}

/// What a cluster step's read-only check found at plan time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCheck {
    Unchanged,
    /// Something to do (what).
    Needed(String),
    /// Cannot be checked yet (no cluster yet, or the API is unreachable): why.
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `role/kind:key`.
    pub id: String,
    pub role: String,
    pub kind: ChangeKind,
    pub summary: String,
    /// Unified diff of a file's content (never for secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(skip)]
    pub action: Action,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub address: String,
    pub role: String,
    /// SSH user (whose home `~` is).
    pub user: String,
    pub changes: Vec<Change>,
    pub unchanged: usize,
    /// Facts could not be gathered (unreachable, sudo refused, ...): nothing planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts over the whole plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub create: usize,
    pub change: usize,
    pub unchanged: usize,
    pub failed_hosts: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub hosts: Vec<HostPlan>,
    pub counts: Counts,
}

impl Plan {
    pub fn new(hosts: Vec<HostPlan>) -> Plan {
        let mut counts = Counts::default();
        for h in &hosts {
            counts.unchanged += h.unchanged;
            if h.error.is_some() {
                counts.failed_hosts += 1;
            }
            for c in &h.changes {
                match c.kind {
                    ChangeKind::Create => counts.create += 1,
                    ChangeKind::Change => counts.change += 1,
                }
            }
        }
        Plan { hosts, counts }
    }

    pub fn has_changes(&self) -> bool {
        self.counts.create + self.counts.change > 0
    }

    pub fn host(&self, name: &str) -> Option<&HostPlan> {
        self.hosts.iter().find(|h| h.host == name)
    }
}

/// The fact request for a host's resources.
pub fn fact_request(spec: &HostSpec) -> FactRequest {
    let mut req = FactRequest {
        user: spec.host.ssh.user.clone(),
        ..FactRequest::default()
    };
    for item in &spec.items {
        item.resource.request(&item.id, &mut req);
    }
    req
}

/// Compare a host's desired resources with its facts: the changes, in role order, with a
/// service restart appended when a file that notifies it changes, then the cluster steps
/// (`cluster`: the result of each step's check, in the spec's order).
pub fn plan_host(
    spec: &HostSpec,
    facts: &HostFacts,
    local: &LocalFacts,
    cluster: &[ClusterCheck],
) -> Result<HostPlan, ResourceError> {
    let mut changes = Vec::new();
    let mut unchanged = 0;
    let mut restarts: Vec<(String, String)> = Vec::new();
    let mut facts = facts.clone();
    for item in &spec.items {
        let planned = item.resource.plan(&item.id, &item.role, &facts, local)?;
        if planned.is_some()
            && let Some((path, after)) = item.resource.after_state(&facts)
        {
            facts.paths.insert(path, after);
        }
        match planned {
            Some(c) => {
                if let Some(svc) = item.resource.notify()
                    && !restarts.iter().any(|(s, _)| s == svc)
                {
                    restarts.push((svc.to_string(), item.role.clone()));
                }
                changes.push(c);
            }
            None => unchanged += 1,
        }
    }
    for (svc, role) in restarts {
        changes.push(Change {
            id: format!("{role}/restart:{svc}"),
            role,
            kind: ChangeKind::Change,
            summary: format!("restart service {svc} (its configuration changes)"),
            diff: None,
            action: Action::Script {
                script: format!("systemctl restart {}\n", sh_quote(&svc)),
                secret_output: false,
            },
        });
    }
    for (i, step) in spec.cluster.iter().enumerate() {
        let check = cluster
            .get(i)
            .cloned()
            .unwrap_or(ClusterCheck::Unknown("not checked".into()));
        let (kind, summary) = match check {
            ClusterCheck::Unchanged => {
                unchanged += 1;
                continue;
            }
            ClusterCheck::Needed(what) => (
                ChangeKind::Change,
                format!("{}: {what}", describe_step(step)),
            ),
            ClusterCheck::Unknown(why) => (
                ChangeKind::Create,
                format!("{} ({why})", describe_step(step)),
            ),
        };
        changes.push(Change {
            id: format!("cluster/{}", step_key(step)),
            role: "cluster".into(),
            kind,
            summary,
            diff: None,
            action: Action::Cluster(step.clone()),
        });
    }
    Ok(HostPlan {
        host: spec.host.name.clone(),
        address: spec.host.address.clone(),
        role: format!("{:?}", spec.host.role).to_lowercase(),
        user: spec.host.ssh.user.clone(),
        changes,
        unchanged,
        error: None,
    })
}

/// Colours for the text rendering (none under NO_COLOR / not a terminal).
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// Human-readable plan: per host, `+` create / `~` change lines with diffs, then a summary.
pub fn render_text(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    for h in &plan.hosts {
        let _ = writeln!(
            out,
            "{} ({}, {})",
            style.paint("1", &h.host),
            h.role,
            h.address
        );
        if let Some(e) = &h.error {
            let _ = writeln!(out, "  {} {e}", style.paint("31", "!"));
            continue;
        }
        for c in &h.changes {
            let sign = match c.kind {
                ChangeKind::Create => style.paint("32", "+"),
                ChangeKind::Change => style.paint("33", "~"),
            };
            let _ = writeln!(
                out,
                "  {sign} {} {}",
                c.id,
                style.paint("2", &format!("— {}", c.summary))
            );
            if let Some(d) = &c.diff {
                for line in d.lines() {
                    let painted = if line.starts_with('+') && !line.starts_with("+++") {
                        style.paint("32", line)
                    } else if line.starts_with('-') && !line.starts_with("---") {
                        style.paint("31", line)
                    } else {
                        line.to_string()
                    };
                    let _ = writeln!(out, "      {painted}");
                }
            }
        }
        let _ = writeln!(out, "  {} unchanged", h.unchanged);
    }
    let c = plan.counts;
    let _ = write!(
        out,
        "Hosts: {} to create, {} to change, {} unchanged",
        c.create, c.change, c.unchanged
    );
    if c.failed_hosts > 0 {
        let _ = write!(out, ", {} host(s) could not be planned", c.failed_hosts);
    }
    out.push('\n');
    out
}

/// Identity of a cluster step (`apply:flannel.yaml`, `untaint:node`, ...).
pub fn step_key(s: &ClusterStep) -> String {
    match s {
        ClusterStep::ApplyManifest(t) => format!("apply:{t}"),
        ClusterStep::Untaint { node } => format!("untaint:{node}"),
        ClusterStep::WaitNodeReady { node, .. } => format!("node-ready:{node}"),
    }
}

pub fn describe_step(s: &ClusterStep) -> String {
    match s {
        ClusterStep::ApplyManifest(t) => format!("apply {t} (server-side apply)"),
        ClusterStep::Untaint { node } => {
            format!("remove master/control-plane NoSchedule taints from {node}")
        }
        ClusterStep::WaitNodeReady {
            node,
            timeout_seconds,
        } => format!("wait until node {node} is Ready (≤ {timeout_seconds} s)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ChangeKind, diff: Option<&str>) -> Change {
        Change {
            id: "r/file:/x".into(),
            role: "r".into(),
            kind,
            summary: "s".into(),
            diff: diff.map(str::to_string),
            action: Action::Script {
                script: "true".into(),
                secret_output: false,
            },
        }
    }

    #[test]
    fn counts_and_text() {
        let h = HostPlan {
            host: "m".into(),
            address: "10.0.0.1".into(),
            role: "master".into(),
            changes: vec![
                change(ChangeKind::Create, None),
                change(ChangeKind::Change, Some("--- a\n+++ b\n-x\n+y\n")),
            ],
            user: "aion".into(),
            unchanged: 3,
            error: None,
        };
        let bad = HostPlan {
            host: "w".into(),
            error: Some("unreachable".into()),
            changes: vec![],
            unchanged: 0,
            ..h.clone()
        };
        let p = Plan::new(vec![h, bad]);
        assert_eq!(
            p.counts,
            Counts {
                create: 1,
                change: 1,
                unchanged: 3,
                failed_hosts: 1
            }
        );
        let t = render_text(&p, Style { color: false });
        assert!(t.contains("  + r/file:/x — s"), "{t}");
        assert!(t.contains("      -x\n      +y\n"), "{t}");
        assert!(t.contains("! unreachable"));
        assert!(
            t.ends_with(
                "Hosts: 1 to create, 1 to change, 3 unchanged, 1 host(s) could not be planned\n"
            ),
            "{t}"
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["counts"]["create"], 1);
        assert!(json["hosts"][0]["changes"][0].get("action").is_none());
    }
}
