//! `sink`: an AION microservice at the end of a chain. It stores each kanban it receives as
//! `<seq>.json` (the kanban with `metadata.storedAt`, `metadata.latencyMs` and
//! `metadata.storedFiles` added, pretty-printed) in `SINK_DIR`, copies the files of its
//! `fileList` next to it as `<seq>-<file name>`, and logs one line per kanban with the
//! end-to-end latency from `metadata.emittedAt`. Files are written atomically (temporary file,
//! fsync, rename), the attachments before the JSON: a `<seq>.json` means its files are there.
//!
//! The input is acknowledged after the files are written: a crash in between redelivers the
//! kanban, and storing it again overwrites the same files (stored by `seq`, so duplicates of
//! at-least-once delivery are harmless). An attachment that cannot be read (missing, outside
//! `$AION_HOME`) is logged and listed in `metadata.missingFiles`; the kanban is still stored.
//! A write error (disk full) requeues the kanban after a pause. A message that is not a kanban
//! or has no `metadata.seq` is failed (→ `<base>.dlq`).
//!
//! Configuration (environment, as the reconciler renders a microservice pod): `RABBITMQ_URL`,
//! `QUEUE_ORIGIN`, `QUEUE_TO` (required by the client library, though a sink sends nothing);
//! `SERVICE_NAME`, `MS_NUMBER`, `AION_HOME` (relative `fileList` entries are relative to it);
//! `SINK_DIR` (default `$AION_HOME/Data/<SERVICE_NAME>_<MS_NUMBER>/stored`); `RUST_LOG`.
//! SIGTERM/SIGINT stop it after the kanban in hand (exit 0).
//!
//! ```sh
//! RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/%2f QUEUE_ORIGIN=sink-001.in \
//!   QUEUE_TO=sink-001.out AION_HOME=/tmp/aion cargo run -p aion-examples --bin sink
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use aion_examples::{
    ServiceEnv, Shutdown, latency_ms, meta_str, meta_u64, resolve_in_home, rfc3339_ms, write_atomic,
};
use aion_kanban::Kanban;
use aion_kanban::client::Client;
use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::json;

fn main() -> ExitCode {
    aion_examples::run(sink)
}

/// `SINK_DIR`, default `<data dir of the instance>/stored`.
fn sink_dir(get: &impl Fn(&str) -> Option<String>, env: &ServiceEnv) -> PathBuf {
    get("SINK_DIR")
        .filter(|d| !d.trim().is_empty())
        .map_or_else(|| env.data_dir().join("stored"), PathBuf::from)
}

#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("no numeric metadata.seq")]
    NoSeq,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What [`store`] wrote.
#[derive(Debug)]
struct Stored {
    seq: u64,
    /// File names of the copied attachments, in `fileList` order.
    files: Vec<String>,
    /// `fileList` entries that could not be copied.
    missing: Vec<String>,
    latency_ms: Option<f64>,
}

/// The copy's name for attachment `src` of kanban `seq`; a name taken by an earlier attachment
/// of the same kanban gets its position too.
fn copy_name(seq: u64, index: usize, src: &Path, taken: &[String]) -> String {
    let base = src
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let name = format!("{seq}-{base}");
    if taken.contains(&name) {
        format!("{seq}-{index}-{base}")
    } else {
        name
    }
}

/// `<seq>.json`: the kanban as received plus what the sink knows.
fn stored_json(
    k: &Kanban,
    now: DateTime<Utc>,
    latency: Option<f64>,
    files: &[String],
    missing: &[String],
) -> Vec<u8> {
    let mut k = k.clone();
    k.metadata.insert("storedAt".into(), json!(rfc3339_ms(now)));
    if let Some(l) = latency {
        k.metadata.insert("latencyMs".into(), json!(l));
    }
    k.metadata.insert("storedFiles".into(), json!(files));
    if !missing.is_empty() {
        k.metadata.insert("missingFiles".into(), json!(missing));
    }
    // A kanban is strings, numbers and JSON maps: it always serialises.
    serde_json::to_vec_pretty(&k).unwrap_or_else(|_| k.encode())
}

/// Store kanban `k` in `dir` (attachments first, then `<seq>.json`); `home` is `$AION_HOME`.
/// Small files, written synchronously: the sink handles one kanban at a time anyway.
fn store(home: &Path, dir: &Path, k: &Kanban, now: DateTime<Utc>) -> Result<Stored, StoreError> {
    let seq = meta_u64(k, "seq").ok_or(StoreError::NoSeq)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for (i, entry) in k.file_list.iter().enumerate() {
        let read = resolve_in_home(home, entry).and_then(|src| {
            std::fs::read(&src)
                .map(|data| (src, data))
                .map_err(|e| format!("fileList entry {entry}: {e}"))
        });
        match read {
            Ok((src, data)) => {
                let name = copy_name(seq, i + 1, &src, &files);
                write_atomic(&dir.join(&name), &data)?;
                files.push(name);
            }
            Err(reason) => {
                tracing::warn!(seq, "{reason}: not copied");
                missing.push(entry.clone());
            }
        }
    }
    let latency = meta_str(k, "emittedAt").and_then(|t| latency_ms(t, now));
    write_atomic(
        &dir.join(format!("{seq}.json")),
        &stored_json(k, now, latency, &files, &missing),
    )?;
    Ok(Stored {
        seq,
        files,
        missing,
        latency_ms: latency,
    })
}

