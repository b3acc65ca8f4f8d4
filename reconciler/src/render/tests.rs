//! Rendering's unit tests and golden files.

use std::path::Path;

use super::*;
use serde_json::json;

fn inventory(text: &str) -> Inventory {
    let loaded =
        aion_model::inventory::load_str(text, Path::new("/srv/aion/inventory.yml")).unwrap();
    let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    loaded.value
}

fn single(ns: &str) -> Inventory {
    inventory(&format!(
        "name: lab\nmode: single\nhosts:\n  - name: edge-master\n    address: 10.0.0.2\n    role: master\n    vars: {{namespace: {ns}}}\n"
    ))
}

fn cluster() -> Inventory {
    inventory(
        "name: lab\nmode: cluster\nhosts:\n  - name: edge-master\n    address: 10.0.0.2\n    role: master\n  - name: edge-worker-1\n    address: 10.0.0.3\n    role: worker\n",
    )
}

fn services(text: &str) -> ServicesFile {
    let loaded = aion_model::services::load_str(text, Path::new("/srv/aion/services.yml")).unwrap();
    loaded.value
}

const SAMPLE: &str = r#"
microservices:
  sample-job:
    command: ["/bin/sh", "run.sh"]
    tag: v1.0.0
    always: no
    env:
      ANSWER: yes
      MYSQL_PORT: 3306
      DEBUG: overridden
  web:
    always: yes
    scale: 2
    network: NodePort
    privileged: yes
    targetNode: edge-master
    serviceAccount: controller-serviceaccount
    volumeMountPathList:
      - /media:/media:Bidirectional
      - /var/run/docker.sock:/var/run/docker.sock
    ports:
      - name: http
        protocol: TCP
        port: 8080
    resources:
      requests: {cpu: 100m}
      limits: {memory: 128Mi}
"#;

fn find<'a>(m: &'a Manifests, kind: &str, name: &str) -> &'a Object {
    m.objects()
        .find(|o| o.key.kind == kind && o.key.name == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}

/// `startup: no` instances are rendered idle (the runtime starts them on demand); `startup:
/// yes` ones running. Before, every instance was rendered running.
#[test]
fn only_startup_instances_are_rendered_running() {
    let inv = single("default");
    let text = r#"
microservices:
  eager-svc: {always: yes, startup: yes}
  lazy-svc: {always: yes, startup: no}
  eager-job: {always: no, startup: yes}
  lazy-job: {always: no}
"#;
    let m = render(&inv, &[("edge-master".to_owned(), services(text))]).unwrap();
    let eager = &find(&m, "Deployment", "eager-svc-001").value;
    assert_eq!(eager["spec"]["replicas"], 1);
    assert!(eager["metadata"].get("annotations").is_none());
    let lazy = &find(&m, "Deployment", "lazy-svc-001").value;
    assert_eq!(lazy["spec"]["replicas"], 0);
    assert_eq!(
        lazy["metadata"]["annotations"]["aion.latona.io/start"],
        "on-demand"
    );
    let eager = &find(&m, "Job", "eager-job-001").value;
    assert!(eager["spec"].get("suspend").is_none());
    let lazy = &find(&m, "Job", "lazy-job-001").value;
    assert_eq!(lazy["spec"]["suspend"], true);
}

/// A `serviceAccount` named in services.yml is created (once per namespace, no bindings);
/// with ServiceAccount admission on, pods naming a missing one are rejected.
#[test]
fn named_service_accounts_are_created_once() {
    let inv = single("default");
    let text = r#"
microservices:
  a: {serviceAccount: controller-serviceaccount, scale: 2}
  b: {serviceAccount: controller-serviceaccount}
  c: {serviceAccount: aion-kanban}
  d: {}
"#;
    let m = render(&inv, &[("edge-master".to_owned(), services(text))]).unwrap();
    let accounts: Vec<_> = m
        .objects()
        .filter(|o| o.key.kind == "ServiceAccount")
        .map(|o| o.key.name.as_str())
        .collect();
    // The core's own account once, the named one once, `default` never.
    assert_eq!(accounts, ["aion-kanban", "controller-serviceaccount"]);
    let sa = &find(&m, "ServiceAccount", "controller-serviceaccount").value;
    assert_eq!(sa["metadata"]["namespace"], "default");
    assert_eq!(
        sa["metadata"]["labels"][LABEL_INVENTORY], "lab",
        "owned by the inventory (pruned with it)"
    );
    assert!(m.objects().all(|o| o.key.kind != "RoleBinding"
        || o.value["subjects"][0]["name"] != "controller-serviceaccount"));
}

/// `gpu: true` hosts get the nvidia runtime (containerd role) and a RuntimeClass for it; a
/// microservice asks with `runtimeClassName: nvidia`, only where the runtime exists.
#[test]
fn nvidia_runtime_class_for_gpu_hosts() {
    let text =
        "microservices:\n  detector: {runtimeClassName: nvidia, targetNode: edge-worker-1}\n";
    let gpu = inventory(
        "name: lab\nmode: cluster\nhosts:\n  - name: edge-master\n    address: 10.0.0.2\n    role: master\n  - name: edge-worker-1\n    address: 10.0.0.3\n    role: worker\n    vars: {gpu: true}\n",
    );
    let m = render(&gpu, &[("edge-worker-1".to_owned(), services(text))]).unwrap();
    let rc = &find(&m, "RuntimeClass", "nvidia").value;
    assert_eq!(rc["handler"], "nvidia");
    assert!(rc["metadata"].get("namespace").is_none(), "cluster-scoped");
    let d = &find(&m, "Job", "detector-001").value;
    assert_eq!(d["spec"]["template"]["spec"]["runtimeClassName"], "nvidia");
    // No GPU host: no RuntimeClass, and asking for it is an error naming the microservice.
    let m = render(&cluster(), &[]).unwrap();
    assert!(m.objects().all(|o| o.key.kind != "RuntimeClass"));
    let err = render(&cluster(), &[("edge-worker-1".to_owned(), services(text))])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("detector") && err.contains("gpu: true"),
        "{err}"
    );
}

