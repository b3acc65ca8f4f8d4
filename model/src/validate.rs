//! Semantic rules beyond the schema: what upstream would crash on, reject, or turn into
//! objects Kubernetes refuses (errors), and what it accepts but is almost always a mistake
//! (warnings). Pure functions over the typed model; positions come from the model's spans and
//! the loader's [`SourceInfo`](crate::services::SourceInfo) side table.

use std::collections::{HashMap, HashSet};

use crate::diag::Diagnostic;
use crate::inventory::fields::{valid_cidr, valid_version};
use crate::inventory::{
    DEFAULT_KUBERNETES_VERSION, DEFAULT_POD_CIDR, Host, Inventory, Mode, Origins,
};
use crate::k8s;
use crate::read::suggest;
use crate::services::{Microservice, ServicesFile};
use crate::span::Span;
use crate::yaml::join_pointer;

/// Upstream's envoy sidecar: Service port `envoy-admin` 10001 is added to every Service.
pub const ENVOY_ADMIN_PORT: i32 = 10001;
pub const ENVOY_ADMIN_NAME: &str = "envoy-admin";
/// Where upstream mounts `aion-data` in every main container (`$AION_HOME/Data`).
pub const AION_DATA_MOUNT: &str = "/var/lib/aion/Data";
pub const NODE_PORT_MIN: i32 = 30000;
pub const NODE_PORT_MAX: i32 = 32767;

struct Ctx<'a> {
    file: &'a ServicesFile,
    out: Vec<Diagnostic>,
}

impl Ctx<'_> {
    /// Position of `pointer`, else of the fallback span.
    fn at(&self, pointer: &str, fallback: &Span) -> Span {
        self.file
            .source_info
            .span(pointer)
            .unwrap_or_else(|| fallback.clone())
    }
}

/// All semantic rules for one services file; `inventory` enables the `targetNode` check.
pub fn services(file: &ServicesFile, inventory: Option<&Inventory>) -> Vec<Diagnostic> {
    let mut cx = Ctx {
        file,
        out: Vec::new(),
    };
    let mut node_ports: HashMap<i32, (String, usize)> = HashMap::new();
    let ordered: Vec<&str> = file.microservices.iter().map(|m| m.name.as_str()).collect();
    let names: HashSet<&str> = ordered.iter().copied().collect();
    let devices: Vec<&str> = file.devices.iter().map(|d| d.name.as_str()).collect();
    for ms in &file.microservices {
        let ptr = join_pointer("/microservices", &ms.name);
        check_name(&mut cx, ms, &ptr);
        check_tag(&mut cx, ms, &ptr);
        check_network(&mut cx, ms, &ptr);
        check_resources(&mut cx, ms, &ptr);
        check_volumes(&mut cx, ms, &ptr);
        check_ports(&mut cx, ms, &ptr, &mut node_ports);
        check_next(&mut cx, ms, &ptr, (&names, &ordered), &devices);
        if let Some(inv) = inventory {
            check_target_node(&mut cx, ms, &ptr, inv);
        }
    }
    cx.out
}

fn check_name(cx: &mut Ctx, ms: &Microservice, ptr: &str) {
    let last = ms.instance_name(ms.scale.max(1));
    let first = ms.instance_name(1);
    let bad = if !k8s::is_dns1123_label(&first) {
        Some(first)
    } else if !k8s::is_dns1123_label(&last) {
        Some(last.clone())
    } else {
        None
    };
    if let Some(obj) = bad {
        cx.out.push(
            Diagnostic::error(
                "invalid-name",
                format!(
                    "microservice `{}` gives the object name `{obj}`, which is not a valid Kubernetes name",
                    ms.name
                ),
                ms.span.clone(),
                ptr,
            )
            .with_hint(
                "object names are `<name>-NNN`: use lowercase letters, digits and `-`, start and end with a letter or digit, at most 63 characters in all",
            ),
        );
        return;
    }
    let svc = format!("{last}-srv");
    if svc.len() > 63 {
        cx.out.push(
            Diagnostic::error(
                "invalid-name",
                format!(
                    "microservice `{}` gives the Service name `{svc}`, longer than 63 characters",
                    ms.name
                ),
                ms.span.clone(),
                ptr,
            )
            .with_hint(format!(
                "shorten the name to at most {} characters (the Service is `<name>-NNN-srv`)",
                63usize.saturating_sub(svc.len() - ms.label_base().len())
            )),
        );
    }
}

