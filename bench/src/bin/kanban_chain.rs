//! Benchmark: a chain of microservices A→B→C (3 hops) on a loopback RabbitMQ, side by side in
//! one run:
//! * `raw lapin`: each stage consumes its queue and publishes straight to the next stage's queue
//!   (default exchange, routing key = queue name) — what broker-side routing costs at best;
//! * `aion-kanban router`: each stage publishes to its own output queue and the aion-kanban
//!   router (in this process) routes it by `nextService` to the next stage's input queue, with
//!   publisher confirms and ack-after-confirm (the path of upstream's clients);
//! * `aion-kanban client`: each stage routes producer-side with the client library
//!   (`aion_kanban::output::Output`: `nextService` from the same services.yml, publish straight
//!   to the next stage's input queue, a record copy in batches to `aion-kanban.records`, which
//!   the router in this process consumes as the runtime would).
//!
//! The stage code is the same in all three but for the publish call. Hop latency = time from a stage's publish to the next
//! stage's receipt (same process, monotonic clock). Two durability settings, the same for both:
//! `durable` (durable queues, persistent messages, publisher confirms at every publish) and
//! `transient` (non-persistent messages, no confirms at the stages; the router always confirms).
//! Two loads: a paced 1,000 msg/s (latency) and as fast as possible (throughput).
//!
//! ```sh
//! scripts/rabbitmq.sh start
//! cargo run --release -p aion-bench --bin kanban_chain -- [--paced-secs 5] [--burst 20000] \
//!     [--only transient|durable] [--conn-per-stage]
//! ```
//! Bounded: at most `paced-secs` × 1,000 + `burst` messages per variant, 120 s for the chain
//! and 240 s for the whole variant.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aion_kanban::Kanban;
use aion_kanban::amqp::SharedConnection;
use aion_kanban::output::{Output, OutputOptions};
use aion_kanban::router::{self, RouterOptions, ServicesSource};
use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::{Mutex, mpsc};

#[derive(Clone, Copy, PartialEq)]
enum Durability {
    Durable,
    Transient,
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Raw,
    Routed,
    Client,
}

/// Where a stage's result goes.
#[derive(Clone)]
enum Out {
    /// basic.publish to this queue.
    Queue(String),
    /// Producer-side routing by the client library.
    Client(Arc<Output>),
    /// End of the chain.
    Sink,
}

/// What the ack task waits for before acking a stage's input.
enum Confirm {
    None,
    Broker(lapin::PublisherConfirm),
    Client(aion_kanban::output::Pending),
}

struct Result_ {
    p50_us: f64,
    p99_us: f64,
    n: usize,
}

/// `--conn-per-stage`: each stage consumes (and, raw, publishes) on its own connection, as
/// separate microservice processes would; default: one connection shared by the stages.
static CONN_PER_STAGE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn props(d: Durability) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(if d == Durability::Durable { 2 } else { 1 })
}

