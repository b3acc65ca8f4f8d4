//! `services.yml` as upstream aion-core reads it (`config/yaml_model.go`, go-yaml v2, non-strict).
//!
//! Key spelling, types and defaults follow `shared/docs/upstream-aion.md` §1. Defaults that
//! upstream applies in `setInitializeValue` are applied by the loader, so every consumer sees
//! the same effective values the broker would have used.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::span::Span;
use crate::yaml::Pos;

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
    /// Positions and raw texts the loader saw, for diagnostics of later checks (empty when
    /// the value was built by hand).
    pub source_info: SourceInfo,
}

/// Side table filled by the loader: where fields were written, looked up by JSON pointer
/// (e.g. `/microservices/foo/ports/0/nodePort`), and texts the typed model normalises away
/// (`volumeMountPathList` entries as written).
///
/// Stored compactly (a 10,000-microservice file records ~180,000 positions): one group per
/// microservice pointer, keys relative to it and shared between groups, positions as
/// line/column with the file kept once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceInfo {
    file: Arc<PathBuf>,
    groups: HashMap<Box<str>, SourceGroup, crate::yaml::FxBuild>,
    /// Relative keys (`tag`, `ports/0/nodePort`, ...), each stored once.
    keys: HashSet<Arc<str>, crate::yaml::FxBuild>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct SourceGroup {
    spans: Vec<(Arc<str>, Pos)>,
    raw: Vec<(Arc<str>, Box<str>)>,
}

impl SourceInfo {
    /// An empty table for a file loaded from `file`.
    pub fn new(file: Arc<PathBuf>) -> Self {
        SourceInfo {
            file,
            ..Default::default()
        }
    }

    /// The group and the relative key `pointer` falls in, if any.
    fn find<'p>(&self, pointer: &'p str) -> Option<(&SourceGroup, &'p str)> {
        pointer
            .char_indices()
            .skip(1)
            .filter(|&(_, c)| c == '/')
            .find_map(|(i, _)| {
                let g = self.groups.get(&pointer[..i])?;
                Some((g, &pointer[i + 1..]))
            })
    }

    /// Where the value at `pointer` was written, if the loader recorded it.
    pub fn span(&self, pointer: &str) -> Option<Span> {
        let (g, rest) = self.find(pointer)?;
        let (_, pos) = g.spans.iter().rev().find(|(k, _)| &**k == rest)?;
        Some(pos.span(&self.file))
    }

    /// The text of the scalar at `pointer` as written, if the loader kept it.
    pub fn raw(&self, pointer: &str) -> Option<&str> {
        let (g, rest) = self.find(pointer)?;
        g.raw
            .iter()
            .rev()
            .find(|(k, _)| &**k == rest)
            .map(|(_, v)| &**v)
    }

    /// Start recording under `prefix` (a microservice's pointer).
    pub(crate) fn group(&mut self, prefix: &str) -> GroupWriter<'_> {
        let group = self.groups.entry(prefix.into()).or_default();
        GroupWriter {
            keys: &mut self.keys,
            group,
        }
    }
}

/// Records positions and texts under one pointer prefix.
pub(crate) struct GroupWriter<'a> {
    keys: &'a mut HashSet<Arc<str>, crate::yaml::FxBuild>,
    group: &'a mut SourceGroup,
}

impl GroupWriter<'_> {
    fn key(&mut self, rest: &str) -> Arc<str> {
        if let Some(k) = self.keys.get(rest) {
            return k.clone();
        }
        let k: Arc<str> = Arc::from(rest);
        self.keys.insert(k.clone());
        k
    }
    pub fn span(&mut self, rest: &str, pos: Pos) {
        let k = self.key(rest);
        self.group.spans.push((k, pos));
    }
    pub fn raw(&mut self, rest: &str, text: &str) {
        let k = self.key(rest);
        self.group.raw.push((k, text.into()));
    }
    pub fn finish(self) {
        self.group.spans.shrink_to_fit();
        self.group.raw.shrink_to_fit();
    }
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
    /// aion's addition: the pod's `runtimeClassName` (e.g. `nvidia`, the RuntimeClass the
    /// reconciler renders when a host has `gpu: true`); empty: the node's default runtime.
    pub runtime_class_name: String,
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

