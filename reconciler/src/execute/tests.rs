//! The engine end to end on [`LocalHost`]s: real scripts, stand-in commands under a scratch
//! root, a fake cluster.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use aion_model::inventory::{Host as InvHost, HostVars, Inventory, Mode, Role, SshSettings};

use super::batch::split_marked;
use super::*;
use crate::change::{ChangeKind, ClusterStep};
use crate::cluster::ClusterError;
use crate::cluster::bootstrap::ClusterOps;
use crate::host::local::LocalHost;
use crate::images;
use crate::plan::{ClusterCheck, Plan};
use crate::progress::{Log, Progress};
use crate::roles::{HostSpec, Resource};

const STANDINS: &[(&str, &str)] = &[
    (
        "hostname",
        r#"if [ $# -gt 0 ]; then echo "$1" > "$AION_ROOT/run-hostname"; else cat "$AION_ROOT/run-hostname" 2>/dev/null || echo localhost; fi"#,
    ),
    (
        "systemctl",
        r#"mkdir -p "$AION_ROOT/svc"; case $1 in
  is-enabled) cat "$AION_ROOT/svc/$2.enabled" 2>/dev/null || { echo disabled; exit 1; } ;;
  is-active) cat "$AION_ROOT/svc/$2.active" 2>/dev/null || { echo inactive; exit 3; } ;;
  enable) echo enabled > "$AION_ROOT/svc/$2.enabled" ;;
  start|restart) echo active > "$AION_ROOT/svc/$2.active" ;;
esac"#,
    ),
    (
        "dpkg-query",
        r#"for a in "$@"; do case $a in -*) ;; *) [ -f "$AION_ROOT/dpkg/$a" ] && printf 'P\t%s\t%s\n' "$a" "$(cat "$AION_ROOT/dpkg/$a")" ;; esac; done; exit 0"#,
    ),
    (
        "apt-get",
        r#"mkdir -p "$AION_ROOT/dpkg"; [ "$1" = install ] || exit 0; for a in "$@"; do case $a in -*|install) ;; *) n=${a%%=*}; v=${a#*=}; [ "$v" = "$a" ] && v=1.0; v=${v%\*}; printf '%s1.1\tii ' "$v" > "$AION_ROOT/dpkg/$n" ;; esac; done"#,
    ),
    (
        "apt-mark",
        r#"shift; for n in "$@"; do v=$(cut -f1 "$AION_ROOT/dpkg/$n"); printf '%s\thi ' "$v" > "$AION_ROOT/dpkg/$n"; done"#,
    ),
    (
        "getent",
        r#"case $1 in passwd) echo "$2:x:0:0::/home/$2:/bin/sh" ;; group) [ -f "$AION_ROOT/group-$2" ] ;; esac"#,
    ),
    (
        "groupadd",
        r#"for a in "$@"; do g=$a; done; touch "$AION_ROOT/group-$g""#,
    ),
    ("usermod", r#"echo "$2" >> "$AION_ROOT/groups-$3""#),
    (
        "id",
        r#"if [ "$1" = -nG ]; then echo "$2 $(cat "$AION_ROOT/groups-$2" 2>/dev/null | tr '\n' ' ')"; fi"#,
    ),
    (
        "kubeadm",
        r#"case $1 in
  init) mkdir -p "$AION_ROOT/etc/kubernetes"; echo "apiVersion: v1 # admin $*" > "$AION_ROOT/etc/kubernetes/admin.conf" ;;
  token) echo "kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:00112233445566778899aabbccddeeff" ;;
  join) echo "$*" > "$AION_ROOT/join-args"; mkdir -p "$AION_ROOT/etc/kubernetes"; touch "$AION_ROOT/etc/kubernetes/kubelet.conf" ;;
esac"#,
    ),
];

