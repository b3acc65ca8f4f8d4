//! Thin helpers over lapin: connect, declare the topology idempotently, publish kanbans the way
//! upstream's RabbitMQ-era clients do (default exchange, routing key = queue name, JSON body,
//! `application/json`, persistent).

use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::topology::{INBOUND_QUEUE, PEER_EXCHANGE, QueueSpec};

/// Errors talking to a broker, naming the broker (URL without credentials) or the queue.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("cannot connect to RabbitMQ at {url}: {source}")]
    Connect { url: String, source: lapin::Error },
    #[error(
        "cannot connect to RabbitMQ at {url}: no AMQP handshake within {} s (a broker stopping or starting accepts TCP but does not answer)",
        CONNECT_TIMEOUT.as_secs()
    )]
    ConnectTimeout { url: String },
    #[error("RabbitMQ at {url}: {what}: {source}")]
    Channel {
        url: String,
        what: String,
        source: lapin::Error,
    },
    #[error("declaring queue `{queue}`: {source}")]
    Declare { queue: String, source: lapin::Error },
    #[error("publishing to queue `{queue}`: {source}")]
    Publish { queue: String, source: lapin::Error },
    #[error("broker did not confirm the message to queue `{queue}` ({what})")]
    NotConfirmed { queue: String, what: &'static str },
    #[error("receiving from queue `{queue}`: {source}")]
    Receive { queue: String, source: lapin::Error },
    /// The broker cancelled a consumer (its queue was deleted or went down) while the channel
    /// stayed open: only a new subscription gets that queue's kanbans again.
    #[error("the broker cancelled the consumer of queue `{queue}`")]
    ConsumerCancelled { queue: String },
}

/// `amqp://user:pass@host:port/vhost` → `amqp://host:port/vhost` (for messages and logs).
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// How long a connection attempt may take. A broker in the middle of stopping or starting can
/// accept the TCP connection and never answer the AMQP handshake; without a limit the router or
/// a client would wait there forever instead of retrying.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a publisher confirm may take before the message counts as not confirmed (and its
/// input is requeued: at-least-once, a late duplicate is possible). A confirm on a connection
/// that died without an error reaching lapin would otherwise hold the input unacked forever.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    connect_with_ca(url, name, None).await
}

/// The heartbeat interval (seconds) a connection asks for when its URL does not say
/// (`?heartbeat=N`; 0 turns heartbeats off). Both ends give up on a connection after two
/// intervals without a frame: a link that stops carrying packets without a reset (a NAT or
/// firewall that forgot the flow, a device that lost power) is noticed within 20 s, and the
/// broker hands that connection's unacked kanbans to another consumer as soon. With RabbitMQ's
/// default (60 s) both sides waited two minutes, the router with kanbans piling up behind it.
/// RabbitMQ's documentation advises 5 to 20 s.
pub const HEARTBEAT_SECS: u16 = 10;

/// `url` parsed, asking for [`HEARTBEAT_SECS`] unless it sets `heartbeat` itself; `None` when it
/// does not parse.
pub fn uri_with_heartbeat(url: &str) -> Option<lapin::uri::AMQPUri> {
    let mut uri: lapin::uri::AMQPUri = url.parse().ok()?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(HEARTBEAT_SECS);
    }
    Some(uri)
}

/// [`connect`], trusting `ca` (PEM) for an `amqps://` URL besides the system's roots: another
/// installation's entry, whose certificate its own CA signed.
pub async fn connect_with_ca(
    url: &str,
    name: &str,
    ca: Option<&str>,
) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    // No CA: lapin's defaults (the system's roots), as `Connection::connect` uses.
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: ca.map(str::to_string),
    };
    let connecting = async {
        let runtime = lapin::runtime::default_runtime()?;
        match uri_with_heartbeat(url) {
            Some(uri) => Connection::connect_uri_with_config(uri, props, tls, runtime).await,
            // Not a URL lapin can parse: let it say so.
            None => Connection::connect_with_config(url, props, tls, runtime).await,
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(r) => r.map_err(|source| AmqpError::Connect {
            url: redact(url),
            source,
        }),
        Err(_) => Err(AmqpError::ConnectTimeout { url: redact(url) }),
    }
}

/// One AMQP connection shared by the parts of a client (its receiver, its producer-side output,
/// its sender), re-opened by whichever part first finds it lost. lapin runs one I/O thread per
/// connection and wakes it for every frame; a microservice with one connection instead of three
/// leaves that CPU to the broker on a 2-core device (measured: `bench/README.md`, kanban chain).
/// Each part keeps its own channel, so a channel-level error (a refused declaration) stays in
/// that part.
pub struct SharedConnection {
    url: String,
    name: String,
    current: tokio::sync::Mutex<Option<std::sync::Arc<Connection>>>,
}

