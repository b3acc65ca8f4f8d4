//! The router process: consumes every instance's output queue and this device's inbound queue,
//! routes each kanban (see [`crate::routing`]), publishes it to the next hops with publisher
//! confirms, and acks the consumed message only after every next hop confirmed. Faults:
//! undecodable bodies and undeliverable targets go to the dead-letter queue with a reason; a
//! lost connection ends the session, unacked messages return to their queues (at-least-once)
//! and the router reconnects with backoff. A configuration change (SIGHUP or the file changing)
//! ends the session cleanly and the next one re-declares the topology.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aion_model::ServicesFile;
use base64::Engine;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::{Channel, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::amqp::{self, AmqpError};
use crate::lifecycle::KubeLifecycle;
use crate::message::Kanban;
use crate::output::RecordBatch;
use crate::replicator::{self, Outcome, Record, Replicator};
use crate::routing::{self, Decision, Hop};
use crate::topology::{self, INBOUND_DLQ, INBOUND_QUEUE};
use crate::transfer::{self, Committed, TransferError};
use serde_json::value::RawValue;

pub use crate::config::{ConfigError, ServicesSource, load_services};

pub struct RouterOptions {
    pub services: ServicesSource,
    /// This device's name; `None` → `deviceName` from services.yml.
    pub device: Option<String>,
    pub amqp_url: String,
    /// Kubernetes namespace this runtime serves (`AION_NAMESPACE`), `None` when not configured:
    /// scopes the records queue it consumes ([`topology::records_queue_name`]), so runtimes of
    /// several namespaces can share one broker (cluster mode).
    pub namespace: Option<String>,
    /// Broker URL per remote device name; others use `remote_template`.
    pub device_amqp: HashMap<String, String>,
    /// Template for a remote device's broker URL; `{addr}` is replaced by `devices.<name>.addr`.
    pub remote_template: String,
    /// The data directory (`$AION_HOME/Data`); relative `fileList` paths are resolved against
    /// its parent (`$AION_HOME`), received files are stored under `<data>/<service>_<n>/`.
    pub data_dir: PathBuf,
    pub prefetch: u16,
    pub replicator: Option<Replicator>,
    pub lifecycle: Option<Arc<KubeLifecycle>>,
    /// How often to check the services file for changes.
    pub watch_interval: Duration,
    /// How often to check instances (lifecycle only): `always` instances kept running, and any
    /// instance whose input queue holds kanbans but has no consumer started (the backstop for
    /// a client's record lost in a crash).
    pub check_interval: Duration,
    /// Triggered externally to reload (SIGHUP handler, tests).
    pub reload: Arc<Notify>,
}

impl RouterOptions {
    pub fn new(services: ServicesSource, amqp_url: impl Into<String>) -> Self {
        RouterOptions {
            services,
            device: None,
            amqp_url: amqp_url.into(),
            namespace: None,
            device_amqp: HashMap::new(),
            remote_template: "amqp://guest:guest@{addr}:5672/%2f".into(),
            data_dir: PathBuf::from("/var/lib/aion/Data"),
            prefetch: 64,
            replicator: None,
            lifecycle: None,
            watch_interval: Duration::from_secs(2),
            check_interval: Duration::from_secs(30),
            reload: Arc::new(Notify::new()),
        }
    }
}

/// A kanban forwarded to another device's inbound queue, with the files of its `fileList`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forwarded {
    pub service: String,
    pub number: i32,
    pub from_device: String,
    pub kanban: Kanban,
    /// Files inline (base64; older senders).
    #[serde(default)]
    pub files: Vec<ForwardedFile>,
    /// Files sent ahead as chunks ([`transfer`]): the commit of that transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<transfer::Manifest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedFile {
    /// File name (no directories) to store it under on the receiving device.
    pub name: String,
    /// Base64 content.
    pub data: String,
}

/// How long a commit whose files are incomplete waits for its chunks before it is
/// dead-lettered (a chunk requeued after a disk error lands behind its commit).
const INCOMPLETE_PATIENCE: Duration = Duration::from_secs(120);

