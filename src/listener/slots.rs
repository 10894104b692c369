//! The connection slots a listener hands out (see the module doc of `listener`): the
//! addresses that authenticated recently (`KnownAddresses`), the counts per address and
//! per network, and `admit`, which decides at each accept whether a connection gets a
//! slot, and which class of slot, or a quick 503.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::{Inner, Warnings, KNOWN_FOR, MAX_KNOWN, NETWORK_PREFIX_V4, NETWORK_PREFIX_V6};
use crate::model::Network;

/// Addresses (as [`AddressKey`]s) that authenticated on a listener within [`KNOWN_FOR`],
/// with when they last did; at most [`MAX_KNOWN`]. Kept in memory only: after a restart
/// every address is a stranger until it authenticates again.
#[derive(Default)]
pub struct KnownAddresses {
    pub(super) seen: Mutex<HashMap<AddressKey, Instant>>,
}

impl KnownAddresses {
    pub fn new() -> Arc<KnownAddresses> {
        Arc::new(KnownAddresses::default())
    }

    /// Records that `ip` authenticated just now.
    pub fn note(&self, ip: IpAddr) {
        self.note_at(AddressKey::of(ip), Instant::now());
    }

    /// Whether `ip` authenticated within [`KNOWN_FOR`].
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.knows_at(AddressKey::of(ip), Instant::now())
    }

    /// How many addresses are remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub(super) fn note_at(&self, key: AddressKey, now: Instant) {
        let mut seen = self.lock();
        if seen.len() >= MAX_KNOWN && !seen.contains_key(&key) {
            seen.retain(|_, at| now.saturating_duration_since(*at) < KNOWN_FOR);
            if seen.len() >= MAX_KNOWN {
                let oldest = seen.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    seen.remove(&oldest);
                }
            }
        }
        seen.insert(key, now);
    }

    pub(super) fn knows_at(&self, key: AddressKey, now: Instant) -> bool {
        self.lock()
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_FOR)
    }

    /// Each critical section is one lookup or one update, so a map poisoned by a panic
    /// elsewhere is still consistent.
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<AddressKey, Instant>> {
        crate::sync::lock(&self.seen)
    }
}

/// The unit one client is counted in: an IPv4 address (also when it arrives IPv4-mapped
/// on a dual-stack socket), or the /64 prefix of an IPv6 address, since one site is
/// usually handed a whole /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AddressKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl AddressKey {
    pub(crate) fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    AddressKey::V6Prefix(prefix)
                }
            },
        }
    }
}

/// Open connections per key (an [`AddressKey`], a [`Network`]); a key's entry goes when
/// its last connection does, so the map holds at most `max_connections` entries.
pub(super) struct Counts<K> {
    pub(super) counts: Mutex<HashMap<K, usize>>,
}

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts {
            counts: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash> Counts<K> {
    /// Counts one more connection for `key` if that stays within `cap`.
    pub(super) fn take(&self, key: K, cap: usize) -> bool {
        let mut counts = self.lock();
        let count = counts.entry(key).or_insert(0);
        if *count >= cap {
            return false;
        }
        *count += 1;
        true
    }

    pub(super) fn release(&self, key: K) {
        let mut counts = self.lock();
        if let Some(count) = counts.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }

    /// Each critical section is one lookup and one update, so a map poisoned by a panic
    /// elsewhere is still consistent.
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<K, usize>> {
        crate::sync::lock(&self.counts)
    }
}

/// How the caps count a connection, decided at its accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    /// Its address authenticated within [`KNOWN_FOR`]: it may use the reserve, and no
    /// network cap applies.
    Known,
    /// Any other: counted in the unauthenticated share and in its network's cap.
    Stranger(Network),
}

/// The slots one connection holds: global, its address's, and for a stranger the
/// unauthenticated share's and its network's.
#[derive(Clone, Copy)]
pub(super) struct Taken {
    pub(super) key: AddressKey,
    pub(super) class: Class,
}

