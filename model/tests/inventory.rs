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

/// Where the node `pointer` names was written (`key`: the key of that member instead of its
/// value), found by walking the parsed tree independently of the loader.
fn pointed_at(text: &str, pointer: &str, key: bool) -> Option<(usize, usize)> {
    let doc = aion_model::yaml::parse_document(text, Path::new("inventory.yml")).ok()?;
    let root = doc.root?;
    let node = if key {
        let (parent, last) = pointer.rsplit_once('/')?;
        let last = last.replace("~1", "/").replace("~0", "~");
        let pairs = root.pointer(parent)?.as_map()?;
        &pairs
            .iter()
            .rev()
            .find(|p| p.key.text() == Some(&last))?
            .key
    } else {
        root.pointer(pointer)?
    };
    Some((node.pos.line as usize, node.pos.column as usize))
}

/// `text` reports `code` at exactly `pointer` and `line:column`, which is where the node that
/// pointer names was written (its key for `key`: Ansible hosts are named by their keys, and
/// unknown keys are reported at the key).
fn at(text: &str, code: &str, pointer: &str, (line, column): (usize, usize), key: bool) {
    let l = inventory::load_str(text, Path::new("inventory.yml")).expect("loads");
    let d = l
        .diagnostics
        .iter()
        .find(|d| d.code == code && d.pointer == pointer)
        .unwrap_or_else(|| panic!("no {code} at {pointer}: {:#?}", l.diagnostics));
    assert_eq!((d.span.line, d.span.column), (line, column), "{d}");
    assert_eq!(
        pointed_at(text, pointer, key),
        Some((line, column)),
        "{d}: {pointer} names a node written elsewhere"
    );
}

/// Every host rule points at the value it is about, also when that value was written in the
/// inventory-wide `vars:` or an Ansible group (before, they all pointed at the host's entry,
/// whatever their pointer named).
#[test]
fn diagnostics_point_at_the_value_their_pointer_names() {
    let native = "\
mode: single
knownHosts: /nonexistent/known_hosts
vars:
  podCidr: 10.0.0.0/99
hosts:
  - name: Bad_Name
    address: 10.0.0.2
    role: master
  - name: w1
    address: 10.0.0.2
    role: worker
    vars: {kubernetesVersion: \"1.2\", namespace: Bad_NS, extraSans: [bad_san]}
    services: /nonexistent/services.yml
";
    at(native, "single-with-workers", "/mode", (1, 7), false);
    at(native, "file-missing", "/knownHosts", (2, 13), false);
    at(native, "invalid-cidr", "/vars/podCidr", (4, 12), false);
    at(native, "invalid-host-name", "/hosts/0/name", (6, 11), false);
    at(
        native,
        "address-duplicate",
        "/hosts/1/address",
        (10, 14),
        false,
    );
    at(
        native,
        "invalid-version",
        "/hosts/1/vars/kubernetesVersion",
        (12, 31),
        false,
    );
    at(
        native,
        "invalid-namespace",
        "/hosts/1/vars/namespace",
        (12, 49),
        false,
    );
    at(
        native,
        "invalid-san",
        "/hosts/1/vars/extraSans",
        (12, 68),
        false,
    );
    at(native, "file-missing", "/hosts/1/services", (13, 15), false);

    let masters = "hosts:\n  - {name: a, address: 10.0.0.1, role: master}\n  - {name: a, address: 10.0.0.2, role: master}\n";
    at(masters, "multiple-masters", "/hosts/1/role", (3, 40), false);
    at(masters, "host-duplicate", "/hosts/1/name", (3, 12), false);

    let ansible = "\
all:
  vars:
    aion_mode: single
    aion_pod_cidr: nocidr
  children:
    masters:
      hosts:
        Edge_M: {ansible_host: 10.0.0.1}
    workers:
      hosts:
        w1: {ansible_host: 10.0.0.1, aion_namespace: Bad_NS}
";
    at(
        ansible,
        "single-with-workers",
        "/all/vars/aion_mode",
        (3, 16),
        false,
    );
    at(
        ansible,
        "invalid-cidr",
        "/all/vars/aion_pod_cidr",
        (4, 20),
        false,
    );
    at(
        ansible,
        "invalid-host-name",
        "/all/children/masters/hosts/Edge_M",
        (8, 9),
        true,
    );
    at(
        ansible,
        "address-duplicate",
        "/all/children/workers/hosts/w1/ansible_host",
        (11, 28),
        false,
    );
    at(
        ansible,
        "invalid-namespace",
        "/all/children/workers/hosts/w1/aion_namespace",
        (11, 54),
        false,
    );
}

/// `imageSources` (native) and `aion_image_sources` (Ansible `all.vars`): paths relative to the
/// inventory, kept in order; a path that does not exist is an error at its entry.
#[test]
fn image_sources_native_and_ansible() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("layout")).unwrap();
    std::fs::write(dir.path().join("app.tar"), b"").unwrap();
    let native = "\
imageSources:
  - layout
  - app.tar
  - missing.tar
