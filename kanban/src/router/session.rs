//! One router session's handling of deliveries: route, publish with confirms, forward to other
//! devices, receive forwarded kanbans and the clients' records.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aion_model::ServicesFile;
use lapin::message::Delivery;
use lapin::{Channel, Connection};

use super::files::{ForwardError, Forwarded, store_files};
use super::options::RouterOptions;
use super::outbox::{self, Outboxes};
use super::settle::{Settle, Settler, Then};
use crate::amqp::{self, AmqpError};
use crate::lifecycle::KubeLifecycle;
use crate::message::Kanban;
use crate::output::RecordBatch;
use crate::replicator::{self, Outcome, Record};
use crate::routing::{self, Decision, Hop};
use crate::topology::{self, INBOUND_DLQ, INBOUND_QUEUE};
use crate::transfer::{self, Committed, TransferError};
use serde_json::value::RawValue;

/// How long a commit whose files are incomplete waits for its chunks before it is
/// dead-lettered (a chunk requeued after a disk error lands behind its commit).
pub(super) const INCOMPLETE_PATIENCE: Duration = Duration::from_secs(120);

pub(super) struct Session {
    pub(super) opts: Arc<RouterOptions>,
    pub(super) services: Arc<ServicesFile>,
    pub(super) device: String,
    pub(super) publish: Channel,
    /// Kanbans for other devices' brokers, forwarded off the consume loop.
    pub(super) outboxes: Outboxes,
    /// Chunks of files forwarded to this device, until their commit.
    pub(super) staging: transfer::Staging,
    /// When a commit was first found incomplete (its chunks may be behind it, requeued).
    pub(super) incomplete: HashMap<String, std::time::Instant>,
}

/// What a consumed message came from.
#[derive(Clone)]
pub(super) enum Source {
    Output {
        queue: String,
        service: String,
        number: i32,
    },
    Inbound,
    /// Records of kanbans routed producer-side by clients.
    Records,
}

impl Session {
    pub(super) fn record(&self, r: Record) {
        if let Some(rep) = &self.opts.replicator {
            rep.record(r);
        }
    }