// ---------------------------------------------------------------------------------------------
// Loading (go-yaml v2 decoding + upstream `setInitializeValue` defaults)
// ---------------------------------------------------------------------------------------------

use std::path::Path;

use crate::diag::{Diagnostic, LoadError, Loaded};
use crate::read::Reader;
use crate::yaml::{Document, Node, Value, join_pointer};

pub const TOP_KEYS: &[&str] = &["microservices", "devices", "deviceName", "debug"];
pub const MICROSERVICE_KEYS: &[&str] = &[
    "command",
    "nextService",
    "scale",
    "env",
    "position",
    "always",
    "multiple",
    "startup",
    "interval",
    "ports",
    "directoryPath",
    "serviceAccount",
    "network",
    "tag",
    "volumeMountPathList",
    "privileged",
    "withoutKanban",
    "targetNode",
    "resources",
    "runtimeClassName",
];
pub const DEVICE_KEYS: &[&str] = &["addr", "sshPort", "username", "password", "aionHome"];
pub const PORT_KEYS: &[&str] = &["name", "protocol", "port", "nodePort"];
pub const NEXT_SERVICE_KEYS: &[&str] = &["name", "pattern", "device"];
pub const RESOURCES_KEYS: &[&str] = &["requests", "limits"];
pub const QUANTITY_KEYS: &[&str] = &["memory", "cpu"];

/// Read and load a `services.yml` (schema + go-yaml v2 decoding + defaults).
pub fn load(path: &Path) -> Result<Loaded<ServicesFile>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let doc = crate::yaml::parse_document(&text, path)?;
    drop(text);
    Ok(from_document(doc))
}

/// Load a `services.yml` from text; `file` names it in diagnostics.
pub fn load_str(text: &str, file: &Path) -> Result<Loaded<ServicesFile>, LoadError> {
    let doc = crate::yaml::parse_document(text, file)?;
    Ok(from_document(doc))
}

/// Schema check, decoding and defaults of a parsed document (what [`load_str`] does after
/// parsing). The tree is consumed: each microservice's subtree is freed as soon as it is
/// decoded, and the schema sees one microservice's JSON at a time, so the tree, its JSON
/// copy and the typed model never exist whole at once.
pub fn from_document(doc: Document) -> Loaded<ServicesFile> {
    let file = doc.file;
    let mut root = doc
        .root
        .unwrap_or_else(|| Node::null_at(crate::yaml::Pos { line: 1, column: 1 }));
    let schema_diags = crate::schema::check_services(&root, &file);
    let detached = detach_microservices(&mut root);
    let mut loaded = decode(&root, &file, detached);
    drop(root);
    if let Some(span) = doc.extra_document {
        loaded.diagnostics.push(
            Diagnostic::warning(
                "multiple-documents",
                "only the first YAML document is read; this one is ignored",
                span,
                "",
            )
            .with_hint("upstream aion-core reads one document; remove the `---` and what follows"),
        );
    }
    crate::schema::merge(&mut loaded.diagnostics, schema_diags);
    crate::diag::sort(&mut loaded.diagnostics);
    loaded
}

/// Decode a parsed tree from `file` (no schema check).
pub fn from_node(root: &Node, file: &Arc<PathBuf>) -> Loaded<ServicesFile> {
    decode(root, file, None)
}

/// Take the `microservices` mapping (the last `microservices:` key wins, as in decoding) out
/// of `root`, leaving an empty mapping at its position, so it can be decoded and freed
/// entry by entry. None when there is no such key or its value is not a mapping.
fn detach_microservices(root: &mut Node) -> Option<Node> {
    let Value::Map(pairs) = &mut root.value else {
        return None;
    };
    let pair = pairs
        .iter_mut()
        .rev()
        .find(|p| p.key.text() == Some("microservices"))?;
    if !matches!(pair.value.value, Value::Map(_)) {
        return None;
    }
    let empty = Node {
        value: Value::Map(Vec::new()),
        pos: pair.value.pos,
    };
    Some(std::mem::replace(&mut pair.value, empty))
}

