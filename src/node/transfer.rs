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

/// One range copy under way.
struct Copy<'a> {
    range: Interval,
    to: &'a Peer,
    kind: CopyKind,
    /// Ids synced so far (replication), and whether the replica had anything newer.
    synced: Id,
    behind: bool,
    span: u64,
    progress: Progress,
    /// Shown in `/status` (handoffs always; a replication push only when nothing else is).
    shown: bool,
    started: Instant,
    last_log: Instant,
}

impl<'a> Copy<'a> {
    fn new(range: Interval, to: &'a Peer, kind: CopyKind, idle: bool) -> Copy<'a> {
        let span = if range.after == range.upto { u64::MAX } else { range.after.distance_to(range.upto) };
        let progress =
            Progress { to: to.addr.clone(), leaving: kind == CopyKind::Leave, ..Progress::default() };
        let shown = kind != CopyKind::Replicate || idle;
        let now = Instant::now();
        Copy {
            range,
            to,
            kind,
            synced: range.after,
            behind: false,
            span,
            progress,
            shown,
            started: now,
            last_log: now,
        }
    }
}

impl Node {
    /// Sends every record of `range` to `to` in batches; returns (records, bytes) sent. Logs
    /// progress at most once a second and keeps it current for `/status`. Replication also
    /// pulls back what the replica holds newer, and fails (to run again) if there was any.
    pub(super) async fn copy_range(&self, range: Interval, to: &Peer, kind: CopyKind) -> Result<(u64, u64)> {
        let mut copy = Copy::new(range, to, kind, self.progress().is_none());
        let result = self.copy_batches(&mut copy).await;
        if copy.shown {
            self.set_progress(None);
        }
        let (keys, bytes) = result?;
        let ms = copy.started.elapsed().as_millis() as u64;
        if kind == CopyKind::Replicate {
            tracing::debug!(node = %self.inner.me.addr, to = %to.addr, keys, bytes, ms, "range pushed to a replica");
        } else {
            tracing::info!(node = %self.inner.me.addr, to = %to.addr, keys, bytes, ms, ?kind, "range copied");
        }
        if copy.behind {
            // What came back must reach the other replicas too: the push runs again.
            return Err(Fault::Busy.into());
        }
        Ok((keys, bytes))
    }

    async fn copy_batches(&self, c: &mut Copy<'_>) -> Result<(u64, u64)> {
        let mut resume = None;
        loop {
            let scan = self.scan_batch(c.range, resume).await?;
            let last = scan.records.last().map(|r| Id(r.id));
            let batch_bytes = scan.records.iter().map(|r| r.size() as u64).sum::<u64>();
            let n = scan.records.len() as u64;
            let records: Vec<wire::Record> = scan.records.into_iter().map(to_wire).collect();
            if c.kind == CopyKind::Replicate {
                let upto = if scan.next.is_none() { c.range.upto } else { last.unwrap_or(c.range.upto) };
                c.behind |= self.sync_batch(c.to, Interval::new(c.synced, upto), records).await?;
                c.synced = upto;
            } else if n > 0 {
                let me = Node::info(&self.inner.me);
                let merged = self
                    .inner
                    .peers
                    .merge(&c.to.addr, me, records, wire::MergeKind::Handoff, BATCH_TIMEOUT)
                    .await;
                merged.map_err(Error::from_peer(c.to))?;
            }
            self.copied(c, n, batch_bytes, last);
            match scan.next {
                Some(next) => resume = Some(next),
                None => return Ok((c.progress.keys, c.progress.bytes)),
            }
        }
    }

    /// Counts a batch sent, shows the progress, and logs it at most once a second.
    fn copied(&self, c: &mut Copy<'_>, n: u64, bytes: u64, last: Option<Id>) {
        self.inner.metrics.handoff_keys.inc_by(n);
        self.inner.metrics.handoff_bytes.inc_by(bytes);
        c.progress.keys += n;
        c.progress.bytes += bytes;
        if let Some(last) = last {
            c.progress.percent = 100.0 * c.range.after.distance_to(last) as f64 / c.span as f64;
        }
        if c.shown {
            self.set_progress(Some(c.progress.clone()));
        }
        if c.last_log.elapsed() >= LOG_EVERY {
            let Progress { keys, bytes, percent, .. } = c.progress;
            let rate = (keys as f64 / c.started.elapsed().as_secs_f64()) as u64;
            let (to, kind, percent) = (&c.to.addr, c.kind, format!("{percent:.1}"));
            tracing::info!(node = %self.inner.me.addr, %to, keys, bytes, percent, keys_per_s = rate, ?kind, "copy in progress");
            c.last_log = Instant::now();
        }
    }

    /// One replication batch over `ids`; merges what the replica answers with. Returns true if
    /// it had anything newer.
    async fn sync_batch(&self, to: &Peer, ids: Interval, records: Vec<wire::Record>) -> Result<bool> {
        if ids.after == ids.upto && !records.is_empty() {
            // Two batches met within one id (a hash collision): nothing to ask about.
            return Ok(false);
        }
        let req = wire::Request::Sync {
            from: Node::info(&self.inner.me),
            after: ids.after.0,
            upto: ids.upto.0,
            records,
        };
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
        let sent: std::collections::HashMap<String, u64> =
            records.iter().map(|r| (r.key.clone(), r.version)).collect();
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

    /// Records that came with a handoff and were new here (a write-through's, new or not: a
    /// replica copy of the same write may have come first): those outside our range go on to
    /// their owners (the owner may not have them); those inside go to our replicas (we may
    /// have taken the range over, and pushed it, before they came).
    pub(super) fn settle_handoff(
        &self,
        records: Vec<wire::Record>,
        applied: Vec<Applied>,
        write_through: bool,
    ) {
        let view = self.view();
        let owned = view.owned();
        let (mine, strays): (Vec<wire::Record>, Vec<wire::Record>) = records
            .into_iter()
            .zip(applied)
            .filter(|(_, a)| write_through || matches!(a, Applied::Stored { .. }))
            .map(|(r, _)| r)
            .partition(|r| owned.is_some_and(|o| o.contains(key_id(r.key.as_bytes()))));
        if !mine.is_empty() {
            for to in view.replica_peers(view.replicas.saturating_sub(1)) {
                let (done, _) = tokio::sync::mpsc::channel(1);
                self.send_copy(to, mine.clone(), wire::MergeKind::Replica, BATCH_TIMEOUT, done);
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
            let removes = scan
                .records
                .into_iter()
                .map(|r| Write::Remove { id: r.id, key: r.key, version: r.version })
                .collect();
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
            writes.push(Write::Merge(Record {
                id,
                key: r.key.into_bytes(),
                version: r.version,
                value: r.value,
            }));
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
