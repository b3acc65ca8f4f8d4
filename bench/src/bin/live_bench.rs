//! Benchmark: what the live page costs the runtime. The real `aion-kanban run --live` binary
//! (release) routes a paced load (default 1,000 kanbans/s) from `a-001.out` to `b-001.in` on the
//! loopback RabbitMQ, with its replicator writing every kanban to SQLite; this driver publishes
//! the load and drains `b-001.in`. The runtime's CPU time (user + system of all its threads,
//! `/proc/PID/stat`) is measured over windows of `--secs` seconds, alternately without a client
//! and with one GETting `/api/v1/status` once a second (as the page does), `--rounds` times.
//!
//! ```sh
//! scripts/rabbitmq.sh start
//! cargo build --release -p aion-kanban
//! cargo run --release -p aion-bench --bin live_bench -- [--secs 30] [--rounds 2] [--rate 1000] \
//!     [--kanban-bin target/release/aion-kanban]
//! ```
//! The runtime runs with `--kubeconfig none`: the three LISTs (Deployments, Jobs, Pods) a
//! refresh makes in a pod are not part of the figure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

struct Args {
    secs: u64,
    rounds: u32,
    rate: u64,
    bin: PathBuf,
    amqp: String,
}

fn args() -> anyhow::Result<Args> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let mut a = Args {
        secs: 30,
        rounds: 2,
        rate: 1000,
        bin: PathBuf::from(target).join("release/aion-kanban"),
        amqp: std::env::var("AION_RABBITMQ_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--secs" => a.secs = v()?.parse()?,
            "--rounds" => a.rounds = v()?.parse()?,
            "--rate" => a.rate = v()?.parse()?,
            "--kanban-bin" => a.bin = PathBuf::from(v()?),
            "--amqp" => a.amqp = v()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// CPU seconds (user + system, all threads) of a process so far.
fn cpu_seconds(pid: u32, tck: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 12 and 13 after the state (field 3).
    let ut: f64 = f.get(11).context("utime")?.parse()?;
    let st: f64 = f.get(12).context("stime")?.parse()?;
    Ok((ut + st) / tck)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn get_status(port: u16) -> anyhow::Result<usize> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.1 200") {
        bail!("{}", String::from_utf8_lossy(&body));
    }
    Ok(body.len())
}

struct Runtime(Child);

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    if !a.bin.exists() {
        bail!(
            "{}: no aion-kanban binary (cargo build --release -p aion-kanban, or --kanban-bin)",
            a.bin.display()
        );
    }
    let tag = format!("livebench{}", std::process::id());
    let (qa, qb) = (format!("{tag}a-001.out"), format!("{tag}b-001.in"));
    let dir = tempfile_dir()?;
    let services = dir.join("services.yml");
    std::fs::write(
        &services,
        format!(
            "deviceName: bench\nmicroservices:\n  {tag}a:\n    startup: yes\n    nextService:\n      default: [{{name: {tag}b}}]\n  {tag}b:\n    always: yes\n"
        ),
    )?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let child = Command::new(&a.bin)
        .args(["run", "--kubeconfig", "none", "--prefetch", "200"])
        .arg("--services")
        .arg(&services)
        .args(["--amqp", &a.amqp])
        .arg("--db")
        .arg(dir.join("kanban.db"))
        .args(["--live", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", a.bin.display()))?;
    let rt = Runtime(child);
    let pid = rt.0.id();
    let tck = clock_ticks();

    let conn = Connection::connect(&a.amqp, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    // The runtime declares the queues; wait for them.
    let t0 = Instant::now();
    loop {
        let probe = conn.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let a_ok = probe
            .queue_declare(qa.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok()
            && probe
                .queue_declare(qb.as_str().into(), passive, FieldTable::default())
                .await
                .is_ok();
        if a_ok {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the runtime did not declare {qa} and {qb} in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Drain b's input (auto-ack).
    let delivered = Arc::new(AtomicU64::new(0));
    let consumer_ch = conn.create_channel().await?;
    let mut consumer = consumer_ch
        .basic_consume(
            qb.as_str().into(),
            "live-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let d = delivered.clone();
    tokio::spawn(async move {
        while let Some(Ok(_)) = consumer.next().await {
            d.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Paced publisher: rate/100 kanbans every 10 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let (pch, pq, per_tick, pstop) = (ch.clone(), qa.clone(), a.rate / 100, stop.clone());
    let publisher = tokio::spawn(async move {
        let body = serde_json::json!({
            "connectionKey": "default", "processNumber": 1, "priorSuccess": true,
            "dataPath": "/var/lib/aion/Data", "fileList": [], "metadata": {"sensor": 1.5},
            "nextDeviceName": "", "startAt": "2026-12-04T00:00:00Z", "finishAt": ""
        })
        .to_string()
        .into_bytes();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !pstop.load(Ordering::Relaxed) {
            tick.tick().await;
            for _ in 0..per_tick {
                let _ = pch
                    .basic_publish(
                        "".into(),
                        pq.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default(),
                    )
                    .await;
            }
        }
    });
    eprintln!("warm-up 10 s at {} kanbans/s …", a.rate);
    tokio::time::sleep(Duration::from_secs(10)).await;

    let polling = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    let (pl, pc) = (polling.clone(), polls.clone());
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if pl.load(Ordering::Relaxed) {
                match get_status(port) {
                    Ok(_) => {
                        pc.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => eprintln!("poll: {e}"),
                }
            }
        }
    });
    println!(
        "| window | polling | kanbans routed/s | runtime CPU (% of one core) | polls |\n|---|---|---:|---:|---:|"
    );
    let mut sums = [(0.0f64, 0u32); 2];
    for round in 0..a.rounds {
        for with in [false, true] {
            polling.store(with, Ordering::Relaxed);
            let (c0, d0, p0, t) = (
                cpu_seconds(pid, tck)?,
                delivered.load(Ordering::Relaxed),
                polls.load(Ordering::Relaxed),
                Instant::now(),
            );
            tokio::time::sleep(Duration::from_secs(a.secs)).await;
            let secs = t.elapsed().as_secs_f64();
            let cpu = (cpu_seconds(pid, tck)? - c0) / secs * 100.0;
            let rate = (delivered.load(Ordering::Relaxed) - d0) as f64 / secs;
            let n = polls.load(Ordering::Relaxed) - p0;
            println!(
                "| {} | {} | {rate:.0} | {cpu:.2} | {n} |",
                round + 1,
                if with { "yes" } else { "no" }
            );
            let s = &mut sums[usize::from(with)];
            s.0 += cpu;
            s.1 += 1;
        }
    }
    polling.store(false, Ordering::Relaxed);
    let without = sums[0].0 / f64::from(sums[0].1.max(1));
    let with = sums[1].0 / f64::from(sums[1].1.max(1));
    println!(
        "\nmean runtime CPU: {without:.2} % without a client, {with:.2} % with one polling every second: \
         the page costs {:.2} % of one core (goal: < 1 %)",
        with - without
    );
    stop.store(true, Ordering::Relaxed);
    let _ = publisher.await;
    drop(rt);
    let cfg = aion_kanban::router::load_services(&services)?;
    for q in aion_kanban::topology::plan(&cfg) {
        if q.name.starts_with(&tag) {
            let _ = ch
                .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A fresh directory under the system temp dir (removed at the end of the run).
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("aion-live-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
