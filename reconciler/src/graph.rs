//! The kanban graph: which microservice instances run on which device and where each one's
//! kanbans go (`nextService`). Pure: model → [`Graph`] here, [`Graph`] → text in
//! [`svg`] (with its own layered [`layout`], no Graphviz), [`dot`] and [`mermaid`]; reading
//! files and writing the output is `commands::graph`.
//!
//! Placement follows `render`: in single mode every services file runs on the master; in
//! cluster mode each host runs its own file in its own namespace. A `nextService` entry whose
//! `device:` is listed under `devices:` and is not this device goes to another device, as
//! `kanban::routing` decides: to the inventory host with that device name (its `deviceName`,
//! else its host name), or to a device outside the inventory (drawn dashed). Targets that do
//! not resolve are red and carry the validator's diagnostic (`aion_model::validate`), so the
//! graph says exactly what `validate` says.
//!
//! Everything is kept in `Vec`s in file and inventory order (lookups in `BTreeMap`s), so the
//! same input gives the same bytes in every format.

pub mod dot;
pub mod layout;
pub mod mermaid;
pub mod svg;

use std::collections::BTreeMap;

use aion_model::inventory::{Inventory, Mode};
use aion_model::services::{Microservice, NextService, ServicesFile};
use aion_model::span::Span;
use aion_model::yaml::join_pointer;
use aion_model::{Diagnostic, Host};

use crate::render::HostName;

/// Width (characters) diagnostic texts are wrapped at inside nodes and edge labels.
pub const WRAP: usize = 46;

/// A whole drawing: device boxes, the nodes inside them, and the kanban edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// What is drawn (`inventory lab (cluster)`, or the services file's name).
    pub title: String,
    pub devices: Vec<Device>,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// One box: an inventory host (with its namespace), the device of a lone services.yml, or a
/// device that a `nextService` names but the inventory does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Stable id (`d0`, `d1`, ...) in drawing order.
    pub id: String,
    pub title: String,
    /// Smaller lines under the title (role, namespace, device name, address).
    pub details: Vec<String>,
    /// Not part of the inventory (or, without one, not the drawn file's device).
    pub external: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Stable id (`n0`, `n1`, ...) in drawing order.
    pub id: String,
    /// Index into [`Graph::devices`].
    pub device: usize,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A microservice of the device's namespace and its instances.
    Service(Service),
    /// A microservice on a device outside the inventory: only its name is known.
    Remote { name: String },
    /// A `nextService` target that does not resolve (drawn red, with why).
    Unresolved { name: String, problem: Problem },
    /// Placeholder text for a device with nothing to run.
    Note(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// Object names of the first and last instance (`<base>-001`, `<base>-NNN`) as `render`
    /// names them.
    pub first_instance: String,
    pub last_instance: String,
    /// Effective scale = number of instances (≥ 1).
    pub scale: i32,
    /// `startup: yes`: running from the start; otherwise idle until a kanban arrives.
    pub startup: bool,
    /// `always: yes` is a Deployment; `always: no` a Job.
    pub always: bool,
    /// `targetNode`, when it is not the host the box stands for.
    pub target_node: Option<String>,
}

/// Why a target is red: a validator diagnostic, or (for what only the whole inventory shows,
/// e.g. a device whose services.yml lacks the target) the graph's own finding, without code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: Option<String>,
    pub message: String,
    pub hint: Option<String>,
    /// `file:line:column`, file name only (the graph must not depend on where files live).
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Indices into [`Graph::nodes`].
    pub from: usize,
    pub to: usize,
    /// The connection key (`default`, ...).
    pub key: String,
    /// The pattern when it is not `n` (anything else sends every kanban to instance 001).
    pub pattern: Option<String>,
    /// Source and target are on different devices.
    pub cross_device: bool,
    pub status: EdgeStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeStatus {
    Ok,
    /// Into an [`NodeKind::Unresolved`] node, which shows the problem.
    Unresolved,
    /// Delivered, but the validator warns about the entry (e.g. `next-device-unknown`: upstream
    /// delivers locally); the edge is red and its label carries the text.
    Warning(Problem),
}