fn check_tag(cx: &mut Ctx, ms: &Microservice, ptr: &str) {
    let t = &ms.tag;
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        let p = join_pointer(ptr, "tag");
        cx.out.push(
            Diagnostic::warning(
                "invalid-tag",
                format!("tag `{t}` of `{}` is not a valid image tag; the image cannot be pulled", ms.name),
                cx.at(&p, &ms.span),
                p,
            )
            .with_hint("tags are letters, digits, `_`, `.` and `-` (at most 128, not starting with `.` or `-`)"),
        );
    }
}

fn check_network(cx: &mut Ctx, ms: &Microservice, ptr: &str) {
    if ms.network != "NodePort" && ms.network != "ClusterIP" {
        let p = join_pointer(ptr, "network");
        let mut d = Diagnostic::warning(
            "network-unknown",
            format!(
                "network `{}` of `{}` is neither NodePort nor ClusterIP; upstream treats it as ClusterIP",
                ms.network, ms.name
            ),
            cx.at(&p, &ms.span),
            p,
        );
        d = match suggest(&ms.network, &["NodePort", "ClusterIP"]) {
            Some(s) => d.with_hint(format!("did you mean `{s}`? (values are case-sensitive)")),
            None => d.with_hint("write `network: NodePort` or remove the key"),
        };
        cx.out.push(d);
    }
}

fn check_resources(cx: &mut Ctx, ms: &Microservice, ptr: &str) {
    let Some(res) = &ms.resources else { return };
    let mut parsed: HashMap<(&str, &str), f64> = HashMap::new();
    for (kind, map) in [("requests", &res.requests), ("limits", &res.limits)] {
        for (q, v) in map {
            let p = format!("{}/{kind}/{q}", join_pointer(ptr, "resources"));
            match k8s::parse_quantity(v) {
                None => cx.out.push(
                    Diagnostic::error(
                        "invalid-quantity",
                        format!("resources.{kind}.{q} `{v}` of `{}` is not a Kubernetes quantity (the upstream broker panics)", ms.name),
                        cx.at(&p, &ms.span),
                        p,
                    )
                    .with_hint(if *q == "cpu" {
                        "write cpu like `500m` or `1.5`"
                    } else {
                        "write memory like `64Mi`, `1Gi` or `500M` (binary suffixes are Ki Mi Gi, not KB/MB)"
                    }),
                ),
                Some(x) if x.value < 0.0 => cx.out.push(
                    Diagnostic::error(
                        "invalid-quantity",
                        format!("resources.{kind}.{q} `{v}` of `{}` is negative; Kubernetes refuses it", ms.name),
                        cx.at(&p, &ms.span),
                        p,
                    )
                    .with_hint("use a positive quantity"),
                ),
                Some(x) => {
                    parsed.insert((kind, q.as_str()), x.value);
                }
            }
        }
    }
    for q in ["cpu", "memory"] {
        if let (Some(req), Some(lim)) = (parsed.get(&("requests", q)), parsed.get(&("limits", q)))
            && req > lim
        {
            let p = format!("{}/requests/{q}", join_pointer(ptr, "resources"));
            cx.out.push(
                Diagnostic::error(
                    "requests-exceed-limits",
                    format!("resources.requests.{q} of `{}` is larger than resources.limits.{q}; Kubernetes refuses the pod", ms.name),
                    cx.at(&p, &ms.span),
                    p,
                )
                .with_hint("make the request at most the limit"),
            );
        }
    }
}

