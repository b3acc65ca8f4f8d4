//! The client library for microservices (Rust), in the shape of upstream's RabbitMQ clients
//! (doc §5.5): receive kanbans from one or more queues, `success()` / `fail()` / `requeue()`
//! each, `send()` kanbans to a queue. Differences from upstream, on purpose:
//! * an undecodable message does not stop or stall the receiver: it is handed out with
//!   [`Message::kanban`] returning the decode error, and `fail()` dead-letters it;
//! * the connection is re-established after a broker restart or network loss, both for
//!   receiving and sending; unacked messages are redelivered by the broker (at-least-once);
//! * `send()` returns only after the broker confirmed the message (publisher confirms).
//!
//! Inside AION, a microservice instance receives on `QUEUE_ORIGIN` (`<base>-NNN.in`) and sends
//! its results to `QUEUE_TO` (`<base>-NNN.out`); the router does the rest. With `AION_SERVICES`
//! set (the path of `services.yml`), [`Client`] routes producer-side instead ([`crate::output`]):
//! results go straight to the next instances' input queues, and only what needs the router
//! (other devices, terminate, no route, bad targets) goes to `QUEUE_TO`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{Channel, Connection};
use tokio::sync::{Mutex, Notify, mpsc};

use crate::amqp::{self, AmqpError, SharedConnection};
use crate::config::ServicesSource;
use crate::message::{DecodeError, Kanban};
use crate::output::{Output, OutputError, OutputOptions};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("environment variable {0} is not set")]
    Env(&'static str),
    #[error("environment variable {0} is empty")]
    EnvEmpty(&'static str),
    #[error("acknowledging message from `{queue}`: {source}")]
    Ack { queue: String, source: lapin::Error },
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// A received message.
pub struct Message {
    queue: String,
    delivery: Delivery,
}

impl Message {
    /// The queue it was received from.
    pub fn queue_name(&self) -> &str {
        &self.queue
    }
    /// The raw body.
    pub fn data(&self) -> &[u8] {
        &self.delivery.data
    }
    /// Whether the broker delivered it before (at-least-once: handle duplicates).
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }
    pub fn kanban(&self) -> Result<Kanban, DecodeError> {
        Kanban::decode(&self.delivery.data)
    }
    /// Done: remove it from the queue.
    pub async fn success(self) -> Result<(), ClientError> {
        let q = self.queue;
        self.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(|source| ClientError::Ack { queue: q, source })
    }
    /// Failed: reject without requeue (→ the service's dead-letter queue).
    pub async fn fail(self) -> Result<(), ClientError> {
        let q = self.queue;
        self.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: false,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|source| ClientError::Ack { queue: q, source })
    }
    /// Put it back in the queue for another try.
    pub async fn requeue(self) -> Result<(), ClientError> {
        let q = self.queue;
        self.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|source| ClientError::Ack { queue: q, source })
    }
}