#[test]
fn render_is_deterministic() {
    let inv = single("default");
    let svc = vec![("edge-master".to_owned(), services(SAMPLE))];
    let a = render(&inv, &svc).unwrap().files();
    let b = render(&inv, &svc).unwrap().files();
    assert_eq!(a, b);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].0, "edge-master.yaml");
}

/// With `imageSources`, each pod template names its image's manifest digest (a tag rebuilt
/// with new content rolls the pods); images the sources do not have, and inventories without
/// sources, get no annotation.
#[test]
fn pod_templates_name_the_digest_of_their_image() {
    let inv = single("default");
    let svc = vec![("edge-master".to_owned(), services(SAMPLE))];
    let kanban = format!("latonaio/aion-kanban:{}", env!("CARGO_PKG_VERSION"));
    let digests: BTreeMap<String, String> = [
        ("docker.io/latonaio/sample-job:v1.0.0", "sha256:job"),
        (&format!("docker.io/{kanban}"), "sha256:kanban"),
        (
            "docker.io/library/rabbitmq:3.13-management-alpine",
            "sha256:mq",
        ),
    ]
    .iter()
    .map(|(r, d)| (r.to_string(), d.to_string()))
    .collect();
    let m = render_with_digests(&inv, &svc, &digests).unwrap();
    let annotation = |kind: &str, name: &str| {
        find(&m, kind, name).value["spec"]["template"]["metadata"]["annotations"]
            [IMAGE_DIGEST_ANNOTATION]
            .clone()
    };
    assert_eq!(annotation("Job", "sample-job-001"), "sha256:job");
    assert_eq!(annotation("Deployment", "aion-kanban"), "sha256:kanban");
    assert_eq!(annotation("Deployment", "rabbitmq"), "sha256:mq");
    assert_eq!(annotation("Deployment", "web-001"), serde_json::Value::Null);
    assert_eq!(
        annotation("Deployment", "redis-cluster"),
        serde_json::Value::Null
    );
    // the rendered text says what is applied
    let text = &find(&m, "Job", "sample-job-001").text;
    assert!(
        text.contains("\"aion.latona.io/image-digest\": \"sha256:job\""),
        "{text}"
    );
    let plain = render(&inv, &svc).unwrap();
    assert!(
        plain
            .objects()
            .all(|o| !o.text.contains(IMAGE_DIGEST_ANNOTATION))
    );
}

#[test]
fn microservice_objects_follow_upstream_shape() {
    let inv = single("default");
    let m = render(&inv, &[("edge-master".to_owned(), services(SAMPLE))]).unwrap();
    let job = &find(&m, "Job", "sample-job-001").value;
    assert_eq!(job["metadata"]["namespace"], "default");
    assert_eq!(job["metadata"]["labels"]["run"], "sample-job-001");
    assert_eq!(job["spec"]["backoffLimit"], 1);
    // No TTL: a finished Job stays for the runtime to run again (upstream's 2 s TTL made
    // it vanish, so on-demand start found nothing and every plan re-created it).
    assert!(job["spec"].get("ttlSecondsAfterFinished").is_none());
    // `startup` defaults to no: idle until a kanban arrives, marked for the runtime.
    assert_eq!(job["spec"]["suspend"], true);
    assert_eq!(
        job["metadata"]["annotations"]["aion.latona.io/start"],
        "on-demand"
    );
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "OnFailure");
    assert_eq!(pod["hostname"], "sample-job-001");
    assert_eq!(pod["shareProcessNamespace"], true);
    assert_eq!(pod["serviceAccountName"], "default");
    assert!(pod.get("nodeSelector").is_none());
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "latonaio/sample-job:v1.0.0");
    assert_eq!(c["command"], json!(["/bin/sh", "run.sh"]));
    assert_eq!(c["securityContext"]["privileged"], false);
    assert_eq!(
        c["env"],
        json!([
            {"name": "AION_BROKER_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "aion-broker", "key": "password"}}},
            {"name": "SERVICE_NAME", "value": "sample-job"},
            {"name": "ANSWER", "value": "yes"},
            {"name": "MYSQL_PORT", "value": "3306"},
            {"name": "AION_HOME", "value": "/var/lib/aion"},
            {"name": "DEVICE_NAME", "value": "edge-master"},
            {"name": "DEBUG", "value": "false"},
            {"name": "MS_NUMBER", "value": "1"},
            {"name": "RABBITMQ_URL", "value": "amqp://aion:$(AION_BROKER_PASSWORD)@rabbitmq.default.svc.cluster.local:5672/%2f"},
            {"name": "QUEUE_ORIGIN", "value": "sample-job-001.in"},
            {"name": "QUEUE_TO", "value": "sample-job-001.out"},
            {"name": "AION_SERVICES", "value": "/var/lib/aion/config/services.yml"},
            {"name": "AION_DEVICE", "value": "edge-master"},
            {"name": "AION_NAMESPACE", "value": "default"},
        ])
    );
    assert_eq!(
        pod["volumes"][0],
        json!({"name": "aion-data", "hostPath": {"path": "/var/lib/aion/default/Data/"}})
    );
    assert_eq!(
        pod["volumes"][1],
        json!({"name": "aion-config", "hostPath": {"path": "/var/lib/aion/default/config", "type": "DirectoryOrCreate"}})
    );
    // No ports: no Service (nothing to expose without upstream's envoy sidecar).
    assert!(m.objects().all(|o| o.key.name != "sample-job-001-srv"));

    for i in ["001", "002"] {
        let d = &find(&m, "Deployment", &format!("web-{i}")).value;
        assert_eq!(d["spec"]["replicas"], 0, "web is not `startup`");
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            json!({"run": format!("web-{i}")})
        );
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["nodeSelector"],
            json!({"kubernetes.io/hostname": "edge-master"})
        );
        assert_eq!(pod["serviceAccountName"], "controller-serviceaccount");
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["privileged"], true);
        assert_eq!(
            c["ports"],
            json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
        );
        assert_eq!(
            c["resources"],
            json!({"requests": {"cpu": "100m"}, "limits": {"memory": "128Mi"}})
        );
        assert_eq!(
            c["volumeMounts"],
            json!([
                {"name": "aion-data", "mountPath": "/var/lib/aion/Data"},
                {"name": "aion-config", "mountPath": "/var/lib/aion/config", "readOnly": true},
                {"name": "data-0", "mountPath": "/media", "mountPropagation": "Bidirectional"},
                {"name": "data-1", "mountPath": "/var/run/docker.sock", "mountPropagation": "None"},
            ])
        );
        let env = c["env"].as_array().unwrap();
        let ms_number = env.iter().find(|e| e["name"] == "MS_NUMBER").unwrap();
        assert_eq!(
            ms_number,
            &json!({"name": "MS_NUMBER", "value": i.trim_start_matches('0')})
        );
        let origin = env.iter().find(|e| e["name"] == "QUEUE_ORIGIN").unwrap();
        assert_eq!(origin["value"], format!("web-{i}.in"));
        let s = &find(&m, "Service", &format!("web-{i}-srv")).value;
        assert_eq!(s["spec"]["type"], "NodePort");
        assert_eq!(s["spec"]["selector"], json!({"run": format!("web-{i}")}));
        assert!(s["spec"].get("topologyKeys").is_none());
    }
}