fn check_volumes(cx: &mut Ctx, ms: &Microservice, ptr: &str) {
    let base = join_pointer(ptr, "volumeMountPathList");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, v) in ms.volume_mount_path_list.iter().enumerate() {
        let p = format!("{base}/{i}");
        let raw = cx
            .file
            .source_info
            .raw(&p)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let mut s = format!("{}:{}", v.container_path, v.host_path);
                if v.bidirectional {
                    s.push_str(":Bidirectional");
                }
                s
            });
        let parts: Vec<&str> = raw.split(':').collect();
        let problem = if parts.len() < 2 {
            Some("has no `:` (the upstream broker panics on it)".to_owned())
        } else if parts.len() > 3 {
            Some(format!(
                "has {} `:`-separated parts; at most 3",
                parts.len()
            ))
        } else if !parts[0].starts_with('/') {
            Some(format!("container path `{}` is not absolute", parts[0]))
        } else if !parts[1].starts_with('/') {
            Some(format!("host path `{}` is not absolute", parts[1]))
        } else if parts.len() == 3 && parts[2] != "Bidirectional" {
            Some(format!(
                "third part `{}` is not `Bidirectional` (upstream knows no other option)",
                parts[2]
            ))
        } else {
            None
        };
        let span = cx.at(&p, &v.span);
        if let Some(problem) = problem {
            cx.out.push(
                Diagnostic::error(
                    "invalid-volume-mount",
                    format!("volumeMountPathList entry `{raw}` of `{}` {problem}", ms.name),
                    span,
                    p,
                )
                .with_hint("write `containerPath:hostPath` or `containerPath:hostPath:Bidirectional`, both absolute (left = path in the pod, right = path on the host)"),
            );
            continue;
        }
        let cpath = parts[0].trim_end_matches('/');
        let cpath = if cpath.is_empty() { "/" } else { cpath };
        if cpath == AION_DATA_MOUNT {
            cx.out.push(
                Diagnostic::error(
                    "volume-mount-duplicate",
                    format!("`{}` already mounts `aion-data` at {AION_DATA_MOUNT}; Kubernetes refuses a second mount there", ms.name),
                    span,
                    p,
                )
                .with_hint("mount it somewhere else in the container"),
            );
        } else if let Some(first) = seen.get(cpath) {
            cx.out.push(
                Diagnostic::error(
                    "volume-mount-duplicate",
                    format!("container path `{cpath}` of `{}` is mounted twice (first entry {first}); Kubernetes refuses the pod", ms.name),
                    span,
                    p,
                )
                .with_hint("each container path can be mounted once"),
            );
        } else {
            seen.insert(cpath.to_owned(), i);
        }
    }
}

