//! A spanned YAML tree built from `saphyr-parser` events, with go-yaml v2 scalar semantics.
//!
//! * Every node keeps the line and column of its first character ([`Pos`], 8 bytes); the file
//!   path is kept once per document ([`Document::file`]) and joined in by [`Pos::span`].
//! * Scalar texts are shared (`Arc<str>`, interned per document: a key or value written
//!   10,000 times is stored once).
//! * Scalars keep their original text and style; [`Scalar::resolve`] applies go-yaml v2's
//!   YAML 1.1 resolution (`yes`/`on`/`y` are booleans, `0x1F` and `017` are ints, ...).
//! * Aliases are expanded (copied) under a budget, so a "billion laughs" document is
//!   rejected instead of exhausting memory; merge keys (`<<`) are expanded in place, the way
//!   go-yaml v2 applies them (positionally: later keys win, earlier ones are overridden).
//! * Mappings keep every pair, duplicates included; the typed loaders decide (last wins).
//! * Only the first document of a stream is returned (go-yaml v2 `Unmarshal` reads one).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle};

use crate::span::Span;

/// Deepest nesting accepted (mappings and sequences).
pub const MAX_DEPTH: usize = 128;
/// Largest input accepted, in bytes.
pub const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;
/// Nodes that alias expansion may add, at least; beyond that the budget is the number of
/// nodes written in the document itself (expansion may at most double the document).
pub const MIN_ALIAS_BUDGET: usize = 10_000;

/// Why a text is not a YAML document we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{span}: {message}")]
pub struct YamlError {
    pub kind: YamlErrorKind,
    pub message: String,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlErrorKind {
    /// The text is not well-formed YAML.
    Syntax,
    /// Too deep, too large, or too many alias expansions.
    Budget,
    /// An alias that refers to its own (unfinished) anchor, or a bad merge key.
    Alias,
}

impl YamlErrorKind {
    /// Stable diagnostic code.
    pub fn code(self) -> &'static str {
        match self {
            YamlErrorKind::Syntax => "yaml-syntax",
            YamlErrorKind::Budget => "yaml-budget",
            YamlErrorKind::Alias => "yaml-alias",
        }
    }
}

/// How a scalar was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    /// `|` or `>` block scalar.
    Block,
}

impl Style {
    pub fn is_quoted(self) -> bool {
        matches!(self, Style::SingleQuoted | Style::DoubleQuoted)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The scalar's text after YAML unescaping/folding (what go-yaml v2 puts in a string field).
    pub text: Arc<str>,
    /// Explicit tag, e.g. `!!str` (core tags are written with the `!!` handle).
    pub tag: Option<Arc<str>>,
    pub style: Style,
}

/// What a scalar resolves to under go-yaml v2 (YAML 1.1) rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resolved {
    Null,
    Bool(bool),
    Int(i64),
    /// Out of i64 range but a valid unsigned int.
    UInt(u64),
    Float(f64),
    Str,
}

impl Resolved {
    /// YAML type name as go-yaml prints it (`!!str`, `!!int`, ...).
    pub fn tag_name(self) -> &'static str {
        match self {
            Resolved::Null => "!!null",
            Resolved::Bool(_) => "!!bool",
            Resolved::Int(_) | Resolved::UInt(_) => "!!int",
            Resolved::Float(_) => "!!float",
            Resolved::Str => "!!str",
        }
    }
}

/// go-yaml v2's YAML 1.1 booleans (resolve.go table).
pub fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            Some(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            Some(false)
        }
        _ => None,
    }
}

fn is_null_text(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// Go `strconv.ParseInt(s, 0, 64)` after go-yaml removed every `_`: optional sign, then
/// `0x`/`0o`/`0b` prefixes, a leading `0` means octal.
pub fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let mag = parse_go_uint(body)?;
    if neg {
        if mag <= i64::MAX as u64 + 1 {
            Some((mag as i128).wrapping_neg() as i64)
        } else {
            None
        }
    } else {
        i64::try_from(mag).ok()
    }
}

