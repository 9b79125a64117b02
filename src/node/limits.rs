//! The connection budget of the HTTP server: how many connections it keeps, from whom, and
//! which it closes first when the budget runs out.
//!
//! Owns: admission of accepted sockets, the per-address cap, the reserve kept for
//! node-to-node calls, shedding, and each connection's class, settled by its first request.
//!
//! Must not touch: HTTP parsing and authentication (the caller says whether a first request
//! was an authenticated node-to-node call), request bodies (`body.rs`).
//!
//! Left out on purpose: request rates (a client within its connections may send as fast as
//! the node answers), limits across nodes, and telling apart clients behind one address (a
//! NAT shares its cap).
//!
//! The rules:
//! - At most `MAX_CONNECTIONS` sockets. Clients (every connection before its first request,
//!   and those whose first request was not a node-to-node call) get at most
//!   `MAX_CONNECTIONS - PEER_RESERVE` of them, and at most `per_client` from one IP address.
//! - When a budget is full, an idle connection is shed (closed) to make room: for an address
//!   at its cap, its own keep-alive connection idle longest (one that has served a request:
//!   a pooled client opening a new connection no longer needs it; one still silent may be
//!   about to send its first request, and has `FIRST_REQUEST_TIMEOUT`); for a full client
//!   budget, the connection idle longest of the address holding the most; for a full node,
//!   first the oldest silent connection on the reserve (below). "Idle" is before the first
//!   request or between two; connections in the middle of a request, and those whose first
//!   request was a node-to-node call, are never shed.
//! - A connection that finds a budget spent with nothing to shed is still accepted, "on the
//!   reserve": it keeps its slot only if its first request is an authenticated node-to-node
//!   call; a client request there gets 503 and the connection closes. Peers of the ring thus
//!   always get in, even when they share an address with a flooding client (a ring on
//!   loopback).
//! - A connection must send its first request's headers within `FIRST_REQUEST_TIMEOUT`.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::error::Crowded;

/// Sockets served at once. Each costs a task, buffers and a file descriptor; past this a new
/// connection is accepted only by shedding an idle one, so a flood of clients cannot exhaust
/// memory or descriptors.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections clients can never take: left for node-to-node calls. A node keeps a few
/// pooled connections to each neighbour, and a ring walk or a join adds one per node, so 128
/// is ample for rings of dozens of nodes.
pub const PEER_RESERVE: usize = 128;
/// Default `--max-conns-per-client`: well below the client budget (896), so at least 14
/// busy addresses are needed to fill it; a browser opens 6, a pooled client a few dozen.
pub const DEFAULT_MAX_CONNS_PER_CLIENT: usize = 64;
/// A new connection must send its first request's headers within this time (slowloris): a
/// client that connects and then stalls holds its slot at most this long.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections clients may hold in all; the rest is the peers' reserve.
const CLIENT_BUDGET: usize = MAX_CONNECTIONS - PEER_RESERVE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Accepted; its first request has not arrived yet.
    Pending,
    /// Its first request was a client request.
    Client,
    /// Its first request was an authenticated node-to-node call.
    Peer,
}

struct Conn {
    ip: IpAddr,
    class: Class,
    /// Admitted beyond the client budgets (see the module doc); never counted in them.
    reserve: Option<Crowded>,
    /// A request is being served on it.
    busy: bool,
    /// When it was accepted or last finished a request.
    idle_since: Instant,
    kill: CancellationToken,
}

/// Where a victim to shed is looked for.
#[derive(Clone, Copy)]
enum Scope {
    /// Every client connection, those on the reserve first.
    Any,
    /// Connections counted in the client budget.
    Clients,
    /// Keep-alive connections of one address (they have served a request).
    Address(IpAddr),
}

#[derive(Default)]
struct State {
    conns: HashMap<u64, Conn>,
    /// Connections counted in the client budget (not on the reserve, not peers), per address.
    per_ip: HashMap<IpAddr, usize>,
    /// Sum of `per_ip`.
    clients: usize,
    next_id: u64,
}

/// The connection budget of one server.
pub struct ConnLimits {
    per_client: usize,
    state: Mutex<State>,
}

/// One admitted connection. Dropping it gives its slot back.
pub struct Slot {
    id: u64,
    limits: Arc<ConnLimits>,
    kill: CancellationToken,
}

/// Held while a request is served on a connection, which cannot be shed meanwhile.
pub struct Busy<'a> {
    slot: &'a Slot,
}