/// The client defaults come after upstream's injected vars and never replace a user's value.
#[test]
fn client_env_defaults_do_not_override_the_users_env() {
    let mut ms = services(SAMPLE).microservices.remove(0);
    ms.env = vec![
        ("QUEUE_ORIGIN".into(), "mine-queue".into()),
        ("RABBITMQ_URL".into(), "amqp://u:p@rabbitmq:5672/v".into()),
        ("MS_NUMBER".into(), "9".into()),
    ];
    let env = env_list(&ms, 2, "dev", "", "amqp://x@broker/%2f", true, "ns-a");
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "SERVICE_NAME",
            "QUEUE_ORIGIN",
            "RABBITMQ_URL",
            "AION_HOME",
            "DEVICE_NAME",
            "DEBUG",
            "MS_NUMBER",
            "QUEUE_TO",
            "AION_SERVICES",
            "AION_DEVICE",
            "AION_NAMESPACE"
        ]
    );
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("QUEUE_ORIGIN"), Some("mine-queue"));
    assert_eq!(get("RABBITMQ_URL"), Some("amqp://u:p@rabbitmq:5672/v"));
    assert_eq!(get("MS_NUMBER"), Some("2"));
    assert_eq!(
        get("QUEUE_TO"),
        Some(format!("{}.out", ms.instance_name(2)).as_str())
    );
    assert_eq!(get("AION_DEVICE"), Some("dev"));
    assert_eq!(get("AION_NAMESPACE"), Some("ns-a"));
    // A user's own AION_NAMESPACE is kept, in its place, and not added again.
    ms.env.push(("AION_NAMESPACE".into(), "elsewhere".into()));
    let env = env_list(&ms, 2, "dev", "", "amqp://x@broker/%2f", true, "ns-a");
    let ns: Vec<&str> = env
        .iter()
        .filter(|(k, _)| k == "AION_NAMESPACE")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(ns, ["elsewhere"]);
}

/// A file with its own QUEUE_TO (upstream style) gets no AION_SERVICES (the client would not
/// find its instance by that queue) and no config mount; the rest of the defaults it does.
#[test]
fn own_queue_to_gets_no_services_file() {
    let text = "microservices:\n  a:\n    env: {QUEUE_TO: next-queue}\n  b:\n    env: {QUEUE_TO: b-001.out}\n";
    let m = render(
        &single("default"),
        &[("edge-master".to_owned(), services(text))],
    )
    .unwrap();
    for (job, queue_to, ours) in [("a-001", "next-queue", false), ("b-001", "b-001.out", true)] {
        let pod = &find(&m, "Job", job).value["spec"]["template"]["spec"];
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let get = |k: &str| {
            env.iter()
                .find(|e| e["name"] == k)
                .map(|e| e["value"].clone())
        };
        assert_eq!(get("QUEUE_TO"), Some(json!(queue_to)));
        assert_eq!(get("QUEUE_ORIGIN"), Some(json!(format!("{job}.in"))));
        assert_eq!(get("AION_SERVICES").is_some(), ours, "{job}");
        let mounted = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "aion-config");
        assert_eq!(mounted, ours, "{job}");
    }
}

/// A user's own mount of /var/lib/aion/config (upstream's data-sweeper) is kept as it is;
/// AION_SERVICES only when it is this namespace's config directory.
#[test]
fn users_config_mount_is_kept() {
    for (host, services_mounted) in [
        ("/var/lib/aion/default/config", true),
        ("/var/lib/aion/default/config/", true),
        ("/srv/elsewhere", false),
    ] {
        let text = format!(
            "microservices:\n  a:\n    volumeMountPathList: [\"/var/lib/aion/config:{host}\"]\n"
        );
        let m = render(
            &single("default"),
            &[("edge-master".to_owned(), services(&text))],
        )
        .unwrap();
        let job = &find(&m, "Job", "a-001").value;
        let pod = &job["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(
            c["volumeMounts"],
            json!([
                {"name": "aion-data", "mountPath": "/var/lib/aion/Data"},
                {"name": "data-0", "mountPath": "/var/lib/aion/config", "mountPropagation": "None"},
            ]),
            "{host}"
        );
        let has = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "AION_SERVICES");
        assert_eq!(has, services_mounted, "{host}");
    }
}

