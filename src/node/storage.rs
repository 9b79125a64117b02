//! The async face of the store: point reads inline (see `get`), scans on tokio's blocking
//! pool, writes through one writer
//! thread that commits many waiting writes in one LMDB transaction (group commit). A durable
//! commit costs about as much for one write as for a thousand, so under load this turns
//! commit latency into throughput; with one writer nobody waits for anyone else's commit lock.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::error::{Error, Result, StartError};
use crate::lmdb::{Applied, Record, Scan, Store, Write};
use crate::ring::{Standing, View};

/// Jobs waiting for the writer thread (a job is one client write, or one replica or handoff
/// batch, whose bytes the peer's body budget already bounds). When full, writers wait
/// (backpressure) instead of queueing without bound; 4096 single writes are several commits'
/// worth at the batch size below.
const WRITE_QUEUE: usize = 4096;
/// Most writes in one commit, so one commit's latency stays bounded under a flood (a single
/// job larger than this, a replica batch or a handoff batch, still commits whole).
const MAX_BATCH: usize = 1024;

/// Writes that commit together in one transaction, and where their outcomes go.
type Pending = (Vec<Write>, oneshot::Sender<Result<Vec<Applied>>>);

#[derive(Clone)]
pub struct Storage {
    store: Arc<Store>,
    writes: mpsc::Sender<Pending>,
}

/// A tombstone outlives every handoff that could carry an older copy of its key; handoffs
/// take seconds, so ten minutes is ample.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// How often old tombstones are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Most tombstones purged in one commit, so a purge never holds the writer for long.
const PURGE_BATCH: usize = 10_000;

impl Storage {
    /// Opens the store and starts the writer thread, which ends when the last `Storage` clone
    /// is dropped.
    pub fn open(dir: &Path) -> std::result::Result<Storage, StartError> {
        let store = Arc::new(Store::open(dir)?);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer_store = store.clone();
        std::thread::Builder::new().name("sdht-writer".into()).spawn(move || writer(writer_store, rx))?;
        Ok(Storage { store, writes: tx })
    }

    pub fn live_keys(&self) -> u64 {
        self.store.live_keys()
    }

    pub fn live_bytes(&self) -> u64 {
        self.store.live_bytes()
    }

    /// Runs a blocking store call on tokio's blocking pool.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> crate::lmdb::Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| Error::StoreGone)?
            .map_err(Error::from)
    }

    /// Reads one record on the calling thread. The one exception to "storage off the async
    /// threads": an LMDB read is a lookup in a memory map (about 0.14 µs, no lock, never waits
    /// for a writer), and sending it to the blocking pool measured at less than half the GET
    /// throughput (39% of bare hyper instead of 85%, `cargo bench --bench throughput`). It
    /// can only stall on a page fault when the data is not in the page cache.
    pub fn get(&self, id: u64, key: &[u8]) -> Result<Option<Record>> {
        Ok(self.store.get(id, key)?)
    }

    /// One batch of at most `records` records (and about `wire::BATCH_BYTES`) of (after, upto].
    pub async fn scan(&self, after: u64, upto: u64, resume: Option<Vec<u8>>, records: usize) -> Result<Scan> {
        let bytes = crate::wire::BATCH_BYTES;
        self.blocking(move |s| s.scan_range(after, upto, resume.as_deref(), records, bytes)).await
    }

    /// Queues writes that commit together (waiting while the queue is full) and waits until
    /// that commit is durable.
    async fn commit(&self, ws: Vec<Write>) -> Result<Vec<Applied>> {
        let (tx, rx) = oneshot::channel();
        self.writes.send((ws, tx)).await.map_err(|_| Error::StoreGone)?;
        rx.await.map_err(|_| Error::StoreGone)?
    }

    /// Queues one write and waits until it is durable.
    pub async fn write(&self, w: Write) -> Result<Applied> {
        self.commit(vec![w]).await?.pop().ok_or(Error::StoreGone)
    }

    /// Writes all of `ws` in one transaction (perhaps with other callers' writes) and waits
    /// until it is durable: a replica's batch becomes durable whole or not at all.
    pub async fn write_all(&self, ws: Vec<Write>) -> Result<Vec<Applied>> {
        if ws.is_empty() {
            return Ok(Vec::new());
        }
        self.commit(ws).await
    }

    /// Removes every record (the node was away too long for its data to be trusted).
    pub async fn clear(&self) -> Result<()> {
        self.blocking(|s| s.clear_records()).await
    }

    pub async fn meta_get(&self, name: &'static str) -> Result<Option<Vec<u8>>> {
        self.blocking(move |s| s.meta_get(name)).await
    }

    pub async fn meta_put(&self, name: &'static str, value: Vec<u8>) -> Result<()> {
        self.blocking(move |s| s.meta_put(name, &value)).await
    }
}

fn writer(store: Arc<Store>, mut rx: mpsc::Receiver<Pending>) {
    let mut writes: Vec<Write> = Vec::with_capacity(MAX_BATCH);
    let mut jobs = Vec::new();
    while let Some((ws, reply)) = rx.blocking_recv() {
        jobs.push((ws.len(), reply));
        writes.extend(ws);
        while writes.len() < MAX_BATCH {
            let Ok((ws, reply)) = rx.try_recv() else { break };
            jobs.push((ws.len(), reply));
            writes.extend(ws);
        }
        match store.apply(&writes) {
            Ok(applied) => {
                let mut applied = applied.into_iter();
                for (n, reply) in jobs.drain(..) {
                    let _ = reply.send(Ok(applied.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = writes.len(), "commit failed");
                let shared = Arc::new(e);
                for (_, reply) in jobs.drain(..) {
                    let _ = reply.send(Err(Error::CommitFailed(shared.clone())));
                }
            }
        }
        writes.clear();
    }
}

/// Meta entry: the last time (Unix ms) this node was a member in touch with all its peers.
pub const MEMBER_AT_META: &str = "member_at";

/// Every `PURGE_EVERY` until `halt`: notes that the node is a member in touch with every peer
/// it knows of (`MEMBER_AT_META`), and only then purges tombstones older than
/// `TOMBSTONE_TTL`. While a peer is unreachable the ring may be split, and a delete purged on
/// one side could be undone by the other side's older value when they meet.
pub async fn purge_loop(storage: Storage, view: watch::Receiver<Arc<View>>, halt: CancellationToken) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = halt.cancelled() => return,
            _ = tick.tick() => {}
        }
        let v = view.borrow().clone();
        if v.standing != Standing::Member || v.cut_off || v.unreachable > 0 {
            continue;
        }
        let now = super::clock::wall_millis().to_string().into_bytes();
        if let Err(e) = storage.meta_put(MEMBER_AT_META, now).await {
            tracing::warn!(error = %e, "could not note membership time");
        }
        let before = super::clock::wall_micros().saturating_sub(TOMBSTONE_TTL.as_micros() as u64);
        match storage.blocking(move |s| s.purge_tombstones(before, PURGE_BATCH)).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "old tombstones purged"),
            Err(e) => tracing::warn!(error = %e, "tombstone purge failed"),
        }
    }
}
