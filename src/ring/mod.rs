//! The identifier space and one node's view of the ring, as plain data and pure functions.
//!
//! Owns: 64-bit ids (xxh3 of a key or of an advertised address), clockwise interval arithmetic
//! with wrap-around, the routing decision for a key, and the membership steps of Chord's join,
//! stabilize/notify and leave. Each step takes what a peer answered and returns what the node
//! must do next (`Action`s), so the whole protocol runs here without a network or a clock; the
//! tests drive many `RingState`s through an in-memory message queue.
//!
//! Must not touch: sockets, tasks, time, storage. `src/node` performs the `Action`s.
//!
//! Left out on purpose: finger tables and any cache of other owners (routing only ever uses the
//! head of the successor list, plus one step back to the predecessor while a handoff is
//! settling, see [`RingState::route`]); deciding that a peer is dead (the node reports it,
//! after its timeouts, through [`RingState::on_peer_dead`]).

mod id;
mod state;

pub use id::{key_id, node_id, owner_of, Id, Interval};
pub use state::{Action, FindStep, Handoff, HandoffKind, Peer, RingState, Route};

#[cfg(test)]
mod sim;