#[test]
fn every_object_carries_ownership_labels() {
    let m = render(
        &cluster(),
        &[(
            "edge-worker-1".to_owned(),
            services("microservices:\n  a:\n    always: yes\n"),
        )],
    )
    .unwrap();
    for o in m.objects() {
        let labels = &o.value["metadata"]["labels"];
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY, "{}", o.key);
        assert_eq!(labels[LABEL_INVENTORY], "lab", "{}", o.key);
        assert_eq!(labels[LABEL_NODE], o.node.as_str(), "{}", o.key);
    }
}

#[test]
fn single_mode_namespaces() {
    let m = render(&single("default"), &[]).unwrap();
    assert!(m.objects().all(|o| o.key.kind != "Namespace"));
    let kinds: Vec<String> = m.objects().map(|o| o.key.to_string()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount/default/aion-kanban",
            "Role/default/aion-kanban",
            "RoleBinding/default/aion-kanban",
            "Secret/default/aion-broker",
            "ConfigMap/default/rabbitmq-config",
            "Deployment/default/rabbitmq",
            "Deployment/default/redis-cluster",
            "Deployment/default/aion-kanban",
            "Service/default/rabbitmq",
            "Service/default/redis-cluster",
        ]
    );
    let m = render(&single("prj"), &[]).unwrap();
    let first = m.objects().next().unwrap();
    assert_eq!(first.key.to_string(), "Namespace/prj");
    assert!(
        m.objects()
            .skip(1)
            .all(|o| o.key.namespace.as_deref() == Some("prj"))
    );
}

#[test]
fn least_privilege_rbac() {
    let m = render(&single("default"), &[]).unwrap();
    let role = &find(&m, "Role", "aion-kanban").value;
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        ])
    );
    assert!(m.objects().all(|o| !o.key.kind.starts_with("Cluster")));
    let kanban = &find(&m, "Deployment", "aion-kanban").value;
    let c = &kanban["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"], json!(["run", "--peers="]));
    let env = c["env"].as_array().unwrap();
    let get = |k: &str| {
        env.iter()
            .find(|e| e["name"] == k)
            .map(|e| e["value"].clone())
    };
    assert_eq!(get("AION_SERVICES"), Some(json!(SERVICES_IN_POD)));
    assert_eq!(get("AION_DEVICE"), Some(json!("edge-master")));
    assert_eq!(get("AION_KUBECONFIG"), Some(json!("in-cluster")));
    // The record store is on the mounted data volume (the contract with the binary itself
    // is checked by tests/rabbitmq/kanban_wiring.rs).
    assert_eq!(
        get("AION_KANBAN_DB"),
        Some(json!("/var/lib/aion/Data/aion-kanban/kanban.db"))
    );
}

/// The core pods ask for CPU and memory and set no limits: Burstable, not BestEffort. A
/// BestEffort broker is the first pod the kubelet evicts under memory pressure and runs at the
/// lowest CPU weight (cgroup v1 `cpu.shares` 2) beside any pod that asks for CPU; before, no
/// core container had `resources`.
#[test]
fn core_pods_request_cpu_and_memory_without_limits() {
    let m = render(&single("default"), &[]).unwrap();
    for name in ["rabbitmq", "aion-kanban", "redis-cluster"] {
        let d = &find(&m, "Deployment", name).value;
        let r = &d["spec"]["template"]["spec"]["containers"][0]["resources"];
        for what in ["cpu", "memory"] {
            assert!(
                r["requests"][what].is_string(),
                "{name}: no {what} request in {r}"
            );
        }
        // A CPU limit throttles the broker in bursts (CFS quota), a memory limit kills it.
        assert!(r.get("limits").is_none(), "{name}: limits {r}");
    }
}

#[test]
fn cluster_mode_namespace_per_worker() {
    let svc = services("microservices:\n  a:\n    always: yes\n");
    let m = render(&cluster(), &[("edge-worker-1".to_owned(), svc)]).unwrap();
    assert_eq!(m.nodes.len(), 2);
    assert_eq!(m.nodes[0].namespace, "default");
    assert_eq!(m.nodes[1].namespace, "edge-worker-1");
    assert_eq!(
        m.nodes[1].objects[0].key.to_string(),
        "Namespace/edge-worker-1"
    );
    let a = &find(&m, "Deployment", "a-001");
    assert_eq!(a.node, "edge-worker-1");
    assert_eq!(a.value["metadata"]["namespace"], "edge-worker-1");
    assert_eq!(
        a.value["spec"]["template"]["spec"]["nodeSelector"],
        json!({"kubernetes.io/hostname": "edge-worker-1"})
    );
    let rabbit: Vec<_> = m
        .objects()
        .filter(|o| o.key.name.starts_with("rabbitmq"))
        .collect();
    assert!(rabbit.iter().all(|o| o.node == "edge-master"));
    assert_eq!(rabbit.len(), 3);
    let kanban = m
        .objects()
        .find(|o| {
            o.node == "edge-worker-1" && o.key.name == "aion-kanban" && o.key.kind == "Deployment"
        })
        .unwrap();
    let env = &kanban.value["spec"]["template"]["spec"]["containers"][0]["env"][1];
    assert_eq!(
        env["value"],
        "amqp://aion:$(AION_BROKER_PASSWORD)@rabbitmq.default.svc.cluster.local:5672/edge-worker-1"
    );
}

fn kanban_container<'a>(m: &'a Manifests, node: &str) -> &'a serde_json::Value {
    let d = m
        .objects()
        .find(|o| o.node == node && o.key.kind == "Deployment" && o.key.name == "aion-kanban")
        .unwrap_or_else(|| panic!("no aion-kanban on {node}"));
    &d.value["spec"]["template"]["spec"]["containers"][0]
}

