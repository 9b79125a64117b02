//! Typed answers of the JSON endpoints a client reads: `/ring` and `/status`.
//!
//! Owns: their shapes as a client sees them, and the ring's table form. Must not touch: the
//! network (the client fetches, this parses). Left out: fields a client has no use for stay in
//! the JSON (see the README's API table).

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::ring::Id;

/// A ring id written as 16 hex digits, as the nodes write it.
fn hex_id<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Id, D::Error> {
    let s = String::deserialize(d)?;
    Id::from_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a 16-hex-digit id")))
}

/// The ring walked clockwise along successor pointers from one node (`GET /ring`).
#[derive(Debug, Clone, Deserialize)]
pub struct Ring {
    /// The nodes met, clockwise from the node asked.
    pub nodes: Vec<RingNode>,
    /// False if the walk stopped at a node that did not answer.
    pub complete: bool,
}

/// One node of a [`Ring`].
#[derive(Debug, Clone, Deserialize)]
pub struct RingNode {
    /// Its advertised address.
    pub addr: String,
    /// Its ring id: it owns the ids after its predecessor's, up to and including this one.
    #[serde(deserialize_with = "hex_id")]
    pub id: Id,
    /// Keys it stores, replicas included.
    pub keys: u64,
    /// Its successor's address.
    pub successor: String,
    /// Its predecessor's address, if it knows one.
    pub predecessor: Option<String>,
}

/// One node's state (`GET /status`).
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    /// Its advertised address.
    pub addr: String,
    /// Its ring id.
    #[serde(deserialize_with = "hex_id")]
    pub id: Id,
    /// Its successor's address.
    pub successor: String,
    /// Its predecessor's address, if it knows one.
    pub predecessor: Option<String>,
    /// Its successor list, nearest first.
    pub successors: Vec<String>,
    /// Keys it stores, replicas included.
    pub keys: u64,
    /// The handoff it is running, if any.
    pub handoff: Option<Handoff>,
}

/// A handoff in progress: keys on their way to another node.
#[derive(Debug, Clone, Deserialize)]
pub struct Handoff {
    /// The receiving node.
    pub to: String,
    /// True if the node is leaving the ring (handing over everything).
    pub leaving: bool,
    /// Records sent so far.
    pub keys: u64,
    /// Bytes sent so far.
    pub bytes: u64,
    /// Share of the range scanned, 0 to 100.
    pub percent: f64,
}

/// The ring as a table: one node a line, clockwise.
impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, a: &str, id: &str, keys: &str, pred: &str, succ: &str| {
            writeln!(f, "{a:<22} {id:<16} {keys:>8}  {pred:<22} {succ}")
        };
        row(f, "ADDRESS", "ID", "KEYS", "PREDECESSOR", "SUCCESSOR")?;
        for n in &self.nodes {
            let pred = n.predecessor.as_deref().unwrap_or("-");
            row(f, &n.addr, &n.id.to_string(), &n.keys.to_string(), pred, &n.successor)?;
        }
        if !self.complete {
            writeln!(f, "(walk incomplete: a node did not answer)")?;
        }
        Ok(())
    }
}