/// A node's text: a bold title and smaller lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub title: String,
    pub lines: Vec<String>,
}

impl Problem {
    fn from_diagnostic(d: &Diagnostic) -> Problem {
        Problem {
            code: Some(d.code.to_owned()),
            message: d.message.clone(),
            hint: d.hint.clone(),
            at: location(&d.span),
        }
    }

    /// `code: message`, `hint: ...` and the position, wrapped at [`WRAP`].
    pub fn lines(&self) -> Vec<String> {
        let head = match &self.code {
            Some(c) => format!("{c}: {}", self.message),
            None => self.message.clone(),
        };
        let mut out = wrap(&head, WRAP);
        if let Some(h) = &self.hint {
            out.extend(wrap(&format!("hint: {h}"), WRAP));
        }
        out.push(format!("at {}", self.at));
        out
    }
}

impl Node {
    pub fn label(&self) -> Label {
        match &self.kind {
            NodeKind::Service(s) => {
                let instances = if s.scale > 1 {
                    // `sensor-001…003 ×3`: the last instance's number only, the base once.
                    let last_number = s
                        .last_instance
                        .rsplit('-')
                        .next()
                        .unwrap_or(&s.last_instance);
                    format!("{}…{last_number} ×{}", s.first_instance, s.scale)
                } else {
                    format!("{} ×1", s.first_instance)
                };
                let mut lines = vec![instances, s.tags()];
                if let Some(t) = &s.target_node {
                    lines.push(format!("targetNode {t}"));
                }
                Label {
                    title: s.name.clone(),
                    lines,
                }
            }
            NodeKind::Remote { name } => Label {
                title: name.clone(),
                lines: vec!["runs there (not drawn)".to_owned()],
            },
            NodeKind::Unresolved { name, problem } => {
                let mut lines = vec!["unresolved nextService target".to_owned()];
                lines.extend(problem.lines());
                Label {
                    title: if name.is_empty() {
                        "(no name)".to_owned()
                    } else {
                        name.clone()
                    },
                    lines,
                }
            }
            NodeKind::Note(text) => Label {
                title: text.clone(),
                lines: Vec::new(),
            },
        }
    }
}

impl Service {
    /// `startup · always`, `on demand · job`, ...
    pub fn tags(&self) -> String {
        format!(
            "{} · {}",
            if self.startup { "startup" } else { "on demand" },
            if self.always { "always" } else { "job" }
        )
    }
}

impl Edge {
    /// `default`, `default · pattern 0`, then a warning's text (red) if any.
    pub fn label_lines(&self) -> Vec<String> {
        let mut first = self.key.clone();
        if let Some(p) = &self.pattern {
            first.push_str(&format!(" · pattern {p}"));
        }
        let mut out = vec![first];
        if let EdgeStatus::Warning(p) = &self.status {
            out.extend(p.lines());
        }
        out
    }
    pub fn is_red(&self) -> bool {
        !matches!(self.status, EdgeStatus::Ok)
    }
}

/// `file.yml:line:column`: the file name only, so output does not depend on the checkout.
fn location(span: &Span) -> String {
    format!("{}:{}:{}", file_name(span), span.line, span.column)
}

