//! The plan: per host, the ordered changes that `apply` will make (each with the exact script
//! it runs), plus counts. `plan` prints this value; `apply` executes this same value, so the
//! preview cannot drift from the action. Building it ([`plan_host`]) is pure. Each change is a
//! [`Change`] ([`crate::change`]); the text form is [`crate::plan_text`].

use aion_model::inventory::Role;
use serde::Serialize;

use crate::change::{Action, Change, ChangeKind, ClusterStep};
use crate::facts::{FactRequest, HostFacts};
use crate::images::{ImageChange, ImageRemoval, Relay, RelaySource};
use crate::roles::{HostSpec, LocalFacts, ResourceError};
use crate::shell::sh_quote;

/// What a cluster step's read-only check found at plan time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCheck {
    Unchanged,
    /// Something to do (what).
    Needed(String),
    /// Cannot be checked yet (no cluster yet, or the API is unreachable): why.
    Unknown(String),
    /// Nothing `apply` can do, but the person should know (e.g. a setting that cannot change
    /// after `kubeadm init`): one message each.
    Warnings(Vec<String>),
}

#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub address: String,
    pub role: Role,
    /// SSH user (whose home `~` is).
    pub user: String,
    pub changes: Vec<Change>,
    pub unchanged: usize,
    /// Facts could not be gathered (unreachable, sudo refused, ...): nothing planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the plan cannot do and the person should know (each names the setting).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Images to send and import (inventories with `imageSources`), after the runtime's host
    /// changes and before those of Kubernetes (see [`HostPlan::images_boundary`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageChange>,
    /// Old versions to remove from its containerd once the new pods are ready (`- image`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_removals: Vec<ImageRemoval>,
    /// The host its images come from (`imagesFrom`), when they do not come from this machine.
    #[serde(rename = "imagesFrom", skip_serializing_if = "Option::is_none")]
    pub images_from: Option<RelaySource>,
    /// What it receives only to pass on to the hosts that fetch from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<Relay>,
}

impl HostPlan {
    /// Where the images phase comes in its changes: the first change of a role that needs the
    /// node's images ([`crate::roles::AFTER_IMAGES`]); every change before it sets up the
    /// container runtime the images are imported into.
    pub fn images_boundary(&self) -> usize {
        self.changes
            .iter()
            .position(|c| crate::roles::AFTER_IMAGES.contains(&c.role.as_str()))
            .unwrap_or(self.changes.len())
    }

    /// Bytes this host receives from this machine in the images phase (not those it fetches
    /// from another host).
    pub fn uplink_bytes(&self) -> u64 {
        let own: u64 = if self.images_from.is_some() {
            0
        } else {
            self.images.iter().map(|i| i.bytes).sum()
        };
        own + self.relay.as_ref().map_or(0, |r| r.bytes)
    }
}

/// Counts over the whole plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub create: usize,
    pub change: usize,
    pub unchanged: usize,
    pub failed_hosts: usize,
    pub warnings: usize,
    /// Images to import, and the bytes to send for them from this machine (a relay's kept
    /// blobs included), and those hosts fetch from another host (`imagesFrom`).
    pub images: usize,
    pub image_bytes: u64,
    pub image_bytes_between_hosts: u64,
    /// Old image versions to remove.
    pub image_removals: usize,
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
            counts.warnings += h.warnings.len();
            if h.error.is_some() {
                counts.failed_hosts += 1;
            }
            counts.images += h.images.len();
            counts.image_bytes += h.uplink_bytes();
            if h.images_from.is_some() {
                counts.image_bytes_between_hosts += h.images.iter().map(|i| i.bytes).sum::<u64>();
            }
            counts.image_removals += h.image_removals.len();
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
        self.counts.create + self.counts.change + self.counts.images + self.counts.image_removals
            > 0
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
    let mut warnings = Vec::new();
    for (i, step) in spec.cluster.iter().enumerate() {
        let check = cluster
            .get(i)
            .cloned()
            .unwrap_or(ClusterCheck::Unknown("not checked".into()));
        if matches!(step, ClusterStep::InitSettings { .. }) {
            // read-only: never a change; unknown before init (nothing to compare with yet)
            if let ClusterCheck::Warnings(w) = check {
                warnings.extend(w);
            }
            continue;
        }
        let (kind, summary) = match check {
            ClusterCheck::Unchanged => {
                unchanged += 1;
                continue;
            }
            ClusterCheck::Warnings(w) => {
                warnings.extend(w);
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
        role: spec.host.role,
        user: spec.host.ssh.user.clone(),
        changes,
        unchanged,
        error: None,
        warnings,
        images: Vec::new(),
        image_removals: Vec::new(),
        images_from: None,
        relay: None,
    })
}