hosts:
  - {name: m, address: 10.0.0.2, role: master}
";
    let file = dir.path().join("inventory.yml");
    let l = inventory::load_str(native, &file).expect("loads");
    let paths: Vec<PathBuf> = l
        .value
        .image_sources
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(
        paths,
        vec![
            dir.path().join("layout"),
            dir.path().join("app.tar"),
            dir.path().join("missing.tar")
        ]
    );
    let errs: Vec<&Diagnostic> = l.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let d = errs[0];
    assert_eq!(d.code, "image-source-missing");
    assert_eq!(d.pointer, "/imageSources/2");
    assert_eq!((d.span.line, d.span.column), (4, 5), "{d}");
    let text = d.to_string();
    assert!(
        text.contains("inventory.yml:4:5") && text.contains("missing.tar"),
        "{text}"
    );
    at(
        "imageSources: [/nonexistent/a.tar]\nhosts:\n  - {name: m, address: 10.0.0.2, role: master}\n",
        "image-source-missing",
        "/imageSources/0",
        (1, 16),
        false,
    );

    // A registry: kept as written (no trailing slash), never resolved as a path; a URL with a
    // path or credentials is an error at its entry.
    let l = inventory::load_str(
        "imageSources: [layout, 'http://10.0.0.5:5000/']\nhosts:\n  - {name: m, address: 10.0.0.2, role: master}\n",
        &file,
    )
    .expect("loads");
    assert!(
        l.diagnostics.iter().all(|d| !d.is_error()),
        "{:#?}",
        l.diagnostics
    );
    assert_eq!(l.value.image_sources[0].registry, None);
    assert_eq!(
        l.value.image_sources[1].registry.as_deref(),
        Some("http://10.0.0.5:5000")
    );
    at(
        "imageSources: ['https://u:p@reg.example/v2']\nhosts:\n  - {name: m, address: 10.0.0.2, role: master}\n",
        "image-source-registry",
        "/imageSources/0",
        (1, 16),
        false,
    );

    let ansible = "\
all:
  vars:
    aion_image_sources: [layout]
  children:
    masters:
      hosts:
        m: {ansible_host: 10.0.0.2}
";
    let l = inventory::load_str(ansible, &file).expect("loads");
    assert!(
        l.diagnostics.iter().all(|d| !d.is_error()),
        "{:#?}",
        l.diagnostics
    );
    assert_eq!(l.value.image_sources.len(), 1);
    assert_eq!(l.value.image_sources[0].path, dir.path().join("layout"));
    assert_eq!(
        l.value.image_sources[0].pointer,
        "/all/vars/aion_image_sources/0"
    );
    // not a list: a type error naming the key
    let (_, d) = load_text(
        "imageSources: app.tar\nhosts:\n  - {name: m, address: 10.0.0.2, role: master}\n",
    );
    assert!(
        d.iter()
            .any(|d| d.is_error() && d.pointer == "/imageSources"),
        "{d:#?}"
    );
}