fn file_name(span: &Span) -> String {
    span.file.file_name().map_or_else(
        || span.file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
/// Greedy word wrap at `width` characters; a longer word gets a line of its own.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() || out.is_empty() {
        out.push(line);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------------------------

/// One device box and the services files that run on it.
struct Place<'a> {
    /// The name `nextService` `device:` entries use for it (`AION_DEVICE`).
    device_name: String,
    /// The host the box stands for (targetNode equal to it is not repeated on nodes).
    host: Option<&'a str>,
    files: Vec<&'a ServicesFile>,
}

struct Builder<'a> {
    graph: Graph,
    places: Vec<Place<'a>>,
    /// Per place, per file: microservice name → node.
    service_nodes: Vec<Vec<BTreeMap<&'a str, usize>>>,
    /// External device name → device index.
    external: BTreeMap<String, usize>,
    /// (external device, microservice) → node.
    remote_nodes: BTreeMap<(usize, String), usize>,
    /// Drawing an inventory (else one services.yml).
    in_inventory: bool,
}

/// The graph of an inventory: one box per host that runs something (as `render` places it),
/// `services` giving each host's parsed services.yml.
pub fn from_inventory(inv: &Inventory, services: &[(HostName, ServicesFile)]) -> Graph {
    let mut b = Builder::new(format!("inventory {} ({})", inv.name, inv.mode), true);
    let hosts: Vec<&Host> = match inv.mode {
        Mode::Single => inv.masters().take(1).collect(),
        Mode::Cluster => inv.masters().take(1).chain(inv.workers()).collect(),
    };
    for host in hosts {
        let files: Vec<&ServicesFile> = services
            .iter()
            .filter(|(h, _)| inv.mode == Mode::Single || *h == host.name)
            .map(|(_, f)| f)
            .collect();
        // As `render`: the first file's deviceName, else the host name.
        let device_name = files
            .first()
            .filter(|f| !f.device_name.is_empty())
            .map_or_else(|| host.name.clone(), |f| f.device_name.clone());
        let mut details = vec![format!("{} · namespace {}", host.role, host.vars.namespace)];
        if device_name != host.name {
            details.push(format!("device {device_name}"));
        }
        b.add_device(host.name.clone(), details, false);
        b.places.push(Place {
            device_name,
            host: Some(&host.name),
            files,
        });
    }
    b.finish(Some(inv))
}

/// The graph of one services.yml: one device (its `deviceName`, if any), plus the devices its
/// `nextService` entries send to.
pub fn from_services(file: &ServicesFile) -> Graph {
    let name = file_name(&file.span);
    let mut b = Builder::new(name.clone(), false);
    let title = if file.device_name.is_empty() {
        "this device".to_owned()
    } else {
        file.device_name.clone()
    };
    b.add_device(title, vec![name], false);
    b.places.push(Place {
        device_name: file.device_name.clone(),
        host: None,
        files: vec![file],
    });
    b.finish(None)
}

impl<'a> Builder<'a> {
    fn new(title: String, in_inventory: bool) -> Self {
        Builder {
            graph: Graph {
                title,
                devices: Vec::new(),
                nodes: Vec::new(),
                edges: Vec::new(),
            },
            places: Vec::new(),
            service_nodes: Vec::new(),
            external: BTreeMap::new(),
            remote_nodes: BTreeMap::new(),
            in_inventory,
        }
    }

    fn add_device(&mut self, title: String, details: Vec<String>, external: bool) -> usize {
        let i = self.graph.devices.len();
        self.graph.devices.push(Device {
            id: format!("d{i}"),
            title,
            details,
            external,
        });
        i
    }

    fn add_node(&mut self, device: usize, kind: NodeKind) -> usize {
        let i = self.graph.nodes.len();
        self.graph.nodes.push(Node {
            id: format!("n{i}"),
            device,
            kind,
        });
        i
    }

