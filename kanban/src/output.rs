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
//! * For each kanban routed directly, once its hops confirmed, a record ([`BatchRecord`]: time,
//!   connection key, process number, the instances it went to, the kanban as raw JSON) is queued
//!   to a background task that publishes records in batches ([`RecordBatch`]) to the records
//!   queue of its namespace
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

use crate::amqp::{self, AmqpError, SharedConnection};
use crate::config::ServicesSource;
use crate::message::Kanban;
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

/// One message on the records queue ([`topology::records_queue_name`]): kanbans that one
/// instance routed producer-side, oldest first. The runtime turns each into a replicator row
/// and starts the instances they went to.
///
/// The format is made to cost little per kanban on a busy device: the source once per batch,
/// the time as an integer, and the kanban embedded as raw JSON, neither escaped into a string
/// by the client nor parsed into a tree by the runtime (`K` = [`EncodedKanban`] when sending,
/// `&RawValue` borrowed from the message when reading).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordBatch<K> {
    /// `service#number` of the instance that routed them.
    pub source: String,
    pub records: Vec<BatchRecord<K>>,
}

/// A kanban routed producer-side (see [`RecordBatch`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord<K> {
    /// When its hops were published: microseconds since the Unix epoch.
    pub at_us: i64,
    pub connection_key: String,
    pub process_number: i64,
    /// The instances it went to, `(service, number)`: the row's detail, and the instances the
    /// runtime starts on demand.
    pub to: Vec<(String, i32)>,
    /// The kanban as published.
    pub kanban: K,
}

/// A kanban's JSON exactly as [`Kanban::encode_for_hop`] wrote it for publishing: valid by
/// construction, so a record embeds it without parsing it again to prove it (what
/// `RawValue::from_string` would do for every kanban).
pub struct EncodedKanban(Vec<u8>);

impl RecordBatch<EncodedKanban> {
    /// The batch as [`RecordBatch`]'s derived `Serialize` writes it with a `RawValue` kanban
    /// (byte for byte; a unit test holds the two together), the kanbans copied in as they are.
    pub fn encode(&self) -> Vec<u8> {
        // Strings, integers and (string, integer) pairs always serialise.
        fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
            let _ = serde_json::to_writer(&mut *out, v);
        }
        let size: usize = self.records.iter().map(|r| r.kanban.0.len() + 128).sum();
        let mut out = Vec::with_capacity(size + 64);
        out.extend_from_slice(b"{\"source\":");
        json(&mut out, &self.source);
        out.extend_from_slice(b",\"records\":[");
        for (i, r) in self.records.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"at_us\":");
            json(&mut out, &r.at_us);
            out.extend_from_slice(b",\"connection_key\":");
            json(&mut out, &r.connection_key);
            out.extend_from_slice(b",\"process_number\":");
            json(&mut out, &r.process_number);
            out.extend_from_slice(b",\"to\":");
            json(&mut out, &r.to);
            out.extend_from_slice(b",\"kanban\":");
            out.extend_from_slice(&r.kanban.0);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// A record as the client queues it for sending: its instance (`service#number`) and the record.
type Outgoing = (Arc<str>, BatchRecord<EncodedKanban>);

/// What an [`Output`] routes for; the broker comes from the constructor ([`Output::new`]'s
/// URL, or the connection given to [`Output::on`]).
pub struct OutputOptions {
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
    /// `service#number`, the records' source.
    source: Arc<str>,
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
        source: format!("{service}#{number}").into(),
        service,
        number,
    })
}

struct Link {
    conn: Arc<Connection>,
    ch: Channel,
    declared: HashSet<String>,
}

type SharedLink = Arc<Mutex<Option<Link>>>;

/// A microservice instance's output with producer-side routing. Cheap to share (`Arc`).
pub struct Output {
    conn: Arc<SharedConnection>,
    /// The records queue of this instance's namespace.
    records_queue: QueueSpec,
    durable: bool,
    queue_to: String,
    services: ServicesSource,
    device: Option<String>,
    routes: RwLock<Arc<Routes>>,
    link: SharedLink,
    records: mpsc::Sender<Outgoing>,
    record_task: tokio::task::JoinHandle<()>,
}

/// Confirmations of one routed kanban; await [`Pending::confirmed`] before acking the input.
pub struct Pending {
    confirms: Vec<(String, PublisherConfirm)>,
    record: Option<(Outgoing, mpsc::Sender<Outgoing>)>,
}

