//! Producer-side routing: the client library routes a microservice's output kanbans itself,
//! with the same rules as the router ([`crate::routing::route`] on the same `services.yml`),
//! and publishes them straight to the next instances' input queues — one broker traversal per
//! hop instead of two (`.out` → router → `.in`).
//!
//! * Every target local: the kanban (with `nextDeviceName` = this device, as the router does)
//!   goes to each target's `<base>-NNN.in`. Durable mode: persistent, `mandatory`, publisher
//!   confirms, and [`Pending::confirmed`] resolves only after every hop confirmed — ack the
//!   input after that (at-least-once). A queue not declared yet is declared first (same
//!   arguments as the runtime's topology), once per connection.
//! * Anything else — a target on another device, an invalid target, the terminate kanban, no
//!   route, an unknown source — goes to the instance's `QUEUE_TO` (`<base>-NNN.out`) exactly as
//!   before, and the router forwards, dead-letters or records it.
//! * For each kanban routed directly, once its hops confirmed, a record (the replicator's
//!   [`Record`] plus the instances to start) is queued to a background task that publishes
//!   records in batches to the records queue of its namespace
//!   ([`topology::records_queue_name`]: `aion-kanban.records.<namespace>`,
//!   [`topology::RECORDS_QUEUE`] without a namespace); the runtime of that namespace consumes
//!   them, writes the replicator rows and starts the target instances on demand. The record is off the hop's critical path:
//!   nothing waits for it. Records are at-least-once like kanbans (a redelivered input routed
//!   again is recorded again); a client that crashes can lose its last unsent batch of records
//!   (never a kanban).
//!
//! The configuration is re-read by [`Output::reload`] (the client wires it to SIGHUP and to the
//! file changing, like the router).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aion_model::ServicesFile;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};

use crate::amqp::{self, AmqpError};
use crate::config::ServicesSource;
use crate::message::Kanban;
use crate::replicator::Record;
use crate::routing::{self, Decision, Hop};
use crate::topology::{self, QueueSpec};

/// Errors of producer-side routing.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(
        "QUEUE_TO `{queue}` is not the output queue of any microservice instance in services.yml"
    )]
    UnknownOutput { queue: String },
}

/// How a kanban leaves this instance (pure decision, see [`plan_send`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendPlan {
    /// Straight to these local input queues: `(queue, service, number)`.
    Direct(Vec<(String, String, i32)>),
    /// To the instance's output queue; the router takes it from there.
    ViaRouter,
}

/// Where kanban `k` emitted by `from` goes when the client routes it: [`SendPlan::Direct`] when
/// the router would publish it only to local input queues, else [`SendPlan::ViaRouter`].
pub fn plan_send(cfg: &ServicesFile, device: &str, from: &str, k: &Kanban) -> SendPlan {
    match routing::route(cfg, device, from, k) {
        Decision::Route(hops) if hops.iter().all(|h| matches!(h, Hop::Local { .. })) => {
            SendPlan::Direct(
                hops.into_iter()
                    .filter_map(|h| match h {
                        Hop::Local {
                            service,
                            number,
                            queue,
                        } => Some((queue, service, number)),
                        _ => None,
                    })
                    .collect(),
            )
        }
        _ => SendPlan::ViaRouter,
    }
}

/// Find the instance whose output queue is `queue_to`: `(service, number)`.
pub fn instance_of_output(cfg: &ServicesFile, queue_to: &str) -> Option<(String, i32)> {
    topology::router_sources(cfg)
        .into_iter()
        .find(|(q, _, _)| q == queue_to)
        .map(|(_, s, n)| (s, n))
}

/// A record of a kanban routed producer-side, as published (in JSON arrays) to the records queue
/// ([`topology::records_queue_name`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    #[serde(flatten)]
    pub record: Record,
    /// Instances the kanban went to: `(service, number)`, to start on demand.
    pub starts: Vec<(String, i32)>,
}

pub struct OutputOptions {
    pub url: String,
    pub services: ServicesSource,
    /// This device's name; `None` → `deviceName` from services.yml.
    pub device: Option<String>,
    /// The instance's `QUEUE_TO` (`<base>-NNN.out`): identifies the instance and is where
    /// kanbans the client does not route go.
    pub queue_to: String,
    /// Persistent messages and publisher confirms (upstream's clients: persistent). `false`:
    /// transient messages, no confirms (fire and forget).
    pub durable: bool,
}

struct Routes {
    cfg: Arc<ServicesFile>,
    device: String,
    service: String,
    number: i32,
}

fn resolve(
    cfg: Arc<ServicesFile>,
    device: Option<&str>,
    queue_to: &str,
) -> Result<Routes, OutputError> {
    let (service, number) =
        instance_of_output(&cfg, queue_to).ok_or_else(|| OutputError::UnknownOutput {
            queue: queue_to.to_string(),
        })?;
    let device = device.map_or_else(|| cfg.device_name.clone(), str::to_string);
    Ok(Routes {
        cfg,
        device,
        service,
        number,
    })
}