    fn finish(mut self, inv: Option<&Inventory>) -> Graph {
        // Nodes first (every box's microservices in file order), then edges, so node ids do
        // not depend on which edges exist.
        for p in 0..self.places.len() {
            let files = self.places[p].files.clone();
            let host = self.places[p].host;
            let mut per_file = Vec::new();
            for f in &files {
                let mut by_name = BTreeMap::new();
                for ms in &f.microservices {
                    let n = self.add_node(p, NodeKind::Service(service(ms, host)));
                    by_name.insert(ms.name.as_str(), n);
                }
                per_file.push(by_name);
            }
            if files.is_empty() {
                self.add_node(p, NodeKind::Note("no services.yml".to_owned()));
            } else if files.iter().all(|f| f.microservices.is_empty()) {
                self.add_node(p, NodeKind::Note("no microservices".to_owned()));
            }
            self.service_nodes.push(per_file);
        }
        for p in 0..self.places.len() {
            let files = self.places[p].files.clone();
            for (fi, f) in files.iter().enumerate() {
                let diags = next_service_diagnostics(f, inv);
                for ms in &f.microservices {
                    let from = self.service_nodes[p][fi][ms.name.as_str()];
                    let base =
                        join_pointer(&join_pointer("/microservices", &ms.name), "nextService");
                    for (key, targets) in &ms.next_service {
                        let kp = join_pointer(&base, key);
                        for (i, t) in targets.iter().enumerate() {
                            let diag = diags.get(&format!("{kp}/{i}"));
                            self.edge(p, fi, from, key, t, diag);
                        }
                    }
                }
            }
        }
        self.graph
    }

    /// Resolve one `nextService` entry of a microservice (node `from`) in file `fi` of place
    /// `p`, the way `kanban::routing::route` does, and add its edge (and target if needed).
    fn edge(
        &mut self,
        p: usize,
        fi: usize,
        from: usize,
        key: &str,
        t: &NextService,
        diag: Option<&Diagnostic>,
    ) {
        let file = self.places[p].files[fi];
        let pattern = (!t.pattern.is_empty() && t.pattern != "n").then(|| t.pattern.clone());
        let mut edge = Edge {
            from,
            to: from,
            key: key.to_owned(),
            pattern,
            cross_device: false,
            status: EdgeStatus::Ok,
        };
        let remote = (!t.device.is_empty() && t.device != self.places[p].device_name)
            .then(|| file.device(&t.device))
            .flatten();
        if let Some(device) = remote {
            edge.cross_device = true;
            let hosts: Vec<usize> = (0..self.places.len())
                .filter(|&q| self.places[q].device_name == t.device)
                .collect();
            if let [q] = hosts[..] {
                let found = self.service_nodes[q]
                    .iter()
                    .find_map(|m| m.get(t.name.as_str()).copied());
                edge.to = found.unwrap_or_else(|| {
                    edge.status = EdgeStatus::Unresolved;
                    let problem = own_problem(
                        t,
                        format!(
                            "`{}` is not a microservice of device `{}` (the services.yml of host {})",
                            t.name,
                            t.device,
                            self.graph.devices[q].title
                        ),
                        "define it in that host's services.yml, or fix `name:` / `device:`",
                    );
                    self.unresolved(q, t, problem)
                });
            } else {
                let dev = self.external_device(&device.name, &device.addr, hosts.is_empty());
                if hosts.is_empty() {
                    // One node per remote microservice, shared by every edge to it.
                    let key = (dev, t.name.clone());
                    edge.to = match self.remote_nodes.get(&key) {
                        Some(&n) => n,
                        None => {
                            let name = t.name.clone();
                            let n = self.add_node(dev, NodeKind::Remote { name });
                            self.remote_nodes.insert(key, n);
                            n
                        }
                    };
                } else {
                    let names: Vec<&str> = hosts
                        .iter()
                        .map(|&q| self.graph.devices[q].title.as_str())
                        .collect();
                    let problem = own_problem(
                        t,
                        format!(
                            "device `{}` is the device name of several hosts ({}); aion-kanban cannot tell which one to send to",
                            t.device,
                            names.join(", ")
                        ),
                        "give each host's services.yml its own `deviceName`",
                    );
                    edge.status = EdgeStatus::Unresolved;
                    edge.to = self.unresolved(dev, t, problem);
                }
            }
        } else {
            // Local: no device, this device, or one not under `devices:` (upstream then
            // delivers locally; the validator warns).
            let found = self.service_nodes[p][fi].get(t.name.as_str()).copied();
            match (found, diag) {
                (Some(n), None) => edge.to = n,
                (Some(n), Some(d)) => {
                    edge.to = n;
                    edge.status = EdgeStatus::Warning(Problem::from_diagnostic(d));
                }
                (None, d) => {
                    let problem = d.map(Problem::from_diagnostic).unwrap_or_else(|| {
                        // The validator skips entries whose `device:` is a listed device; when
                        // that is this very device, the kanban stays here and finds nothing.
                        let why = if t.device.is_empty() {
                            String::new()
                        } else {
                            format!(" (`device: {}` is this device, so it stays here)", t.device)
                        };
                        own_problem(
                            t,
                            format!("`{}` is not a microservice of this file{why}", t.name),
                            "define that microservice, or fix `name:`",
                        )
                    });
                    edge.status = EdgeStatus::Unresolved;
                    edge.to = self.unresolved(p, t, problem);
                }
            }
        }
        self.graph.edges.push(edge);
    }

