//! JSON Schema (2020-12) checks of a YAML tree, with errors mapped back to line/column.
//!
//! The schemas live in `schemas/` (usable as-is by editors) and are embedded here, so the
//! binaries need no files at run time. The YAML is converted to JSON with go-yaml v2
//! resolution ([`Node::to_json`]); each error's instance path (a JSON pointer) is looked up in
//! the tree to find its position.

use std::sync::OnceLock;

use crate::diag::Diagnostic;
use crate::yaml::Node;

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

/// Check `root` against the schema; one diagnostic (code `schema`) per violation.
pub fn check(kind: Kind, root: &Node) -> Vec<Diagnostic> {
    let json = root.to_json();
    check_json(kind, root, &json)
}

/// Like [`check`] when the JSON form is already at hand.
pub fn check_json(kind: Kind, root: &Node, json: &serde_json::Value) -> Vec<Diagnostic> {
    let v = validator(kind);
    let mut out = Vec::new();
    for err in v.iter_errors(json) {
        let pointer = err.instance_path().as_str().to_owned();
        let node = root.nearest(&pointer);
        out.push(
            Diagnostic::error("schema", err.to_string(), node.span.clone(), pointer).with_hint(
                format!("see {} at {}", kind.file_name(), err.schema_path().as_str()),
            ),
        );
    }
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
        let d = check(Kind::Services, &root);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].pointer, "/microservices/a/ports/0/port");
        assert_eq!((d[0].span.line, d[0].span.column), (4, 15));
    }
}
