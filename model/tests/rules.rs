//! One passing and one failing case per rule (loader, schema and semantic rules).

use std::path::Path;

use aion_model::inventory;
use aion_model::{Diagnostic, Severity, services, validate};

const INV: &str = "hosts:\n  - {name: edge-master, address: 10.0.0.2, role: master}\n  - {name: edge-worker-1, address: 10.0.0.3, role: worker}\n";

/// All diagnostics for a services.yml text (loader + semantic, with the inventory above).
fn diags(yaml: &str) -> Vec<Diagnostic> {
    let inv = inventory::load_str(INV, Path::new("inventory.yml"))
        .unwrap()
        .value;
    match services::load_str(yaml, Path::new("services.yml")) {
        Ok(l) => validate::loaded_services(&l, Some(&inv)),
        Err(e) => vec![e.diagnostic().expect("positioned error")],
    }
}

/// `bad` reports `code` with `severity` at `line`; `good` does not report `code`.
fn rule(code: &str, severity: Severity, good: &str, bad: &str, line: usize) {
    let g = diags(good);
    assert!(
        !g.iter().any(|d| d.code == code),
        "{code}: good case reported it: {g:#?}"
    );
    let b = diags(bad);
    let hit = b.iter().find(|d| d.code == code);
    let Some(hit) = hit else {
        panic!("{code}: bad case did not report it: {b:#?}")
    };
    assert_eq!(hit.severity, severity, "{code}: {hit}");
    assert_eq!(hit.span.line, line, "{code}: {hit}");
    assert!(hit.hint.is_some(), "{code}: no hint");
    assert!(hit.span.column >= 1, "{code}: no column");
    for d in &b {
        assert_at_pointer(bad, d);
    }
}

/// Codes about a key itself (the name is the problem, or the value is absent): their span is
/// the key of the member the pointer names; every other diagnostic's span is the value there.
const KEY_CODES: &[&str] = &[
    "unknown-key",
    "duplicate-key",
    "null-body",
    "misplaced-microservice",
    "invalid-name",
];

/// Codes about the YAML stream, not a node: positioned where the parser stopped
/// (`yaml-alias`: the document does not load, there is no tree to walk.)
const STREAM_CODES: &[&str] = &[
    "yaml-syntax",
    "yaml-budget",
    "yaml-alias",
    "multiple-documents",
];

/// Where the node `pointer` names was written in `text`: the value, or for [`KEY_CODES`] the
/// key of that member. Found by walking the parsed tree, independently of the validator.
fn pointed_at(text: &str, code: &str, pointer: &str) -> Option<(usize, usize)> {
    let doc = aion_model::yaml::parse_document(text, Path::new("services.yml")).ok()?;
    let root = doc.root?;
    let node = if KEY_CODES.contains(&code) && !pointer.is_empty() {
        let (parent, last) = pointer.rsplit_once('/')?;
        let last = last.replace("~1", "/").replace("~0", "~");
        let pairs = root.pointer(parent)?.as_map()?;
        &pairs
            .iter()
            .rev()
            .find(|p| p.key.text() == Some(&last))?
            .key
    } else {
        root.pointer(pointer)?
    };
    Some((node.pos.line as usize, node.pos.column as usize))
}

/// `d`'s line:column is where the node its JSON pointer names was written.
fn assert_at_pointer(text: &str, d: &Diagnostic) {
    if STREAM_CODES.contains(&d.code) {
        return;
    }
    let at = pointed_at(text, d.code, &d.pointer);
    assert_eq!(
        Some((d.span.line, d.span.column)),
        at,
        "{d}\n  pointer {} names a node written elsewhere in:\n{text}",
        d.pointer
    );
}

fn ms(body: &str) -> String {
    format!("microservices:\n  app:\n{body}")
}

use Severity::{Error, Warning};