/// Go `strconv.ParseUint(s, 0, 64)` (no sign).
pub fn parse_go_uint(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let prefix = if b.len() >= 2 && b[0] == b'0' {
        Some(b[1].to_ascii_lowercase())
    } else {
        None
    };
    let (radix, digits) = match prefix {
        Some(b'x') => (16, &s[2..]),
        Some(b'o') => (8, &s[2..]),
        Some(b'b') => (2, &s[2..]),
        Some(_) => (8, &s[1..]),
        None => (10, s),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// go-yaml v2 `yamlStyleFloat`: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

fn resolve_plain(text: &str) -> Resolved {
    if is_null_text(text) {
        return Resolved::Null;
    }
    if let Some(b) = yaml11_bool(text) {
        return Resolved::Bool(b);
    }
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if !(first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.') {
        return Resolved::Str;
    }
    let plain: std::borrow::Cow<'_, str> = if text.contains('_') {
        text.chars()
            .filter(|&c| c != '_')
            .collect::<String>()
            .into()
    } else {
        text.into()
    };
    if let Some(i) = parse_go_int(&plain) {
        return Resolved::Int(i);
    }
    if let Some(u) = parse_go_uint(&plain) {
        return Resolved::UInt(u);
    }
    if is_yaml_float(&plain)
        && let Ok(f) = plain.parse::<f64>()
    {
        return Resolved::Float(f);
    }
    Resolved::Str
}

impl Scalar {
    /// go-yaml v2 resolution: quoted and block scalars are strings; plain ones follow the
    /// YAML 1.1 table. An explicit core tag (`!!str`, `!!int`, ...) forces the type.
    pub fn resolve(&self) -> Resolved {
        if let Some(tag) = self.tag.as_deref() {
            match tag {
                "!!str" | "!!binary" => return Resolved::Str,
                "!!null" => return Resolved::Null,
                "!!bool" => {
                    return yaml11_bool(&self.text)
                        .map(Resolved::Bool)
                        .unwrap_or(Resolved::Str);
                }
                "!!int" | "!!float" => {
                    let r = resolve_plain(&self.text);
                    return match r {
                        Resolved::Int(_) | Resolved::UInt(_) | Resolved::Float(_) => r,
                        _ => Resolved::Str,
                    };
                }
                _ => {}
            }
        }
        match self.style {
            Style::Plain => resolve_plain(&self.text),
            _ => Resolved::Str,
        }
    }

    /// Whether [`Scalar::resolve`] gives null (without resolving numbers).
    pub fn is_null(&self) -> bool {
        match self.tag.as_deref() {
            Some("!!null") => true,
            Some("!!str" | "!!binary" | "!!bool" | "!!int" | "!!float") => false,
            _ => self.style == Style::Plain && is_null_text(&self.text),
        }
    }

    /// A plain `<<` (or `!!merge`): a merge key.
    pub fn is_merge_key(&self) -> bool {
        (self.style == Style::Plain && &*self.text == "<<" && self.tag.is_none())
            || self.tag.as_deref() == Some("!!merge")
    }
}

/// One `key: value` pair of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub key: Node,
    pub value: Node,
    /// The pair came from a merge key (`<<: *base`), not written here.
    pub merged: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Every pair in document order (duplicates kept, merges expanded in place).
    Map(Vec<Pair>),
}

