//! Replication streams: one per replica peer. An owner's writes bound for the same replica
//! queue here and go as one `Merge` while the previous one is in flight (group commit over
//! the network); the replica commits each message in one transaction and its answer
//! acknowledges every write in it.
//!
//! Owns: the streams (a bounded queue and one sending task each), and their bounds. Must not
//! touch: which peers are replicas and how many acknowledgements a write needs (the request
//! path decides, from the view), ring state (failures go to the membership task as events).
//! Left out: handoffs and replication syncs, which send their own batches (`transfer.rs`).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{locked, Node};
use crate::ring::{Event, Peer};
use crate::wire::{self, MergeKind};

/// Writes queued for one replica. When full the write counts as not acknowledged by that
/// replica (the others and the owner can still make the quorum, and the replication sync
/// repairs the replica later): a slow replica costs a bounded queue, never unbounded memory,
/// and when every replica is that slow, writes fail fast instead of piling up.
const STREAM_QUEUE: usize = 4096;
/// Most writes in one message: a replica commits it in one transaction, which stays short.
const MAX_BATCH: usize = 1024;
/// Most value bytes in one message (at least one write goes, whatever its size): well under
/// the largest message a peer accepts (`Config::max_message`).
const MAX_BATCH_BYTES: usize = wire::BATCH_BYTES;
/// Messages in flight to one replica at once: while one is being committed there, the next
/// is already on its way, so a write waits for at most part of a commit before it is sent.
/// More would only queue in the replica's writer; each one holds a pooled connection.
const MAX_IN_FLIGHT: usize = 2;
/// How long a replica may take to make one message durable before its writes count as missed.
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream with nothing to send for this long ends, so peers that stopped being replicas do
/// not keep a task.
const IDLE_END: Duration = Duration::from_secs(30);

/// One write for a replica, and where to say whether it became durable there.
pub(super) struct Item {
    pub record: wire::Record,
    pub done: mpsc::Sender<bool>,
}

/// The senders of the running streams, by replica address.
#[derive(Default)]
pub(super) struct Streams {
    by_addr: std::sync::Mutex<HashMap<String, mpsc::Sender<Item>>>,
}

impl Node {
    /// Queues `record` for replica `to`; `done` learns whether it is durable there.
    pub(super) fn replicate(&self, to: &Peer, record: wire::Record, done: mpsc::Sender<bool>) {
        let mut item = Item { record, done };
        for _ in 0..2 {
            let tx = self.stream(to);
            match tx.try_send(item) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(it)) => {
                    self.inner.metrics.replica_queue_full.inc();
                    self.membership_hint(Event::ReplicaMissed);
                    let _ = it.done.try_send(false);
                    return;
                }
                // The stream ended (idle) just now: `stream` starts a new one.
                Err(mpsc::error::TrySendError::Closed(it)) => item = it,
            }
        }
        let _ = item.done.try_send(false);
    }

    /// The stream to `to`, started if there is none.
    fn stream(&self, to: &Peer) -> mpsc::Sender<Item> {
        let mut streams = locked(&self.inner.streams.by_addr);
        if let Some(tx) = streams.get(&to.addr).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        streams.insert(to.addr.clone(), tx.clone());
        let node = self.clone();
        let to = to.clone();
        self.inner.tasks.spawn(async move { node.run_stream(to, rx).await });
        tx
    }

    /// Sends what is queued for one replica, at most `MAX_IN_FLIGHT` messages at a time,
    /// until idle or shut down. Writes that arrive while every slot is busy wait in the queue
    /// and go together in the next message.
    async fn run_stream(self, to: Peer, mut rx: mpsc::Receiver<Item>) {
        let halt = self.inner.halt.clone();
        let mut in_flight = tokio::task::JoinSet::new();
        let mut carry = None;
        loop {
            while in_flight.len() >= MAX_IN_FLIGHT {
                tokio::select! {
                    _ = halt.cancelled() => return,
                    _ = in_flight.join_next() => {}
                }
            }
            let first = match carry.take() {
                Some(item) => item,
                None => tokio::select! {
                    _ = halt.cancelled() => return,
                    item = tokio::time::timeout(IDLE_END, rx.recv()) => match item {
                        Ok(Some(item)) => item,
                        // Idle: closing the receiver makes the next `replicate` start a new stream.
                        _ => return,
                    },
                },
            };
            let (records, dones);
            (records, dones, carry) = next_batch(first, &mut rx);
            let node = self.clone();
            let to = to.clone();
            in_flight.spawn(async move {
                let ok = node.send_batch(&to, records).await;
                for done in dones {
                    let _ = done.try_send(ok);
                }
            });
        }
    }

    /// One message of replica writes; whether the replica made them durable.
    async fn send_batch(&self, to: &Peer, records: Vec<wire::Record>) -> bool {
        let me = Node::info(&self.inner.me);
        self.inner.metrics.replica_batches.inc();
        self.inner.metrics.replica_writes.inc_by(records.len() as u64);
        let result =
            self.inner.peers.merge(&to.addr, me, records, MergeKind::Replica, REPLICATE_TIMEOUT).await;
        if let Err(e) = &result {
            tracing::debug!(replica = %to.addr, error = %e, "replica write failed");
            self.membership_hint(Event::ReplicaMissed);
            if e.is_refused() {
                self.membership_hint(Event::Unreachable { peer: to.clone(), failure: e.failure() });
            }
        }
        result.is_ok()
    }
}