#[test]
fn type_errors() {
    rule(
        "type",
        Error,
        &ms("    scale: 2\n"),
        &ms("    scale: two\n"),
        3,
    );
    rule(
        "type",
        Error,
        &ms("    env: {A: 1}\n"),
        &ms("    env:\n      A: [1]\n"),
        4,
    );
    rule(
        "type",
        Error,
        &ms("    command: [a]\n"),
        &ms("    command: a b\n"),
        3,
    );
    rule(
        "type",
        Error,
        &ms("    always: yes\n"),
        &ms("    always: maybe\n"),
        3,
    );
    rule("type", Error, "microservices: {}\n", "- a\n", 1);
}

#[test]
fn bool_quoted() {
    rule(
        "bool-quoted",
        Error,
        &ms("    always: yes\n"),
        &ms("    always: \"yes\"\n"),
        3,
    );
    let d = diags(&ms("    privileged: 'True'\n"));
    assert_eq!(
        d[0].hint.as_deref().unwrap().split(':').next(),
        Some("remove the quotes")
    );
}

#[test]
fn int_quoted_and_overflow_and_float() {
    rule(
        "int-quoted",
        Error,
        &ms("    scale: 3\n"),
        &ms("    scale: \"3\"\n"),
        3,
    );
    rule(
        "int-overflow",
        Error,
        &ms("    interval: 2147483647\n"),
        &ms("    interval: 2147483648\n"),
        3,
    );
    rule(
        "float-truncated",
        Warning,
        &ms("    scale: 2.0\n"),
        &ms("    scale: 2.5\n"),
        3,
    );
}

#[test]
fn duplicate_and_unknown_keys() {
    rule(
        "duplicate-key",
        Warning,
        &ms("    scale: 1\n"),
        &ms("    scale: 1\n    scale: 2\n"),
        4,
    );
    rule(
        "duplicate-key",
        Warning,
        &ms("    env: {A: 1}\n"),
        &ms("    env: {A: 1, A: 2}\n"),
        3,
    );
    rule(
        "unknown-key",
        Warning,
        &ms("    nextService: {}\n"),
        &ms("    nextservice: {}\n"),
        3,
    );
    let d = diags(&ms("    nextservice: {}\n"));
    assert_eq!(
        d[0].hint.as_deref(),
        Some("keys are case-sensitive: did you mean `nextService`?")
    );
    let d = diags(&ms("    scael: 1\n"));
    assert_eq!(d[0].hint.as_deref(), Some("did you mean `scale`?"));
}

#[test]
fn null_body() {
    rule(
        "null-body",
        Error,
        "microservices:\n  app: {}\n",
        "microservices:\n  app:\n",
        2,
    );
    rule(
        "null-body",
        Error,
        "devices:\n  d: {addr: x}\n",
        "devices:\n  d:\n",
        2,
    );
}

#[test]
fn scale_nonpositive() {
    rule(
        "scale-nonpositive",
        Warning,
        &ms("    scale: 1\n"),
        &ms("    scale: 0\n"),
        3,
    );
    let l = services::load_str(&ms("    scale: -3\n"), Path::new("s")).unwrap();
    assert_eq!(l.value.microservices[0].scale, 1);
}

#[test]
fn misplaced_microservice() {
    rule(
        "misplaced-microservice",
        Error,
        "x-notes: {a: 1}\n",
        "app:\n  scale: 1\n  always: yes\n",
        1,
    );
}

#[test]
fn multiple_documents() {
    rule(
        "multiple-documents",
        Warning,
        "microservices: {}\n",
        "microservices: {}\n---\nx: 1\n",
        2,
    );
}

#[test]
fn yaml_level_errors() {
    rule("yaml-syntax", Error, "a: [1]\n", "a: [1\n", 2);
    rule("yaml-alias", Error, "a: {<<: {b: 1}}\n", "a: {<<: 1}\n", 1);
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = if i == 1 {
            "a".to_string()
        } else {
            format!("a{}", i - 1)
        };
        laughs.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    let d = diags(&laughs);
    assert_eq!(d[0].code, "yaml-budget");
}

