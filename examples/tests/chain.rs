//! The example services as built binaries (`sensor`, `processor`, `sink`) against real RabbitMQ
//! brokers on loopback (`scripts/rabbitmq.sh start`; skipped with `SKIPPED:` when they are not
//! up, a failure under `AION_REQUIRE_RABBITMQ=1`), with the aion-kanban runtime's router running
//! in-process as it runs beside them in AION:
//!
//! * `chain_on_one_device`: sensor → processor → sink by producer-side routing; a sensor with
//!   `COUNT=5` gives five `<seq>.json` and five attached files in the sink's directory, stored
//!   in order, every hop recorded by the runtime, nothing left in any queue; the processor and
//!   the sink exit 0 on SIGTERM.
//! * `files_travel_with_the_kanban_to_another_device`: the sensor on one device, processor and
//!   sink on another (two brokers, two runtimes): the runtime forwards each kanban with its
//!   file, and the sink stores the same bytes the sensor wrote.
//!
//! Names are unique per run (microservices, so their queues, and the namespace, so the records
//! queue); the queues are deleted at the end, as in `tests/rabbitmq/kanban_client.rs`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aion_integration_tests::rabbitmq::kanban::{all_queues, services, start_router};
use aion_integration_tests::rabbitmq::{self, amqp};
use aion_kanban::router::{RouterOptions, ServicesSource};
use aion_kanban::topology::records_queue_name;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const COUNT: u64 = 5;

/// A running service binary, its stderr in a file; killed if the test ends before it does.
struct Service {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    fn spawn(name: &'static str, exe: &str, env: &[(String, String)], logs: &Path) -> Service {
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(exe)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {exe}: {e}"));
        Service {
            name,
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, waiting at most `timeout`.
    async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(s) = child.try_wait().expect("try_wait") {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; its log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (as Kubernetes stops a pod), then its exit status.
    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM {pid}");
        self.wait(Duration::from_secs(10)).await
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("{} log:\n{}", self.name, self.log());
        }
    }
}

/// The environment the reconciler renders for instance 1 of `{p}{service}` (docs/cluster.md),
/// on `device` with `home` as `AION_HOME`; the sensor gets no `QUEUE_ORIGIN`.
fn pod_env(
    url: &str,
    p: &str,
    service: &str,
    device: &str,
    home: &Path,
    services_yml: &Path,
) -> Vec<(String, String)> {
    let name = format!("{p}{service}");
    let mut env = vec![
        ("SERVICE_NAME", name.clone()),
        ("AION_HOME", home.display().to_string()),
        ("DEVICE_NAME", device.into()),
        ("DEBUG", "false".into()),
        ("MS_NUMBER", "1".into()),
        ("RABBITMQ_URL", url.into()),
        ("QUEUE_ORIGIN", format!("{name}-001.in")),
        ("QUEUE_TO", format!("{name}-001.out")),
        ("AION_SERVICES", services_yml.display().to_string()),
        ("AION_DEVICE", device.into()),
        ("AION_NAMESPACE", p.into()),
        ("RUST_LOG", "info,lapin=warn".into()),
    ];
    if service == "sensor" {
        env.retain(|(k, _)| *k != "QUEUE_ORIGIN");
        env.push(("COUNT", COUNT.to_string()));
        env.push(("INTERVAL_MS", "100".into()));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn write_services(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("config/services.yml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, yaml).unwrap();
    path
}

fn json_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    })
}

/// Wait until `dir` holds `n` JSON files.
async fn wait_stored(dir: &Path, n: usize, sink: &Service) {
    let deadline = Instant::now() + WAIT;
    while json_files(dir) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} kanbans stored in {}; sink log:\n{}",
            json_files(dir),
            dir.display(),
            sink.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `seq` of every "stored kanban" line of the sink's log, in log order.
fn stored_order(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("stored kanban"))
        .filter_map(|l| {
            let v = l.split_whitespace().find_map(|w| w.strip_prefix("seq="))?;
            v.parse().ok()
        })
        .collect()
}

