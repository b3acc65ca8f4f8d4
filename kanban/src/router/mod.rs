//! The router process: consumes every instance's output queue and this device's inbound queue,
//! routes each kanban (see [`crate::routing`]), publishes it to the next hops with publisher
//! confirms, and acks the consumed message only after every next hop confirmed. Faults:
//! undecodable bodies and undeliverable targets go to the dead-letter queue with a reason; a
//! lost connection ends the session, unacked messages return to their queues (at-least-once)
//! and the router reconnects with backoff. A configuration change (SIGHUP or the file changing)
//! ends the session cleanly and the next one re-declares the topology.

//!
//! One module per part: `options`, `session` (handling deliveries), `settle` (acks), `files`
//! (forwarded kanbans and their files); here the session's loop and reconnecting.

mod files;
mod options;
mod outbox;
mod remote;
mod session;
mod settle;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aion_model::ServicesFile;
use futures::StreamExt;
use lapin::Connection;

use crate::amqp::{self};
use crate::topology::{self, INBOUND_QUEUE};
use crate::transfer::{self};
use session::{Session, Source};
use settle::Settler;

pub use crate::config::{ConfigError, load_services};
pub use files::{FileError, Forwarded, ForwardedFile, resolve_files, store_files};
pub use options::{RouterOptions, ServicesSource};
pub use remote::RemoteError;

enum End {
    Reload,
    Shutdown,
}