#[test]
fn invalid_name() {
    rule(
        "invalid-name",
        Error,
        "microservices:\n  data-sweeper: {}\n",
        "microservices:\n  Data_Sweeper: {}\n",
        2,
    );
    let long = "a".repeat(55);
    // 55 + "-001" = 59 fits a label; "-001-srv" = 63 fits.
    rule(
        "invalid-name",
        Error,
        &format!("microservices:\n  {long}: {{}}\n"),
        &format!("microservices:\n  {long}x: {{}}\n"),
        2,
    );
    // Names with a path keep only the last segment (upstream getLabelName).
    assert!(diags("microservices:\n  org/data-sweeper: {}\n").is_empty());
}

#[test]
fn invalid_tag() {
    rule(
        "invalid-tag",
        Warning,
        &ms("    tag: v1.0.0\n"),
        &ms("    tag: \"v1:0\"\n"),
        3,
    );
}

#[test]
fn network_unknown() {
    rule(
        "network-unknown",
        Warning,
        &ms("    network: NodePort\n"),
        &ms("    network: nodeport\n"),
        3,
    );
}

#[test]
fn quantities() {
    let good = ms(
        "    resources:\n      requests: {cpu: 100m, memory: 64Mi}\n      limits: {cpu: 1, memory: 1Gi}\n",
    );
    rule(
        "invalid-quantity",
        Error,
        &good,
        &ms("    resources:\n      limits:\n        memory: 1GB\n"),
        5,
    );
    rule(
        "invalid-quantity",
        Error,
        &good,
        &ms("    resources:\n      limits: {cpu: -1}\n"),
        4,
    );
    rule(
        "requests-exceed-limits",
        Error,
        &good,
        &ms("    resources:\n      requests: {cpu: 2}\n      limits: {cpu: 500m}\n"),
        4,
    );
}

#[test]
fn volume_mounts() {
    let good = ms("    volumeMountPathList:\n      - /media:/media:Bidirectional\n      - /a:/b\n");
    for bad in [
        "/media",
        "media:/media",
        "/media:media",
        "/a:/b:rw",
        "/a:/b:Bidirectional:x",
    ] {
        rule(
            "invalid-volume-mount",
            Error,
            &good,
            &ms(&format!("    volumeMountPathList:\n      - {bad}\n")),
            4,
        );
    }
    rule(
        "volume-mount-duplicate",
        Error,
        &good,
        &ms("    volumeMountPathList:\n      - /a:/b\n      - /a/:/c\n"),
        5,
    );
    rule(
        "volume-mount-duplicate",
        Error,
        &good,
        &ms("    volumeMountPathList:\n      - /var/lib/aion/Data:/x\n"),
        4,
    );
}

fn ports(list: &str) -> String {
    ms(&format!("    network: NodePort\n    ports:\n{list}"))
}

#[test]
fn port_rules() {
    let good = ports(
        "      - {name: http, port: 80, nodePort: 30080}\n      - {name: dns, protocol: UDP, port: 53}\n      - {name: dns-tcp, port: 53}\n",
    );
    rule("port-name", Error, &good, &ports("      - {port: 80}\n"), 5);
    rule(
        "port-name",
        Error,
        &good,
        &ports("      - {name: Web_Port, port: 80}\n"),
        5,
    );
    rule(
        "port-reserved",
        Error,
        &good,
        &ports("      - {name: envoy-admin, port: 80}\n"),
        5,
    );
    rule(
        "port-reserved",
        Error,
        &good,
        &ports("      - {name: admin, port: 10001}\n"),
        5,
    );
    rule(
        "port-duplicate-name",
        Error,
        &good,
        &ports("      - {name: a, port: 80}\n      - {name: a, port: 81}\n"),
        6,
    );
    rule(
        "port-duplicate-number",
        Error,
        &good,
        &ports("      - {name: a, port: 80}\n      - {name: b, port: 80}\n"),
        6,
    );
    rule(
        "port-protocol",
        Error,
        &good,
        &ports("      - {name: a, protocol: tcp, port: 80}\n"),
        5,
    );
    rule(
        "port-range",
        Error,
        &good,
        &ports("      - {name: a, port: 70000}\n"),
        5,
    );
}

