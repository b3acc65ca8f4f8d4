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

/// How long settled deliveries may wait behind one that has not settled (a forward still in its
/// device's outbox) before they are acknowledged one by one: longer than the ordinary
/// reordering of merged consumers lasts (which so still ends in one `multiple` ack, no extra
/// frames), short enough that a stalled forward holds nothing else for long (a consumer whose
/// prefetch is used up by such deliveries gets more after this pause).
pub(super) const AHEAD_PATIENCE: std::time::Duration = std::time::Duration::from_millis(50);

/// Confirm-then-ack work, run in order by one task (cheaper than a task per kanban; the
/// confirms they wait for come in that order), except the jobs that wait for a forward to
/// another device's outbox: those run apart ([`Settler::job_apart`]) and settle whenever their
/// forward ends, so a slow or stalled link holds only its own deliveries. Settled deliveries
/// are acknowledged together: one `multiple` ack for every delivery up to the highest tag
/// [`AckWindow`] allows, sent when the queue of work is empty or [`ACK_BATCH`] deliveries wait
/// (the router's ack frames were as many as its kanbans: a broker on a 2-core device did that
/// much more work per hop than a client routing producer-side); while a job runs apart, settled
/// deliveries behind it are acknowledged one by one after [`AHEAD_PATIENCE`]. Requeues go out
/// one by one, at once. What a delivery runs after its ack (`then`) runs after the ack that
/// covers it was sent.
pub(super) struct Settler {
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
    apart_tx: tokio::sync::mpsc::UnboundedSender<Job>,
    task: tokio::task::JoinHandle<()>,
}

type Waiting = std::collections::BTreeMap<u64, (lapin::Acker, Option<Then>)>;

impl Settler {
    pub(super) fn start() -> Settler {
        use futures::StreamExt;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (apart_tx, mut apart_rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let task = tokio::spawn(async move {
            let mut window = AckWindow::new();
            let mut waiting = Waiting::new();
            // The jobs running apart: polled here, settled in whatever order they end.
            let mut apart = futures::stream::FuturesUnordered::new();
            let (mut open, mut apart_open) = (true, true);
            // Since when settled deliveries wait behind one running apart.
            let mut held_since: Option<tokio::time::Instant> = None;
            while open || apart_open || !apart.is_empty() {
                let held_until = held_since.map(|t| t + AHEAD_PATIENCE);
                let held = async {
                    match held_until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    // In order of how often each has work: the in-order jobs are nearly all.
                    biased;
                    job = rx.recv(), if open => match job {
                        Some(job) => {
                            let s = job.await;
                            settle(s, &mut window, &mut waiting).await;
                        }
                        None => open = false,
                    },
                    job = apart_rx.recv(), if apart_open => match job {
                        Some(job) => apart.push(job),
                        None => apart_open = false,
                    },
                    Some(s) = apart.next(), if !apart.is_empty() => {
                        settle(s, &mut window, &mut waiting).await;
                    }
                    _ = held => {
                        ack_settled(&window, &mut waiting, true).await;
                        held_since = None;
                    }
                }
                if rx.is_empty() || waiting.len() >= ACK_BATCH {
                    ack_settled(&window, &mut waiting, false).await;
                    // Deliveries left waiting behind a gap close it soon, unless the gap is a
                    // job running apart.
                    if waiting.is_empty() || apart.is_empty() {
                        held_since = None;
                    } else {
                        held_since.get_or_insert_with(tokio::time::Instant::now);
                    }
                }
            }
            ack_settled(&window, &mut waiting, true).await;
        });
        Settler { tx, apart_tx, task }
    }

    pub(super) fn job(&self, f: impl std::future::Future<Output = Settled> + Send + 'static) {
        let _ = self.tx.send(Box::pin(f));
    }

    /// A job that may take long (a forward to another device's outbox): it runs beside the
    /// others and settles whenever it ends.
    pub(super) fn job_apart(&self, f: impl std::future::Future<Output = Settled> + Send + 'static) {
        let _ = self.apart_tx.send(Box::pin(f));
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
        drop(self.apart_tx);
        let _ = self.task.await;
    }
}

/// One job's end: an ok delivery waits for its ack, another is put back in its queue at once.
async fn settle(s: Settled, window: &mut AckWindow, waiting: &mut Waiting) {
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
}

/// Acknowledge, with one `multiple` ack, every waiting delivery the window covers; then, with
/// `all`, those waiting behind a delivery that has not settled, each on its own; then run
/// their `then`s. A failed ack (connection lost) drops them: the broker redelivers.
pub(super) async fn ack_settled(window: &AckWindow, waiting: &mut Waiting, all: bool) {
    let rest = waiting.split_off(&(window.covered() + 1));
    let covered = std::mem::replace(waiting, rest);
    if let Some((_, (acker, _))) = covered.last_key_value() {
        let multiple = covered.len() > 1;
        let result = acker.ack(BasicAckOptions { multiple }).await;
        acked(
            result,
            covered.into_values().map(|(_, then)| then).collect(),
        );
    }
    if all {
        // Never covered by a `multiple` ack later: that one's tag is always a waiting one, and
        // tags acknowledged here are waiting no more.
        for (_, (acker, then)) in std::mem::take(waiting) {
            acked(
                acker.ack(BasicAckOptions { multiple: false }).await,
                vec![then],
            );
        }
    }
}

/// After an ack of the deliveries whose `thens` these are: run them, or warn.
fn acked(result: Result<bool, lapin::Error>, thens: Vec<Option<Then>>) {
    match result {
        Ok(_) => thens.into_iter().flatten().for_each(|then| then()),
        Err(e) => tracing::warn!(
            "acknowledging {} kanban(s): {e} (they will be redelivered)",
            thens.len()
        ),
    }
}