    pub(super) async fn keep_always_running(&self) {
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
    pub(super) async fn start_waited_for(&self, conn: &Connection) {
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
    pub(super) async fn dead_letter(
        &self,
        dlq: &str,
        body: &[u8],
        reason: &str,
        source_queue: &str,
    ) -> Result<(), AmqpError> {
        dead_letter_on(&self.publish, dlq, body, reason, source_queue).await
    }

    /// Dead-letter delivery `d` (from `source_queue`) into `dlq` with `reason`, ack it, and
    /// record it as dead-lettered.
    /// Dead-letter a message of this device's inbound queue with `reason` (its record says why).
    async fn refuse_inbound(
        &self,
        d: &Delivery,
        reason: String,
        rec: Record,
        settler: &Settler,
    ) -> anyhow::Result<()> {
        self.reject(d, INBOUND_DLQ, INBOUND_QUEUE, reason, rec, settler)
            .await
    }

    pub(super) async fn reject(
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

    pub(super) async fn handle(
        &mut self,
        src: Source,
        d: Delivery,
        inflight: &Settler,
    ) -> anyhow::Result<()> {
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

    pub(super) async fn handle_output(
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
        let mut forwards = Vec::new();
        for hop in &hops {
            match hop {
                Hop::Local {
                    service,
                    number,
                    queue,
                } => {
                    let c = amqp::Destination::queue(queue)
                        .publish(&self.publish, &local_body, hop_props.clone())
                        .await?;
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
                    // Handed to the device's outbox; its detail is known when it has ended.
                    let outcome = self.outboxes.send(device, addr, service, *number, &k);
                    forwards.push(Forward {
                        device: device.clone(),
                        detail_at: details.len(),
                        sent: format!("{device}:{service}#{number}"),
                        outcome,
                    });
                    details.push(String::new());
                }
                Hop::Invalid { reason, .. } => {
                    self.dead_letter(&dlq, &d.data, reason, queue).await?;
                    details.push(format!("dead-lettered: {reason}"));
                }
            }
        }
        rec.outcome = Outcome::Routed;
        let forwards = if forwards.is_empty() {
            rec.detail = details.join(", ");
            None
        } else {
            Some(Forwards {
                list: forwards,
                details,
                dead_letter: DeadLetter {
                    ch: self.publish.clone(),
                    dlq,
                    body: d.data.clone(),
                    source_queue: queue.to_string(),
                },
            })
        };
        self.settle_when_confirmed(&d, confirms, forwards, rec, starts, inflight);
        Ok(())
    }

    /// Once the broker confirmed every message `d` was published as (`(queue, confirm)`) and
    /// every forward of it to another device's outbox has ended, ack `d`, record it and start
    /// the instances `starts` on demand; a missing confirm requeues it (at-least-once), a forward
    /// to retry puts it back after [`RETRY_PAUSE`](super::settle::RETRY_PAUSE), a refused one
    /// is dead-lettered with its reason (the forwards' details filled in as they ended). Runs in
    /// the settler, off the consume loop; with forwards, apart from the in-order jobs.
    fn settle_when_confirmed(
        &self,
        d: &Delivery,
        confirms: Vec<(String, lapin::PublisherConfirm)>,
        forwards: Option<Forwards>,
        mut rec: Record,
        starts: Vec<(String, i32)>,
        inflight: &Settler,
    ) {
        let replicator = self.opts.replicator.clone();
        let lifecycle = self.opts.lifecycle.clone();
        let services = self.services.clone();
        let settle = Settle::of(d);
        let apart = forwards.is_some();
        let job = async move {
            let mut ok = true;
            for (queue, c) in confirms {
                if let Err(e) = amqp::confirmed(&queue, c).await {
                    tracing::warn!("{e}");
                    ok = false;
                }
            }
            if let Some(mut fw) = forwards {
                let mut retry = false;
                for f in fw.list {
                    fw.details[f.detail_at] = match f.outcome.await {
                        Ok(Ok(())) => f.sent,
                        Ok(Err(ForwardError::Reject(reason))) => {
                            let dl = &fw.dead_letter;
                            if let Err(e) =
                                dead_letter_on(&dl.ch, &dl.dlq, &dl.body, &reason, &dl.source_queue)
                                    .await
                            {
                                tracing::warn!("{e}");
                                ok = false;
                            }
                            format!("dead-lettered: {reason}")
                        }
                        Ok(Err(ForwardError::Retry(e))) => {
                            // The device's broker unreachable: put it back, try again later.
                            tracing::warn!("forwarding to device `{}`: {e}; will retry", f.device);
                            retry = true;
                            String::new()
                        }
                        // The outbox closed with the session: the broker delivers it again.
                        Err(_) => {
                            retry = true;
                            String::new()
                        }
                    };
                }
                if retry {
                    // Every hop goes again (at-least-once: the ones that went are duplicated).
                    tokio::time::sleep(super::settle::RETRY_PAUSE).await;
                    return settle.done(false, None);
                }
                rec.detail = fw.details.join(", ");
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
        };
        // A forward may take long (a large file, a slow link): it must not hold the others.
        if apart {
            inflight.job_apart(job);
        } else {
            inflight.job(job);
        }
    }

    pub(super) fn record_after(&self, rec: Record) -> Option<Then> {
        let replicator = self.opts.replicator.clone()?;
        Some(Box::new(move || replicator.record(rec)))
    }

    /// A batch of records of kanbans that clients routed producer-side: replicator rows and
    /// on-demand starts (the kanbans themselves are already in their input queues).
    pub(super) async fn handle_records(
        &mut self,
        d: Delivery,
        inflight: &Settler,
    ) -> anyhow::Result<()> {
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
    pub(super) fn input_queues(&self, to: &[(String, i32)]) -> String {
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

    pub(super) async fn handle_inbound(
        &mut self,
        d: Delivery,
        inflight: &Settler,
    ) -> anyhow::Result<()> {
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
        // A device of another installation: the broker checked its `user_id` against its login.
        let peer = match peer_sender(&d, self.opts.peers.as_deref()) {
            Ok(p) => p,
            Err(refusal) => {
                return self
                    .refuse_inbound(&d, refusal.to_string(), rec, inflight)
                    .await;
            }
        };
        if let Some(chunk) = transfer::decode_chunk(&d.data) {
            match chunk.and_then(|(h, data)| self.staging.write_chunk(&h, data)) {
                Ok(()) => inflight.now(&d, None),
                Err(TransferError::Io(e)) => {
                    tracing::error!("storing a forwarded file's chunk: {e}");
                    inflight.requeue_later(&d).await;
                }
                Err(e) => {
                    return self.refuse_inbound(&d, e.to_string(), rec, inflight).await;
                }
            }
            return Ok(());
        }
        let parsed =
            serde_json::from_slice::<Forwarded>(&d.data).map_err(InboundRefusal::NotForwarded);
        let result = parsed.and_then(|f| {
            if let Some(peer) = &peer
                && f.from_device != *peer
            {
                return Err(InboundRefusal::NotTheSender {
                    claimed: f.from_device.clone(),
                    user: topology::peer_user(peer),
                });
            }
            let ms = self
                .services
                .microservice(&f.service)
                .ok_or_else(|| InboundRefusal::NoSuchService(f.service.clone()))?;
            if f.number < 1 || f.number > ms.scale.max(1) {
                return Err(InboundRefusal::NoSuchInstance {
                    service: f.service.clone(),
                    number: f.number,
                    scale: ms.scale,
                });
            }
            Ok((f, ms.clone()))
        });
        let (f, ms) = match result {
            Ok(x) => x,
            Err(refusal) => {
                rec.kanban = String::from_utf8_lossy(&d.data).into_owned();
                return self
                    .refuse_inbound(&d, refusal.to_string(), rec, inflight)
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
                return self.refuse_inbound(&d, e.to_string(), rec, inflight).await;
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
        let body = k.encode();
        let c = amqp::Destination::queue(&queue)
            .publish(&self.publish, &body, amqp::json_props())
            .await?;
        rec.source = format!("device:{}", f.from_device);
        rec.connection_key = k.connection_key.clone();
        rec.process_number = k.process_number.into();
        rec.outcome = Outcome::ForwardedIn;
        rec.detail = queue.clone();
        rec.kanban = String::from_utf8_lossy(&body).into_owned();
        let starts = vec![(ms.name.clone(), f.number)];
        self.settle_when_confirmed(&d, vec![(queue, c)], None, rec, starts, inflight);
        Ok(())
    }
}

/// A kanban's hop handed to another device's outbox.
pub(super) struct Forward {
    device: String,
    /// Its place in the record's detail, and what goes there when it was sent.
    detail_at: usize,
    sent: String,
    outcome: outbox::Outcome,
}

/// The hops of a kanban handed to other devices' outboxes, and what settling them needs.
pub(super) struct Forwards {
    list: Vec<Forward>,
    /// The record's detail, one entry per hop; the forwards' filled in as they end.
    details: Vec<String>,
    dead_letter: DeadLetter,
}

/// Where a kanban goes when a forward of it is refused.
pub(super) struct DeadLetter {
    ch: Channel,
    dlq: String,
    body: Vec<u8>,
    source_queue: String,
}

/// Dead-letter `body` (from `source_queue`) into `dlq` with a reason; confirmed.
async fn dead_letter_on(
    ch: &Channel,
    dlq: &str,
    body: &[u8],
    reason: &str,
    source_queue: &str,
) -> Result<(), AmqpError> {
    tracing::warn!("dead-lettering a message from {source_queue} to {dlq}: {reason}");
    let props = amqp::json_props().with_headers(amqp::dead_letter_headers(reason, source_queue));
    amqp::publish_confirmed(ch, dlq, body, props).await
}

/// The device of another installation that sent `d` (the `peer.<device>` user the broker
/// checked its `user_id` against), `None` for a message of this installation (the default
/// exchange, which peer users cannot write to).
/// `allowed`: the peers this device accepts (`--peers`), None for any the broker let in.
fn peer_sender(d: &Delivery, allowed: Option<&[String]>) -> Result<Option<String>, InboundRefusal> {
    if d.exchange.as_str() != topology::PEER_EXCHANGE {
        return Ok(None);
    }
    let user = d.properties.user_id().as_ref().map(|u| u.to_string());
    let Some(device) = user.as_deref().and_then(topology::peer_device) else {
        return Err(InboundRefusal::NoPeerUser(user));
    };
    if allowed.is_some_and(|a| !a.iter().any(|p| p == device)) {
        return Err(InboundRefusal::NotAPeer(device.to_string()));
    }
    Ok(Some(device.to_string()))
}

/// Why a message on this device's inbound queue is dead-lettered (its `x-aion-reason`).
#[derive(Debug, thiserror::Error)]
enum InboundRefusal {
    #[error(
        "came through {} without a peer user_id ({})",
        topology::PEER_EXCHANGE,
        .0.as_deref().unwrap_or("none")
    )]
    NoPeerUser(Option<String>),
    #[error("device `{0}` of another installation is not among this device's peers")]
    NotAPeer(String),
    #[error("claims to come from device `{claimed}` but was sent by broker user `{user}`")]
    NotTheSender { claimed: String, user: String },
    #[error("not a forwarded kanban: {0}")]
    NotForwarded(serde_json::Error),
    #[error("forwarded to `{0}`, which is not a microservice here")]
    NoSuchService(String),
    #[error("forwarded to instance {number} of `{service}` (scale {scale})")]
    NoSuchInstance {
        service: String,
        number: i32,
        scale: i32,
    },
}

/// Start instances `(service, number)` on demand, off the routing and ack path (an apiserver
/// round trip must not delay acks).
pub(super) fn spawn_starts(
    lc: Arc<KubeLifecycle>,
    services: Arc<ServicesFile>,
    starts: Vec<(String, i32)>,
) {
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
