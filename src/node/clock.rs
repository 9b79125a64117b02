//! Time as the node uses it: versions from a hybrid logical clock, and the per-epoch count of
//! writes in flight that lets an ownership switch wait for the old owner's writes without
//! blocking new ones.
//!
//! Must not touch: the ring's rules (the state machine gets time as an argument) or storage.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};

use super::locked;
use crate::ring::View;

/// How far ahead of this node's clock a version may be: further means a forged or broken
/// clock, refused. The same bound as the replay window of signed calls: nodes' clocks must
/// agree within it anyway.
pub const MAX_SKEW_MICROS: u64 = 30_000_000;

/// Microseconds since the Unix epoch.
pub fn wall_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Milliseconds since the Unix epoch: what request deadlines are written in.
pub fn wall_millis() -> u64 {
    wall_micros() / 1000
}

/// A hybrid logical clock (Kulkarni et al.): physical microseconds, raised above every
/// version this node has seen, so a version stamped here orders after everything it knew of.
#[derive(Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    /// A new version, above the wall clock and above every version seen.
    pub fn stamp(&self) -> u64 {
        let wall = wall_micros();
        let prev = self
            .last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(wall.max(last.saturating_add(1))))
            .unwrap_or(0);
        wall.max(prev.saturating_add(1))
    }

    /// Checks a version from elsewhere against the skew bound and raises the clock to it.
    pub fn observe(&self, version: u64) -> Result<(), u64> {
        if version > wall_micros().saturating_add(MAX_SKEW_MICROS) {
            return Err(version);
        }
        self.last.fetch_max(version, Ordering::SeqCst);
        Ok(())
    }
}

/// Writes in flight, counted by the epoch of the view they routed by.
#[derive(Default)]
pub struct EpochWrites {
    counts: Mutex<BTreeMap<u64, usize>>,
    ended: Notify,
}

/// Counts one write until dropped.
pub struct WriteGuard<'a> {
    writes: &'a EpochWrites,
    epoch: u64,
}

impl EpochWrites {
    /// Registers a write and returns the view it must use: the count and the view are taken
    /// together, so a switch published after this sees the write, and one published before
    /// it is the view returned.
    pub fn begin<'a>(&'a self, view: &watch::Receiver<Arc<View>>) -> (WriteGuard<'a>, Arc<View>) {
        let mut counts = locked(&self.counts);
        let v = view.borrow().clone();
        *counts.entry(v.epoch).or_insert(0) += 1;
        (WriteGuard { writes: self, epoch: v.epoch }, v)
    }

    /// Waits until no write begun under an epoch older than `epoch` is running.
    pub async fn drained(&self, epoch: u64) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if locked(&self.counts).range(..epoch).next().is_none() {
                return;
            }
            ended.await;
        }
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let mut counts = locked(&self.writes.counts);
        if let Some(n) = counts.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.epoch);
            }
        }
        drop(counts);
        self.writes.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_rise_above_the_wall_clock_and_what_was_seen() {
        let c = Hlc::default();
        let a = c.stamp();
        assert!(c.stamp() > a);
        let ahead = wall_micros() + 5_000_000;
        c.observe(ahead).unwrap();
        assert!(c.stamp() > ahead, "a stamp orders after every version seen");
        assert!(c.observe(wall_micros() + MAX_SKEW_MICROS + 60_000_000).is_err(), "too far ahead");
    }

    #[tokio::test]
    async fn a_switch_waits_for_older_writes_only() {
        let me = crate::ring::Peer::new("a:1");
        let (tx, rx) = watch::channel(Arc::new(View::joining(me.clone(), 3)));
        let writes = EpochWrites::default();
        let (old, _) = writes.begin(&rx);
        tx.send_replace(Arc::new(View { epoch: 1, ..View::joining(me, 3) }));
        let (new, v) = writes.begin(&rx);
        assert_eq!(v.epoch, 1);
        let wait = writes.drained(1);
        tokio::pin!(wait);
        assert!(futures_poll(&mut wait).is_pending(), "an epoch-0 write is running");
        drop(old);
        assert!(futures_poll(&mut wait).is_ready(), "the epoch-1 write does not hold it back");
        drop(new);
    }

    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::noop();
        std::pin::Pin::new(f).poll(&mut std::task::Context::from_waker(waker))
    }
}