fn check_ports(
    cx: &mut Ctx,
    ms: &Microservice,
    ptr: &str,
    node_ports: &mut HashMap<i32, (String, usize)>,
) {
    let base = join_pointer(ptr, "ports");
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut numbers: HashMap<(i32, &str), usize> = HashMap::new();
    for (i, port) in ms.ports.iter().enumerate() {
        let p = format!("{base}/{i}");
        let field = |cx: &Ctx, f: &str| {
            let fp = format!("{p}/{f}");
            (cx.at(&fp, &port.span), fp)
        };
        let protocol = if port.protocol.is_empty() {
            "TCP"
        } else {
            port.protocol.as_str()
        };
        // name
        let (span, fp) = field(cx, "name");
        if port.name.is_empty() {
            cx.out.push(
                Diagnostic::error(
                    "port-name",
                    format!("port {} of `{}` has no name; the Service also carries `{ENVOY_ADMIN_NAME}`, and Kubernetes requires names when a Service has several ports", port.port, ms.name),
                    port.span.clone(),
                    p.clone(),
                )
                .with_hint("add `name:` (lowercase letters, digits, `-`; at most 15 characters)"),
            );
        } else if port.name == ENVOY_ADMIN_NAME {
            cx.out.push(
                Diagnostic::error(
                    "port-reserved",
                    format!("port name `{ENVOY_ADMIN_NAME}` of `{}` is taken by upstream's envoy sidecar port", ms.name),
                    span,
                    fp,
                )
                .with_hint("choose another name"),
            );
        } else if !k8s::is_iana_svc_name(&port.name) {
            cx.out.push(
                Diagnostic::error(
                    "port-name",
                    format!("port name `{}` of `{}` is not a valid Kubernetes port name", port.name, ms.name),
                    span,
                    fp,
                )
                .with_hint("lowercase letters, digits and single `-`, at least one letter, at most 15 characters"),
            );
        } else if let Some(first) = names.get(port.name.as_str()) {
            cx.out.push(
                Diagnostic::error(
                    "port-duplicate-name",
                    format!(
                        "port name `{}` is used twice in `{}` (first at ports[{first}])",
                        port.name, ms.name
                    ),
                    span,
                    fp,
                )
                .with_hint("every port of a microservice needs its own name"),
            );
        } else {
            names.insert(&port.name, i);
        }
        // protocol
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            let (span, fp) = field(cx, "protocol");
            cx.out.push(
                Diagnostic::error(
                    "port-protocol",
                    format!(
                        "protocol `{}` of `{}` is not TCP, UDP or SCTP",
                        port.protocol, ms.name
                    ),
                    span,
                    fp,
                )
                .with_hint("protocols are upper case: TCP, UDP or SCTP (empty means TCP)"),
            );
        }
        // number
        let (span, fp) = field(cx, "port");
        if !(1..=65535).contains(&port.port) {
            cx.out.push(
                Diagnostic::error(
                    "port-range",
                    format!("port {} of `{}` is outside 1–65535", port.port, ms.name),
                    span,
                    fp,
                )
                .with_hint("write the port the container listens on"),
            );
        } else if port.port == ENVOY_ADMIN_PORT && protocol == "TCP" {
            cx.out.push(
                Diagnostic::error(
                    "port-reserved",
                    format!("port {ENVOY_ADMIN_PORT} of `{}` is taken by upstream's envoy sidecar (`{ENVOY_ADMIN_NAME}`); Kubernetes refuses the Service", ms.name),
                    span,
                    fp,
                )
                .with_hint("choose another port"),
            );
        } else if let Some(first) = numbers.get(&(port.port, protocol)) {
            cx.out.push(
                Diagnostic::error(
                    "port-duplicate-number",
                    format!("port {}/{protocol} is used twice in `{}` (first at ports[{first}]); Kubernetes refuses the Service", port.port, ms.name),
                    span,
                    fp,
                )
                .with_hint("each port number (per protocol) once per microservice"),
            );
        } else {
            numbers.insert((port.port, protocol), i);
        }
        // nodePort
        if port.node_port != 0 {
            let (span, fp) = field(cx, "nodePort");
            if !ms.is_node_port() {
                cx.out.push(
                    Diagnostic::warning(
                        "nodeport-ignored",
                        format!(
                            "nodePort {} of `{}` is ignored: network is `{}`",
                            port.node_port, ms.name, ms.network
                        ),
                        span,
                        fp,
                    )
                    .with_hint("add `network: NodePort` to expose it, or remove `nodePort`"),
                );
                continue;
            }
            if !(NODE_PORT_MIN..=NODE_PORT_MAX).contains(&port.node_port) {
                cx.out.push(
                    Diagnostic::error(
                        "nodeport-range",
                        format!("nodePort {} of `{}` is outside {NODE_PORT_MIN}–{NODE_PORT_MAX}; Kubernetes refuses the Service", port.node_port, ms.name),
                        span,
                        fp,
                    )
                    .with_hint(format!("pick a free port in {NODE_PORT_MIN}–{NODE_PORT_MAX}, or omit nodePort to get one assigned")),
                );
            } else if let Some((other, line)) = node_ports.get(&port.node_port) {
                cx.out.push(
                    Diagnostic::error(
                        "nodeport-duplicate",
                        format!("nodePort {} of `{}` is also used by `{other}` (line {line}); node ports are cluster-wide", port.node_port, ms.name),
                        span,
                        fp,
                    )
                    .with_hint("give each NodePort its own number"),
                );
            } else {
                node_ports.insert(port.node_port, (ms.name.clone(), span.line));
                if ms.scale > 1 {
                    cx.out.push(
                        Diagnostic::error(
                            "nodeport-scale",
                            format!("nodePort {} of `{}` with scale {}: every instance's Service claims the same node port; Kubernetes refuses all but the first", port.node_port, ms.name, ms.scale),
                            span,
                            fp,
                        )
                        .with_hint("use scale 1, or omit nodePort so each instance gets its own"),
                    );
                }
            }
        }
    }
}