/// Run the router until `shutdown` resolves.
pub async fn run(
    opts: RouterOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let opts = Arc::new(opts);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(200);
    let watcher = spawn_file_watch(&opts);
    let result = loop {
        let services = match &opts.services {
            ServicesSource::File(p) => match load_services(p) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    tracing::error!("{e}; retrying in 5 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                        _ = opts.reload.notified() => continue,
                        _ = &mut shutdown => break Ok(()),
                    }
                }
            },
            ServicesSource::Value(v) => v.clone(),
        };
        match session(&opts, services, &mut shutdown).await {
            Ok(End::Shutdown) => break Ok(()),
            Ok(End::Reload) => {
                tracing::info!("configuration changed: re-declaring topology");
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                tracing::warn!("router session ended: {e:#}; reconnecting in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut shutdown => break Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    if let Some(w) = watcher {
        w.abort();
    }
    result
}

fn spawn_file_watch(opts: &Arc<RouterOptions>) -> Option<tokio::task::JoinHandle<()>> {
    let ServicesSource::File(path) = &opts.services else {
        return None;
    };
    Some(crate::config::spawn_file_watch(
        path.clone(),
        opts.watch_interval,
        opts.reload.clone(),
    ))
}

async fn session(
    opts: &Arc<RouterOptions>,
    services: Arc<ServicesFile>,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<End> {
    let url = &opts.amqp_url;
    let conn = amqp::connect(url, "aion-kanban-router").await?;
    let ctl = amqp::channel(&conn, url, false).await?;
    amqp::declare(
        &ctl,
        &topology::plan_in(&services, opts.namespace.as_deref()),
    )
    .await?;
    // Where other installations' devices deliver (their users may write nowhere else).
    amqp::declare_peer_entry(&ctl).await?;
    // Queues upstream-style files name in env: durable, no arguments; existing ones with other
    // arguments are kept (warning), not a reason to stop.
    let (named, problems) = topology::env_named(&services);
    for p in &problems {
        tracing::warn!("{p}");
    }
    amqp::declare_compatible(&conn, url, &named).await?;
    // Publishing on its own connection keeps confirms and deliveries off each other's socket.
    let pub_conn = amqp::connect(url, "aion-kanban-router-publish").await?;
    let publish = amqp::channel(&pub_conn, url, true).await?;
    let consume = amqp::channel(&conn, url, false).await?;
    let mut sources: Vec<(String, Source)> = topology::router_sources(&services)
        .into_iter()
        .map(|(q, service, number)| {
            (
                q.clone(),
                Source::Output {
                    queue: q,
                    service,
                    number,
                },
            )
        })
        .collect();
    sources.push((INBOUND_QUEUE.to_string(), Source::Inbound));
    sources.push((
        topology::records_queue_name(opts.namespace.as_deref()),
        Source::Records,
    ));
    let mut streams =
        amqp::consume_all(&consume, url, opts.prefetch, "aion-kanban:", sources).await?;
    let device = opts
        .device
        .clone()
        .unwrap_or_else(|| services.device_name.clone());
    tracing::info!(
        "router for device `{device}` on {}: {} queues consumed",
        amqp::redact(url),
        streams.len()
    );

    // Boot: start `startup` instances.
    if let Some(lc) = &opts.lifecycle {
        for ms in services.microservices.iter().filter(|m| m.startup) {
            for n in 1..=ms.scale.max(1) {
                if let Err(e) = lc.ensure_running(ms, n).await {
                    tracing::warn!("starting {}: {e}", ms.instance_name(n));
                }
            }
        }
    }

    let outboxes = outbox::Outboxes::new(opts.clone(), device.clone());
    let mut s = Session {
        opts: opts.clone(),
        services: services.clone(),
        device,
        publish,
        outboxes,
        staging: transfer::Staging::new(&opts.data_dir),
        incomplete: HashMap::new(),
    };
    // Transfers abandoned by their sender (a link cut restarts them under a new id).
    s.staging.sweep(
        Duration::from_secs(3600),
        Duration::from_secs(7 * 24 * 3600),
    );
    let inflight = Settler::start();
    let every = opts.check_interval;
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // A broker that shuts down does not always end a consumer stream or a publish in flight
    // (seen under load: the router sat idle after a broker restart while its queue filled), so
    // the session also ends when either of its connections is no longer connected, even in
    // the middle of handling a delivery (which then stays unacked and comes again).
    let lost = connection_lost(&conn, &pub_conn);
    tokio::pin!(lost);
    let end = loop {
        tokio::select! {
            biased;
            _ = &mut *shutdown => break Ok(End::Shutdown),
            _ = opts.reload.notified() => break Ok(End::Reload),
            e = &mut lost => break Err(e),
            next = streams.next() => match next {
                None => break Err(anyhow::anyhow!("all consumers were cancelled")),
                // One consumer failed or was cancelled by the broker: a new session subscribes
                // to every queue again (the others' unacked kanbans are redelivered).
                Some((_, Err(e))) => break Err(e.into()),
                Some((src, Ok(d))) => {
                    let handled = tokio::select! {
                        r = s.handle(src, d, &inflight) => r,
                        e = &mut lost => Err(e),
                    };
                    if let Err(e) = handled {
                        break Err(e);
                    }
                }
            },
            _ = keepalive.tick() => {
                s.keep_always_running().await;
                s.start_waited_for(&conn).await;
            }
        }
    };
    // Let confirmations that are on their way finish, so their messages get acked.
    let _ = tokio::time::timeout(Duration::from_secs(5), inflight.drain()).await;
    // A connection whose status still says connected while its broker is gone would wait for
    // a close-ok that never comes: the next session must not wait with it. With every step of
    // this cleanup bounded, `run` says the session ended within seconds of its end (a broker
    // restart in CI once left the router without consumers and silent).
    for c in [&conn, &pub_conn] {
        let close = c.close(200, "aion-kanban router session end".into());
        let _ = tokio::time::timeout(CLOSE_PATIENCE, close).await;
    }
    s.outboxes.close().await;
    end
}

/// How long a session's end waits for each of its connections to close.
const CLOSE_PATIENCE: Duration = Duration::from_secs(2);

/// How often [`connection_lost`] looks at the connections.
const CONNECTION_CHECK: Duration = Duration::from_millis(250);

/// Resolves once `consume` or `publish` has left the connected state (closed by the broker,
/// errored, or closing), with what happened.
async fn connection_lost(consume: &Connection, publish: &Connection) -> anyhow::Error {
    loop {
        tokio::time::sleep(CONNECTION_CHECK).await;
        for (what, c) in [("consuming", consume), ("publishing", publish)] {
            let status = c.status();
            if !status.connected() {
                let state = if status.errored() {
                    "errored"
                } else if status.closing() || status.closed() {
                    "closed"
                } else {
                    "not connected"
                };
                return anyhow::anyhow!("the {what} connection is {state}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::settle::AckWindow;
    use super::*;

    /// Deliveries settle out of tag order (the consume loop merges consumers): a `multiple` ack
    /// may only cover tags up to the first gap, and covers more as the gap fills.
    #[test]
    fn ack_window_covers_only_settled_prefixes() {
        let mut w = AckWindow::new();
        assert_eq!(w.covered(), 0);
        w.settle(2);
        w.settle(3);
        assert_eq!(w.covered(), 0, "tag 1 is not settled: nothing may be acked");
        w.settle(1);
        assert_eq!(w.covered(), 3);
        w.settle(5);
        assert_eq!(w.covered(), 3);
        w.settle(3); // settled twice (cannot happen; harmless)
        w.settle(4);
        assert_eq!(w.covered(), 5);
        assert!(w.ahead.is_empty());
        for t in (6..=100).rev() {
            w.settle(t);
        }
        assert_eq!(w.covered(), 100);
    }

    #[test]
    fn files_round_trip_and_stay_inside_home() {
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("Data");
        std::fs::create_dir_all(data.join("a_1")).unwrap();
        std::fs::write(data.join("a_1/x.jpg"), b"jpeg").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), data.join("a_1/link")).unwrap();

        let files = resolve_files(&data, &["Data/a_1/x.jpg".into()]).unwrap();
        assert_eq!(files[0].0, "x.jpg");
        let abs = data.join("a_1/x.jpg").to_string_lossy().into_owned();
        assert_eq!(resolve_files(&data, &[abs]).unwrap().len(), 1);
        assert!(
            resolve_files(&data, &["Data/a_1/link".into()])
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
        assert!(resolve_files(&data, &["Data/missing".into()]).is_err());
        // No files to send: the data directory need not exist (the kanban is forwarded, not
        // dead-lettered for a missing directory).
        let nowhere = home.path().join("no/such/Data");
        assert_eq!(resolve_files(&nowhere, &[]).unwrap().len(), 0);
        assert!(resolve_files(&nowhere, &["Data/x".into()]).is_err());

        // Files inline, as an older sender forwarded them, are stored by the receiver.
        let files: Vec<ForwardedFile> = files
            .iter()
            .map(|(name, real)| ForwardedFile {
                name: name.clone(),
                data: base64::engine::general_purpose::STANDARD
                    .encode(std::fs::read(real).unwrap()),
            })
            .collect();
        let stored = store_files(&data.join("b_2"), &files).unwrap();
        assert_eq!(std::fs::read(&stored[0]).unwrap(), b"jpeg");
        let bad = ForwardedFile {
            name: "..".into(),
            data: String::new(),
        };
        assert!(store_files(&data.join("b_2"), &[bad]).is_err());
    }
}
