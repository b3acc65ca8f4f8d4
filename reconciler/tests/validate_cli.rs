//! `aion-reconcile validate`: exit codes, human and JSON output, -i, --strict.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures")
        .join(rel)
}

fn validate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aion-reconcile"))
        .arg("validate")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(out: &Output) -> Vec<serde_json::Value> {
    serde_json::from_slice(&out.stdout).expect("stdout is a JSON list")
}

#[test]
fn every_upstream_example_is_valid() {
    for name in [
        "aion-core-sample.yml",
        "aion-core-test-normal_config.yml",
        "aion-service-definitions-face-recognition.yml",
        "aion-service-definitions-deployment-617c098.yml",
        "aion-service-definitions-deployment-2cc0861.yml",
        "container-deployment-system.yml",
    ] {
        let f = fixture(&format!("services/{name}"));
        let out = validate(&[s(&f)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn fragment_is_invalid_with_rustc_like_output() {
    let f = fixture("services/data-sweeper-kube-fragment.yml");
    let out = validate(&[s(&f)]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("error[misplaced-microservice]"), "{text}");
    assert!(
        text.contains("data-sweeper-kube-fragment.yml:10:15"),
        "{text}"
    );
    assert!(text.contains("10 |         port: xxxx"), "{text}");
    assert!(text.contains("   |               ^^^^"), "{text}");
    assert!(text.contains("= hint: "), "{text}");
    assert!(!text.contains('\x1b'), "no colour under NO_COLOR / pipes");
}

#[test]
fn json_output_is_a_stable_list() {
    let f = fixture("services/aion-service-definitions-deployment-617c098.yml");
    let out = validate(&["-o", "json", s(&f)]);
    assert_eq!(out.status.code(), Some(0));
    let list = json(&out);
    assert_eq!(list.len(), 1);
    let d = &list[0];
    let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "file", "line", "column", "pointer", "severity", "code", "message", "hint"
        ]
    );
    assert_eq!(d["code"], "duplicate-key");
    assert_eq!(d["severity"], "warning");
    assert_eq!(d["line"], 54);
    assert_eq!(d["column"], 3);
    assert_eq!(d["pointer"], "/microservices/kube-etcd-sentinel");
}

#[test]
fn strict_turns_warnings_into_errors() {
    let f = fixture("services/aion-service-definitions-deployment-617c098.yml");
    let out = validate(&["--strict", "-o", "json", s(&f)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)[0]["severity"], "error");
}

#[test]
fn missing_file_is_exit_2() {
    let out = validate(&["/nonexistent/services.yml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/services.yml"));
    // the verdict counts the unreadable file (it used to say "0 errors")
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("invalid: 0 files checked, 1 unreadable, 0 errors, 0 warnings"),
        "{stdout}"
    );
}

#[test]
fn no_arguments_is_exit_2() {
    let out = validate(&[]);
    assert_eq!(out.status.code(), Some(2));
    let out = validate(&["--bogus-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn syntax_error_is_invalid_not_io() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("services.yml");
    std::fs::write(&f, "microservices:\n  a: [1, 2\n").unwrap();
    let out = validate(&["-o", "json", s(&f)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)[0]["code"], "yaml-syntax");
}

#[test]
fn inventory_names_the_files_and_target_nodes_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.yml"),
        "services: services.yml\nhosts:\n  - {name: edge-master, address: 10.0.0.2, role: master}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("services.yml"),
        "microservices:\n  a:\n    targetNode: edge-mastr\n  b:\n    targetNode: edge-master\n",
    )
    .unwrap();
    let inv = dir.path().join("inventory.yml");
    let out = validate(&["-i", s(&inv), "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let list = json(&out);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["code"], "target-node-unknown");
    assert_eq!(list[0]["line"], 3);
    assert_eq!(list[0]["hint"], "did you mean `edge-master`?");
    // Without -i the targetNode cannot be checked: valid.
    let out = validate(&[s(&dir.path().join("services.yml"))]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn several_files_and_cross_file_node_ports() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.yml");
    std::fs::write(
        &inv,
        "hosts:\n  - {name: m, address: 10.0.0.2, role: master, services: a.yml}\n  - {name: w, address: 10.0.0.3, role: worker, services: b.yml}\n",
    )
    .unwrap();
    let svc = "microservices:\n  x:\n    network: NodePort\n    ports:\n      - {name: http, port: 80, nodePort: 30080}\n";
    std::fs::write(dir.path().join("a.yml"), svc).unwrap();
    std::fs::write(dir.path().join("b.yml"), svc.replace("x:", "y:")).unwrap();
    let out = validate(&["-i", s(&inv), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let list = json(&out);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["code"], "nodeport-duplicate");
    assert!(list[0]["file"].as_str().unwrap().ends_with("b.yml"));
    let text = String::from_utf8(validate(&["-i", s(&inv)]).stdout).unwrap();
    assert!(
        text.contains("invalid: 3 files checked, 1 error, 0 warnings"),
        "{text}"
    );
}