#[test]
fn node_port_rules() {
    let good = ports("      - {name: http, port: 80, nodePort: 30080}\n");
    rule(
        "nodeport-range",
        Error,
        &good,
        &ports("      - {name: http, port: 80, nodePort: 8080}\n"),
        5,
    );
    let two = "microservices:\n  a:\n    network: NodePort\n    ports: [{name: h, port: 80, nodePort: 30080}]\n  b:\n    network: NodePort\n    ports: [{name: h, port: 80, nodePort: 30080}]\n";
    rule("nodeport-duplicate", Error, &good, two, 7);
    rule(
        "nodeport-scale",
        Error,
        &good,
        &ms(
            "    scale: 2\n    network: NodePort\n    ports: [{name: h, port: 80, nodePort: 30080}]\n",
        ),
        5,
    );
    rule(
        "nodeport-ignored",
        Warning,
        &good,
        &ms("    ports: [{name: h, port: 80, nodePort: 30080}]\n"),
        3,
    );
}

#[test]
fn next_service_rules() {
    let good = "devices:\n  other: {addr: 10.0.0.9}\nmicroservices:\n  a:\n    nextService:\n      default:\n        - name: b\n        - name: remote\n          device: other\n  b: {}\n";
    rule(
        "next-service-unknown",
        Warning,
        good,
        "microservices:\n  a:\n    nextService:\n      default:\n        - name: bb\n  b: {}\n",
        5,
    );
    rule(
        "next-device-unknown",
        Warning,
        good,
        "microservices:\n  a:\n    nextService:\n      default:\n        - name: remote\n          device: othr\n",
        6,
    );
    // Without a name, the entry itself (there is no `name` value to point at).
    rule(
        "next-service-unknown",
        Warning,
        good,
        "microservices:\n  a:\n    nextService:\n      default:\n        - pattern: n\n  b: {}\n",
        5,
    );
}

#[test]
fn target_node() {
    rule(
        "target-node-unknown",
        Error,
        &ms("    targetNode: edge-worker-1\n"),
        &ms("    targetNode: edge-worker-2\n"),
        3,
    );
}

#[test]
fn schema_errors_map_to_lines() {
    // The schema check runs on the raw tree; the loader's own message wins on the same node.
    let d = diags(&ms("    ports:\n      - {name: a, port: 70000}\n"));
    assert!(d.iter().all(|x| x.code != "schema"), "{d:?}");
    let root =
        aion_model::yaml::parse_str("devices:\n  d:\n    sshPort: [1]\n", Path::new("s")).unwrap();
    let file = std::sync::Arc::new(std::path::PathBuf::from("s"));
    let s = aion_model::schema::check(aion_model::schema::Kind::Services, &root, &file);
    assert_eq!(s.len(), 1);
    // The per-microservice check (what the loader runs) reports the same.
    assert_eq!(s, aion_model::schema::check_services(&root, &file));
    assert_eq!(
        (s[0].span.line, s[0].pointer.as_str()),
        (3, "/devices/d/sshPort")
    );
}

#[test]
fn go_yaml_v2_scalar_semantics() {
    let l = services::load_str(
        "debug: yes\ndeviceName: 1.50\nmicroservices:\n  app:\n    env:\n      PORT: 3306\n      RATE: 1.50\n      FLAG: yes\n      OFF: no\n      EMPTY:\n      TILDE: ~\n      HEX: 0x1F\n    always: On\n    startup: n\n    scale: 0x2\n    interval: 010\n",
        Path::new("s"),
    )
    .unwrap();
    assert!(l.diagnostics.is_empty(), "{:?}", l.diagnostics);
    let f = l.value;
    assert_eq!((f.debug.as_str(), f.device_name.as_str()), ("yes", "1.50"));
    let a = &f.microservices[0];
    let env: Vec<(&str, &str)> = a
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("PORT", "3306"),
            ("RATE", "1.50"),
            ("FLAG", "yes"),
            ("OFF", "no"),
            ("EMPTY", ""),
            ("TILDE", ""),
            ("HEX", "0x1F")
        ]
    );
    assert!(a.always && !a.startup);
    assert_eq!((a.scale, a.interval), (2, 8));
}