/// The pause before a delivery that met passing trouble is put back in its queue.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

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

struct Session {
    opts: Arc<RouterOptions>,
    services: Arc<ServicesFile>,
    device: String,
    publish: Channel,
    remotes: HashMap<String, (Connection, Channel)>,
    /// Chunks of files forwarded to this device, until their commit.
    staging: transfer::Staging,
    /// When a commit was first found incomplete (its chunks may be behind it, requeued).
    incomplete: HashMap<String, std::time::Instant>,
}

/// What a consumed message came from.
#[derive(Clone)]
enum Source {
    Output {
        queue: String,
        service: String,
        number: i32,
    },
    Inbound,
    /// Records of kanbans routed producer-side by clients.
    Records,
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

    let mut s = Session {
        opts: opts.clone(),
        services: services.clone(),
        device,
        publish,
        remotes: HashMap::new(),
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
    let _ = conn
        .close(200, "aion-kanban router session end".into())
        .await;
    let _ = pub_conn
        .close(200, "aion-kanban router session end".into())
        .await;
    for (_, (c, _)) in s.remotes.drain() {
        let _ = c.close(200, "bye".into()).await;
    }
    end
}

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

impl Session {
    fn record(&self, r: Record) {
        if let Some(rep) = &self.opts.replicator {
            rep.record(r);
        }
    }

    async fn keep_always_running(&self) {
        let Some(lc) = &self.opts.lifecycle else {
            return;
        };
        for ms in self.services.microservices.iter().filter(|m| m.always) {
            for n in (1..=ms.scale.max(1)).filter(|n| lc.was_started(ms, *n)) {
                if let Err(e) = lc.ensure_running(ms, n).await {
                    tracing::warn!("keeping {} running: {e}", ms.instance_name(n));
                }
            }
        }
    }

    /// Start every instance whose input queue holds kanbans that no consumer takes: kanbans
    /// routed by a client whose record never reached us (crash, broker restart) still get their
    /// instance started, at the latest one check interval later.
    async fn start_waited_for(&self, conn: &Connection) {
        let Some(lc) = &self.opts.lifecycle else {
            return;
        };
        let Ok(ch) = conn.create_channel().await else {
            return;
        };
        for ms in &self.services.microservices {
            for n in 1..=ms.scale.max(1) {
                let queue = topology::input_queue(ms, n);
                let passive = lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                let q = match ch
                    .queue_declare(queue.as_str().into(), passive, Default::default())
                    .await
                {
                    Ok(q) => q,
                    Err(e) => {
                        // A failed passive declare closes the channel: stop this round.
                        tracing::warn!("checking {queue}: {e}");
                        return;
                    }
                };
                if q.message_count() > 0 && q.consumer_count() == 0 {
                    tracing::info!(
                        "{queue}: {} kanban(s) waiting and no consumer: starting {}",
                        q.message_count(),
                        ms.instance_name(n)
                    );
                    if let Err(e) = lc.ensure_running(ms, n).await {
                        tracing::warn!("on-demand start of {}: {e}", ms.instance_name(n));
                    }
                }
            }
        }
        let _ = ch.close(200, "checked".into()).await;
    }

    /// Dead-letter `body` into `dlq` with a reason; confirmed.
    async fn dead_letter(
        &self,
        dlq: &str,
        body: &[u8],
        reason: &str,
        source_queue: &str,
    ) -> Result<(), AmqpError> {
        tracing::warn!("dead-lettering a message from {source_queue} to {dlq}: {reason}");
        let props =
            amqp::json_props().with_headers(amqp::dead_letter_headers(reason, source_queue));
        amqp::publish_confirmed(&self.publish, dlq, body, props).await
    }

    /// Dead-letter delivery `d` (from `source_queue`) into `dlq` with `reason`, ack it, and
    /// record it as dead-lettered.
    async fn reject(
        &self,
        d: &Delivery,
        dlq: &str,
        source_queue: &str,
        reason: String,
        mut rec: Record,
        settler: &Settler,
    ) -> anyhow::Result<()> {
        self.dead_letter(dlq, &d.data, &reason, source_queue)
            .await?;
        rec.outcome = Outcome::DeadLettered;
        rec.detail = reason;
        let replicator = self.opts.replicator.clone();
        settler.now(
            d,
            Some(Box::new(move || {
                if let Some(rep) = replicator {
                    rep.record(rec);
                }
            })),
        );
        Ok(())
    }

