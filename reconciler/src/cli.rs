//! Command line: raw flags → validated config → run → one mapping of errors to exit codes.

pub fn main() -> std::process::ExitCode {
    eprintln!("aion-reconcile: no commands yet");
    std::process::ExitCode::from(2)
}
