//! `aion-reconcile validate [-i INVENTORY] [--strict] [-o json] FILE...`
//!
//! Exit codes: 0 valid (warnings allowed), 1 invalid, 2 usage or I/O error.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use aion_model::{Diagnostic, Inventory, LoadError, Severity, inventory, services, validate};

use crate::output::Tone;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiagnosticFormat {
    /// rustc-like: position, source line, caret, hint.
    Human,
    /// A JSON list of {file, line, column, pointer, severity, code, message, hint}.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inventory (native or Ansible-style YAML); enables the targetNode check. Without FILE,
    /// the services files the inventory names are validated.
    #[arg(short = 'i', long = "inventory", value_name = "INVENTORY")]
    pub inventory: Option<PathBuf>,
    /// Treat warnings as errors.
    #[arg(long)]
    pub strict: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = DiagnosticFormat::Human)]
    pub output: DiagnosticFormat,
    /// services.yml files.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// What one run found: diagnostics (sorted per file, in argument order), I/O failures, and
/// the source texts (for printing source lines).
#[derive(Debug, Default)]
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
    pub io_errors: Vec<String>,
    pub sources: HashMap<PathBuf, String>,
    pub files_checked: usize,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }
    /// 2 on I/O errors, else 1 with any error, else 0.
    pub fn exit_code(&self) -> u8 {
        if !self.io_errors.is_empty() {
            2
        } else if self.errors() > 0 {
            1
        } else {
            0
        }
    }
}

