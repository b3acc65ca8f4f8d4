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

impl Diagnostic {
    pub fn new(
        severity: Severity,
        code: &'static str,
        message: impl Into<String>,
        span: Span,
        pointer: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity,
            code,
            message: message.into(),
            span,
            pointer: pointer.into(),
            hint: None,
        }
    }
    pub fn error(
        code: &'static str,
        message: impl Into<String>,
        span: Span,
        pointer: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Error, code, message, span, pointer)
    }
    pub fn warning(
        code: &'static str,
        message: impl Into<String>,
        span: Span,
        pointer: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Warning, code, message, span, pointer)
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// `file:line:col: severity[code]: message (hint)`.
impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}[{}]: {}",
            self.span, self.severity, self.code, self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

/// Sort diagnostics by file, line, column, then errors first; stable for equal positions.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        (a.span.file.as_path(), a.span.line, a.span.column)
            .cmp(&(b.span.file.as_path(), b.span.line, b.span.column))
            .then(b.severity.cmp(&a.severity))
    });
}

/// A loaded value plus everything noticed while loading it. The value is usable (best effort)
/// even when `diagnostics` holds errors; callers that act on it must check [`Loaded::has_errors`].
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub value: T,
    pub diagnostics: Vec<Diagnostic>,
}

impl<T> Loaded<T> {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }
    /// The value if there are no errors, else the diagnostics.
    pub fn into_result(self) -> Result<(T, Vec<Diagnostic>), Vec<Diagnostic>> {
        if self.has_errors() {
            Err(self.diagnostics)
        } else {
            Ok((self.value, self.diagnostics))
        }
    }
}

/// Why a file could not be loaded at all (everything else is a [`Diagnostic`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Yaml(#[from] crate::yaml::YamlError),
    /// The document's shape makes it unusable (e.g. an inventory that is a list).
    #[error("{0}")]
    Shape(Box<Diagnostic>),
}

impl LoadError {
    /// The error as a diagnostic, when it has a position (not for I/O errors).
    pub fn diagnostic(&self) -> Option<Diagnostic> {
        match self {
            LoadError::Io { .. } => None,
            LoadError::Yaml(e) => Some(
                Diagnostic::error(e.kind.code(), e.message.clone(), e.span.clone(), "")
                    .with_hint(match e.kind {
                        crate::yaml::YamlErrorKind::Syntax => {
                            "fix the YAML syntax at this position"
                        }
                        crate::yaml::YamlErrorKind::Budget => {
                            "the document is too large or too deeply nested (or aliases expand too much)"
                        }
                        crate::yaml::YamlErrorKind::Alias => {
                            "an alias must refer to a finished anchor; `<<` takes a mapping or a list of mappings"
                        }
                    }),
            ),
            LoadError::Shape(d) => Some((**d).clone()),
        }
    }
}
