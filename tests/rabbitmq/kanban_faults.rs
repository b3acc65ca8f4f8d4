//! aion-kanban under faults, against real RabbitMQ brokers (`scripts/rabbitmq.sh start`):
//! * the broker restarted mid-stream (`scripts/rabbitmq.sh restart b`): the router, the client
//!   library's receivers and producer-side outputs reconnect and resume; nothing is lost
//!   (at-least-once: every id arrives, duplicates allowed);
//! * SIGHUP: a router process and a microservice process (client library, producer-side routing)
//!   re-read services.yml; the router re-declares the topology and both use the new routes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aion_integration_tests::component;
use aion_integration_tests::rabbitmq::kanban::{all_queues, ids, json_of, services, start_router};
use aion_integration_tests::rabbitmq::{self, amqp};
use aion_kanban::amqp::SharedConnection;
use aion_kanban::client::{Client, Receiver};
use aion_kanban::output::{Output, OutputOptions};
use aion_kanban::router::{self, RouterOptions, ServicesSource};
use lapin::options::BasicPublishOptions;
use serde_json::json;
use tokio::sync::Mutex;

const WAIT: Duration = Duration::from_secs(20);

/// A microservice instance: receive on `input`, send each kanban on through producer-side
/// routing, ack only after the next hop confirmed (requeue otherwise). Receiver and output
/// share one connection, as in [`Client`]: a broker restart must bring both back.
fn spawn_service(url: &str, cfg: &aion_model::ServicesFile, input: String, queue_to: String) {
    let conn = SharedConnection::new(url, "test-service");
    let out = Output::on(
        conn.clone(),
        OutputOptions {
            services: ServicesSource::Value(Arc::new(cfg.clone())),
            device: None,
            queue_to,
            durable: true,
        },
        None,
    )
    .expect("output");
    let mut rx = Receiver::start_on(conn, &[input], 32);
    tokio::spawn(async move {
        while let Some(m) = rx.next().await {
            let Ok(k) = m.kanban() else {
                let _ = m.fail().await;
                continue;
            };
            match out.send(&k).await {
                Ok(()) => {
                    let _ = m.success().await;
                }
                Err(_) => {
                    let _ = m.requeue().await;
                }
            }
        }
    });
}

/// Collect the distinct `metadata.seq` values arriving on `queue` (acking each).
fn spawn_collector(
    url: &str,
    queue: String,
    seen: Arc<Mutex<HashSet<u64>>>,
    total: Arc<AtomicUsize>,
) {
    let mut rx = Receiver::start(url, &[queue], 64);
    tokio::spawn(async move {
        while let Some(m) = rx.next().await {
            if let Some(seq) = json_of(m.data())["metadata"]["seq"].as_u64() {
                seen.lock().await.insert(seq);
                total.fetch_add(1, Ordering::Relaxed);
            }
            let _ = m.success().await;
        }
    });
}