async fn channel(conn: &Connection, confirms: bool) -> anyhow::Result<Channel> {
    let ch = conn.create_channel().await?;
    if confirms {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    Ok(ch)
}

/// A kanban with the publish time of its current hop in `metadata.t` (ns). Every field is
/// present, as the client library encodes a kanban, so every variant carries messages of the
/// same size from the first hop on.
fn kanban(seq: u64) -> Kanban {
    let mut k = Kanban::default();
    k.metadata.insert("seq".into(), seq.into());
    k.metadata.insert("t".into(), now_ns().into());
    k
}

/// [`kanban`] as the body raw lapin publishes.
fn body(seq: u64) -> Vec<u8> {
    kanban(seq).encode()
}

fn restamp(data: &[u8]) -> anyhow::Result<(u64, Vec<u8>)> {
    let mut v: serde_json::Value = serde_json::from_slice(data)?;
    let t = v["metadata"]["t"].as_u64().context("no t")?;
    v["metadata"]["t"] = now_ns().into();
    Ok((t, serde_json::to_vec(&v)?))
}

/// Kanban variant of [`restamp`] (what a microservice using the client library does).
fn restamp_kanban(data: &[u8]) -> anyhow::Result<(u64, Kanban)> {
    let mut k = Kanban::decode(data)?;
    let t = k
        .metadata
        .get("t")
        .and_then(|v| v.as_u64())
        .context("no t")?;
    k.metadata.insert("t".into(), now_ns().into());
    Ok((t, k))
}

/// One stage: consume `input`, record the hop latency, send the result on (or sink).
async fn stage(
    conn: Arc<Connection>,
    input: String,
    output: Out,
    d: Durability,
    lat: Arc<Mutex<Vec<u64>>>,
    done: mpsc::UnboundedSender<()>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let cons = channel(&conn, false).await?;
    cons.basic_qos(200, BasicQosOptions::default()).await?;
    let publ = channel(&conn, d == Durability::Durable).await?;
    let mut c = cons
        .basic_consume(
            input.as_str().into(),
            format!("bench-{input}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Confirms are awaited off the consume loop (ack after confirm), as a real service would.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(lapin::Acker, Confirm)>();
    let acks = tokio::spawn(async move {
        while let Some((acker, confirm)) = ack_rx.recv().await {
            match confirm {
                Confirm::None => {}
                Confirm::Broker(c) => {
                    let _ = c.await;
                }
                Confirm::Client(p) => {
                    if let Err(e) = p.confirmed().await {
                        eprintln!("kanban_chain: {e}");
                    }
                }
            }
            let _ = acker.ack(BasicAckOptions::default()).await;
        }
    });
    loop {
        let dl = tokio::select! {
            dl = c.next() => match dl {
                Some(dl) => dl?,
                None => break,
            },
            _ = &mut stop => break,
        };
        let confirm = match &output {
            Out::Queue(q) => {
                let (t, out) = restamp(&dl.data)?;
                lat.lock().await.push(now_ns().saturating_sub(t));
                let pc = publ
                    .basic_publish(
                        "".into(),
                        q.as_str().into(),
                        BasicPublishOptions::default(),
                        &out,
                        props(d),
                    )
                    .await?;
                if d == Durability::Durable {
                    Confirm::Broker(pc)
                } else {
                    Confirm::None
                }
            }
            Out::Client(o) => {
                let (t, k) = restamp_kanban(&dl.data)?;
                lat.lock().await.push(now_ns().saturating_sub(t));
                Confirm::Client(o.publish(&k).await?)
            }
            Out::Sink => {
                let (t, _) = restamp(&dl.data)?;
                lat.lock().await.push(now_ns().saturating_sub(t));
                let _ = done.send(());
                Confirm::None
            }
        };
        let _ = ack_tx.send((dl.acker, confirm));
    }
    // Let the last confirmations settle before the connections close.
    drop(ack_tx);
    let _ = acks.await;
    Ok(())
}

/// Kanbans sent through the chain before each measured window (see [`run_one`]).
const WARMUP: u64 = 300;

/// Publish kanbans `seqs` to the chain's entry, paced at `rate` msg/s (0 = as fast as possible).
async fn drive(
    entry: Out,
    publ: Channel,
    d: Durability,
    seqs: std::ops::Range<u64>,
    rate: u64,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let first = seqs.start;
    let mut pending = Vec::new();
    for seq in seqs {
        if let Some(step) = 1_000_000_000u64.checked_div(rate) {
            let due = start + Duration::from_nanos((seq - first) * step);
            tokio::time::sleep_until(due.into()).await;
        }
        let c = match &entry {
            Out::Queue(q) => Confirm::Broker(
                publ.basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    &body(seq),
                    props(d),
                )
                .await?,
            ),
            // The same kanban, built and handed to the client library as a service would
            // (not encoded and decoded first).
            Out::Client(o) => Confirm::Client(o.publish(&kanban(seq)).await?),
            Out::Sink => Confirm::None,
        };
        if d == Durability::Durable {
            pending.push(c);
            if pending.len() >= 256 {
                for c in pending.drain(..) {
                    settle(c).await?;
                }
            }
        } else if let Confirm::Client(p) = c {
            // Transient: nothing to wait for; this only queues the record copy.
            p.confirmed().await?;
        }
    }
    for c in pending {
        settle(c).await?;
    }
    Ok(())
}

/// Wait until `n` kanbans have left the end of the chain (2 minutes at most).
async fn wait_through(done: &mut mpsc::UnboundedReceiver<()>, n: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for received in 0..n {
        match tokio::time::timeout_at(deadline, done.recv()).await {
            Ok(Some(())) => {}
            _ => bail!("timed out: {received} of {n} kanbans through the chain"),
        }
    }
    Ok(())
}

async fn settle(c: Confirm) -> anyhow::Result<()> {
    match c {
        Confirm::None => {}
        Confirm::Broker(c) => {
            c.await?;
        }
        Confirm::Client(p) => p.confirmed().await?,
    }
    Ok(())
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}

struct Setup {
    /// Where the driver publishes.
    entry: Out,
    /// (input, output) per stage A, B, C.
    stages: Vec<(String, Out)>,
    queues: Vec<String>,
    router: Option<(
        tokio::task::JoinHandle<anyhow::Result<()>>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

/// `driver`: the connection the chain's entry publishes on; `stages[i]`: the one stage `i`
/// consumes on (the same one three times unless `--conn-per-stage`). The client variant's
/// outputs publish on the connection of their stage, as [`aion_kanban::client::Client`] does.
async fn setup(
    url: &str,
    ctl: &Channel,
    v: Variant,
    d: Durability,
    tag: &str,
    driver: &Arc<SharedConnection>,
    stages: &[Arc<SharedConnection>],
) -> anyhow::Result<Setup> {
    match v {
        Variant::Raw => {
            let q: Vec<String> = ["a", "b", "c"]
                .iter()
                .map(|s| format!("bench-raw-{tag}-{s}"))
                .collect();
            for name in &q {
                ctl.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await?;
                ctl.queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            }
            Ok(Setup {
                entry: Out::Queue(q[0].clone()),
                stages: vec![
                    (q[0].clone(), Out::Queue(q[1].clone())),
                    (q[1].clone(), Out::Queue(q[2].clone())),
                    (q[2].clone(), Out::Sink),
                ],
                queues: q,
                router: None,
            })
        }
        Variant::Routed | Variant::Client => {
            let p = format!("bench-{tag}-");
            let yaml = format!(
                "microservices:\n  {p}src:\n    nextService: {{default: [{{name: {p}a}}]}}\n  {p}a:\n    nextService: {{default: [{{name: {p}b}}]}}\n  {p}b:\n    nextService: {{default: [{{name: {p}c}}]}}\n  {p}c: {{}}\n"
            );
            let cfg =
                aion_model::services::load_str(&yaml, std::path::Path::new("bench-services.yml"))
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .value;
            // The run's own records queue (deleted with the chain's queues at the end), so a run
            // never leaves records behind for another runtime on the broker.
            let namespace = format!("bench-{tag}");
            let mut queues: Vec<String> = aion_kanban::topology::plan(&cfg)
                .into_iter()
                .map(|q| q.name)
                .filter(|n| !n.starts_with("aion-kanban."))
                .collect();
            queues.push(aion_kanban::topology::records_queue_name(Some(&namespace)));
            for name in &queues {
                ctl.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await?;
            }
            let cfg = Arc::new(cfg);
            let mut opts = RouterOptions::new(ServicesSource::Value(cfg.clone()), url);
            opts.prefetch = 200;
            opts.device = Some("bench".into());
            opts.namespace = Some(namespace.clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(router::run(opts, async move {
                let _ = stopped.await;
            }));
            // Wait for the router's topology.
            let probe_conn = Connection::connect(url, ConnectionProperties::default()).await?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let ch = probe_conn.create_channel().await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                if ch
                    .queue_declare(
                        format!("{p}c-001.in").into(),
                        passive,
                        FieldTable::default(),
                    )
                    .await
                    .is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("router did not declare its topology");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = probe_conn.close(200, "".into()).await;
            let out = |name: &str, conn: &Arc<SharedConnection>| -> anyhow::Result<Out> {
                let queue = format!("{p}{name}-001.out");
                Ok(match v {
                    Variant::Client => Out::Client(Arc::new(Output::on(
                        conn.clone(),
                        OutputOptions {
                            services: ServicesSource::Value(cfg.clone()),
                            device: Some("bench".into()),
                            queue_to: queue,
                            durable: d == Durability::Durable,
                        },
                        Some(&namespace),
                    )?)),
                    _ => Out::Queue(queue),
                })
            };
            Ok(Setup {
                entry: out("src", driver)?,
                stages: vec![
                    (format!("{p}a-001.in"), out("a", &stages[0])?),
                    (format!("{p}b-001.in"), out("b", &stages[1])?),
                    (format!("{p}c-001.in"), Out::Sink),
                ],
                queues,
                router: Some((task, stop)),
            })
        }
    }
}

/// Run one variant: paced at `rate` msg/s for `n` messages (rate 0 = as fast as possible).
/// Returns hop latencies and throughput (msg/s through the whole chain).
async fn run_one(
    url: &str,
    v: Variant,
    d: Durability,
    n: u64,
    rate: u64,
    tag: &str,
) -> anyhow::Result<(Result_, f64)> {
    let driver = SharedConnection::new(url, "bench-driver");
    let conn = driver.get().await?;
    let ctl = channel(&conn, false).await?;
    let stage_conns: Vec<Arc<SharedConnection>> = if CONN_PER_STAGE.load(Ordering::Relaxed) {
        (0..3)
            .map(|i| SharedConnection::new(url, &format!("bench-stage-{i}")))
            .collect()
    } else {
        vec![SharedConnection::new(url, "bench-stages"); 3]
    };
    let s = setup(url, &ctl, v, d, tag, &driver, &stage_conns).await?;
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n as usize * 3)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for ((i, o), shared) in s.stages.iter().zip(&stage_conns) {
        let conn = shared.get().await?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(stage(
            conn,
            i.clone(),
            o.clone(),
            d,
            lat.clone(),
            done_tx.clone(),
            stopped,
        ));
        tasks.push((task, stop));
    }
    // Let consumers attach.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let publ = channel(&conn, d == Durability::Durable).await?;
    // Warm-up, not measured, the same for every variant: connections that a variant opens on
    // first use (the client library's output link), queue declarations and the first
    // deliveries happen here, so the measured window shows the steady state a long-running
    // service sees rather than its start-up.
    let warmup = WARMUP.min(n);
    drive(s.entry.clone(), publ.clone(), d, 0..warmup, rate).await?;
    wait_through(&mut done_rx, warmup).await?;
    lat.lock().await.clear();

    let start = Instant::now();
    let driver = tokio::spawn(drive(
        s.entry.clone(),
        publ.clone(),
        d,
        warmup..warmup + n,
        rate,
    ));
    wait_through(&mut done_rx, n).await?;
    let elapsed = start.elapsed();
    driver.await??;
    for (task, stop) in tasks {
        let _ = stop.send(());
        task.await??;
    }
    if let Some((task, stop)) = s.router {
        let _ = stop.send(());
        task.await??;
    }
    for c in &stage_conns {
        c.close("").await;
    }
    for q in &s.queues {
        let _ = ctl
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "".into()).await;
    let mut l = lat.lock().await.clone();
    let r = Result_ {
        p50_us: pct(&mut l, 0.50),
        p99_us: pct(&mut l, 0.99),
        n: l.len(),
    };
    Ok((r, n as f64 / elapsed.as_secs_f64()))
}

/// A variant's run, as an error rather than a hang if some broker call never returns
/// (`wait_through` bounds the chain itself at 120 s; this bounds set-up and teardown too).
async fn bounded<T>(run: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .context("a variant did not finish within 240 s")?
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut paced_secs = 5u64;
    let mut burst = 20_000u64;
    let mut only: Option<String> = None;
    let mut variants: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--paced-secs" => paced_secs = args.next().context("--paced-secs N")?.parse()?,
            "--burst" => burst = args.next().context("--burst N")?.parse()?,
            "--only" => only = Some(args.next().context("--only transient|durable")?),
            "--conn-per-stage" => CONN_PER_STAGE.store(true, Ordering::Relaxed),
            "--variants" => variants = Some(args.next().context("--variants raw,router,client")?),
            other => bail!(
                "unknown argument {other} (use --paced-secs N, --burst N, --only transient|durable, --variants raw,router,client, --conn-per-stage)"
            ),
        }
    }
    let url = std::env::var("AION_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    if !url.contains("127.0.0.1") && !url.contains("localhost") {
        bail!("loopback brokers only: {url}");
    }
    now_ns();
    println!(
        "kanban chain A→B→C (3 hops), broker {}",
        aion_kanban::amqp::redact(&url)
    );
    println!(
        "| durability | variant | paced 1,000 msg/s: hop p50 | hop p99 | hops measured | burst: msg/s | hop p99 under burst |"
    );
    println!("|---|---|---|---|---|---|---|");
    for d in [Durability::Transient, Durability::Durable] {
        let dn = if d == Durability::Durable {
            "durable"
        } else {
            "transient"
        };
        if only.as_ref().is_some_and(|o| o != dn) {
            continue;
        }
        let mut rows = Vec::new();
        for v in [Variant::Raw, Variant::Routed, Variant::Client] {
            let vn = match v {
                Variant::Raw => "raw lapin",
                Variant::Routed => "aion-kanban router",
                Variant::Client => "aion-kanban client",
            };
            let short = match v {
                Variant::Raw => "raw",
                Variant::Routed => "router",
                Variant::Client => "client",
            };
            if variants
                .as_ref()
                .is_some_and(|l| !l.split(',').any(|x| x == short))
            {
                continue;
            }
            // `--paced-secs 0`: burst only (the paced columns read NaN).
            let paced = if paced_secs == 0 {
                Result_ {
                    p50_us: f64::NAN,
                    p99_us: f64::NAN,
                    n: 0,
                }
            } else {
                bounded(run_one(
                    &url,
                    v,
                    d,
                    paced_secs * 1000,
                    1000,
                    &format!("{dn}-p"),
                ))
                .await?
                .0
            };
            let (bl, tput) = bounded(run_one(&url, v, d, burst, 0, &format!("{dn}-b"))).await?;
            println!(
                "| {dn} | {vn} | {:.3} ms | {:.3} ms | {} | {:.0} | {:.3} ms |",
                paced.p50_us / 1000.0,
                paced.p99_us / 1000.0,
                paced.n,
                tput,
                bl.p99_us / 1000.0
            );
            rows.push((vn, paced, tput));
        }
        // The cost rows compare with raw lapin, when it ran.
        let Some((raw, rest)) = rows.split_first().filter(|(r, _)| r.0 == "raw lapin") else {
            continue;
        };
        for ours in rest {
            println!(
                "| {dn} | cost of {} | {:+.3} ms | {:+.3} ms per hop | | {:.0}% of raw | |",
                ours.0,
                (ours.1.p50_us - raw.1.p50_us) / 1000.0,
                (ours.1.p99_us - raw.1.p99_us) / 1000.0,
                100.0 * ours.2 / raw.2
            );
        }
    }
    Ok(())
}