fn read(path: &Path, report: &mut Report) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            report.sources.insert(path.to_path_buf(), t.clone());
            Some(t)
        }
        Err(e) => {
            report
                .io_errors
                .push(format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

fn load_error(e: LoadError, report: &mut Report) {
    match e.diagnostic() {
        Some(d) => report.diagnostics.push(d),
        None => report.io_errors.push(e.to_string()),
    }
}

/// Validate (pure apart from reading the named files). Usage errors are `Err`.
pub fn check(args: &Args) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut inv: Option<Inventory> = None;
    if let Some(path) = &args.inventory
        && let Some(text) = read(path, &mut report)
    {
        report.files_checked += 1;
        match inventory::load_str(&text, path) {
            Ok(l) => {
                report.diagnostics.extend(l.diagnostics);
                inv = Some(l.value);
            }
            Err(e) => load_error(e, &mut report),
        }
    }
    let mut files = args.files.clone();
    if files.is_empty() {
        match (&args.inventory, &inv) {
            (None, _) => anyhow::bail!(
                "nothing to validate: give services.yml FILEs, or -i INVENTORY to validate the files it names"
            ),
            (Some(_), Some(inv)) => {
                for h in &inv.hosts {
                    if let Some(s) = &h.services
                        && !files.contains(s)
                    {
                        files.push(s.clone());
                    }
                }
                if files.is_empty() && !report.diagnostics.iter().any(Diagnostic::is_error) {
                    anyhow::bail!(
                        "inventory {} names no services files (set `services:`); give FILEs",
                        inv.source.display()
                    );
                }
            }
            (Some(_), None) => {}
        }
    }
    let mut loaded = Vec::new();
    for path in &files {
        let Some(text) = read(path, &mut report) else {
            continue;
        };
        report.files_checked += 1;
        match services::load_str(&text, path) {
            Ok(l) => {
                report
                    .diagnostics
                    .extend(validate::loaded_services(&l, inv.as_ref()));
                loaded.push(l.value);
            }
            Err(e) => load_error(e, &mut report),
        }
    }
    if inv.is_some() && loaded.len() > 1 {
        let refs: Vec<&services::ServicesFile> = loaded.iter().collect();
        report
            .diagnostics
            .extend(validate::node_ports_across(&refs));
    }
    if args.strict {
        for d in &mut report.diagnostics {
            d.severity = Severity::Error;
        }
    }
    // Files in argument order, positions within a file.
    let mut order: HashMap<PathBuf, usize> = HashMap::new();
    for p in args.inventory.iter().chain(files.iter()) {
        let next = order.len();
        order.entry(p.clone()).or_insert(next);
    }
    report.diagnostics.sort_by(|a, b| {
        let ka = order
            .get(a.span.file.as_path())
            .copied()
            .unwrap_or(usize::MAX);
        let kb = order
            .get(b.span.file.as_path())
            .copied()
            .unwrap_or(usize::MAX);
        (ka, a.span.line, a.span.column)
            .cmp(&(kb, b.span.line, b.span.column))
            .then(b.severity.cmp(&a.severity))
    });
    Ok(report)
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let report = check(args)?;
    for e in &report.io_errors {
        eprintln!("error: {e}");
    }
    match args.output {
        DiagnosticFormat::Json => println!("{}", render_json(&report.diagnostics)),
        DiagnosticFormat::Human => print!("{}", render_human(&report, crate::output::use_color())),
    }
    Ok(report.exit_code())
}

/// The stable JSON list.
pub fn render_json(diags: &[Diagnostic]) -> String {
    let list: Vec<serde_json::Value> = diags
        .iter()
        .map(|d| {
            serde_json::json!({
                "file": d.span.file.display().to_string(),
                "line": d.span.line,
                "column": d.span.column,
                "pointer": d.pointer,
                "severity": d.severity,
                "code": d.code,
                "message": d.message,
                "hint": d.hint,
            })
        })
        .collect();
    serde_json::to_string_pretty(&list).expect("JSON of plain values")
}

struct Style {
    color: bool,
}

impl Style {
    fn paint(&self, tone: Tone, s: &str) -> String {
        crate::output::paint(s, tone, self.color)
    }
}

/// Width (in characters) of the token starting at `col` (1-based) on `line`.
fn token_width(line: &str, col: usize) -> usize {
    let rest: Vec<char> = line.chars().skip(col.saturating_sub(1)).collect();
    let quoted = matches!(rest.first(), Some('"' | '\''));
    if quoted {
        let q = rest[0];
        let end = rest[1..].iter().position(|c| *c == q).map(|p| p + 2);
        return end.unwrap_or(rest.len()).max(1);
    }
    let mut n = 0;
    for (i, c) in rest.iter().enumerate() {
        if c.is_whitespace()
            || matches!(c, ',' | ']' | '}' | '#')
            || (*c == ':' && rest.get(i + 1).is_none_or(|n| n.is_whitespace()))
        {
            break;
        }
        n += 1;
    }
    n.max(1)
}

/// rustc-like text for every diagnostic, then a summary line.
pub fn render_human(report: &Report, color: bool) -> String {
    let st = Style { color };
    let mut out = String::new();
    for d in &report.diagnostics {
        let (sev, sev_code) = match d.severity {
            Severity::Error => ("error", Tone::Error),
            Severity::Warning => ("warning", Tone::Warning),
        };
        let _ = writeln!(
            out,
            "{}{} {}",
            st.paint(sev_code, &format!("{sev}[{}]", d.code)),
            st.paint(Tone::Strong, ":"),
            st.paint(Tone::Strong, &d.message)
        );
        let line_text = report
            .sources
            .get(d.span.file.as_path())
            .and_then(|t| t.lines().nth(d.span.line.saturating_sub(1)));
        let num = d.span.line.to_string();
        let pad = " ".repeat(num.len());
        let _ = writeln!(out, "{pad}{} {}", st.paint(Tone::Frame, "-->"), d.span);
        if let Some(text) = line_text {
            let text = text.replace('\t', " ");
            let _ = writeln!(out, "{pad} {}", st.paint(Tone::Frame, "|"));
            let _ = writeln!(
                out,
                "{} {} {text}",
                st.paint(Tone::Frame, &num),
                st.paint(Tone::Frame, "|")
            );
            let col = d.span.column.max(1);
            let width = token_width(&text, col);
            let _ = writeln!(
                out,
                "{pad} {} {}{}",
                st.paint(Tone::Frame, "|"),
                " ".repeat(col - 1),
                st.paint(sev_code, &"^".repeat(width))
            );
        }
        if !d.pointer.is_empty() {
            let _ = writeln!(out, "{pad} {} at {}", st.paint(Tone::Frame, "="), d.pointer);
        }
        if let Some(h) = &d.hint {
            let _ = writeln!(out, "{pad} {} {}", st.paint(Tone::Frame, "= hint:"), h);
        }
        out.push('\n');
    }
    let errors = report.errors();
    let warnings = report.warnings();
    let verdict = if errors > 0 || !report.io_errors.is_empty() {
        st.paint(Tone::Error, "invalid")
    } else {
        st.paint(Tone::Good, "valid")
    };
    let unreadable = match report.io_errors.len() {
        0 => String::new(),
        n => format!(", {n} unreadable"),
    };
    let _ = writeln!(
        out,
        "{verdict}: {} file{} checked{unreadable}, {errors} error{}, {warnings} warning{}",
        report.files_checked,
        if report.files_checked == 1 { "" } else { "s" },
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_widths() {
        assert_eq!(token_width("    port: xxxx", 11), 4);
        assert_eq!(token_width("  always: \"yes\"", 11), 5);
        assert_eq!(token_width("  a: [1, 2]", 7), 1);
        assert_eq!(token_width("  data-sweeper:", 3), 12);
        assert_eq!(token_width("", 1), 1);
    }
}
