//! Inventory loading: native and Ansible-style, defaults, relative paths, rules.

use std::path::{Path, PathBuf};

use aion_model::inventory::{self, DEFAULT_POD_CIDR};
use aion_model::{Diagnostic, Mode, Role};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inventory")
        .join(name)
}

fn load_text(text: &str) -> (inventory::Inventory, Vec<Diagnostic>) {
    let l = inventory::load_str(text, Path::new("/srv/inv/inventory.yml")).expect("loads");
    for d in &l.diagnostics {
        eprintln!("{d}");
    }
    (l.value, l.diagnostics)
}

fn codes(d: &[Diagnostic]) -> Vec<&'static str> {
    d.iter().filter(|x| x.is_error()).map(|x| x.code).collect()
}

#[test]
fn native_inventory() {
    let path = fixture("native.yml");
    let l = inventory::load(&path).unwrap();
    let dir = path.parent().unwrap();
    assert!(!l.has_errors(), "{:?}", l.diagnostics);
    let inv = l.value;
    assert_eq!(inv.name, "lab");
    assert_eq!(inv.mode, Mode::Cluster);
    assert_eq!(
        inv.known_hosts.as_deref(),
        Some(dir.join("known_hosts").as_path())
    );
    assert_eq!(inv.kubeconfig, dir.join(".aion/kubeconfig"));
    let m = inv.host("edge-master").unwrap();
    assert_eq!(m.role, Role::Master);
    assert_eq!(m.ssh.port, 22);
    assert_eq!(m.ssh.key.as_deref(), Some(dir.join("id_ed25519").as_path()));
    assert_eq!(
        m.services.as_deref(),
        Some(dir.join("services.yml").as_path())
    );
    assert_eq!(m.vars.namespace, "default");
    assert!(!m.vars.gpu);
    let w = inv.host("edge-worker-1").unwrap();
    assert_eq!(w.role, Role::Worker);
    assert_eq!(w.ssh.port, 2222);
    assert_eq!(w.ssh.user, "aion");
    assert!(w.vars.gpu);
    assert_eq!(w.vars.pod_cidr, DEFAULT_POD_CIDR);
    assert_eq!(w.vars.extra_sans, ["edge.example.com"]);
    assert_eq!(w.vars.namespace, "edge-worker-1");
    assert_eq!(
        w.services.as_deref(),
        Some(dir.join("worker1-services.yml").as_path())
    );
}

#[test]
fn ansible_inventory() {
    let path = fixture("ansible.yml");
    let l = inventory::load(&path).unwrap();
    let dir = path.parent().unwrap();
    assert!(!l.has_errors(), "{:?}", l.diagnostics);
    let inv = l.value;
    assert_eq!(inv.name, "plant");
    assert_eq!(inv.mode, Mode::Cluster);
    assert_eq!(inv.hosts.len(), 3);
    let m = inv.host("edge-master").unwrap();
    assert_eq!((m.role, m.address.as_str()), (Role::Master, "192.168.1.10"));
    assert_eq!(
        m.ssh.key.as_deref(),
        Some(dir.join("keys/id_ed25519").as_path())
    );
    assert!(!m.vars.gpu);
    let w1 = inv.host("edge-worker-1").unwrap();
    assert_eq!((w1.role, w1.ssh.port), (Role::Worker, 2222));
    assert!(w1.vars.gpu);
    assert_eq!(w1.services.as_deref(), Some(dir.join("w1.yml").as_path()));
    let w2 = inv.host("edge-worker-2").unwrap();
    assert_eq!(w2.address, "edge-worker-2");
}

#[test]
fn ini_inventory_is_a_clear_error() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/aion-ansible-unification-inventory"),
    )
    .unwrap();
    let e = inventory::load_str(&text, Path::new("inventory")).unwrap_err();
    let d = e.diagnostic().unwrap();
    assert_eq!(d.code, "inventory-shape");
    assert!(d.hint.unwrap().contains("ansible-inventory"));
}

#[test]
fn duplicate_hostnames_are_errors() {
    let (_, d) = load_text(
        "hosts:\n  - {name: a, address: 10.0.0.1, role: master}\n  - {name: a, address: 10.0.0.2, role: worker}\n",
    );
    assert_eq!(codes(&d), ["host-duplicate"]);
    assert_eq!(
        d.iter()
            .find(|x| x.code == "host-duplicate")
            .unwrap()
            .span
            .line,
        3
    );
}