fn env_of(c: &serde_json::Value, key: &str) -> Option<String> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == key)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

fn three_hosts(extra_worker_2: &str) -> Inventory {
    inventory(&format!(
        "name: lab\nmode: cluster\nhosts:\n  - name: edge-master\n    address: 10.0.0.2\n    role: master\n  - name: edge-worker-1\n    address: 10.0.0.3\n    role: worker\n  - name: edge-worker-2\n    address: 10.0.0.4\n    role: worker\n{extra_worker_2}"
    ))
}

/// Cluster mode: one virtual host per namespace in the broker's definitions, every pod's URL
/// on its own namespace's virtual host, and each runtime mapped to every other device's.
#[test]
fn cluster_mode_vhost_per_namespace_and_device_amqp() {
    let inv = three_hosts("");
    let shared = "microservices:\n  same-name:\n    always: yes\n";
    let files = vec![
        ("edge-master".to_owned(), services(shared)),
        (
            "edge-worker-1".to_owned(),
            services(&format!("deviceName: cam-1\n{shared}")),
        ),
        (
            "edge-worker-2".to_owned(),
            services(&format!("deviceName: store\n{shared}")),
        ),
    ];
    let m = render(&inv, &files).unwrap();
    let cm = &find(&m, "ConfigMap", "rabbitmq-config");
    assert_eq!(cm.node, "edge-master");
    let vhosts = [
        "default".to_owned(),
        "edge-worker-1".into(),
        "edge-worker-2".into(),
    ];
    assert_eq!(
        cm.value["data"][broker::VHOSTS_FILE].as_str(),
        Some(broker::vhosts_json(&vhosts).as_str())
    );
    assert_eq!(
        cm.value["data"][broker::PERMISSIONS_FILE].as_str(),
        Some(broker::permissions_json(&vhosts, &[]).as_str())
    );
    assert_eq!(
        cm.value["data"]["aion.conf"].as_str().unwrap(),
        broker::config(false)
    );
    let url = |vhost: &str| {
        format!(
            "amqp://aion:$(AION_BROKER_PASSWORD)@rabbitmq.default.svc.cluster.local:5672/{vhost}"
        )
    };
    for (node, ns, device) in [
        ("edge-master", "default", "edge-master"),
        ("edge-worker-1", "edge-worker-1", "cam-1"),
        ("edge-worker-2", "edge-worker-2", "store"),
    ] {
        let c = kanban_container(&m, node);
        assert_eq!(env_of(c, "AION_RABBITMQ_URL"), Some(url(ns)), "{node}");
        assert_eq!(env_of(c, "AION_DEVICE").as_deref(), Some(device));
        let mut expected = vec![json!("run")];
        for (d, v) in [
            ("edge-master", "default"),
            ("cam-1", "edge-worker-1"),
            ("store", "edge-worker-2"),
        ] {
            if d != device {
                expected.push(json!("--device-amqp"));
                expected.push(json!(format!("{d}={}", url(v))));
            }
        }
        expected.push(json!("--peers="));
        assert_eq!(c["args"], json!(expected), "{node}");
        // The microservice of the same name in each namespace: its own virtual host.
        let ms = m
            .objects()
            .find(|o| o.node == node && o.key.name == "same-name-001")
            .unwrap();
        let mc = &ms.value["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(env_of(mc, "RABBITMQ_URL"), Some(url(ns)), "{node}");
    }
}

/// The broker restarts (checksum annotation) when a namespace is added, and only then.
#[test]
fn broker_checksum_follows_the_definitions() {
    let checksum = |inv: &Inventory| {
        let m = render(inv, &[]).unwrap();
        let d = &find(&m, "Deployment", "rabbitmq").value;
        let cm = &find(&m, "ConfigMap", "rabbitmq-config").value;
        let sum = d["spec"]["template"]["metadata"]["annotations"]["aion.latona.io/config-sha256"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            sum,
            broker::config_checksum(
                cm["data"]["aion.conf"].as_str().unwrap(),
                &[
                    cm["data"][broker::VHOSTS_FILE].as_str().unwrap(),
                    cm["data"][broker::PERMISSIONS_FILE].as_str().unwrap()
                ]
            )
        );
        sum
    };
    let two = checksum(&cluster());
    assert_eq!(two, checksum(&cluster()));
    assert_ne!(two, checksum(&three_hosts("")));
    // Single mode: `/` only, the URL upstream used.
    let m = render(&single("prj"), &[]).unwrap();
    let cm = &find(&m, "ConfigMap", "rabbitmq-config").value;
    let defs: serde_json::Value =
        serde_json::from_str(cm["data"][broker::VHOSTS_FILE].as_str().unwrap()).unwrap();
    assert_eq!(defs["vhosts"], json!([{"name": "/"}]));
    let c = kanban_container(&m, "edge-master");
    assert_eq!(
        env_of(c, "AION_RABBITMQ_URL").as_deref(),
        Some("amqp://aion:$(AION_BROKER_PASSWORD)@rabbitmq.prj.svc.cluster.local:5672/%2f")
    );
    assert_eq!(c["args"], json!(["run", "--peers="]));
}

/// No password is rendered: each namespace gets an empty Secret `aion-broker` marked for
/// generation; every container that talks to the broker reads the password from it first
/// and its URLs (env and args) refer to it; the broker imports the user from the Secret.
#[test]
fn broker_password_comes_from_a_generated_secret_never_from_the_render() {
    let inv = three_hosts("");
    let files = vec![(
        "edge-worker-1".to_owned(),
        services("microservices:\n  cam:\n    always: yes\n"),
    )];
    let m = render(&inv, &files).unwrap();
    let text = serde_json::to_string(&m.objects().map(|o| &o.value).collect::<Vec<_>>()).unwrap();
    assert!(!text.contains("aion:aion@"), "a fixed password is rendered");
    assert!(
        !text.contains("\"password\":"),
        "a password field is rendered"
    );
    for ns in ["default", "edge-worker-1", "edge-worker-2"] {
        let secret = m
            .objects()
            .find(|o| {
                o.key.kind == "Secret"
                    && o.key.name == broker::SECRET_NAME
                    && o.key.namespace.as_deref() == Some(ns)
            })
            .unwrap_or_else(|| panic!("no Secret aion-broker in {ns}"));
        assert_eq!(
            secret.value["metadata"]["annotations"]["aion.latona.io/generated"],
            "broker-credentials"
        );
        assert!(secret.value.get("data").is_none(), "{}", secret.value);
        assert!(secret.value.get("stringData").is_none(), "{}", secret.value);
    }
    let password_first = |c: &serde_json::Value| {
        let first = &c["env"][0];
        assert_eq!(first["name"], broker::PASSWORD_ENV, "{c}");
        assert_eq!(
            first["valueFrom"]["secretKeyRef"],
            json!({"name": broker::SECRET_NAME, "key": broker::SECRET_PASSWORD_KEY})
        );
    };
    let runtime = kanban_container(&m, "edge-worker-1");
    password_first(runtime);
    let ms = m.objects().find(|o| o.key.name == "cam-001").unwrap();
    let mc = &ms.value["spec"]["template"]["spec"]["containers"][0];
    password_first(mc);
    assert!(
        env_of(mc, "RABBITMQ_URL")
            .unwrap()
            .starts_with("amqp://aion:$(AION_BROKER_PASSWORD)@")
    );
    // The broker: the ConfigMap's two files and the Secret's user file in one directory,
    // each mounted alone (a mounted volume directory would bring the kubelet's `..data`).
    let broker = &find(&m, "Deployment", "rabbitmq").value["spec"]["template"]["spec"];
    let mounts: Vec<(String, String, String)> = broker["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| {
            v["mountPath"]
                .as_str()
                .unwrap()
                .starts_with(broker::DEFINITIONS_DIR)
        })
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap().to_owned();
            (s("name"), s("mountPath"), s("subPath"))
        })
        .collect();
    let at = |f: &str| format!("{}/{f}", broker::DEFINITIONS_DIR);
    assert_eq!(
        mounts,
        [
            (
                "rabbitmq-config".into(),
                at(broker::VHOSTS_FILE),
                broker::VHOSTS_FILE.into()
            ),
            (
                "broker-credentials".into(),
                at(broker::SECRET_USER_FILE),
                broker::SECRET_USER_FILE.into()
            ),
            (
                "rabbitmq-config".into(),
                at(broker::PERMISSIONS_FILE),
                broker::PERMISSIONS_FILE.into()
            ),
        ]
    );
    let volumes = broker["volumes"].as_array().unwrap();
    assert!(volumes.contains(
        &json!({"name": "broker-credentials", "secret": {"secretName": broker::SECRET_NAME}})
    ));
}