/// `first` and whatever else is queued now, up to the batch bounds; the write that did not
/// fit, if any, starts the next batch.
fn next_batch(
    first: Item,
    rx: &mut mpsc::Receiver<Item>,
) -> (Vec<wire::Record>, Vec<mpsc::Sender<bool>>, Option<Item>) {
    let size = |i: &Item| i.record.value.as_ref().map_or(0, Vec::len);
    let mut bytes = size(&first);
    let (mut records, mut dones) = (vec![first.record], vec![first.done]);
    while records.len() < MAX_BATCH {
        let Ok(item) = rx.try_recv() else { break };
        if bytes + size(&item) > MAX_BATCH_BYTES {
            return (records, dones, Some(item));
        }
        bytes += size(&item);
        records.push(item.record);
        dones.push(item.done);
    }
    (records, dones, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(len: usize) -> (Item, mpsc::Receiver<bool>) {
        let (done, rx) = mpsc::channel(1);
        (Item { record: wire::Record { key: "k".into(), version: 1, value: Some(vec![0; len]) }, done }, rx)
    }

    /// Queues items of the given sizes and returns the batches `next_batch` cuts them into.
    fn batches(sizes: &[usize]) -> Vec<usize> {
        let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
        for &len in sizes {
            tx.try_send(item(len).0).ok().unwrap();
        }
        let mut out = Vec::new();
        let mut carry = None;
        while let Some(first) = carry.take().or_else(|| rx.try_recv().ok()) {
            let (records, dones, next) = next_batch(first, &mut rx);
            assert_eq!(records.len(), dones.len());
            let bytes: usize = records.iter().map(|r| r.value.as_ref().unwrap().len()).sum();
            assert!(records.len() == 1 || bytes <= MAX_BATCH_BYTES, "{bytes} bytes in one batch");
            out.push(records.len());
            carry = next;
        }
        out
    }

    #[test]
    fn queued_writes_go_as_one_message_up_to_the_count_bound() {
        assert_eq!(batches(&[100; 3]), vec![3]);
        assert_eq!(batches(&vec![10; MAX_BATCH + 5]), vec![MAX_BATCH, 5]);
    }

    #[test]
    fn a_batch_stays_under_the_byte_bound_and_a_large_write_goes_alone() {
        let half = MAX_BATCH_BYTES / 2;
        assert_eq!(batches(&[half, half, 1, 8 * MAX_BATCH_BYTES, 1]), vec![2, 1, 1, 1]);
    }
}