#[test]
fn master_count_and_mode() {
    let (_, d) = load_text("hosts:\n  - {name: a, address: 10.0.0.1, role: worker}\n");
    assert_eq!(codes(&d), ["no-master"]);
    let (_, d) = load_text(
        "hosts:\n  - {name: a, address: 10.0.0.1, role: master}\n  - {name: b, address: 10.0.0.2, role: master}\n",
    );
    assert_eq!(codes(&d), ["multiple-masters"]);
    let (_, d) = load_text(
        "mode: single\nhosts:\n  - {name: a, address: 10.0.0.1, role: master}\n  - {name: b, address: 10.0.0.2, role: worker}\n",
    );
    assert_eq!(codes(&d), ["single-with-workers"]);
    let (inv, d) = load_text("hosts:\n  - {name: a, address: 10.0.0.1, role: master}\n");
    assert!(codes(&d).is_empty());
    assert_eq!(inv.mode, Mode::Single);
}

#[test]
fn bad_values() {
    let (_, d) = load_text(
        "vars: {podCidr: 10.244.0.0, kubernetesVersion: '1.37'}\nhosts:\n  - {name: Edge_1, address: 10.0.0.1, role: boss}\n",
    );
    let c = codes(&d);
    for want in [
        "invalid-cidr",
        "invalid-version",
        "invalid-host-name",
        "invalid-value",
    ] {
        assert!(c.contains(&want), "{want} not in {c:?}");
    }
}

#[test]
fn missing_keys_and_unknown_keys() {
    let (_, d) = load_text("hosts:\n  - {name: a, adress: 10.0.0.1, role: master}\n");
    assert!(codes(&d).contains(&"missing-key"));
    let w = d.iter().find(|x| x.code == "unknown-key").unwrap();
    assert_eq!(w.hint.as_deref(), Some("did you mean `address`?"));
}

#[test]
fn node_and_image_variables_inherit_key_by_key() {
    let (inv, d) = load_text(
        "name: lab\nvars:\n  cgroupDriver: cgroupfs\n  imageRepository: mirror.local/k8s\n  \
         images: {rabbitmq: mirror.local/rabbitmq:3, flannel: mirror.local/flannel:v1}\n\
         hosts:\n  - {name: m, address: 10.0.0.1, role: master}\n  \
         - {name: w, address: 10.0.0.2, role: worker, vars: {images: {flannel: other/flannel:v2}, flannelIface: eth1}}\n",
    );
    assert!(codes(&d).is_empty(), "{d:?}");
    let m = &inv.host("m").unwrap().vars;
    assert_eq!(m.cgroup_driver, inventory::CgroupDriver::Cgroupfs);
    assert_eq!(m.image_repository, "mirror.local/k8s");
    assert_eq!(m.images.rabbitmq, "mirror.local/rabbitmq:3");
    assert_eq!(m.images.flannel, "mirror.local/flannel:v1");
    assert_eq!(
        m.images.redis, "redis:7.2-alpine",
        "unset keys keep the default"
    );
    assert_eq!(m.flannel_iface, None);
    let w = &inv.host("w").unwrap().vars;
    assert_eq!(
        w.images.flannel, "other/flannel:v2",
        "the host's key overrides"
    );
    assert_eq!(
        w.images.rabbitmq, "mirror.local/rabbitmq:3",
        "inherited key by key"
    );
    assert_eq!(w.flannel_iface.as_deref(), Some("eth1"));
    // Defaults when nothing is said.
    let (plain, _) = load_text("hosts:\n  - {name: m, address: 10.0.0.1, role: master}\n");
    let v = &plain.host("m").unwrap().vars;
    assert_eq!(v.cgroup_driver, inventory::CgroupDriver::Systemd);
    assert_eq!(v.image_repository, "registry.k8s.io");
    // A driver that does not exist is an error naming the field.
    let (_, d) = load_text(
        "vars: {cgroupDriver: openrc}\nhosts:\n  - {name: m, address: 10.0.0.1, role: master}\n",
    );
    assert!(
        d.iter()
            .any(|x| x.is_error() && x.to_string().contains("cgroupDriver")),
        "{d:?}"
    );
}
