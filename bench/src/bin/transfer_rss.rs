//! Benchmark: the memory of moving a large file between two devices' runtimes (#18). Two real
//! `aion-kanban run` processes (release), device `self` on broker A and device `other` on broker
//! B (`scripts/rabbitmq.sh start`): a kanban with one file of `--mib` MiB is published to
//! `self`'s output queue, forwarded in 128 KiB chunks to `other`, verified and delivered into
//! `other`'s input queue. Reports the wall time and the peak RSS (`VmHWM`) of both runtimes;
//! bounded memory means the peak does not grow with the file.
//!
//! ```sh
//! scripts/rabbitmq.sh start && eval "$(scripts/rabbitmq.sh env)"
//! cargo build --release -p aion-kanban
//! cargo run --release -p aion-bench --bin transfer_rss -- --mib 1024 [--kanban-bin PATH]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};

struct Runtime(Child);

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM")?.parse()?)
}

fn start(bin: &Path, dir: &Path, services: &Path, url: &str, remote: Option<&str>) -> Runtime {
    let mut c = Command::new(bin);
    c.args(["run", "--kubeconfig", "none"])
        .arg("--services")
        .arg(services)
        .args(["--amqp", url])
        .arg("--db")
        .arg(dir.join("kanban.db"))
        .arg("--data-dir")
        .arg(dir.join("Data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(r) = remote {
        c.args(["--device-amqp", &format!("other={r}")]);
    }
    Runtime(c.spawn().expect("start aion-kanban"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let mut bin = PathBuf::from(target).join("release/aion-kanban");
    let mut mib: u64 = 1024;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--mib" => mib = v.parse()?,
            "--kanban-bin" => bin = PathBuf::from(v),
            other => bail!("unknown argument {other}"),
        }
    }
    let url_a = std::env::var("AION_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let url_b = std::env::var("AION_RABBITMQ_URL_B")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5673/%2f".into());
    let tag = format!("xfer{}", std::process::id());
    let root = std::env::temp_dir().join(&tag);
    let (home_a, home_b) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(home_a.join(format!("Data/{tag}a_1")))?;
    std::fs::create_dir_all(home_b.join("Data"))?;
    let sa = home_a.join("services.yml");
    std::fs::write(
        &sa,
        format!(
            "deviceName: self\ndevices:\n  other: {{addr: 127.0.0.1}}\nmicroservices:\n  {tag}a:\n    nextService:\n      default: [{{name: {tag}c, device: other}}]\n"
        ),
    )?;
    let sb = home_b.join("services.yml");
    std::fs::write(
        &sb,
        format!("deviceName: other\nmicroservices:\n  {tag}c: {{}}\n"),
    )?;
    // The file: incompressible bytes written 1 MiB at a time.
    let file = home_a.join(format!("Data/{tag}a_1/big.bin"));
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for w in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf)?;
        }
    }
    let ra = start(&bin, &home_a, &sa, &url_a, Some(&url_b));
    let rb = start(&bin, &home_b, &sb, &url_b, None);
    let conn_a = Connection::connect(&url_a, ConnectionProperties::default()).await?;
    let conn_b = Connection::connect(&url_b, ConnectionProperties::default()).await?;
    let ch_a = conn_a.create_channel().await?;
    let ch_b = conn_b.create_channel().await?;
    let (out, input) = (format!("{tag}a-001.out"), format!("{tag}c-001.in"));
    // Wait for both runtimes to declare their queues.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = conn_a.create_channel().await?;
        let b = conn_b.create_channel().await?;
        let pa = a
            .queue_declare(
                out.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        let pb = b
            .queue_declare(
                input.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        if pa.is_ok() && pb.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the runtimes did not declare their queues");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let k = format!(r#"{{"connectionKey":"default","fileList":["Data/{tag}a_1/big.bin"]}}"#);
    let t0 = Instant::now();
    ch_a.basic_publish(
        "".into(),
        out.as_str().into(),
        BasicPublishOptions::default(),
        k.as_bytes(),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await?
    .await?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if let Some(_m) = ch_b
            .basic_get(input.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the kanban did not arrive");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let stored = home_b.join(format!("Data/{tag}c_1/big.bin"));
    let size = std::fs::metadata(&stored)?.len();
    if size != mib << 20 {
        bail!("{}: {size} bytes, want {}", stored.display(), mib << 20);
    }
    let (pa, pb) = (peak_rss_kib(ra.0.id())?, peak_rss_kib(rb.0.id())?);
    println!(
        "file {mib} MiB: {secs:.1} s ({:.0} MiB/s); peak RSS sender {:.1} MiB, receiver {:.1} MiB",
        mib as f64 / secs,
        pa as f64 / 1024.0,
        pb as f64 / 1024.0
    );
    drop(ra);
    drop(rb);
    for (ch, q) in [(&ch_a, &out), (&ch_b, &input)] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
