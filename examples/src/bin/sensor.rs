//! `sensor`: an AION microservice that only produces. Every `INTERVAL_MS` it takes a (simulated)
//! reading, writes it as a small CSV file to its own data directory
//! (`$AION_HOME/Data/<SERVICE_NAME>_<MS_NUMBER>/reading-<seq>.csv`) and emits a kanban with
//! `metadata: {seq, emittedAt, reading}`, `dataPath` = that directory and the file's absolute
//! path in `fileList` — so when services.yml sends the kanban to another device, the runtime
//! forwards the file with it (files must lie inside `$AION_HOME`; docs/kanban.md, routing).
//!
//! Configuration (environment, as the reconciler renders a microservice pod):
//! * `RABBITMQ_URL`, `QUEUE_TO` (required); `AION_SERVICES` (services.yml: producer-side
//!   routing, straight to the next instances' input queues), `AION_DEVICE`, `AION_NAMESPACE`.
//!   No `QUEUE_ORIGIN` is needed: nothing is consumed (`aion_examples::Producer`).
//! * `SERVICE_NAME`, `MS_NUMBER` (the kanban's `processNumber`), `AION_HOME`.
//! * `INTERVAL_MS` (default 1000), `COUNT` (default 0 = forever; else exit 0 after that many
//!   confirmed kanbans), `RUST_LOG`.
//!
//! `seq` counts confirmed kanbans and is kept in `.seq` in the data directory, so a restarted
//! sensor goes on where it stopped. A kanban whose send failed is sent again at the next tick
//! with the same `seq` (at-least-once: the sink stores by `seq`, so a duplicate overwrites its
//! own copy). The reading files stay: AION's data sweeper removes old ones
//! (`sweepTargets: [{name: readings, fileExtention: [csv], interval: ...}]`). SIGTERM/SIGINT stop
//! it between two kanbans (exit 0).
//!
//! ```sh
//! RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/%2f QUEUE_TO=sensor-001.out \
//!   AION_HOME=/tmp/aion INTERVAL_MS=500 COUNT=10 cargo run -p aion-examples --bin sensor
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use aion_examples::{
    EnvError, Producer, ProducerConfig, RECORD_GRACE, ServiceEnv, Shutdown, parse_var, rfc3339_ms,
    write_atomic,
};
use aion_kanban::Kanban;
use anyhow::Context;
use serde_json::json;

fn main() -> ExitCode {
    aion_examples::run(sensor)
}

/// `INTERVAL_MS` and `COUNT`.
#[derive(Debug, PartialEq, Eq)]
struct Settings {
    interval: Duration,
    /// 0: forever.
    count: u64,
}