    async fn handle(&mut self, src: Source, d: Delivery, inflight: &Settler) -> anyhow::Result<()> {
        match src {
            Source::Output {
                queue,
                service,
                number,
            } => {
                self.handle_output(&queue, &service, number, d, inflight)
                    .await
            }
            Source::Inbound => self.handle_inbound(d, inflight).await,
            Source::Records => self.handle_records(d, inflight).await,
        }
    }

    async fn handle_output(
        &mut self,
        queue: &str,
        service: &str,
        number: i32,
        d: Delivery,
        inflight: &Settler,
    ) -> anyhow::Result<()> {
        // The configuration this kanban is routed by (an `Arc`: a reload meanwhile does not
        // change it under us, and the microservice is borrowed, not cloned, per kanban).
        let services = self.services.clone();
        let ms = services.microservice(service);
        let dlq = ms
            .map(topology::dead_letter_queue)
            .unwrap_or_else(|| INBOUND_DLQ.to_string());
        let source = format!("{service}#{number}");
        let mut rec = Record {
            at: replicator::timestamp(),
            source_queue: queue.to_string(),
            source: source.clone(),
            connection_key: String::new(),
            process_number: 0,
            // Until decided below; every path sets it (reject: dead-lettered).
            outcome: Outcome::DeadLettered,
            detail: String::new(),
            kanban: String::new(),
        };
        let k = match Kanban::decode(&d.data) {
            Ok(k) => k,
            Err(e) => {
                rec.kanban = String::from_utf8_lossy(&d.data).into_owned();
                return self
                    .reject(&d, &dlq, queue, e.to_string(), rec, inflight)
                    .await;
            }
        };
        rec.connection_key = k.connection_key.clone();
        rec.process_number = k.process_number.into();
        rec.kanban = String::from_utf8_lossy(&d.data).into_owned();

        let decision = routing::route(&self.services, &self.device, service, &k);
        let hops = match decision {
            Decision::Route(h) => h,
            Decision::Terminate => {
                if let (Some(lc), Some(ms)) = (&self.opts.lifecycle, ms) {
                    lc.forget(ms, number);
                }
                rec.outcome = Outcome::Terminate;
                inflight.now(&d, self.record_after(rec));
                return Ok(());
            }
            Decision::NoRoute => {
                tracing::warn!(
                    "{source}: no nextService for connection key `{}` and no `default`",
                    k.connection_key
                );
                rec.outcome = Outcome::NoRoute;
                inflight.now(&d, self.record_after(rec));
                return Ok(());
            }
            Decision::UnknownSource => {
                let reason = format!("`{service}` is not in services.yml");
                return self.reject(&d, &dlq, queue, reason, rec, inflight).await;
            }
        };

        // Publish to every hop in order; collect the confirmations and wait for them off the
        // consume loop so the next delivery is handled meanwhile.
        let local_body = k.encode_for_hop(&self.device);
        // Keep the producer's delivery mode (upstream's clients send persistent messages;
        // a transient producer stays transient).
        let hop_props =
            amqp::json_props().with_delivery_mode(d.properties.delivery_mode().unwrap_or(2));
        let mut confirms = Vec::with_capacity(hops.len());
        let mut details = Vec::with_capacity(hops.len());
        let mut starts = Vec::new();
        let mut failed: Option<String> = None;
        for hop in &hops {
            match hop {
                Hop::Local {
                    service,
                    number,
                    queue,
                } => {
                    let c = self
                        .publish
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            &local_body,
                            hop_props.clone(),
                        )
                        .await
                        .map_err(|source| AmqpError::Publish {
                            queue: queue.clone(),
                            source,
                        })?;
                    confirms.push((queue.clone(), c));
                    details.push(queue.clone());
                    starts.push((service.clone(), *number));
                }
                Hop::Remote {
                    device,
                    addr,
                    service,
                    number,
                } => {
                    match self.forward(device, addr, service, *number, &k).await {
                        Ok(()) => details.push(format!("{device}:{service}#{number}")),
                        Err(ForwardError::Retry(e)) => {
                            // Remote broker unreachable: put it back and try again later.
                            tracing::warn!("forwarding to device `{device}`: {e}; will retry");
                            self.remotes.remove(device);
                            failed = Some(e);
                            break;
                        }
                        Err(ForwardError::Reject(reason)) => {
                            self.dead_letter(&dlq, &d.data, &reason, queue).await?;
                            details.push(format!("dead-lettered: {reason}"));
                        }
                    }
                }
                Hop::Invalid { reason, .. } => {
                    self.dead_letter(&dlq, &d.data, reason, queue).await?;
                    details.push(format!("dead-lettered: {reason}"));
                }
            }
        }
        if failed.is_some() {
            // Wait for local confirms already sent, then requeue the whole kanban.
            for (queue, c) in confirms {
                let _ = amqp::confirmed(&queue, c).await;
            }
            inflight.requeue_later(&d).await;
            return Ok(());
        }
        rec.outcome = Outcome::Routed;
        rec.detail = details.join(", ");
        let replicator = self.opts.replicator.clone();
        let lifecycle = self.opts.lifecycle.clone();
        let settle = Settle::of(&d);
        inflight.job(async move {
            let mut ok = true;
            for (queue, c) in confirms {
                if let Err(e) = amqp::confirmed(&queue, c).await {
                    tracing::warn!("{e}");
                    ok = false;
                }
            }
            settle.done(
                ok,
                Some(Box::new(move || {
                    if let Some(rep) = replicator {
                        rep.record(rec);
                    }
                    if let Some(lc) = lifecycle {
                        spawn_starts(lc, services, starts);
                    }
                })),
            )
        });
        Ok(())
    }