/// `previousImages` (native) and `aion_previous_images` (Ansible `all.vars`): how many
/// previous image versions a host keeps; default 1, 0 allowed, out of range is an error at it.
#[test]
fn previous_images_native_ansible_default_and_range() {
    let file = Path::new("inventory.yml");
    let host = "hosts:\n  - {name: m, address: 10.0.0.2, role: master}\n";
    let l = inventory::load_str(host, file).expect("loads");
    assert_eq!(l.value.previous_images, 1);
    let l = inventory::load_str(&format!("previousImages: 0\n{host}"), file).expect("loads");
    assert!(
        l.diagnostics.iter().all(|d| !d.is_error()),
        "{:#?}",
        l.diagnostics
    );
    assert_eq!(l.value.previous_images, 0);
    at(
        &format!("previousImages: 101\n{host}"),
        "invalid-value",
        "/previousImages",
        (1, 17),
        false,
    );
    at(
        &format!("previousImages: -1\n{host}"),
        "invalid-value",
        "/previousImages",
        (1, 17),
        false,
    );
    let ansible = "\
all:
  vars:
    aion_previous_images: 3
  children:
    masters:
      hosts:
        m: {ansible_host: 10.0.0.2}
";
    let l = inventory::load_str(ansible, file).expect("loads");
    assert!(
        l.diagnostics.iter().all(|d| !d.is_error()),
        "{:#?}",
        l.diagnostics
    );
    assert_eq!(l.value.previous_images, 3);
}

/// `peers` and `entryPort` (#18): read in both formats; every rule points at the value it is
/// about.
#[test]
fn peers_and_entry_port_native_ansible_and_rules() {
    let file = Path::new("inventory.yml");
    let host = "hosts:\n  - {name: m, address: 10.0.0.2, role: master}\n  - {name: w, address: 10.0.0.3, role: worker}\n";
    let l = inventory::load_str(host, file).expect("loads");
    assert!(l.value.peers.is_empty());
    assert_eq!(l.value.entry_port, inventory::DEFAULT_ENTRY_PORT);
    let text = format!(
        "peers:\n  - device: line-b.cam\n    to: [w]\n  - {{device: hq}}\nentryPort: 31000\n{host}"
    );
    let l = inventory::load_str(&text, file).expect("loads");
    assert!(
        l.diagnostics.iter().all(|d| !d.is_error()),
        "{:#?}",
        l.diagnostics
    );
    let peers: Vec<(&str, Vec<String>)> = l
        .value
        .peers
        .iter()
        .map(|p| (p.device.as_str(), p.to.clone()))
        .collect();
    assert_eq!(
        peers,
        [("line-b.cam", vec!["w".to_string()]), ("hq", vec![])]
    );
    assert!(l.value.peers[0].may_reach("w") && !l.value.peers[0].may_reach("m"));
    assert!(l.value.peers[1].may_reach("m"));
    assert_eq!(l.value.entry_port, 31000);
    at(
        &format!("peers:\n  - device: cam\n    to: [w, nope]\n{host}"),
        "unknown-host",
        "/peers/0/to/1",
        (3, 13),
        false,
    );
    at(
        &format!("peers:\n  - device: Bad_Cam\n{host}"),
        "invalid-value",
        "/peers/0/device",
        (2, 13),
        false,
    );
    at(
        &format!("peers:\n  - device: cam\n  - device: cam\n{host}"),
        "duplicate-peer",
        "/peers/1/device",
        (3, 13),
        false,
    );
    at(
        &format!("peers:\n  - device: w\n{host}"),
        "peer-is-a-host",
        "/peers/0",
        (2, 5),
        false,
    );
    at(
        &format!("entryPort: 5672\n{host}"),
        "invalid-value",
        "/entryPort",
        (1, 12),
        false,
    );
    let ansible = "\
all:
  vars:
    aion_entry_port: 30100
    aion_peers:
      - device: hq
  children:
    masters:
      hosts:
        m: {ansible_host: 10.0.0.2}
";
    let l = inventory::load_str(ansible, file).expect("loads");
    assert!(
        l.diagnostics.iter().all(|d| !d.is_error()),
        "{:#?}",
        l.diagnostics
    );
    assert_eq!(l.value.entry_port, 30100);
    assert_eq!(l.value.peers[0].device, "hq");
}