struct Link {
    conn: Connection,
    ch: Channel,
    declared: HashSet<String>,
}

type SharedLink = Arc<Mutex<Option<Link>>>;

/// A microservice instance's output with producer-side routing. Cheap to share (`Arc`).
pub struct Output {
    url: String,
    /// The records queue of this instance's namespace.
    records_queue: QueueSpec,
    durable: bool,
    queue_to: String,
    services: ServicesSource,
    device: Option<String>,
    routes: RwLock<Arc<Routes>>,
    link: SharedLink,
    records: mpsc::Sender<ClientRecord>,
    record_task: tokio::task::JoinHandle<()>,
}

/// Confirmations of one routed kanban; await [`Pending::confirmed`] before acking the input.
pub struct Pending {
    confirms: Vec<(String, PublisherConfirm)>,
    record: Option<(ClientRecord, mpsc::Sender<ClientRecord>)>,
}

impl Pending {
    /// Resolves once every hop confirmed (immediately when not durable); then the record copy
    /// is queued for the runtime. An error means: do not ack the input (requeue it).
    pub async fn confirmed(self) -> Result<(), OutputError> {
        for (queue, c) in self.confirms {
            amqp::check_confirm(&queue, c.await)?;
        }
        if let Some((r, tx)) = self.record
            && tx.try_send(r).is_err()
        {
            tracing::warn!("record queue of the client is full: a kanban record was dropped");
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.record_task.abort();
    }
}

impl Output {
    /// Load the configuration and find this instance by its `QUEUE_TO`. Connects lazily.
    /// Records go to [`topology::RECORDS_QUEUE`] (no namespace); see [`Output::new_in`].
    pub fn new(opts: OutputOptions) -> Result<Output, OutputError> {
        Self::new_in(opts, None)
    }

    /// Like [`Output::new`] for an instance in Kubernetes namespace `namespace` (the client's
    /// `AION_NAMESPACE`): records go to that namespace's records queue
    /// ([`topology::records_queue_name`]), the one its runtime consumes.
    pub fn new_in(opts: OutputOptions, namespace: Option<&str>) -> Result<Output, OutputError> {
        let records_queue = topology::records_queue(namespace);
        let cfg = opts.services.load()?;
        let routes = resolve(cfg, opts.device.as_deref(), &opts.queue_to)?;
        let link: SharedLink = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel(65_536);
        let record_task = tokio::spawn(record_loop(
            opts.url.clone(),
            records_queue.clone(),
            opts.durable,
            link.clone(),
            rx,
        ));
        Ok(Output {
            url: opts.url,
            records_queue,
            durable: opts.durable,
            queue_to: opts.queue_to,
            services: opts.services,
            device: opts.device,
            routes: RwLock::new(Arc::new(routes)),
            link,
            records: tx,
            record_task,
        })
    }

    /// Re-read `services.yml` (new routes apply to the next kanban). On error the previous
    /// configuration stays.
    pub fn reload(&self) -> Result<(), OutputError> {
        let routes = resolve(
            self.services.load()?,
            self.device.as_deref(),
            &self.queue_to,
        )?;
        if let Ok(mut r) = self.routes.write() {
            *r = Arc::new(routes);
        }
        Ok(())
    }

