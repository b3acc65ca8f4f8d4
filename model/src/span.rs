//! Source positions. Every node read from YAML keeps one so that a diagnostic can point at it.

use std::path::PathBuf;
use std::sync::Arc;

/// A position in a source file: 1-based line and column, plus the JSON pointer of the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// The file the node came from (shared, cheap to clone).
    pub file: Arc<PathBuf>,
    /// 1-based line of the node's first character (0 when unknown).
    pub line: usize,
    /// 1-based column of the node's first character (0 when unknown).
    pub column: usize,
}

impl Span {
    pub fn new(file: Arc<PathBuf>, line: usize, column: usize) -> Self {
        Span { file, line, column }
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}
