//! sdht: a peer-to-peer distributed hash table. Every node stores keys in LMDB and routes
//! requests clockwise along successor pointers to the key's owner; keys move Chord-style when
//! nodes join and leave.
//!
//! Layers, with dependencies flowing one way (`node` -> `ring`, `lmdb`, `wire`):
//! - [`ring`]: ids, intervals, the routing view and the membership state machine; pure.
//! - [`lmdb`]: the on-disk store; blocking, knows nothing of the network.
//! - [`wire`]: node-to-node messages and their byte format.
//! - [`node`]: the running node: HTTP server and client, the membership executor, shutdown.
//!
//! Outside the node: [`client`] (the client library: [`Client`] sends each request straight
//! to the key's owner) and [`demo`].

pub mod client;
pub mod demo;
pub mod lmdb;
pub mod node;
pub mod ring;
pub mod wire;

pub use client::Client;