/// Where a node starts: 1-based line and column (0 when unknown). The file is the document's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn from_marker(m: saphyr_parser::Marker) -> Self {
        Pos {
            line: u32::try_from(m.line()).unwrap_or(u32::MAX),
            column: u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
        }
    }
    /// This position in `file`, as a diagnostic span.
    pub fn span(self, file: &Arc<PathBuf>) -> Span {
        Span::new(file.clone(), self.line as usize, self.column as usize)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    /// The node's position in `file` (the file it was parsed from), as a diagnostic span.
    pub fn span(&self, file: &Arc<PathBuf>) -> Span {
        self.pos.span(file)
    }
    /// An empty plain scalar (null) at `pos`.
    pub fn null_at(pos: Pos) -> Node {
        Node {
            value: Value::Scalar(Scalar {
                text: Arc::from(""),
                style: Style::Plain,
                tag: None,
            }),
            pos,
        }
    }
    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_map(&self) -> Option<&[Pair]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
    /// Scalar text (any style), None for collections.
    pub fn text(&self) -> Option<&str> {
        self.as_scalar().map(|s| &*s.text)
    }
    /// Whether this is a null (`~`, `null`, empty) scalar.
    pub fn is_null(&self) -> bool {
        self.as_scalar().is_some_and(Scalar::is_null)
    }
    /// The value of `key` in a mapping, last occurrence winning (go-yaml v2 semantics).
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .rev()
            .find(|p| p.key.text() == Some(key))
            .map(|p| &p.value)
    }
    /// Short description of the node's kind for messages: `a mapping`, `the string "yes"`...
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Map(_) => "a mapping".into(),
            Value::Seq(_) => "a sequence".into(),
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => "null".into(),
                Resolved::Str if s.style.is_quoted() => format!("the quoted string {:?}", s.text),
                Resolved::Str => format!("the string {:?}", s.text),
                Resolved::Bool(_) => format!("the boolean `{}`", s.text),
                Resolved::Int(_) | Resolved::UInt(_) => format!("the integer `{}`", s.text),
                Resolved::Float(_) => format!("the float `{}`", s.text),
            },
        }
    }

    /// The node a JSON pointer (RFC 6901) names, following last-wins for duplicate keys.
    pub fn pointer(&self, pointer: &str) -> Option<&Node> {
        if pointer.is_empty() {
            return Some(self);
        }
        let mut node = self;
        for raw in pointer.strip_prefix('/')?.split('/') {
            let seg = raw.replace("~1", "/").replace("~0", "~");
            node = match &node.value {
                Value::Map(_) => node.get(&seg)?,
                Value::Seq(items) => items.get(seg.parse::<usize>().ok()?)?,
                Value::Scalar(_) => return None,
            };
        }
        Some(node)
    }

    /// The deepest node on the way to `pointer` (for errors on missing children).
    pub fn nearest(&self, pointer: &str) -> &Node {
        let mut node = self;
        let Some(rest) = pointer.strip_prefix('/') else {
            return node;
        };
        for raw in rest.split('/') {
            let seg = raw.replace("~1", "/").replace("~0", "~");
            let next = match &node.value {
                Value::Map(_) => node.get(&seg),
                Value::Seq(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
                Value::Scalar(_) => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }

    /// JSON with go-yaml v2 resolution (plain `yes` → true, `3306` → 3306, quoted → string);
    /// duplicate keys: last wins. Used for JSON Schema checks.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => J::Null,
                Resolved::Bool(b) => J::Bool(b),
                Resolved::Int(i) => J::from(i),
                Resolved::UInt(u) => J::from(u),
                Resolved::Float(f) => serde_json::Number::from_f64(f)
                    .map(J::Number)
                    .unwrap_or_else(|| J::String(s.text.to_string())),
                Resolved::Str => J::String(s.text.to_string()),
            },
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(pairs) => {
                let mut m = serde_json::Map::with_capacity(pairs.len());
                for p in pairs {
                    let k = p.key.text().map(str::to_owned).unwrap_or_default();
                    // Last wins, but keep the first position (IndexMap semantics).
                    m.insert(k, p.value.to_json());
                }
                J::Object(m)
            }
        }
    }

    fn count(&self) -> usize {
        match &self.value {
            Value::Scalar(_) => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            Value::Map(pairs) => {
                1 + pairs
                    .iter()
                    .map(|p| p.key.count() + p.value.count())
                    .sum::<usize>()
            }
        }
    }
}

/// Escape one JSON pointer segment (`~` → `~0`, `/` → `~1`).
pub fn escape_pointer(seg: &str) -> std::borrow::Cow<'_, str> {
    if seg.contains(['~', '/']) {
        seg.replace('~', "~0").replace('/', "~1").into()
    } else {
        seg.into()
    }
}

/// `parent/seg` as a JSON pointer.
pub fn join_pointer(parent: &str, seg: &str) -> String {
    let seg = escape_pointer(seg);
    let mut s = String::with_capacity(parent.len() + 1 + seg.len());
    s.push_str(parent);
    s.push('/');
    s.push_str(&seg);
    s
}

/// A parsed document: its root (None for an empty stream) and whether more documents followed.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file named in spans (shared by every diagnostic about this document).
    pub file: Arc<PathBuf>,
    pub root: Option<Node>,
    /// Position of a second document, if the stream had one (ignored, like go-yaml v2).
    pub extra_document: Option<Span>,
}

/// An open collection. Its children so far sit at the end of the builder's shared `items` /
/// `pairs` stacks from `start` on, and move into one exactly-sized vector when it closes.
enum Frame {
    Seq {
        start: usize,
        pos: Pos,
        anchor: usize,
    },
    Map {
        start: usize,
        pending_key: Option<Node>,
        pos: Pos,
        anchor: usize,
    },
}

struct Builder {
    file: Arc<PathBuf>,
    stack: Vec<Frame>,
    /// Children of the open sequences (see [`Frame`]).
    items: Vec<Node>,
    /// Pairs of the open mappings (see [`Frame`]).
    pairs: Vec<Pair>,
    anchors: HashMap<usize, Node>,
    /// Sizes (node counts) of anchored nodes, so alias copies can be charged up front.
    anchor_sizes: HashMap<usize, usize>,
    alias_budget: usize,
    alias_used: usize,
    events: usize,
    /// Every distinct scalar text seen so far (a text written many times is stored once).
    texts: HashSet<Arc<str>, FxBuild>,
}