/// Checks the sink's directory after `COUNT` kanbans: `<seq>.json` and `<seq>-reading-<seq>.csv`
/// for each, the copy equal to the sensor's file in `sensor_dir`, the metadata of all three
/// services; returns the stored kanbans by seq.
fn check_stored(sink_dir: &Path, sensor_dir: &Path, processed_by: &str) -> Vec<Value> {
    let mut names: Vec<String> = std::fs::read_dir(sink_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (1..=COUNT)
        .flat_map(|n| [format!("{n}.json"), format!("{n}-reading-{n}.csv")])
        .collect();
    expected.sort();
    assert_eq!(names, expected, "exactly the kanbans and their files");
    (1..=COUNT)
        .map(|n| {
            let v: Value =
                serde_json::from_slice(&std::fs::read(sink_dir.join(format!("{n}.json"))).unwrap())
                    .unwrap();
            let m = &v["metadata"];
            assert_eq!(m["seq"], n, "{v}");
            let reading = m["reading"].as_f64().expect("reading");
            assert_eq!(m["anomaly"], reading > 30.0, "{v}");
            assert_eq!(
                v["connectionKey"],
                if reading > 30.0 { "anomaly" } else { "default" }
            );
            assert_eq!(m["processedBy"], processed_by, "{v}");
            for t in ["emittedAt", "processedAt", "storedAt"] {
                let s = m[t].as_str().unwrap_or_else(|| panic!("{t} in {v}"));
                assert!(chrono::DateTime::parse_from_rfc3339(s).is_ok(), "{t}: {s}");
                assert_eq!(
                    s.len(),
                    "2026-05-01T12:00:00.123Z".len(),
                    "ms precision: {s}"
                );
            }
            assert!(m["latencyMs"].as_f64().expect("latencyMs") >= 0.0);
            let copy = format!("{n}-reading-{n}.csv");
            assert_eq!(m["storedFiles"], serde_json::json!([copy]));
            assert_eq!(
                std::fs::read(sink_dir.join(&copy)).unwrap(),
                std::fs::read(sensor_dir.join(format!("reading-{n}.csv"))).unwrap(),
                "the attached file arrived as the sensor wrote it"
            );
            v
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_on_one_device() {
    let Some(b) = rabbitmq::require() else { return };
    let p = rabbitmq::unique("ex");
    let yaml = format!(
        r#"
deviceName: self
microservices:
  {p}sensor:
    nextService:
      default: [{{name: {p}processor}}]
  {p}processor:
    nextService:
      default: [{{name: {p}sink}}]
      anomaly: [{{name: {p}sink}}]
  {p}sink: {{}}
"#
    );
    let cfg = services(&yaml);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("aion");
    let services_yml = write_services(&home, &yaml);
    let db = tmp.path().join("kanban.db");
    let mut opts = RouterOptions::new(ServicesSource::Value(Arc::new(cfg.clone())), b.url.clone());
    opts.data_dir = home.join("Data");
    opts.namespace = Some(p.clone());
    let router = start_router(opts, Some(&db));
    let (conn, ch) = amqp::connect(&b.url).await;
    assert!(amqp::wait_declared(&conn, &format!("{p}sink-001.in"), WAIT).await);

    let env = |service: &str| pod_env(&b.url, &p, service, "self", &home, &services_yml);
    let mut sink = Service::spawn("sink", env!("CARGO_BIN_EXE_sink"), &env("sink"), tmp.path());
    let mut processor = Service::spawn(
        "processor",
        env!("CARGO_BIN_EXE_processor"),
        &env("processor"),
        tmp.path(),
    );
    let mut sensor = Service::spawn(
        "sensor",
        env!("CARGO_BIN_EXE_sensor"),
        &env("sensor"),
        tmp.path(),
    );
    let status = sensor.wait(WAIT).await;
    assert!(status.success(), "sensor: {status}; log:\n{}", sensor.log());
    let sink_dir = home.join(format!("Data/{p}sink_1/stored"));
    wait_stored(&sink_dir, COUNT as usize, &sink).await;

    let status = processor.terminate().await;
    assert!(
        status.success(),
        "processor on SIGTERM: {status}\n{}",
        processor.log()
    );
    let status = sink.terminate().await;
    assert!(
        status.success(),
        "sink on SIGTERM: {status}\n{}",
        sink.log()
    );
    let sink_log = sink.log();
    assert_eq!(
        stored_order(&sink_log),
        (1..=COUNT).collect::<Vec<_>>(),
        "{sink_log}"
    );
    assert!(sink_log.contains("latency_ms="), "{sink_log}");
    assert!(processor.log().contains("SIGTERM"), "{}", processor.log());

    let stored = check_stored(
        &sink_dir,
        &home.join(format!("Data/{p}sensor_1")),
        &format!("{p}processor-001@self"),
    );
    assert!(
        stored.iter().any(|v| v["metadata"]["anomaly"] == true)
            && stored.iter().any(|v| v["metadata"]["anomaly"] == false),
        "both connection keys were used"
    );

    // Nothing left: inputs, outputs, dead letters, and the records (consumed by the runtime).
    let records = records_queue_name(Some(&p));
    let mut queues = all_queues(&cfg);
    queues.push(records.clone());
    let deadline = Instant::now() + WAIT;
    while amqp::queue_len(&conn, &records).await != Some(0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    amqp::assert_empty(&conn, &queues).await;
    router.stop().await;

    // The runtime recorded both hops of every kanban from the clients' records.
    let rows = aion_kanban::replicator::query(
        &db,
        &aion_kanban::replicator::Query {
            source: Some(p.clone()),
            limit: 100,
            ..Default::default()
        },
    )
    .unwrap();
    let mut hops: Vec<(String, String, u64)> = rows
        .iter()
        .map(|(_, r)| {
            let k: Value = serde_json::from_str(&r.kanban).unwrap();
            (
                r.source.clone(),
                r.outcome.to_string(),
                k["metadata"]["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    hops.sort();
    let mut expected: Vec<(String, String, u64)> = (1..=COUNT)
        .flat_map(|n| {
            [
                (format!("{p}processor#1"), "routed".to_string(), n),
                (format!("{p}sensor#1"), "routed".to_string(), n),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(hops, expected);

    amqp::delete(&ch, &queues).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_travel_with_the_kanban_to_another_device() {
    let Some(b) = rabbitmq::require() else { return };
    let p = rabbitmq::unique("exd");
    // Device "edge" (broker a) runs the sensor; device "hub" (broker b) processor and sink.
    let yaml_edge = format!(
        r#"
deviceName: edge
devices:
  hub: {{addr: 127.0.0.1}}
microservices:
  {p}sensor:
    nextService:
      default: [{{name: {p}processor, device: hub}}]
"#
    );
    let yaml_hub = format!(
        r#"
deviceName: hub
devices:
  edge: {{addr: 127.0.0.1}}
microservices:
  {p}processor:
    nextService:
      default: [{{name: {p}sink}}]
  {p}sink: {{}}
"#
    );
    let (cfg_edge, cfg_hub) = (services(&yaml_edge), services(&yaml_hub));
    let tmp = tempfile::tempdir().unwrap();
    let (home_edge, home_hub) = (tmp.path().join("edge"), tmp.path().join("hub"));
    let yml_edge = write_services(&home_edge, &yaml_edge);
    let yml_hub = write_services(&home_hub, &yaml_hub);

    let mut oa = RouterOptions::new(
        ServicesSource::Value(Arc::new(cfg_edge.clone())),
        b.url.clone(),
    );
    oa.data_dir = home_edge.join("Data");
    oa.namespace = Some(p.clone());
    oa.device_amqp.insert("hub".into(), b.url_b.clone());
    let ra = start_router(oa, None);
    let mut ob = RouterOptions::new(
        ServicesSource::Value(Arc::new(cfg_hub.clone())),
        b.url_b.clone(),
    );
    std::fs::create_dir_all(home_hub.join("Data")).unwrap();
    ob.data_dir = home_hub.join("Data");
    ob.namespace = Some(p.clone());
    let rb = start_router(ob, None);
    let (conn, ch) = amqp::connect(&b.url).await;
    let (conn_b, ch_b) = amqp::connect(&b.url_b).await;
    assert!(amqp::wait_declared(&conn, &format!("{p}sensor-001.out"), WAIT).await);
    assert!(amqp::wait_declared(&conn_b, &format!("{p}sink-001.in"), WAIT).await);

    let mut sink = Service::spawn(
        "sink",
        env!("CARGO_BIN_EXE_sink"),
        &pod_env(&b.url_b, &p, "sink", "hub", &home_hub, &yml_hub),
        tmp.path(),
    );
    let mut processor = Service::spawn(
        "processor",
        env!("CARGO_BIN_EXE_processor"),
        &pod_env(&b.url_b, &p, "processor", "hub", &home_hub, &yml_hub),
        tmp.path(),
    );
    let mut sensor = Service::spawn(
        "sensor",
        env!("CARGO_BIN_EXE_sensor"),
        &pod_env(&b.url, &p, "sensor", "edge", &home_edge, &yml_edge),
        tmp.path(),
    );
    let status = sensor.wait(WAIT).await;
    assert!(status.success(), "sensor: {status}; log:\n{}", sensor.log());
    let sink_dir = home_hub.join(format!("Data/{p}sink_1/stored"));
    wait_stored(&sink_dir, COUNT as usize, &sink).await;
    assert!(processor.terminate().await.success());
    assert!(sink.terminate().await.success());

    let stored = check_stored(
        &sink_dir,
        &home_edge.join(format!("Data/{p}sensor_1")),
        &format!("{p}processor-001@hub"),
    );
    // The runtime of "hub" stored each forwarded file in the processor's directory and the
    // kanban named it there.
    let received = home_hub.join(format!("Data/{p}processor_1"));
    for (i, v) in stored.iter().enumerate() {
        let n = i + 1;
        assert_eq!(
            v["fileList"],
            serde_json::json!([received.join(format!("reading-{n}.csv")).to_string_lossy()]),
            "{v}"
        );
    }
    assert_eq!(stored_order(&sink.log()), (1..=COUNT).collect::<Vec<_>>());

    let mut queues_a = all_queues(&cfg_edge);
    queues_a.push(records_queue_name(Some(&p)));
    let mut queues_b = all_queues(&cfg_hub);
    queues_b.push(records_queue_name(Some(&p)));
    let deadline = Instant::now() + WAIT;
    while amqp::queue_len(&conn_b, &queues_b[queues_b.len() - 1]).await != Some(0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    amqp::assert_empty(&conn, &queues_a).await;
    amqp::assert_empty(&conn_b, &queues_b).await;
    ra.stop().await;
    rb.stop().await;
    amqp::delete(&ch, &queues_a).await;
    amqp::delete(&ch_b, &queues_b).await;
}
