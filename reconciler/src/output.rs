//! Terminal conventions shared by every command: colour only on a terminal and never under
//! `NO_COLOR`, logs through `tracing` filtered by `RUST_LOG`, errors printed once.

use std::io::IsTerminal;

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

/// Print an error with its whole cause chain.
pub fn print_error(err: &anyhow::Error) {
    eprintln!("error: {err:#}");
}