/// A fast non-cryptographic hash (the Fx/rustc mix) for interning scalar texts: keys come
/// from the document being parsed, and a pathological collision set only costs time.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }
    fn write_usize(&mut self, i: usize) {
        self.write(&i.to_le_bytes());
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

fn convert_tag(tag: Option<std::borrow::Cow<'_, saphyr_parser::Tag>>) -> Option<Box<str>> {
    let tag = tag?;
    if tag.is_yaml_core_schema() || tag.handle == "!!" {
        Some(format!("!!{}", tag.suffix).into())
    } else if tag.handle == "!" {
        Some(format!("!{}", tag.suffix).into())
    } else {
        Some(format!("{}{}", tag.handle, tag.suffix).into())
    }
}

impl Builder {
    fn err(&self, kind: YamlErrorKind, at: Pos, message: impl Into<String>) -> YamlError {
        YamlError {
            kind,
            message: message.into(),
            span: at.span(&self.file),
        }
    }

    fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(t) = self.texts.get(text) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(text);
        self.texts.insert(t.clone());
        t
    }

    /// Attach a finished node to its parent; returns it when it is the document root.
    fn attach(&mut self, node: Node, anchor: usize) -> Result<Option<Node>, YamlError> {
        if anchor != 0 {
            self.anchor_sizes.insert(anchor, node.count());
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => Ok(Some(node)),
            Some(Frame::Seq { .. }) => {
                self.items.push(node);
                Ok(None)
            }
            Some(Frame::Map { pending_key, .. }) => {
                let pairs = &mut self.pairs;
                match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => {
                        let is_merge = key.as_scalar().is_some_and(Scalar::is_merge_key);
                        if is_merge {
                            let merged = merge_pairs(&node).ok_or_else(|| YamlError {
                                kind: YamlErrorKind::Alias,
                                message: format!(
                                    "a merge key `<<` needs a mapping or a sequence of mappings, found {}",
                                    node.describe()
                                ),
                                span: node.span(&self.file),
                            })?;
                            pairs.extend(merged);
                        } else {
                            pairs.push(Pair {
                                key,
                                value: node,
                                merged: false,
                            });
                        }
                    }
                }
                Ok(None)
            }
        }
    }

    fn open(&mut self, frame: Frame, at: Pos) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.err(
                YamlErrorKind::Budget,
                at,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.stack.push(frame);
        Ok(())
    }
}

/// Pairs a merge value contributes. go-yaml v2 applies a sequence of mappings from the last to
/// the first, so the first mapping wins: emit them in reverse order.
fn merge_pairs(value: &Node) -> Option<Vec<Pair>> {
    let mark = |pairs: &[Pair]| -> Vec<Pair> {
        pairs
            .iter()
            .map(|p| Pair {
                key: p.key.clone(),
                value: p.value.clone(),
                merged: true,
            })
            .collect()
    };
    match &value.value {
        Value::Map(pairs) => Some(mark(pairs)),
        Value::Seq(items) => {
            let mut out = Vec::new();
            for item in items.iter().rev() {
                out.extend(mark(item.as_map()?));
            }
            Some(out)
        }
        Value::Scalar(_) => None,
    }
}