/// `entryTls`: three files, each missing one reported at its own value; all three keys needed.
#[test]
fn entry_tls_files_and_keys() {
    let host = "hosts:\n  - {name: m, address: 10.0.0.2, role: master}\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
    std::fs::write(dir.path().join("e.pem"), "x").unwrap();
    let d = dir.path().display();
    let text = format!(
        "peers: [{{device: hq}}]\nentryTls:\n  ca: {d}/ca.pem\n  cert: {d}/e.pem\n  key: {d}/e.key\n{host}"
    );
    at(&text, "file-missing", "/entryTls/key", (5, 8), false);
    let l = inventory::load_str(&text, Path::new("inventory.yml")).unwrap();
    let tls = l.value.entry_tls.unwrap();
    assert_eq!(tls.ca, dir.path().join("ca.pem"));
    assert_eq!(tls.key, dir.path().join("e.key"));
    at(
        &format!("entryTls: {{ca: a, cert: b}}\n{host}"),
        "missing-key",
        "/entryTls",
        (1, 11),
        false,
    );
    // Ansible: the same map in `all.vars`, relative paths against the inventory's directory.
    let ansible = "\
all:
  vars:
    aion_peers: [{device: hq}]
    aion_entry_tls: {ca: tls/ca.pem, cert: tls/e.pem, key: tls/e.key}
  children:
    masters:
      hosts:
        m: {ansible_host: 10.0.0.2}
";
    let l = inventory::load_str(ansible, &dir.path().join("hosts.yml")).unwrap();
    let tls = l.value.entry_tls.expect("aion_entry_tls read");
    assert_eq!(tls.cert, dir.path().join("tls/e.pem"));
    assert_eq!(tls.pointer, "/all/vars/aion_entry_tls");
    let missing: Vec<&str> = l
        .diagnostics
        .iter()
        .filter(|d| d.code == "file-missing")
        .map(|d| d.pointer.as_str())
        .collect();
    assert_eq!(
        missing,
        [
            "/all/vars/aion_entry_tls/ca",
            "/all/vars/aion_entry_tls/cert",
            "/all/vars/aion_entry_tls/key"
        ]
    );
}

/// `imagesFrom`: written at the top level it applies to every other host (not the relay
/// itself); a host's own value wins; unknown hosts, a host naming itself and relays that fetch
/// from a relay are refused at the value.
#[test]
fn images_from_top_level_per_host_and_rules() {
    let file = Path::new("inventory.yml");
    let hosts = "hosts:\n  - {name: m, address: 10.0.0.2, role: master}\n  - {name: w1, address: 10.0.0.3, role: worker}\n  - {name: w2, address: 10.0.0.4, role: worker, imagesFrom: w1}\n";
    let l = inventory::load_str(&format!("imagesFrom: w1\n{hosts}"), file).expect("loads");
    assert!(!l.has_errors(), "{:#?}", l.diagnostics);
    let from: Vec<Option<&str>> = l
        .value
        .hosts
        .iter()
        .map(|h| h.images_from.as_deref())
        .collect();
    assert_eq!(from, [Some("w1"), None, Some("w1")]);
    // w2 fetches from w1, which fetches from m (the top level): a chain.
    at(
        &format!("imagesFrom: m\n{hosts}"),
        "images-from-chain",
        "/hosts/2/imagesFrom",
        (5, 61),
        false,
    );
    at(
        &format!("imagesFrom: nope\n{hosts}"),
        "unknown-host",
        "/imagesFrom",
        (1, 13),
        false,
    );
    at(
        "hosts:\n  - {name: m, address: 10.0.0.2, role: master}\n  - name: w\n    address: 10.0.0.3\n    imagesFrom: w\n",
        "images-from-itself",
        "/hosts/1/imagesFrom",
        (5, 17),
        false,
    );
    // Ansible: `aion_images_from` in `all.vars` for every host, or a host's own.
    let ansible = "\
all:
  vars:
    aion_images_from: m
  children:
    masters:
      hosts:
        m: {ansible_host: 10.0.0.2}
    workers:
      hosts:
        w1: {ansible_host: 10.0.0.3}
        w2: {ansible_host: 10.0.0.4, aion_images_from: w1}
";
    let l = inventory::load_str(ansible, file).expect("loads");
    let from: Vec<(&str, Option<&str>)> = l
        .value
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), h.images_from.as_deref()))
        .collect();
    assert!(from.contains(&("m", None)) && from.contains(&("w1", Some("m"))));
    assert!(codes(&l.diagnostics).contains(&"images-from-chain"));
}