/// Roles exercising every resource type (the built-in ones need real package names).
const ROLES: &[(&str, &str)] = &[
    (
        "base",
        r#"name: base
hosts: all
resources:
  - hostname: {name: "{{ host }}"}
  - directory: {path: /var/lib/aion}
  - directory: {path: "/var/lib/aion/{{ namespace }}/config", mode: "0750"}
  - directory: {path: "~/{{ host }}", owner: "{{ user }}"}
  - package: {names: [kubelet, kubeadm], version: "{{ kubernetes_version }}", hold: true}
  - file: {path: /etc/docker/daemon.json, content: "{\"gpu\": {{ gpu | tojson }}}\n", notify: docker}
  - service: {name: docker}
  - user_in_group: {user: "{{ user }}", group: docker}
  - line_in_file: {path: "~/.profile", line: "export A=1", match_prefix: "export A="}
  - line_in_file: {path: "~/.profile", line: "export B=1"}
  - command: {name: marker, check: 'test -f "$R/marker"', run: 'touch "$R/marker"'}
"#,
    ),
    (
        "master",
        r#"name: master
hosts: master
resources:
  - command: {name: kubeadm init, check: 'test -f "$R/etc/kubernetes/admin.conf"', run: "kubeadm init --pod-network-cidr={{ pod_cidr | sh }}"}
  - copy: {src: /etc/kubernetes/admin.conf, path: "~/.kube/config", owner: "{{ user }}"}
  - fetch: {src: /etc/kubernetes/admin.conf, dest: "{{ kubeconfig }}"}
cluster:
  - apply_manifest: flannel.yaml
"#,
    ),
    (
        "worker",
        r#"name: worker
hosts: worker
resources:
  - kubeadm_join: {node_name: "{{ host }}"}
"#,
    ),
];

fn inv_host(name: &str, role: Role) -> InvHost {
    InvHost {
        name: name.into(),
        address: "127.0.0.1".into(),
        role,
        ssh: SshSettings {
            user: "root".into(),
            port: 22,
            key: None,
        },
        vars: HostVars {
            gpu: false,
            kubernetes_version: "1.37.2".into(),
            pod_cidr: "10.244.10.0/16".into(),
            extra_sans: vec![],
            registry_prefix: "latonaio".into(),
            namespace: "default".into(),
            ..Default::default()
        },
        services: None,
        data_sweeper: None,
        images_from: None,
        span: Default::default(),
    }
}

struct Bed {
    dir: tempfile::TempDir,
    inv: Inventory,
    hosts: crate::host::Connections<LocalHost>,
}

fn bed() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, body) in STANDINS {
        use std::os::unix::fs::PermissionsExt as _;
        let p = bin.join(name);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho \"{name} $*\" >> \"$AION_ROOT/calls.log\"\n{body}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let inv = Inventory {
        source: dir.path().join("inventory.yml"),
        name: "t".into(),
        mode: Mode::Cluster,
        known_hosts: None,
        kubeconfig: dir.path().join(".aion/kubeconfig"),
        revision_history: aion_model::inventory::DEFAULT_REVISION_HISTORY,
        previous_images: aion_model::inventory::DEFAULT_PREVIOUS_IMAGES,
        image_sources: Vec::new(),
        peers: Vec::new(),
        entry_port: aion_model::inventory::DEFAULT_ENTRY_PORT,
        entry_tls: None,
        hosts: vec![inv_host("m1", Role::Master), inv_host("w1", Role::Worker)],
        span: Default::default(),
    };
    let mut hosts = BTreeMap::new();
    for h in &inv.hosts {
        let root = dir.path().join(&h.name);
        std::fs::create_dir_all(&root).unwrap();
        let lh = LocalHost {
            name: h.name.clone(),
            root,
            bin: Some(bin.clone()),
        };
        hosts.insert(h.name.clone(), Ok(Arc::new(lh)));
    }
    Bed { dir, inv, hosts }
}

#[derive(Default)]
struct FakeCluster {
    applied: Mutex<Vec<String>>,
}

impl ClusterOps for FakeCluster {
    async fn check(&self, step: &ClusterStep) -> ClusterCheck {
        if self.applied.lock().unwrap().contains(&format!("{step:?}")) {
            ClusterCheck::Unchanged
        } else {
            ClusterCheck::Needed("missing".into())
        }
    }
    async fn run(&self, step: &ClusterStep) -> Result<String, ClusterError> {
        self.applied.lock().unwrap().push(format!("{step:?}"));
        Ok("applied".into())
    }
}

fn calls(dir: &Path, host: &str) -> String {
    std::fs::read_to_string(dir.join(host).join("calls.log")).unwrap_or_default()
}