async fn sink() -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install().context("installing the signal handlers")?;
    let get = |k: &str| std::env::var(k).ok();
    let env = ServiceEnv::from_vars(&get, "sink")?;
    let dir = sink_dir(&get, &env);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut client = Client::from_env()?;
    tracing::info!(instance = %env.instance(), dir = %dir.display(), "sink started");
    loop {
        let Some(msg) = shutdown.next_message(&mut client.receiver).await else {
            break;
        };
        let k = match msg.kanban() {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(
                    queue = msg.queue_name(),
                    "not a kanban: {e}; dead-lettering it"
                );
                if let Err(e) = msg.fail().await {
                    tracing::warn!("{e}");
                }
                continue;
            }
        };
        let redelivered = msg.redelivered();
        match store(&env.aion_home, &dir, &k, Utc::now()) {
            Ok(s) => {
                if let Err(e) = msg.success().await {
                    tracing::warn!(seq = s.seq, "{e} (stored; a redelivery overwrites it)");
                }
                let anomaly = k
                    .metadata
                    .get("anomaly")
                    .and_then(serde_json::Value::as_bool)
                    .map_or_else(|| "unknown".to_string(), |b| b.to_string());
                let latency = s
                    .latency_ms
                    .map_or_else(|| "unknown".to_string(), |l| format!("{l:.1}"));
                tracing::info!(
                    seq = s.seq,
                    latency_ms = %latency,
                    anomaly = %anomaly,
                    files = s.files.len(),
                    missing = s.missing.len(),
                    redelivered,
                    "stored kanban"
                );
            }
            Err(StoreError::NoSeq) => {
                tracing::warn!("kanban without a numeric metadata.seq; dead-lettering it");
                if let Err(e) = msg.fail().await {
                    tracing::warn!("{e}");
                }
            }
            Err(StoreError::Io(e)) => {
                tracing::error!("storing a kanban: {e}; requeueing it");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(e) = msg.requeue().await {
                    tracing::warn!("{e}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn sink_dir_defaults_to_the_instances_data_directory() {
        let env = ServiceEnv {
            service_name: "sink".into(),
            ms_number: 1,
            aion_home: "/var/lib/aion".into(),
            device_name: String::new(),
        };
        assert_eq!(
            sink_dir(&|_: &str| None, &env),
            Path::new("/var/lib/aion/Data/sink_1/stored")
        );
        assert_eq!(
            sink_dir(&|_: &str| Some("/data/out".into()), &env),
            Path::new("/data/out")
        );
    }

    #[test]
    fn stores_the_kanban_and_its_files_by_seq() {
        let home = tempfile::tempdir().unwrap();
        let src = home.path().join("Data/sensor_1");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("reading-3.csv"), "seq,reading\n3,32.6\n").unwrap();
        let out = home.path().join("Data/sink_1/stored");
        let k = Kanban::decode(
            json!({
                // One absolute, one relative to AION_HOME, one missing, one outside AION_HOME.
                "fileList": [
                    src.join("reading-3.csv").to_string_lossy(),
                    "Data/sensor_1/reading-3.csv",
                    "Data/sensor_1/gone.csv",
                    "/etc/hostname",
                ],
                "metadata": {"seq": 3, "emittedAt": "2026-05-01T12:00:00.000Z", "reading": 32.6,
                             "anomaly": true},
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let now = at("2026-05-01T12:00:00.042Z");
        let s = store(home.path(), &out, &k, now).unwrap();
        assert_eq!(s.seq, 3);
        assert_eq!(s.files, ["3-reading-3.csv", "3-2-reading-3.csv"]);
        assert_eq!(s.missing, ["Data/sensor_1/gone.csv", "/etc/hostname"]);
        assert_eq!(s.latency_ms, Some(42.0));
        assert_eq!(
            std::fs::read_to_string(out.join("3-reading-3.csv")).unwrap(),
            "seq,reading\n3,32.6\n"
        );
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("3.json")).unwrap()).unwrap();
        assert_eq!(v["metadata"]["seq"], 3);
        assert_eq!(v["metadata"]["reading"], 32.6);
        assert_eq!(v["metadata"]["storedAt"], "2026-05-01T12:00:00.042Z");
        assert_eq!(v["metadata"]["latencyMs"], 42.0);
        assert_eq!(
            v["metadata"]["storedFiles"],
            json!(["3-reading-3.csv", "3-2-reading-3.csv"])
        );
        assert_eq!(v["metadata"]["missingFiles"].as_array().unwrap().len(), 2);
        assert_eq!(v["fileList"].as_array().unwrap().len(), 4, "as received");
        // Stored again (a redelivery): the same files, nothing else.
        store(home.path(), &out, &k, now).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["3-2-reading-3.csv", "3-reading-3.csv", "3.json"]);
    }

    #[test]
    fn a_kanban_without_seq_is_not_stored() {
        let home = tempfile::tempdir().unwrap();
        let k = Kanban::decode(br#"{"metadata":{"seq":"one"}}"#).unwrap();
        let out = home.path().join("out");
        assert!(matches!(
            store(home.path(), &out, &k, Utc::now()),
            Err(StoreError::NoSeq)
        ));
        assert!(!out.exists());
    }

    #[test]
    fn without_emitted_at_the_latency_is_unknown() {
        let home = tempfile::tempdir().unwrap();
        let k = Kanban::decode(br#"{"metadata":{"seq":1}}"#).unwrap();
        let s = store(home.path(), &home.path().join("o"), &k, Utc::now()).unwrap();
        assert_eq!(s.latency_ms, None);
        assert!(s.files.is_empty() && s.missing.is_empty());
    }
}