/// AION_SWEEPER_CONFIG only on the runtime of a host whose inventory names a data-sweeper.yml.
#[test]
fn sweeper_config_only_where_the_inventory_names_one() {
    let inv = three_hosts("    dataSweeper: data-sweeper.yml\n");
    let m = render(&inv, &[]).unwrap();
    for (node, has) in [
        ("edge-master", false),
        ("edge-worker-1", false),
        ("edge-worker-2", true),
    ] {
        let c = kanban_container(&m, node);
        assert_eq!(
            env_of(c, "AION_SWEEPER_CONFIG").as_deref(),
            has.then_some(SWEEPER_IN_POD),
            "{node}"
        );
        // The file is on the config volume, which is mounted there.
        let mounted =
            c["volumeMounts"].as_array().unwrap().iter().any(|v| {
                SWEEPER_IN_POD.starts_with(&format!("{}/", v["mountPath"].as_str().unwrap()))
            });
        assert!(mounted, "{node}");
    }
}

/// One services.yml shared by every host in cluster mode: a `targetNode` microservice is
/// rendered in every host's namespace (each namespace's aion-kanban runtime starts the
/// microservices of its own services.yml there), every copy pinned to the target node —
/// as upstream, whose master sends the whole setting to every worker.
#[test]
fn cluster_mode_shared_file_target_node_in_every_namespace() {
    let svc = services(
        "microservices:\n  pinned:\n    always: yes\n    targetNode: edge-worker-1\n  free:\n    always: yes\n",
    );
    let shared = vec![
        ("edge-master".to_owned(), svc.clone()),
        ("edge-worker-1".to_owned(), svc),
    ];
    let m = render(&cluster(), &shared).unwrap();
    let selector = |o: &Object| o.value["spec"]["template"]["spec"]["nodeSelector"].clone();
    let pinned: Vec<&Object> = m
        .objects()
        .filter(|o| o.key.kind == "Deployment" && o.key.name == "pinned-001")
        .collect();
    let namespaces: Vec<_> = pinned.iter().map(|o| o.key.namespace.as_deref()).collect();
    assert_eq!(namespaces, [Some("default"), Some("edge-worker-1")]);
    for o in &pinned {
        assert_eq!(
            selector(o),
            json!({"kubernetes.io/hostname": "edge-worker-1"})
        );
    }
    // Without targetNode each copy stays on its own host.
    for (node, ns) in [
        ("edge-master", "default"),
        ("edge-worker-1", "edge-worker-1"),
    ] {
        let free = m
            .objects()
            .find(|o| o.key.name == "free-001" && o.node == node)
            .unwrap();
        assert_eq!(free.key.namespace.as_deref(), Some(ns));
        assert_eq!(selector(free), json!({"kubernetes.io/hostname": node}));
    }
}

