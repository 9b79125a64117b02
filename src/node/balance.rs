//! Balanced ids at the node: the id a node takes when it first joins (asked of a few ring
//! members, then kept in the store's meta table, so a restart keeps its place), and the
//! answer to a joiner's `Offer`. The choice of the point is `ring::balance`'s; this file
//! reads the keys from the store and makes the calls.
//!
//! Must not touch: the choice itself (pure, in `ring::balance`), membership.
//! Left out: a full ring walk (a joiner samples its bootstrap and the bootstrap's successors,
//! a constant number of calls whatever the ring's size).

use std::time::Duration;

use super::config::Config;
use super::storage::Storage;
use super::Node;
use crate::ring::balance::{better, personal, Offer};
use crate::ring::{node_id, Id, Standing};
use crate::wire::{Fault, Response};

/// The meta key the chosen id is kept under (16 hex digits).
pub(super) const ID_META: &str = "id";
/// Most key ids read from the range to find its median: 8 bytes each, so at most 8 MiB; a
/// range holding more is split at the median of its first million keys.
const MAX_IDS: usize = 1 << 20;
/// Wait between two rounds of asking for offers while the bootstrap does not answer yet.
const RETRY: Duration = Duration::from_millis(100);

/// The id this node runs with: the address's hash with `--id-from-address`; else the one kept
/// in the store; else, joining through a bootstrap, the best point offered by the bootstrap and
/// its successors; else (the first node of a ring) the address's hash. A chosen id is saved
/// before the node joins.
pub(super) async fn choose_id(config: &Config, storage: &Storage, peers: &super::peer::Peers) -> Id {
    let hashed = node_id(&config.advertise);
    if config.id_from_address {
        return hashed;
    }
    let kept = storage.meta_get(ID_META).await.ok().flatten();
    if let Some(id) = kept.and_then(|b| Id::from_hex(std::str::from_utf8(&b).ok()?)) {
        return id;
    }
    // A node that ran before ids were chosen (it has saved peers) keeps the hash it had.
    let ran_before = storage.meta_get(super::membership::SUCC_META).await.ok().flatten().is_some();
    let id = match (&config.bootstrap, ran_before) {
        (Some(seed), false) => ask_offers(config, seed, peers).await.map_or(hashed, |p| personal(p, hashed)),
        _ => hashed,
    };
    if let Err(e) = storage.meta_put(ID_META, id.to_string().into_bytes()).await {
        tracing::warn!(error = %e, "could not save the node's id");
    }
    id
}

/// Asks the bootstrap and its successors for offers and keeps the best; retries until the
/// join deadline while the bootstrap does not answer (it may be starting alongside).
async fn ask_offers(config: &Config, seed: &str, peers: &super::peer::Peers) -> Option<Id> {
    let t = config.peer_timeout;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(config.settings().join_deadline);
    loop {
        let asked = peers.neighbors(seed, t).await;
        if let Err(e) = &asked {
            if e.failure() == crate::ring::Failure::Rejected {
                // The seed answered and refused us (say, another cluster key): the join will
                // fail and say why; do not keep it waiting here.
                return None;
            }
        }
        if let Ok((_, succs)) = asked {
            let mut asked: Vec<String> = vec![seed.to_string()];
            asked.extend(succs.into_iter().map(|s| s.addr).filter(|a| *a != config.advertise));
            asked.dedup();
            let mut calls = tokio::task::JoinSet::new();
            for a in asked {
                let peers = peers.clone();
                calls.spawn(async move { (peers.offer(&a, false, t).await, a) });
            }
            let mut best: Option<(Offer, String)> = None;
            while let Some(answer) = calls.join_next().await {
                if let Ok((Ok((id, keys, width)), addr)) = answer {
                    let o = Offer { id: Id(id), keys, width };
                    if best.as_ref().is_none_or(|(b, _)| better(&o, b)) {
                        best = Some((o, addr));
                    }
                }
            }
            // Take a point from the node whose offer was best (it may differ from the one
            // compared if another joiner took that meanwhile).
            let taken = match best {
                Some((_, addr)) => peers.offer(&addr, true, t).await.ok(),
                None => None,
            };
            if let Some((id, keys, width)) = taken {
                let o = Offer { id: Id(id), keys, width };
                tracing::info!(node = %config.advertise, id = %o.id, keys = o.keys, "chose a balanced id");
                return Some(o.id);
            }
        }
        if tokio::time::Instant::now() + RETRY >= deadline {
            return None;
        }
        tokio::time::sleep(RETRY).await;
    }
}

impl Node {
    /// A joiner asks where to sit: a point of this node's own range (see `ring::balance`).
    pub(super) async fn answer_offer(&self, take: bool) -> super::error::Result<Response> {
        let view = self.view();
        let owned = view.owned().filter(|_| view.standing == Standing::Member).ok_or(Fault::NotServing)?;
        let (after, upto) = (owned.after.0, owned.upto.0);
        let ids = self.inner.storage.blocking(move |s| s.live_ids(after, upto, MAX_IDS)).await?;
        let mut ids: Vec<Id> = ids.into_iter().map(Id).collect();
        ids.sort_by_key(|k| owned.after.distance_to(*k));
        let offer =
            super::locked(&self.inner.offers).offer(self.now(), owned, &ids, take).ok_or(Fault::Busy)?;
        Ok(Response::Offer { id: offer.id.0, keys: offer.keys, width: offer.width })
    }
}