/// Decode `root`; `detached` is its `microservices` mapping when [`detach_microservices`]
/// took it out (then decoded from there and freed entry by entry).
fn decode(root: &Node, path: &Arc<PathBuf>, detached: Option<Node>) -> Loaded<ServicesFile> {
    let mut r = Reader::new(path.clone());
    let mut file = ServicesFile {
        span: r.span(root),
        source_info: SourceInfo::new(path.clone()),
        ..Default::default()
    };
    if let Some(f) = r.fields(root, "", "the top level", TOP_KEYS) {
        if let Some((n, p)) = f.get("microservices") {
            match detached {
                Some(mut node) => {
                    if let Some(entries) = r.map_entry_indices(&node, &p, "microservices")
                        && let Value::Map(pairs) = &mut node.value
                    {
                        file.microservices.reserve_exact(entries.len());
                        for (name, i) in entries {
                            let ptr = join_pointer(&p, &name);
                            let pair = &mut pairs[i];
                            let at = pair.value.pos;
                            let body = std::mem::replace(&mut pair.value, Node::null_at(at));
                            if let Some(ms) = read_microservice(
                                &mut r,
                                &mut file.source_info,
                                name,
                                &pair.key,
                                &body,
                                &ptr,
                            ) {
                                file.microservices.push(ms);
                            }
                        }
                    }
                }
                None => {
                    if let Some(entries) = r.map_entries(n, &p, "microservices") {
                        file.microservices.reserve_exact(entries.len());
                        for (name, key, body) in entries {
                            let ptr = join_pointer(&p, &name);
                            if let Some(ms) = read_microservice(
                                &mut r,
                                &mut file.source_info,
                                name,
                                key,
                                body,
                                &ptr,
                            ) {
                                file.microservices.push(ms);
                            }
                        }
                    }
                }
            }
        }
        if let Some((n, p)) = f.get("devices")
            && let Some(entries) = r.map_entries(n, &p, "devices")
        {
            for (name, key, body) in entries {
                let ptr = join_pointer(&p, &name);
                if let Some(d) = read_device(&mut r, name, key, body, &ptr) {
                    file.devices.push(d);
                }
            }
        }
        if let Some((n, p)) = f.get("deviceName") {
            file.device_name = r.string(n, &p, "deviceName").unwrap_or_default();
        }
        if let Some((n, p)) = f.get("debug") {
            file.debug = r.string(n, &p, "debug").unwrap_or_default();
        }
    }
    misplaced_microservices(&mut r, root);
    Loaded {
        value: file,
        diagnostics: r.diags,
    }
}

/// A top-level key that is not one of upstream's but whose body looks like a microservice
/// (e.g. a fragment without the `microservices:` root): upstream silently runs nothing.
fn misplaced_microservices(r: &mut Reader, root: &Node) {
    let Some(pairs) = root.as_map() else { return };
    for pair in pairs {
        let Some(key) = pair.key.text() else { continue };
        // `x-…` / `.…` keys are the usual home of anchored templates.
        if TOP_KEYS.contains(&key) || key.starts_with("x-") || key.starts_with('.') {
            continue;
        }
        let Some(body) = pair.value.as_map() else {
            continue;
        };
        let hits = body
            .iter()
            .filter(|p| p.key.text().is_some_and(|k| MICROSERVICE_KEYS.contains(&k)))
            .count();
        if hits < 2 {
            continue;
        }
        let ptr = join_pointer("", key);
        r.diags
            .retain(|d| !(d.code == "unknown-key" && d.pointer == ptr));
        r.diags.push(
            Diagnostic::error(
                "misplaced-microservice",
                format!(
                    "`{key}` looks like a microservice but is not under `microservices:`; upstream aion-core ignores it and runs nothing"
                ),
                r.span(&pair.key),
                ptr.clone(),
            )
            .with_hint(format!(
                "add a top-level `microservices:` key and indent `{key}:` under it"
            )),
        );
        // Check the body anyway so every problem shows up in one run.
        let mut scratch = SourceInfo::default();
        let _ = read_microservice(
            r,
            &mut scratch,
            key.to_owned(),
            &pair.key,
            &pair.value,
            &ptr,
        );
    }
}