    fn unresolved(&mut self, device: usize, t: &NextService, problem: Problem) -> usize {
        self.add_node(
            device,
            NodeKind::Unresolved {
                name: t.name.clone(),
                problem,
            },
        )
    }

    /// The box of a device outside the inventory (created once, named in the order first
    /// met; `devices:` gives its address).
    fn external_device(&mut self, name: &str, addr: &str, not_in_inventory: bool) -> usize {
        if let Some(&d) = self.external.get(name) {
            return d;
        }
        let mut details = Vec::new();
        if !addr.is_empty() {
            details.push(format!("addr {addr}"));
        }
        details.push(match (not_in_inventory, self.in_inventory) {
            (true, true) => "not in the inventory".to_owned(),
            (true, false) => "another device".to_owned(),
            (false, _) => "ambiguous device name".to_owned(),
        });
        let d = self.add_device(name.to_owned(), details, true);
        self.external.insert(name.to_owned(), d);
        d
    }
}

fn own_problem(t: &NextService, message: String, hint: &str) -> Problem {
    Problem {
        code: None,
        message,
        hint: Some(hint.to_owned()),
        at: location(&t.span),
    }
}

fn service(ms: &Microservice, host: Option<&str>) -> Service {
    let scale = ms.scale.max(1);
    Service {
        name: ms.name.clone(),
        first_instance: ms.instance_name(1),
        last_instance: ms.instance_name(scale),
        scale,
        startup: ms.startup,
        always: ms.always,
        target_node: (!ms.target_node.is_empty() && Some(ms.target_node.as_str()) != host)
            .then(|| ms.target_node.clone()),
    }
}

/// The validator's findings about `nextService` entries, by the entry's pointer
/// (`/microservices/a/nextService/default/0`).
fn next_service_diagnostics(
    file: &ServicesFile,
    inv: Option<&Inventory>,
) -> BTreeMap<String, Diagnostic> {
    let mut out = BTreeMap::new();
    for d in aion_model::validate::services(file, inv) {
        if !matches!(d.code, "next-service-unknown" | "next-device-unknown") {
            continue;
        }
        // The pointer names the entry's `name` or `device` value, or the entry itself when it
        // has no name.
        let entry = match d.pointer.rsplit_once('/') {
            Some((e, "name" | "device")) => e,
            _ => d.pointer.as_str(),
        }
        .to_owned();
        out.entry(entry).or_insert(d);
    }
    out
}