fn check_next(
    cx: &mut Ctx,
    ms: &Microservice,
    ptr: &str,
    (names, ordered): (&HashSet<&str>, &[&str]),
    devices: &[&str],
) {
    let base = join_pointer(ptr, "nextService");
    for (key, targets) in &ms.next_service {
        let kp = join_pointer(&base, key);
        for (i, t) in targets.iter().enumerate() {
            let p = format!("{kp}/{i}");
            if !t.device.is_empty() {
                if !devices.contains(&t.device.as_str()) {
                    let mut d = Diagnostic::warning(
                        "next-device-unknown",
                        format!(
                            "nextService `{key}` of `{}` sends to device `{}`, which is not in `devices`; upstream then delivers locally",
                            ms.name, t.device
                        ),
                        cx.at(&format!("{p}/device"), &t.span),
                        format!("{p}/device"),
                    );
                    d = match suggest(&t.device, devices) {
                        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                        None => d.with_hint(
                            "add the device under `devices:` (with `addr:`), or remove `device:`",
                        ),
                    };
                    cx.out.push(d);
                }
                continue;
            }
            if !names.contains(&t.name.as_str()) {
                let what = if t.name.is_empty() {
                    "has no `name`".to_owned()
                } else {
                    format!(
                        "names `{}`, which is not a microservice of this file",
                        t.name
                    )
                };
                // The `name` value when written, else the entry that lacks it.
                let np = format!("{p}/name");
                let (span, pointer) = match cx.file.source_info.span(&np) {
                    Some(span) => (span, np),
                    None => (t.span.clone(), p.clone()),
                };
                let mut d = Diagnostic::warning(
                    "next-service-unknown",
                    format!(
                        "nextService `{key}` of `{}` {what} and names no device",
                        ms.name
                    ),
                    span,
                    pointer,
                );
                // Suggestions from the names in file order (deterministic among equals).
                d = match suggest(&t.name, ordered) {
                    Some(s) if !t.name.is_empty() => d.with_hint(format!("did you mean `{s}`?")),
                    _ => d.with_hint(
                        "define that microservice, or add `device:` naming the device that runs it",
                    ),
                };
                cx.out.push(d);
            }
        }
    }
}

fn check_target_node(cx: &mut Ctx, ms: &Microservice, ptr: &str, inv: &Inventory) {
    if ms.target_node.is_empty() || inv.host(&ms.target_node).is_some() {
        return;
    }
    let p = join_pointer(ptr, "targetNode");
    let hosts: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    let mut d = Diagnostic::error(
        "target-node-unknown",
        format!(
            "targetNode `{}` of `{}` is not a host of inventory {}; the pod would never be scheduled",
            ms.target_node,
            ms.name,
            inv.source.display()
        ),
        cx.at(&p, &ms.span),
        p,
    );
    d = match suggest(&ms.target_node, &hosts) {
        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
        None => d.with_hint(format!("hosts: {}", hosts.join(", "))),
    };
    cx.out.push(d);
}

/// NodePorts are cluster-wide: report a nodePort used in more than one of `files` (files
/// deployed into one cluster). Duplicates inside one file are reported by [`services`].
pub fn node_ports_across(files: &[&ServicesFile]) -> Vec<Diagnostic> {
    let mut seen: HashMap<i32, (usize, String, Span)> = HashMap::new();
    let mut out = Vec::new();
    for (fi, file) in files.iter().enumerate() {
        for ms in &file.microservices {
            if !ms.is_node_port() {
                continue;
            }
            let base = join_pointer(&join_pointer("/microservices", &ms.name), "ports");
            for (i, port) in ms.ports.iter().enumerate() {
                if port.node_port == 0 {
                    continue;
                }
                let p = format!("{base}/{i}/nodePort");
                let span = file
                    .source_info
                    .span(&p)
                    .unwrap_or_else(|| port.span.clone());
                match seen.get(&port.node_port) {
                    Some((ofi, other, ospan)) if *ofi != fi => out.push(
                        Diagnostic::error(
                            "nodeport-duplicate",
                            format!(
                                "nodePort {} of `{}` is also used by `{other}` in {}; node ports are cluster-wide",
                                port.node_port, ms.name, ospan
                            ),
                            span,
                            p,
                        )
                        .with_hint("give each NodePort in the cluster its own number"),
                    ),
                    Some(_) => {}
                    None => {
                        seen.insert(port.node_port, (fi, ms.name.clone(), span));
                    }
                }
            }
        }
    }
    out
}