fn render_err(text: &str) -> String {
    render(
        &single("default"),
        &[("edge-master".to_owned(), services(text))],
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn invalid_values_are_clear_errors() {
    let e = render_err(
        "microservices:\n  a:\n    volumeMountPathList: [\"/dev:/dev:Bidirectional\"]\n",
    );
    assert!(e.contains("/srv/aion/services.yml:"), "{e}");
    assert!(
        e.contains("Bidirectional mount propagation needs `privileged: yes`"),
        "{e}"
    );
    let e = render_err("microservices:\n  a:\n    ports: [{name: Web_Port, port: 80}]\n");
    assert!(e.contains("port name \"Web_Port\" is invalid"), "{e}");
    let e = render_err(
        "microservices:\n  a:\n    network: NodePort\n    ports: [{name: web, port: 80, nodePort: 80}]\n",
    );
    assert!(e.contains("nodePort 80 is outside"), "{e}");
    let e = render_err(
        "microservices:\n  a:\n    scale: 2\n    network: NodePort\n    ports: [{name: web, port: 80, nodePort: 30080}]\n",
    );
    assert!(e.contains("nodePort 30080 is also used by a-001"), "{e}");
    let e = render_err("microservices:\n  1bad:\n    always: yes\n");
    assert!(e.contains("is not a valid object name"), "{e}");
}

#[test]
fn invalid_inventory_name() {
    let mut inv = single("default");
    inv.name = "my lab".into();
    let e = render(&inv, &[]).unwrap_err().to_string();
    assert!(e.contains("not a valid Kubernetes label value"), "{e}");
}

/// Every rendered document, parsed by the fast path and by serde-saphyr.
fn check_parse_paths(m: &Manifests, must_be_fast: bool) -> usize {
    let mut fast = 0;
    for o in m.objects() {
        let full: serde_json::Value = serde_saphyr::from_str(&o.text).unwrap();
        assert_eq!(o.value, full, "{}", o.key);
        match subset::parse(&o.text) {
            Some(v) => {
                assert_eq!(v, full, "{}:\n{}", o.key, o.text);
                fast += 1;
            }
            None => assert!(!must_be_fast, "{} left the fast path:\n{}", o.key, o.text),
        }
    }
    fast
}

/// The fast parse path covers every template's output (so render never pays for the full
/// YAML parser on ordinary input) and gives the same JSON as serde-saphyr, on the sample,
/// on the real examples (single and cluster mode) and on values that look like YAML syntax.
#[test]
fn fast_parse_path_agrees_with_the_yaml_parser() {
    let m = render(
        &single("prj"),
        &[("edge-master".to_owned(), services(SAMPLE))],
    )
    .unwrap();
    assert!(check_parse_paths(&m, true) > 10);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inputs");
    let mut rendered = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let file = aion_model::services::load_str(&text, &path).unwrap().value;
        for (inv, host) in [
            (single("default"), "edge-master"),
            (cluster(), "edge-worker-1"),
        ] {
            // Upstream's own test file is rejected by render (see the golden tests).
            if let Ok(m) = render(&inv, &[(host.to_owned(), file.clone())]) {
                check_parse_paths(&m, true);
                rendered += 1;
            }
        }
    }
    assert!(rendered >= 8, "{rendered} example renders");

    let tricky = [
        "yes",
        "No",
        "True",
        "null",
        "~",
        "",
        " padded ",
        "a: b",
        "# no comment",
        "- item",
        "[1, 2]",
        "{a: 1}",
        "*alias",
        "&anchor",
        "!tag",
        "%YAML",
        "---",
        "...",
        "0x1F",
        "1e3",
        "010",
        "-0",
        ".inf",
        "multi\nline",
        "tab\there",
        "cr\rlf",
        "quote \" and \\",
        "<b>&'",
        "é 日本 😀",
        "\u{2028}ls",
        "\u{85}nel",
        "\u{feff}bom",
        "\u{a0}nbsp",
        "\u{1}ctl",
        "{{ not jinja }}",
        "{% raw %}",
    ];
    let mut file = services("microservices:\n  t:\n    always: yes\n");
    file.microservices[0].env = tricky
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("V{i}"), (*v).to_owned()))
        .collect();
    file.microservices[0].command = Some(tricky.iter().map(|v| (*v).to_owned()).collect());
    let m = render(&cluster(), &[("edge-worker-1".to_owned(), file)]).unwrap();
    check_parse_paths(&m, false);
    let t = &find(&m, "Deployment", "t-001").value;
    let c = &t["spec"]["template"]["spec"]["containers"][0];
    for (i, v) in tricky.iter().enumerate() {
        // env[0] is the broker password, env[1] SERVICE_NAME.
        assert_eq!(c["env"][i + 2]["value"], *v);
        assert_eq!(c["command"][i], *v);
    }
}

#[test]
fn split_documents_drops_comment_only_docs() {
    let docs = split_documents("# only a comment\n---\na: 1\n---\n\n---\nb: 2\n");
    assert_eq!(docs, ["a: 1\n", "b: 2\n"]);
}

