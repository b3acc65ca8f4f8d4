//! Typed reading of a [`Node`] tree with go-yaml v2 decoding rules, collecting diagnostics.
//!
//! Codes produced here: `type`, `bool-quoted`, `int-quoted`, `int-overflow`, `float-truncated`,
//! `duplicate-key`, `unknown-key`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::diag::Diagnostic;
use crate::span::Span;
use crate::yaml::{Node, Resolved, Value, join_pointer, yaml11_bool};

/// Where each present field's value was written (for diagnostics of later checks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSpans(pub Vec<(&'static str, Span)>);

impl FieldSpans {
    pub fn get(&self, key: &str) -> Option<&Span> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, s)| s)
    }
}

/// The fields of a struct-like mapping, deduplicated (last wins).
pub(crate) struct Fields<'n> {
    pub ptr: String,
    /// (key, winning value, winning pair came from a merge, line of the winning key).
    entries: Vec<(&'static str, &'n Node, bool, u32)>,
}

impl<'n> Fields<'n> {
    pub fn get(&self, key: &str) -> Option<(&'n Node, String)> {
        self.entries
            .iter()
            .find(|e| e.0 == key)
            .map(|e| (e.1, join_pointer(&self.ptr, e.0)))
    }
    /// Every present field with its value node.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &'n Node)> + '_ {
        self.entries.iter().map(|e| (e.0, e.1))
    }
}