fn read_device(r: &mut Reader, name: String, key: &Node, body: &Node, ptr: &str) -> Option<Device> {
    if body.is_null() {
        r.diags.push(
            Diagnostic::error(
                "null-body",
                format!("device `{name}` has an empty body"),
                r.span(key),
                ptr,
            )
            .with_hint("give it at least `addr:` (upstream dereferences the empty entry)"),
        );
        return None;
    }
    let f = r.fields(body, ptr, &format!("device `{name}`"), DEVICE_KEYS)?;
    let mut d = Device {
        name,
        addr: String::new(),
        ssh_port: 0,
        username: String::new(),
        password: String::new(),
        aion_home: String::new(),
        span: r.span(key),
    };
    if let Some((n, p)) = f.get("addr") {
        d.addr = r.string(n, &p, "addr").unwrap_or_default();
    }
    if let Some((n, p)) = f.get("sshPort") {
        d.ssh_port = r.int32(n, &p, "sshPort").unwrap_or_default();
    }
    if let Some((n, p)) = f.get("username") {
        d.username = r.string(n, &p, "username").unwrap_or_default();
    }
    if let Some((n, p)) = f.get("password") {
        d.password = r.string(n, &p, "password").unwrap_or_default();
    }
    if let Some((n, p)) = f.get("aionHome") {
        d.aion_home = r.string(n, &p, "aionHome").unwrap_or_default();
    }
    // setInitializeValue
    if d.ssh_port == 0 {
        d.ssh_port = 22;
    }
    if d.username.is_empty() {
        d.username = "aion".into();
    }
    if d.password.is_empty() {
        d.password = "aion".into();
    }
    if d.aion_home.is_empty() {
        d.aion_home = "/var/lib/aion".into();
    }
    Some(d)
}

