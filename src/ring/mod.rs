//! The identifier space and the membership protocol, as plain data and a deterministic state
//! machine.
//!
//! Owns: 64-bit ids (xxh3 of a key or of an advertised address), clockwise interval arithmetic
//! with wrap-around, the [`View`] a request routes by, and [`Membership`]: every decision about
//! who is in the ring, who owns what, when ranges move and when peers are dead, as
//! `step(now, Event) -> Vec<Action>`. The node (`src/node`) and the simulator (`sim.rs`) drive
//! the same code.
//!
//! Must not touch: sockets, tasks, clocks, randomness, storage. Time and saved state are
//! arguments; `src/node` performs the `Action`s and reports what happened as `Event`s.
//!
//! Left out on purpose: finger tables and any cache of other owners (routing only ever uses the
//! head of the successor list, plus one step back to the predecessor while a handoff is
//! settling, see [`View::route`]).

pub mod balance;
mod id;
mod membership;
mod view;

pub use id::{key_id, node_id, owner_of, Id, Interval};
pub use membership::{
    Action, CallId, Change, CopyKind, Event, Failure, JobId, Membership, Millis, Msg, Reply, Saved, Settings,
    Ticket, FORGET_AFTER, HURRY, MAX_LOST, PROBE_FIRST, PROBE_MAX,
};
pub use view::{FindStep, Peer, Route, Standing, View, WriteThrough};

#[cfg(test)]
mod sim;
