//! Fast path from a rendered YAML document to JSON: the small block-YAML subset our templates
//! produce, parsed line by line without building a YAML event stream.
//!
//! The subset: block mappings and block sequences (including the compact `key:\n- item` form)
//! indented with spaces; keys that are plain words (`app.kubernetes.io/name`) or JSON strings;
//! values that are JSON strings, JSON arrays of strings/integers/booleans, decimal integers,
//! `true`/`false`, and plain words made only of letters, digits and `._/-` that YAML could not
//! read as anything but a string. minijinja's JSON auto-escaping makes every interpolated value
//! one of these. Anything else (comments after values, anchors, tags, block scalars,
//! multi-line scalars, `null`, floats, words like `yes` or `True`, tabs, duplicate keys,
//! characters YAML treats differently from JSON) gives `None`, and the caller parses the
//! document with serde-saphyr instead, so the result never depends on which path ran: the tests
//! compare both on every template.

use serde_json::{Map, Value};

/// The document as JSON, or `None` when it is outside the subset (not necessarily invalid).
pub(super) fn parse(doc: &str) -> Option<Value> {
    let mut lines = Vec::with_capacity(64);
    for raw in doc.split('\n') {
        if raw.contains(['\t', '\r']) {
            return None;
        }
        let text = raw.trim_start_matches(' ');
        let text = text.trim_end_matches(' ');
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if text.starts_with(['%', '&', '*', '!', '|', '>', '\'', '@', '`', '?', '{']) {
            return None;
        }
        lines.push(Line {
            indent: raw.len() - raw.trim_start_matches(' ').len(),
            text,
        });
    }
    let first = lines.first()?.indent;
    let mut p = Parser { lines, pos: 0 };
    let value = p.block(first)?;
    (p.pos == p.lines.len()).then_some(value)
}

struct Line<'a> {
    indent: usize,
    text: &'a str,
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

impl Parser<'_> {
    /// The block node whose first line is the current one, at `indent`.
    fn block(&mut self, indent: usize) -> Option<Value> {
        let line = self.lines.get(self.pos)?;
        if line.indent != indent {
            return None;
        }
        if is_seq_item(line.text) {
            self.seq(indent)
        } else {
            self.map(indent)
        }
    }

    fn map(&mut self, indent: usize) -> Option<Value> {
        let mut map = Map::new();
        while let Some(line) = self.lines.get(self.pos) {
            if line.indent < indent {
                break;
            }
            if line.indent > indent || is_seq_item(line.text) {
                return None;
            }
            let KeyLine::Pair(key, rest) = key(line.text) else {
                return None;
            };
            self.pos += 1;
            let value = if rest.is_empty() {
                match self.lines.get(self.pos) {
                    Some(next) if next.indent > indent => self.block(next.indent)?,
                    Some(next) if next.indent == indent && is_seq_item(next.text) => {
                        self.seq(indent)?
                    }
                    // An empty value is null: rare enough to leave to the full parser.
                    _ => return None,
                }
            } else {
                scalar(rest)?
            };
            if map.insert(key, value).is_some() {
                return None;
            }
        }
        Some(Value::Object(map))
    }

    fn seq(&mut self, indent: usize) -> Option<Value> {
        let mut items = Vec::new();
        while let Some(line) = self.lines.get(self.pos) {
            if line.indent != indent || !is_seq_item(line.text) {
                break;
            }
            let rest = line.text[1..].trim_start_matches(' ');
            if rest.is_empty() || is_seq_item(rest) {
                return None;
            }
            match key(rest) {
                KeyLine::Pair(..) => {
                    // `- key: value`: a mapping whose column is that of `key`.
                    let column = indent + (line.text.len() - rest.len());
                    self.lines[self.pos] = Line {
                        indent: column,
                        text: rest,
                    };
                    items.push(self.map(column)?);
                }
                KeyLine::Scalar => {
                    items.push(scalar(rest)?);
                    self.pos += 1;
                }
                KeyLine::Unsupported => return None,
            }
        }
        Some(Value::Array(items))
    }
}

enum KeyLine<'a> {
    /// `key:` followed by the rest of the line (trimmed, maybe empty).
    Pair(String, &'a str),
    /// No `key: ` on this line: a scalar.
    Scalar,
    /// Looks like a key we do not read (leave the document to the full parser).
    Unsupported,
}

fn key(text: &str) -> KeyLine<'_> {
    let (key, after) = if text.starts_with('"') {
        let Some(end) = json_string_end(text) else {
            return KeyLine::Unsupported;
        };
        let after = &text[end..];
        if !after.starts_with(':') {
            return KeyLine::Scalar;
        }
        match json_string(&text[..end]) {
            Some(k) => (k, &after[1..]),
            None => return KeyLine::Unsupported,
        }
    } else {
        let Some(colon) = text.find(':') else {
            return KeyLine::Scalar;
        };
        let after = &text[colon + 1..];
        if !(after.is_empty() || after.starts_with(' ')) {
            return KeyLine::Scalar;
        }
        let word = &text[..colon];
        if !is_plain_string(word) {
            return KeyLine::Unsupported;
        }
        (word.to_owned(), after)
    };
    if !(after.is_empty() || after.starts_with(' ')) {
        return KeyLine::Unsupported;
    }
    KeyLine::Pair(key, after.trim_start_matches(' '))
}