impl Taken {
    pub(super) fn release(self, inner: &Inner) {
        if let Class::Stranger(network) = self.class {
            inner.per_network.release(network);
            inner.unauthenticated.fetch_sub(1, Ordering::Relaxed);
        }
        inner.per_address.release(self.key);
        inner.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Gives back a connection's slots when its thread ends, however it ends.
pub(super) struct Slot<'a> {
    pub(super) inner: &'a Inner,
    pub(super) taken: Taken,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.taken.release(self.inner);
    }
}

/// Every cap a connection can meet, as [`Refusal::cap`] names it (the metric's labels).
pub(super) const CAPS: [&str; 4] = [
    "max_connections",
    "unauthenticated",
    "max_connections_per_address",
    "per_network",
];

/// A cap a new connection met: its metric label, and the message of its 503.
pub(super) struct Refusal {
    /// One of [`CAPS`].
    pub(super) cap: &'static str,
    pub(super) message: &'static str,
}

/// Takes the slots a connection from `addr` needs, or none and the cap it met.
pub(super) fn admit(
    inner: &Inner,
    addr: SocketAddr,
    warnings: &mut Warnings,
) -> Result<Taken, Refusal> {
    let name = &inner.control.name;
    let limits = &inner.limits;
    let key = AddressKey::of(addr.ip());
    let class = if inner.control.known.contains(addr.ip()) {
        Class::Known
    } else {
        Class::Stranger(Network::of(addr.ip(), NETWORK_PREFIX_V4, NETWORK_PREFIX_V6))
    };
    let busy = "too many connections, retry shortly";
    if !take_slot(&inner.active, limits.max_connections) {
        warnings.overload.warn(format_args!(
            "{name}: connection cap of {} reached; refusing new connections",
            limits.max_connections
        ));
        return Err(Refusal {
            cap: CAPS[0],
            message: busy,
        });
    }
    let give_back_global = || inner.active.fetch_sub(1, Ordering::Relaxed);
    if let Class::Stranger(_) = class {
        if !take_slot(&inner.unauthenticated, limits.unauthenticated_share()) {
            give_back_global();
            warnings.unauthenticated.warn(format_args!(
                "{name}: addresses that have not authenticated recently hold {} connections, \
                 their share; the other {} are kept for those that have; refusing {}",
                limits.unauthenticated_share(),
                limits.reserve(),
                addr.ip()
            ));
            return Err(Refusal {
                cap: CAPS[1],
                message: busy,
            });
        }
    }
    let give_back_share = || {
        if let Class::Stranger(_) = class {
            inner.unauthenticated.fetch_sub(1, Ordering::Relaxed);
        }
        give_back_global();
    };
    if !inner
        .per_address
        .take(key, limits.max_connections_per_address)
    {
        give_back_share();
        warnings.per_address.warn(format_args!(
            "{name}: {} has {} connections open (max_connections_per_address); refusing more",
            addr.ip(),
            limits.max_connections_per_address
        ));
        return Err(Refusal {
            cap: CAPS[2],
            message: "too many connections from your address, retry shortly",
        });
    }
    if let Class::Stranger(network) = class {
        if !inner.per_network.take(network, limits.per_network()) {
            inner.per_address.release(key);
            give_back_share();
            warnings.per_network.warn(format_args!(
                "{name}: network {network} has {} connections open from addresses that have \
                 not authenticated recently; refusing {}",
                limits.per_network(),
                addr.ip()
            ));
            return Err(Refusal {
                cap: CAPS[3],
                message: "too many connections from your network, retry shortly",
            });
        }
    }
    Ok(Taken { key, class })
}

/// Decrements the overflow counter when an overflow thread ends.
pub(super) struct OverflowSlot<'a>(pub(super) &'a AtomicUsize);

impl Drop for OverflowSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one more connection on `counter` if that stays within `cap`.
pub(super) fn take_slot(counter: &AtomicUsize, cap: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < cap).then_some(n + 1)
        })
        .is_ok()
}
