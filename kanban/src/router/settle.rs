//! Settling deliveries: each is acknowledged (after its next hops confirmed) or put back, and
//! acks go out in batches that only cover settled tags.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};

/// The pause before a delivery that met passing trouble is put back in its queue.
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What to run once a delivery is acknowledged (its record, on-demand starts).
pub(super) type Then = Box<dyn FnOnce() + Send>;

/// How one delivery ends: acknowledged (`ok`, then `then`) or put back in its queue.
pub(super) struct Settled {
    tag: u64,
    acker: lapin::Acker,
    ok: bool,
    then: Option<Then>,
}

/// The delivery's tag and acker, taken before its body is moved into a job.
pub(super) struct Settle {
    tag: u64,
    acker: lapin::Acker,
}

impl Settle {
    pub(super) fn of(d: &Delivery) -> Settle {
        Settle {
            tag: d.delivery_tag,
            acker: d.acker.clone(),
        }
    }

    pub(super) fn done(self, ok: bool, then: Option<Then>) -> Settled {
        Settled {
            tag: self.tag,
            acker: self.acker,
            ok,
            then,
        }
    }
}

pub(super) type Job = std::pin::Pin<Box<dyn std::future::Future<Output = Settled> + Send>>;

/// Which deliveries of one channel may be acknowledged with one `multiple` ack: tags are given
/// by the broker in order (1, 2, 3 … per channel), but the consume loop merges several consumers
/// of the channel, so deliveries finish out of tag order. Only tags up to the first one not
/// settled yet may be covered (an ack for a delivery not handled yet would lose it; tried
/// without this window, the benchmark chain stalled at 371 of 1,000 kanbans).
#[derive(Debug)]
pub(super) struct AckWindow {
    /// Every tag below this one is settled.
    pub(super) next: u64,
    /// Settled tags at or above `next` (after a gap).
    pub(super) ahead: std::collections::BTreeSet<u64>,
}

impl AckWindow {
    pub(super) fn new() -> AckWindow {
        AckWindow {
            next: 1,
            ahead: std::collections::BTreeSet::new(),
        }
    }

    /// `tag` is settled (acknowledged, to be acknowledged, or requeued).
    pub(super) fn settle(&mut self, tag: u64) {
        if tag < self.next {
            return;
        }
        self.ahead.insert(tag);
        while self.ahead.remove(&self.next) {
            self.next += 1;
        }
    }

    /// The highest tag such that it and every tag below it are settled (0: none).
    pub(super) fn covered(&self) -> u64 {
        self.next - 1
    }
}

/// After how many settled deliveries the settler acknowledges at the latest (it does sooner
/// whenever no more work is queued, so an idle router adds no delay).
pub(super) const ACK_BATCH: usize = 64;

/// Confirm-then-ack work, run in order by one task (cheaper than a task per kanban). Settled
/// deliveries are acknowledged together: one `multiple` ack for every delivery up to the
/// highest tag [`AckWindow`] allows, sent when the queue of work is empty or [`ACK_BATCH`]
/// deliveries wait (the router's ack frames were as many as its kanbans: a broker on a 2-core
/// device did that much more work per hop than a client routing producer-side). Requeues go out
/// one by one, at once. What a delivery runs after its ack (`then`) runs after the ack that
/// covers it was sent.
pub(super) struct Settler {
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
    task: tokio::task::JoinHandle<()>,
}

impl Settler {
    pub(super) fn start() -> Settler {
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

    pub(super) fn job(&self, f: impl std::future::Future<Output = Settled> + Send + 'static) {
        let _ = self.tx.send(Box::pin(f));
    }

    /// Acknowledge `d` in turn (nothing to wait for), then run `then`.
    pub(super) fn now(&self, d: &Delivery, then: Option<Then>) {
        let s = Settle::of(d);
        self.job(async move { s.done(true, then) });
    }

    /// Put `d` back in its queue in turn.
    pub(super) fn requeue(&self, d: &Delivery) {
        let s = Settle::of(d);
        self.job(async move { s.done(false, None) });
    }

    /// Wait [`RETRY_PAUSE`], then put `d` back in its queue: for trouble that may pass (a
    /// remote broker, the disk, chunks still on their way), so the redelivery is not a hot loop.
    pub(super) async fn requeue_later(&self, d: &Delivery) {
        tokio::time::sleep(RETRY_PAUSE).await;
        self.requeue(d);
    }

    /// Finish everything queued.
    pub(super) async fn drain(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// Acknowledge, with one `multiple` ack, every waiting delivery the window covers, then run
/// their `then`s. A failed ack (connection lost) drops them: the broker redelivers.
pub(super) async fn ack_covered(
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
