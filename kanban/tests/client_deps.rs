//! The client library stays light: a microservice that depends on `aion-kanban` with
//! `default-features = false` (as `examples/` does) compiles none of the runtime's dependencies.
//! Reads the resolved graph with `cargo tree` (offline, nothing is built).

use std::process::Command;

/// Crates only the runtime needs (the Kubernetes client, SQLite, the CLI parser, the HTTP server,
/// the reconciler and through it SSH and templates).
const RUNTIME_ONLY: [&str; 9] = [
    "kube",
    "k8s-openapi",
    "rusqlite",
    "libsqlite3-sys",
    "clap",
    "hyper",
    "aion-reconcile",
    "openssh",
    "minijinja",
];

#[test]
fn the_example_services_compile_no_runtime_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "aion-examples",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().any(|l| l.starts_with("aion-kanban ")),
        "aion-kanban is not in the example's tree:\n{text}"
    );
    let heavy: Vec<&str> = text
        .lines()
        .filter(|l| {
            let name = l.split(' ').next().unwrap_or("");
            RUNTIME_ONLY.contains(&name)
        })
        .collect();
    assert!(
        heavy.is_empty(),
        "the client library pulls runtime dependencies: {heavy:?}"
    );
}
