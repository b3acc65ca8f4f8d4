//! aion-kanban's lifecycle against the real kube-apiserver (`scripts/k8s-testenv.sh`) and a real
//! RabbitMQ (`scripts/rabbitmq.sh`): `startup` services scaled up at boot, other services
//! started on demand when a kanban is routed to them (Deployment scaled from 0, suspended Job
//! resumed), also when the kanban was routed producer-side by the client library (its record
//! copy reaches the runtime). The workloads are created here the way the reconciler renders idle instances.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aion_integration_tests::rabbitmq::kanban::{all_queues, services, start_router};
use aion_integration_tests::{k8s, rabbitmq, rabbitmq::amqp};
use aion_kanban::lifecycle::KubeLifecycle;
use aion_kanban::output::{Output, OutputOptions};
use aion_kanban::router::{RouterOptions, ServicesSource};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// The tests here run at once, each a router on the same broker: each serves its own fresh
/// Kubernetes namespace as `AION_NAMESPACE`, so each consumes only its own namespace's records
/// queue (`aion-kanban.records.<ns>`, deleted at the end) and no router takes another's client
/// records.
fn router_options(
    cfg: &aion_model::ServicesFile,
    url: &str,
    client: &kube::Client,
    ns: &str,
) -> RouterOptions {
    let mut opts = RouterOptions::new(
        ServicesSource::Value(Arc::new(cfg.clone())),
        url.to_string(),
    );
    opts.lifecycle = Some(Arc::new(KubeLifecycle::new(client.clone(), ns.to_string())));
    opts.namespace = Some(ns.to_string());
    opts
}

/// The test's queues: its microservices' and its namespace's records queue.
fn test_queues(cfg: &aion_model::ServicesFile, ns: &str) -> Vec<String> {
    let mut queues = all_queues(cfg);
    queues.push(aion_kanban::topology::records_queue_name(Some(ns)));
    queues
}

/// The replicas Deployment `name` asks for (0 when unset).
async fn replicas(deps: &Api<Deployment>, name: String) -> i32 {
    deps.get(&name).await.unwrap().spec.replicas.unwrap_or(0)
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"run": name}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"run": name}},
            "template": {
                "metadata": {"labels": {"run": name}},
                "spec": {"containers": [{"name": name, "image": "example.invalid/aion/idle:latest"}]}
            }
        }
    }))
    .unwrap()
}