/// Publish to `queue` like an upstream client (persistent, confirmed), reconnecting and
/// retrying until the broker confirmed.
async fn publish_retrying(
    url: &str,
    link: &mut Option<(lapin::Connection, lapin::Channel)>,
    queue: &str,
    body: &[u8],
) {
    loop {
        if link.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
            // Bounded like the product's connect: a broker that is stopping or starting may
            // accept TCP and never answer the handshake.
            let connect = tokio::time::timeout(
                aion_kanban::amqp::CONNECT_TIMEOUT,
                lapin::Connection::connect(url, Default::default()),
            );
            *link = match connect.await {
                Ok(Ok(c)) => match c.create_channel().await {
                    Ok(ch) if ch.confirm_select(Default::default()).await.is_ok() => Some((c, ch)),
                    _ => None,
                },
                _ => None,
            };
        }
        if let Some((_, ch)) = link.as_ref() {
            let r = ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    aion_kanban::amqp::json_props(),
                )
                .await;
            if let Ok(c) = r
                && let Ok(Ok(c)) = tokio::time::timeout(aion_kanban::amqp::CONFIRM_TIMEOUT, c).await
                && c.is_ack()
            {
                return;
            }
            *link = None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (messages, consumers) of `queue`, for a failure's message.
async fn queue_state(conn: &lapin::Connection, queue: &str) -> Option<(u32, u32)> {
    let ch = conn.create_channel().await.ok()?;
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .ok()?;
    Some((q.message_count(), q.consumer_count()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    // The router's and clients' reconnect warnings end up in the test output when it fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "aion_kanban=info".into()),
        )
        .with_test_writer()
        .try_init();
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::exclusive_async().await;
    // The broker this test restarts must be the script's instance b.
    if !b.url_b.contains("127.0.0.1:5673") {
        let msg = format!(
            "broker restart needs scripts/rabbitmq.sh's instance b (127.0.0.1:5673), not {}",
            aion_kanban::amqp::redact(&b.url_b)
        );
        if std::env::var(rabbitmq::REQUIRE_ENV).is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let url = b.url_b.clone();
    let p = rabbitmq::unique("br");
    let cfg = services(&format!(
        r#"
microservices:
  {p}a:
    scale: 2
    nextService: {{default: [{{name: {p}b, pattern: n}}]}}
  {p}b:
    scale: 2
    nextService: {{default: [{{name: {p}c, pattern: n}}]}}
  {p}c:
    scale: 2
"#
    ));
    let r = start_router(
        RouterOptions::new(ServicesSource::Value(Arc::new(cfg.clone())), url.clone()),
        None,
    );
    let (conn, _) = amqp::connect(&url).await;
    assert!(amqp::wait_declared(&conn, &format!("{p}c-002.in"), WAIT).await);
    let _ = conn.close(200, "".into()).await;

    // b#1 and b#2 route producer-side to c#1 / c#2; collectors at the end of both paths.
    for n in 1..=2 {
        spawn_service(
            &url,
            &cfg,
            format!("{p}b-00{n}.in"),
            format!("{p}b-00{n}.out"),
        );
    }
    let seen: Vec<Arc<Mutex<HashSet<u64>>>> = (0..2).map(|_| Arc::default()).collect();
    let total = Arc::new(AtomicUsize::new(0));
    for n in 1..=2 {
        spawn_collector(
            &url,
            format!("{p}c-00{n}.in"),
            seen[n - 1].clone(),
            total.clone(),
        );
    }

    // The producers send until told to stop, so the restart always falls mid-stream however
    // long the broker takes to stop and start on a loaded machine. `sent[i]`: how many
    // kanbans path i had confirmed (seq 0..sent[i]).
    let sent: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::default()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Path 1: a#1 routes producer-side (client library) → b-001.in → b#1 → c-001.in.
    let p1 = {
        let (url, cfg, p) = (url.clone(), cfg.clone(), p.clone());
        let (sent, stop) = (sent[0].clone(), stop.clone());
        tokio::spawn(async move {
            let out = Output::new(
                &url,
                OutputOptions {
                    services: ServicesSource::Value(Arc::new(cfg)),
                    device: None,
                    queue_to: format!("{p}a-001.out"),
                    durable: true,
                },
            )
            .expect("output");
            for seq in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = aion_kanban::Kanban::decode(
                    json!({"metadata": {"seq": seq}}).to_string().as_bytes(),
                )
                .unwrap();
                while out.send(&k).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        })
    };
    // Path 2: an upstream-style client publishes to a-002.out → router → b-002.in → b#2 → c-002.in.
    let p2 = {
        let (url, p) = (url.clone(), p.clone());
        let (sent, stop) = (sent[1].clone(), stop.clone());
        tokio::spawn(async move {
            let mut link = None;
            for seq in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = json!({"processNumber": 2, "metadata": {"seq": seq}}).to_string();
                publish_retrying(&url, &mut link, &format!("{p}a-002.out"), body.as_bytes()).await;
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        })
    };
    let sent_now = || {
        sent.iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    };

    // Restart the broker once kanbans flow through both paths.
    let deadline = Instant::now() + WAIT;
    loop {
        let (a, b) = (seen[0].lock().await.len(), seen[1].lock().await.len());
        if a >= 100 && b >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "kanbans did not flow ({a}, {b})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = sent_now();
    tokio::task::spawn_blocking(|| rabbitmq::restart("b"))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let restarted = sent_now();

    // Both producers must get through the restarted broker: 100 more kanbans each.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = sent_now();
        if now.iter().zip(&restarted).all(|(n, r)| *n >= r + 100) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "producers did not resume after the broker restart: sent {restarted:?} when it was \
             up again, {now:?} a minute later"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    p1.await.unwrap();
    p2.await.unwrap();
    let sent = sent_now();

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let arrived: Vec<usize> =
            futures::future::join_all(seen.iter().map(|s| async { s.lock().await.len() })).await;
        if arrived == sent {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<Vec<u64>> = seen
                .iter()
                .zip(&sent)
                .map(|(s, n)| {
                    let s = s.try_lock().map(|s| s.clone()).unwrap_or_default();
                    (0..*n as u64).filter(|i| !s.contains(i)).take(20).collect()
                })
                .collect();
            // Where the missing kanbans wait: each queue's messages and consumers now.
            let (conn, _) = amqp::connect(&url).await;
            let mut queues = Vec::new();
            for q in all_queues(&cfg) {
                queues.push(format!("{q}: {:?}", queue_state(&conn, &q).await));
            }
            panic!(
                "after the broker restart: {arrived:?} of {sent:?} arrived; first missing \
                 {missing:?}; queues (messages, unacked or not, and consumers): {queues:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Late duplicates are fine; count them for the log.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all: usize = sent.iter().sum();
    eprintln!(
        "broker restarted after {before:?} kanbans were sent ({restarted:?} when it was up \
         again); all {sent:?} arrived, {} deliveries in all ({} duplicates)",
        total.load(Ordering::Relaxed),
        total.load(Ordering::Relaxed) - all
    );
    r.stop().await;
    let (_, ch) = amqp::connect(&url).await;
    amqp::delete(&ch, &all_queues(&cfg)).await;
}

/// The link between the router and its broker stops carrying packets without a reset (no FIN,
/// no RST: a NAT or firewall that forgot the flow). Both of the router's connections stay open
/// and silent; the router must give up on them, connect again and route what waits. With the
/// broker's heartbeat interval (60 s) lapin gives up only after two minutes without a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_reconnects_when_its_link_to_the_broker_freezes() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("fz");
    let cfg = services(&format!(
        "microservices:\n  {p}a:\n    nextService: {{default: [{{name: {p}b}}]}}\n  {p}b: {{}}\n"
    ));
    let proxy = rabbitmq::FreezingProxy::start(&b.url).await;
    let r = start_router(
        RouterOptions::new(
            ServicesSource::Value(Arc::new(cfg.clone())),
            proxy.url(&b.url),
        ),
        None,
    );
    let (conn, ch) = amqp::connect(&b.url).await;
    let (from, to) = (format!("{p}a-001.out"), format!("{p}b-001.in"));
    assert!(amqp::wait_declared(&conn, &to, WAIT).await);
    amqp::publish(&ch, &from, br#"{"metadata":{"id":0}}"#).await;
    assert_eq!(ids(&amqp::take(&ch, &to, 1, WAIT).await), vec![0]);

    let connections = proxy.accepted();
    proxy.freeze();
    // More than the router's prefetch: some go to its frozen consumer (the broker hands them
    // back once it closes that connection), the rest wait for a new one.
    let sent: Vec<i64> = (1..=40).collect();
    for id in &sent {
        amqp::publish(
            &ch,
            &from,
            json!({"metadata": {"id": id}}).to_string().as_bytes(),
        )
        .await;
    }
    // Half of the two minutes lapin would take on the broker's heartbeat interval.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while got.len() < sent.len() && Instant::now() < deadline {
        let wait = deadline.saturating_duration_since(Instant::now());
        got.extend(ids(
            &amqp::take(&ch, &to, sent.len() - got.len(), wait).await
        ));
        // At-least-once: a kanban may come twice.
        got.sort_unstable();
        got.dedup();
    }
    assert_eq!(
        got,
        sent,
        "kanbans routed after the link froze (the router made {} new connection(s))",
        proxy.accepted() - connections
    );
    r.stop().await;
    amqp::delete(&ch, &all_queues(&cfg)).await;
    let _ = conn.close(200, "".into()).await;
}

/// Not a test on its own: the process `sighup_reloads_router_and_client` starts (this test
/// binary re-executed) as the router (`AION_KANBAN_FAULTS_CHILD=router`) or as a microservice
/// using the client library from its environment (`=client`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of sighup_reloads_router_and_client"]
async fn faults_child_process() {
    match std::env::var("AION_KANBAN_FAULTS_CHILD").as_deref() {
        Ok("router") => {
            let file = std::env::var("AION_SERVICES").expect("AION_SERVICES");
            let url = std::env::var("RABBITMQ_URL").expect("RABBITMQ_URL");
            let mut opts = RouterOptions::new(ServicesSource::File(PathBuf::from(file)), url);
            // Only SIGHUP may trigger the reload in this test.
            opts.watch_interval = Duration::from_secs(3600);
            aion_kanban::config::notify_on_sighup(opts.reload.clone()).expect("SIGHUP handler");
            router::run(opts, std::future::pending())
                .await
                .expect("router");
        }
        Ok("client") => {
            // What a microservice does (see kanban/examples/echo_service.rs).
            let mut client = Client::from_env().expect("client from env");
            while let Some(m) = client.receiver.next().await {
                match m.kanban() {
                    Ok(k) => {
                        let _ = client.forward(m, &k).await;
                    }
                    Err(_) => {
                        let _ = m.fail().await;
                    }
                }
            }
        }
        _ => {}
    }
}

fn spawn_child(role: &str, envs: &[(&str, String)]) -> std::process::Child {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "kanban_faults::faults_child_process",
        "--ignored",
        "--nocapture",
    ])
    .env("AION_KANBAN_FAULTS_CHILD", role)
    .stdout(std::process::Stdio::null());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.spawn().expect("spawn child")
}

fn sighup(child: &std::process::Child) {
    let st = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(st.success(), "kill -HUP {}", child.id());
}

/// Write `text` to `file` keeping its size and modification time (so that only SIGHUP, not the
/// file watch, can notice the change).
fn rewrite_unnoticeably(file: &Path, text: &str) {
    let meta = std::fs::metadata(file).unwrap();
    assert_eq!(meta.len(), text.len() as u64, "same size for the test");
    std::fs::write(file, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(meta.modified().unwrap())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_router_and_client() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("hu");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yml");
    let v1 = format!(
        "microservices:\n  {p}a:\n    nextService: {{default: [{{name: {p}b}}]}}\n  {p}b: {{}}\n"
    );
    let v2 = v1.replace(&format!("{p}b"), &format!("{p}z"));
    std::fs::write(&file, &v1).unwrap();
    let (conn, ch) = amqp::connect(&b.url).await;

    let env = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("AION_SERVICES", file.to_string_lossy().into_owned()),
            ("RABBITMQ_URL", b.url.clone()),
        ];
        v.extend(extra.iter().cloned());
        v
    };
    let mut router = spawn_child("router", &env(&[]));
    assert!(
        amqp::wait_declared(&conn, &format!("{p}b-001.in"), WAIT).await,
        "router child did not start"
    );
    let mut client = spawn_child(
        "client",
        &env(&[
            ("QUEUE_ORIGIN", format!("{p}a-001.in")),
            ("QUEUE_TO", format!("{p}a-001.out")),
        ]),
    );
    // The client routes producer-side with the first configuration.
    amqp::publish(&ch, &format!("{p}a-001.in"), br#"{"metadata":{"id":1}}"#).await;
    assert_eq!(
        ids(&amqp::take(&ch, &format!("{p}b-001.in"), 1, WAIT).await),
        vec![1]
    );
    // A change nobody signalled is not picked up.
    rewrite_unnoticeably(&file, &v2);
    amqp::publish(&ch, &format!("{p}a-001.in"), br#"{"metadata":{"id":2}}"#).await;
    assert_eq!(
        ids(&amqp::take(&ch, &format!("{p}b-001.in"), 1, WAIT).await),
        vec![2]
    );
    assert_eq!(amqp::queue_len(&conn, &format!("{p}z-001.out")).await, None);

    sighup(&router);
    sighup(&client);
    assert!(
        amqp::wait_declared(&conn, &format!("{p}z-001.out"), WAIT).await,
        "router did not re-declare the topology after SIGHUP"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New routes: producer-side in the client, and in the router for upstream-style clients.
    amqp::publish(&ch, &format!("{p}a-001.in"), br#"{"metadata":{"id":3}}"#).await;
    amqp::publish(&ch, &format!("{p}a-001.out"), br#"{"metadata":{"id":4}}"#).await;
    assert_eq!(
        ids(&amqp::take(&ch, &format!("{p}z-001.in"), 2, WAIT).await),
        vec![3, 4]
    );
    assert_eq!(
        amqp::queue_len(&conn, &format!("{p}b-001.in")).await,
        Some(0),
        "nothing took the old route"
    );
    assert!(
        router.try_wait().unwrap().is_none(),
        "SIGHUP ended the router"
    );
    assert!(
        client.try_wait().unwrap().is_none(),
        "SIGHUP ended the client"
    );
    router.kill().unwrap();
    client.kill().unwrap();
    router.wait().unwrap();
    client.wait().unwrap();
    let mut queues = all_queues(&services(&v1));
    queues.extend(all_queues(&services(&v2)));
    amqp::delete(&ch, &queues).await;
}
