//! What this node answers to other nodes' calls (`POST /internal/rpc`, already authenticated
//! and decoded by the HTTP layer). Questions about the ring are answered from the published
//! view; news (notify, handoff done, leaving) goes to the membership task as events.
//!
//! Must not touch: HTTP (failures travel as `Response::Fault`), membership decisions.

use std::time::Duration;

use super::error::{Error, Result};
use super::keys::check_key;
use super::membership::FORWARD_TIMEOUT;
use super::Node;
use crate::ring::{Event, FindStep, Id, Standing};
use crate::wire::{self, Fault, KvOp, MergeKind, NodeInfo, Request, Response, Status};

/// How long a `Leaving` call waits for the membership task's verdict.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(2);

impl Node {
    /// Answers one node-to-node call.
    pub async fn rpc(&self, req: Request) -> Response {
        self.rpc_inner(req).await.unwrap_or_else(|e| Response::Fault(e.into()))
    }

    async fn rpc_inner(&self, req: Request) -> Result<Response> {
        match req {
            Request::Kv(k) => {
                check_key(k.key.as_bytes())?;
                let limit = self.inner.config.max_value_bytes;
                if matches!(&k.op, KvOp::Put(v) if v.len() > limit) {
                    return Err(Error::TooLarge { limit });
                }
                Ok(Response::Kv(self.serve_kv(k).await))
            }
            Request::FindSuccessor { id, hops } => self.find_successor(id, hops).await,
            Request::Neighbors => {
                let view = self.view();
                let succs = view.succs.iter().map(Node::info).collect();
                Ok(Response::Neighbors { pred: view.pred.as_ref().map(Node::info), succs })
            }
            Request::Notify { from } => {
                self.membership_hint(Event::Notified { from: self.peer_from(&from)? });
                Ok(Response::Ack)
            }
            Request::Merge { from, records, kind } => {
                self.peer_from(&from)?;
                self.refuse_if_departed()?;
                // Only a handoff's records are looked at again after they are stored: a replica's
                // copy of a write (the hot path) is not copied for nothing.
                let handoff = (kind != MergeKind::Replica).then(|| records.clone());
                let applied = self.apply_records(records).await?;
                if let Some(records) = handoff {
                    self.settle_handoff(records, applied, kind == MergeKind::WriteThrough);
                }
                Ok(Response::Ack)
            }
            Request::Sync { from, after, upto, records } => {
                self.peer_from(&from)?;
                self.refuse_if_departed()?;
                let (records, complete) = self.sync_range(after, upto, records).await?;
                Ok(Response::Records { records, complete })
            }
            Request::HandoffDone { from, pred } => {
                let from = self.peer_from(&from)?;
                let pred = pred.as_ref().map(|p| self.peer_from(p)).transpose()?;
                self.membership_hint(Event::HandoffDone { from, pred });
                Ok(Response::Ack)
            }
            Request::Leaving { node, pred, succ } => self.on_leaving(node, pred, succ).await,
            Request::Status => Ok(Response::Status(self.status())),
            Request::Offer { take } => self.answer_offer(take).await,
        }
    }

    /// A departed node is about to exit: what it stored now would be lost with it.
    fn refuse_if_departed(&self) -> Result<()> {
        if self.view().standing == Standing::Departed {
            return Err(Fault::Busy.into());
        }
        Ok(())
    }

    async fn on_leaving(&self, node: NodeInfo, pred: Option<NodeInfo>, succ: NodeInfo) -> Result<Response> {
        let node = self.peer_from(&node)?;
        let pred = pred.as_ref().map(|p| self.peer_from(p)).transpose()?;
        let succ = self.peer_from(&succ)?;
        let event = Event::NeighborLeaving { ticket: 0, node, pred, succ };
        match tokio::time::timeout(VERDICT_TIMEOUT, self.membership_verdict(event)).await {
            Ok(true) => Ok(Response::Ack),
            _ => Err(Fault::Busy.into()),
        }
    }

    async fn find_successor(&self, id: u64, hops: u32) -> Result<Response> {
        let view = self.view();
        if view.standing == Standing::Joining {
            return Err(Fault::NotServing.into());
        }
        match view.find_successor(Id(id)) {
            FindStep::Found(p) => Ok(Response::Successor { node: Node::info(&p), hops }),
            FindStep::Forward(_) if hops >= self.inner.config.hop_limit => {
                Err(Fault::HopLimit(self.inner.config.hop_limit).into())
            }
            FindStep::Forward(p) => {
                let node = self
                    .inner
                    .peers
                    .find_successor(&p.addr, id, hops + 1, FORWARD_TIMEOUT)
                    .await
                    .map_err(|e| Fault::Unavailable { addr: p.addr.clone(), reason: e.to_string() })?;
                Ok(Response::Successor { node, hops: hops + 1 })
            }
        }
    }

    /// This node as `/status` and ring walks show it.
    pub(super) fn status(&self) -> Status {
        let view = self.view();
        wire::Status {
            me: Node::info(&view.me),
            pred: view.pred.as_ref().map(Node::info),
            succ: Node::info(view.succ()),
            keys: self.inner.storage.live_keys(),
        }
    }
}
