//! Diagnostics: what a loader or validator found, where, and what to do about it.

use crate::span::Span;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One finding. `code` is stable (e.g. `unknown-key`, `bool-quoted`) so CI can match on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    /// Where: file, line, column.
    pub span: Span,
    /// JSON pointer of the node, e.g. `/microservices/foo/scale`.
    pub pointer: String,
    /// What to do about it, when we know.
    pub hint: Option<String>,
}