impl SharedConnection {
    /// Nothing is opened until the first [`SharedConnection::get`].
    pub fn new(url: &str, name: &str) -> std::sync::Arc<SharedConnection> {
        std::sync::Arc::new(SharedConnection {
            url: url.to_string(),
            name: name.to_string(),
            current: tokio::sync::Mutex::new(None),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The open connection, or a new one when there is none or it was lost. Parts that hold
    /// the old one find it disconnected and come here too, getting the same new connection.
    pub async fn get(&self) -> Result<std::sync::Arc<Connection>, AmqpError> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref().filter(|c| c.status().connected()) {
            return Ok(c.clone());
        }
        let c = std::sync::Arc::new(connect(&self.url, &self.name).await?);
        *current = Some(c.clone());
        Ok(c)
    }

    /// Close the connection (the parts using it see it lost); the next `get` opens a new one.
    pub async fn close(&self, reason: &str) {
        if let Some(c) = self.current.lock().await.take() {
            let _ = c.close(200, reason.into()).await;
        }
    }
}

pub async fn channel(conn: &Connection, url: &str, confirms: bool) -> Result<Channel, AmqpError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(|source| AmqpError::Channel {
            url: redact(url),
            what: "opening a channel".into(),
            source,
        })?;
    if confirms {
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|source| AmqpError::Channel {
                url: redact(url),
                what: "enabling publisher confirms".into(),
                source,
            })?;
    }
    Ok(ch)
}

/// Queue arguments for a spec (dead-lettering through the default exchange).
pub fn queue_args(spec: &QueueSpec) -> FieldTable {
    let mut args = FieldTable::default();
    if let Some(dlq) = &spec.dead_letter_to {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("")),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(dlq.as_str())),
        );
    }
    if let Some(n) = spec.max_length {
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(n));
    }
    args
}