    /// Record `rec` once its kanban is acknowledged.
    fn record_after(&self, rec: Record) -> Option<Then> {
        let replicator = self.opts.replicator.clone()?;
        Some(Box::new(move || replicator.record(rec)))
    }

    /// A batch of records of kanbans that clients routed producer-side: replicator rows and
    /// on-demand starts (the kanbans themselves are already in their input queues).
    async fn handle_records(&mut self, d: Delivery, inflight: &Settler) -> anyhow::Result<()> {
        let records = topology::records_queue_name(self.opts.namespace.as_deref());
        let batch: RecordBatch<&RawValue> = match serde_json::from_slice(&d.data) {
            Ok(b) => b,
            Err(e) => {
                let reason = format!("not a batch of kanban records: {e}");
                self.dead_letter(INBOUND_DLQ, &d.data, &reason, &records)
                    .await?;
                inflight.now(&d, None);
                return Ok(());
            }
        };
        let mut starts: Vec<(String, i32)> = Vec::new();
        // Records of a batch mostly went to the same instances: name their queues once.
        let mut last: Option<(&[(String, i32)], String)> = None;
        for r in &batch.records {
            for s in &r.to {
                if !starts.contains(s) {
                    starts.push(s.clone());
                }
            }
            if self.opts.replicator.is_none() {
                continue;
            }
            let detail = match &last {
                Some((to, detail)) if *to == r.to.as_slice() => detail.clone(),
                _ => {
                    let detail = self.input_queues(&r.to);
                    last = Some((&r.to, detail.clone()));
                    detail
                }
            };
            self.record(Record {
                at: replicator::timestamp_of_micros(r.at_us),
                source_queue: records.clone(),
                source: batch.source.clone(),
                connection_key: r.connection_key.clone(),
                process_number: r.process_number,
                outcome: Outcome::Routed,
                detail,
                kanban: r.kanban.get().to_owned(),
            });
        }
        if let Some(lc) = self.opts.lifecycle.clone() {
            spawn_starts(lc, self.services.clone(), starts);
        }
        inflight.now(&d, None);
        Ok(())
    }