#[test]
fn anchors_aliases_and_merge_keys() {
    let l = services::load_str(
        "x-base: &base\n  always: yes\n  env: {A: 1}\nmicroservices:\n  a:\n    <<: *base\n    scale: 2\n  b: *base\n",
        Path::new("s"),
    )
    .unwrap();
    // `x-base` is only an unknown key (a warning), not a misplaced microservice.
    let codes: Vec<_> = l.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(codes, ["unknown-key"]);
    let f = &l.value;
    assert!(f.microservice("a").unwrap().always);
    assert_eq!(f.microservice("a").unwrap().scale, 2);
    assert_eq!(
        f.microservice("b").unwrap().env,
        [("A".to_string(), "1".to_string())]
    );
}

/// One file with a finding of each kind about a node: each is reported at exactly the line and
/// column of the value its pointer names (the key for key findings). Before, the nextService
/// findings pointed at the list entry (16:11, 17:11) while their pointers named its `name` /
/// `device` value.
#[test]
fn each_rule_kind_at_exact_line_and_column() {
    let text = "\
microservices:
  Bad_Name:
    tag: \"-bad\"
    network: nodeport
    scale: 0
    resources:
      requests: {cpu: 2x, memory: 2Gi}
      limits: {memory: 1Gi}
    volumeMountPathList:
      - /data
    ports:
      - {name: Http, port: 70000}
      - {port: 80}
    nextService:
      default:
        - name: nope
        - {name: x, device: far}
    targetNode: nowhere
    tagg: v1
    always: \"yes\"
";
    let expected = [
        ("invalid-name", "/microservices/Bad_Name", (2, 3)),
        ("invalid-tag", "/microservices/Bad_Name/tag", (3, 10)),
        (
            "network-unknown",
            "/microservices/Bad_Name/network",
            (4, 14),
        ),
        (
            "scale-nonpositive",
            "/microservices/Bad_Name/scale",
            (5, 12),
        ),
        (
            "invalid-quantity",
            "/microservices/Bad_Name/resources/requests/cpu",
            (7, 23),
        ),
        (
            "requests-exceed-limits",
            "/microservices/Bad_Name/resources/requests/memory",
            (7, 35),
        ),
        (
            "invalid-volume-mount",
            "/microservices/Bad_Name/volumeMountPathList/0",
            (10, 9),
        ),
        (
            "port-name",
            "/microservices/Bad_Name/ports/0/name",
            (12, 16),
        ),
        (
            "port-range",
            "/microservices/Bad_Name/ports/0/port",
            (12, 28),
        ),
        ("port-name", "/microservices/Bad_Name/ports/1", (13, 9)),
        (
            "next-service-unknown",
            "/microservices/Bad_Name/nextService/default/0/name",
            (16, 17),
        ),
        (
            "next-device-unknown",
            "/microservices/Bad_Name/nextService/default/1/device",
            (17, 29),
        ),
        (
            "target-node-unknown",
            "/microservices/Bad_Name/targetNode",
            (18, 17),
        ),
        ("unknown-key", "/microservices/Bad_Name/tagg", (19, 5)),
        ("bool-quoted", "/microservices/Bad_Name/always", (20, 13)),
    ];
    let d = diags(text);
    for (code, pointer, at) in expected {
        let hit = d
            .iter()
            .find(|x| x.code == code && x.pointer == pointer)
            .unwrap_or_else(|| panic!("no {code} at {pointer}: {d:#?}"));
        assert_eq!((hit.span.line, hit.span.column), at, "{hit}");
    }
    for x in &d {
        assert_at_pointer(text, x);
    }
}