    /// Reload on every notification (SIGHUP, file change) until the returned task is aborted.
    pub fn reload_on(
        self: &Arc<Self>,
        notify: Arc<tokio::sync::Notify>,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                notify.notified().await;
                let Some(out) = me.upgrade() else { return };
                match out.reload() {
                    Ok(()) => tracing::info!("client routes reloaded"),
                    Err(e) => {
                        tracing::error!("reloading services.yml: {e}; keeping the old routes")
                    }
                }
            }
        })
    }

    /// The instance this output belongs to: `(service, number)`.
    pub fn instance(&self) -> (String, i32) {
        let r = self.current();
        (r.service.clone(), r.number)
    }

    fn current(&self) -> Arc<Routes> {
        match self.routes.read() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn props(&self) -> BasicProperties {
        delivery_props(self.durable)
    }

    /// Route and publish `k`; returns the pending confirmations. One retry on a fresh
    /// connection if publishing fails (a broker restart).
    pub async fn publish(&self, k: &Kanban) -> Result<Pending, OutputError> {
        let routes = self.current();
        let plan = plan_send(&routes.cfg, &routes.device, &routes.service, k);
        let (targets, body): (Vec<(String, String, i32)>, Vec<u8>) = match &plan {
            SendPlan::Direct(hops) => (
                hops.clone(),
                routing::for_local_hop(k, &routes.device).encode(),
            ),
            SendPlan::ViaRouter => (
                vec![(self.queue_to.clone(), routes.service.clone(), 0)],
                k.encode(),
            ),
        };
        let mut link = self.link.lock().await;
        let mut attempt = 0;
        let confirms = loop {
            attempt += 1;
            match self.publish_on(&mut link, &routes, &targets, &body).await {
                Ok(c) => break c,
                Err(e) if attempt == 1 => {
                    tracing::warn!("publishing a kanban: {e}; reconnecting");
                    if let Some(l) = link.take() {
                        let _ = l.conn.close(200, "reconnecting".into()).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        drop(link);
        let record = match plan {
            SendPlan::Direct(hops) => Some((
                ClientRecord {
                    record: Record {
                        at: crate::replicator::timestamp(),
                        source_queue: self.records_queue.name.clone(),
                        source: format!("{}#{}", routes.service, routes.number),
                        connection_key: k.connection_key.clone(),
                        process_number: k.process_number.into(),
                        outcome: "routed".into(),
                        detail: hops
                            .iter()
                            .map(|(q, _, _)| q.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        // The body is no longer needed: move it (serde_json wrote UTF-8).
                        kanban: String::from_utf8(body)
                            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    },
                    starts: hops.into_iter().map(|(_, s, n)| (s, n)).collect(),
                },
                self.records.clone(),
            )),
            SendPlan::ViaRouter => None,
        };
        Ok(Pending { confirms, record })
    }

    /// Route, publish and wait for the confirmations (ack the input after this returns `Ok`).
    pub async fn send(&self, k: &Kanban) -> Result<(), OutputError> {
        self.publish(k).await?.confirmed().await
    }

    async fn publish_on(
        &self,
        link: &mut Option<Link>,
        routes: &Routes,
        targets: &[(String, String, i32)],
        body: &[u8],
    ) -> Result<Vec<(String, PublisherConfirm)>, AmqpError> {
        let l = ensure_link(link, &self.url, &self.records_queue, self.durable).await?;
        let mut confirms = Vec::with_capacity(targets.len());
        for (queue, _, _) in targets {
            if !l.declared.contains(queue) {
                if let Some(spec) = topology::plan(&routes.cfg)
                    .into_iter()
                    .find(|s| &s.name == queue)
                {
                    amqp::declare(&l.ch, [&spec]).await?;
                }
                l.declared.insert(queue.clone());
            }
            let c =
                l.ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        // Unroutable (no such queue) comes back instead of vanishing.
                        mandatory: self.durable,
                        ..Default::default()
                    },
                    body,
                    self.props(),
                )
                .await
                .map_err(|source| AmqpError::Publish {
                    queue: queue.clone(),
                    source,
                })?;
            if self.durable {
                confirms.push((queue.clone(), c));
            }
        }
        Ok(confirms)
    }
}

async fn ensure_link<'a>(
    link: &'a mut Option<Link>,
    url: &str,
    records_queue: &QueueSpec,
    confirms: bool,
) -> Result<&'a mut Link, AmqpError> {
    if link
        .as_ref()
        .is_none_or(|l| !l.conn.status().connected() || !l.ch.status().connected())
    {
        *link = None;
        let conn = amqp::connect(url, "aion-kanban-client-output").await?;
        let ch = amqp::channel(&conn, url, confirms).await?;
        amqp::declare(&ch, [records_queue]).await?;
        *link = Some(Link {
            conn,
            ch,
            declared: HashSet::new(),
        });
    }
    link.as_mut().ok_or_else(|| unreachable_link(url))
}

/// JSON properties; persistent (delivery mode 2) when durable, transient (1) otherwise.
fn delivery_props(durable: bool) -> BasicProperties {
    amqp::json_props().with_delivery_mode(if durable { 2 } else { 1 })
}

fn unreachable_link(url: &str) -> AmqpError {
    AmqpError::NotConfirmed {
        queue: amqp::redact(url),
        what: "no connection",
    }
}

/// How long the record task waits after the first record of a batch for more to accumulate.
/// Records only feed the replicator and on-demand start, so a few ms do not matter there; they
/// cut the broker's message rate for records by the batch size.
const RECORD_LINGER: Duration = Duration::from_millis(5);

/// Publish records in batches: whatever queued during [`RECORD_LINGER`] and while the previous
/// batch was on its way goes in the next one (one message per batch, a JSON array). Failed
/// batches are retried.
async fn record_loop(
    url: String,
    records_queue: QueueSpec,
    durable: bool,
    link: SharedLink,
    mut rx: mpsc::Receiver<ClientRecord>,
) {
    const MAX_BATCH: usize = 512;
    let props = delivery_props(durable);
    let mut batch: Vec<ClientRecord> = Vec::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(r) => batch.push(r),
                None => return,
            }
            // Let a few more accumulate: one broker message per batch, not per kanban.
            tokio::time::sleep(RECORD_LINGER).await;
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let body = serde_json::to_vec(&batch).unwrap_or_default();
        let ch = {
            let mut l = link.lock().await;
            ensure_link(&mut l, &url, &records_queue, durable)
                .await
                .map(|l| l.ch.clone())
        };
        let sent = match ch {
            Ok(ch) => {
                let r = ch
                    .basic_publish(
                        "".into(),
                        records_queue.name.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props.clone(),
                    )
                    .await;
                match r {
                    Ok(c) if durable => amqp::check_confirm(&records_queue.name, c.await),
                    Ok(_) => Ok(()),
                    Err(source) => Err(AmqpError::Publish {
                        queue: records_queue.name.clone(),
                        source,
                    }),
                }
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                batch.clear();
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                tracing::warn!(
                    "publishing {} kanban record(s): {e}; retrying in {backoff:?}",
                    batch.len()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // Keep the memory bounded while the broker is away.
                if batch.len() > 4 * MAX_BATCH {
                    let drop_n = batch.len() - 4 * MAX_BATCH;
                    tracing::warn!("dropping the {drop_n} oldest kanban record(s)");
                    batch.drain(..drop_n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::testutil::*;

    fn sample() -> ServicesFile {
        let mut c = cfg(
            "self",
            vec![
                ms(
                    "a",
                    2,
                    &[
                        ("default", &[("b", "n", "")]),
                        ("split", &[("c", "0", ""), ("b", "n", "")]),
                        ("mixed", &[("c", "0", ""), ("b", "n", "other")]),
                        ("ghost", &[("nope", "n", "")]),
                    ],
                ),
                ms("b", 2, &[]),
                ms("c", 1, &[]),
            ],
        );
        c.devices = vec![device("other", "10.213.0.12")];
        c
    }

    fn k(key: &str, n: i32) -> Kanban {
        Kanban {
            connection_key: key.into(),
            process_number: n,
            ..Default::default()
        }
    }

    #[test]
    fn local_targets_go_direct() {
        let c = sample();
        assert_eq!(
            plan_send(&c, "self", "a", &k("default", 2)),
            SendPlan::Direct(vec![("b-002.in".into(), "b".into(), 2)])
        );
        assert_eq!(
            plan_send(&c, "self", "a", &k("split", 2)),
            SendPlan::Direct(vec![
                ("c-001.in".into(), "c".into(), 1),
                ("b-002.in".into(), "b".into(), 2)
            ])
        );
    }

    #[test]
    fn everything_else_goes_via_the_router() {
        let c = sample();
        // a remote target among local ones: the router handles the whole kanban
        assert_eq!(
            plan_send(&c, "self", "a", &k("mixed", 1)),
            SendPlan::ViaRouter
        );
        let mut far = k("default", 1);
        far.next_device_name = "other".into();
        assert_eq!(plan_send(&c, "self", "a", &far), SendPlan::ViaRouter);
        assert_eq!(
            plan_send(&c, "self", "a", &k("ghost", 1)),
            SendPlan::ViaRouter
        );
        assert_eq!(
            plan_send(&c, "self", "a", &k("default", 3)),
            SendPlan::ViaRouter,
            "instance beyond scale"
        );
        assert_eq!(
            plan_send(&c, "self", "a", &k("service-broker", 1)),
            SendPlan::ViaRouter
        );
        assert_eq!(
            plan_send(&c, "self", "b", &k("default", 1)),
            SendPlan::ViaRouter,
            "no route"
        );
        assert_eq!(
            plan_send(&c, "self", "zzz", &k("default", 1)),
            SendPlan::ViaRouter
        );
    }

    #[test]
    fn instance_from_queue_to() {
        let c = sample();
        assert_eq!(instance_of_output(&c, "a-002.out"), Some(("a".into(), 2)));
        assert_eq!(instance_of_output(&c, "a-003.out"), None);
        assert_eq!(instance_of_output(&c, "a-001.in"), None);
    }

    #[test]
    fn record_round_trips_as_json() {
        let r = ClientRecord {
            record: Record {
                at: "t".into(),
                source_queue: topology::RECORDS_QUEUE.into(),
                source: "a#1".into(),
                connection_key: "default".into(),
                process_number: 1,
                outcome: "routed".into(),
                detail: "b-001.in".into(),
                kanban: "{}".into(),
            },
            starts: vec![("b".into(), 1)],
        };
        let v = serde_json::to_vec(&vec![r.clone()]).unwrap();
        let back: Vec<ClientRecord> = serde_json::from_slice(&v).unwrap();
        assert_eq!(back, vec![r]);
    }
}
