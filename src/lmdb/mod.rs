//! The node's on-disk store: one LMDB environment through heed.
//!
//! Owns: the record layout, versions and tombstones, range scans by ring id, and the count of
//! live keys. Records are keyed by (ring id as 8 big-endian bytes, key bytes), so the keys of
//! a ring interval are one ordered range and a handoff is a scan, not a search. Every record
//! carries a version; a write only ever replaces an older version, so handoffs and write-
//! throughs can arrive in any order and still leave the newest value. A delete writes a
//! tombstone (kept for `purge_tombstones`) so that an older copy arriving later cannot bring
//! the key back.
//!
//! Must not touch: the network, tokio, the ring's types. Calls block (a commit waits for the
//! disk); the caller runs them off async threads and batches writes into one `apply` per
//! commit (group commit). heed's errors are converted here and never leak upward.
//!
//! Left out on purpose: a trait over storage engines; caching (LMDB reads come from the page
//! cache already).

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use heed::types::{Bytes, Unit};
use heed::{Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

/// Address space LMDB reserves for the map. It is virtual, not disk: it only caps how much one
/// node can store, and 64 GiB is far above what one node of a ring should hold.
pub const MAP_SIZE: usize = 64 << 30;

const LIVE: u8 = 0;
const TOMBSTONE: u8 = 1;
/// tag (1) + version (8)
const HEADER: usize = 9;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk or LMDB failed; the operation did not take effect.
    #[error("storage failed: {0}")]
    Io(#[from] heed::Error),
    /// A stored record does not have the layout this version writes.
    #[error("stored record for key {key:?} is corrupt")]
    Corrupt { key: Vec<u8> },
}

pub type Result<T> = std::result::Result<T, Error>;

/// One key's state: its value, or `None` for a tombstone, and the version that wrote it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    pub id: u64,
    pub key: Vec<u8>,
    pub version: u64,
    pub value: Option<Vec<u8>>,
}

impl Record {
    /// Bytes this record takes in a batch, for sizing handoff batches.
    pub fn size(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Vec::len) + 24
    }

    /// Which of two versions of a key wins: the higher version, then (for the unlikely tie of
    /// two writers in one microsecond) the larger value, so every node picks the same one.
    fn newer_than(&self, version: u64, value: Option<&[u8]>) -> bool {
        (self.version, self.value.as_deref()) > (version, value)
    }
}

/// A write, applied with others in one transaction by [`Store::apply`]. Every write that
/// stores something keeps the newer of its version and the stored one (last writer wins), so
/// copies and late requests can arrive in any order and still leave the newest value.
#[derive(Clone, Debug)]
pub enum Write {
    /// A client's write at the key's owner, versioned where it entered the ring.
    Put { id: u64, key: Vec<u8>, value: Vec<u8>, version: u64 },
    /// A client's delete at the owner: a tombstone; nothing (Unchanged) when there is no live
    /// value.
    Delete { id: u64, key: Vec<u8>, version: u64 },
    /// A copy from another node (handoff, replica, write-through).
    Merge(Record),
    /// Drop a record handed to another node, unless it changed since (version is newer).
    Remove { id: u64, key: Vec<u8>, version: u64 },
}

/// What a `Write` did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Applied {
    /// This version is stored now. `existed`: a live value was there before.
    Stored { version: u64, existed: bool },
    /// A newer version is stored; the write is ordered before it and changed nothing.
    Superseded { current: u64 },
    /// Delete or Remove changed nothing (there is no live value / the record is newer).
    Unchanged,
}

/// One batch of a range scan, and where to resume.
#[derive(Debug)]
pub struct Scan {
    pub records: Vec<Record>,
    /// Pass back as `resume` to continue; None once the range is exhausted.
    pub next: Option<Vec<u8>>,
}

pub struct Store {
    /// Opened without thread-local read slots (`MDB_NOTLS`): a read transaction is not tied to
    /// the thread that began it (tokio moves tasks between threads), and a process may open
    /// more stores than glibc has thread-local keys (1024), as the in-process scale bench does.
    env: Env<WithoutTls>,
    records: Database<Bytes, Bytes>,
    /// (tombstone version, record key): lets purging find old tombstones without a full scan.
    tombs: Database<Bytes, Unit>,
    meta: Database<Bytes, Bytes>,
    live: AtomicU64,
    live_bytes: AtomicU64,
}