/// Loader diagnostics plus the semantic rules, with schema findings dropped where a more
/// precise loader or semantic diagnostic points at the same node; sorted by position.
pub fn loaded_services(
    loaded: &crate::diag::Loaded<ServicesFile>,
    inventory: Option<&Inventory>,
) -> Vec<Diagnostic> {
    let semantic = services(&loaded.value, inventory);
    let mut out: Vec<Diagnostic> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.code != "schema" || !semantic.iter().any(|s| s.pointer == d.pointer))
        .cloned()
        .collect();
    out.extend(semantic);
    crate::diag::sort(&mut out);
    out
}

/// [`crate::inventory::check`] with each host's JSON pointer (Ansible hosts live under their group) and where
/// each setting was written: every finding's pointer and position name the value it is about
/// (the host's entry when that value was not written but derived, e.g. the namespace of a
/// worker from its name).
pub(crate) fn check_inventory_at(
    inv: &Inventory,
    located: &crate::inventory::Located,
    diags: &mut Vec<Diagnostic>,
) {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    let mut addrs: Vec<(&str, usize)> = Vec::new();
    let none = Origins::default();
    for (i, h) in inv.hosts.iter().enumerate() {
        let (ptr, origins) = located
            .hosts
            .get(i)
            .map(|(p, o)| (p.clone(), o))
            .unwrap_or_else(|| (String::new(), &none));
        // (pointer, position) of a setting's value, else of the host's entry.
        let at = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| origins.get(k))
                .unwrap_or_else(|| (ptr.clone(), h.span.clone()))
        };
        let (name_ptr, name_span) = at(&["name"]);
        if let Some((_, line)) = seen.iter().find(|(n, _)| *n == h.name) {
            diags.push(
                Diagnostic::error(
                    "host-duplicate",
                    format!(
                        "host name `{}` is used twice (first at line {line})",
                        h.name
                    ),
                    name_span.clone(),
                    name_ptr.clone(),
                )
                .with_hint(
                    "host names are hostnames and Kubernetes node names; they must be unique",
                ),
            );
        } else {
            seen.push((&h.name, name_span.line));
        }
        // An address not written is the host's name.
        let (addr_ptr, addr_span) = at(&["address", "name"]);
        if let Some((_, line)) = addrs.iter().find(|(a, _)| *a == h.address) {
            diags.push(
                Diagnostic::warning(
                    "address-duplicate",
                    format!(
                        "address `{}` is used by two hosts (first at line {line})",
                        h.address
                    ),
                    addr_span.clone(),
                    addr_ptr.clone(),
                )
                .with_hint("two entries for one machine are almost always a mistake"),
            );
        } else {
            addrs.push((&h.address, addr_span.line));
        }
        if !h.name.is_empty() && !crate::k8s::is_dns1123_subdomain(&h.name) {
            diags.push(
                Diagnostic::error(
                    "invalid-host-name",
                    format!("host name `{}` is not a valid Kubernetes node name", h.name),
                    name_span.clone(),
                    name_ptr.clone(),
                )
                .with_hint(
                    "use lowercase letters, digits, `-` and `.` (RFC 1123), e.g. `edge-worker-1`",
                ),
            );
        }
        if !valid_cidr(&h.vars.pod_cidr) {
            let (pointer, span) = at(&["podCidr"]);
            diags.push(
                Diagnostic::error(
                    "invalid-cidr",
                    format!(
                        "podCidr `{}` of host `{}` is not a CIDR",
                        h.vars.pod_cidr, h.name
                    ),
                    span,
                    pointer,
                )
                .with_hint(format!("write it like `{DEFAULT_POD_CIDR}`")),
            );
        }
        if !valid_version(&h.vars.kubernetes_version) {
            let (pointer, span) = at(&["kubernetesVersion"]);
            diags.push(
                Diagnostic::error(
                    "invalid-version",
                    format!(
                        "kubernetesVersion `{}` of host `{}` is not MAJOR.MINOR.PATCH",
                        h.vars.kubernetes_version, h.name
                    ),
                    span,
                    pointer,
                )
                .with_hint(format!(
                    "quote a full version: `kubernetesVersion: \"{DEFAULT_KUBERNETES_VERSION}\"`"
                )),
            );
        }
        for san in &h.vars.extra_sans {
            if san.parse::<std::net::IpAddr>().is_err() && !crate::k8s::is_dns1123_subdomain(san) {
                let (pointer, span) = at(&["extraSans"]);
                diags.push(
                    Diagnostic::error(
                        "invalid-san",
                        format!("extra SAN `{san}` of host `{}` is neither an IP address nor a DNS name", h.name),
                        span,
                        pointer,
                    )
                    .with_hint("use an IP address or a lowercase DNS name"),
                );
            }
        }
        if !crate::k8s::is_dns1123_label(&h.vars.namespace) {
            // Not written: a worker's namespace is its name.
            let (pointer, span) = at(&["namespace", "name"]);
            diags.push(
                Diagnostic::error(
                    "invalid-namespace",
                    format!(
                        "namespace `{}` of host `{}` is not a valid Kubernetes namespace",
                        h.vars.namespace, h.name
                    ),
                    span,
                    pointer,
                )
                .with_hint("lowercase letters, digits and `-`, at most 63 characters"),
            );
        }
        for (what, key, p) in [
            ("services", "services", h.services.as_deref()),
            ("dataSweeper", "dataSweeper", h.data_sweeper.as_deref()),
            ("ssh key", "key", h.ssh.key.as_deref()),
        ] {
            if let Some(p) = p
                && !p.exists()
            {
                let (pointer, span) = at(&[key]);
                diags.push(
                    Diagnostic::warning(
                        "file-missing",
                        format!(
                            "{what} file {} of host `{}` does not exist",
                            p.display(),
                            h.name
                        ),
                        span,
                        pointer,
                    )
                    .with_hint("relative paths are resolved against the inventory's directory"),
                );
            }
        }
    }
    let masters: Vec<&Host> = inv.masters().collect();
    match masters.len() {
        0 if !inv.hosts.is_empty() => diags.push(
            Diagnostic::error(
                "no-master",
                "no host has `role: master`",
                inv.span.clone(),
                "",
            )
            .with_hint(
                "mark the control-plane host `role: master` (Ansible: put it in a `masters` group)",
            ),
        ),
        n if n > 1 => {
            // The second master's `role` (its entry when a group made it a master).
            let i = inv
                .hosts
                .iter()
                .position(|h| std::ptr::eq(h, masters[1]))
                .unwrap_or(0);
            let (pointer, span) = located
                .hosts
                .get(i)
                .and_then(|(p, o)| {
                    o.get("role")
                        .or_else(|| Some((p.clone(), masters[1].span.clone())))
                })
                .unwrap_or_else(|| (String::new(), inv.span.clone()));
            diags.push(
                Diagnostic::error(
                    "multiple-masters",
                    format!(
                        "{n} hosts are masters ({}); AION runs one control-plane node",
                        masters
                            .iter()
                            .map(|h| h.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    span,
                    pointer,
                )
                .with_hint("make exactly one host `role: master`"),
            );
        }
        _ => {}
    }
    let global = |key: &str| {
        located
            .global
            .get(key)
            .unwrap_or_else(|| (String::new(), inv.span.clone()))
    };
    if inv.mode == Mode::Single && inv.workers().next().is_some() {
        let (pointer, span) = global("mode");
        diags.push(
            Diagnostic::error(
                "single-with-workers",
                "`mode: single` but the inventory has workers",
                span,
                pointer,
            )
            .with_hint("use `mode: cluster`, or remove the workers"),
        );
    }
    check_images_from(inv, located, diags);
    for peer in &inv.peers {
        for (host, (span, pointer)) in peer.to.iter().zip(&peer.to_at) {
            if !inv.hosts.iter().any(|h| &h.name == host) {
                let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
                diags.push(
                    Diagnostic::error(
                        "unknown-host",
                        format!(
                            "peer `{}` may send to `{host}`, which is not a host of this inventory",
                            peer.device
                        ),
                        span.clone(),
                        pointer.clone(),
                    )
                    .with_hint(format!(
                        "`to:` names hosts of this installation: {}",
                        names.join(", ")
                    )),
                );
            }
        }
        if inv.hosts.iter().any(|h| h.name == peer.device) {
            diags.push(
                Diagnostic::error(
                    "peer-is-a-host",
                    format!("peer `{}` is a host of this inventory", peer.device),
                    peer.span.clone(),
                    peer.pointer.clone(),
                )
                .with_hint("devices of the same installation reach each other through the installation's broker; `peers:` lists devices of other installations"),
            );
        }
    }
    if let Some(tls) = &inv.entry_tls {
        let files = [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)];
        for ((key, path), at) in files.into_iter().zip(&tls.at) {
            if !path.is_file() {
                diags.push(
                    Diagnostic::error(
                        "file-missing",
                        format!("entryTls {key} {} does not exist", path.display()),
                        at.clone(),
                        format!("{}/{key}", tls.pointer),
                    )
                    .with_hint("PEM files on this machine; relative paths are resolved against the inventory's directory"),
                );
            }
        }
        if inv.peers.is_empty() {
            diags.push(
                Diagnostic::warning(
                    "entry-tls-without-peers",
                    "entryTls is set but there are no peers: the entry is not rendered",
                    tls.span.clone(),
                    tls.pointer.clone(),
                )
                .with_hint(
                    "list the devices of other installations that may send here under `peers:`",
                ),
            );
        }
    }
    for src in &inv.image_sources {
        if let Some(url) = &src.registry {
            if let Err(why) = registry_url(url) {
                diags.push(
                    Diagnostic::error(
                        "image-source-registry",
                        format!("image source {url}: {why}"),
                        src.span.clone(),
                        src.pointer.clone(),
                    )
                    .with_hint("a registry is `http://host:port` or `https://host[:port]`: no path, no user or password"),
                );
            }
        } else if !src.path.exists() {
            diags.push(
                Diagnostic::error(
                    "image-source-missing",
                    format!("image source {} does not exist", src.path.display()),
                    src.span.clone(),
                    src.pointer.clone(),
                )
                .with_hint("an OCI image-layout directory, an OCI archive (.tar) or an images.tsv list; relative paths are resolved against the inventory's directory"),
            );
        }
    }
    if let Some(k) = &inv.known_hosts
        && !k.exists()
    {
        let (pointer, span) = global("knownHosts");
        diags.push(
            Diagnostic::warning(
                "file-missing",
                format!("knownHosts file {} does not exist", k.display()),
                span,
                pointer,
            )
            .with_hint("strict host-key checking needs it; relative paths are resolved against the inventory's directory"),
        );
    }
}