fn job(name: &str) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"run": name}},
        "spec": {
            "suspend": true,
            "template": {
                "metadata": {"labels": {"run": name}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": name, "image": "example.invalid/aion/idle:latest"}]
                }
            }
        }
    }))
    .unwrap()
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_start_at_boot_and_on_demand() {
    let Some(cluster) = k8s::require() else {
        return;
    };
    let Some(b) = rabbitmq::require() else { return };
    let ns = cluster.fresh_namespace().await;
    let client = cluster.client().await;
    let p = rabbitmq::unique("od");
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    for name in [
        format!("{p}boot-001"),
        format!("{p}dep-001"),
        format!("{p}dep-002"),
    ] {
        deps.create(&PostParams::default(), &deployment(&name))
            .await
            .unwrap();
    }
    jobs.create(&PostParams::default(), &job(&format!("{p}job-001")))
        .await
        .unwrap();

    let yaml = format!(
        r#"
microservices:
  {p}boot: {{startup: yes, always: yes}}
  {p}src:
    nextService:
      default: [{{name: {p}dep, pattern: n}}, {{name: {p}job, pattern: "0"}}]
  {p}dep: {{always: yes, scale: 2}}
  {p}job: {{}}
"#
    );
    let cfg = services(&yaml);
    let opts = router_options(&cfg, &b.url, &client, &ns);
    let router = start_router(opts, None);

    let replicas = |name: String| replicas(&deps, name);
    // `startup` service scaled up at boot.
    wait_until("startup Deployment scaled to 1", || async {
        replicas(format!("{p}boot-001")).await == 1
    })
    .await;
    // Nothing else started yet.
    assert_eq!(replicas(format!("{p}dep-002")).await, 0);
    assert_eq!(
        jobs.get(&format!("{p}job-001"))
            .await
            .unwrap()
            .spec
            .unwrap()
            .suspend,
        Some(true)
    );

    let (conn, ch) = amqp::connect(&b.url).await;
    assert!(amqp::wait_declared(&conn, &format!("{p}src-001.out"), WAIT).await);
    amqp::publish(&ch, &format!("{p}src-001.out"), br#"{"processNumber": 2}"#).await;
    wait_until("Deployment instance 2 scaled from 0 on demand", || async {
        replicas(format!("{p}dep-002")).await == 1
    })
    .await;
    wait_until("suspended Job resumed on demand", || async {
        jobs.get(&format!("{p}job-001"))
            .await
            .unwrap()
            .spec
            .unwrap()
            .suspend
            == Some(false)
    })
    .await;
    assert_eq!(
        replicas(format!("{p}dep-001")).await,
        0,
        "only the addressed instance starts"
    );
    assert_eq!(
        amqp::take(&ch, &format!("{p}dep-002.in"), 1, WAIT)
            .await
            .len(),
        1
    );
    assert_eq!(
        amqp::take(&ch, &format!("{p}job-001.in"), 1, WAIT)
            .await
            .len(),
        1
    );

    // Producer-side routing: the client publishes straight to dep-001.in; its record copy
    // makes the runtime start the instance.
    let out = Output::new_in(
        &b.url,
        OutputOptions {
            services: ServicesSource::Value(Arc::new(cfg.clone())),
            device: None,
            queue_to: format!("{p}src-001.out"),
            durable: true,
        },
        Some(&ns),
    )
    .unwrap();
    out.send(&aion_kanban::Kanban::default()).await.unwrap();
    wait_until(
        "Deployment instance 1 scaled from 0 by a client's record",
        || async { replicas(format!("{p}dep-001")).await == 1 },
    )
    .await;
    assert_eq!(
        amqp::take(&ch, &format!("{p}dep-001.in"), 1, WAIT)
            .await
            .len(),
        1
    );

    router.stop().await;
    amqp::delete(&ch, &test_queues(&cfg, &ns)).await;
    cluster.delete_namespace(&ns).await;
}

/// The backstop for a lost client record: a kanban waiting in an instance's input queue with no
/// consumer gets the instance started at the next check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_kanban_starts_its_instance() {
    let Some(cluster) = k8s::require() else {
        return;
    };
    let Some(b) = rabbitmq::require() else { return };
    let ns = cluster.fresh_namespace().await;
    let client = cluster.client().await;
    let p = rabbitmq::unique("wk");
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deps.create(&PostParams::default(), &deployment(&format!("{p}lone-001")))
        .await
        .unwrap();
    let yaml = format!("microservices:\n  {p}lone: {{always: yes}}\n");
    let cfg = services(&yaml);
    let mut opts = router_options(&cfg, &b.url, &client, &ns);
    opts.check_interval = Duration::from_secs(1);
    let router = start_router(opts, None);
    let (conn, ch) = amqp::connect(&b.url).await;
    let input = format!("{p}lone-001.in");
    assert!(amqp::wait_declared(&conn, &input, WAIT).await);
    let replicas = || replicas(&deps, format!("{p}lone-001"));
    // Give the checks a couple of rounds with an empty queue: nothing starts.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(replicas().await, 0, "started with no kanban waiting");
    // A kanban published straight to the input queue, as a client whose record was lost.
    amqp::publish(&ch, &input, br#"{"metadata":{"id":1}}"#).await;
    wait_until("Deployment scaled from 0 for a waiting kanban", || async {
        replicas().await == 1
    })
    .await;
    router.stop().await;
    amqp::delete(&ch, &test_queues(&cfg, &ns)).await;
    cluster.delete_namespace(&ns).await;
}

/// `always`: an instance the runtime started is started again when it stops (here: its
/// Deployment scaled to 0 behind the runtime's back), at the next check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_service_is_started_again_when_it_stops() {
    let Some(cluster) = k8s::require() else {
        return;
    };
    let Some(b) = rabbitmq::require() else { return };
    let ns = cluster.fresh_namespace().await;
    let client = cluster.client().await;
    let p = rabbitmq::unique("al");
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let name = format!("{p}keep-001");
    deps.create(&PostParams::default(), &deployment(&name))
        .await
        .unwrap();
    let yaml = format!("microservices:\n  {p}keep: {{startup: yes, always: yes}}\n");
    let cfg = services(&yaml);
    let mut opts = router_options(&cfg, &b.url, &client, &ns);
    opts.check_interval = Duration::from_secs(1);
    let router = start_router(opts, None);
    let replicas = || replicas(&deps, name.clone());
    wait_until("startup Deployment scaled to 1", || async {
        replicas().await == 1
    })
    .await;
    // The instance stops.
    deps.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    )
    .await
    .unwrap();
    assert_eq!(replicas().await, 0);
    wait_until("always Deployment started again", || async {
        replicas().await == 1
    })
    .await;
    router.stop().await;
    let (_conn, ch) = amqp::connect(&b.url).await;
    amqp::delete(&ch, &test_queues(&cfg, &ns)).await;
    cluster.delete_namespace(&ns).await;
}

/// `multiple` (upstream's `scale_container.go`): a start request for a running Job is refused
/// when `multiple: false` (the Job is left alone; the kanban stays queued for it) and makes a
/// new run when `multiple: true` (deleted and created again from its own spec). Before, the
/// field was parsed and never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_decides_whether_a_running_job_is_started_again() {
    let Some(cluster) = k8s::require() else {
        return;
    };
    let ns = cluster.fresh_namespace().await;
    let client = cluster.client().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let mut running = job("solo-001");
    running.spec.as_mut().unwrap().suspend = Some(false);
    jobs.create(&PostParams::default(), &running).await.unwrap();
    let uid = || async { jobs.get("solo-001").await.unwrap().metadata.uid.unwrap() };
    let first = uid().await;
    let mut lc = KubeLifecycle::new(client.clone(), ns.clone());
    lc.cache_for = Duration::ZERO;

    let single = services("microservices:\n  solo: {always: no}\n");
    let started = lc
        .ensure_running(&single.microservices[0], 1)
        .await
        .unwrap();
    assert_eq!(started, aion_kanban::lifecycle::Started::Refused);
    assert_eq!(uid().await, first, "a running Job is left alone");

    let multiple = services("microservices:\n  solo: {always: no, multiple: yes}\n");
    let started = lc
        .ensure_running(&multiple.microservices[0], 1)
        .await
        .unwrap();
    assert_eq!(started, aion_kanban::lifecycle::Started::Recreated);
    let second = uid().await;
    assert_ne!(second, first, "a new run of the Job");
    let spec = jobs.get("solo-001").await.unwrap().spec.unwrap();
    assert_eq!(spec.suspend, Some(false));
    cluster.delete_namespace(&ns).await;
}