async fn run_apply(
    b: &Bed,
    specs: &[HostSpec],
    cluster: &FakeCluster,
) -> (Plan, ApplyReport, String) {
    let progress = Progress::new(crate::progress::Render::Lines);
    run_apply_with(b, specs, cluster, &progress).await
}

/// [`run_apply`] showing its progress on `progress`.
async fn run_apply_with(
    b: &Bed,
    specs: &[HostSpec],
    cluster: &FakeCluster,
    progress: &Progress,
) -> (Plan, ApplyReport, String) {
    let plan = plan_all(
        specs,
        &b.hosts,
        cluster,
        4,
        &images::Wanted::new(),
        1,
        &Default::default(),
    )
    .await;
    let log = Log::create(&b.dir.path().join("logs")).unwrap();
    let cx = Context {
        hosts: &b.hosts,
        cluster,
        progress,
        log: &log,
        parallel: 4,
    };
    let mut report = apply_runtime(&plan, &cx).await;
    apply(&plan, &mut report, &cx).await;
    let log_text = std::fs::read_to_string(log.path()).unwrap();
    (plan, report, log_text)
}

/// `kubeadm init` fails on the master (a port in use).
fn fail_kubeadm(b: &Bed) {
    std::fs::write(
        b.dir.path().join("bin/kubeadm"),
        "#!/bin/sh\necho 'preflight: port 6443 in use' >&2\nexit 3\n",
    )
    .unwrap();
}

