//! Golden tests for `render` on the real upstream services.yml examples
//! (`/work/shared/aion-examples/services/`, copied into `reconciler/tests/golden/inputs/`),
//! in single mode on one master, and of the cluster-mode example inventory
//! (`inventories/cluster/`: one broker, a virtual host per namespace, `--device-amqp` per other
//! device, the data sweeper on the host naming one) into `reconciler/tests/golden/cluster/`.
//! Regenerate with `UPDATE_GOLDEN=1`.

use std::path::{Path, PathBuf};

use aion_reconcile::render;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../reconciler/tests/golden")
}

fn inventory() -> aion_model::Inventory {
    let text = "name: golden\nmode: single\nhosts:\n  - name: edge-master\n    address: 10.0.0.2\n    role: master\n";
    let loaded =
        aion_model::inventory::load_str(text, Path::new("/etc/aion/inventory.yml")).unwrap();
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    loaded.value
}

fn check(example: &str) {
    let input = golden_dir().join("inputs").join(format!("{example}.yml"));
    let loaded =
        aion_model::services::load(&input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{}: {errors:?}", input.display());
    let inv = inventory();
    let m = render::render(&inv, &[("edge-master".to_owned(), loaded.value)])
        .unwrap_or_else(|e| panic!("{example}: {e}"));
    let files = m.files();
    // Deterministic: a second render gives the same bytes.
    let again = render::render(
        &inv,
        &[(
            "edge-master".to_owned(),
            aion_model::services::load(&input).unwrap().value,
        )],
    )
    .unwrap()
    .files();
    assert_eq!(files, again, "{example}: render is not deterministic");
    assert_eq!(files.len(), 1);
    let expected_path = golden_dir().join(format!("{example}.yaml"));
    compare(example, &expected_path, &files[0].1);
}

/// The cluster-mode example inventory, one golden file per node.
#[test]
fn cluster_mode_example_inventory() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventories/cluster/inventory.yml");
    let inv = aion_model::inventory::load(&path).unwrap().value;
    let services: Vec<(String, aion_model::ServicesFile)> = inv
        .hosts
        .iter()
        .filter_map(|h| {
            let f = h.services.as_ref()?;
            Some((h.name.clone(), aion_model::services::load(f).unwrap().value))
        })
        .collect();
    let m = render::render(&inv, &services).unwrap();
    assert_eq!(m.files(), render::render(&inv, &services).unwrap().files());
    let files = m.files();
    assert_eq!(files.len(), 3);
    for (name, content) in &files {
        compare(name, &golden_dir().join("cluster").join(name), content);
    }
}

/// Compare `actual` with the golden file `path` (or write it under `UPDATE_GOLDEN`).
fn compare(what: &str, path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let diff = similar_lines(&expected, actual);
        panic!(
            "{what}: rendered manifests differ from {} (UPDATE_GOLDEN=1 to accept):\n{diff}",
            path.display()
        );
    }
}

fn similar_lines(a: &str, b: &str) -> String {
    a.lines()
        .zip(b.lines())
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .take(10)
        .map(|(i, (x, y))| format!("line {}: -{x}\n         +{y}\n", i + 1))
        .collect()
}

#[test]
fn aion_core_sample() {
    check("aion-core-sample");
}

/// Upstream's own test file mounts `/dev` with `Bidirectional` propagation in a container that is
/// not privileged; Kubernetes rejects that, so render refuses it with the file position.
#[test]
fn aion_core_test_normal_config_is_rejected() {
    let input = golden_dir().join("inputs/aion-core-test-normal_config.yml");
    let loaded = aion_model::services::load(&input).unwrap();
    let err = render::render(&inventory(), &[("edge-master".to_owned(), loaded.value)])
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with(
            "aion-core-test-normal_config.yml:18:9: microservice test (test-001): /dev: \
             Bidirectional mount propagation needs `privileged: yes` (Kubernetes rejects it otherwise)"
        ),
        "{err}"
    );
}

/// The same file with `privileged: yes` added renders.
#[test]
fn aion_core_test_normal_config_privileged() {
    let input = golden_dir().join("inputs/aion-core-test-normal_config.yml");
    let text = std::fs::read_to_string(&input).unwrap();
    let fixed = text.replacen("  test:\n", "  test:\n    privileged: yes\n", 1);
    assert_ne!(fixed, text);
    let loaded = aion_model::services::load_str(&fixed, &input).unwrap();
    let m = render::render(&inventory(), &[("edge-master".to_owned(), loaded.value)]).unwrap();
    assert!(m.objects().any(|o| o.key.name == "test-001"));
}

#[test]
fn service_definitions_deployment_2cc0861() {
    check("aion-service-definitions-deployment-2cc0861");
}

#[test]
fn service_definitions_deployment_617c098() {
    check("aion-service-definitions-deployment-617c098");
}

#[test]
fn service_definitions_face_recognition() {
    check("aion-service-definitions-face-recognition");
}

#[test]
fn container_deployment_system() {
    check("container-deployment-system");
}

/// The rendered golden files are valid for the real API server too: checked in
/// `cluster_apply`'s server-side dry-run; here, every document parses and has our labels.
#[test]
fn golden_files_parse_and_carry_ownership_labels() {
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<&str> = text.split("\n---\n").skip(1).collect();
        assert!(!docs.is_empty(), "{}", path.display());
        for d in docs {
            assert!(
                d.contains("\"app.kubernetes.io/managed-by\": \"aion-reconcile\""),
                "{}: {d}",
                path.display()
            );
            assert!(
                d.contains("\"aion.latona.io/inventory\": \"golden\""),
                "{}: {d}",
                path.display()
            );
        }
    }
}