fn read_microservice(
    r: &mut Reader,
    info: &mut SourceInfo,
    name: String,
    key: &Node,
    body: &Node,
    ptr: &str,
) -> Option<Microservice> {
    if body.is_null() {
        r.diags.push(
            Diagnostic::error(
                "null-body",
                format!("microservice `{name}` has an empty body"),
                r.span(key),
                ptr,
            )
            .with_hint(format!(
                "write `{name}: {{}}` for a microservice with all defaults (upstream fails with \"yaml format is wrong\")"
            )),
        );
        return None;
    }
    let what = format!("microservice `{name}`");
    let f = r.fields(body, ptr, &what, MICROSERVICE_KEYS)?;
    let mut ms = Microservice {
        name,
        command: None,
        next_service: Vec::new(),
        scale: 0,
        env: Vec::new(),
        position: String::new(),
        always: false,
        multiple: false,
        startup: false,
        interval: 0,
        ports: Vec::new(),
        directory_path: String::new(),
        service_account: String::new(),
        network: String::new(),
        tag: String::new(),
        volume_mount_path_list: Vec::new(),
        privileged: false,
        without_kanban: false,
        target_node: String::new(),
        runtime_class_name: String::new(),
        resources: None,
        span: r.span(key),
    };
    let mut info = info.group(ptr);
    for (k, n) in f.entries() {
        info.span(k, n.pos);
    }
    let mut scale_written = None;
    macro_rules! field {
        ($key:literal, $m:ident, $dst:expr) => {
            if let Some((n, p)) = f.get($key)
                && let Some(v) = r.$m(n, &p, $key)
            {
                $dst = v;
            }
        };
    }
    field!("position", string, ms.position);
    field!("always", bool, ms.always);
    field!("multiple", bool, ms.multiple);
    field!("startup", bool, ms.startup);
    field!("interval", int32, ms.interval);
    field!("directoryPath", string, ms.directory_path);
    field!("serviceAccount", string, ms.service_account);
    field!("network", string, ms.network);
    field!("tag", string, ms.tag);
    field!("privileged", bool, ms.privileged);
    field!("withoutKanban", bool, ms.without_kanban);
    field!("targetNode", string, ms.target_node);
    field!("runtimeClassName", string, ms.runtime_class_name);
    if let Some((n, p)) = f.get("command") {
        ms.command = r.string_list(n, &p, "command");
    }
    if let Some((n, p)) = f.get("scale")
        && let Some(v) = r.int32(n, &p, "scale")
    {
        ms.scale = v;
        scale_written = Some((n, p));
    }
    if let Some((n, p)) = f.get("env")
        && let Some(entries) = r.map_entries(n, &p, "env")
    {
        ms.env.reserve_exact(entries.len());
        for (k, _, v) in entries {
            let vp = join_pointer(&p, &k);
            let field = format!("env.{k}");
            if let Some(s) = r.string(v, &vp, &field) {
                ms.env.push((k, s));
            }
        }
    }
    if let Some((n, p)) = f.get("nextService")
        && let Some(entries) = r.map_entries(n, &p, "nextService")
    {
        for (k, _, v) in entries {
            let kp = join_pointer(&p, &k);
            if v.is_null() {
                ms.next_service.push((k, Vec::new()));
                continue;
            }
            let Some(items) = v.as_seq() else {
                r.type_error(
                    v,
                    &kp,
                    &format!("nextService.{k}"),
                    "a list of {name, pattern, device}",
                );
                continue;
            };
            let mut targets = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{kp}/{i}");
                let Some(nf) = r.fields(item, &ip, "a nextService entry", NEXT_SERVICE_KEYS) else {
                    continue;
                };
                let mut t = NextService {
                    name: String::new(),
                    pattern: String::new(),
                    device: String::new(),
                    span: r.span(item),
                };
                // Where each field was written, for diagnostics that name it.
                let rest = format!("nextService/{}/{i}", crate::yaml::escape_pointer(&k));
                for (f, n) in nf.entries() {
                    info.span(&format!("{rest}/{f}"), n.pos);
                }
                if let Some((n, p)) = nf.get("name") {
                    t.name = r.string(n, &p, "name").unwrap_or_default();
                }
                if let Some((n, p)) = nf.get("pattern") {
                    t.pattern = r.string(n, &p, "pattern").unwrap_or_default();
                }
                if let Some((n, p)) = nf.get("device") {
                    t.device = r.string(n, &p, "device").unwrap_or_default();
                }
                if t.pattern.is_empty() {
                    t.pattern = "n".into();
                }
                targets.push(t);
            }
            ms.next_service.push((k, targets));
        }
    }
    if let Some((n, p)) = f.get("ports")
        && !n.is_null()
    {
        match n.as_seq() {
            None => r.type_error(n, &p, "ports", "a list of {name, protocol, port, nodePort}"),
            Some(items) => {
                ms.ports.reserve_exact(items.len());
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}/{i}");
                    let Some(pf) = r.fields(item, &ip, "a port", PORT_KEYS) else {
                        continue;
                    };
                    let mut port = Port {
                        name: String::new(),
                        protocol: String::new(),
                        port: 0,
                        node_port: 0,
                        span: r.span(item),
                    };
                    for (k, n) in pf.entries() {
                        info.span(&format!("ports/{i}/{k}"), n.pos);
                    }
                    if let Some((n, p)) = pf.get("name") {
                        port.name = r.string(n, &p, "name").unwrap_or_default();
                    }
                    if let Some((n, p)) = pf.get("protocol") {
                        port.protocol = r.string(n, &p, "protocol").unwrap_or_default();
                    }
                    if let Some((n, p)) = pf.get("port") {
                        port.port = r.int32(n, &p, "port").unwrap_or_default();
                    }
                    if let Some((n, p)) = pf.get("nodePort") {
                        port.node_port = r.int32(n, &p, "nodePort").unwrap_or_default();
                    }
                    ms.ports.push(port);
                }
            }
        }
    }
    if let Some((n, p)) = f.get("volumeMountPathList")
        && !n.is_null()
    {
        match n.as_seq() {
            None => r.type_error(n, &p, "volumeMountPathList", "a list of strings"),
            Some(items) => {
                ms.volume_mount_path_list.reserve_exact(items.len());
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}/{i}");
                    let Some(raw) = r.string(item, &ip, "volumeMountPathList") else {
                        continue;
                    };
                    // Upstream: strings.Split(v, ":"), [0] = container path, [1] = host path.
                    let rest = format!("volumeMountPathList/{i}");
                    info.span(&rest, item.pos);
                    info.raw(&rest, &raw);
                    let mut parts = raw.split(':');
                    let container_path = parts.next().unwrap_or_default().to_owned();
                    let host_path = parts.next().unwrap_or_default().to_owned();
                    let bidirectional = parts.next() == Some("Bidirectional");
                    ms.volume_mount_path_list.push(VolumeMount {
                        container_path,
                        host_path,
                        bidirectional,
                        span: r.span(item),
                    });
                }
            }
        }
    }
    if let Some((n, p)) = f.get("resources")
        && let Some(rf) = r.fields(n, &p, "resources", RESOURCES_KEYS)
    {
        let mut res = Resources::default();
        for kind in ["requests", "limits"] {
            let Some((kn, kp)) = rf.get(kind) else {
                continue;
            };
            let Some(qf) = r.fields(kn, &kp, &format!("resources.{kind}"), QUANTITY_KEYS) else {
                continue;
            };
            for q in QUANTITY_KEYS {
                if let Some((qn, qp)) = qf.get(q)
                    && let Some(v) = r.string(qn, &qp, q)
                {
                    info.span(&format!("resources/{kind}/{q}"), qn.pos);
                    let map = if kind == "requests" {
                        &mut res.requests
                    } else {
                        &mut res.limits
                    };
                    map.insert((*q).to_owned(), v);
                }
            }
        }
        ms.resources = Some(res);
    }
    // setInitializeValue
    if ms.scale <= 0 {
        if let Some((n, p)) = scale_written {
            r.diags.push(
                Diagnostic::warning(
                    "scale-nonpositive",
                    format!("`scale: {}` is not positive; upstream uses 1", ms.scale),
                    r.span(n),
                    p,
                )
                .with_hint("write `scale: 1` (or remove the key)"),
            );
        }
        ms.scale = 1;
    }
    if ms.tag.is_empty() {
        ms.tag = "latest".into();
    }
    if ms.service_account.is_empty() {
        ms.service_account = "default".into();
    }
    if ms.network.is_empty() {
        ms.network = "ClusterIP".into();
    }
    if ms.position.is_empty() {
        ms.position = "Runtime".into();
    }
    info.finish();
    Some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding while freeing the tree (what `load` does) gives what decoding a borrowed tree
    /// gives: same values, same diagnostics in the same order.
    #[test]
    fn consuming_decode_equals_borrowed_decode() {
        let text = "x-t: &t {scale: 2, ports: [{name: http, port: 80}]}\nmicroservices:\n  \
                    a: {<<: *t, env: {A: 1, A: 2}}\n  b: *t\n  a: {tag: v1, scale: \"3\"}\n  \
                    ~: {}\n  null: {network: NodePort}\n  ? [1]\n  : {}\n  c:\n  d: 4\n  \
                    e: {resources: {requests: {cpu: 1}}, volumeMountPathList: [/a:/b]}\n\
                    other: {scale: 1, always: yes}\n";
        let doc = crate::yaml::parse_document(text, Path::new("t.yml")).unwrap();
        let borrowed = from_node(doc.root.as_ref().unwrap(), &doc.file);
        let mut root = doc.root.clone().unwrap();
        let detached = detach_microservices(&mut root);
        assert!(detached.is_some());
        let consumed = decode(&root, &doc.file, detached);
        assert!(
            borrowed.diagnostics.len() >= 4,
            "{:#?}",
            borrowed.diagnostics
        );
        assert_eq!(borrowed.diagnostics, consumed.diagnostics);
        assert_eq!(borrowed.value, consumed.value);
        let e = consumed.value.microservice("e").unwrap();
        assert_eq!(
            consumed
                .value
                .source_info
                .span("/microservices/e/resources/requests/cpu")
                .map(|s| (s.line, s.column)),
            Some((12, 35))
        );
        assert_eq!(
            consumed
                .value
                .source_info
                .raw("/microservices/e/volumeMountPathList/0"),
            Some("/a:/b")
        );
        assert_eq!(e.volume_mount_path_list.len(), 1);
        assert_eq!(
            consumed.value.source_info.span("/microservices/e/nope"),
            None
        );
    }
}