impl Pending {
    /// Resolves once every hop confirmed (immediately when not durable); then the record copy
    /// is queued for the runtime. An error means: do not ack the input (requeue it).
    pub async fn confirmed(self) -> Result<(), OutputError> {
        for (queue, c) in self.confirms {
            amqp::confirmed(&queue, c).await?;
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
    pub fn new(url: &str, opts: OutputOptions) -> Result<Output, OutputError> {
        Self::new_in(url, opts, None)
    }

    /// Like [`Output::new`] for an instance in Kubernetes namespace `namespace` (the client's
    /// `AION_NAMESPACE`): records go to that namespace's records queue
    /// ([`topology::records_queue_name`]), the one its runtime consumes.
    pub fn new_in(
        url: &str,
        opts: OutputOptions,
        namespace: Option<&str>,
    ) -> Result<Output, OutputError> {
        let conn = SharedConnection::new(url, "aion-kanban-client-output");
        Self::on(conn, opts, namespace)
    }

    /// Like [`Output::new_in`], publishing on its own channel of `conn`, a connection shared
    /// with the rest of the client (its receiver).
    pub fn on(
        conn: Arc<SharedConnection>,
        opts: OutputOptions,
        namespace: Option<&str>,
    ) -> Result<Output, OutputError> {
        let records_queue = topology::records_queue(namespace);
        let cfg = opts.services.load()?;
        let routes = resolve(cfg, opts.device.as_deref(), &opts.queue_to)?;
        let link: SharedLink = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel(65_536);
        let record_task = tokio::spawn(record_loop(
            conn.clone(),
            records_queue.clone(),
            opts.durable,
            link.clone(),
            rx,
        ));
        Ok(Output {
            conn,
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
        let via_router;
        let (targets, body): (&[(String, String, i32)], Vec<u8>) = match &plan {
            SendPlan::Direct(hops) => (hops, k.encode_for_hop(&routes.device)),
            SendPlan::ViaRouter => {
                via_router = [(self.queue_to.clone(), routes.service.clone(), 0)];
                (&via_router, k.encode())
            }
        };
        let mut link = self.link.lock().await;
        let mut attempt = 0;
        let confirms = loop {
            attempt += 1;
            match self.publish_on(&mut link, &routes, targets, &body).await {
                Ok(c) => break c,
                Err(e) if attempt == 1 => {
                    tracing::warn!("publishing a kanban: {e}; reconnecting");
                    // A new channel; and a new connection when this one is lost (the shared
                    // connection re-opens it for every part of the client).
                    if let Some(l) = link.take() {
                        let _ = l.ch.close(200, "reconnecting".into()).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        drop(link);
        let record = match plan {
            SendPlan::Direct(hops) => {
                // The body is no longer needed: move it into the record.
                let r = BatchRecord {
                    at_us: chrono::Utc::now().timestamp_micros(),
                    connection_key: k.connection_key.clone(),
                    process_number: k.process_number.into(),
                    to: hops.into_iter().map(|(_, s, n)| (s, n)).collect(),
                    kanban: EncodedKanban(body),
                };
                Some(((routes.source.clone(), r), self.records.clone()))
            }
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
        let l = ensure_link(link, &self.conn, &self.records_queue, self.durable).await?;
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
    shared: &SharedConnection,
    records_queue: &QueueSpec,
    confirms: bool,
) -> Result<&'a mut Link, AmqpError> {
    if link
        .as_ref()
        .is_none_or(|l| !l.conn.status().connected() || !l.ch.status().connected())
    {
        *link = None;
        let conn = shared.get().await?;
        let ch = amqp::channel(&conn, shared.url(), confirms).await?;
        amqp::declare(&ch, [records_queue]).await?;
        *link = Some(Link {
            conn,
            ch,
            declared: HashSet::new(),
        });
    }
    link.as_mut().ok_or_else(|| unreachable_link(shared.url()))
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
/// Records only feed the replicator and on-demand start, so 25 ms do not matter there (a start on demand takes seconds); they
/// cut the broker's message rate for records by the batch size.
const RECORD_LINGER: Duration = Duration::from_millis(25);

/// Publish records in batches: whatever queued during [`RECORD_LINGER`] and while the previous
/// batch was on its way goes in the next one (one message per batch, a [`RecordBatch`]); a
/// batch holds the records of one source (a reload that changed the instance starts a new
/// one). Failed batches are retried.
async fn record_loop(
    conn: Arc<SharedConnection>,
    records_queue: QueueSpec,
    durable: bool,
    link: SharedLink,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    const MAX_BATCH: usize = 512;
    let props = delivery_props(durable);
    let mut batch = RecordBatch {
        source: String::new(),
        records: Vec::new(),
    };
    // A record of another source than the batch's, held for the next batch.
    let mut next: Option<Outgoing> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        if batch.records.is_empty() {
            let first = match next.take() {
                Some(r) => r,
                None => match rx.recv().await {
                    Some(r) => {
                        // Let a few more accumulate: one broker message per batch, not per kanban.
                        tokio::time::sleep(RECORD_LINGER).await;
                        r
                    }
                    None => return,
                },
            };
            batch.source.clear();
            batch.source.push_str(&first.0);
            batch.records.push(first.1);
        }
        while next.is_none() && batch.records.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((source, r)) if *source == *batch.source => batch.records.push(r),
                Ok(other) => next = Some(other),
                Err(_) => break,
            }
        }
        let body = batch.encode();
        let ch = {
            let mut l = link.lock().await;
            ensure_link(&mut l, &conn, &records_queue, durable)
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
                    Ok(c) if durable => amqp::confirmed(&records_queue.name, c).await,
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
                batch.records.clear();
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                tracing::warn!(
                    "publishing {} kanban record(s): {e}; retrying in {backoff:?}",
                    batch.records.len()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // Keep the memory bounded while the broker is away.
                if batch.records.len() > 4 * MAX_BATCH {
                    let drop_n = batch.records.len() - 4 * MAX_BATCH;
                    tracing::warn!("dropping the {drop_n} oldest kanban record(s)");
                    batch.records.drain(..drop_n);
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
    fn record_batches_embed_the_kanban_as_json_and_read_back_borrowed() {
        use serde_json::value::RawValue;
        let kanbans = [
            k("default", 2).encode_for_hop("here"),
            k("quo\"te\\ \u{e9}\n", -3).encode(),
        ];
        fn records<K>(kanbans: &[Vec<u8>], kanban: impl Fn(&[u8]) -> K) -> Vec<BatchRecord<K>> {
            kanbans
                .iter()
                .enumerate()
                .map(|(i, body)| BatchRecord {
                    at_us: 1_764_000_000_000_000 + i as i64,
                    connection_key: format!("key \"{i}\""),
                    process_number: -(i as i64),
                    to: vec![("b".into(), 2), ("c\u{1}".into(), i as i32)],
                    kanban: kanban(body),
                })
                .collect()
        }
        let sent = RecordBatch {
            source: "a#2 \"\\".into(),
            records: records(&kanbans, |b| EncodedKanban(b.to_vec())),
        };
        let wire = sent.encode();
        // Byte for byte what the derived serialiser writes with the kanban as a RawValue.
        let derived = RecordBatch {
            source: sent.source.clone(),
            records: records(&kanbans, |b| {
                RawValue::from_string(String::from_utf8(b.to_vec()).unwrap()).unwrap()
            }),
        };
        assert_eq!(
            String::from_utf8(wire.clone()).unwrap(),
            serde_json::to_string(&derived).unwrap()
        );
        // The kanban is an object inside the batch, not an escaped string.
        let tree: serde_json::Value = serde_json::from_slice(&wire).unwrap();
        assert_eq!(tree["records"][0]["kanban"]["connectionKey"], "default");
        let back: RecordBatch<&RawValue> = serde_json::from_slice(&wire).unwrap();
        assert_eq!(back.source, sent.source);
        assert_eq!(back.records.len(), 2);
        assert_eq!(
            back.records[1].to,
            [("b".to_string(), 2), ("c\u{1}".to_string(), 1)]
        );
        assert_eq!(back.records[1].connection_key, "key \"1\"");
        assert_eq!(
            back.records[0].kanban.get().as_bytes(),
            kanbans[0].as_slice()
        );
        assert_eq!(
            Kanban::decode(back.records[1].kanban.get().as_bytes()).unwrap(),
            k("quo\"te\\ \u{e9}\n", -3)
        );
        // An empty batch is valid JSON too.
        let empty = RecordBatch::<EncodedKanban> {
            source: "a#1".into(),
            records: vec![],
        };
        let wire = empty.encode();
        let back: RecordBatch<&RawValue> = serde_json::from_slice(&wire).unwrap();
        assert!(back.records.is_empty());
    }
}
