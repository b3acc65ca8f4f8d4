//! JSON Schema (2020-12) checks of a YAML tree, with errors mapped back to line/column.
//!
//! The schemas live in `schemas/` (usable as-is by editors) and are embedded here, so the
//! binaries need no files at run time. The YAML is converted to JSON with go-yaml v2
//! resolution ([`Node::to_json`]); each error's instance path (a JSON pointer) is looked up in
//! the tree to find its position.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::diag::Diagnostic;
use crate::yaml::{Node, Value, join_pointer};

pub const SERVICES_SCHEMA: &str = include_str!("../../schemas/services.schema.json");
pub const INVENTORY_SCHEMA: &str = include_str!("../../schemas/inventory.schema.json");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Services,
    Inventory,
}

impl Kind {
    pub fn schema_text(self) -> &'static str {
        match self {
            Kind::Services => SERVICES_SCHEMA,
            Kind::Inventory => INVENTORY_SCHEMA,
        }
    }
    fn file_name(self) -> &'static str {
        match self {
            Kind::Services => "schemas/services.schema.json",
            Kind::Inventory => "schemas/inventory.schema.json",
        }
    }
}

fn validator(kind: Kind) -> &'static jsonschema::Validator {
    static SERVICES: OnceLock<jsonschema::Validator> = OnceLock::new();
    static INVENTORY: OnceLock<jsonschema::Validator> = OnceLock::new();
    let cell = match kind {
        Kind::Services => &SERVICES,
        Kind::Inventory => &INVENTORY,
    };
    cell.get_or_init(|| {
        let schema: serde_json::Value =
            serde_json::from_str(kind.schema_text()).expect("embedded schema is valid JSON");
        jsonschema::draft202012::new(&schema).expect("embedded schema compiles")
    })
}

/// The services schema's `#/$defs/microservice` on its own (same document, same `$id`, so
/// error messages and schema paths are the ones the whole schema reports).
fn microservice_validator() -> &'static jsonschema::Validator {
    static CELL: OnceLock<jsonschema::Validator> = OnceLock::new();
    CELL.get_or_init(|| {
        let mut schema: serde_json::Value =
            serde_json::from_str(SERVICES_SCHEMA).expect("embedded schema is valid JSON");
        let obj = schema.as_object_mut().expect("schema is an object");
        for k in ["type", "properties", "title", "description"] {
            obj.remove(k);
        }
        obj.insert("$ref".into(), "#/$defs/microservice".into());
        jsonschema::draft202012::new(&schema).expect("embedded schema compiles")
    })
}

/// Check `root` (parsed from `file`) against the schema; one diagnostic (code `schema`) per
/// violation.
pub fn check(kind: Kind, root: &Node, file: &Arc<PathBuf>) -> Vec<Diagnostic> {
    let json = root.to_json();
    check_json(kind, root, &json, file)
}

/// Like [`check`] when the JSON form is already at hand.
pub fn check_json(
    kind: Kind,
    root: &Node,
    json: &serde_json::Value,
    file: &Arc<PathBuf>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    report(kind, validator(kind), json, "", root, file, &mut out);
    out
}

/// Validate `json` (the JSON form of the node at `prefix`) and report each violation at the
/// node of `root` its pointer leads to.
fn report(
    kind: Kind,
    v: &jsonschema::Validator,
    json: &serde_json::Value,
    prefix: &str,
    root: &Node,
    file: &Arc<PathBuf>,
    out: &mut Vec<Diagnostic>,
) {
    for err in v.iter_errors(json) {
        let pointer = format!("{prefix}{}", err.instance_path().as_str());
        let node = root.nearest(&pointer);
        out.push(
            Diagnostic::error("schema", err.to_string(), node.span(file), pointer).with_hint(
                format!("see {} at {}", kind.file_name(), err.schema_path().as_str()),
            ),
        );
    }
}

