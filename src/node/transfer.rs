//! Moving ranges of records between nodes: copying a range to a peer in batches (handoffs and
//! replication), applying the batches a peer sends, and dropping a range handed away.
//!
//! Must not touch: when ranges move or who receives them (the membership state machine says
//! so through `Action::Copy` and `Action::DropRange`).

use std::time::{Duration, Instant};

use super::error::{BadInput, Error, Result};
use super::keys::check_key;
use super::{Node, Progress};
use crate::lmdb::{Applied, Record, Write};
use crate::ring::{key_id, CopyKind, Id, Interval, Peer};
use crate::wire::{self, Fault};

/// Wait for one handoff batch: a durable commit of up to `wire::BATCH_BYTES` (or one
/// maximal value) on the receiver.
pub(super) const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a long copy logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(1);

fn to_wire(r: Record) -> wire::Record {
    wire::Record { key: String::from_utf8_lossy(&r.key).into_owned(), version: r.version, value: r.value }
}

impl Node {
    /// Sends every record of `range` to `to` in batches; returns (records, bytes) sent. Logs
    /// progress at most once a second and keeps it current for `/status`.
    pub(super) async fn copy_range(&self, range: Interval, to: &Peer, kind: CopyKind) -> Result<(u64, u64)> {
        let (mut keys, mut bytes, mut resume) = (0u64, 0u64, None);
        // Replication: ids synced so far, and whether the replica had anything newer.
        let (mut synced, mut behind) = (range.after, false);
        let (started, mut last_log) = (Instant::now(), Instant::now());
        let span = if range.after == range.upto { u64::MAX } else { range.after.distance_to(range.upto) };
        let mut progress = Progress { to: to.addr.clone(), leaving: kind == CopyKind::Leave, ..Progress::default() };
        let shown = kind != CopyKind::Replicate || self.progress().is_none();
        let result = loop {
            let scan = match self.scan_batch(range, resume).await {
                Ok(scan) => scan,
                Err(e) => break Err(e),
            };
            if let Some(last) = scan.records.last() {
                progress.percent = 100.0 * range.after.distance_to(Id(last.id)) as f64 / span as f64;
            }
            let batch_bytes = scan.records.iter().map(|r| r.size() as u64).sum::<u64>();
            let n = scan.records.len() as u64;
            let last = scan.records.last().map(|r| Id(r.id));
            let records: Vec<wire::Record> = scan.records.into_iter().map(to_wire).collect();
            let sent = if kind == CopyKind::Replicate {
                // Replication also pulls back what the replica holds newer (after a partition
                // or a missed write the owner may be behind).
                let upto = if scan.next.is_none() { range.upto } else { last.unwrap_or(range.upto) };
                self.sync_batch(to, Interval::new(synced, upto), records).await.map(|pulled| {
                    synced = upto;
                    behind |= pulled;
                })
            } else if n > 0 {
                let me = Node::info(&self.inner.me);
                self.inner.peers.merge(&to.addr, me, records, true, BATCH_TIMEOUT).await.map_err(Error::from_peer(to))
            } else {
                Ok(())
            };
            if let Err(e) = sent {
                break Err(e);
            }
            (keys, bytes) = (keys + n, bytes + batch_bytes);
            self.inner.metrics.handoff_keys.inc_by(n);
            self.inner.metrics.handoff_bytes.inc_by(batch_bytes);
            progress = Progress { keys, bytes, ..progress };
            if shown {
                self.set_progress(Some(progress.clone()));
            }
            if last_log.elapsed() >= LOG_EVERY {
                let rate = (keys as f64 / started.elapsed().as_secs_f64()) as u64;
                let percent = format!("{:.1}", progress.percent);
                tracing::info!(node = %self.inner.me.addr, to = %to.addr, keys, bytes, percent, keys_per_s = rate, ?kind, "copy in progress");
                last_log = Instant::now();
            }
            match scan.next {
                Some(next) => resume = Some(next),
                None => break Ok((keys, bytes)),
            }
        };
        if shown {
            self.set_progress(None);
        }
        if let Ok((keys, bytes)) = result {
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(node = %self.inner.me.addr, to = %to.addr, keys, bytes, ms, ?kind, "range copied");
        }
        if behind && result.is_ok() {
            // What came back must reach the other replicas too: the push runs again.
            return Err(Fault::Busy.into());
        }
        result
    }