#[tokio::test]
async fn apply_converges_then_second_run_changes_nothing() {
    let b = bed();
    let specs = crate::roles::load_with(&b.inv, ROLES).unwrap();
    let cluster = FakeCluster::default();
    let (plan, report, log) = run_apply(&b, &specs, &cluster).await;
    assert!(report.ok(), "{report:?}\n{log}");
    let m = plan.host("m1").unwrap();
    assert!(
        m.changes
            .iter()
            .any(|c| c.id == "base/hostname:m1" && c.kind == ChangeKind::Change)
    );
    assert!(
        m.changes.iter().any(|c| c.id == "base/restart:docker"),
        "daemon.json notifies docker"
    );
    assert!(
        m.changes
            .last()
            .is_some_and(|c| c.id == "cluster/apply:flannel.yaml")
    );

    // Effects on the hosts.
    let root = b.dir.path().join("m1");
    assert_eq!(
        std::fs::read_to_string(root.join("run-hostname"))
            .unwrap()
            .trim(),
        "m1"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "m1\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("home/root/.profile")).unwrap(),
        "export A=1\nexport B=1\n"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(root.join("var/lib/aion/default/config"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o750);
    assert_eq!(
        std::fs::read_to_string(root.join("dpkg/kubelet")).unwrap(),
        "1.37.2-1.1\thi "
    );
    assert_eq!(
        std::fs::read_to_string(root.join("svc/docker.active"))
            .unwrap()
            .trim(),
        "active"
    );
    let kubeconfig = std::fs::metadata(&b.inv.kubeconfig).unwrap();
    assert_eq!(kubeconfig.permissions().mode() & 0o777, 0o600);
    assert!(root.join("home/root/.kube/config").exists());
    assert!(calls(b.dir.path(), "m1").contains("kubeadm init --pod-network-cidr=10.244.10.0/16"));
    let join = std::fs::read_to_string(b.dir.path().join("w1/join-args")).unwrap();
    assert!(join.contains("--node-name w1"), "{join}");
    assert!(
        !b.dir.path().join("w1/etc/kubernetes/admin.conf").exists(),
        "admin.conf never reaches a worker"
    );
    // The join token never reaches the log.
    assert!(
        !log.contains("0123456789abcdef") && !log.contains("00112233445566778899"),
        "{log}"
    );

    // Second run: nothing to do, and no command with side effects runs.
    let before: Vec<String> = ["m1", "w1"]
        .iter()
        .map(|h| calls(b.dir.path(), h))
        .collect();
    let (plan2, report2, _) = run_apply(&b, &specs, &cluster).await;
    assert!(
        !plan2.has_changes(),
        "{}",
        crate::plan_text::render_text(&plan2, crate::plan_text::Style { color: false })
    );
    assert_eq!(report2.changed, 0);
    for (i, h) in ["m1", "w1"].iter().enumerate() {
        let new_calls = calls(b.dir.path(), h)[before[i].len()..].to_string();
        for side_effect in [
            "apt-get",
            "apt-mark",
            "usermod",
            "groupadd",
            "kubeadm",
            "systemctl enable",
            "systemctl start",
            "systemctl restart",
            "hostname m",
            "hostname w",
        ] {
            let ran = new_calls.lines().any(|l| l.starts_with(side_effect));
            assert!(
                !ran,
                "{h} ran {side_effect} on a converged host:\n{new_calls}"
            );
        }
    }

    // One changed variable → exactly that change in the plan (plus the restart it notifies).
    let mut inv = b.inv.clone();
    inv.hosts[1].vars.gpu = true;
    let specs = crate::roles::load_with(&inv, ROLES).unwrap();
    let plan3 = plan_all(
        &specs,
        &b.hosts,
        &cluster,
        4,
        &images::Wanted::new(),
        1,
        &Default::default(),
    )
    .await;
    assert!(plan3.host("m1").unwrap().changes.is_empty());
    let ids: Vec<&str> = plan3
        .host("w1")
        .unwrap()
        .changes
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["base/file:/etc/docker/daemon.json", "base/restart:docker"]
    );
    let diff = plan3.host("w1").unwrap().changes[0].diff.clone().unwrap();
    assert!(
        diff.contains("-{\"gpu\": false}") && diff.contains("+{\"gpu\": true}"),
        "{diff}"
    );
}

#[tokio::test]
async fn failing_master_skips_its_workers_and_unreachable_host_is_reported() {
    let mut b = bed();
    fail_kubeadm(&b);
    let specs = crate::roles::load_with(&b.inv, ROLES).unwrap();
    let cluster = FakeCluster::default();
    let (_, report, log) = run_apply(&b, &specs, &cluster).await;
    assert!(!report.ok());
    match report.outcome("m1").unwrap() {
        HostOutcome::Failed { step, .. } => assert_eq!(step, "master/command:kubeadm init"),
        o => panic!("{o:?}"),
    }
    assert!(
        matches!(report.outcome("w1").unwrap(), HostOutcome::Skipped { reason } if reason.contains("m1"))
    );
    assert!(log.contains("preflight: port 6443 in use"));

    // An unreachable worker: the master still converges.
    let b2 = bed();
    b.hosts = b2.hosts.clone();
    let mut hosts = b2.hosts.clone();
    hosts.insert(
        "w1".into(),
        Err(Arc::new(crate::host::HostError::Connect {
            host: "w1".into(),
            destination: "root@10.0.0.3".into(),
            message: "timeout".into(),
        })),
    );
    let bb = Bed {
        dir: b2.dir,
        inv: b2.inv,
        hosts,
    };
    let (plan, report, _) = run_apply(&bb, &specs, &cluster).await;
    assert_eq!(plan.counts.failed_hosts, 1);
    assert!(report.outcome("m1").unwrap().ok());
    assert!(matches!(
        report.outcome("w1").unwrap(),
        HostOutcome::Unreachable { .. }
    ));
}

/// A `Write` into a buffer the test keeps.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `apply -o json`: every progress event is one JSON object on its own line (steps, the
/// failing step's last lines, each host's end), in the order they happened.
#[tokio::test]
async fn json_progress_is_one_object_per_event() {
    let b = bed();
    fail_kubeadm(&b);
    let specs = crate::roles::load_with(&b.inv, ROLES).unwrap();
    let out = Shared::default();
    let progress = Progress::to_writer(crate::progress::Render::JsonLines, Box::new(out.clone()));
    let (_, report, _) = run_apply_with(&b, &specs, &FakeCluster::default(), &progress).await;
    assert!(!report.ok());
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |kind: &'static str| events.iter().filter(move |e| e["event"] == kind);
    let m1_steps = of("step").filter(|e| e["host"] == "m1").count();
    assert!(m1_steps >= 1, "{text}");
    let first = of("step").next().unwrap();
    assert!(
        first["index"] == 1 && first["total"].as_u64() > Some(1) && first["t"].is_number(),
        "{first}"
    );
    let failure = of("failure").next().unwrap_or_else(|| panic!("{text}"));
    assert_eq!(failure["host"], "m1");
    assert_eq!(failure["step"], "master/command:kubeadm init");
    assert!(
        failure["tail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("port 6443 in use")),
        "{failure}"
    );
    let done: Vec<(String, bool)> = of("host-done")
        .map(|e| {
            (
                e["host"].as_str().unwrap().to_owned(),
                e["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(done, [("m1".to_string(), false), ("w1".to_string(), false)]);
    // the master's end comes after its steps, the skipped worker's after the master's
    let pos = |kind: &'static str, host: &'static str| {
        events
            .iter()
            .rposition(|e| e["event"] == kind && e["host"] == host)
            .unwrap()
    };
    assert!(pos("step", "m1") < pos("host-done", "m1"));
    assert!(pos("host-done", "m1") < pos("host-done", "w1"));
}

#[test]
fn marked_output_splits_per_step() {
    let out = "\n@@AION-STEP 0\nhello\n\n@@AION-STEP 0 end 0\n\n@@AION-STEP 1\nboom\n\n@@AION-STEP 1 end 3\n\n@@AION-STEP 2\npartial";
    let m = split_marked(out);
    assert_eq!(m[&0], ("hello\n".to_string(), Some(0)));
    assert_eq!(m[&1], ("boom\n".to_string(), Some(3)));
    assert_eq!(m[&2], ("partial".to_string(), None));
}

#[test]
fn duplicate_hostnames_fail_before_anything_runs() {
    let b = bed();
    let mut inv = b.inv.clone();
    inv.hosts.push(inv_host("M1", Role::Worker));
    let e = crate::roles::load_with(&inv, ROLES)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("m1") && e.contains("M1") && e.contains("unique"),
        "{e}"
    );
}

#[test]
fn every_namespace_gets_its_config_and_data_directories() {
    // Upstream's layout: /var/lib/aion/<namespace>/{config,Data} for the namespaces it
    // ships (default, prj) and for any other the inventory names.
    let b = bed();
    for ns in ["default", "prj", "line-3"] {
        let mut inv = b.inv.clone();
        inv.hosts[0].vars.namespace = ns.into();
        let specs = crate::roles::load(&inv).unwrap();
        let ids: Vec<&str> = specs[0].items.iter().map(|i| i.id.as_str()).collect();
        for d in ["config", "Data"] {
            let want = format!("directories/directory:/var/lib/aion/{ns}/{d}");
            assert!(ids.contains(&want.as_str()), "{want} missing: {ids:?}");
        }
    }
}

#[tokio::test]
async fn a_microservice_placed_on_another_host_finds_its_namespace_config_there() {
    // w1's `pong` runs on m1 (targetNode) in namespace w1 and mounts
    // /var/lib/aion/w1/config from m1: m1 must hold w1's services.yml (seen on running
    // pods: the kanban client found no services.yml there and never started).
    let b = bed();
    let mut inv = b.inv.clone();
    inv.hosts[1].vars.namespace = "w1".into();
    let m1_file = b.dir.path().join("m1-services.yml");
    let w1_file = b.dir.path().join("w1-services.yml");
    let m1_text = "microservices:\n  local:\n    always: yes\n";
    let w1_text = "microservices:\n  pong:\n    always: yes\n    targetNode: m1\n  stray:\n    targetNode: elsewhere\n";
    std::fs::write(&m1_file, m1_text).unwrap();
    std::fs::write(&w1_file, w1_text).unwrap();
    inv.hosts[0].services = Some(m1_file);
    inv.hosts[1].services = Some(w1_file.clone());

    let guests = crate::roles::guest_configs(&inv).unwrap();
    assert_eq!(
        guests.keys().collect::<Vec<_>>(),
        ["m1"],
        "only m1 hosts a guest; a target outside the inventory gets nothing"
    );
    assert_eq!(guests["m1"][0].owner, "w1");

    let roles: Vec<(&str, &str)> = crate::roles::BUILTIN
        .iter()
        .filter(|(n, _)| matches!(*n, "directories" | "services"))
        .copied()
        .collect();
    let specs = crate::roles::load_with(&inv, &roles).unwrap();
    let cluster = FakeCluster::default();
    let (_, report, log) = run_apply(&b, &specs, &cluster).await;
    assert!(report.ok(), "{report:?}\n{log}");
    let m1 = b.dir.path().join("m1/var/lib/aion");
    assert_eq!(
        std::fs::read_to_string(m1.join("w1/config/services.yml")).unwrap(),
        w1_text
    );
    assert!(m1.join("w1/Data").is_dir());
    assert_eq!(
        std::fs::read_to_string(m1.join("default/config/services.yml")).unwrap(),
        m1_text,
        "the host's own namespace keeps its own file"
    );
    let w1 = b.dir.path().join("w1/var/lib/aion");
    assert_eq!(
        std::fs::read_to_string(w1.join("w1/config/services.yml")).unwrap(),
        w1_text
    );
    assert!(
        !w1.join("default/config/services.yml").exists(),
        "m1 places nothing on w1"
    );

    let (plan, report, log) = run_apply(&b, &specs, &cluster).await;
    assert!(report.ok(), "{report:?}\n{log}");
    assert!(!plan.has_changes(), "a second apply converges: {plan:?}");
}

#[test]
fn builtin_roles_render_for_single_and_cluster_mode() {
    let b = bed();
    let mut inv = b.inv.clone();
    inv.hosts[0].vars.extra_sans = vec!["edge.example".into(), "10.1.2.3".into()];
    inv.hosts[1].vars.gpu = true;
    inv.hosts[1].vars.namespace = "w1".into();
    let specs = crate::roles::load(&inv).unwrap();
    let ids: Vec<&str> = specs[0].items.iter().map(|i| i.id.as_str()).collect();
    assert!(
        ids.contains(&"master/command:kubeadm init")
            && ids.contains(&"docker/file:/etc/docker/daemon.json"),
        "{ids:?}"
    );
    let init = specs[0]
        .items
        .iter()
        .find(|i| i.id == "master/command:kubeadm init")
        .unwrap();
    let Resource::Command { run, .. } = &init.resource else {
        panic!()
    };
    assert!(
        run.contains("--pod-network-cidr='10.244.10.0/16'")
            && run.contains("--apiserver-cert-extra-sans='edge.example,10.1.2.3'"),
        "{run}"
    );
    assert!(
        specs[0]
            .cluster
            .iter()
            .any(|s| matches!(s, ClusterStep::Untaint { .. })),
        "cluster mode untaints the master too: the broker and the master's core are pinned there"
    );
    let w: Vec<&str> = specs[1].items.iter().map(|i| i.id.as_str()).collect();
    assert!(
        w.contains(&"worker/kubeadm_join:w1")
            && w.contains(&"directories/directory:/var/lib/aion/w1/Data"),
        "{w:?}"
    );
    assert!(
        !w.iter().any(|i| i.contains("admin.conf")),
        "workers never get admin.conf"
    );
    let daemon = specs[1]
        .items
        .iter()
        .find(|i| i.id == "docker/file:/etc/docker/daemon.json")
        .unwrap();
    let Resource::File {
        content: Some(c), ..
    } = &daemon.resource
    else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(c).unwrap();
    assert_eq!(v["default-runtime"], "nvidia");
    assert_eq!(v["features"]["buildkit"], true);
    inv.mode = Mode::Single;
    let specs = crate::roles::load(&inv).unwrap();
    assert!(
        specs[0]
            .cluster
            .iter()
            .any(|s| matches!(s, ClusterStep::Untaint { node } if node == "m1"))
    );
    let flannel = crate::roles::render_template(&inv, "flannel.yaml").unwrap();
    let kinds: Vec<&str> = flannel.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    assert!(
        flannel[4]["data"]["net-conf.json"]
            .as_str()
            .unwrap()
            .contains("10.244.10.0/16")
    );
}

/// `imagesFrom`, a relay that fails in `apply` (a blob it should keep is gone from this
/// machine's source): it is `Failed` at images with its own reason; its fetcher is `Failed` naming it and is never asked to fetch; the relay's
/// cleanup still runs, and creates no `authorized_keys` where there was none.
#[tokio::test]
async fn a_failed_relay_fails_its_fetchers_naming_it() {
    let b = bed();
    let hp = |name: &str, role: Role| crate::plan::HostPlan {
        host: name.into(),
        address: "10.0.0.9".into(),
        role,
        user: "root".into(),
        changes: vec![],
        unchanged: 0,
        error: None,
        warnings: vec![],
        images: vec![],
        image_removals: vec![],
        images_from: None,
        relay: None,
    };
    let change = images::ImageChange {
        reference: "aion.local/a:1".into(),
        digest: "sha256:m".into(),
        replaces: None,
        bytes: 4,
        blobs: 1,
        blobs_total: 1,
        bytes_total: 4,
        media_type: String::new(),
        platform: None,
        from: Some("m1".into()),
        send: vec![images::Blob {
            digest: "sha256:00".into(),
            size: 4,
            path: Default::default(),
            offset: 0,
            remote: None,
        }],
        source: Default::default(),
        manifest_size: 0,
    };
    let plan = Plan::new(vec![
        crate::plan::HostPlan {
            // The blob it should keep is gone from this machine's source.
            relay: Some(images::Relay {
                for_hosts: vec!["w1".into()],
                for_addresses: vec!["10.0.0.9".into()],
                blobs: 1,
                bytes: 4,
                send: vec![images::Blob {
                    digest: "sha256:00".into(),
                    size: 4,
                    path: b.dir.path().join("gone"),
                    offset: 0,
                    remote: None,
                }],
            }),
            ..hp("m1", Role::Master)
        },
        crate::plan::HostPlan {
            images: vec![change],
            images_from: Some(images::RelaySource {
                host: "m1".into(),
                address: "10.0.0.8".into(),
                port: 22,
                user: "root".into(),
                known_hosts: None,
            }),
            ..hp("w1", Role::Worker)
        },
    ]);
    let mut report = ApplyReport {
        hosts: vec![
            ("m1".into(), HostOutcome::Converged { changed: 0 }),
            ("w1".into(), HostOutcome::Converged { changed: 0 }),
        ],
        changed: 0,
        images: vec![],
        image_removals: vec![],
    };
    let log = Log::create(&b.dir.path().join("logs")).unwrap();
    let progress = Progress::new(crate::progress::Render::Lines);
    let cluster = FakeCluster::default();
    let cx = Context {
        hosts: &b.hosts,
        cluster: &cluster,
        progress: &progress,
        log: &log,
        parallel: 4,
    };
    apply_images(&plan, &mut report, &cx).await;
    let failed = |h: &str| match report.outcome(h) {
        Some(HostOutcome::Failed { step, error }) => format!("{step}: {error}"),
        o => panic!("{h}: {o:?}"),
    };
    assert!(
        failed("m1").starts_with("images: ") && failed("m1").contains("gone"),
        "{}",
        failed("m1")
    );
    assert_eq!(
        failed("w1"),
        "images: its relay m1 did not get the images it fetches"
    );
    assert!(report.images.is_empty());
    let log_text = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        log_text.contains("images relay: key and kept blobs removed"),
        "{log_text}"
    );
    assert!(
        !b.dir
            .path()
            .join("m1/home/root/.ssh/authorized_keys")
            .exists()
    );
    assert!(!b.dir.path().join("m1/root/.ssh/authorized_keys").exists());
}

/// A device without a registry has the node's images before its kubelet starts: each host's
/// images are imported after its runtime's changes (the roles before
/// [`crate::roles::AFTER_IMAGES`]) and before `kubeadm init` / `kubeadm join`.
#[tokio::test]
async fn images_are_imported_after_the_runtime_and_before_kubeadm() {
    use sha2::Digest as _;
    let b = bed();
    // containerd's `ctr`: every call logged; an import keeps its archive, `images ls` names
    // what it holds.
    let ctr = b.dir.path().join("bin/ctr");
    std::fs::write(
        &ctr,
        "#!/bin/sh\necho \"ctr $*\" >> \"$AION_ROOT/calls.log\"\ncase \"$*\" in\n\
         *'images import -'*) cat > \"$AION_ROOT/imported.tar\";;\n\
         *'images ls'*) echo 'REF TYPE DIGEST'; [ -f \"$AION_ROOT/imported.tar\" ] || exit 0; i=$(tar -xOf \"$AION_ROOT/imported.tar\" index.json);\n\
           n=$(echo \"$i\" | sed 's/.*\"io.containerd.image.name\":\"\\([^\"]*\\)\".*/\\1/'); d=$(echo \"$i\" | sed 's/.*\"digest\":\"\\([^\"]*\\)\".*/\\1/'); echo \"$n x $d\";;\n\
         esac\n",
    )
    .unwrap();
    let mut perm = std::fs::metadata(&ctr).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&ctr, perm).unwrap();
    let layer = b"the pause image's layer";
    let blob_path = b.dir.path().join("layer");
    std::fs::write(&blob_path, layer).unwrap();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(layer)));
    let pause = images::ImageChange {
        reference: "aion.local/k8s/pause:3.10.2".into(),
        digest: digest.clone(),
        replaces: None,
        bytes: layer.len() as u64,
        blobs: 1,
        blobs_total: 1,
        bytes_total: layer.len() as u64,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        platform: None,
        from: None,
        send: vec![images::Blob {
            digest,
            size: layer.len() as u64,
            path: blob_path,
            offset: 0,
            remote: None,
        }],
        source: Default::default(),
        manifest_size: layer.len() as u64,
    };
    let specs = crate::roles::load_with(&b.inv, ROLES).unwrap();
    let cluster = FakeCluster::default();
    let mut plan = plan_all(
        &specs,
        &b.hosts,
        &cluster,
        4,
        &images::Wanted::new(),
        1,
        &Default::default(),
    )
    .await;
    for hp in &mut plan.hosts {
        hp.images = vec![pause.clone()];
    }
    let log = Log::create(&b.dir.path().join("logs")).unwrap();
    let progress = Progress::new(crate::progress::Render::Lines);
    let cx = Context {
        hosts: &b.hosts,
        cluster: &cluster,
        progress: &progress,
        log: &log,
        parallel: 4,
    };
    let mut report = apply_runtime(&plan, &cx).await;
    apply_images(&plan, &mut report, &cx).await;
    apply(&plan, &mut report, &cx).await;
    let log_text = std::fs::read_to_string(log.path()).unwrap();
    assert!(report.ok(), "{report:?}\n{log_text}");
    assert_eq!(report.images.len(), 2, "{report:?}");
    for (host, kubeadm) in [("m1", "kubeadm init"), ("w1", "kubeadm join")] {
        let calls = calls(b.dir.path(), host);
        let at = |what: &str| {
            calls
                .lines()
                .position(|l| l.starts_with(what))
                .unwrap_or_else(|| panic!("{host}: no `{what}` in\n{calls}"))
        };
        assert!(
            at("hostname") < at("ctr -n k8s.io images import")
                && at("ctr -n k8s.io images import") < at(kubeadm),
            "{host}: the runtime, then the images, then {kubeadm}:\n{calls}"
        );
    }
    // Every change counted once, the images too.
    let changes: usize = plan.hosts.iter().map(|h| h.changes.len() + 1).sum();
    assert_eq!(report.changed, changes, "{report:?}");
}

/// An image built for a platform the host is not (its facts' `uname -m`) stops that host at
/// plan, naming the image and both platforms; nothing of it is planned to be sent.
#[tokio::test]
async fn an_image_for_another_platform_is_a_host_error_at_plan() {
    let b = bed();
    let specs = crate::roles::load_with(&b.inv, ROLES).unwrap();
    let cluster = FakeCluster::default();
    let foreign = images::SourceImage {
        reference: "aion.local/elsewhere:1".into(),
        digest: "sha256:aa".into(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        blobs: Vec::new(),
        platform: Some(images::Platform {
            os: "linux".into(),
            architecture: "no-such-arch".into(),
            variant: None,
        }),
        variants: Vec::new(),
        source: Default::default(),
    };
    let wanted: images::Wanted = [("w1".to_string(), vec![foreign])].into();
    let plan = plan_all(
        &specs,
        &b.hosts,
        &cluster,
        4,
        &wanted,
        1,
        &Default::default(),
    )
    .await;
    let w1 = plan.hosts.iter().find(|h| h.host == "w1").unwrap();
    let e = w1.error.as_deref().unwrap_or_default();
    assert!(
        e.starts_with(
            "image aion.local/elsewhere:1 is built for linux/no-such-arch only; the host is linux/"
        ),
        "{e}"
    );
    assert!(w1.images.is_empty());
    let m1 = plan.hosts.iter().find(|h| h.host == "m1").unwrap();
    assert_eq!(m1.error, None, "the other host plans as usual");
}
