//! Terminal conventions shared by every command: colour only on a terminal and never under
//! `NO_COLOR`, logs through `tracing` filtered by `RUST_LOG`, errors printed once.

use std::io::IsTerminal;

/// `-o` of every command that prints either text for people or JSON for programs (`plan`,
/// `apply`, `diff`, `status`, `history`, `rollback`). `validate` and `graph` have their own
/// ([`crate::commands::validate::DiagnosticFormat`], [`crate::commands::graph::GraphFormat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// What a piece of terminal text means; the one place that decides its colour (owo-colors),
/// for plans, diffs and diagnostics alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Created, `+`, a valid result: green.
    Added,
    /// Deleted, `-`: red.
    Removed,
    /// Changed, `~`, a warning: yellow.
    Changed,
    /// An error, a conflict, an invalid result: bold red.
    Error,
    /// A warning's label: bold yellow.
    Warning,
    /// Valid / OK: bold green.
    Good,
    /// Host names, messages, diff file headers: bold.
    Strong,
    /// Summaries and objects already going away: dimmed.
    Faint,
    /// Diff hunk headers: cyan.
    Hunk,
    /// The frame of a diagnostic (`-->`, `|`, line numbers): bold blue.
    Frame,
}

/// `text` in `tone` when `color`, else unchanged.
pub fn paint(text: &str, tone: Tone, color: bool) -> String {
    use owo_colors::OwoColorize;
    if !color {
        return text.to_owned();
    }
    match tone {
        Tone::Added => text.green().to_string(),
        Tone::Removed => text.red().to_string(),
        Tone::Changed => text.yellow().to_string(),
        Tone::Error => text.red().bold().to_string(),
        Tone::Warning => text.yellow().bold().to_string(),
        Tone::Good => text.green().bold().to_string(),
        Tone::Strong => text.bold().to_string(),
        Tone::Faint => text.dimmed().to_string(),
        Tone::Hunk => text.cyan().to_string(),
        Tone::Frame => text.blue().bold().to_string(),
    }
}

/// Whether to colour output written to stdout.
pub fn use_color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// Logs go to stderr; `RUST_LOG` selects (default: warnings only).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal())
        .try_init();
}

/// Print an error with its whole cause chain, each cause once.
pub fn print_error(err: &anyhow::Error) {
    eprintln!("error: {}", chain(&**err));
}

/// An error and its causes joined by `: `, each said once. Many errors already show their
/// cause in their own text (`cannot read X: <io error>`) and also return it as `source()`;
/// printing the chain naively says `No such file or directory` twice. A cause whose text the
/// line already contains is skipped (not only at its end: kube's `ApiError: {0} ({0:?})` puts
/// its Status in the middle).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paint_colours_only_when_asked() {
        assert_eq!(paint("+ a", Tone::Added, false), "+ a");
        let green = paint("+ a", Tone::Added, true);
        assert!(
            green.starts_with("\u{1b}[32m") && green.contains("+ a"),
            "{green:?}"
        );
        assert_ne!(
            paint("x", Tone::Error, true),
            paint("x", Tone::Removed, true)
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct ReadError {
        path: String,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        // What `plan -i missing.yml` printed: the io error twice.
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let io_text = io.to_string();
        let err = anyhow::Error::new(ReadError {
            path: "missing.yml".into(),
            source: io,
        });
        assert_eq!(
            format!("{err:#}"),
            format!("cannot read missing.yml: {io_text}: {io_text}")
        );
        assert_eq!(chain(&*err), format!("cannot read missing.yml: {io_text}"));
        // A context that does not repeat its cause keeps it.
        let err = err.context("loading the inventory");
        assert_eq!(
            chain(&*err),
            format!("loading the inventory: cannot read missing.yml: {io_text}")
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("denied: {reason}")]
    struct Status {
        reason: String,
    }

    /// The shape of kube's `Error::Api`: the cause's text in the middle of the message.
    #[derive(Debug, thiserror::Error)]
    #[error("ApiError: {source} (code 403)")]
    struct ApiError {
        #[source]
        source: Status,
    }

    #[test]
    fn a_cause_said_in_the_middle_is_not_said_again() {
        let err = anyhow::Error::new(ApiError {
            source: Status {
                reason: "secrets is forbidden".into(),
            },
        })
        .context("reading the history");
        assert_eq!(
            chain(&*err),
            "reading the history: ApiError: denied: secrets is forbidden (code 403)"
        );
    }
}
