//! `services.yml` as upstream aion-core reads it (`config/yaml_model.go`, go-yaml v2, non-strict).
//!
//! Key spelling, types and defaults follow `shared/docs/upstream-aion.md` §1. Defaults that
//! upstream applies in `setInitializeValue` are applied by the loader, so every consumer sees
//! the same effective values the broker would have used.

use std::collections::BTreeMap;

use crate::span::Span;

/// A whole `services.yml`. Maps keep file order (Vec of pairs) because the order is what the
/// operator wrote and what renders deterministically; duplicate keys are already resolved
/// (last wins, with a warning).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServicesFile {
    pub microservices: Vec<Microservice>,
    pub devices: Vec<Device>,
    /// `deviceName`: injected as `DEVICE_NAME`.
    pub device_name: String,
    /// `debug`: a string upstream (`debug: yes` → `"yes"`), injected as `DEBUG`.
    pub debug: String,
    pub span: Span,
}

impl ServicesFile {
    pub fn microservice(&self, name: &str) -> Option<&Microservice> {
        self.microservices.iter().find(|m| m.name == name)
    }
    pub fn device(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }
}

/// `devices.<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub name: String,
    pub addr: String,
    /// `sshPort`, default 22 (unused upstream).
    pub ssh_port: i32,
    /// default `aion` (unused upstream).
    pub username: String,
    /// default `aion` (unused upstream). Never printed.
    pub password: String,
    /// `aionHome`, default `/var/lib/aion`.
    pub aion_home: String,
    pub span: Span,
}

/// `microservices.<name>`, with upstream's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Microservice {
    /// The map key: microservice name = image name.
    pub name: String,
    pub command: Option<Vec<String>>,
    /// connection key → targets, in file order.
    pub next_service: Vec<(String, Vec<NextService>)>,
    /// Effective scale (≥ 1; upstream turns ≤ 0 into 1).
    pub scale: i32,
    /// `env`, in file order, values as the scalar's text.
    pub env: Vec<(String, String)>,
    /// default `Runtime`.
    pub position: String,
    pub always: bool,
    pub multiple: bool,
    pub startup: bool,
    pub interval: i32,
    pub ports: Vec<Port>,
    pub directory_path: String,
    /// default `default`.
    pub service_account: String,
    /// default `ClusterIP`; only `NodePort` changes anything.
    pub network: String,
    /// default `latest`.
    pub tag: String,
    /// Raw `containerPath:hostPath[:Bidirectional]` entries.
    pub volume_mount_path_list: Vec<VolumeMount>,
    pub privileged: bool,
    pub without_kanban: bool,
    pub target_node: String,
    pub resources: Option<Resources>,
    pub span: Span,
}

impl Microservice {
    /// Upstream's `getLabelName` base: last path segment of the name, cut at ':'.
    pub fn label_base(&self) -> &str {
        let last = self.name.rsplit('/').next().unwrap_or(&self.name);
        last.split(':').next().unwrap_or(last)
    }
    /// Instance object name `<base>-NNN` for instance `i` (1-based).
    pub fn instance_name(&self, i: i32) -> String {
        format!("{}-{:03}", self.label_base(), i)
    }
    pub fn is_node_port(&self) -> bool {
        self.network == "NodePort"
    }
    /// Targets for a connection key: exact key, else `default` (upstream `GetNextServiceList`).
    pub fn next_services(&self, connection_key: &str) -> &[NextService] {
        self.next_service
            .iter()
            .find(|(k, _)| k == connection_key)
            .or_else(|| self.next_service.iter().find(|(k, _)| k == "default"))
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }
}

/// One `volumeMountPathList` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub container_path: String,
    pub host_path: String,
    pub bidirectional: bool,
    pub span: Span,
}

/// `nextService.<key>[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextService {
    pub name: String,
    /// `"n"` when empty; `"0"` → instance 1, `"n"` → same number, anything else → 1.
    pub pattern: String,
    pub device: String,
    pub span: Span,
}

impl NextService {
    /// Upstream `config.GetNextNumber`.
    pub fn next_number(&self, process_number: i32) -> i32 {
        match self.pattern.as_str() {
            "n" | "" => process_number,
            _ => 1,
        }
    }
}

/// `ports[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    /// TCP/UDP/SCTP; empty means the API default (TCP).
    pub protocol: String,
    pub port: i32,
    /// `nodePort`; 0 when absent.
    pub node_port: i32,
    pub span: Span,
}

/// `resources`: quantities as written (validated to parse as Kubernetes quantities).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}
