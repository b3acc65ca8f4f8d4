//! `hop`: the pod-to-pod kanban latency benchmark (`bench/pod-hop.sh`), two AION
//! microservices from one binary, chosen by `HOP_ROLE` or else by the base of `SERVICE_NAME`:
//!
//! * `ping` (the driver): sends kanbans on connection key `default` (services.yml routes them
//!   to the echo, `pong`), each with `metadata.n` and `metadata.sentUs` (µs since the epoch),
//!   and receives the echoes on its own input queue. First a handshake (one kanban a second
//!   until an echo comes back: the echo and the broker may still be starting), then `SAMPLES` (default 2000)
//!   kanbans at `RATE` per second (default 100), then prints one JSON line on stdout:
//!   `{"phase":"hops", "samples", "lost", "round_trip_ms", "hop_ms", "one_way_ms"}`, each a
//!   `{p50, p99, max}` (hop = round trip / 2; one way = the echo's receive time minus the send
//!   time, comparable since every pod here shares one clock). Then `COLD_COUNT` (default 0)
//!   kanbans on connection key `cold`, `GAP_MS` apart (default 6000): each goes to an echo
//!   that is not running (`startup: no`, the runtime starts it on demand) and the time to its
//!   echo is a cold start; printed as `{"phase":"cold-start", "latencies_ms", "median_ms"}`.
//!   Exits 0 when everything came back, 1 when a kanban was lost (after `TIMEOUT_SECS`).
//! * any other name (the echo, e.g. `pong`, `cold`): every kanban gets `metadata.pongUs` (its
//!   receive time) and goes back on connection key `default` (services.yml routes it to
//!   `ping`); it acks the input only after the broker confirmed the echo. With `COUNT` > 0 it
//!   exits after that many (an `always: no` Job that the runtime runs again for the next one).
//!
//! Configuration as every example service (README, `aion_examples`): `RABBITMQ_URL`,
//! `QUEUE_ORIGIN`, `QUEUE_TO`, `AION_SERVICES`, `SERVICE_NAME`, `MS_NUMBER`.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aion_examples::{RECORD_GRACE, ServiceEnv, Shutdown, meta_u64, parse_var};
use aion_kanban::Kanban;
use aion_kanban::client::Client;
use anyhow::Context;
use serde_json::json;

fn main() -> ExitCode {
    aion_examples::run(hop)
}

fn now_us() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0)
}

/// The role of this process: `HOP_ROLE`, else the microservice's base name.
fn role(get: &impl Fn(&str) -> Option<String>, env: &ServiceEnv) -> String {
    get("HOP_ROLE")
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| env.base().to_string())
}

/// A probe kanban: `n`, its send time, the connection key that routes it.
fn probe(n: u64, key: &str, sent_us: u64) -> Kanban {
    let mut k = Kanban {
        connection_key: key.into(),
        ..Kanban::default()
    };
    k.metadata.insert("n".into(), json!(n));
    k.metadata.insert("sentUs".into(), json!(sent_us));
    k
}

/// The echo of `k`: stamped with its receive time, sent back on `default`.
fn echo(mut k: Kanban, received_us: u64) -> Kanban {
    k.metadata.insert("pongUs".into(), json!(received_us));
    k.connection_key = "default".into();
    // services.yml decides where the echo goes (a received kanban names this device).
    k.next_device_name.clear();
    k
}

/// `{p50, p99, max}` of `xs` (nearest rank), in the unit they are in.
fn summary(xs: &[f64]) -> serde_json::Value {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({"p50": round(rank(0.50)), "p99": round(rank(0.99)), "max": round(rank(1.0))})
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

async fn hop() -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install().context("installing the signal handlers")?;
    let get = |k: &str| std::env::var(k).ok();
    let env = ServiceEnv::from_vars(&get, "hop")?;
    let mut client = Client::from_env()?;
    if role(&get, &env) == "ping" {
        return drive(&get, client, &mut shutdown).await;
    }
    let count: u64 = parse_var(&get, "COUNT", 0)?;
    let mut echoed = 0u64;
    tracing::info!(instance = %env.instance(), count, "echo started");
    while count == 0 || echoed < count {
        let Some(msg) = shutdown.next_message(&mut client.receiver).await else {
            break;
        };
        let received = now_us();
        match msg.kanban() {
            Ok(k) => match client.forward(msg, &echo(k, received)).await {
                Ok(()) => echoed += 1,
                Err(e) => tracing::warn!("{e}; the input was requeued"),
            },
            Err(e) => {
                tracing::warn!("not a kanban ({e}): dead-lettering it");
                msg.fail().await?;
            }
        }
    }
    // The records of the last echoes reach the runtime before the pod goes.
    tokio::time::sleep(RECORD_GRACE).await;
    Ok(())
}

/// One reply: (n, send time, echo's receive time, arrival here), all µs.
type Reply = (u64, u64, u64, u64);

/// The driver's receiving side: the client (its receiver) moves to its own task, which sends
/// every reply to `tx` and acks it; the driver keeps the client's output to send.
fn spawn_receiver(
    mut client: Client,
    tx: tokio::sync::mpsc::UnboundedSender<Reply>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(msg) = client.receiver.next().await {
            let arrived = now_us();
            if let Ok(k) = msg.kanban() {
                let field = |name| meta_u64(&k, name).unwrap_or(0);
                let _ = tx.send((field("n"), field("sentUs"), field("pongUs"), arrived));
            }
            if let Err(e) = msg.success().await {
                tracing::warn!("acking a reply: {e}");
            }
        }
    })
}