/// Peers (devices of other installations): each gets write on the peer exchange of the virtual
/// hosts it may reach and nothing else, the broker gets a NodePort entry, each runtime is told
/// which peers may send to it, and the peers' users come only from the generated Secret.
#[test]
fn peers_get_a_user_limited_to_the_inbound_queues_they_may_reach() {
    let inv = three_hosts(
        "peers:\n  - device: line-2-cam\n    to: [edge-worker-2]\n  - device: hq\nentryPort: 31999\n",
    );
    let m = render(&inv, &[]).unwrap();
    let cm = &find(&m, "ConfigMap", "rabbitmq-config").value;
    let perms: serde_json::Value =
        serde_json::from_str(cm["data"][broker::PERMISSIONS_FILE].as_str().unwrap()).unwrap();
    let of = |user: &str| -> Vec<serde_json::Value> {
        perms["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["user"] == user)
            .cloned()
            .collect()
    };
    assert_eq!(
        of("peer.line-2-cam"),
        vec![json!({"user": "peer.line-2-cam", "vhost": "edge-worker-2",
                    "configure": "^$", "write": "^aion-kanban\\.peers$", "read": "^$"})]
    );
    let hq: Vec<_> = of("peer.hq").iter().map(|p| p["vhost"].clone()).collect();
    assert_eq!(
        hq,
        [
            json!("default"),
            json!("edge-worker-1"),
            json!("edge-worker-2")
        ]
    );
    // The users are in the generated Secret only (the placeholder lists the devices).
    let secret = m
        .objects()
        .find(|o| o.key.kind == "Secret" && o.node == "edge-master")
        .unwrap();
    assert_eq!(
        secret.value["metadata"]["annotations"][broker::PEERS_ANNOTATION],
        "line-2-cam,hq"
    );
    assert!(secret.value.get("data").is_none());
    let entry = &find(&m, "Service", broker::ENTRY_SERVICE).value;
    assert_eq!(entry["spec"]["type"], "NodePort");
    assert_eq!(entry["spec"]["ports"][0]["nodePort"], 31999);
    assert_eq!(
        entry["spec"]["ports"].as_array().unwrap().len(),
        1,
        "AMQP only"
    );
    for (node, peers) in [
        ("edge-master", "--peers=hq"),
        ("edge-worker-1", "--peers=hq"),
        ("edge-worker-2", "--peers=line-2-cam,hq"),
    ] {
        let args = kanban_container(&m, node)["args"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(args.last().unwrap(), peers, "{node}");
    }
    // Without peers: no entry, no peers file.
    let m = render(&three_hosts(""), &[]).unwrap();
    assert!(m.objects().all(|o| o.key.name != broker::ENTRY_SERVICE));
    // The entry port is a node port like the microservices' own.
    let e = render(
        &inventory(
            "name: lab\nmode: single\npeers: [{device: hq}]\nentryPort: 30080\nhosts:\n  - name: edge-master\n    address: 10.0.0.2\n    role: master\n",
        ),
        &[(
            "edge-master".to_owned(),
            services(
                "microservices:\n  a:\n    network: NodePort\n    ports: [{name: web, port: 80, nodePort: 30080}]\n",
            ),
        )],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("nodePort 30080 is also used by the broker's entry for peers"),
        "{e}"
    );
}

#[test]
fn peer_passwords_are_derived_per_device_and_stable() {
    let a = broker::peer_password("0123456789abcdef0123456789abcdef", "hq");
    assert_eq!(
        a,
        broker::peer_password("0123456789abcdef0123456789abcdef", "hq")
    );
    assert_eq!(a.len(), 32);
    assert_ne!(
        a,
        broker::peer_password("0123456789abcdef0123456789abcdef", "hr")
    );
    assert_ne!(a, broker::peer_password("other", "hq"));
    let url = broker::peer_url("pw", "hq", 32094, "/", false);
    assert_eq!(
        url,
        format!(
            "amqp://peer.hq:{}@{{addr}}:32094/%2f",
            broker::peer_password("pw", "hq")
        )
    );
}

/// `entryTls`: the broker gets a TLS listener fed from the Secret `aion-entry-tls`, the entry
/// Service reaches only that listener, and the Secret is rendered as a placeholder naming the
/// files: no rendered object holds the key.
#[test]
fn a_tls_entry_listens_with_tls_only_and_renders_no_key() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "entry.pem", "entry.key"] {
        std::fs::write(dir.path().join(f), format!("SECRET-{f}")).unwrap();
    }
    let d = dir.path().display();
    let inv = three_hosts(&format!(
        "peers: [{{device: hq}}]\nentryTls: {{ca: {d}/ca.pem, cert: {d}/entry.pem, key: {d}/entry.key}}\n"
    ));
    let m = render(&inv, &[]).unwrap();
    let conf = find(&m, "ConfigMap", "rabbitmq-config").value["data"]["aion.conf"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(conf.contains("listeners.ssl.default = 5671"), "{conf}");
    assert!(
        conf.contains("ssl_options.keyfile = /etc/rabbitmq/entry-tls/tls.key"),
        "{conf}"
    );
    let entry = &find(&m, "Service", broker::ENTRY_SERVICE).value;
    assert_eq!(
        entry["spec"]["ports"],
        json!([{"name": "amqps", "protocol": "TCP", "port": 5671, "targetPort": 5671, "nodePort": 32094}])
    );
    let secret = &find(&m, "Secret", broker::ENTRY_TLS_SECRET).value;
    assert!(secret.get("data").is_none());
    let files: serde_json::Value = serde_json::from_str(
        secret["metadata"]["annotations"]["aion.latona.io/files"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(files["tls.key"], format!("{d}/entry.key"));
    let broker_pod = &find(&m, "Deployment", "rabbitmq").value["spec"]["template"]["spec"];
    assert!(
        broker_pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == broker::ENTRY_TLS_SECRET)
    );
    let all = serde_json::to_string(&m.objects().map(|o| &o.value).collect::<Vec<_>>()).unwrap();
    assert!(!all.contains("SECRET-entry.key"), "the key was rendered");
    // Without peers there is no entry, so no TLS either.
    let m = render(
        &three_hosts(&format!(
            "entryTls: {{ca: {d}/ca.pem, cert: {d}/entry.pem, key: {d}/entry.key}}\n"
        )),
        &[],
    )
    .unwrap();
    assert!(m.objects().all(|o| o.key.name != broker::ENTRY_TLS_SECRET));
}