/// Identity of a cluster step (`apply:flannel.yaml`, `untaint:node`, ...).
pub fn step_key(s: &ClusterStep) -> String {
    match s {
        ClusterStep::ApplyManifest(t) => format!("apply:{t}"),
        ClusterStep::Untaint { node } => format!("untaint:{node}"),
        ClusterStep::WaitNodeReady { node, .. } => format!("node-ready:{node}"),
        ClusterStep::InitSettings { host, .. } => format!("init-settings:{host}"),
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
        ClusterStep::InitSettings { host, .. } => {
            format!("compare the settings `kubeadm init` fixed on {host} with the inventory")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan_text::{Style, render_text};

    fn test_host(name: &str) -> aion_model::inventory::Host {
        use aion_model::inventory::{Host, HostVars, Role, SshSettings};
        Host {
            name: name.into(),
            address: "10.0.0.1".into(),
            role: Role::Master,
            ssh: SshSettings {
                user: "root".into(),
                port: 22,
                key: None,
            },
            vars: HostVars {
                gpu: false,
                kubernetes_version: "1.37.2".into(),
                pod_cidr: "10.245.0.0/16".into(),
                extra_sans: vec![],
                registry_prefix: "latonaio".into(),
                namespace: "default".into(),
                ..Default::default()
            },
            services: None,
            data_sweeper: None,
            images_from: None,
            span: Default::default(),
        }
    }

    #[test]
    fn init_settings_warnings_are_warnings_in_the_plan_never_changes() {
        let w = vec![
            "edge-master: extraSans cannot change after `kubeadm init`: …".to_string(),
            "edge-master: kubernetesVersion: the control plane runs v1.37.2 …".to_string(),
        ];
        // In the plan: a warning on the master, no change, counted and shown.
        let spec = HostSpec {
            host: test_host("edge-master"),
            items: Vec::new(),
            cluster: vec![
                ClusterStep::InitSettings {
                    host: "edge-master".into(),
                    pod_cidr: "10.245.0.0/16".into(),
                    extra_sans: vec![],
                    kubernetes_version: "1.37.2".into(),
                },
                ClusterStep::ApplyManifest("flannel.yaml".into()),
            ],
        };
        let checks = [ClusterCheck::Warnings(w.clone()), ClusterCheck::Unchanged];
        let hp = plan_host(
            &spec,
            &HostFacts::default(),
            &LocalFacts::default(),
            &checks,
        )
        .unwrap();
        assert!(hp.changes.is_empty(), "{:?}", hp.changes);
        assert_eq!(hp.warnings, w);
        let p = Plan::new(vec![hp]);
        assert!(!p.has_changes());
        assert_eq!(p.counts.warnings, 2);
        let t = render_text(&p, Style { color: false });
        assert!(
            t.contains("  ! warning: edge-master: extraSans cannot change"),
            "{t}"
        );
        assert!(t.trim_end().ends_with(", 2 warning(s)"), "{t}");
        // before init (no kubeadm-config): nothing, and never a change
        let hp = plan_host(
            &spec,
            &HostFacts::default(),
            &LocalFacts::default(),
            &[
                ClusterCheck::Unknown("no kubeadm-config yet".into()),
                ClusterCheck::Unchanged,
            ],
        )
        .unwrap();
        assert!(hp.changes.is_empty() && hp.warnings.is_empty());
    }
}
