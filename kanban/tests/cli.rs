//! The `aion-kanban log` and `aion-kanban sweep` commands, run as the built binary: what an
//! operator types on a device. (`run` is exercised by `tests/rabbitmq/kanban_wiring.rs` with the rendered
//! container's command line.)

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use aion_kanban::replicator::{Outcome, Record, Replicator};

fn aion_kanban(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aion-kanban"))
        .args(args)
        .env_remove("AION_KANBAN_DB")
        .env_remove("AION_DATA_DIR")
        .output()
        .expect("running aion-kanban")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `--json` output: one object per line.
fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn record(source: &str, key: &str, outcome: Outcome, id: i64) -> Record {
    Record {
        at: "2026-11-26T06:00:00Z".into(),
        source_queue: format!("{}.out", source.replace('#', "-00")),
        source: source.into(),
        connection_key: key.into(),
        process_number: 1,
        outcome,
        detail: if outcome == Outcome::DeadLettered {
            "undecodable".into()
        } else {
            "b-001.in".into()
        },
        kanban: format!(r#"{{"metadata":{{"id":{id}}}}}"#),
    }
}

#[test]
fn log_lists_and_filters_the_replicator_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kanban.db");
    let (rep, writer) = Replicator::open(&db, 1000).unwrap();
    rep.record(record("a#1", "default", Outcome::Routed, 1));
    rep.record(record("a#2", "split", Outcome::Routed, 2));
    rep.record(record("c#1", "default", Outcome::DeadLettered, 3));
    rep.flush();
    drop(rep);
    writer.join();
    let db = db.to_str().unwrap();

    let all = aion_kanban(&["log", "--db", db, "-o", "json"]);
    assert!(all.status.success(), "{all:?}");
    let rows = json_lines(&all);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r["id"].is_i64()), "{rows:?}");
    assert_eq!(
        rows[0]["outcome"], "dead-lettered",
        "stored and shown by its name"
    );
    // `--json`, from before `-o`, still works.
    assert_eq!(
        json_lines(&aion_kanban(&["log", "--db", db, "--json"])),
        rows
    );
    // An outcome that does not exist: refused by the flag parser, naming the known ones.
    let bad = aion_kanban(&["log", "--db", db, "--outcome", "lost"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("\"lost\" is not an outcome") && err.contains("forwarded-in"),
        "{err}"
    );

    // `--source a` takes a and its instances; `--outcome` and `--connection-key` filter.
    let a = aion_kanban(&["log", "--db", db, "--json", "--source", "a"]);
    let a = json_lines(&a);
    assert_eq!(a.len(), 2);
    assert!(
        a.iter()
            .all(|r| r["source"].as_str().unwrap().starts_with("a#"))
    );
    let dead = aion_kanban(&["log", "--db", db, "--json", "--outcome", "dead-lettered"]);
    let dead = json_lines(&dead);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["kanban"], r#"{"metadata":{"id":3}}"#);
    assert_eq!(dead[0]["detail"], "undecodable");
    let split = aion_kanban(&["log", "--db", db, "--connection-key", "split"]);
    let text = stdout(&split);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("a#2") && text.contains("key=split") && text.contains("routed"),
        "{text}"
    );
    let one = aion_kanban(&["log", "--db", db, "-n", "1"]);
    assert_eq!(stdout(&one).lines().count(), 1);

    // A database that is not there: an error naming it, exit 1, nothing created.
    let missing = dir.path().join("nope.db");
    let o = aion_kanban(&["log", "--db", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope.db"), "{err}");
    assert!(!missing.exists(), "log must not create a database");
}

fn age(path: &Path, by: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

#[test]
fn sweep_dry_run_then_sweep() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("Data");
    std::fs::create_dir_all(data.join("cam_1")).unwrap();
    std::fs::create_dir_all(data.join("rabbitmq")).unwrap();
    for f in [
        "cam_1/old.jpg",
        "cam_1/new.jpg",
        "cam_1/old.bin",
        "rabbitmq/old.jpg",
    ] {
        std::fs::write(data.join(f), f).unwrap();
    }
    for f in ["cam_1/old.jpg", "cam_1/old.bin", "rabbitmq/old.jpg"] {
        age(&data.join(f), Duration::from_secs(3600));
    }
    // Upstream's format: interval in milliseconds (10 minutes here).
    let config = home.path().join("data-sweeper.yml");
    std::fs::write(
        &config,
        "sweepTargets:\n  - name: image\n    fileExtention: ['jpg']\n    interval: 600000\n",
    )
    .unwrap();
    let (config, data_s) = (config.to_str().unwrap(), data.to_str().unwrap());

    let dry = aion_kanban(&[
        "sweep",
        "--config",
        config,
        "--data-dir",
        data_s,
        "--dry-run",
    ]);
    assert!(dry.status.success(), "{dry:?}");
    let out = stdout(&dry);
    assert!(
        out.contains("would delete") && out.contains("old.jpg"),
        "{out}"
    );
    assert!(out.contains("would delete 1 file(s)"), "{out}");
    assert!(
        data.join("cam_1/old.jpg").exists(),
        "dry run deletes nothing"
    );

    let done = aion_kanban(&["sweep", "--config", config, "--data-dir", data_s]);
    assert!(done.status.success(), "{done:?}");
    assert!(
        stdout(&done).contains("deleted 1 file(s)"),
        "{}",
        stdout(&done)
    );
    assert!(!data.join("cam_1/old.jpg").exists());
    assert!(
        data.join("cam_1/new.jpg").exists(),
        "younger than the interval"
    );
    assert!(data.join("cam_1/old.bin").exists(), "no rule for .bin");
    assert!(
        data.join("rabbitmq/old.jpg").exists(),
        "the broker's state is never swept"
    );

    // A bad configuration: the file and line named, exit 1, nothing deleted.
    std::fs::write(
        home.path().join("bad.yml"),
        "sweepTargets:\n  - interval: [1]\n",
    )
    .unwrap();
    let bad = aion_kanban(&[
        "sweep",
        "--config",
        home.path().join("bad.yml").to_str().unwrap(),
        "--data-dir",
        data_s,
    ]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("bad.yml:2:"), "{err}");
    assert!(data.join("cam_1/old.bin").exists());
}