async fn drive(
    get: &impl Fn(&str) -> Option<String>,
    client: Client,
    shutdown: &mut Shutdown,
) -> anyhow::Result<()> {
    let samples: u64 = parse_var(get, "SAMPLES", 2000)?;
    let rate: f64 = parse_var(get, "RATE", 100.0)?;
    let cold: u64 = parse_var(get, "COLD_COUNT", 0)?;
    let gap = Duration::from_millis(parse_var(get, "GAP_MS", 6000)?);
    let timeout = Duration::from_secs(parse_var(get, "TIMEOUT_SECS", 120)?);
    anyhow::ensure!(rate > 0.0, "RATE must be > 0");
    let output = client
        .output
        .clone()
        .context("ping needs AION_SERVICES (producer-side routing to the echo)")?;
    let send = |k: Kanban| {
        let output = Arc::clone(&output);
        async move { output.send(&k).await }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let receiving = spawn_receiver(client, tx);

    // Handshake: the echo may still be starting.
    let mut n = 0u64;
    let deadline = tokio::time::Instant::now() + timeout;
    'handshake: loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no echo within {timeout:?}"
        );
        // The broker may still be starting too (a pod started with the installation): retry
        // until the deadline instead of failing the Job.
        if let Err(e) = send(probe(n, "default", now_us())).await {
            tracing::warn!("handshake: {e}; retrying");
        }
        n += 1;
        let wait = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                r = rx.recv() => if r.is_some() { break 'handshake },
                sig = shutdown.recv() => anyhow::bail!("stopped by {sig}"),
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while rx.try_recv().is_ok() {}

    // Warm hops at RATE.
    let first = 1_000_000u64;
    let mut pending = BTreeSet::new();
    let mut replies = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = first;
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs_f64(samples as f64 / rate) + timeout;
    while (next < first + samples || !pending.is_empty()) && tokio::time::Instant::now() < deadline
    {
        tokio::select! {
            _ = tick.tick(), if next < first + samples => {
                pending.insert(next);
                send(probe(next, "default", now_us())).await?;
                next += 1;
            }
            Some(r) = rx.recv() => {
                if pending.remove(&r.0) {
                    replies.push(r);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
            sig = shutdown.recv() => anyhow::bail!("stopped by {sig}"),
        }
    }
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0;
    let round_trip: Vec<f64> = replies.iter().map(|r| ms(r.1, r.3)).collect();
    let hop: Vec<f64> = round_trip.iter().map(|x| x / 2.0).collect();
    let one_way: Vec<f64> = replies.iter().map(|r| ms(r.1, r.2)).collect();
    let lost = pending.len();
    println!(
        "{}",
        json!({"phase": "hops", "samples": replies.len(), "lost": lost, "rate": rate,
               "round_trip_ms": summary(&round_trip), "hop_ms": summary(&hop),
               "one_way_ms": summary(&one_way)})
    );

    // Cold starts: one kanban at a time to an echo that is not running.
    let mut cold_ms = Vec::new();
    for i in 0..cold {
        let n = 2_000_000 + i;
        let sent = now_us();
        send(probe(n, "cold", sent)).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                Some(r) = rx.recv() => if r.0 == n { cold_ms.push(ms(sent, r.3)); break },
                _ = tokio::time::sleep_until(deadline) => {
                    anyhow::bail!("cold start {i}: no echo within {timeout:?}")
                }
                sig = shutdown.recv() => anyhow::bail!("stopped by {sig}"),
            }
        }
        tracing::info!(i, ms = cold_ms[cold_ms.len() - 1], "cold start");
        if i + 1 < cold {
            // The Job exits after its one kanban; the next one finds it finished.
            tokio::time::sleep(gap).await;
        }
    }
    if cold > 0 {
        println!(
            "{}",
            json!({"phase": "cold-start", "latencies_ms": cold_ms, "median_ms": median(&cold_ms)})
        );
    }
    receiving.abort();
    tokio::time::sleep(RECORD_GRACE).await;
    anyhow::ensure!(lost == 0, "{lost} of {samples} kanbans did not come back");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_keeps_the_probe_and_goes_back_on_default() {
        let mut p = probe(7, "cold", 1_000);
        p.next_device_name = "here".into();
        let e = echo(p, 1_500);
        assert_eq!(e.connection_key, "default");
        assert_eq!(meta_u64(&e, "n"), Some(7));
        assert_eq!(meta_u64(&e, "sentUs"), Some(1_000));
        assert_eq!(meta_u64(&e, "pongUs"), Some(1_500));
        assert!(e.next_device_name.is_empty());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summary(&xs);
        assert_eq!(
            (s["p50"].as_f64(), s["p99"].as_f64()),
            (Some(50.0), Some(99.0))
        );
        assert_eq!(s["max"], 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn the_role_comes_from_hop_role_or_the_service_name() {
        let get = aion_examples::vars(&[("SERVICE_NAME", "pong"), ("MS_NUMBER", "1")]);
        let env = ServiceEnv::from_vars(&get, "hop").unwrap();
        assert_eq!(role(&get, &env), "pong");
        let get = aion_examples::vars(&[("SERVICE_NAME", "x"), ("HOP_ROLE", "ping")]);
        let env = ServiceEnv::from_vars(&get, "hop").unwrap();
        assert_eq!(role(&get, &env), "ping");
    }
}
