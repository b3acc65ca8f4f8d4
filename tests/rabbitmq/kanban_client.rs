//! Producer-side routing in aion-kanban's client library against real RabbitMQ brokers
//! (`scripts/rabbitmq.sh start`): every routing rule through the client path (direct to the next
//! input queues, or via the router for what needs it), the record copy reaching the replicator,
//! a target queue the runtime has not declared yet, and reloaded routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aion_integration_tests::component;
use aion_integration_tests::rabbitmq::kanban::{
    all_queues, assert_delivered_as_routed, ids, json_of, rows_by_id, services, start_router,
};
use aion_integration_tests::rabbitmq::{self, amqp};
use aion_kanban::Kanban;
use aion_kanban::client::{Client, ClientConfig};
use aion_kanban::output::{Output, OutputOptions};
use aion_kanban::replicator;
use aion_kanban::router::{RouterOptions, ServicesSource};
use aion_kanban::topology::records_queue_name;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

fn kanban(v: Value) -> Kanban {
    Kanban::decode(v.to_string().as_bytes()).expect("test kanban")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_routing_rule_through_the_client() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("cr");
    let yaml = format!(
        r#"
deviceName: self
devices:
  other: {{addr: 127.0.0.1}}
microservices:
  {p}a:
    scale: 2
    nextService:
      default: [{{name: {p}b}}]
      split:
        - {{name: {p}c, pattern: "0"}}
        - {{name: {p}b, pattern: n}}
      far: [{{name: {p}c, device: other}}]
      cee: [{{name: {p}c}}]
      ghost: [{{name: {p}nothere}}]
  {p}b:
    scale: 2
  {p}c:
    nextService:
      status: [{{name: {p}b, pattern: x}}]
"#
    );
    let cfg = services(&yaml);
    let cfg_other = services(&format!(
        "deviceName: other\nmicroservices:\n  {p}c: {{}}\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kanban.db");
    let mut opts = RouterOptions::new(ServicesSource::Value(Arc::new(cfg.clone())), b.url.clone());
    opts.data_dir = dir.path().join("Data");
    opts.device_amqp.insert("other".into(), b.url_b.clone());
    // This test's own records queue: records left on the shared test broker by another run
    // (or taken by another test's runtime) cannot mix with these.
    opts.namespace = Some(p.clone());
    let records = records_queue_name(Some(&p));
    let r = start_router(opts, Some(&db));
    let mut ob = RouterOptions::new(
        ServicesSource::Value(Arc::new(cfg_other.clone())),
        b.url_b.clone(),
    );
    ob.data_dir = dir.path().join("DataB");
    let rb = start_router(ob, None);
    let (conn, ch) = amqp::connect(&b.url).await;
    let (conn_b, ch_b) = amqp::connect(&b.url_b).await;
    assert!(amqp::wait_declared(&conn, &format!("{p}c-001.out"), WAIT).await);
    assert!(amqp::wait_declared(&conn_b, &format!("{p}c-001.in"), WAIT).await);

    let output = |queue_to: String| {
        Output::new_in(
            &b.url,
            OutputOptions {
                services: ServicesSource::Value(Arc::new(cfg.clone())),
                device: None,
                queue_to,
                durable: true,
            },
            Some(&p),
        )
        .expect("output")
    };
    let a1 = output(format!("{p}a-001.out"));
    let a2 = output(format!("{p}a-002.out"));
    let c1 = output(format!("{p}c-001.out"));
    assert_eq!(a2.instance(), (format!("{p}a"), 2));

    // 1. default key, pattern n: a#2 → b#2 (direct); unknown fields kept; nextDeviceName set.
    a2.send(&kanban(
        json!({"connectionKey": "default", "processNumber": 2, "metadata": {"id": 1}, "custom": 5}),
    ))
    .await
    .unwrap();
    // 2. unknown key falls back to default: a#1 → b#1 (direct).
    a1.send(&kanban(
        json!({"connectionKey": "nokey", "processNumber": 1, "metadata": {"id": 2}}),
    ))
    .await
    .unwrap();
    // 3. several targets, pattern "0" → instance 1 and n → same number (direct).
    a2.send(&kanban(
        json!({"connectionKey": "split", "processNumber": 2, "metadata": {"id": 3}}),
    ))
    .await
    .unwrap();
    // 4. any other pattern → instance 1 (direct).
    c1.send(&kanban(
        json!({"connectionKey": "status", "processNumber": 2, "metadata": {"id": 4}}),
    ))
    .await
    .unwrap();
    // 5. no entry and no default → via the router, not routed.
    c1.send(&kanban(
        json!({"connectionKey": "nothing", "metadata": {"id": 5}}),
    ))
    .await
    .unwrap();
    // 6. terminate kanban → via the router, not routed.
    a1.send(&kanban(
        json!({"connectionKey": "service-broker", "metadata": {"type": "terminate", "id": 6}}),
    ))
    .await
    .unwrap();
    // 7. the entry's device is another device → via the router, forwarded to its broker.
    a1.send(&kanban(
        json!({"connectionKey": "far", "metadata": {"id": 7}}),
    ))
    .await
    .unwrap();
    // 8. the kanban's nextDeviceName names another device → via the router, forwarded.
    a1.send(&kanban(
        json!({"connectionKey": "cee", "nextDeviceName": "other", "metadata": {"id": 8}}),
    ))
    .await
    .unwrap();
    // 9. a target that is not a microservice → via the router, dead-lettered.
    a1.send(&kanban(
        json!({"connectionKey": "ghost", "metadata": {"id": 9}}),
    ))
    .await
    .unwrap();
    // 10. an instance beyond scale → via the router, dead-lettered.
    a1.send(&kanban(
        json!({"connectionKey": "default", "processNumber": 5, "metadata": {"id": 10}}),
    ))
    .await
    .unwrap();

    let b2 = amqp::take(&ch, &format!("{p}b-002.in"), 2, WAIT).await;
    assert_eq!(ids(&b2), vec![1, 3]);
    let first = assert_delivered_as_routed(&b2, 1, "self", 2);
    assert_eq!(first["custom"], 5, "unknown fields are kept");
    assert_eq!(
        ids(&amqp::take(&ch, &format!("{p}b-001.in"), 2, WAIT).await),
        vec![2, 4]
    );
    assert_eq!(
        ids(&amqp::take(&ch, &format!("{p}c-001.in"), 1, WAIT).await),
        vec![3]
    );
    let far = amqp::take(&ch_b, &format!("{p}c-001.in"), 2, WAIT).await;
    assert_eq!(
        ids(&far),
        vec![7, 8],
        "forwarded to the other device's broker"
    );
    assert!(
        far.iter()
            .all(|(b, _)| json_of(b)["nextDeviceName"] == "other")
    );
    let dlq = amqp::take(&ch, &format!("{p}a.dlq"), 2, WAIT).await;
    assert_eq!(ids(&dlq), vec![9, 10]);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let queues =
        ["b-001.in", "b-002.in", "c-001.in", "a-001.in", "a-002.in"].map(|q| format!("{p}{q}"));
    amqp::assert_empty(&conn, &queues).await;
    // Records are published after the hops confirmed, in the background: give the runtime a
    // moment to consume them before stopping it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.stop().await;
    rb.stop().await;

    // Every kanban is in the replicator: the direct ones through the record copy, the others
    // as the router handled them.
    let rows = rows_by_id(&db, &p);
    let by_id: HashMap<i64, (String, String, String)> = rows
        .iter()
        .map(|(id, r)| {
            (
                *id,
                (
                    r.source_queue.clone(),
                    r.outcome.to_string(),
                    r.detail.clone(),
                ),
            )
        })
        .collect();
    assert_eq!(by_id.len(), 10, "{rows:?}");
    for id in [1, 2, 3, 4] {
        assert_eq!(by_id[&id].0, records, "id {id} came as a client record");
        assert_eq!(by_id[&id].1, "routed");
    }
    assert_eq!(by_id[&3].2, format!("{p}c-001.in, {p}b-002.in"));
    assert_eq!(by_id[&1].2, format!("{p}b-002.in"));
    assert_eq!(rows[&1].source, format!("{p}a#2"));
    assert_eq!(
        by_id[&5],
        (format!("{p}c-001.out"), "no-route".into(), String::new())
    );
    assert_eq!(by_id[&6].1, "terminate");
    assert_eq!(by_id[&7].2, format!("other:{p}c#1"));
    assert_eq!(by_id[&8].2, format!("other:{p}c#1"));
    assert!(by_id[&9].2.starts_with("dead-lettered"), "{:?}", by_id[&9]);
    amqp::delete(&ch, &all_queues(&cfg)).await;
    amqp::delete(&ch, &[records]).await;
    amqp::delete(&ch_b, &all_queues(&cfg_other)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_target_is_declared_and_reload_uses_new_routes() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("cn");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yml");
    let v1 = format!(
        "microservices:\n  {p}a:\n    nextService: {{default: [{{name: {p}b}}]}}\n  {p}b: {{}}\n"
    );
    let v2 = format!(
        "microservices:\n  {p}a:\n    nextService: {{default: [{{name: {p}z, pattern: \"0\"}}]}}\n  {p}z: {{scale: 3}}\n"
    );
    std::fs::write(&file, &v1).unwrap();
    // No runtime here: the client declares the queues it publishes to. Its records go to a
    // queue of its own, deleted at the end (nothing left for other runtimes on the broker).
    let out = Output::new_in(
        &b.url,
        OutputOptions {
            services: ServicesSource::File(file.clone()),
            device: Some("self".into()),
            queue_to: format!("{p}a-001.out"),
            durable: true,
        },
        Some(&p),
    )
    .unwrap();
    let (conn, ch) = amqp::connect(&b.url).await;
    assert_eq!(amqp::queue_len(&conn, &format!("{p}b-001.in")).await, None);
    out.send(&kanban(json!({"processNumber": 1, "metadata": {"id": 1}})))
        .await
        .unwrap();
    assert_eq!(
        ids(&amqp::take(&ch, &format!("{p}b-001.in"), 1, WAIT).await),
        vec![1]
    );

    std::fs::write(&file, &v2).unwrap();
    out.send(&kanban(json!({"metadata": {"id": 2}})))
        .await
        .unwrap();
    assert_eq!(
        ids(&amqp::take(&ch, &format!("{p}b-001.in"), 1, WAIT).await),
        vec![2],
        "routes change only on reload"
    );
    let notify = Arc::new(tokio::sync::Notify::new());
    let out = Arc::new(out);
    let watcher = out.reload_on(notify.clone());
    notify.notify_one();
    let deadline = std::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut id = 3;
    while got.is_empty() && std::time::Instant::now() < deadline {
        out.send(&kanban(json!({"processNumber": 2, "metadata": {"id": id}})))
            .await
            .unwrap();
        id += 1;
        // z-001.in exists once the client routed to it (it declares what it publishes to).
        tokio::time::sleep(Duration::from_millis(100)).await;
        if amqp::queue_len(&conn, &format!("{p}z-001.in"))
            .await
            .is_some()
        {
            got = amqp::take(&ch, &format!("{p}z-001.in"), 1, Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        got.len(),
        1,
        "the reloaded route (z, pattern 0) was never used"
    );
    watcher.abort();
    // A bad file keeps the last good routes.
    std::fs::write(&file, "microservices: [").unwrap();
    assert!(out.reload().is_err());
    let before = amqp::queue_len(&conn, &format!("{p}z-001.in"))
        .await
        .unwrap();
    out.send(&kanban(json!({"metadata": {"id": 99}})))
        .await
        .unwrap();
    let after = amqp::take(&ch, &format!("{p}z-001.in"), (before + 1) as usize, WAIT).await;
    assert_eq!(
        after
            .last()
            .map(|(b, _)| json_of(b)["metadata"]["id"].clone()),
        Some(json!(99))
    );

    let mut queues = all_queues(&services(&v1));
    queues.extend(all_queues(&services(&v2)));
    queues.push(records_queue_name(Some(&p)));
    amqp::delete(&ch, &queues).await;
}

/// Cluster mode: every node's namespace runs its own runtime on the master's one broker. A
/// client's records go to its namespace's records queue, so only that namespace's runtime
/// writes them (and starts instances in its own namespace); the other runtime, consuming at
/// the same time with the same services.yml, gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_only_the_runtime_of_the_clients_namespace() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("nsr");
    let cfg = services(&format!(
        "deviceName: self\nmicroservices:\n  {p}a:\n    nextService:\n      default: [{{name: {p}b}}]\n  {p}b: {{}}\n"
    ));
    let (ns_a, ns_b) = (format!("{p}ns-a"), format!("{p}ns-b"));
    let (records_a, records_b) = (
        records_queue_name(Some(&ns_a)),
        records_queue_name(Some(&ns_b)),
    );
    assert_ne!(records_a, records_b);
    let dir = tempfile::tempdir().unwrap();
    let (db_a, db_b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let runtime = |ns: &str, data: &str| {
        // No kubeconfig (`--kubeconfig none`): no lifecycle.
        let mut o = RouterOptions::new(ServicesSource::Value(Arc::new(cfg.clone())), b.url.clone());
        o.namespace = Some(ns.to_string());
        o.data_dir = dir.path().join(data);
        o
    };
    let ra = start_router(runtime(&ns_a, "DataA"), Some(&db_a));
    let rb = start_router(runtime(&ns_b, "DataB"), Some(&db_b));
    let (conn, ch) = amqp::connect(&b.url).await;
    assert!(amqp::wait_declared(&conn, &records_a, WAIT).await);
    assert!(amqp::wait_declared(&conn, &records_b, WAIT).await);
    assert!(amqp::wait_declared(&conn, &format!("{p}b-001.in"), WAIT).await);

    let out = Output::new_in(
        &b.url,
        OutputOptions {
            services: ServicesSource::Value(Arc::new(cfg.clone())),
            device: None,
            queue_to: format!("{p}a-001.out"),
            durable: true,
        },
        Some(&ns_a),
    )
    .unwrap();
    const N: i64 = 20;
    for id in 1..=N {
        out.send(&kanban(json!({"metadata": {"id": id}})))
            .await
            .unwrap();
    }
    let got = amqp::take(&ch, &format!("{p}b-001.in"), N as usize, WAIT).await;
    assert_eq!(ids(&got), (1..=N).collect::<Vec<_>>());

    // Wait until runtime A consumed every record batch (records go out in the background).
    let deadline = tokio::time::Instant::now() + WAIT;
    let rows_of = |db: &std::path::Path| {
        replicator::query(
            db,
            &replicator::Query {
                source: Some(p.clone()),
                limit: 1000,
                ..Default::default()
            },
        )
        .unwrap()
    };
    while rows_of(&db_a).len() < N as usize && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give runtime B the same chance to take a batch it should not see.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(out);
    ra.stop().await;
    rb.stop().await;

    let rows_a = rows_of(&db_a);
    let mut a_ids: Vec<i64> = rows_a
        .iter()
        .map(|(_, r)| {
            assert_eq!(r.source_queue, records_a, "{r:?}");
            assert_eq!(r.outcome, replicator::Outcome::Routed);
            assert_eq!(r.detail, format!("{p}b-001.in"));
            json_of(r.kanban.as_bytes())["metadata"]["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    a_ids.sort();
    a_ids.dedup();
    assert_eq!(a_ids, (1..=N).collect::<Vec<_>>(), "runtime A's records");
    assert_eq!(
        rows_of(&db_b),
        Vec::new(),
        "runtime B got records of namespace A"
    );
    assert_eq!(amqp::queue_len(&conn, &records_a).await, Some(0));
    assert_eq!(amqp::queue_len(&conn, &records_b).await, Some(0));
    amqp::delete(&ch, &all_queues(&cfg)).await;
    amqp::delete(&ch, &[records_a, records_b]).await;
}

/// A client opens one connection for its receiver, its sender and its producer-side output
/// (lapin runs an I/O thread per connection; `bench/README.md` shows what more cost on a
/// 2-core device), as the broker itself reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_receives_sends_and_routes_on_one_connection() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("c1");
    let yaml = format!(
        "deviceName: self\nmicroservices:\n  {p}a:\n    nextService:\n      default: [{{name: {p}b}}]\n  {p}b: {{}}\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("services.yml");
    std::fs::write(&path, &yaml).expect("services.yml");
    let cfg = services(&yaml);
    let (conn, ch) = amqp::connect(&b.url).await;
    let topology = aion_kanban::topology::plan(&cfg);
    aion_kanban::amqp::declare(&ch, &topology)
        .await
        .expect("declare");
    let (input, queue_to, next) = (
        format!("{p}a-001.in"),
        format!("{p}a-001.out"),
        format!("{p}b-001.in"),
    );
    let mut client = Client::new(ClientConfig {
        url: b.url.clone(),
        queues: vec![input.clone()],
        queue_to: queue_to.clone(),
        services: Some(path),
        device: None,
        namespace: Some(p.clone()),
    })
    .expect("client");
    amqp::publish(&ch, &input, &kanban(json!({"metadata": {"n": 1}})).encode()).await;
    let m = receive(&mut client.receiver).await;
    let k = m.kanban().expect("kanban");
    client.forward(m, &k).await.expect("routed and acked");
    client.sender.send(&queue_to, &k).await.expect("plain send");
    // Routed producer-side: straight to the next instance's input queue.
    let got = amqp::take(&ch, &next, 1, WAIT).await;
    assert_eq!(got.len(), 1, "kanban at {next}");
    assert_eq!(json_of(&got[0].0)["metadata"]["n"], 1);
    assert_eq!(amqp::take(&ch, &queue_to, 1, WAIT).await.len(), 1);

    // One connection under the instance's name, carrying the three parts' channels.
    let listed = rabbitmq::ctl("a", &["list_connections", "channels", "client_properties"])
        .expect("rabbitmqctl list_connections");
    let name = format!("aion-kanban-client {queue_to}");
    let mine: Vec<&str> = listed.lines().filter(|l| l.contains(&name)).collect();
    assert_eq!(mine.len(), 1, "connections named {name:?}:\n{listed}");
    let channels: u32 = mine[0]
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("channel count in {:?}", mine[0]));
    assert_eq!(
        channels, 3,
        "receiver, output and sender channels: {}",
        mine[0]
    );

    drop(client);
    let mut queues: Vec<String> = topology.into_iter().map(|q| q.name).collect();
    queues.retain(|q| q.starts_with(&p));
    queues.push(records_queue_name(Some(&p)));
    amqp::delete(&ch, &queues).await;
    let _ = conn.close(200, "done".into()).await;
}

/// `requeue` puts a kanban back (redelivered, nothing lost); `success` removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_redelivers_and_success_removes() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("rq");
    let queue = format!("{p}a-001.in");
    let (conn, ch) = amqp::connect(&b.url).await;
    ch.queue_declare(
        queue.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    amqp::publish(&ch, &queue, br#"{"metadata": {"id": 7}}"#).await;
    let mut rx = aion_kanban::client::Receiver::start(&b.url, std::slice::from_ref(&queue), 1);
    let first = receive(&mut rx).await;
    assert!(!first.redelivered());
    assert_eq!(first.kanban().unwrap().metadata["id"], 7);
    first.requeue().await.unwrap();
    let again = receive(&mut rx).await;
    assert!(again.redelivered(), "the requeued kanban comes back marked");
    assert_eq!(again.kanban().unwrap().metadata["id"], 7);
    again.success().await.unwrap();
    drop(rx);
    // Acked: once the receiver's channel is gone, nothing comes back to the queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    amqp::assert_empty(&conn, std::slice::from_ref(&queue)).await;
    amqp::delete(&ch, &[queue]).await;
}

/// The next kanban `rx` receives (panics after [`WAIT`]).
async fn receive(rx: &mut aion_kanban::client::Receiver) -> aion_kanban::client::Message {
    tokio::time::timeout(WAIT, rx.next())
        .await
        .expect("a kanban within the wait")
        .expect("receiver open")
}