/// `s` for a one-line comment of a text format (DOT `//`, Mermaid `%%`): control characters
/// (line breaks) become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn inventory(text: &str) -> Inventory {
        let loaded =
            aion_model::inventory::load_str(text, Path::new("/srv/aion/inventory.yml")).unwrap();
        let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        loaded.value
    }

    fn services(name: &str, text: &str) -> ServicesFile {
        let path = Path::new("/srv/aion").join(name);
        let loaded = aion_model::services::load_str(text, &path).unwrap();
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        loaded.value
    }

    const CLUSTER: &str = "name: lab\nmode: cluster\nhosts:\n  - name: edge-master\n    address: 10.0.0.2\n    role: master\n  - name: cam\n    address: 10.0.0.3\n    role: worker\n  - name: store\n    address: 10.0.0.4\n    role: worker\n";

    const CAM: &str = "deviceName: cam\ndevices:\n  store: {addr: 10.0.0.4}\nmicroservices:\n  capture:\n    startup: yes\n    always: yes\n    nextService:\n      default:\n        - name: detect\n          pattern: \"0\"\n  detect:\n    scale: 3\n    nextService:\n      default:\n        - name: save\n          device: store\n";

    const STORE: &str = "deviceName: store\nmicroservices:\n  save:\n    always: yes\n    targetNode: edge-master\n";

    fn cluster_graph() -> Graph {
        let inv = inventory(CLUSTER);
        from_inventory(
            &inv,
            &[
                ("cam".to_owned(), services("cam.yml", CAM)),
                ("store".to_owned(), services("store.yml", STORE)),
            ],
        )
    }

    fn node<'g>(g: &'g Graph, title: &str) -> (usize, &'g Node) {
        g.nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.label().title == title)
            .unwrap_or_else(|| panic!("no node {title}: {g:#?}"))
    }

    fn service_of<'g>(g: &'g Graph, title: &str) -> &'g Service {
        match &node(g, title).1.kind {
            NodeKind::Service(s) => s,
            other => panic!("{title} is {other:?}"),
        }
    }

    #[test]
    fn one_box_per_host_in_inventory_order() {
        let g = cluster_graph();
        let titles: Vec<&str> = g.devices.iter().map(|d| d.title.as_str()).collect();
        assert_eq!(titles, ["edge-master", "cam", "store"]);
        assert_eq!(g.devices[1].details, ["worker · namespace cam"]);
        assert!(g.devices.iter().all(|d| !d.external));
        // The master runs nothing: a note, not an empty box.
        let (_, master) = g
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.device == 0)
            .unwrap();
        assert_eq!(master.kind, NodeKind::Note("no services.yml".into()));
    }

    #[test]
    fn cross_device_edge_goes_to_the_host_with_that_device_name() {
        let g = cluster_graph();
        let (detect, _) = node(&g, "detect");
        let (save, save_node) = node(&g, "save");
        assert_eq!(g.devices[save_node.device].title, "store");
        let e = g.edges.iter().find(|e| e.from == detect).unwrap();
        assert_eq!(e.to, save);
        assert!(e.cross_device);
        assert_eq!(e.status, EdgeStatus::Ok);
        assert_eq!(e.label_lines(), ["default"]);
        // Local edges are not cross-device.
        let (capture, _) = node(&g, "capture");
        let local = g.edges.iter().find(|e| e.from == capture).unwrap();
        assert!(!local.cross_device);
    }

    #[test]
    fn pattern_other_than_n_is_in_the_label() {
        let g = cluster_graph();
        let (capture, _) = node(&g, "capture");
        let e = g.edges.iter().find(|e| e.from == capture).unwrap();
        assert_eq!(e.pattern.as_deref(), Some("0"));
        assert_eq!(e.label_lines(), ["default · pattern 0"]);
    }

    #[test]
    fn startup_always_job_and_instances_are_marked() {
        let g = cluster_graph();
        let capture = service_of(&g, "capture");
        assert!(capture.startup && capture.always);
        assert_eq!(capture.tags(), "startup · always");
        let detect = service_of(&g, "detect");
        assert!(!detect.startup && !detect.always);
        assert_eq!(detect.tags(), "on demand · job");
        assert_eq!(detect.scale, 3);
        assert_eq!(
            node(&g, "detect").1.label().lines,
            ["detect-001…003 ×3", "on demand · job"]
        );
        // targetNode shown only when it is not the box's own host.
        assert_eq!(
            service_of(&g, "save").target_node.as_deref(),
            Some("edge-master")
        );
        assert_eq!(service_of(&g, "capture").target_node, None);
    }

    #[test]
    fn dangling_target_is_red_with_the_validators_diagnostic() {
        let f = services(
            "services.yml",
            "microservices:\n  a:\n    nextService:\n      default:\n        - name: sinkk\n  sink: {}\n",
        );
        let g = from_services(&f);
        let (a, _) = node(&g, "a");
        let e = g.edges.iter().find(|e| e.from == a).unwrap();
        assert_eq!(e.status, EdgeStatus::Unresolved);
        assert!(e.is_red());
        let NodeKind::Unresolved { name, problem } = &g.nodes[e.to].kind else {
            panic!("{:?}", g.nodes[e.to]);
        };
        assert_eq!(name, "sinkk");
        // Exactly what `validate` reports for the entry.
        let d = aion_model::validate::services(&f, None)
            .into_iter()
            .find(|d| d.code == "next-service-unknown")
            .unwrap();
        assert_eq!(problem.code.as_deref(), Some("next-service-unknown"));
        assert_eq!(problem.message, d.message);
        assert_eq!(problem.hint, d.hint);
        assert_eq!(
            problem.at,
            format!("services.yml:{}:{}", d.span.line, d.span.column)
        );
        let text = g.nodes[e.to].label().lines.join(" ");
        assert!(text.contains("next-service-unknown"), "{text}");
        assert!(text.contains("did you mean `sink`?"), "{text}");
        // ... and in every format.
        assert!(svg::render(&g).contains("node bad"));
        assert!(dot::render(&g).contains("#cf222e"));
        assert!(mermaid::render(&g).contains("class n2 bad"));
    }

    /// The validator names an entry without `name` by the entry's own pointer (its `name`
    /// value when there is one): both find their entry.
    #[test]
    fn findings_are_found_by_their_entry() {
        let f = services(
            "services.yml",
            "microservices:\n  a:\n    nextService:\n      default:\n        - pattern: n\n        - name: bb\n  b: {}\n",
        );
        let found = next_service_diagnostics(&f, None);
        let keys: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "/microservices/a/nextService/default/0",
                "/microservices/a/nextService/default/1"
            ]
        );
    }

    #[test]
    fn unknown_device_is_a_red_edge_to_the_local_target() {
        let f = services(
            "services.yml",
            "microservices:\n  a:\n    nextService:\n      default:\n        - name: b\n          device: nowhere\n  b: {}\n",
        );
        let g = from_services(&f);
        let e = &g.edges[0];
        assert_eq!(e.to, node(&g, "b").0);
        let EdgeStatus::Warning(p) = &e.status else {
            panic!("{e:?}");
        };
        assert_eq!(p.code.as_deref(), Some("next-device-unknown"));
        assert!(e.label_lines().len() > 1);
    }

    #[test]
    fn device_naming_this_device_stays_here() {
        let f = services(
            "services.yml",
            "deviceName: me\ndevices:\n  me: {addr: 127.0.0.1}\nmicroservices:\n  a:\n    nextService:\n      default:\n        - name: b\n          device: me\n        - name: gone\n          device: me\n  b: {}\n",
        );
        let g = from_services(&f);
        assert_eq!(g.devices.len(), 1);
        assert_eq!(g.edges[0].to, node(&g, "b").0);
        assert!(!g.edges[0].cross_device && !g.edges[0].is_red());
        // No validator finding for it, so the graph says why itself.
        let NodeKind::Unresolved { problem, .. } = &g.nodes[g.edges[1].to].kind else {
            panic!("{:?}", g.edges[1]);
        };
        assert_eq!(problem.code, None);
        assert!(problem.message.contains("`device: me` is this device"));
    }

    #[test]
    fn device_outside_the_inventory_gets_its_own_dashed_box() {
        let f = services(
            "services.yml",
            "deviceName: me\ndevices:\n  other: {addr: 10.1.1.1}\nmicroservices:\n  a:\n    nextService:\n      default:\n        - name: x\n          device: other\n        - name: y\n          device: other\n      done:\n        - name: x\n          device: other\n",
        );
        let g = from_services(&f);
        assert_eq!(g.devices.len(), 2);
        assert_eq!(g.devices[0].title, "me");
        assert!(g.devices[1].external);
        assert_eq!(g.devices[1].title, "other");
        assert_eq!(g.devices[1].details[0], "addr 10.1.1.1");
        // One node per remote microservice, shared by the edges to it.
        assert_eq!(g.edges[0].to, g.edges[2].to);
        assert_ne!(g.edges[0].to, g.edges[1].to);
        assert!(g.edges.iter().all(|e| e.cross_device && !e.is_red()));
    }

    #[test]
    fn remote_target_missing_on_the_inventory_host_is_red() {
        let inv = inventory(CLUSTER);
        let g = from_inventory(
            &inv,
            &[
                ("cam".to_owned(), services("cam.yml", CAM)),
                (
                    "store".to_owned(),
                    services(
                        "store.yml",
                        "deviceName: store\nmicroservices:\n  other: {}\n",
                    ),
                ),
            ],
        );
        let (detect, _) = node(&g, "detect");
        let e = g.edges.iter().find(|e| e.from == detect).unwrap();
        assert_eq!(e.status, EdgeStatus::Unresolved);
        let target = &g.nodes[e.to];
        assert_eq!(g.devices[target.device].title, "store");
        let NodeKind::Unresolved { problem, .. } = &target.kind else {
            panic!("{target:?}");
        };
        assert!(
            problem
                .message
                .contains("not a microservice of device `store`")
        );
        assert!(problem.at.starts_with("cam.yml:"));
    }

    #[test]
    fn cycles_and_self_loops_are_drawn() {
        let f = services(
            "services.yml",
            "microservices:\n  a:\n    nextService:\n      default: [{name: b}]\n  b:\n    nextService:\n      default: [{name: a}]\n      again: [{name: b}]\n",
        );
        let g = from_services(&f);
        assert_eq!(g.edges.len(), 3);
        let lay = layout::layout(&g);
        assert_eq!(lay.edges.len(), 3);
        assert!(lay.edges.iter().all(|e| !e.curves.is_empty()));
        // Boxes inside their device's band, not overlapping.
        let band = lay.devices[0];
        for r in &lay.nodes {
            assert!(r.x >= band.x && r.right() <= band.right() && r.bottom() <= band.bottom());
        }
    }

    #[test]
    fn every_format_is_deterministic() {
        let a = cluster_graph();
        let b = cluster_graph();
        assert_eq!(a, b);
        for render in [svg::render, dot::render, mermaid::render] {
            assert_eq!(render(&a), render(&b));
        }
    }

    #[test]
    fn single_mode_puts_every_file_on_the_master() {
        let inv = inventory(
            "name: one\nmode: single\nhosts:\n  - name: jetson\n    address: 10.0.0.2\n    role: master\n",
        );
        let g = from_inventory(&inv, &[("jetson".to_owned(), services("s.yml", STORE))]);
        assert_eq!(g.title, "inventory one (single)");
        assert_eq!(g.devices.len(), 1);
        assert_eq!(
            g.devices[0].details,
            ["master · namespace default", "device store"]
        );
        assert_eq!(g.nodes.len(), 1);
    }

    #[test]
    fn wrapping() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("", 5), [""]);
        assert_eq!(wrap("abcdefgh x", 5), ["abcdefgh", "x"]);
    }
}