    /// One replication batch over `ids`; merges what the replica answers with. Returns true if
    /// it had anything newer.
    async fn sync_batch(&self, to: &Peer, ids: Interval, records: Vec<wire::Record>) -> Result<bool> {
        if ids.after == ids.upto && !records.is_empty() {
            // Two batches met within one id (a hash collision): nothing to ask about.
            return Ok(false);
        }
        let req = wire::Request::Sync { from: Node::info(&self.inner.me), after: ids.after.0, upto: ids.upto.0, records };
        let (newer, complete) =
            self.inner.peers.sync(&to.addr, req, BATCH_TIMEOUT).await.map_err(Error::from_peer(to))?;
        let pulled = !newer.is_empty() || !complete;
        if !newer.is_empty() {
            self.apply_records(newer).await?;
        }
        Ok(pulled)
    }

    /// A replication batch from an owner: keeps what is newer and returns what we hold in
    /// (after, upto] that is newer than what it sent (at most one batch; `complete` false if
    /// there is more).
    pub(super) async fn sync_range(
        &self,
        after: u64,
        upto: u64,
        records: Vec<wire::Record>,
    ) -> Result<(Vec<wire::Record>, bool)> {
        let sent: std::collections::HashMap<String, u64> = records.iter().map(|r| (r.key.clone(), r.version)).collect();
        self.apply_records(records).await?;
        let (mut newer, mut resume) = (Vec::new(), None);
        loop {
            let scan = self.inner.storage.scan(after, upto, resume, wire::BATCH_RECORDS).await?;
            for r in scan.records {
                let key = String::from_utf8_lossy(&r.key).into_owned();
                if sent.get(&key).is_none_or(|v| *v < r.version) {
                    newer.push(to_wire(r));
                }
            }
            match scan.next {
                None => return Ok((newer, true)),
                Some(_) if newer.len() >= wire::BATCH_RECORDS => return Ok((newer, false)),
                Some(next) => resume = Some(next),
            }
        }
    }

    /// Records that came with a handoff and were new here: those outside our range go on to
    /// their owners (the owner may not have them); those inside go to our replicas (we may
    /// have taken the range over, and pushed it, before they came).
    pub(super) fn settle_handoff(&self, records: Vec<wire::Record>, applied: Vec<Applied>) {
        let view = self.view();
        let owned = view.owned();
        let (mine, strays): (Vec<wire::Record>, Vec<wire::Record>) = records
            .into_iter()
            .zip(applied)
            .filter(|(_, a)| matches!(a, Applied::Stored { .. }))
            .map(|(r, _)| r)
            .partition(|r| owned.is_some_and(|o| o.contains(key_id(r.key.as_bytes()))));
        for r in mine {
            for to in view.replica_peers(view.replicas.saturating_sub(1)) {
                let (done, _) = tokio::sync::mpsc::channel(1);
                self.send_copy(to, r.clone(), false, BATCH_TIMEOUT, done);
            }
        }
        if !strays.is_empty() {
            let node = self.clone();
            self.inner.tasks.spawn(async move { node.restore(strays).await });
        }
    }

    /// One handoff-sized batch of `range`, resuming after `resume`.
    async fn scan_batch(&self, range: Interval, resume: Option<Vec<u8>>) -> Result<crate::lmdb::Scan> {
        self.inner.storage.scan(range.after.0, range.upto.0, resume, self.inner.config.handoff_batch).await
    }

    /// Removes the local copy of a range that now belongs to another node.
    pub(super) async fn drop_range(&self, range: Interval) -> Result<()> {
        let mut resume = None;
        loop {
            let scan = self.scan_batch(range, resume).await?;
            let removes =
                scan.records.into_iter().map(|r| Write::Remove { id: r.id, key: r.key, version: r.version }).collect();
            self.inner.storage.write_all(removes).await?;
            match scan.next {
                Some(next) => resume = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Keeps the records a peer sent where they are newer than ours. Versions too far ahead
    /// of our clock are refused (a forged or broken clock would otherwise win every write).
    pub(super) async fn apply_records(&self, records: Vec<wire::Record>) -> Result<Vec<Applied>> {
        if records.len() > wire::BATCH_RECORDS {
            return Err(BadInput::BatchTooLarge.into());
        }
        let mut writes = Vec::with_capacity(records.len());
        for r in records {
            check_key(r.key.as_bytes())?;
            self.check_version(r.version)?;
            let id = key_id(r.key.as_bytes()).0;
            writes.push(Write::Merge(Record { id, key: r.key.into_bytes(), version: r.version, value: r.value }));
        }
        self.inner.storage.write_all(writes).await
    }

    /// Refuses a version too far ahead of this node's clock, and raises the clock to it.
    pub(super) fn check_version(&self, version: u64) -> Result<()> {
        self.inner.clock.observe(version).map_err(|v| {
            self.inner.metrics.versions_refused.inc();
            Error::Fault(Fault::VersionAhead(v))
        })
    }

}