impl Settings {
    fn from_vars(get: &impl Fn(&str) -> Option<String>) -> Result<Settings, EnvError> {
        let ms: u64 = parse_var(get, "INTERVAL_MS", 1000)?;
        if ms == 0 {
            return Err(EnvError::Invalid {
                name: "INTERVAL_MS",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Settings {
            interval: Duration::from_millis(ms),
            count: parse_var(get, "COUNT", 0)?,
        })
    }
}

/// The simulated reading for `seq`: a slow wave between 5 and 35 (two decimals), so with the
/// processor's default threshold of 30 some readings are anomalies.
fn reading(seq: u64) -> f64 {
    let x = 20.0 + 15.0 * (seq as f64 / 3.0).sin();
    (x * 100.0).round() / 100.0
}

fn file_name(seq: u64) -> String {
    format!("reading-{seq}.csv")
}

fn file_body(seq: u64, emitted_at: &str, reading: f64) -> String {
    format!("seq,emittedAt,reading\n{seq},{emitted_at},{reading}\n")
}

/// The kanban for reading `seq`, its file at `file` (absolute) in the instance's directory.
fn kanban(env: &ServiceEnv, seq: u64, emitted_at: &str, reading: f64, file: &Path) -> Kanban {
    // Each reading starts a chain: upstream's initial kanban (`startAt` now, `dataPath` this
    // instance's directory), with the file and the reading.
    let mut k = Kanban {
        file_list: vec![file.to_string_lossy().into_owned()],
        ..Kanban::initial(env.base(), env.ms_number, &env.data_root())
    };
    k.metadata.insert("seq".into(), json!(seq));
    k.metadata.insert("emittedAt".into(), json!(emitted_at));
    k.metadata.insert("reading".into(), json!(reading));
    k
}

/// The last confirmed `seq` (0 when there is no state file yet).
fn load_seq(path: &Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("{}: not a sequence number: {s:?}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

async fn sensor() -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install().context("installing the signal handlers")?;
    let get = |k: &str| std::env::var(k).ok();
    let env = ServiceEnv::from_vars(&get, "sensor")?;
    let settings = Settings::from_vars(&get)?;
    let cfg = ProducerConfig::from_vars(&get)?;
    let queue_to = cfg.queue_to.clone();
    let producer = Producer::start(cfg)?;
    // Absolute, so that fileList entries name the file as every pod and the runtime see it.
    let dir = std::path::absolute(env.data_dir()).context("the data directory")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let state = dir.join(".seq");
    let mut seq = load_seq(&state)?;
    tracing::info!(
        instance = %env.instance(),
        queue_to = %queue_to,
        routed = producer.is_routed(),
        dir = %dir.display(),
        interval_ms = settings.interval.as_millis() as u64,
        count = settings.count,
        last_seq = seq,
        "sensor started"
    );
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    while settings.count == 0 || sent < settings.count {
        tokio::select! {
            biased;
            sig = shutdown.recv() => {
                tracing::info!(signal = sig, sent, "stopping");
                break;
            }
            _ = ticker.tick() => {}
        }
        let next = seq + 1;
        let emitted_at = rfc3339_ms(chrono::Utc::now());
        let value = reading(next);
        let file = dir.join(file_name(next));
        if let Err(e) = write_atomic(&file, file_body(next, &emitted_at, value).as_bytes()) {
            tracing::warn!(seq = next, "{e}; trying again at the next tick");
            continue;
        }
        let k = kanban(&env, next, &emitted_at, value, &file);
        let result = tokio::select! {
            biased;
            // Unconfirmed when interrupted: a restart sends this seq again.
            sig = shutdown.recv() => {
                tracing::info!(signal = sig, sent, "stopping");
                break;
            }
            r = producer.send(&k) => r,
        };
        match result {
            Ok(()) => {
                seq = next;
                sent += 1;
                if let Err(e) = write_atomic(&state, seq.to_string().as_bytes()) {
                    tracing::warn!("keeping the sequence number: {e}");
                }
                tracing::info!(seq, reading = value, file = %file.display(), "emitted");
            }
            Err(e) => tracing::warn!(seq = next, "sending: {e}; trying again at the next tick"),
        }
    }
    if settings.count > 0 && sent == settings.count {
        tracing::info!(count = sent, "COUNT kanbans sent");
    }
    tokio::time::sleep(RECORD_GRACE).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aion_examples::vars;

    #[test]
    fn settings_defaults_and_checks() {
        assert_eq!(
            Settings::from_vars(&vars(&[])).unwrap(),
            Settings {
                interval: Duration::from_secs(1),
                count: 0
            }
        );
        let s = Settings::from_vars(&vars(&[("INTERVAL_MS", "50"), ("COUNT", "5")])).unwrap();
        assert_eq!((s.interval, s.count), (Duration::from_millis(50), 5));
        assert!(Settings::from_vars(&vars(&[("INTERVAL_MS", "0")])).is_err());
        assert!(Settings::from_vars(&vars(&[("COUNT", "-1")])).is_err());
    }

    #[test]
    fn readings_stay_in_range_and_some_are_anomalies() {
        let r: Vec<f64> = (1..=20).map(reading).collect();
        assert!(r.iter().all(|x| (5.0..=35.0).contains(x)), "{r:?}");
        assert!(r.iter().any(|x| *x > 30.0) && r.iter().any(|x| *x <= 30.0));
        assert_eq!(reading(1), 24.91);
    }

    #[test]
    fn the_kanban_carries_its_file_as_forwarding_expects() {
        let env = ServiceEnv {
            service_name: "sensor".into(),
            ms_number: 2,
            aion_home: "/var/lib/aion".into(),
            device_name: String::new(),
        };
        let file = env.data_dir().join(file_name(7));
        let k = kanban(&env, 7, "2026-05-01T12:00:00.123Z", 21.5, &file);
        let v: serde_json::Value = serde_json::from_slice(&k.encode()).unwrap();
        assert_eq!(
            v["fileList"],
            json!(["/var/lib/aion/Data/sensor_2/reading-7.csv"])
        );
        assert_eq!(v["dataPath"], "/var/lib/aion/Data/sensor_2");
        // Upstream's initial kanban: startAt in its format (Japan time, milliseconds).
        let start = v["startAt"].as_str().unwrap();
        assert!(
            start.len() == 29 && start.ends_with("+09:00") && start.as_bytes()[19] == b'.',
            "{start}"
        );
        assert_eq!(v["processNumber"], 2);
        assert_eq!(v["connectionKey"], "default");
        assert_eq!(
            v["metadata"],
            json!({"seq": 7, "emittedAt": "2026-05-01T12:00:00.123Z", "reading": 21.5})
        );
        assert_eq!(file_body(7, "t", 21.5), "seq,emittedAt,reading\n7,t,21.5\n");
    }

    #[test]
    fn the_sequence_number_survives_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".seq");
        assert_eq!(load_seq(&p).unwrap(), 0);
        write_atomic(&p, b"41").unwrap();
        assert_eq!(load_seq(&p).unwrap(), 41);
        std::fs::write(&p, "x").unwrap();
        assert!(
            load_seq(&p).is_err(),
            "a damaged state file is not silently reset"
        );
    }
}
