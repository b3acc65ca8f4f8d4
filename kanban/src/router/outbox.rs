//! One outbox per remote device: kanbans for another device's broker (another installation's
//! entry, or a device of this one on its own vhost) are forwarded by a task of their own, in
//! order per device, with their files. A large file or a slow or stalled link to one device
//! so holds neither the routing of other kanbans nor the forwards to other devices: the router
//! hands the kanban over and goes on; the delivery is settled (acked, dead-lettered or put
//! back) when the forward has ended, by the settler, which acks out of order.
//!
//! Bounded: an outbox holds only kanbans whose deliveries are unacked, so at most the
//! consumers' prefetch; a service that produces faster than its device's link carries is held
//! back by that prefetch, as it would be by a slow next service.

use std::collections::HashMap;
use std::sync::Arc;

use aion_model::ServicesFile;
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, oneshot};

use super::files::{ForwardError, Forwarded, resolve_files};
use super::options::RouterOptions;
use super::remote;
use crate::amqp::{self, AmqpError};
use crate::message::Kanban;
use crate::topology;
use crate::transfer;

/// How a forward ended, when it has.
pub(super) type Outcome = oneshot::Receiver<Result<(), ForwardError>>;

/// A kanban for a remote device's service instance.
struct Parcel {
    addr: String,
    service: String,
    number: i32,
    kanban: Kanban,
    done: oneshot::Sender<Result<(), ForwardError>>,
}

/// The outboxes of one router session, one per remote device, made on first use.
pub(super) struct Outboxes {
    opts: Arc<RouterOptions>,
    /// This device's name: the sender named in every forwarded kanban.
    from_device: String,
    by_device: HashMap<String, Outbox>,
}

struct Outbox {
    tx: mpsc::UnboundedSender<Parcel>,
    task: tokio::task::JoinHandle<()>,
}

impl Outboxes {
    pub(super) fn new(opts: Arc<RouterOptions>, from_device: String) -> Outboxes {
        Outboxes {
            opts,
            from_device,
            by_device: HashMap::new(),
        }
    }

    /// Queue `kanban` for instance `service#number` on `device` (reached at `addr`).
    pub(super) fn send(
        &mut self,
        device: &str,
        addr: &str,
        service: &str,
        number: i32,
        kanban: &Kanban,
    ) -> Outcome {
        let (done, outcome) = oneshot::channel();
        let parcel = Parcel {
            addr: addr.to_string(),
            service: service.to_string(),
            number,
            kanban: kanban.clone(),
            done,
        };
        let outbox = self.by_device.entry(device.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(run(
                self.opts.clone(),
                self.from_device.clone(),
                device.to_string(),
                rx,
            ));
            Outbox { tx, task }
        });
        if let Err(mpsc::error::SendError(parcel)) = outbox.tx.send(parcel) {
            // Its task ended (it cannot while the sender lives; kept total): put it back.
            let _ = parcel.done.send(Err(ForwardError::Retry(format!(
                "the outbox of device `{device}` is closed"
            ))));
        }
        outcome
    }

    /// End every outbox: a forward in progress stops (its delivery is not acked, so the broker
    /// delivers it again to the next session).
    pub(super) async fn close(self) {
        for (_, outbox) in self.by_device {
            drop(outbox.tx);
            outbox.task.abort();
            let _ = outbox.task.await;
        }
    }
}

/// An open connection to a device's broker, and where to publish on it.
struct Remote {
    conn: Connection,
    ch: Channel,
    dest: amqp::Destination,
}

/// One device's outbox: forward each parcel in turn over one connection, made again after a
/// failure.
async fn run(
    opts: Arc<RouterOptions>,
    from_device: String,
    device: String,
    mut rx: mpsc::UnboundedReceiver<Parcel>,
) {
    let mut remote: Option<Remote> = None;
    while let Some(p) = rx.recv().await {
        let result = forward(&opts, &from_device, &device, &mut remote, &p).await;
        if matches!(result, Err(ForwardError::Retry(_))) {
            remote = None;
        }
        let _ = p.done.send(result);
    }
    if let Some(r) = remote {
        let _ = r.conn.close(200, "bye".into()).await;
    }
}

/// Forward one parcel: its files ahead as confirmed chunks, then the kanban as the transfer's
/// commit.
async fn forward(
    opts: &RouterOptions,
    from_device: &str,
    device: &str,
    remote: &mut Option<Remote>,
    p: &Parcel,
) -> Result<(), ForwardError> {
    let files = resolve_files(&opts.data_dir, &p.kanban.file_list)
        .map_err(|e| ForwardError::Reject(e.to_string()))?;
    if remote
        .as_ref()
        .is_some_and(|r| !r.conn.status().connected() || !r.ch.status().connected())
    {
        *remote = None;
    }
    let r = match remote {
        Some(r) => r,
        None => remote.insert(connect(opts, from_device, device, &p.addr).await?),
    };
    let manifest = if files.is_empty() {
        None
    } else {
        Some(
            transfer::send_files(&r.ch, &r.dest, &files)
                .await
                .map_err(|e| ForwardError::Retry(e.to_string()))?,
        )
    };
    let env = Forwarded {
        service: p.service.clone(),
        number: p.number,
        from_device: from_device.to_string(),
        kanban: p.kanban.clone(),
        files: Vec::new(),
        transfer: manifest,
    };
    let body = serde_json::to_vec(&env).map_err(|e| ForwardError::Reject(e.to_string()))?;
    r.dest
        .publish_confirmed(&r.ch, &body, amqp::json_props())
        .await
        .map_err(|e| ForwardError::Retry(e.to_string()))
}

/// Connect to `device`'s broker with the credentials this device holds for it.
async fn connect(
    opts: &RouterOptions,
    from_device: &str,
    device: &str,
    addr: &str,
) -> Result<Remote, ForwardError> {
    let broker = remote::resolve(opts, from_device, device, addr)
        .map_err(|e| ForwardError::Reject(e.to_string()))?;
    let connected = async {
        let conn =
            amqp::connect_with_ca(&broker.url, "aion-kanban-forward", broker.ca.as_deref()).await?;
        let ch = amqp::channel(&conn, &broker.url, true).await?;
        if broker.declare {
            amqp::declare(&ch, &topology::plan(&ServicesFile::default())).await?;
        }
        Ok::<_, AmqpError>((conn, ch))
    };
    let (conn, ch) = connected.await.map_err(|e| match amqp::refusal(&e) {
        // Retrying cannot help until the credentials change: say so, keep it.
        Some(why) => ForwardError::Reject(format!("device `{device}` {why}: {e}")),
        None => ForwardError::Retry(e.to_string()),
    })?;
    Ok(Remote {
        conn,
        ch,
        dest: broker.dest,
    })
}
