//! aion-kanban's router against real RabbitMQ brokers (`scripts/rabbitmq.sh start`): every
//! routing rule, dead-lettering, cross-device forwarding between two brokers, topology
//! re-declared on configuration change, and the router killed mid-stream with no loss.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aion_integration_tests::component;
use aion_integration_tests::rabbitmq::kanban::{
    all_queues, assert_delivered_as_routed, ids, json_of, rows_by_id, services, start_router,
};
use aion_integration_tests::rabbitmq::{self, amqp};
use aion_kanban::replicator;
use aion_kanban::router::{self, RouterOptions, ServicesSource};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

fn header(props: &lapin::BasicProperties, key: &str) -> Option<String> {
    aion_kanban::amqp::header_str(props, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_routing_rule() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("rr");
    let cfg = services(&format!(
        r#"
deviceName: self
microservices:
  {p}a:
    scale: 2
    nextService:
      default: [{{name: {p}b}}]
      split:
        - {{name: {p}c, pattern: "0"}}
        - {{name: {p}b, pattern: n}}
  {p}b:
    scale: 2
  {p}c:
    nextService:
      status: [{{name: {p}b, pattern: x}}]
"#
    ));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kanban.db");
    let mut opts = RouterOptions::new(ServicesSource::Value(Arc::new(cfg.clone())), b.url.clone());
    opts.data_dir = dir.path().join("Data");
    let r = start_router(opts, Some(&db));
    let (conn, ch) = amqp::connect(&b.url).await;
    assert!(
        amqp::wait_declared(&conn, &format!("{p}c-001.out"), WAIT).await,
        "router did not declare the topology"
    );

    let send = |q: String, v: Value| {
        let ch = ch.clone();
        async move { amqp::publish(&ch, &q, v.to_string().as_bytes()).await }
    };
    // 1. default key, pattern n: a#2 → b#2; unknown fields kept; nextDeviceName set.
    send(
        format!("{p}a-002.out"),
        json!({"connectionKey": "default", "processNumber": 2, "metadata": {"id": 1}, "custom": 5}),
    )
    .await;
    // 2. unknown key falls back to default: a#1 → b#1.
    send(
        format!("{p}a-001.out"),
        json!({"connectionKey": "nokey", "processNumber": 1, "metadata": {"id": 2}}),
    )
    .await;
    // 3. several targets, pattern "0" → instance 1 and n → same number.
    send(
        format!("{p}a-002.out"),
        json!({"connectionKey": "split", "processNumber": 2, "metadata": {"id": 3}}),
    )
    .await;
    // 4. any other pattern → instance 1 (processNumber 2, pattern x).
    send(
        format!("{p}c-001.out"),
        json!({"connectionKey": "status", "processNumber": 2, "metadata": {"id": 4}}),
    )
    .await;
    // 5. no entry and no default → not routed.
    send(
        format!("{p}c-001.out"),
        json!({"connectionKey": "nothing", "metadata": {"id": 5}}),
    )
    .await;
    // 6. terminate kanban from a non-always service → not routed.
    send(
        format!("{p}a-001.out"),
        json!({"connectionKey": "service-broker", "metadata": {"type": "terminate", "id": 6}}),
    )
    .await;

    let b2 = amqp::take(&ch, &format!("{p}b-002.in"), 2, WAIT).await;
    assert_eq!(ids(&b2), vec![1, 3]);
    let first = assert_delivered_as_routed(&b2, 1, "self", 2);
    assert_eq!(first["custom"], 5, "unknown fields are kept");
    let b1 = amqp::take(&ch, &format!("{p}b-001.in"), 2, WAIT).await;
    assert_eq!(ids(&b1), vec![2, 4]);
    let c1 = amqp::take(&ch, &format!("{p}c-001.in"), 1, WAIT).await;
    assert_eq!(ids(&c1), vec![3]);

    // Nothing else arrived anywhere (5 and 6 were not routed).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queues = ["b-001.in", "b-002.in", "c-001.in", "a-001.in"].map(|q| format!("{p}{q}"));
    amqp::assert_empty(&conn, &queues).await;
    r.stop().await;

    // The replicator recorded every kanban with what happened to it.
    let by_id = rows_by_id(&db, &p);
    assert_eq!(by_id.len(), 6, "{by_id:?}");
    assert_eq!(by_id[&5].outcome, replicator::Outcome::NoRoute);
    assert_eq!(by_id[&6].outcome, replicator::Outcome::Terminate);
    assert!(
        [1, 2, 3, 4]
            .iter()
            .all(|i| by_id[i].outcome == replicator::Outcome::Routed)
    );
    assert_eq!(by_id[&3].connection_key, "split");
    assert_eq!(by_id[&3].detail, format!("{p}c-001.in, {p}b-002.in"));
    amqp::delete(&ch, &all_queues(&cfg)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_and_consumer_keeps_going() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("dl");
    let cfg = services(&format!(
        r#"
microservices:
  {p}a:
    nextService:
      default: [{{name: {p}b}}]
      ghost: [{{name: {p}nothere}}]
  {p}b:
    scale: 2
"#
    ));
    let mut opts = RouterOptions::new(ServicesSource::Value(Arc::new(cfg.clone())), b.url.clone());
    opts.device = Some("self".into());
    let r = start_router(opts, None);
    let (conn, ch) = amqp::connect(&b.url).await;
    assert!(amqp::wait_declared(&conn, &format!("{p}b-002.out"), WAIT).await);
    let out = format!("{p}a-001.out");
    amqp::publish(&ch, &out, b"this is not json{").await;
    amqp::publish(&ch, &out, br#"{"processNumber": "seven"}"#).await;
    amqp::publish(
        &ch,
        &out,
        br#"{"processNumber": 5, "metadata": {"id": "beyond-scale"}}"#,
    )
    .await;
    amqp::publish(
        &ch,
        &out,
        br#"{"connectionKey": "ghost", "metadata": {"id": "ghost"}}"#,
    )
    .await;
    amqp::publish(
        &ch,
        &out,
        br#"{"processNumber": 2, "metadata": {"id": "good"}}"#,
    )
    .await;

    // The good kanban after the bad ones is still routed.
    let good = amqp::take(&ch, &format!("{p}b-002.in"), 1, WAIT).await;
    assert_eq!(good.len(), 1, "consumer stopped after bad input");
    assert_eq!(json_of(&good[0].0)["metadata"]["id"], "good");

    let dlq = amqp::take(&ch, &format!("{p}a.dlq"), 4, WAIT).await;
    assert_eq!(dlq.len(), 4);
    let reasons: Vec<String> = dlq
        .iter()
        .map(|(_, pr)| header(pr, "x-aion-reason").unwrap_or_default())
        .collect();
    assert_eq!(dlq[0].0, b"this is not json{", "the original body is kept");
    assert!(reasons[0].contains("not UTF-8 JSON"), "{reasons:?}");
    assert!(reasons[1].contains("not a kanban"), "{reasons:?}");
    assert!(reasons[2].contains("instance 5"), "{reasons:?}");
    assert!(reasons[3].contains("nothere"), "{reasons:?}");
    assert!(
        dlq.iter()
            .all(|(_, pr)| header(pr, "x-aion-source-queue").as_deref() == Some(out.as_str()))
    );

    // A microservice failing a message (client library) sends it to its service's DLQ.
    amqp::publish(
        &ch,
        &format!("{p}b-001.in"),
        br#"{"metadata": {"id": "fail-me"}}"#,
    )
    .await;
    let mut rx = aion_kanban::client::Receiver::start(&b.url, &[format!("{p}b-001.in")], 1);
    let m = tokio::time::timeout(WAIT, rx.next())
        .await
        .expect("received")
        .expect("message");
    assert_eq!(m.kanban().unwrap().metadata["id"], "fail-me");
    m.fail().await.unwrap();
    let failed = amqp::take(&ch, &format!("{p}b.dlq"), 1, WAIT).await;
    assert_eq!(failed.len(), 1);
    drop(rx);
    r.stop().await;
    amqp::delete(&ch, &all_queues(&cfg)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_device_forwarding_with_files() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("xd");
    let home_a = tempfile::tempdir().unwrap();
    let home_b = tempfile::tempdir().unwrap();
    let cfg_a = services(&format!(
        r#"
deviceName: self
devices:
  other: {{addr: 127.0.0.1}}
microservices:
  {p}a:
    nextService:
      default: [{{name: {p}c, device: other}}]
      local: [{{name: {p}c}}]
  {p}c: {{}}
"#
    ));
    let cfg_b = services(&format!(
        "deviceName: other\nmicroservices:\n  {p}c: {{}}\n"
    ));
    std::fs::create_dir_all(home_a.path().join(format!("Data/{p}a_1"))).unwrap();
    std::fs::write(
        home_a.path().join(format!("Data/{p}a_1/pic.jpg")),
        b"\x89jpegbytes",
    )
    .unwrap();

    let mut oa = RouterOptions::new(
        ServicesSource::Value(Arc::new(cfg_a.clone())),
        b.url.clone(),
    );
    oa.data_dir = home_a.path().join("Data");
    oa.device_amqp.insert("other".into(), b.url_b.clone());
    let mut ob = RouterOptions::new(
        ServicesSource::Value(Arc::new(cfg_b.clone())),
        b.url_b.clone(),
    );
    ob.data_dir = home_b.path().join("Data");
    let db_b = home_b.path().join("kanban.db");
    let ra = start_router(oa, None);
    let rb = start_router(ob, Some(&db_b));
    let (conn_a, ch_a) = amqp::connect(&b.url).await;
    let (conn_b, ch_b) = amqp::connect(&b.url_b).await;
    assert!(amqp::wait_declared(&conn_a, &format!("{p}a-001.out"), WAIT).await);
    assert!(amqp::wait_declared(&conn_b, &format!("{p}c-001.in"), WAIT).await);

    // By the nextService entry's `device`, with a file.
    let k = json!({"connectionKey": "default", "fileList": [format!("Data/{p}a_1/pic.jpg")], "metadata": {"id": 1}});
    amqp::publish(&ch_a, &format!("{p}a-001.out"), k.to_string().as_bytes()).await;
    // By the kanban's nextDeviceName, overriding a local entry.
    let k = json!({"connectionKey": "local", "nextDeviceName": "other", "metadata": {"id": 2}});
    amqp::publish(&ch_a, &format!("{p}a-001.out"), k.to_string().as_bytes()).await;

    let got = amqp::take(&ch_b, &format!("{p}c-001.in"), 2, WAIT).await;
    assert_eq!(
        got.len(),
        2,
        "forwarded kanbans did not arrive on the other broker"
    );
    let mut got: Vec<Value> = got.iter().map(|(b, _)| json_of(b)).collect();
    got.sort_by_key(|v| v["metadata"]["id"].as_i64());
    let stored = home_b.path().join(format!("Data/{p}c_1/pic.jpg"));
    assert_eq!(got[0]["fileList"], json!([stored.to_string_lossy()]));
    assert_eq!(std::fs::read(&stored).unwrap(), b"\x89jpegbytes");
    assert_eq!(got[0]["nextDeviceName"], "other");
    assert_eq!(got[1]["metadata"]["id"], 2);
    assert_eq!(
        amqp::queue_len(&conn_a, &format!("{p}c-001.in")).await,
        Some(0),
        "nothing delivered locally"
    );
    ra.stop().await;
    rb.stop().await;
    let rows = replicator::query(
        &db_b,
        &replicator::Query {
            outcome: Some(replicator::Outcome::ForwardedIn),
            limit: 10,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        rows.iter()
            .filter(|(_, r)| r.detail == format!("{p}c-001.in"))
            .count()
            == 2,
        "{rows:?}"
    );
    amqp::delete(&ch_a, &all_queues(&cfg_a)).await;
    amqp::delete(&ch_b, &all_queues(&cfg_b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_redeclared_when_services_file_changes() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("rl");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yml");
    std::fs::write(&file, format!("microservices:\n  {p}a: {{}}\n")).unwrap();
    let mut opts = RouterOptions::new(ServicesSource::File(file.clone()), b.url.clone());
    opts.watch_interval = Duration::from_millis(200);
    let r = start_router(opts, None);
    let (conn, ch) = amqp::connect(&b.url).await;
    assert!(amqp::wait_declared(&conn, &format!("{p}a-001.in"), WAIT).await);
    assert_eq!(amqp::queue_len(&conn, &format!("{p}z-001.in")).await, None);
    std::fs::write(
        &file,
        format!("microservices:\n  {p}a:\n    nextService: {{default: [{{name: {p}z}}]}}\n  {p}z: {{scale: 2}}\n"),
    )
    .unwrap();
    assert!(
        amqp::wait_declared(&conn, &format!("{p}z-002.in"), WAIT).await,
        "new service's queues not declared"
    );
    // And the new route is live.
    amqp::publish(&ch, &format!("{p}a-001.out"), br#"{"metadata":{"id":1}}"#).await;
    assert_eq!(
        amqp::take(&ch, &format!("{p}z-001.in"), 1, WAIT)
            .await
            .len(),
        1
    );
    r.stop().await;
    let cfg = router::load_services(&file).unwrap();
    amqp::delete(&ch, &all_queues(&cfg)).await;
}

/// Not a test on its own: the router process that `router_killed_mid_stream_loses_nothing`
/// starts (this test binary re-executed) and kills with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of router_killed_mid_stream_loses_nothing"]
async fn router_child_process() {
    let Ok(file) = std::env::var("AION_KANBAN_CHILD_SERVICES") else {
        return;
    };
    let url = std::env::var("AION_KANBAN_CHILD_URL").expect("url");
    let mut opts = RouterOptions::new(ServicesSource::File(PathBuf::from(file)), url);
    opts.prefetch = 32;
    router::run(opts, std::future::pending())
        .await
        .expect("router");
}

fn spawn_child(file: &Path, url: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kanban_router::router_child_process",
            "--ignored",
            "--nocapture",
        ])
        .env("AION_KANBAN_CHILD_SERVICES", file)
        .env("AION_KANBAN_CHILD_URL", url)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn router child")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_mid_stream_loses_nothing() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("kl");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yml");
    let yaml = format!(
        "microservices:\n  {p}a:\n    nextService: {{default: [{{name: {p}b}}]}}\n  {p}b: {{}}\n"
    );
    std::fs::write(&file, &yaml).unwrap();
    let cfg = services(&yaml);
    let (conn, ch) = amqp::connect(&b.url).await;

    let mut child = spawn_child(&file, &b.url);
    assert!(
        amqp::wait_declared(&conn, &format!("{p}b-001.in"), WAIT).await,
        "child router did not start"
    );
    const N: usize = 2000;
    let out = format!("{p}a-001.out");
    let input = format!("{p}b-001.in");
    let publisher = {
        let ch = ch.clone();
        let out = out.clone();
        tokio::spawn(async move {
            for i in 0..N {
                amqp::publish(
                    &ch,
                    &out,
                    json!({"metadata": {"seq": i}}).to_string().as_bytes(),
                )
                .await;
            }
        })
    };
    // Kill the router while kanbans are flowing.
    let deadline = std::time::Instant::now() + WAIT;
    while amqp::queue_len(&conn, &input).await.unwrap_or(0) < 200
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL the router");
    child.wait().unwrap();
    let at_kill = amqp::queue_len(&conn, &input).await.unwrap_or(0);
    publisher.await.unwrap();
    assert!(
        (at_kill as usize) < N,
        "router finished before it was killed; raise N"
    );

    let mut child = spawn_child(&file, &b.url);
    let mut got = Vec::new();
    let mut seqs: HashSet<u64> = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seqs.len() < N && std::time::Instant::now() < deadline {
        let batch = amqp::take(&ch, &input, N, Duration::from_secs(1)).await;
        seqs.extend(
            batch
                .iter()
                .map(|(b, _)| json_of(b)["metadata"]["seq"].as_u64().unwrap()),
        );
        got.extend(batch);
    }
    // Late duplicates (redelivered after the kill) are fine; give them a moment to show up.
    got.extend(amqp::take(&ch, &input, N, Duration::from_millis(500)).await);
    child.kill().unwrap();
    child.wait().unwrap();
    let missing: Vec<usize> = (0..N).filter(|i| !seqs.contains(&(*i as u64))).collect();
    eprintln!(
        "router killed after {at_kill} of {N} kanbans had arrived; after restart {} delivered ({} duplicates)",
        got.len(),
        got.len().saturating_sub(seqs.len())
    );
    assert!(missing.is_empty(), "lost kanbans: {missing:?}");
    amqp::delete(&ch, &all_queues(&cfg)).await;
}

/// The broker cancels a consumer without closing its channel when the consumed queue goes away
/// (deleted, or its queue process down, as around a broker restart). The router must notice,
/// subscribe again to every queue (re-declaring the topology), and route what arrives there
/// next. Before, the cancelled consumer dropped out of the router's merged deliveries while the
/// others kept it busy: the queue was never consumed again (the router path of
/// `broker_restart_mid_stream_loses_nothing` stopped at 320 of 1,500 kanbans).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_resubscribes_after_the_broker_cancels_a_consumer() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("cc");
    let cfg = services(&format!(
        r#"
microservices:
  {p}a:
    scale: 2
    nextService: {{default: [{{name: {p}b, pattern: n}}]}}
  {p}b:
    scale: 2
"#
    ));
    let r = start_router(
        RouterOptions::new(ServicesSource::Value(Arc::new(cfg.clone())), b.url.clone()),
        None,
    );
    let (conn, ch) = amqp::connect(&b.url).await;
    let (out1, out2) = (format!("{p}a-001.out"), format!("{p}a-002.out"));
    assert!(amqp::wait_declared(&conn, &format!("{p}b-002.in"), WAIT).await);
    // Both outputs are routed.
    for (q, id) in [(&out1, 1), (&out2, 2)] {
        amqp::publish(
            &ch,
            q,
            json!({"processNumber": id, "metadata": {"id": id}})
                .to_string()
                .as_bytes(),
        )
        .await;
    }
    assert_eq!(
        ids(&amqp::take(&ch, &format!("{p}b-001.in"), 1, WAIT).await),
        vec![1]
    );
    assert_eq!(
        ids(&amqp::take(&ch, &format!("{p}b-002.in"), 1, WAIT).await),
        vec![2]
    );

    // Deleting a-001.out cancels the router's consumer of it (basic.cancel); the channel and
    // the router's other consumers stay.
    amqp::delete(&ch, std::slice::from_ref(&out1)).await;
    assert!(
        amqp::wait_declared(&conn, &out1, WAIT).await,
        "the router did not notice its cancelled consumer (no new session re-declared {out1})"
    );
    amqp::publish(
        &ch,
        &out1,
        json!({"processNumber": 1, "metadata": {"id": 3}})
            .to_string()
            .as_bytes(),
    )
    .await;
    amqp::publish(
        &ch,
        &out2,
        json!({"processNumber": 2, "metadata": {"id": 4}})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(
        ids(&amqp::take(&ch, &format!("{p}b-001.in"), 1, WAIT).await),
        vec![3],
        "a kanban on the re-declared queue was not routed"
    );
    assert_eq!(
        ids(&amqp::take(&ch, &format!("{p}b-002.in"), 1, WAIT).await),
        vec![4]
    );
    r.stop().await;
    amqp::delete(&ch, &all_queues(&cfg)).await;
}