/// A best "did you mean" for `key` among `known`.
pub fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    if let Some(k) = known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
        return Some(k);
    }
    let lower = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| {
            (
                strsim::damerau_levenshtein(&lower, &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

pub(crate) struct Reader {
    pub diags: Vec<Diagnostic>,
    /// The file the nodes came from (named in every diagnostic's span).
    pub file: Arc<PathBuf>,
}

impl Reader {
    pub fn new(file: Arc<PathBuf>) -> Self {
        Reader {
            diags: Vec::new(),
            file,
        }
    }

    /// Where `node` was written, as a diagnostic span.
    pub fn span(&self, node: &Node) -> Span {
        node.span(&self.file)
    }

    pub fn type_error(&mut self, node: &Node, ptr: &str, field: &str, expected: &str) {
        self.diags.push(
            Diagnostic::error(
                "type",
                format!("`{field}` expects {expected}, found {}", node.describe()),
                self.span(node),
                ptr,
            )
            .with_hint(format!(
                "write {expected} here; upstream aion-core fails to load this file"
            )),
        );
    }

    /// A struct-like mapping: known keys (last wins, warning on duplicates), unknown keys
    /// warned with a suggestion. `None` (after a type error) when the node is not a mapping;
    /// null gives no fields (go-yaml v2 leaves the struct zero).
    pub fn fields<'n>(
        &mut self,
        node: &'n Node,
        ptr: &str,
        what: &str,
        known: &[&'static str],
    ) -> Option<Fields<'n>> {
        let mut out = Fields {
            ptr: ptr.to_owned(),
            entries: Vec::new(),
        };
        let pairs = match &node.value {
            Value::Map(p) => p,
            _ if node.is_null() => return Some(out),
            _ => {
                self.type_error(node, ptr, what, "a mapping");
                return None;
            }
        };
        out.entries.reserve_exact(pairs.len().min(known.len()));
        for pair in pairs {
            let Some(key) = pair.key.text() else {
                self.diags.push(
                    Diagnostic::warning(
                        "unknown-key",
                        format!(
                            "a {} used as a key in `{what}` is ignored",
                            pair.key.describe()
                        ),
                        self.span(&pair.key),
                        ptr,
                    )
                    .with_hint("keys are plain names"),
                );
                continue;
            };
            match known.iter().position(|k| *k == key) {
                Some(idx) => {
                    let name = known[idx];
                    let entry = (name, &pair.value, pair.merged, pair.key.pos.line);
                    if let Some(slot) = out.entries.iter_mut().find(|e| e.0 == name) {
                        if !pair.merged && !slot.2 {
                            self.duplicate(&pair.key, &join_pointer(ptr, key), key, slot.3);
                        }
                        *slot = entry;
                    } else {
                        out.entries.push(entry);
                    }
                }
                None => {
                    let mut d = Diagnostic::warning(
                        "unknown-key",
                        format!("unknown key `{key}` in {what}; upstream aion-core ignores it"),
                        self.span(&pair.key),
                        join_pointer(ptr, key),
                    );
                    d = match suggest(key, known) {
                        Some(s) if s.eq_ignore_ascii_case(key) => {
                            d.with_hint(format!("keys are case-sensitive: did you mean `{s}`?"))
                        }
                        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                        None => d.with_hint(format!("known keys: {}", known.join(", "))),
                    };
                    self.diags.push(d);
                }
            }
        }
        Some(out)
    }

    fn duplicate(&mut self, key: &Node, ptr: &str, name: &str, first_line: u32) {
        self.diags.push(
            Diagnostic::warning(
                "duplicate-key",
                format!("duplicate key `{name}` (first at line {first_line}); the last one wins"),
                self.span(key),
                ptr,
            )
            .with_hint("remove one of the two entries (go-yaml v2 keeps the last, strict parsers reject the file)"),
        );
    }

    /// A `map[string]X`: entries in first-seen order, values last-wins, warning on duplicates.
    /// Keys take the scalar's text (null → ""). None after a type error.
    pub fn map_entries<'n>(
        &mut self,
        node: &'n Node,
        ptr: &str,
        what: &str,
    ) -> Option<Vec<(String, &'n Node, &'n Node)>> {
        let entries = self.map_entry_indices(node, ptr, what)?;
        let pairs = node.as_map().unwrap_or_default();
        Some(
            entries
                .into_iter()
                .map(|(k, i)| (k, &pairs[i].key, &pairs[i].value))
                .collect(),
        )
    }

    /// Like [`Reader::map_entries`], with the index of each entry's winning pair in the
    /// mapping instead of references (so the caller may take the values out).
    pub fn map_entry_indices(
        &mut self,
        node: &Node,
        ptr: &str,
        what: &str,
    ) -> Option<Vec<(String, usize)>> {
        let pairs = match &node.value {
            Value::Map(p) => p,
            _ if node.is_null() => return Some(Vec::new()),
            _ => {
                self.type_error(node, ptr, what, "a mapping");
                return None;
            }
        };
        let mut out: Vec<(String, usize)> = Vec::with_capacity(pairs.len());
        // (entry, merged) by key; small mappings are searched linearly instead.
        const LINEAR: usize = 16;
        let mut index: HashMap<&str, (usize, bool), crate::yaml::FxBuild> = if pairs.len() > LINEAR
        {
            HashMap::with_capacity_and_hasher(pairs.len(), Default::default())
        } else {
            HashMap::default()
        };
        let mut merged_flags: Vec<bool> = Vec::new();
        for (pi, pair) in pairs.iter().enumerate() {
            let key: &str = match &pair.key.value {
                Value::Scalar(_) if pair.key.is_null() => "",
                Value::Scalar(s) => &s.text,
                _ => {
                    self.type_error(&pair.key, ptr, what, "plain keys");
                    continue;
                }
            };
            let found = if pairs.len() > LINEAR {
                index.get_mut(key).map(|(i, m)| (*i, m))
            } else {
                out.iter()
                    .position(|(k, _)| k == key)
                    .map(|i| (i, &mut merged_flags[i]))
            };
            match found {
                Some((i, merged)) => {
                    if !pair.merged && !*merged {
                        let first = pairs[out[i].1].key.pos.line;
                        let p = join_pointer(ptr, key);
                        self.duplicate(&pair.key, &p, key, first);
                    }
                    *merged = pair.merged;
                    out[i].1 = pi;
                }
                None => {
                    if pairs.len() > LINEAR {
                        index.insert(key, (out.len(), pair.merged));
                    } else {
                        merged_flags.push(pair.merged);
                    }
                    out.push((key.to_owned(), pi));
                }
            }
        }
        Some(out)
    }

    /// go-yaml v2 into `bool`: YAML 1.1 booleans; null → false.
    pub fn bool(&mut self, node: &Node, ptr: &str, field: &str) -> Option<bool> {
        let Some(s) = node.as_scalar() else {
            self.type_error(node, ptr, field, "a boolean (yes/no, true/false)");
            return None;
        };
        match s.resolve() {
            Resolved::Bool(b) => Some(b),
            Resolved::Null => Some(false),
            Resolved::Str if s.style.is_quoted() && yaml11_bool(&s.text).is_some() => {
                self.diags.push(
                    Diagnostic::error(
                        "bool-quoted",
                        format!(
                            "`{field}` expects a boolean, found the quoted string {:?}",
                            s.text
                        ),
                        self.span(node),
                        ptr,
                    )
                    .with_hint(format!(
                        "remove the quotes: `{field}: {}` (go-yaml v2 cannot unmarshal !!str into bool)",
                        s.text
                    )),
                );
                None
            }
            _ => {
                self.type_error(node, ptr, field, "a boolean (yes/no, true/false)");
                None
            }
        }
    }

    /// go-yaml v2 into `int32`: ints (Go base-0 syntax), floats truncated, null → 0.
    pub fn int32(&mut self, node: &Node, ptr: &str, field: &str) -> Option<i32> {
        let Some(s) = node.as_scalar() else {
            self.type_error(node, ptr, field, "an integer");
            return None;
        };
        let overflow = |r: &mut Self| {
            r.diags.push(
                Diagnostic::error(
                    "int-overflow",
                    format!("`{field}` is a 32-bit integer; `{}` does not fit", s.text),
                    r.span(node),
                    ptr,
                )
                .with_hint("use a value between -2147483648 and 2147483647"),
            );
            None
        };
        match s.resolve() {
            Resolved::Int(i) => match i32::try_from(i) {
                Ok(v) => Some(v),
                Err(_) => overflow(self),
            },
            Resolved::UInt(_) => overflow(self),
            Resolved::Null => Some(0),
            Resolved::Float(f) => {
                if f.is_finite() && f >= i32::MIN as f64 && f <= i32::MAX as f64 {
                    let v = f.trunc() as i32;
                    if v as f64 != f {
                        self.diags.push(
                            Diagnostic::warning(
                                "float-truncated",
                                format!(
                                    "`{field}` is an integer; `{}` is truncated to {v}",
                                    s.text
                                ),
                                self.span(node),
                                ptr,
                            )
                            .with_hint(format!("write `{v}`")),
                        );
                    }
                    Some(v)
                } else {
                    overflow(self)
                }
            }
            Resolved::Str
                if s.style.is_quoted()
                    && crate::yaml::parse_go_int(&s.text.replace('_', "")).is_some() =>
            {
                self.diags.push(
                    Diagnostic::error(
                        "int-quoted",
                        format!(
                            "`{field}` expects an integer, found the quoted string {:?}",
                            s.text
                        ),
                        self.span(node),
                        ptr,
                    )
                    .with_hint(format!(
                        "remove the quotes: `{field}: {}` (go-yaml v2 cannot unmarshal !!str into int32)",
                        s.text
                    )),
                );
                None
            }
            _ => {
                self.type_error(node, ptr, field, "an integer");
                None
            }
        }
    }

    /// go-yaml v2 into `string`: the scalar's original text; null → "".
    pub fn string(&mut self, node: &Node, ptr: &str, field: &str) -> Option<String> {
        match node.as_scalar() {
            Some(_) if node.is_null() => Some(String::new()),
            Some(s) => Some(s.text.to_string()),
            None => {
                self.type_error(node, ptr, field, "a string");
                None
            }
        }
    }

    /// go-yaml v2 into `[]string`: null → None; each item's text.
    pub fn string_list(&mut self, node: &Node, ptr: &str, field: &str) -> Option<Vec<String>> {
        if node.is_null() {
            return None;
        }
        let Some(items) = node.as_seq() else {
            self.type_error(node, ptr, field, "a list of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let p = format!("{ptr}/{i}");
            if let Some(s) = self.string(item, &p, field) {
                out.push(s);
            }
        }
        Some(out)
    }
}