/// `imagesFrom`: the named host must be another host of the inventory that receives its images
/// from the operator itself (one level of relays: a relay that fetched from a relay would wait
/// for it, and an error there would be two hosts away from the cause).
fn check_images_from(
    inv: &Inventory,
    located: &crate::inventory::Located,
    diags: &mut Vec<Diagnostic>,
) {
    let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    for (i, h) in inv.hosts.iter().enumerate() {
        let Some(from) = &h.images_from else {
            continue;
        };
        let (pointer, span) = located
            .hosts
            .get(i)
            .and_then(|(_, o)| o.get("imagesFrom"))
            .unwrap_or_else(|| (String::new(), h.span.clone()));
        let problem = match inv.host(from) {
            None => Some((
                "unknown-host",
                format!("`imagesFrom: {from}` of host `{}` names no host of this inventory", h.name),
                format!("name one of: {}", names.join(", ")),
            )),
            Some(r) if r.name == h.name => Some((
                "images-from-itself",
                format!("host `{}` cannot fetch its images from itself", h.name),
                "remove `imagesFrom` from this host: it then receives its images from this machine".into(),
            )),
            Some(r) => r.images_from.as_ref().map(|next| {
                (
                    "images-from-chain",
                    format!(
                        "host `{}` fetches its images from `{from}`, which fetches its own from `{next}`",
                        h.name
                    ),
                    format!("a host named by `imagesFrom` receives its images from this machine: let `{}` fetch from `{next}` too, or remove `imagesFrom` from `{from}`", h.name),
                )
            }),
        };
        if let Some((code, message, hint)) = problem {
            diags.push(Diagnostic::error(code, message, span, pointer).with_hint(hint));
        }
    }
}

/// A registry entry of `imageSources`: `scheme://host[:port]`, nothing else.
fn registry_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("not an http:// or https:// URL")?;
    if rest.is_empty() {
        return Err("no host".into());
    }
    if rest.contains('@') {
        return Err("credentials do not belong in the URL".into());
    }
    if rest.contains(['/', '?', '#']) {
        return Err("a registry URL names no path".into());
    }
    if let Some((_, port)) = rest.rsplit_once(':')
        && !rest.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("port `{port}` is not a number"));
    }
    Ok(())
}