/// Declare every queue (durable). Declaring an existing queue with the same arguments is a
/// no-op, so this runs at every start and after every configuration change.
pub async fn declare<'a>(
    ch: &Channel,
    specs: impl IntoIterator<Item = &'a QueueSpec>,
) -> Result<(), AmqpError> {
    for spec in specs {
        ch.queue_declare(
            spec.name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_args(spec),
        )
        .await
        .map_err(|source| AmqpError::Declare {
            queue: spec.name.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Declare queues that others may have declared already with other arguments (queues named in
/// a services.yml's env, upstream style). Each is declared durable with its arguments; when the
/// broker refuses that (an existing queue with other arguments, PRECONDITION_FAILED), a passive
/// check confirms the queue exists, a warning names it, and the rest carry on. Returns the
/// names of the queues kept as they were.
///
/// # Errors
/// [`AmqpError::Declare`] when a queue can be neither declared nor found.
pub async fn declare_compatible<'a>(
    conn: &Connection,
    url: &str,
    specs: impl IntoIterator<Item = &'a QueueSpec>,
) -> Result<Vec<String>, AmqpError> {
    let mut ch = channel(conn, url, false).await?;
    let mut kept = Vec::new();
    for spec in specs {
        let declared = ch
            .queue_declare(
                spec.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                queue_args(spec),
            )
            .await;
        let Err(source) = declared else { continue };
        // The broker closed the channel with the refusal: check on a new one.
        ch = channel(conn, url, false).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match ch
            .queue_declare(spec.name.as_str().into(), passive, FieldTable::default())
            .await
        {
            Ok(_) => {
                tracing::warn!(
                    "queue `{}` exists with other settings than this declaration ({source}); kept as it is",
                    spec.name
                );
                kept.push(spec.name.clone());
            }
            Err(_) => {
                return Err(AmqpError::Declare {
                    queue: spec.name.clone(),
                    source,
                });
            }
        }
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(kept)
}

/// Where a forwarded kanban (and its files' chunks) is published on another device's broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `""` (the default exchange) within an installation; [`PEER_EXCHANGE`] for a device of
    /// another installation.
    pub exchange: String,
    /// The queue's name (the exchange routes by it).
    pub routing_key: String,
    /// Set as the message's `user_id`: the broker refuses a message whose `user_id` is not the
    /// connection's user, so the receiver can trust it to name the sender.
    pub user_id: Option<String>,
}

impl Destination {
    /// `queue` through the default exchange (devices of the same installation).
    pub fn queue(queue: &str) -> Destination {
        Destination {
            exchange: String::new(),
            routing_key: queue.into(),
            user_id: None,
        }
    }

    /// This device's inbound queue on another installation's broker, logged in as `user`.
    pub fn peer_inbound(user: &str) -> Destination {
        Destination {
            exchange: PEER_EXCHANGE.into(),
            routing_key: INBOUND_QUEUE.into(),
            user_id: Some(user.into()),
        }
    }

    /// `props` with this destination's `user_id`.
    pub fn props(&self, props: BasicProperties) -> BasicProperties {
        match &self.user_id {
            Some(u) => props.with_user_id(u.as_str().into()),
            None => props,
        }
    }

    /// Publish `body` here (without waiting for the confirm).
    pub async fn publish(
        &self,
        ch: &Channel,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<lapin::PublisherConfirm, AmqpError> {
        ch.basic_publish(
            self.exchange.as_str().into(),
            self.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            body,
            self.props(props),
        )
        .await
        .map_err(|source| AmqpError::Publish {
            queue: self.routing_key.clone(),
            source,
        })
    }

    /// Publish `body` here and wait for the broker's confirm.
    pub async fn publish_confirmed(
        &self,
        ch: &Channel,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), AmqpError> {
        let c = self.publish(ch, body, props).await?;
        confirmed(&self.routing_key, c).await
    }
}

/// Declare [`PEER_EXCHANGE`] and bind it to [`INBOUND_QUEUE`] (idempotent; after the queue).
pub async fn declare_peer_entry(ch: &Channel) -> Result<(), AmqpError> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
    let what = |source| AmqpError::Declare {
        queue: format!("exchange {PEER_EXCHANGE}"),
        source,
    };
    ch.exchange_declare(
        PEER_EXCHANGE.into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(what)?;
    ch.queue_bind(
        INBOUND_QUEUE.into(),
        PEER_EXCHANGE.into(),
        INBOUND_QUEUE.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(what)
}

/// Why a failed connection attempt cannot succeed by retrying, if it cannot: the broker refused
/// the login (wrong user or password, or no access to the virtual host), or the other side's
/// TLS certificate is not one the given CA signed. Both stay so until the credentials change.
pub fn refusal(e: &AmqpError) -> Option<&'static str> {
    let AmqpError::Connect { source, .. } = e else {
        return None;
    };
    let text = source.to_string();
    if text.contains("ACCESS_REFUSED") || text.contains("NOT_ALLOWED") {
        Some("refused the login")
    } else if text.to_ascii_lowercase().contains("certificate") {
        Some("presented a certificate its issued CA does not vouch for")
    } else {
        None
    }
}

/// Properties upstream's clients use: JSON, persistent.
pub fn json_props() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
}

/// Publish to `queue` through the default exchange and wait for the broker's confirm.
pub async fn publish_confirmed(
    ch: &Channel,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), AmqpError> {
    Destination::queue(queue)
        .publish_confirmed(ch, body, props)
        .await
}

/// Wait (at most [`CONFIRM_TIMEOUT`]) for the broker to confirm a message published to `queue`.
pub async fn confirmed(queue: &str, confirm: lapin::PublisherConfirm) -> Result<(), AmqpError> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
        Ok(c) => check_confirm(queue, c),
        Err(_) => Err(AmqpError::NotConfirmed {
            queue: queue.into(),
            what: "no confirm in time",
        }),
    }
}

fn check_confirm(
    queue: &str,
    c: Result<lapin::Confirmation, lapin::Error>,
) -> Result<(), AmqpError> {
    use lapin::Confirmation;
    match c {
        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) => Err(AmqpError::NotConfirmed {
            queue: queue.into(),
            what: "returned unroutable",
        }),
        Ok(Confirmation::Nack(_)) => Err(AmqpError::NotConfirmed {
            queue: queue.into(),
            what: "nack",
        }),
        Err(source) => Err(AmqpError::Publish {
            queue: queue.into(),
            source,
        }),
    }
}

/// Deliveries of several queues as one stream, each tagged with its queue's `T`. A consumer that
/// fails or is cancelled by the broker yields one last item, an error naming its queue
/// ([`AmqpError::Receive`], [`AmqpError::ConsumerCancelled`]), so that the consume loop ends its
/// session and subscribes again. Merged without that, a cancelled consumer would just drop out
/// of the merge while the others go on: its queue would never be consumed again.
pub type Deliveries<T> = futures::stream::SelectAll<
    futures::stream::BoxStream<'static, (T, Result<Delivery, AmqpError>)>,
>;

/// One consumer's deliveries tagged with `tag`, errors naming `queue`, and its end turned into
/// [`AmqpError::ConsumerCancelled`] (see [`Deliveries`]).
fn tagged<T, D, S>(
    queue: String,
    tag: T,
    consumer: S,
) -> futures::stream::BoxStream<'static, (T, Result<D, AmqpError>)>
where
    T: Clone + Send + 'static,
    D: Send + 'static,
    S: futures::Stream<Item = lapin::Result<D>> + Send + 'static,
{
    use futures::StreamExt;
    let q = queue.clone();
    let end_tag = tag.clone();
    consumer
        .map(move |d| {
            let d = d.map_err(|source| AmqpError::Receive {
                queue: q.clone(),
                source,
            });
            (tag.clone(), d)
        })
        .chain(futures::stream::once(async move {
            (end_tag, Err(AmqpError::ConsumerCancelled { queue }))
        }))
        .boxed()
}

/// Set QoS `prefetch` on `ch` and consume every queue of `queues` on it (consumer tag
/// `<tag_prefix><queue>`): the router's and the client's receive loops both start here.
pub async fn consume_all<T: Clone + Send + 'static>(
    ch: &Channel,
    url: &str,
    prefetch: u16,
    tag_prefix: &str,
    queues: Vec<(String, T)>,
) -> Result<Deliveries<T>, AmqpError> {
    ch.basic_qos(prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(|source| AmqpError::Channel {
            url: redact(url),
            what: "basic.qos".into(),
            source,
        })?;
    let mut all = futures::stream::SelectAll::new();
    for (queue, tag) in queues {
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                format!("{tag_prefix}{queue}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| AmqpError::Channel {
                url: redact(url),
                what: format!("consuming `{queue}`"),
                source,
            })?;
        all.push(tagged(queue, tag, consumer));
    }
    Ok(all)
}