/// Receives from queues, reconnecting as needed. Dropping it stops consuming.
pub struct Receiver {
    rx: mpsc::Receiver<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Start consuming `queues` on `url` with QoS `prefetch` (upstream's clients use 1).
    pub fn start(url: &str, queues: &[String], prefetch: u16) -> Receiver {
        Self::start_on(
            SharedConnection::new(url, "aion-kanban-client"),
            queues,
            prefetch,
        )
    }

    /// Like [`Receiver::start`], on a connection shared with other parts of the client (its own
    /// channel on it).
    pub fn start_on(conn: Arc<SharedConnection>, queues: &[String], prefetch: u16) -> Receiver {
        let (tx, rx) = mpsc::channel(prefetch.max(1) as usize);
        let queues = queues.to_vec();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let began = tokio::time::Instant::now();
                match consume_once(&conn, &queues, prefetch, &tx).await {
                    Ok(()) => return, // receiver dropped
                    Err(e) => {
                        if began.elapsed() > Duration::from_secs(30) {
                            // It ran for a while: this is a new outage, start over quickly.
                            backoff = Duration::from_millis(200);
                        }
                        tracing::warn!("kanban receiver: {e}; reconnecting in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Receiver { rx, task }
    }

    /// The next message (`None` only after [`Receiver`] is shut down).
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// As a `Stream`.
    pub fn into_stream(self) -> impl futures::Stream<Item = Message> {
        futures::stream::unfold(self, |mut r| async move { r.next().await.map(|m| (m, r)) })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn consume_once(
    shared: &SharedConnection,
    queues: &[String],
    prefetch: u16,
    tx: &mpsc::Sender<Message>,
) -> Result<(), AmqpError> {
    let url = shared.url();
    let conn = shared.get().await?;
    let ch = amqp::channel(&conn, url, false).await?;
    let tagged = queues.iter().map(|q| (q.clone(), q.clone())).collect();
    let mut all = amqp::consume_all(&ch, url, prefetch, "", tagged).await?;
    while let Some((queue, d)) = all.next().await {
        // A consumer that failed or was cancelled ends this subscription: consume again.
        let delivery = d?;
        if tx.send(Message { queue, delivery }).await.is_err() {
            // Only this receiver's channel: the connection may serve the client's output.
            let _ = ch.close(200, "receiver dropped".into()).await;
            return Ok(());
        }
    }
    Err(AmqpError::ConsumerCancelled {
        queue: queues.join(","),
    })
}

/// Sends kanbans (confirmed), reconnecting once per send if the connection was lost.
pub struct Sender {
    conn: Arc<SharedConnection>,
    link: Mutex<Option<(Arc<Connection>, Channel)>>,
}

impl Sender {
    pub fn new(url: &str) -> Sender {
        Self::on(SharedConnection::new(url, "aion-kanban-client"))
    }

    /// A sender with its own channel on a connection shared with other parts of the client.
    pub fn on(conn: Arc<SharedConnection>) -> Sender {
        Sender {
            conn,
            link: Mutex::new(None),
        }
    }

    /// Send `k` to `queue`; returns after the broker confirmed it.
    pub async fn send(&self, queue: &str, k: &Kanban) -> Result<(), ClientError> {
        self.send_raw(queue, &k.encode()).await
    }

    /// Send any JSON body (upstream's clients send arbitrary maps).
    pub async fn send_raw(&self, queue: &str, body: &[u8]) -> Result<(), ClientError> {
        let mut link = self.link.lock().await;
        for attempt in 0..2 {
            if link
                .as_ref()
                .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
            {
                let conn = self.conn.get().await?;
                let ch = amqp::channel(&conn, self.conn.url(), true).await?;
                *link = Some((conn, ch));
            }
            let Some((_, ch)) = link.as_ref() else {
                continue;
            };
            match amqp::publish_confirmed(ch, queue, body, amqp::json_props()).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt == 0 => {
                    tracing::warn!("send to `{queue}`: {e}; reconnecting");
                    *link = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// A microservice's client configured the AION way: `RABBITMQ_URL`, `QUEUE_ORIGIN` (input
/// queues, comma-separated), `QUEUE_TO` (default output queue); optional `AION_SERVICES`
/// (services.yml: route producer-side, reloaded on SIGHUP and when the file changes),
/// `AION_DEVICE` (this device's name, default `deviceName`) and `AION_NAMESPACE` (the pod's
/// namespace: records go to that namespace's runtime, `aion-kanban.records.<namespace>`).
pub struct Client {
    pub receiver: Receiver,
    pub sender: Sender,
    pub queue_to: String,
    /// Producer-side routing, when `AION_SERVICES` is set.
    pub output: Option<Arc<Output>>,
    watch: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        for w in &self.watch {
            w.abort();
        }
    }
}

/// What [`Client::from_env`] reads from the environment (resolved without any I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `RABBITMQ_URL`.
    pub url: String,
    /// `QUEUE_ORIGIN`, split at commas.
    pub queues: Vec<String>,
    /// `QUEUE_TO`.
    pub queue_to: String,
    /// `AION_SERVICES`: producer-side routing with this services.yml.
    pub services: Option<PathBuf>,
    /// `AION_DEVICE` (`None` when unset or empty: `deviceName` from services.yml).
    pub device: Option<String>,
    /// `AION_NAMESPACE` (`None` when unset or empty): scopes the records queue of producer-side
    /// routing ([`crate::topology::records_queue_name`]) to the runtime of this namespace.
    pub namespace: Option<String>,
}

impl ClientConfig {
    /// Resolve from a lookup of environment variables (`get(name)` → value).
    ///
    /// # Errors
    /// [`ClientError::Env`] / [`ClientError::EnvEmpty`] naming a required variable
    /// (`RABBITMQ_URL`, `QUEUE_ORIGIN`, `QUEUE_TO`) that is missing or empty.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<ClientConfig, ClientError> {
        let required = |name: &'static str| match get(name) {
            None => Err(ClientError::Env(name)),
            Some(v) if v.trim().is_empty() => Err(ClientError::EnvEmpty(name)),
            Some(v) => Ok(v),
        };
        let url = required("RABBITMQ_URL")?;
        let queues: Vec<String> = required("QUEUE_ORIGIN")?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if queues.is_empty() {
            return Err(ClientError::EnvEmpty("QUEUE_ORIGIN"));
        }
        Ok(ClientConfig {
            url,
            queues,
            queue_to: required("QUEUE_TO")?,
            services: get("AION_SERVICES")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            device: get("AION_DEVICE").filter(|d| !d.is_empty()),
            namespace: get("AION_NAMESPACE").filter(|n| !n.trim().is_empty()),
        })
    }

    /// Resolve from this process's environment.
    pub fn from_env() -> Result<ClientConfig, ClientError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }
}

impl Client {
    /// A client configured from the environment ([`ClientConfig::from_env`]).
    pub fn from_env() -> Result<Client, ClientError> {
        Self::new(ClientConfig::from_env()?)
    }

    /// A client for `cfg` (starts receiving from `cfg.queues` with prefetch 1).
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let ClientConfig {
            url,
            queues,
            queue_to,
            services,
            device,
            namespace,
        } = cfg;
        // One connection for the receiver, the sender and the output (one lapin I/O thread),
        // named after the instance so an operator can tell connections apart on the broker.
        let conn = SharedConnection::new(&url, &format!("aion-kanban-client {queue_to}"));
        let mut client = Client {
            receiver: Receiver::start_on(conn.clone(), &queues, 1),
            sender: Sender::on(conn.clone()),
            queue_to: queue_to.clone(),
            output: None,
            watch: Vec::new(),
        };
        if let Some(path) = services {
            let output = Arc::new(Output::on(
                conn,
                OutputOptions {
                    services: ServicesSource::File(path.clone()),
                    device,
                    queue_to,
                    durable: true,
                },
                namespace.as_deref(),
            )?);
            let reload = Arc::new(Notify::new());
            if let Ok(h) = crate::config::notify_on_sighup(reload.clone()) {
                client.watch.push(h);
            }
            client.watch.push(crate::config::spawn_file_watch(
                path,
                Duration::from_secs(2),
                reload.clone(),
            ));
            client.watch.push(output.reload_on(reload));
            client.output = Some(output);
        }
        Ok(client)
    }

    /// Send a result kanban on (producer-side routing when configured, else to `QUEUE_TO`);
    /// returns after the broker confirmed every hop.
    pub async fn output(&self, k: &Kanban) -> Result<(), ClientError> {
        match &self.output {
            Some(o) => Ok(o.send(k).await?),
            None => self.sender.send(&self.queue_to, k).await,
        }
    }

    /// Send `result` on, then ack `input` — or requeue `input` when sending failed
    /// (at-least-once: the input is acked only after the next hop confirmed).
    pub async fn forward(&self, input: Message, result: &Kanban) -> Result<(), ClientError> {
        match self.output(result).await {
            Ok(()) => input.success().await,
            Err(e) => {
                tracing::warn!("sending a result: {e}; requeueing its input");
                input.requeue().await?;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(vars: &[(&str, &str)]) -> Result<ClientConfig, ClientError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ClientConfig::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn resolves_required_and_optional_vars() {
        let c = resolve(&[
            ("RABBITMQ_URL", "amqp://u:p@h:5672/%2f"),
            ("QUEUE_ORIGIN", "a-001.in, extra-queue"),
            ("QUEUE_TO", "a-001.out"),
            ("AION_SERVICES", "/var/lib/aion/config/services.yml"),
            ("AION_DEVICE", ""),
        ])
        .unwrap();
        assert_eq!(c.queues, ["a-001.in", "extra-queue"]);
        assert_eq!(c.queue_to, "a-001.out");
        assert_eq!(
            c.services.as_deref(),
            Some(std::path::Path::new("/var/lib/aion/config/services.yml"))
        );
        assert_eq!(c.device, None);
        assert_eq!(c.namespace, None);
        let c = resolve(&[
            ("RABBITMQ_URL", "amqp://h"),
            ("QUEUE_ORIGIN", "a-001.in"),
            ("QUEUE_TO", "a-001.out"),
            ("AION_NAMESPACE", "aion-worker-1"),
        ])
        .unwrap();
        assert_eq!(c.namespace.as_deref(), Some("aion-worker-1"));
        assert_eq!(
            crate::topology::records_queue_name(c.namespace.as_deref()),
            "aion-kanban.records.aion-worker-1"
        );
    }

    #[test]
    fn missing_or_empty_required_vars_are_named() {
        let err = resolve(&[("RABBITMQ_URL", "amqp://h"), ("QUEUE_TO", "x")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable QUEUE_ORIGIN is not set"
        );
        let err = resolve(&[
            ("RABBITMQ_URL", "amqp://h"),
            ("QUEUE_ORIGIN", " , "),
            ("QUEUE_TO", "x"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable QUEUE_ORIGIN is empty"
        );
        let err = resolve(&[("QUEUE_ORIGIN", "a"), ("QUEUE_TO", "x")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable RABBITMQ_URL is not set"
        );
    }
}