impl ConnLimits {
    /// `per_client`: most client connections from one IP address (at least 1).
    pub fn new(per_client: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits { per_client: per_client.max(1), state: Mutex::new(State::default()) })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `ip`, shedding an idle one if a budget is full; None when
    /// every slot is busy (the caller closes the socket).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut st = self.state();
        if st.conns.len() >= MAX_CONNECTIONS {
            let victim = st.victim(Scope::Any)?;
            st.shed(victim);
        }
        let (scope, crowded) = if st.per_ip.get(&ip).copied().unwrap_or(0) >= self.per_client {
            (Some(Scope::Address(ip)), Crowded::Address(self.per_client))
        } else if st.clients >= CLIENT_BUDGET {
            (Some(Scope::Clients), Crowded::Node)
        } else {
            (None, Crowded::Node)
        };
        let mut reserve = None;
        if let Some(scope) = scope {
            match st.victim(scope) {
                Some(victim) => st.shed(victim),
                None => reserve = Some(crowded),
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        if reserve.is_none() {
            st.count(ip, 1);
        }
        let kill = CancellationToken::new();
        let conn = Conn {
            ip,
            class: Class::Pending,
            reserve,
            busy: false,
            idle_since: Instant::now(),
            kill: kill.clone(),
        };
        st.conns.insert(id, conn);
        Some(Slot { id, limits: self.clone(), kill })
    }

    /// Connections open now: (all, counted in the client budget).
    #[cfg(test)]
    fn open(&self) -> (usize, usize) {
        let st = self.state();
        (st.conns.len(), st.clients)
    }
}

impl State {
    fn count(&mut self, ip: IpAddr, up: isize) {
        let n = self.per_ip.entry(ip).or_insert(0);
        *n = n.saturating_add_signed(up);
        if *n == 0 {
            self.per_ip.remove(&ip);
        }
        self.clients = self.clients.saturating_add_signed(up);
    }

    /// Forgets a connection and gives back what it counted in.
    fn remove(&mut self, id: u64) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        if conn.reserve.is_none() && conn.class != Class::Peer {
            self.count(conn.ip, -1);
        }
        Some(conn)
    }

    fn shed(&mut self, id: u64) {
        if let Some(conn) = self.remove(id) {
            tracing::debug!(client = %conn.ip, "shedding an idle connection");
            conn.kill.cancel();
        }
    }

    /// The idle client connection in `scope` to close first: a silent one on the reserve,
    /// else the one idle longest of the address holding the most.
    fn victim(&self, scope: Scope) -> Option<u64> {
        let in_scope = |c: &Conn| match scope {
            Scope::Any => true,
            Scope::Clients => c.reserve.is_none(),
            Scope::Address(ip) => c.class == Class::Client && c.ip == ip,
        };
        self.conns
            .iter()
            .filter(|(_, c)| c.class != Class::Peer && !c.busy && in_scope(c))
            .max_by_key(|(id, c)| {
                let held = self.per_ip.get(&c.ip).copied().unwrap_or(0);
                (c.reserve.is_some(), held, Reverse(c.idle_since), Reverse(**id))
            })
            .map(|(id, _)| *id)
    }
}