/// Byte offset just past the closing quote of the JSON string `text` starts with.
fn json_string_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Characters whose meaning differs between JSON and YAML inside a double-quoted string (YAML
/// line breaks, the BOM, characters YAML does not allow unescaped), and `\u` escapes of
/// surrogates (JSON pairs them, YAML does not).
fn yaml_safe_json(text: &str) -> bool {
    text.chars().all(|c| {
        !matches!(
            c,
            '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
        )
    }) && !text.as_bytes().windows(4).any(|w| {
        w[0] == b'\\' && (w[1] == b'u' || w[1] == b'U') && (w[2] | 0x20) == b'd' && {
            let c = w[3] | 0x20;
            (b'8'..=b'9').contains(&c) || (b'a'..=b'f').contains(&c)
        }
    })
}

fn json_string(text: &str) -> Option<String> {
    if !yaml_safe_json(text) {
        return None;
    }
    // Most strings have no escapes: the text between the quotes is the value.
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.bytes().any(|b| b == b'\\' || b == b'"' || b < 0x20) {
        return Some(inner.to_owned());
    }
    serde_json::from_str(text).ok()
}

fn scalar(text: &str) -> Option<Value> {
    match text.as_bytes()[0] {
        b'"' => json_string(text).map(Value::String),
        b'[' => {
            if !yaml_safe_json(text) {
                return None;
            }
            let value: Value = serde_json::from_str(text).ok()?;
            let simple = value
                .as_array()?
                .iter()
                .all(|v| v.is_string() || v.is_boolean() || v.is_i64() || v.is_u64());
            simple.then_some(value)
        }
        _ => match text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ if is_decimal(text) => text.parse::<i64>().ok().map(Value::from),
            _ if is_plain_string(text) => Some(Value::String(text.to_owned())),
            _ => None,
        },
    }
}

/// `0` or `-?[1-9][0-9]*` (no leading zeros: YAML 1.1 would read them as octal).
fn is_decimal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0"
}

/// A plain word every YAML schema reads as the string itself.
fn is_plain_string(text: &str) -> bool {
    const SPECIAL: &[&str] = &[
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf", "infinity",
    ];
    text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
        && !SPECIAL.iter().any(|s| s.eq_ignore_ascii_case(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full(doc: &str) -> Value {
        serde_saphyr::from_str(doc).unwrap()
    }

    /// Inside the subset: the fast path gives what serde-saphyr gives.
    fn same(doc: &str) {
        assert_eq!(parse(doc), Some(full(doc)), "{doc}");
    }

    #[test]
    fn subset_matches_the_full_parser() {
        same("a: 1\nb: \"x\"\nc:\n  d: true\n  e: [\"p\", \"q\"]\n");
        same(
            "list:\n- name: a\n  value: \"1\"\n- name: b\n  valueFrom:\n    fieldRef:\n      fieldPath: metadata.namespace\n",
        );
        same("list:\n  - x\n  - /var/lib\n  - 7\nnext: -3\n");
        same("\"quoted/key\": \"v\"\n\"a b\": \"c: d # e\"\n");
        same("# comment\na: b   \n\n  # indented comment\nc: d\n");
        same("s: \"\\u003cb\\u003e \\\" \\\\ \\/ \\n \\t é 日本 😀\"\n");
        same(
            "rules:\n- apiGroups: [\"apps\"]\n  verbs: [\"get\", \"list\"]\n- apiGroups: [\"batch\"]\n",
        );
        same("a:\n    -   k: 1\n        l: 2\n    -   z\n");
        same("deep:\n  a:\n    b:\n      c: 0\n  d: e\n");
    }

    #[test]
    fn outside_the_subset_is_left_to_the_full_parser() {
        for doc in [
            "a: yes\n",
            "a: True\n",
            "a: null\n",
            "a: ~\n",
            "a:\n",
            "a: 1.5\n",
            "a: 010\n",
            "a: 0x1f\n",
            "a: b # comment\n",
            "a: b c\n",
            "a: foo\n  bar\n",
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: |\n  text\n",
            "a: 'single'\n",
            "a: {\"b\": 1}\n",
            "a: [1.5]\n",
            "a: [b, c]\n",
            "a: 1\na: 2\n",
            "a:\n\tb: 1\n",
            "a: \"x\u{2028}y\"\n",
            "a: \"\\ud83d\\ude00\"\n",
            "- a\n- - b\n",
            "a:\n  b: 1\n c: 2\n",
            "a: 1\n  b: 2\n",
            "? a\n: b\n",
            "plain scalar\n",
            "",
        ] {
            assert_eq!(parse(doc), None, "{doc:?}");
        }
    }

    #[test]
    fn compact_sequence_under_a_key_then_more_keys() {
        let v = parse("containers:\n- name: a\n  image: \"x:1\"\n- name: b\nvolumes:\n- name: c\n")
            .unwrap();
        assert_eq!(
            v,
            json!({"containers": [{"name": "a", "image": "x:1"}, {"name": "b"}], "volumes": [{"name": "c"}]})
        );
    }
}