    /// The input queues of instances `to` (`service#number` for one not in services.yml).
    fn input_queues(&self, to: &[(String, i32)]) -> String {
        to.iter()
            .map(|(service, n)| {
                self.services.microservice(service).map_or_else(
                    || format!("{service}#{n}"),
                    |m| topology::input_queue(m, *n),
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    async fn remote_channel(&mut self, device: &str, addr: &str) -> Result<&Channel, AmqpError> {
        if self
            .remotes
            .get(device)
            .is_some_and(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            self.remotes.remove(device);
        }
        if !self.remotes.contains_key(device) {
            let url = self
                .opts
                .device_amqp
                .get(device)
                .cloned()
                .unwrap_or_else(|| self.opts.remote_template.replace("{addr}", addr));
            let conn = amqp::connect(&url, "aion-kanban-forward").await?;
            let ch = amqp::channel(&conn, &url, true).await?;
            let spec = topology::plan(&ServicesFile::default());
            amqp::declare(&ch, &spec).await?;
            self.remotes.insert(device.to_string(), (conn, ch));
        }
        Ok(&self.remotes[device].1)
    }

    async fn forward(
        &mut self,
        device: &str,
        addr: &str,
        service: &str,
        number: i32,
        k: &Kanban,
    ) -> Result<(), ForwardError> {
        let files =
            resolve_files(&self.opts.data_dir, &k.file_list).map_err(ForwardError::Reject)?;
        let from_device = self.device.clone();
        let ch = self
            .remote_channel(device, addr)
            .await
            .map_err(|e| ForwardError::Retry(e.to_string()))?;
        // Files go ahead as confirmed chunks; the kanban follows as the transfer's commit.
        let manifest = if files.is_empty() {
            None
        } else {
            Some(
                transfer::send_files(ch, INBOUND_QUEUE, &files)
                    .await
                    .map_err(ForwardError::Retry)?,
            )
        };
        let env = Forwarded {
            service: service.into(),
            number,
            from_device,
            kanban: k.clone(),
            files: Vec::new(),
            transfer: manifest,
        };
        let body = serde_json::to_vec(&env).map_err(|e| ForwardError::Reject(e.to_string()))?;
        amqp::publish_confirmed(ch, INBOUND_QUEUE, &body, amqp::json_props())
            .await
            .map_err(|e| ForwardError::Retry(e.to_string()))
    }

    async fn handle_inbound(&mut self, d: Delivery, inflight: &Settler) -> anyhow::Result<()> {
        let mut rec = Record {
            at: replicator::timestamp(),
            source_queue: INBOUND_QUEUE.into(),
            source: "device:?".into(),
            connection_key: String::new(),
            process_number: 0,
            // Until decided below; every path sets it (reject: dead-lettered).
            outcome: Outcome::DeadLettered,
            detail: String::new(),
            kanban: String::new(),
        };
        if let Some(chunk) = transfer::decode_chunk(&d.data) {
            match chunk.and_then(|(h, data)| self.staging.write_chunk(&h, data)) {
                Ok(()) => inflight.now(&d, None),
                Err(TransferError::Io(e)) => {
                    tracing::error!("storing a forwarded file's chunk: {e}");
                    inflight.requeue_later(&d).await;
                }
                Err(e) => {
                    return self
                        .reject(&d, INBOUND_DLQ, INBOUND_QUEUE, e.to_string(), rec, inflight)
                        .await;
                }
            }
            return Ok(());
        }
        let reject = |reason: String| reason;
        let parsed: Result<Forwarded, String> = serde_json::from_slice(&d.data)
            .map_err(|e| reject(format!("not a forwarded kanban: {e}")));
        let result = parsed.and_then(|f| {
            let ms = self.services.microservice(&f.service).ok_or_else(|| {
                format!(
                    "forwarded to `{}`, which is not a microservice here",
                    f.service
                )
            })?;
            if f.number < 1 || f.number > ms.scale.max(1) {
                return Err(format!(
                    "forwarded to instance {} of `{}` (scale {})",
                    f.number, f.service, ms.scale
                ));
            }
            Ok((f, ms.clone()))
        });
        let (f, ms) = match result {
            Ok(x) => x,
            Err(reason) => {
                rec.kanban = String::from_utf8_lossy(&d.data).into_owned();
                return self
                    .reject(&d, INBOUND_DLQ, INBOUND_QUEUE, reason, rec, inflight)
                    .await;
            }
        };
        let dir = self
            .opts
            .data_dir
            .join(format!("{}_{}", ms.label_base(), f.number));
        let committed = match &f.transfer {
            Some(m) => self.staging.commit(m, &dir),
            None => Ok(Committed::Stored(Vec::new())),
        };
        let chunked = match committed {
            Ok(Committed::Stored(paths)) => {
                if let Some(m) = &f.transfer {
                    self.incomplete.remove(&m.transfer);
                }
                paths
            }
            Ok(Committed::Duplicate) => {
                // Delivered before (a redelivered commit): at most once per transfer.
                inflight.now(&d, None);
                return Ok(());
            }
            Err(TransferError::Incomplete { .. })
                if self
                    .incomplete
                    .entry(
                        f.transfer
                            .as_ref()
                            .map_or_else(String::new, |m| m.transfer.clone()),
                    )
                    .or_insert_with(std::time::Instant::now)
                    .elapsed()
                    < INCOMPLETE_PATIENCE =>
            {
                // Chunks requeued behind their commit: wait for them.
                inflight.requeue_later(&d).await;
                return Ok(());
            }
            Err(TransferError::Io(e)) => {
                tracing::error!("committing forwarded files under {}: {e}", dir.display());
                inflight.requeue_later(&d).await;
                return Ok(());
            }
            Err(e) => {
                rec.kanban = String::from_utf8_lossy(&d.data).into_owned();
                return self
                    .reject(&d, INBOUND_DLQ, INBOUND_QUEUE, e.to_string(), rec, inflight)
                    .await;
            }
        };
        let stored = match store_files(&dir, &f.files) {
            Ok(p) => p
                .into_iter()
                .chain(chunked.iter().map(|p| p.to_string_lossy().into_owned()))
                .collect::<Vec<_>>(),
            Err(e) => {
                // Disk trouble: keep the message and retry later.
                tracing::error!("storing forwarded files under {}: {e}", dir.display());
                inflight.requeue_later(&d).await;
                return Ok(());
            }
        };
        let mut k = f.kanban.clone();
        if !f.files.is_empty() || f.transfer.is_some() {
            k.file_list = stored;
        }
        k.next_device_name = self.device.clone();
        let queue = topology::input_queue(&ms, f.number);
        let c = self
            .publish
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &k.encode(),
                amqp::json_props(),
            )
            .await
            .map_err(|source| AmqpError::Publish {
                queue: queue.clone(),
                source,
            })?;
        rec.source = format!("device:{}", f.from_device);
        rec.connection_key = k.connection_key.clone();
        rec.process_number = k.process_number.into();
        rec.outcome = Outcome::ForwardedIn;
        rec.detail = queue.clone();
        rec.kanban = String::from_utf8_lossy(&k.encode()).into_owned();
        let replicator = self.opts.replicator.clone();
        let lifecycle = self.opts.lifecycle.clone();
        let services = self.services.clone();
        let settle = Settle::of(&d);
        inflight.job(async move {
            let ok = amqp::confirmed(&queue, c)
                .await
                .inspect_err(|e| tracing::warn!("{e}"))
                .is_ok();
            settle.done(
                ok,
                Some(Box::new(move || {
                    if let Some(rep) = replicator {
                        rep.record(rec);
                    }
                    if let Some(lc) = lifecycle {
                        spawn_starts(lc, services, vec![(ms.name.clone(), f.number)]);
                    }
                })),
            )
        });
        Ok(())
    }
}

/// Start instances `(service, number)` on demand, off the routing and ack path (an apiserver
/// round trip must not delay acks).
fn spawn_starts(lc: Arc<KubeLifecycle>, services: Arc<ServicesFile>, starts: Vec<(String, i32)>) {
    tokio::spawn(async move {
        for (svc, n) in starts {
            if let Some(ms) = services.microservice(&svc)
                && let Err(e) = lc.ensure_running(ms, n).await
            {
                tracing::warn!("on-demand start of {}: {e}", ms.instance_name(n));
            }
        }
    });
}

/// What to run once a delivery is acknowledged (its record, on-demand starts).
type Then = Box<dyn FnOnce() + Send>;

/// How one delivery ends: acknowledged (`ok`, then `then`) or put back in its queue.
struct Settled {
    tag: u64,
    acker: lapin::Acker,
    ok: bool,
    then: Option<Then>,
}

/// The delivery's tag and acker, taken before its body is moved into a job.
struct Settle {
    tag: u64,
    acker: lapin::Acker,
}

impl Settle {
    fn of(d: &Delivery) -> Settle {
        Settle {
            tag: d.delivery_tag,
            acker: d.acker.clone(),
        }
    }

    fn done(self, ok: bool, then: Option<Then>) -> Settled {
        Settled {
            tag: self.tag,
            acker: self.acker,
            ok,
            then,
        }
    }
}

type Job = std::pin::Pin<Box<dyn std::future::Future<Output = Settled> + Send>>;

/// Which deliveries of one channel may be acknowledged with one `multiple` ack: tags are given
/// by the broker in order (1, 2, 3 … per channel), but the consume loop merges several consumers
/// of the channel, so deliveries finish out of tag order. Only tags up to the first one not
/// settled yet may be covered (an ack for a delivery not handled yet would lose it; tried
/// without this window, the benchmark chain stalled at 371 of 1,000 kanbans).
#[derive(Debug)]
struct AckWindow {
    /// Every tag below this one is settled.
    next: u64,
    /// Settled tags at or above `next` (after a gap).
    ahead: std::collections::BTreeSet<u64>,
}

impl AckWindow {
    fn new() -> AckWindow {
        AckWindow {
            next: 1,
            ahead: std::collections::BTreeSet::new(),
        }
    }

    /// `tag` is settled (acknowledged, to be acknowledged, or requeued).
    fn settle(&mut self, tag: u64) {
        if tag < self.next {
            return;
        }
        self.ahead.insert(tag);
        while self.ahead.remove(&self.next) {
            self.next += 1;
        }
    }

    /// The highest tag such that it and every tag below it are settled (0: none).
    fn covered(&self) -> u64 {
        self.next - 1
    }
}

/// After how many settled deliveries the settler acknowledges at the latest (it does sooner
/// whenever no more work is queued, so an idle router adds no delay).
const ACK_BATCH: usize = 64;

/// Confirm-then-ack work, run in order by one task (cheaper than a task per kanban). Settled
/// deliveries are acknowledged together: one `multiple` ack for every delivery up to the
/// highest tag [`AckWindow`] allows, sent when the queue of work is empty or [`ACK_BATCH`]
/// deliveries wait (the router's ack frames were as many as its kanbans: a broker on a 2-core
/// device did that much more work per hop than a client routing producer-side). Requeues go out
/// one by one, at once. What a delivery runs after its ack (`then`) runs after the ack that
/// covers it was sent.
struct Settler {
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
    task: tokio::task::JoinHandle<()>,
}

impl Settler {
    fn start() -> Settler {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let task = tokio::spawn(async move {
            let mut window = AckWindow::new();
            let mut waiting: std::collections::BTreeMap<u64, (lapin::Acker, Option<Then>)> =
                std::collections::BTreeMap::new();
            while let Some(job) = rx.recv().await {
                let s = job.await;
                if s.ok {
                    waiting.insert(s.tag, (s.acker, s.then));
                } else if let Err(e) = s
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                {
                    tracing::warn!("requeueing a kanban: {e} (it will be redelivered)");
                }
                window.settle(s.tag);
                if rx.is_empty() || waiting.len() >= ACK_BATCH {
                    ack_covered(&window, &mut waiting).await;
                }
            }
            ack_covered(&window, &mut waiting).await;
        });
        Settler { tx, task }
    }

    fn job(&self, f: impl std::future::Future<Output = Settled> + Send + 'static) {
        let _ = self.tx.send(Box::pin(f));
    }

    /// Acknowledge `d` in turn (nothing to wait for), then run `then`.
    fn now(&self, d: &Delivery, then: Option<Then>) {
        let s = Settle::of(d);
        self.job(async move { s.done(true, then) });
    }

    /// Put `d` back in its queue in turn.
    fn requeue(&self, d: &Delivery) {
        let s = Settle::of(d);
        self.job(async move { s.done(false, None) });
    }

    /// Wait [`RETRY_PAUSE`], then put `d` back in its queue: for trouble that may pass (a
    /// remote broker, the disk, chunks still on their way), so the redelivery is not a hot loop.
    async fn requeue_later(&self, d: &Delivery) {
        tokio::time::sleep(RETRY_PAUSE).await;
        self.requeue(d);
    }

    /// Finish everything queued.
    async fn drain(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// Acknowledge, with one `multiple` ack, every waiting delivery the window covers, then run
/// their `then`s. A failed ack (connection lost) drops them: the broker redelivers.
async fn ack_covered(
    window: &AckWindow,
    waiting: &mut std::collections::BTreeMap<u64, (lapin::Acker, Option<Then>)>,
) {
    let rest = waiting.split_off(&(window.covered() + 1));
    let covered = std::mem::replace(waiting, rest);
    let Some((_, (acker, _))) = covered.last_key_value() else {
        return;
    };
    let multiple = covered.len() > 1;
    match acker.ack(BasicAckOptions { multiple }).await {
        Ok(_) => {
            for (_, (_, then)) in covered {
                if let Some(then) = then {
                    then();
                }
            }
        }
        Err(e) => tracing::warn!(
            "acknowledging {} kanban(s): {e} (they will be redelivered)",
            covered.len()
        ),
    }
}

enum ForwardError {
    /// Transient (remote broker unreachable): requeue and retry.
    Retry(String),
    /// Permanent (file missing or outside the AION home): dead-letter.
    Reject(String),
}

/// The name to store each `fileList` entry under and its real path, to forward them. Relative
/// paths are relative to the AION home (the data directory's parent), as upstream's
/// send-anything did; a path that resolves (symlinks included) outside the AION home is refused.
pub fn resolve_files(data_dir: &Path, list: &[String]) -> Result<Vec<(String, PathBuf)>, String> {
    if list.is_empty() {
        // Nothing to read: a missing data directory is not this kanban's problem.
        return Ok(Vec::new());
    }
    let home = data_dir.parent().unwrap_or(data_dir);
    let home_c = home
        .canonicalize()
        .map_err(|e| format!("AION home {}: {e}", home.display()))?;
    list.iter()
        .map(|p| {
            let path = if Path::new(p).is_absolute() {
                PathBuf::from(p)
            } else {
                home.join(p)
            };
            let real = path
                .canonicalize()
                .map_err(|e| format!("fileList entry {p}: {e}"))?;
            if !real.starts_with(&home_c) {
                return Err(format!("fileList entry {p} is outside {}", home.display()));
            }
            if !real.is_file() {
                return Err(format!("fileList entry {p} is not a file"));
            }
            let name = real
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, real))
        })
        .collect()
}

/// Store received files atomically (temp file + rename) under `dir`; returns their paths.
pub fn store_files(dir: &Path, files: &[ForwardedFile]) -> Result<Vec<String>, String> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    files
        .iter()
        .map(|f| {
            let name = Path::new(&f.name)
                .file_name()
                .filter(|n| !n.is_empty() && *n != "." && *n != "..")
                .ok_or_else(|| format!("bad file name `{}`", f.name))?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&f.data)
                .map_err(|e| format!("file {}: {e}", f.name))?;
            let dest = dir.join(name);
            let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
            std::fs::write(&tmp, data).map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
            Ok(dest.to_string_lossy().into_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