/// Live keys and bytes one record contributes (none for a tombstone or no record).
fn usage(key: &[u8], value: Option<&[u8]>) -> (i64, i64) {
    value.map_or((0, 0), |v| (1, (key.len() + v.len()) as i64))
}

fn record_key(id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn encode_value(version: u64, value: Option<&[u8]>) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + value.map_or(0, <[u8]>::len));
    v.push(if value.is_some() { LIVE } else { TOMBSTONE });
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(value.unwrap_or_default());
    v
}

fn decode(rkey: &[u8], raw: &[u8]) -> Result<Record> {
    let corrupt = || Error::Corrupt { key: rkey.to_vec() };
    if rkey.len() < 8 || raw.len() < HEADER {
        return Err(corrupt());
    }
    let id = u64::from_be_bytes(rkey[..8].try_into().unwrap());
    let version = u64::from_be_bytes(raw[1..HEADER].try_into().unwrap());
    let value = match raw[0] {
        LIVE => Some(raw[HEADER..].to_vec()),
        TOMBSTONE => None,
        _ => return Err(corrupt()),
    };
    Ok(Record { id, key: rkey[8..].to_vec(), version, value })
}

/// The id segments of (after, upto] in scan order, each inclusive: one, or two when the
/// interval wraps past u64::MAX.
fn segments(after: u64, upto: u64) -> Vec<(u64, u64)> {
    if after == upto {
        vec![(0, u64::MAX)]
    } else if after < upto {
        vec![(after + 1, upto)]
    } else if after == u64::MAX {
        vec![(0, upto)]
    } else {
        vec![(after + 1, u64::MAX), (0, upto)]
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`. Only one `Store` per directory per process.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(heed::Error::Io)?;
        // SAFETY: heed requires that the same environment is not opened twice in one process
        // and that the files are not modified by other means while open; the node owns `dir`.
        let env =
            unsafe { EnvOpenOptions::new().read_txn_without_tls().map_size(MAP_SIZE).max_dbs(4).open(dir)? };
        let mut wtxn = env.write_txn()?;
        let records = env.create_database(&mut wtxn, Some("records"))?;
        let tombs = env.create_database(&mut wtxn, Some("tombs"))?;
        let meta = env.create_database(&mut wtxn, Some("meta"))?;
        wtxn.commit()?;
        let store =
            Store { env, records, tombs, meta, live: AtomicU64::new(0), live_bytes: AtomicU64::new(0) };
        let (keys, bytes) = store.count_live()?;
        store.live.store(keys, Ordering::Relaxed);
        store.live_bytes.store(bytes, Ordering::Relaxed);
        Ok(store)
    }

    fn count_live(&self) -> Result<(u64, u64)> {
        let rtxn = self.env.read_txn()?;
        let (mut keys, mut bytes) = (0, 0);
        for item in self.records.iter(&rtxn)? {
            let (rkey, raw) = item?;
            if raw.first() == Some(&LIVE) {
                keys += 1;
                bytes += (rkey.len() - 8 + raw.len() - HEADER) as u64;
            }
        }
        Ok((keys, bytes))
    }

    /// Live keys stored (tombstones not counted).
    pub fn live_keys(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Bytes of live keys and values stored.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes.load(Ordering::Relaxed)
    }

    /// The record of a key, tombstone included.
    pub fn get(&self, id: u64, key: &[u8]) -> Result<Option<Record>> {
        let rtxn = self.env.read_txn()?;
        let rkey = record_key(id, key);
        match self.records.get(&rtxn, &rkey)? {
            Some(raw) => decode(&rkey, raw).map(Some),
            None => Ok(None),
        }
    }

    fn current(&self, txn: &RoTxn, rkey: &[u8]) -> Result<Option<Record>> {
        self.records.get(txn, rkey)?.map(|raw| decode(rkey, raw)).transpose()
    }

    fn store(&self, txn: &mut RwTxn, rkey: &[u8], version: u64, value: Option<&[u8]>) -> Result<()> {
        self.records.put(txn, rkey, &encode_value(version, value))?;
        if value.is_none() {
            let mut tk = version.to_be_bytes().to_vec();
            tk.extend_from_slice(rkey);
            self.tombs.put(txn, &tk, &())?;
        }
        Ok(())
    }

    /// Stores `rec` unless `old` is at least as new.
    fn keep_newer(
        &self,
        txn: &mut RwTxn,
        rkey: &[u8],
        old: Option<Record>,
        rec: &Record,
        account: &mut impl FnMut(Option<&Record>, &[u8], Option<&[u8]>),
    ) -> Result<Applied> {
        if let Some(o) = old.as_ref().filter(|o| !rec.newer_than(o.version, o.value.as_deref())) {
            return Ok(Applied::Superseded { current: o.version });
        }
        let existed = old.as_ref().is_some_and(|r| r.value.is_some());
        self.store(txn, rkey, rec.version, rec.value.as_deref())?;
        account(old.as_ref(), &rec.key, rec.value.as_deref());
        Ok(Applied::Stored { version: rec.version, existed })
    }

    /// Applies all writes in one transaction and one durable commit. Either all take effect
    /// or (on error) none.
    pub fn apply(&self, writes: &[Write]) -> Result<Vec<Applied>> {
        let mut txn = self.env.write_txn()?;
        let mut out = Vec::with_capacity(writes.len());
        let (mut keys, mut bytes) = (0i64, 0i64);
        let mut account = |old: Option<&Record>, key: &[u8], new: Option<&[u8]>| {
            let (ok, ob) = old.map_or((0, 0), |o| usage(&o.key, o.value.as_deref()));
            let (nk, nb) = usage(key, new);
            keys += nk - ok;
            bytes += nb - ob;
        };
        for w in writes {
            let applied = match w {
                Write::Delete { id, key, version } => {
                    let rkey = record_key(*id, key);
                    let old = self.current(&txn, &rkey)?;
                    if !old.as_ref().is_some_and(|r| r.value.is_some()) {
                        Applied::Unchanged
                    } else {
                        let rec = Record { id: *id, key: key.clone(), version: *version, value: None };
                        self.keep_newer(&mut txn, &rkey, old, &rec, &mut account)?
                    }
                }
                Write::Put { id, key, value, version } => {
                    let rkey = record_key(*id, key);
                    let old = self.current(&txn, &rkey)?;
                    let rec =
                        Record { id: *id, key: key.clone(), version: *version, value: Some(value.clone()) };
                    self.keep_newer(&mut txn, &rkey, old, &rec, &mut account)?
                }
                Write::Merge(rec) => {
                    let rkey = record_key(rec.id, &rec.key);
                    let old = self.current(&txn, &rkey)?;
                    self.keep_newer(&mut txn, &rkey, old, rec, &mut account)?
                }
                Write::Remove { id, key, version } => {
                    let rkey = record_key(*id, key);
                    match self.current(&txn, &rkey)? {
                        Some(old) if old.version <= *version => {
                            self.records.delete(&mut txn, &rkey)?;
                            account(Some(&old), key, None);
                            Applied::Stored { version: old.version, existed: old.value.is_some() }
                        }
                        _ => Applied::Unchanged,
                    }
                }
            };
            out.push(applied);
        }
        txn.commit()?;
        // Only the writer thread applies, so these read-modify-writes do not race.
        let add = |n: &AtomicU64, d: i64| {
            n.store((n.load(Ordering::Relaxed) as i64 + d).max(0) as u64, Ordering::Relaxed)
        };
        add(&self.live, keys);
        add(&self.live_bytes, bytes);
        Ok(out)
    }

    /// Records (tombstones included) with ids in the clockwise interval (after, upto], in
    /// scan order, at most `max_records` and about `max_bytes` (always at least one record, so
    /// a single large value still moves). `resume` is the `next` of the previous batch.
    pub fn scan_range(
        &self,
        after: u64,
        upto: u64,
        resume: Option<&[u8]>,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Scan> {
        let rtxn = self.env.read_txn()?;
        let mut records = Vec::new();
        let mut bytes = 0;
        let resume_id =
            resume.filter(|r| r.len() >= 8).map(|r| u64::from_be_bytes(r[..8].try_into().unwrap()));
        let segs = segments(after, upto);
        // Skip the segments already done: the resume key lies in the first one left.
        let start = resume_id
            .map_or(0, |rid| segs.iter().position(|&(lo, hi)| lo <= rid && rid <= hi).unwrap_or(segs.len()));
        for (i, &(lo, hi)) in segs.iter().enumerate().skip(start) {
            let lo_key = lo.to_be_bytes();
            let from = match resume {
                Some(r) if i == start => Bound::Excluded(r),
                _ => Bound::Included(&lo_key[..]),
            };
            let hi_key = hi.wrapping_add(1).to_be_bytes();
            let to = if hi == u64::MAX { Bound::Unbounded } else { Bound::Excluded(&hi_key[..]) };
            for item in self.records.range(&rtxn, &(from, to))? {
                let (rkey, raw) = item?;
                let rec = decode(rkey, raw)?;
                bytes += rec.size();
                records.push(rec);
                if records.len() >= max_records || bytes >= max_bytes {
                    let next = Some(rkey.to_vec());
                    return Ok(Scan { records, next });
                }
            }
        }
        Ok(Scan { records, next: None })
    }

    /// The ids of the live records in (after, upto], in clockwise order from `after`, at most
    /// `max` (the first ones): what a node offering a joiner the median key of its range reads.
    pub fn live_ids(&self, after: u64, upto: u64, max: usize) -> Result<Vec<u64>> {
        let rtxn = self.env.read_txn()?;
        let mut ids = Vec::new();
        for (lo, hi) in segments(after, upto) {
            let (lo_key, hi_key) = (lo.to_be_bytes(), hi.wrapping_add(1).to_be_bytes());
            let to = if hi == u64::MAX { Bound::Unbounded } else { Bound::Excluded(&hi_key[..]) };
            for item in self.records.range(&rtxn, &(Bound::Included(&lo_key[..]), to))? {
                let (rkey, raw) = item?;
                if rkey.len() >= 8 && raw.first() == Some(&LIVE) {
                    ids.push(u64::from_be_bytes(rkey[..8].try_into().unwrap()));
                    if ids.len() >= max {
                        return Ok(ids);
                    }
                }
            }
        }
        Ok(ids)
    }

    /// Deletes tombstones whose version is below `before` (versions are microsecond clocks),
    /// at most `max` of them; returns how many were removed.
    pub fn purge_tombstones(&self, before: u64, max: usize) -> Result<usize> {
        let mut txn = self.env.write_txn()?;
        let old: Vec<Vec<u8>> = self
            .tombs
            .range(&txn, &(Bound::Unbounded, Bound::Excluded(&before.to_be_bytes()[..])))?
            .take(max)
            .map(|item| item.map(|(k, ())| k.to_vec()))
            .collect::<std::result::Result<_, _>>()?;
        let mut purged = 0;
        for tk in &old {
            let version = u64::from_be_bytes(tk[..8].try_into().unwrap());
            let rkey = &tk[8..];
            if let Some(rec) = self.current(&txn, rkey)? {
                if rec.value.is_none() && rec.version == version {
                    self.records.delete(&mut txn, rkey)?;
                    purged += 1;
                }
            }
            self.tombs.delete(&mut txn, tk)?;
        }
        txn.commit()?;
        Ok(purged)
    }

    /// Removes every record and tombstone (meta entries stay).
    pub fn clear_records(&self) -> Result<()> {
        let mut txn = self.env.write_txn()?;
        self.records.clear(&mut txn)?;
        self.tombs.clear(&mut txn)?;
        txn.commit()?;
        self.live.store(0, Ordering::Relaxed);
        self.live_bytes.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// A small piece of node state kept across restarts (e.g. the last known successor).
    pub fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let rtxn = self.env.read_txn()?;
        Ok(self.meta.get(&rtxn, name.as_bytes())?.map(<[u8]>::to_vec))
    }

    pub fn meta_put(&self, name: &str, value: &[u8]) -> Result<()> {
        let mut txn = self.env.write_txn()?;
        self.meta.put(&mut txn, name.as_bytes(), value)?;
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