/// [`check`] for a services file, without ever building the whole JSON copy: the top level
/// is checked with `microservices` as an empty mapping, then each microservice on its own
/// against `#/$defs/microservice` (what the top level's `additionalProperties` applies), in
/// the order and with the last-wins choice of [`Node::to_json`]. Same diagnostics as
/// [`check`], a small fraction of the memory on large files.
pub fn check_services(root: &Node, file: &Arc<PathBuf>) -> Vec<Diagnostic> {
    let kind = Kind::Services;
    let Value::Map(pairs) = &root.value else {
        return check(kind, root, file);
    };
    let winner = pairs
        .iter()
        .rposition(|p| p.key.text() == Some("microservices"));
    let Some(Value::Map(entries)) = winner.map(|i| &pairs[i].value.value) else {
        return check(kind, root, file);
    };
    // The top level, with the microservices mapping empty (its entries are checked below).
    let mut top = serde_json::Map::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        let k = p.key.text().map(str::to_owned).unwrap_or_default();
        let v = if Some(i) == winner {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            p.value.to_json()
        };
        top.insert(k, v);
    }
    let top = serde_json::Value::Object(top);
    let mut skeleton = Vec::new();
    report(kind, validator(kind), &top, "", root, file, &mut skeleton);
    // Each microservice: keys as `to_json` names them, last wins, first position kept.
    let mut order: Vec<(&str, usize)> = Vec::with_capacity(entries.len());
    let mut index: std::collections::HashMap<&str, usize, crate::yaml::FxBuild> =
        std::collections::HashMap::with_capacity_and_hasher(entries.len(), Default::default());
    for (i, p) in entries.iter().enumerate() {
        let k = p.key.text().unwrap_or("");
        match index.get(k) {
            Some(&slot) => order[slot].1 = i,
            None => {
                index.insert(k, order.len());
                order.push((k, i));
            }
        }
    }
    drop(index);
    let v = microservice_validator();
    let mut inner = Vec::new();
    for (k, i) in order {
        let json = entries[i].value.to_json();
        let prefix = join_pointer("/microservices", k);
        report(kind, v, &json, &prefix, root, file, &mut inner);
    }
    // The order of the whole check: errors on the root, then property by property in the
    // document's key order (the microservices' where that key stands).
    let first_segment = |d: &Diagnostic| -> Option<String> {
        let rest = d.pointer.strip_prefix('/')?;
        Some(rest.split('/').next().unwrap_or_default().to_owned())
    };
    let mut out: Vec<Diagnostic> = Vec::with_capacity(skeleton.len() + inner.len());
    let (root_level, mut by_key): (Vec<_>, Vec<_>) = skeleton
        .into_iter()
        .partition(|d| first_segment(d).is_none());
    out.extend(root_level);
    let mut inner = Some(inner);
    for k in top.as_object().into_iter().flat_map(|m| m.keys()) {
        let seg = crate::yaml::escape_pointer(k);
        if k == "microservices" {
            out.extend(inner.take().unwrap_or_default());
        }
        let (mine, others): (Vec<_>, Vec<_>) = by_key
            .into_iter()
            .partition(|d| first_segment(d).as_deref() == Some(&*seg));
        out.extend(mine);
        by_key = others;
    }
    out.extend(inner.unwrap_or_default());
    out.extend(by_key);
    out
}

fn segment_prefix(prefix: &str, of: &str) -> bool {
    of == prefix || (of.starts_with(prefix) && of.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Add schema findings that the typed loader has not already reported: a schema error is
/// dropped when a loader diagnostic sits on the same node, or a loader error sits on an
/// ancestor or a descendant of it (the loader's message is the more precise one).
pub fn merge(diags: &mut Vec<Diagnostic>, schema: Vec<Diagnostic>) {
    let mut add = Vec::new();
    for s in schema {
        let covered = diags.iter().any(|d| {
            d.pointer == s.pointer
                || (d.is_error()
                    && (segment_prefix(&d.pointer, &s.pointer)
                        || (!s.pointer.is_empty() && segment_prefix(&s.pointer, &d.pointer))))
        });
        let repeated = add
            .iter()
            .any(|a: &Diagnostic| a.pointer == s.pointer && a.message == s.message);
        if !covered && !repeated {
            add.push(s);
        }
    }
    diags.extend(add);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn embedded_schemas_compile() {
        let _ = validator(Kind::Services);
        let _ = validator(Kind::Inventory);
    }

    #[test]
    fn errors_map_to_positions() {
        let root = crate::yaml::parse_str(
            "microservices:\n  a:\n    ports:\n      - port: 70000\n",
            Path::new("t"),
        )
        .unwrap();
        let file = Arc::new(PathBuf::from("t"));
        let d = check(Kind::Services, &root, &file);
        assert_eq!(d, check_services(&root, &file));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].pointer, "/microservices/a/ports/0/port");
        assert_eq!((d[0].span.line, d[0].span.column), (4, 15));
    }

    #[test]
    fn per_microservice_check_equals_whole_check() {
        let text = "x: &b {ports: [{port: 0, protocol: tcp}]}\nmicroservices: {a: 1}\n\
                    microservices:\n  ~: {scale: x}\n  null: {scale: y}\n  a/b~c: *b\n  \
                    dup: {always: maybe}\n  dup: {volumeMountPathList: [3, {}]}\n  ? [1]\n  : []\n  \
                    ok: {}\n  n:\ndevices: {d: {sshPort: 1.5}, e: 3}\ndebug: {}\n";
        let root = crate::yaml::parse_str(text, Path::new("t")).unwrap();
        let file = Arc::new(PathBuf::from("t"));
        let whole = check(Kind::Services, &root, &file);
        assert!(whole.len() >= 8, "{whole:#?}");
        assert_eq!(check_services(&root, &file), whole);
        for other in [
            "- 1\n",
            "microservices: [1]\n",
            "microservices: 3\n",
            "",
            "debug: []\ndevices: {d: 1}\nmicroservices: {a: {scale: x}}\ndeviceName: {}\n",
        ] {
            let root = crate::yaml::parse_str(other, Path::new("t")).unwrap();
            assert_eq!(
                check_services(&root, &file),
                check(Kind::Services, &root, &file)
            );
        }
    }
}
