//! Request bodies: each is read whole under three bounds, the route's size limit (refused
//! from Content-Length before reading), a node-wide budget of body bytes in flight, and a
//! time limit.
//!
//! Owns: `BodyBudget` and `read_body`. A body's share of the budget is reserved before any
//! of it is read (its Content-Length, or the route's limit when it has none) and held until
//! the caller drops the `Reserved` it gets back, after the request is done with the bytes.
//!
//! Must not touch: authentication (`http` checks a node-to-node call's tag before calling
//! here and its digest after), routing, storage.
//!
//! Left out on purpose: streaming a value to storage as it arrives (values are at most
//! `--max-value-bytes` and buffered whole), and answer bodies (a GET's value is bounded by
//! what was stored).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use super::error::{BadInput, Error, Result};

/// Default `--max-inflight-bytes`: 32 maximal values (8 MiB) at once, a few hundred MiB of
/// memory at worst, far below what a node of this kind is given.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 256 << 20;
/// A body that does not fit the budget waits this long for room, then gets 503: enough to
/// ride out a burst of uploads, short enough that waiting uploads do not pile up.
const BUDGET_WAIT: Duration = Duration::from_secs(2);
/// One part in this many of the budget is kept for authenticated node-to-node calls, so that
/// uploads from clients cannot stall forwarding, replication and handoffs.
const PEER_SHARE_DIVISOR: usize = 4;
/// A client must send its whole body within this time: 8 MiB at a slow 150 KiB/s.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// The budget counts KiB, so that one reservation (a u32 of permits) covers any body.
const UNIT: usize = 1024;

/// The node-wide budget of request-body bytes being received or held.
pub struct BodyBudget {
    /// Every body draws from this.
    all: Arc<Semaphore>,
    /// Client bodies draw from this too: the budget less the peers' share.
    clients: Arc<Semaphore>,
    all_units: usize,
    client_units: usize,
}

/// A body's share of the budget, given back when dropped.
pub struct Reserved {
    _all: OwnedSemaphorePermit,
    _client: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    /// A budget of `bytes` (at least one KiB).
    pub fn new(bytes: usize) -> BodyBudget {
        let all_units = (bytes / UNIT).clamp(1, u32::MAX as usize);
        let client_units = (all_units - all_units / PEER_SHARE_DIVISOR).max(1);
        BodyBudget {
            all: Arc::new(Semaphore::new(all_units)),
            clients: Arc::new(Semaphore::new(client_units)),
            all_units,
            client_units,
        }
    }

    /// Reserves `bytes`, waiting at most `BUDGET_WAIT`. A body larger than the whole budget
    /// waits for all of it. `peer`: an authenticated node-to-node call, which may also use the
    /// peers' share.
    async fn reserve(&self, bytes: usize, peer: bool) -> Result<Reserved> {
        let units = bytes.div_ceil(UNIT).max(1);
        let take = |sem: &Arc<Semaphore>, most: usize| {
            // `most` fits a u32 (see `new`); the semaphores are never closed.
            sem.clone().acquire_many_owned(units.min(most) as u32)
        };
        let wait = async {
            let client = match peer {
                true => None,
                false => Some(take(&self.clients, self.client_units).await?),
            };
            let all = take(&self.all, self.all_units).await?;
            Ok::<_, AcquireError>(Reserved { _all: all, _client: client })
        };
        match tokio::time::timeout(BUDGET_WAIT, wait).await {
            Ok(Ok(reserved)) => Ok(reserved),
            _ => Err(Error::Overloaded),
        }
    }
}

/// The declared Content-Length, if any.
fn content_length(req: &hyper::Request<Incoming>) -> Result<Option<u64>> {
    match req.headers().get(CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => Ok(Some(v.to_str().ok().and_then(|s| s.parse().ok()).ok_or(BadInput::BadContentLength)?)),
    }
}

/// Reads a body of at most `limit` bytes: refused from Content-Length before reading when it
/// says more (413), cut off while streaming when there is none; then waits for its share of
/// `budget` (503 if it does not come), and reads it within `BODY_TIMEOUT` (408).
pub async fn read_body(
    req: hyper::Request<Incoming>,
    limit: usize,
    budget: &BodyBudget,
    peer: bool,
) -> Result<(Vec<u8>, Reserved)> {
    let declared = content_length(&req)?;
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Error::TooLarge { limit });
    }
    let expected = declared.map_or(limit, |len| len as usize);
    let reserved = budget.reserve(expected, peer).await?;
    match tokio::time::timeout(BODY_TIMEOUT, collect(req.into_body(), limit, expected)).await {
        Err(_) => Err(Error::BodyTimeout),
        Ok(body) => Ok((body?, reserved)),
    }
}

/// Collects a body into one buffer of `expected` bytes' capacity (no copy at the end).
async fn collect(mut body: Incoming, limit: usize, expected: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(expected);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BadInput::TruncatedBody)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(Error::TooLarge { limit });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn clients_leave_the_peers_share_and_wait_then_fail() {
        let budget = BodyBudget::new(8 * UNIT);
        let a = budget.reserve(4 * UNIT, false).await.unwrap();
        let _b = budget.reserve(2 * UNIT, false).await.unwrap();
        // Clients hold 6 of their 6 KiB: the next client waits, then fails...
        assert!(matches!(budget.reserve(1, false).await, Err(Error::Overloaded)));
        // ...while a peer still gets the 2 KiB kept for peers.
        let _p = budget.reserve(2 * UNIT, true).await.unwrap();
        assert!(matches!(budget.reserve(1, true).await, Err(Error::Overloaded)));
        // Room given back is taken by a waiting client.
        let waiting = tokio::spawn(async move { budget.reserve(3 * UNIT, false).await.is_ok() });
        tokio::task::yield_now().await;
        drop(a);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_larger_than_the_budget_takes_all_of_it() {
        let budget = BodyBudget::new(4 * UNIT);
        let all = budget.reserve(100 * UNIT, true).await.unwrap();
        assert!(matches!(budget.reserve(1, true).await, Err(Error::Overloaded)));
        drop(all);
        assert!(budget.reserve(1, true).await.is_ok());
    }
}