/// Parse `text` (named `file` in spans) into its first document.
pub fn parse_document(text: &str, file: &Path) -> Result<Document, YamlError> {
    let file = Arc::new(file.to_path_buf());
    if text.len() > MAX_INPUT_BYTES {
        return Err(YamlError {
            kind: YamlErrorKind::Budget,
            message: format!(
                "file is {} bytes; the limit is {MAX_INPUT_BYTES}",
                text.len()
            ),
            span: Span::new(file, 1, 1),
        });
    }
    let mut b = Builder {
        file,
        stack: Vec::new(),
        items: Vec::new(),
        pairs: Vec::new(),
        anchors: HashMap::new(),
        anchor_sizes: HashMap::new(),
        alias_budget: MIN_ALIAS_BUDGET,
        alias_used: 0,
        events: 0,
        texts: HashSet::default(),
    };
    let mut root: Option<Node> = None;
    let mut docs = 0usize;
    let mut extra_document = None;
    let mut parser = Parser::new_from_str(text);
    while let Some(ev) = parser.next_event() {
        let (event, span) = ev.map_err(|e| YamlError {
            kind: YamlErrorKind::Syntax,
            message: e.info().to_owned(),
            span: Pos::from_marker(*e.marker()).span(&b.file),
        })?;
        let at = Pos::from_marker(span.start);
        b.events += 1;
        b.alias_budget = b.alias_budget.max(b.events);
        match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                docs += 1;
                if docs > 1 {
                    extra_document = Some(at.span(&b.file));
                    break;
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let style = match style {
                    ScalarStyle::Plain => Style::Plain,
                    ScalarStyle::SingleQuoted => Style::SingleQuoted,
                    ScalarStyle::DoubleQuoted => Style::DoubleQuoted,
                    ScalarStyle::Literal | ScalarStyle::Folded => Style::Block,
                };
                let tag = convert_tag(tag).map(|t| b.intern(&t));
                let node = Node {
                    value: Value::Scalar(Scalar {
                        text: b.intern(&text),
                        style,
                        tag,
                    }),
                    pos: at,
                };
                if let Some(r) = b.attach(node, anchor)? {
                    root = Some(r);
                }
            }
            Event::SequenceStart(anchor, _tag) => {
                b.open(
                    Frame::Seq {
                        start: b.items.len(),
                        pos: at,
                        anchor,
                    },
                    at,
                )?;
            }
            Event::MappingStart(anchor, _tag) => {
                b.open(
                    Frame::Map {
                        start: b.pairs.len(),
                        pending_key: None,
                        pos: at,
                        anchor,
                    },
                    at,
                )?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match b.stack.pop() {
                    Some(Frame::Seq { start, pos, anchor }) => {
                        let items: Vec<Node> = b.items.drain(start..).collect();
                        (
                            Node {
                                value: Value::Seq(items),
                                pos,
                            },
                            anchor,
                        )
                    }
                    Some(Frame::Map {
                        start, pos, anchor, ..
                    }) => {
                        let pairs: Vec<Pair> = b.pairs.drain(start..).collect();
                        (
                            Node {
                                value: Value::Map(pairs),
                                pos,
                            },
                            anchor,
                        )
                    }
                    None => {
                        return Err(b.err(
                            YamlErrorKind::Syntax,
                            at,
                            "unbalanced end of collection",
                        ));
                    }
                };
                if let Some(r) = b.attach(node, anchor)? {
                    root = Some(r);
                }
            }
            Event::Alias(id) => {
                let Some(target) = b.anchors.get(&id) else {
                    return Err(b.err(
                        YamlErrorKind::Alias,
                        at,
                        "alias refers to an anchor that is not complete yet (a recursive alias)",
                    ));
                };
                let size = b.anchor_sizes.get(&id).copied().unwrap_or(1);
                b.alias_used = b.alias_used.saturating_add(size);
                if b.alias_used > b.alias_budget {
                    return Err(b.err(
                        YamlErrorKind::Budget,
                        at,
                        format!(
                            "aliases expand to more than {} nodes (a \"billion laughs\" document?)",
                            b.alias_budget
                        ),
                    ));
                }
                let mut copy = target.clone();
                copy.pos = at;
                if let Some(r) = b.attach(copy, 0)? {
                    root = Some(r);
                }
            }
        }
    }
    Ok(Document {
        file: b.file,
        root,
        extra_document,
    })
}