impl Slot {
    /// A request starts on this connection; `peer_call`: it is an authenticated node-to-node
    /// call. The first request settles the connection's class; a client request on a reserve
    /// slot is refused (answer 503 and close).
    pub fn begin(&self, peer_call: bool) -> Result<Busy<'_>, Crowded> {
        let mut st = self.limits.state();
        let Some(conn) = st.conns.get_mut(&self.id) else {
            // Shed a moment ago; the connection is closing and this request goes with it.
            return Ok(Busy { slot: self });
        };
        if conn.class == Class::Pending {
            let (ip, counted) = (conn.ip, conn.reserve.is_none());
            if peer_call {
                conn.class = Class::Peer;
                conn.reserve = None;
                if counted {
                    st.count(ip, -1);
                }
            } else if let Some(crowded) = conn.reserve {
                return Err(crowded);
            } else {
                conn.class = Class::Client;
            }
        }
        if let Some(conn) = st.conns.get_mut(&self.id) {
            conn.busy = true;
        }
        Ok(Busy { slot: self })
    }

    /// Resolves when the budget sheds this connection: the caller drops it.
    pub async fn shed(&self) {
        self.kill.cancelled().await
    }

    /// Resolves if no request has started `FIRST_REQUEST_TIMEOUT` after the connection was
    /// accepted; never otherwise.
    pub async fn first_request_late(&self) {
        tokio::time::sleep(FIRST_REQUEST_TIMEOUT).await;
        let pending = self.limits.state().conns.get(&self.id).is_some_and(|c| c.class == Class::Pending);
        if !pending {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.slot.limits.state().conns.get_mut(&self.slot.id) {
            conn.busy = false;
            conn.idle_since = Instant::now();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.state().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn an_address_at_its_cap_sheds_its_own_idle_connection() {
        let limits = ConnLimits::new(3);
        let slots: Vec<Slot> = (0..3).map(|_| limits.admit(ip(1)).unwrap()).collect();
        let _busy = slots[0].begin(false).unwrap();
        drop(slots[1].begin(false).unwrap());
        let other = limits.admit(ip(2)).unwrap();
        let fourth = limits.admit(ip(1)).unwrap();
        // Its keep-alive connection goes; the busy one, the silent one (it may be about to
        // send its first request) and other addresses stay.
        assert!(slots[1].kill.is_cancelled());
        assert!(!slots[0].kill.is_cancelled() && !slots[2].kill.is_cancelled() && !other.kill.is_cancelled());
        let _fourth_busy = fourth.begin(false).unwrap();
        assert_eq!(limits.open(), (4, 4));
        // With only busy and silent ones left, a newcomer goes on the reserve.
        let fifth = limits.admit(ip(1)).unwrap();
        assert_eq!(fifth.begin(false).err(), Some(Crowded::Address(3)));
    }

    #[test]
    fn an_address_with_its_cap_busy_gets_only_the_reserve() {
        let limits = ConnLimits::new(3);
        let slots: Vec<Slot> = (0..3).map(|_| limits.admit(ip(1)).unwrap()).collect();
        let busy: Vec<Busy> = slots.iter().map(|s| s.begin(false).unwrap()).collect();
        assert_eq!(limits.open(), (3, 3));
        // The fourth is accepted on the reserve: a client request there is refused...
        let fourth = limits.admit(ip(1)).unwrap();
        assert_eq!(limits.open(), (4, 3));
        assert_eq!(fourth.begin(false).err(), Some(Crowded::Address(3)));
        // ...a node-to-node call keeps it, and it no longer counts as a client.
        let peer = limits.admit(ip(1)).unwrap();
        drop(peer.begin(true).unwrap());
        assert_eq!(limits.open(), (5, 3));
        // Other addresses are not affected.
        drop(limits.admit(ip(2)).unwrap().begin(false).unwrap());
        drop(busy);
        drop(slots);
        drop(fourth);
        assert_eq!(limits.open(), (1, 0));
    }

    #[test]
    fn a_peer_call_gives_back_its_client_slot() {
        let limits = ConnLimits::new(1);
        let first = limits.admit(ip(1)).unwrap();
        drop(first.begin(true).unwrap());
        let second = limits.admit(ip(1)).unwrap();
        assert!(second.begin(false).is_ok());
        assert!(!first.kill.is_cancelled());
        assert_eq!(limits.open(), (2, 1));
    }

    #[test]
    fn a_full_node_sheds_the_greediest_address_and_never_peers_or_busy_ones() {
        let limits = ConnLimits::new(MAX_CONNECTIONS);
        let peer = limits.admit(ip(9)).unwrap();
        let _peer_busy = peer.begin(true).unwrap();
        let small = limits.admit(ip(2)).unwrap();
        let busy = limits.admit(ip(1)).unwrap();
        let _busy = busy.begin(false).unwrap();
        let mut greedy: Vec<Slot> = (0..CLIENT_BUDGET - 2).map(|_| limits.admit(ip(1)).unwrap()).collect();
        assert_eq!(limits.open(), (CLIENT_BUDGET + 1, CLIENT_BUDGET));
        // The client budget is full: a newcomer from another address sheds the greedy
        // address's oldest idle connection.
        let newcomer = limits.admit(ip(3)).unwrap();
        assert!(greedy[0].kill.is_cancelled());
        assert!(!small.kill.is_cancelled() && !busy.kill.is_cancelled() && !peer.kill.is_cancelled());
        assert!(newcomer.begin(false).is_ok());
        // When nothing idle is left in the client budget, a newcomer goes on the reserve.
        let mut busy_guards = Vec::new();
        for s in greedy.iter().skip(1).chain([&small, &newcomer]) {
            busy_guards.push(s.begin(false).unwrap());
        }
        let on_reserve = limits.admit(ip(4)).unwrap();
        assert_eq!(on_reserve.begin(false).err(), Some(Crowded::Node));
        drop(busy_guards);
        greedy.clear();
    }

    #[test]
    fn the_reserve_sheds_its_oldest_silent_connection_when_every_slot_is_taken() {
        let limits = ConnLimits::new(1);
        let mut slots = Vec::new();
        for i in 0..MAX_CONNECTIONS {
            let s = limits.admit(ip(1)).unwrap();
            if i == 0 {
                // Busy for the rest of the test: the others go on the reserve.
                std::mem::forget(s.begin(false).unwrap());
            }
            slots.push(s);
        }
        assert_eq!(limits.open(), (MAX_CONNECTIONS, 1));
        // A peer's connection still gets in, displacing the oldest silent reserve one.
        let peer = limits.admit(ip(1)).unwrap();
        assert!(slots[1].kill.is_cancelled());
        assert!(!slots[0].kill.is_cancelled() && !slots[2].kill.is_cancelled());
        assert!(peer.begin(true).is_ok());
    }
}
