//! Every real services.yml from upstream loads and validates; the fragment fails clearly.

use std::path::{Path, PathBuf};

use aion_model::{Diagnostic, Severity, services, validate};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/services")
        .join(name)
}

/// Loader + semantic diagnostics of one file.
fn diagnostics(name: &str) -> (services::ServicesFile, Vec<Diagnostic>) {
    let loaded = services::load(&fixture(name)).expect("loads");
    let d = validate::loaded_services(&loaded, None);
    for x in &d {
        eprintln!("{x}");
    }
    (loaded.value, d)
}

fn errors(d: &[Diagnostic]) -> Vec<&Diagnostic> {
    d.iter().filter(|x| x.severity == Severity::Error).collect()
}

#[test]
fn aion_core_sample() {
    let (f, d) = diagnostics("aion-core-sample.yml");
    assert!(errors(&d).is_empty());
    assert_eq!(f.microservices.len(), 2);
    let job = f.microservice("sample-microservice-job").unwrap();
    assert!(job.startup && !job.always && job.privileged);
    assert_eq!(job.tag, "v1.0.0");
    assert_eq!(
        job.command.as_deref().unwrap(),
        ["/bin/sh", "docker-entrypoint.sh"]
    );
    assert_eq!(job.volume_mount_path_list[0].container_path, "/media");
    assert!(job.volume_mount_path_list[0].bidirectional);
    assert_eq!(
        job.next_services("anything")[0].name,
        "sample-microservice-deployment"
    );
    assert_eq!(job.next_services("default")[0].pattern, "n");
    assert!(job.env.contains(&("SLEEP_TIME".into(), "1".into())));
    let dep = f.microservice("sample-microservice-deployment").unwrap();
    assert_eq!(dep.service_account, "controller-serviceaccount");
    assert_eq!(dep.tag, "latest");
    assert_eq!(dep.network, "ClusterIP");
}

#[test]
fn aion_core_normal_config() {
    let (f, d) = diagnostics("aion-core-test-normal_config.yml");
    assert!(errors(&d).is_empty());
    // `docker: yes` is unknown: a warning
    assert!(
        d.iter()
            .any(|x| x.code == "unknown-key" && x.pointer == "/microservices/test/docker")
    );
    let t = f.microservice("test").unwrap();
    assert_eq!(t.scale, 2);
    assert_eq!(t.interval, 1000);
    assert!(t.multiple);
    let targets = t.next_services("default");
    assert_eq!(
        (targets[0].pattern.as_str(), targets[0].device.as_str()),
        ("0", "other")
    );
    assert_eq!(f.device("other").unwrap().ssh_port, 22);
    let other2 = f.device("other2").unwrap();
    assert_eq!(
        (other2.username.as_str(), other2.aion_home.as_str()),
        ("aion", "/var/lib/aion")
    );
    // test3 does not exist locally and names no device
    assert!(d.iter().any(|x| x.code == "next-service-unknown"));
}

#[test]
fn face_recognition() {
    let (f, d) = diagnostics("aion-service-definitions-face-recognition.yml");
    assert!(errors(&d).is_empty());
    let ui = f.microservice("ui-backend-for-xxxxxxx").unwrap();
    assert!(ui.env.contains(&("MYSQL_PORT".into(), "3306".into())));
    assert!(ui.is_node_port());
    assert_eq!(ui.ports[0].node_port, 30088);
}

#[test]
fn deployment_617c098_duplicate_key_warns_last_wins() {
    let (f, d) = diagnostics("aion-service-definitions-deployment-617c098.yml");
    assert!(errors(&d).is_empty());
    let dup: Vec<_> = d.iter().filter(|x| x.code == "duplicate-key").collect();
    assert_eq!(dup.len(), 1, "{dup:?}");
    assert_eq!(dup[0].pointer, "/microservices/kube-etcd-sentinel");
    assert_eq!(dup[0].span.line, 54);
    assert_eq!(
        f.microservices
            .iter()
            .filter(|m| m.name == "kube-etcd-sentinel")
            .count(),
        1
    );
    assert_eq!(f.microservices.len(), 5);
}

#[test]
fn deployment_2cc0861() {
    let (f, d) = diagnostics("aion-service-definitions-deployment-2cc0861.yml");
    assert!(errors(&d).is_empty());
    assert_eq!(f.devices.len(), 2);
}

#[test]
fn container_deployment_system() {
    let (f, d) = diagnostics("container-deployment-system.yml");
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(f.microservices.len(), 8);
}

#[test]
fn data_sweeper_fragment_fails_clearly() {
    let (_, d) = diagnostics("data-sweeper-kube-fragment.yml");
    let e = errors(&d);
    assert!(
        e.iter()
            .any(|x| x.code == "misplaced-microservice" && x.span.line == 2),
        "{e:?}"
    );
    let port_errors: Vec<_> = e
        .iter()
        .filter(|x| x.code == "type" && x.pointer.contains("/ports/0/"))
        .collect();
    assert_eq!(port_errors.len(), 2, "{port_errors:?}");
    assert_eq!(
        (port_errors[0].span.line, port_errors[0].span.column),
        (10, 15)
    );
}