/// Headers for a dead-lettered message: why, and where it came from.
pub fn dead_letter_headers(reason: &str, source_queue: &str) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(
        "x-aion-reason".into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    h.insert(
        "x-aion-source-queue".into(),
        AMQPValue::LongString(LongString::from(source_queue)),
    );
    h
}

/// Read a string header (as set by [`dead_letter_headers`]).
pub fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    let h = props.headers().as_ref()?;
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    /// One consumer of a merge ending (the broker cancelled it) must surface as an error naming
    /// its queue while the other consumers still run; before, the merge dropped it silently and
    /// the router kept consuming the other queues, never that one again (the router path of
    /// `broker_restart_mid_stream_loses_nothing` stopped at 320 of 1,500 kanbans).
    #[tokio::test]
    async fn a_cancelled_consumer_ends_the_merge_with_its_queue() {
        use futures::StreamExt;
        let mut all = futures::stream::SelectAll::new();
        all.push(super::tagged(
            "a.out".into(),
            1,
            futures::stream::iter(vec![Ok::<u32, lapin::Error>(7)]),
        ));
        all.push(super::tagged(
            "b.out".into(),
            2,
            futures::stream::pending::<lapin::Result<u32>>(),
        ));
        let (tag, first) = all.next().await.expect("a delivery");
        assert_eq!((tag, first.expect("delivery")), (1, 7));
        let (tag, end) = all
            .next()
            .await
            .expect("the end of a.out, not a silent drop");
        assert_eq!(tag, 1);
        assert!(
            matches!(end, Err(super::AmqpError::ConsumerCancelled { ref queue }) if queue == "a.out"),
            "{end:?}"
        );
    }

    /// A connection asks for a 10 s heartbeat unless its URL sets one (0 included: off).
    #[test]
    fn connections_ask_for_a_short_heartbeat_unless_the_url_says() {
        let hb = |url: &str| super::uri_with_heartbeat(url).map(|u| u.query.heartbeat);
        assert_eq!(
            hb("amqp://u:p@h:5672/%2f"),
            Some(Some(super::HEARTBEAT_SECS))
        );
        assert_eq!(hb("amqps://u:p@h:5671/v?heartbeat=30"), Some(Some(30)));
        assert_eq!(hb("amqp://h/%2f?heartbeat=0"), Some(Some(0)));
        assert_eq!(hb("http://h"), None);
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(super::redact("amqp://u:p@h:5672/%2f"), "amqp://h:5672/%2f");
        assert_eq!(super::redact("amqp://h"), "amqp://h");
    }

    /// A broker that accepts TCP and never answers the handshake (one stopping or starting)
    /// must not hold a connection attempt forever: before the limit, the router's reconnect
    /// loop stayed inside `connect` for good.
    #[tokio::test]
    async fn connect_gives_up_on_a_silent_broker() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock); // accepted, never answered
            }
        });
        let url = format!("amqp://u:p@127.0.0.1:{port}/%2f");
        let began = std::time::Instant::now();
        let err = tokio::time::timeout(
            super::CONNECT_TIMEOUT * 3,
            super::connect(&url, "silent-broker-test"),
        )
        .await
        .expect("connect returned within the limit")
        .expect_err("a silent broker is an error");
        assert!(
            matches!(err, super::AmqpError::ConnectTimeout { ref url } if !url.contains("u:p")),
            "{err}"
        );
        assert!(
            began.elapsed() >= super::CONNECT_TIMEOUT,
            "{:?}",
            began.elapsed()
        );
        hold.abort();
    }
}
