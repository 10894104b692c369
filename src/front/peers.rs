//! The peer identity table: who is really behind each loopback connection the front opens
//! to tiny_http. Only the front writes it; handlers only read it. Never trusts anything a
//! client sent over HTTP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::listener::KnownAddresses;

/// What the front knows about the client behind one backend connection. (The API listener
/// asks for no client certificate; the tunnel, which does, is its own server.)
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The client's address as the API listener saw it.
    pub addr: SocketAddr,
}

/// Maps the front's local address of each backend connection (which is what tiny_http
/// reports as `remote_addr()`) to the real peer.
///
/// Invariant: an entry exists from before the first byte is forwarded on its backend
/// connection until that connection is retired, so every request tiny_http reads finds
/// its entry. A request that bypassed the front finds none.
pub struct PeerTable {
    entries: Mutex<HashMap<SocketAddr, (u64, PeerInfo)>>,
    /// Source of generations, so that removing a finished connection never deletes a
    /// newer entry that reuses the same loopback port.
    next_generation: AtomicU64,
    /// The addresses that authenticated recently, as the API listener counts them for its
    /// reserve of connection slots (`listener`'s "Connection slots").
    known: Arc<KnownAddresses>,
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        PeerTable {
            entries: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            known: KnownAddresses::new(),
        }
    }

    /// Records that a request from `ip` authenticated (a login, or a valid token or
    /// session cookie): the API listener keeps its reserved slots for such addresses.
    pub fn note_authenticated(&self, ip: IpAddr) {
        self.known.note(ip);
    }

    /// The set the API listener reads at each accept.
    pub(super) fn known(&self) -> Arc<KnownAddresses> {
        Arc::clone(&self.known)
    }

    /// The peer behind the backend connection whose front-side address is `backend_peer`
    /// (tiny_http's `request.remote_addr()`), or `None` when the front opened no such
    /// connection.
    pub fn lookup(&self, backend_peer: &SocketAddr) -> Option<PeerInfo> {
        self.lock().get(backend_peer).map(|(_, info)| info.clone())
    }

    /// Number of connections currently registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Registers `info` for the backend connection whose local address is `key`. The
    /// entry lives until the returned guard is dropped.
    pub(super) fn register(&self, key: SocketAddr, info: PeerInfo) -> Registration<'_> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, (generation, info));
        Registration {
            table: self,
            key,
            generation,
        }
    }

    fn remove(&self, key: &SocketAddr, generation: u64) {
        let mut entries = self.lock();
        if entries.get(key).is_some_and(|(g, _)| *g == generation) {
            entries.remove(key);
        }
    }

    /// The map survives a panic in another holder: every critical section is a single
    /// insert, remove or clone, so a poisoned map is still consistent.
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, (u64, PeerInfo)>> {
        crate::sync::lock(&self.entries)
    }
}

impl Default for PeerTable {
    fn default() -> Self {
        PeerTable::new()
    }
}

/// Keeps one table entry alive; dropping it removes the entry unless a newer connection
/// has taken over the same key meanwhile.
pub(super) struct Registration<'a> {
    table: &'a PeerTable,
    key: SocketAddr,
    generation: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.table.remove(&self.key, self.generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(port: u16) -> PeerInfo {
        PeerInfo {
            addr: SocketAddr::from(([192, 0, 2, 1], port)),
        }
    }

    #[test]
    fn entry_lives_exactly_as_long_as_its_registration() {
        let table = PeerTable::new();
        let key = SocketAddr::from(([127, 0, 0, 1], 40_000));
        assert!(table.lookup(&key).is_none());
        {
            let _reg = table.register(key, info(1));
            assert_eq!(table.lookup(&key).map(|i| i.addr), Some(info(1).addr));
            assert_eq!(table.len(), 1);
        }
        assert!(table.lookup(&key).is_none());
        assert!(table.is_empty());
    }

    #[test]
    fn late_removal_of_a_reused_port_keeps_the_newer_entry() {
        let table = PeerTable::new();
        let key = SocketAddr::from(([127, 0, 0, 1], 40_001));
        let old = table.register(key, info(1));
        let new = table.register(key, info(2));
        drop(old);
        assert_eq!(table.lookup(&key).map(|i| i.addr), Some(info(2).addr));
        drop(new);
        assert!(table.lookup(&key).is_none());
    }
}