/// Parse `text` into its first document's root. An empty document is an empty plain scalar
/// (go-yaml v2 treats it like null).
pub fn parse_str(text: &str, file: &Path) -> Result<Node, YamlError> {
    let doc = parse_document(text, file)?;
    Ok(doc
        .root
        .unwrap_or_else(|| Node::null_at(Pos { line: 1, column: 1 })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Node {
        parse_str(s, Path::new("t.yml")).unwrap()
    }

    fn res(s: &str) -> Resolved {
        p(&format!("k: {s}"))
            .get("k")
            .unwrap()
            .as_scalar()
            .unwrap()
            .resolve()
    }

    #[test]
    fn yaml11_booleans_and_strings() {
        for t in [
            "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE",
        ] {
            assert_eq!(res(t), Resolved::Bool(true), "{t}");
        }
        for f in [
            "n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE",
        ] {
            assert_eq!(res(f), Resolved::Bool(false), "{f}");
        }
        assert_eq!(res("yEs"), Resolved::Str);
        assert_eq!(res("\"yes\""), Resolved::Str);
        assert_eq!(res("!!str yes"), Resolved::Str);
    }

    #[test]
    fn go_ints_and_floats() {
        assert_eq!(res("3306"), Resolved::Int(3306));
        assert_eq!(res("0x1F"), Resolved::Int(31));
        assert_eq!(res("017"), Resolved::Int(15));
        assert_eq!(res("0b101"), Resolved::Int(5));
        assert_eq!(res("1_000"), Resolved::Int(1000));
        assert_eq!(res("-12"), Resolved::Int(-12));
        assert_eq!(res("+7"), Resolved::Int(7));
        assert_eq!(res("1.50"), Resolved::Float(1.5));
        assert_eq!(res("1e3"), Resolved::Float(1000.0));
        assert_eq!(res("08"), Resolved::Float(8.0));
        assert_eq!(res("1.2.3"), Resolved::Str);
        assert_eq!(res("~"), Resolved::Null);
        assert_eq!(res(""), Resolved::Null);
        assert_eq!(res("18446744073709551615"), Resolved::UInt(u64::MAX));
    }

    #[test]
    fn spans_are_one_based() {
        let n = p("a:\n  b: 1\n");
        let b = n.pointer("/a/b").unwrap();
        assert_eq!((b.pos.line, b.pos.column), (2, 6));
    }

    #[test]
    fn duplicates_kept_and_get_is_last_wins() {
        let n = p("a: 1\na: 2\n");
        assert_eq!(n.as_map().unwrap().len(), 2);
        assert_eq!(n.get("a").unwrap().text(), Some("2"));
        assert_eq!(n.to_json(), serde_json::json!({"a": 2}));
    }

    #[test]
    fn aliases_and_merge_keys() {
        let n = p("base: &b {x: 1, y: 2}\nc:\n  x: 0\n  <<: *b\n  y: 3\nd: *b\n");
        assert_eq!(n.pointer("/c/x").unwrap().text(), Some("1"));
        assert_eq!(n.pointer("/c/y").unwrap().text(), Some("3"));
        assert_eq!(n.pointer("/d/y").unwrap().text(), Some("2"));
        let m = p("a: &a {x: 1}\nb: &b {x: 2}\nc: {<<: [*a, *b]}\n");
        assert_eq!(m.pointer("/c/x").unwrap().text(), Some("1"));
    }

    #[test]
    fn bad_merge_is_an_error() {
        let e = parse_str("a: {<<: 3}", Path::new("t")).unwrap_err();
        assert_eq!(e.kind, YamlErrorKind::Alias);
    }

    #[test]
    fn billion_laughs_is_rejected() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            s.push_str(&format!(
                "a{i}: &a{i} [{}]\n",
                std::iter::repeat_n(prev.as_str(), 10)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let e = parse_str(&s, Path::new("t")).unwrap_err();
        assert_eq!(e.kind, YamlErrorKind::Budget);
    }

    #[test]
    fn deep_nesting_is_rejected() {
        // Flow nesting: the scanner itself stops at its flow-level limit (a syntax error).
        let s = "[".repeat(1000) + &"]".repeat(1000);
        let e = parse_str(&s, Path::new("t")).unwrap_err();
        assert!(
            matches!(e.kind, YamlErrorKind::Budget | YamlErrorKind::Syntax),
            "{e}"
        );
        // Block nesting: our depth budget.
        let mut s = String::new();
        for i in 0..200 {
            s.push_str(&" ".repeat(i));
            s.push_str("k:\n");
        }
        let e = parse_str(&s, Path::new("t")).unwrap_err();
        assert_eq!(e.kind, YamlErrorKind::Budget, "{e}");
        let s = "[".repeat(100) + &"]".repeat(100);
        assert!(parse_str(&s, Path::new("t")).is_ok());
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse_str("a: [1, 2\nb: c", Path::new("t")).unwrap_err();
        assert_eq!(e.kind, YamlErrorKind::Syntax);
        assert!(e.span.line >= 1);
    }

    #[test]
    fn only_first_document() {
        let d = parse_document("a: 1\n---\nb: 2\n", Path::new("t")).unwrap();
        assert!(d.root.unwrap().get("a").is_some());
        assert_eq!(d.extra_document.unwrap().line, 2);
    }

    #[test]
    fn pointer_escaping() {
        let n = p("\"a/b\": {\"c~d\": 1}");
        assert_eq!(n.pointer("/a~1b/c~0d").unwrap().text(), Some("1"));
        assert_eq!(join_pointer("/x", "a/b~"), "/x/a~1b~0");
    }
}
