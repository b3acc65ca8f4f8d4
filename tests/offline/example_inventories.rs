//! The example inventories in `inventories/` (single, cluster, Ansible-style) are what the README
//! points new users at: they must load, name the hosts and files we expect, and every
//! services.yml they reference must validate without errors against its inventory. The only
//! findings allowed are warnings that the SSH key files do not exist on this machine.

use std::path::{Path, PathBuf};

use aion_model::{Mode, Role, Severity, inventory, services, validate};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Load an inventory and all the services files it names; return it with every finding that
/// is not the expected "key file missing" warning.
fn load_all(rel: &str) -> (aion_model::Inventory, Vec<String>) {
    let path = repo().join(rel);
    let loaded = inventory::load(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let mut findings: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| !(d.code == "file-missing" && d.message.contains("ssh key")))
        .map(|d| d.to_string())
        .collect();
    let inv = loaded.value;
    let mut files: Vec<PathBuf> = inv
        .hosts
        .iter()
        .filter_map(|h| h.services.clone())
        .collect();
    files.sort();
    files.dedup();
    assert!(!files.is_empty(), "{rel}: names no services.yml");
    for f in &files {
        let s = services::load(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for d in validate::loaded_services(&s, Some(&inv)) {
            findings.push(d.to_string());
        }
    }
    (inv, findings)
}

#[test]
fn single_mode_example_loads_and_validates() {
    let (inv, findings) = load_all("inventories/single/inventory.yml");
    assert_eq!(findings, Vec::<String>::new());
    assert_eq!(inv.mode, Mode::Single);
    assert_eq!(inv.name, "lab-single");
    assert_eq!(inv.hosts.len(), 1);
    let h = &inv.hosts[0];
    assert_eq!((h.name.as_str(), h.role), ("jetson-01", Role::Master));
    assert!(h.vars.gpu, "gpu: true must reach the host vars");
    assert_eq!(h.vars.pod_cidr, "10.244.10.0/16", "the default pod CIDR");
}

#[test]
fn cluster_mode_example_loads_and_validates() {
    let (inv, findings) = load_all("inventories/cluster/inventory.yml");
    assert_eq!(findings, Vec::<String>::new());
    assert_eq!(inv.mode, Mode::Cluster);
    assert_eq!(inv.masters().count(), 1);
    assert_eq!(inv.workers().count(), 2);
    let w2 = inv.host("edge-worker-2").expect("edge-worker-2");
    assert_eq!(
        w2.ssh.user, "pi",
        "a host's ssh settings override the defaults"
    );
    assert!(
        w2.services
            .as_ref()
            .unwrap()
            .ends_with("services-worker-2.yml")
    );
    assert!(
        w2.data_sweeper
            .as_ref()
            .unwrap()
            .ends_with("data-sweeper.yml")
    );
    let w1 = inv.host("edge-worker-1").unwrap();
    assert!(w1.vars.gpu);
    assert!(!inv.host("edge-master").unwrap().vars.gpu);
    assert!(
        inv.host("edge-master")
            .unwrap()
            .vars
            .extra_sans
            .contains(&"edge-master.factory.example".to_string())
    );
}

#[test]
fn ansible_style_example_loads_and_validates() {
    let (inv, findings) = load_all("inventories/ansible/hosts.yml");
    assert_eq!(findings, Vec::<String>::new());
    assert_eq!(inv.name, "ansible-lab");
    let m = inv.host("edge-master").expect("edge-master");
    assert_eq!((m.role, m.address.as_str()), (Role::Master, "192.0.2.30"));
    let w = inv.host("edge-worker-1").expect("edge-worker-1");
    assert_eq!((w.role, w.ssh.user.as_str()), (Role::Worker, "aion"));
    assert!(w.vars.gpu);
}

#[test]
fn a_broken_copy_of_an_example_is_reported_with_its_line() {
    // The examples are only worth something if validation would catch a mistake in them.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("inventories/single/inventory.yml"))
        .unwrap()
        .replace("role: master", "role: leader");
    let path = dir.path().join("inventory.yml");
    std::fs::write(&path, text).unwrap();
    let errors: Vec<_> = match inventory::load(&path) {
        Ok(l) => l
            .diagnostics
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
        Err(e) => panic!("a bad role must be a diagnostic, not a load failure: {e}"),
    };
    assert!(
        errors
            .iter()
            .any(|d| d.span.line == 14 && d.to_string().contains("leader")),
        "expected an error at line 14 naming `leader`, got {errors:#?}"
    );
}
