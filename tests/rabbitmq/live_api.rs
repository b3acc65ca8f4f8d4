//! The live page's HTTP API (`aion-kanban run --live`) against the real loopback RabbitMQ: a
//! router routes kanbans into an input queue nobody consumes, the replicator records them, and
//! `GET /api/v1/status` must match `schemas/live-v1.schema.json` and show the queue's depth,
//! rates above zero on the instances and the graph's edge, and the kanbans' trails; the page and
//! the graph are served; anything but GET is refused (405). No Kubernetes API here: the document
//! says so in `problems` and the states are `unknown`.
//!
//! Fails (never skips) under `AION_REQUIRE_RABBITMQ=1`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use aion_integration_tests::component;
use aion_integration_tests::rabbitmq::kanban::{services, start_router};
use aion_integration_tests::rabbitmq::{self, amqp};
use aion_kanban::live_serve::{self, LiveOptions};
use aion_kanban::router::{RouterOptions, ServicesSource};
use serde_json::{Value, json};

/// One HTTP/1.1 request; (status, headers, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// Deletes the test's queues on the loopback broker when dropped (also when an assertion fails).
struct DeleteQueues(Vec<String>);

impl Drop for DeleteQueues {
    fn drop(&mut self) {
        for q in &self.0 {
            let _ = rabbitmq::ctl("a", &["delete_queue", q]);
        }
    }
}

fn schema_errors(doc: &Value) -> Vec<String> {
    let schema: Value =
        serde_json::from_str(include_str!("../../schemas/live-v1.schema.json")).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_api_matches_its_schema_and_shows_queues_rates_and_trails() {
    let Some(b) = rabbitmq::require() else { return };
    let _brokers = component::shared_async().await;
    let p = rabbitmq::unique("live");
    let cfg = services(&format!(
        r#"
deviceName: self
microservices:
  {p}a:
    startup: yes
    nextService:
      default: [{{name: {p}b}}]
  {p}b:
    always: no
"#
    ));
    let _cleanup = DeleteQueues(aion_integration_tests::rabbitmq::kanban::all_queues(&cfg));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kanban.db");
    let source = ServicesSource::Value(Arc::new(cfg.clone()));
    let mut opts = RouterOptions::new(source.clone(), b.url.clone());
    opts.data_dir = dir.path().join("Data");
    let router = start_router(opts, Some(&db));
    let (conn, ch) = amqp::connect(&b.url).await;
    let out = format!("{p}a-001.out");
    let input = format!("{p}b-001.in");
    assert!(
        amqp::wait_declared(&conn, &out, Duration::from_secs(15)).await,
        "router did not declare {out}"
    );
    const N: u64 = 12;
    for seq in 1..=N {
        let k = json!({"connectionKey": "default", "processNumber": 1, "metadata": {"seq": seq}});
        amqp::publish(&ch, &out, k.to_string().as_bytes()).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while amqp::queue_len(&conn, &input).await.unwrap_or(0) < N as u32 {
        assert!(
            std::time::Instant::now() < deadline,
            "kanbans routed into {input}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (addr, server) = live_serve::spawn(
        "127.0.0.1:0",
        LiveOptions {
            services: source,
            namespace: "default".into(),
            device: None,
            amqp_url: b.url.clone(),
            db: Some(db.clone()),
            kube: None,
            window_seconds: 60,
            trail_limit: 5,
        },
    )
    .await
    .unwrap();
    // The records reach SQLite through the replicator's writer thread: wait for all of them.
    let doc = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, head, body) =
                tokio::task::spawn_blocking(move || http(addr, "GET", "/api/v1/status"))
                    .await
                    .unwrap();
            assert_eq!(status, 200, "{head}\n{body}");
            assert!(
                head.to_lowercase()
                    .contains("content-type: application/json"),
                "{head}"
            );
            let doc: Value = serde_json::from_str(&body).unwrap();
            if doc["edges"][0]["count"] == json!(N) || std::time::Instant::now() > deadline {
                break doc;
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    };
    eprintln!("{}", serde_json::to_string_pretty(&doc).unwrap());
    assert_eq!(
        schema_errors(&doc),
        Vec::<String>::new(),
        "document vs schema"
    );
    assert_eq!(doc["version"], "v1");
    assert_eq!(doc["device"], "self");
    let a = &doc["instances"][0];
    let bi = &doc["instances"][1];
    assert_eq!(
        (a["name"].as_str(), bi["name"].as_str()),
        (Some(&*format!("{p}a-001")), Some(&*format!("{p}b-001")))
    );
    assert_eq!(bi["kind"], "Job");
    assert_eq!(
        bi["queueDepth"],
        json!(N),
        "{input} holds every routed kanban"
    );
    assert_eq!(bi["consumers"], json!(0));
    let per_s = N as f64 / 60.0;
    assert_eq!(a["outPerSecond"].as_f64(), Some(per_s));
    assert_eq!(bi["inPerSecond"].as_f64(), Some(per_s));
    assert_eq!(doc["edges"][0]["id"], "e0");
    assert_eq!(doc["edges"][0]["count"], json!(N));
    assert_eq!(doc["edges"][0]["perSecond"].as_f64(), Some(per_s));
    // No Kubernetes API: said so, and the states are unknown.
    assert!(
        doc["problems"]["kubernetes"].is_string(),
        "{}",
        doc["problems"]
    );
    assert_eq!(a["state"], "unknown");
    // One trail per kanban (each ends in b's queue: b never ran), newest first.
    let trails = doc["trails"].as_array().unwrap();
    assert_eq!(trails.len(), 5, "trail_limit");
    assert!(
        trails
            .iter()
            .all(|t| t["hops"][0]["detail"] == json!(input))
    );
    let ids: Vec<i64> = trails
        .iter()
        .map(|t| t["hops"][0]["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // The page, the graph (edge ids as the document names them), read-only, unknown paths.
    let (s, head, page) = tokio::task::spawn_blocking(move || http(addr, "GET", "/"))
        .await
        .unwrap();
    assert_eq!(s, 200);
    assert!(head.to_lowercase().contains("text/html"), "{head}");
    assert!(page.contains("api/v1/status") && page.contains("<script>"));
    assert!(
        !page.contains("http://") || page.contains("http://www.w3.org/2000/svg"),
        "no external assets"
    );
    let (s, _, svg) = tokio::task::spawn_blocking(move || http(addr, "GET", "/api/v1/graph.svg"))
        .await
        .unwrap();
    assert_eq!(s, 200);
    assert!(
        svg.contains("<svg") && svg.contains("<g id=\"e0\">"),
        "{svg}"
    );
    for m in ["POST", "PUT", "DELETE", "PATCH"] {
        let (s, head, _) = tokio::task::spawn_blocking(move || http(addr, m, "/api/v1/status"))
            .await
            .unwrap();
        assert_eq!(s, 405, "{m}: {head}");
        assert!(
            head.contains("allow: GET") || head.contains("Allow: GET"),
            "{head}"
        );
    }
    let (s, _, _) = tokio::task::spawn_blocking(move || http(addr, "GET", "/api/v2/status"))
        .await
        .unwrap();
    assert_eq!(s, 404);

    server.abort();
    router.stop().await;
    amqp::delete(
        &ch,
        &aion_integration_tests::rabbitmq::kanban::all_queues(&cfg),
    )
    .await;
}
