//! What every receiving session shares ([`Ledger`]): each source's stored bytes for its quota, what accepted offers will add to them, the
//! space that files in transfer hold on each storage, and the names being received now.
//! One tenant cannot take another's quota or disk (nor its sessions:
//! `replication::slots`).
//!
//! A source's sizes are hostile input: every sum here saturates, and a file larger than
//! its storage could ever hold is refused outright. The rules (docs/decisions.md,
//! "Quota and free space on the target"):
//! - **Quota**: a source holds its received copies, its partial copies at rest (their
//!   durable bytes) and, for each file offered or in transfer, what the file adds once
//!   committed. An offer that would pass the quota is refused before any byte moves;
//!   an accepted one reserves its growth against the source's own quota, which no other
//!   source shares.
//! - **Space**: an offer whose bytes, with the [`SPACE_MARGIN`] and what files in transfer
//!   hold now, do not fit the free space is refused before any byte moves; an offer
//!   reserves no space. Space is taken as the bytes arrive, a window ahead of them
//!   ([`Reservation::cover`]: two chunks), and never more than the source's fair share:
//!   the free space less the margin, divided by the sources sending to that storage. A
//!   window that saw no byte for [`STALL`] counts for nobody, and is taken again (and
//!   checked again) when bytes come. So an offer never sent holds no space, a stalled
//!   file holds none for long, and no source holds more than its share.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Refusal, Source};
use crate::replication::names::BackupName;
use crate::store::{Store, StoreError};
use crate::sync::lock;
use crate::wire::transfer::Code;

/// Free space left untouched on a storage, beyond what accepted files will use.
pub const SPACE_MARGIN: u64 = 16 * 1024 * 1024;
/// A file's space window that saw no byte for this long counts for nobody.
pub const STALL: Duration = Duration::from_secs(30);
/// A window's last progress is noted at most this often (one lock per second per file).
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// What every receiving session shares: each source's stored bytes (for quotas), what
/// accepted offers will add per source, the space windows of files in transfer, and the
/// names being received now (one session per file at a time).
#[derive(Debug)]
pub struct Ledger {
    inner: Mutex<LedgerState>,
    /// How long a window may see no byte before it counts for nobody ([`STALL`]).
    stall: Duration,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::with_stall(STALL)
    }
}

#[derive(Debug, Default)]
struct LedgerState {
    /// Committed bytes per source uuid, loaded from the database on first use.
    stored: HashMap<String, u64>,
    /// What accepted offers will add once committed, per source uuid.
    promised: HashMap<String, u64>,
    /// The space windows of files in transfer, by id.
    windows: HashMap<u64, Window>,
    next_window: u64,
    busy: HashSet<(String, String)>,
}

/// Space one file in transfer holds ahead of the bytes it wrote.
#[derive(Debug)]
struct Window {
    uuid: String,
    storage_id: u64,
    /// Bytes reserved beyond what the file held when the window was taken.
    ahead: u64,
    /// When bytes last arrived for it.
    touched: Instant,
}

/// A storage's size and free bytes, as the filesystem reports them now.
#[derive(Clone, Copy, Debug)]
pub struct Space {
    pub total: u64,
    pub free: u64,
}

/// What an offer asks of the ledger.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ask<'n> {
    pub name: &'n BackupName,
    /// The offered size.
    pub size: u64,
    /// What the file adds to the source's stored bytes once committed (its size minus
    /// the copy it replaces).
    pub grows: u64,
    /// What it still has to write to the storage.
    pub writes: u64,
}

/// An accepted offer's share of the quota, its file's space window once bytes arrive,
/// and its name; all released when dropped (the offer, file or session ended).
pub struct Reservation<'a> {
    ledger: &'a Ledger,
    uuid: String,
    storage_id: u64,
    quota_bytes: u64,
    name: String,
    /// The file's space window: its id, and the offset up to which space is reserved.
    window: Option<(u64, u64)>,
    /// When this side last noted progress on the window.
    touched: Option<Instant>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.ledger.inner);
        if let Some(r) = s.promised.get_mut(&self.uuid) {
            *r = r.saturating_sub(self.quota_bytes);
        }
        if let Some((id, _)) = self.window {
            s.windows.remove(&id);
        }
        s.busy.remove(&(self.uuid.clone(), self.name.clone()));
    }
}

/// A name held out of every receiving session while the recycle bin moves its copy
/// ([`Ledger::hold`]); released when dropped.
pub struct Hold<'a> {
    ledger: &'a Ledger,
    key: (String, String),
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        lock(&self.ledger.inner).busy.remove(&self.key);
    }
}

const MIB: u64 = 1024 * 1024;

/// The bytes that count against a source's quota: the received copies it stores on
/// `storage_id`. The one place the quota's usage is computed (the ledger loads it
/// through this on first use and after [`Ledger::forget`]). The recycle bin is outside
/// the quota (SPEC 20): its rows are another table, so nothing here counts them.
pub fn quota_usage(store: &Store, uuid: &str, storage_id: u64) -> Result<u64, StoreError> {
    Ok(store
        .received(uuid)?
        .iter()
        .filter(|r| r.storage_id == storage_id)
        .fold(0u64, |sum, r| sum.saturating_add(r.size)))
}

impl Ledger {
    /// A ledger whose windows count for nobody after `stall` without a byte.
    pub fn with_stall(stall: Duration) -> Ledger {
        Ledger {
            inner: Mutex::default(),
            stall,
        }
    }

    /// Admits one offered file, or says why not (see the module's rules). `space` is the
    /// storage now; `partials` the source's partial copies at rest on it (name, durable
    /// bytes), read only when it has a quota; `load_stored` its received bytes there,
    /// read once.
    pub(super) fn reserve(
        &self,
        source: &Source,
        ask: Ask<'_>,
        space: Space,
        partials: &[(String, u64)],
        load_stored: impl FnOnce() -> Result<u64, StoreError>,
    ) -> Result<Reservation<'_>, Refusal> {
        let name = ask.name;
        let storage_id = source.storage.id;
        let mut s = lock(&self.inner);
        let key = (source.uuid.clone(), name.as_str().to_string());
        if s.busy.contains(&key) {
            return Err(Refusal::new(
                Code::Busy,
                format!("{name} is being received in another session"),
            ));
        }
        if ask.size > space.total {
            return Err(Refusal::new(
                Code::NoSpace,
                format!(
                    "refused before the transfer: {name} ({} MB) is larger than storage {storage_id} \
                     could ever hold ({} MB in all)",
                    ask.size.div_ceil(MIB),
                    space.total / MIB
                ),
            ));
        }
        if let Some(quota) = source.quota_mb {
            let stored = match s.stored.get(&source.uuid) {
                Some(u) => *u,
                None => {
                    let u = load_stored().map_err(Refusal::database)?;
                    s.stored.insert(source.uuid.clone(), u);
                    u
                }
            };
            // Partials of names in transfer count with their offer; this name's (resumed
            // or dropped now) with this one.
            let at_rest = partials
                .iter()
                .filter(|(n, _)| {
                    n != name.as_str() && !s.busy.contains(&(source.uuid.clone(), n.clone()))
                })
                .fold(0u64, |sum, (_, bytes)| sum.saturating_add(*bytes));
            let promised = s.promised.get(&source.uuid).copied().unwrap_or(0);
            let limit = quota.saturating_mul(MIB);
            let holds = stored.saturating_add(at_rest).saturating_add(promised);
            if holds.saturating_add(ask.grows) > limit {
                return Err(Refusal::new(
                    Code::Quota,
                    format!(
                        "refused before the transfer: {name} ({} MB) would pass this source's quota of {quota} MB \
                         ({} MB stored, {} MB in partial copies, {} MB in transfer)",
                        ask.grows.div_ceil(MIB),
                        stored.div_ceil(MIB),
                        at_rest.div_ceil(MIB),
                        promised.div_ceil(MIB)
                    ),
                ));
            }
        }
        if ask.writes > 0 {
            let held = self.held_on(&s, storage_id, None).total;
            let needs = ask.writes.saturating_add(held).saturating_add(SPACE_MARGIN);
            if needs > space.free {
                return Err(Refusal::new(
                    Code::NoSpace,
                    format!(
                        "refused before the transfer: storage {storage_id} has {} MB free, {name} needs {} MB \
                         (plus {} MB for transfers in progress and a {} MB reserve)",
                        space.free / MIB,
                        ask.writes.div_ceil(MIB),
                        held.div_ceil(MIB),
                        SPACE_MARGIN / MIB
                    ),
                ));
            }
        }
        let promised = s.promised.entry(source.uuid.clone()).or_default();
        *promised = promised.saturating_add(ask.grows);
        s.busy.insert(key);
        Ok(Reservation {
            ledger: self,
            uuid: source.uuid.clone(),
            storage_id,
            quota_bytes: ask.grows,
            name: name.as_str().to_string(),
            window: None,
            touched: None,
        })
    }

    /// What the live windows on `storage_id` hold, but `except`'s: in all, per source,
    /// and the sources holding any.
    fn held_on<'s>(&self, s: &'s LedgerState, storage_id: u64, except: Option<u64>) -> Held<'s> {
        let mut held = Held::default();
        for (id, w) in &s.windows {
            if w.storage_id != storage_id
                || Some(*id) == except
                || w.ahead == 0
                || w.touched.elapsed() >= self.stall
            {
                continue;
            }
            held.total = held.total.saturating_add(w.ahead);
            let by = held.by_source.entry(w.uuid.as_str()).or_default();
            *by = by.saturating_add(w.ahead);
        }
        held
    }

    /// Holds `name` of the source `uuid` while a sweep removes its partial copy, so no
    /// session takes it up meanwhile; None if a session holds it now.
    pub(super) fn hold_partial(
        &self,
        uuid: &str,
        storage_id: u64,
        name: &str,
    ) -> Option<Reservation<'_>> {
        let mut s = lock(&self.inner);
        if !s.busy.insert((uuid.to_string(), name.to_string())) {
            return None;
        }
        Some(Reservation {
            ledger: self,
            uuid: uuid.to_string(),
            storage_id,
            quota_bytes: 0,
            name: name.to_string(),
            window: None,
            touched: None,
        })
    }

    /// The file of `r` was committed: its growth moves from promised to stored.
    pub(super) fn committed(&self, r: &Reservation<'_>, grows: u64) {
        let mut s = lock(&self.inner);
        if let Some(u) = s.stored.get_mut(&r.uuid) {
            *u = u.saturating_add(grows);
        }
    }

    /// Holds `name` of the source `uuid` out of every receiving session (an offer of it is
    /// refused as busy) until the guard is dropped; None while a session receives it now.
    pub fn hold(&self, uuid: &str, name: &str) -> Option<Hold<'_>> {
        let key = (uuid.to_string(), name.to_string());
        let mut s = lock(&self.inner);
        if !s.busy.insert(key.clone()) {
            return None;
        }
        Some(Hold { ledger: self, key })
    }

    /// Forgets a source's cached usage (a verify or an admin changed what it stores).
    pub fn forget(&self, uuid: &str) {
        lock(&self.inner).stored.remove(uuid);
    }
}

/// Space the live windows of one storage hold.
#[derive(Default)]
struct Held<'s> {
    total: u64,
    by_source: HashMap<&'s str, u64>,
}

impl Reservation<'_> {
    /// Makes sure space is reserved for the file's bytes up to `end`, where `written` is
    /// what the file holds now and `size` its offered size: within the window already
    /// taken (and not stalled), nothing to do; else a new window of up to `step` bytes
    /// past `end` (not past `size`), within the space left by the other live windows and
    /// the margin and within the source's fair share, and at least up to `end`, or the
    /// file must stop now (`NoSpace`). `free` reads the storage's free bytes, only when a
    /// window is taken.
    pub(super) fn cover(
        &mut self,
        written: u64,
        end: u64,
        size: u64,
        step: u64,
        free: impl FnOnce() -> Result<u64, Refusal>,
    ) -> Result<(), Refusal> {
        let now = Instant::now();
        let stall = self.ledger.stall;
        let fresh = self.touched.is_some_and(|t| now.duration_since(t) < stall);
        if let Some((id, upto)) = self.window {
            if fresh && end <= upto {
                if self
                    .touched
                    .is_some_and(|t| now.duration_since(t) >= TOUCH_EVERY)
                {
                    if let Some(w) = lock(&self.ledger.inner).windows.get_mut(&id) {
                        w.touched = now;
                    }
                    self.touched = Some(now);
                }
                return Ok(());
            }
        }
        let free = free()?;
        let mut s = lock(&self.ledger.inner);
        let held = self
            .ledger
            .held_on(&s, self.storage_id, self.window.map(|(id, _)| id));
        let mine = held.by_source.get(self.uuid.as_str()).copied().unwrap_or(0);
        let sources = held.by_source.len() as u64 + u64::from(mine == 0);
        let usable = free.saturating_sub(SPACE_MARGIN);
        let room = usable.saturating_sub(held.total);
        let share = (usable / sources.max(1)).saturating_sub(mine);
        let need = end.saturating_sub(written);
        let wish = size.min(end.saturating_add(step)).saturating_sub(written);
        let grant = wish.min(room).min(share);
        drop(held);
        if grant < need {
            return Err(Refusal::new(
                Code::NoSpace,
                format!(
                    "storage {} is full for now: {} MB free beyond its {} MB reserve, shared by {sources} \
                     sources sending; {} stopped at {written} of {size} bytes and resumes when there is room",
                    self.storage_id,
                    usable / MIB,
                    SPACE_MARGIN / MIB,
                    self.name
                ),
            ));
        }
        let id = match self.window {
            Some((id, _)) => id,
            None => {
                s.next_window += 1;
                s.next_window
            }
        };
        s.windows.insert(
            id,
            Window {
                uuid: self.uuid.clone(),
                storage_id: self.storage_id,
                ahead: grant,
                touched: now,
            },
        );
        self.window = Some((id, written.saturating_add(grant)));
        self.touched = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Scratch;
    use super::*;

    const GB: u64 = 1_000_000_000;

    fn ask(name: &BackupName, size: u64) -> Ask<'_> {
        Ask {
            name,
            size,
            grows: size,
            writes: size,
        }
    }

    fn other_source(s: &Scratch) -> Source {
        Source {
            system_id: 3,
            uuid: "99999999-2222-4333-8444-555555555555".into(),
            ..s.source.clone()
        }
    }

    fn name(n: &str) -> BackupName {
        BackupName::parse(n).unwrap()
    }

    #[test]
    fn sizes_near_two_to_the_64_never_wrap_past_the_quota_or_the_free_space() {
        let mut s = Scratch::new("ledger-wrap");
        s.source.quota_mb = Some(5);
        let ledger = Ledger::default();
        let space = Space {
            total: 64 * MIB,
            free: 60 * MIB,
        };
        let a = name("c/a");
        let b = name("c/b");
        let held = ledger
            .reserve(&s.source, ask(&a, 4 * MIB), space, &[], || Ok(0))
            .unwrap();
        for size in [
            u64::MAX,
            u64::MAX - 4 * MIB + 1,
            1 << 63,
            u64::MAX - SPACE_MARGIN,
        ] {
            let r = ledger.reserve(&s.source, ask(&b, size), space, &[], || Ok(0));
            let refusal = r.err().expect("refused");
            assert_eq!(refusal.code, Code::NoSpace, "{size}: {refusal}");
            assert!(refusal.message.contains("could ever hold"), "{refusal}");
        }
        // Within the storage's size, the quota's sums saturate instead of wrapping (a
        // cached usage, a partial row and a growth as large as a peer could make them).
        let fresh = Ledger::default();
        let grows = Ask {
            grows: u64::MAX - 1,
            ..ask(&b, 1)
        };
        let rest = [("c/p".to_string(), u64::MAX - 2)];
        let r = fresh.reserve(&s.source, grows, space, &rest, || Ok(u64::MAX - 3));
        assert_eq!(r.err().map(|e| e.code), Some(Code::Quota));
        drop(held);
    }

    #[test]
    fn partial_copies_at_rest_count_against_the_quota() {
        let mut s = Scratch::new("ledger-partials");
        s.source.quota_mb = Some(10);
        let ledger = Ledger::default();
        let space = Space {
            total: 100 * GB,
            free: 90 * GB,
        };
        let x = name("c/x");
        let rest = [("c/old".to_string(), 8 * MIB)];
        let r = ledger.reserve(&s.source, ask(&x, 3 * MIB), space, &rest, || Ok(0));
        let refusal = r.err().expect("8 MB of partials and 3 MB more pass 10 MB");
        assert_eq!(refusal.code, Code::Quota);
        assert!(
            refusal.message.contains("8 MB in partial copies"),
            "{refusal}"
        );
        // Its own partial (a resume) counts with the offer, not twice.
        let own = [("c/x".to_string(), 2 * MIB)];
        assert!(ledger
            .reserve(&s.source, ask(&x, 9 * MIB), space, &own, || Ok(0))
            .is_ok());
    }

    #[test]
    fn an_offer_never_sent_holds_no_space_and_a_window_stays_within_its_share() {
        let s = Scratch::new("ledger-starve");
        let other = other_source(&s);
        let ledger = Ledger::with_stall(Duration::from_millis(300));
        let space = Space {
            total: 100 * GB,
            free: 73 * GB,
        };
        let huge = name("c/huge");
        let small = name("c/small");
        // A offers nearly all of the free space and never sends a byte.
        let mut a = ledger
            .reserve(&s.source, ask(&huge, 72 * GB), space, &[], || Ok(0))
            .unwrap();
        // B's backup fits: the offer reserved no space.
        let mut b = ledger
            .reserve(&other, ask(&small, GB), space, &[], || Ok(0))
            .unwrap();
        b.cover(0, 256 * 1024, GB, 32 * MIB, || Ok(space.free))
            .unwrap();
        // A starts: its window is a step ahead, not the file.
        a.cover(0, 256 * 1024, 72 * GB, 32 * MIB, || Ok(space.free))
            .unwrap();
        let held = ledger.held_on(&lock(&ledger.inner), 1, None).total;
        assert_eq!(held, 2 * (32 * MIB + 256 * 1024));
        // Nearly full: each of the two sources gets at most half of what is usable.
        let tight = SPACE_MARGIN + 100 * MIB;
        let w = 32 * MIB + 256 * 1024;
        a.cover(w, w + 256 * 1024, 72 * GB, 80 * MIB, || Ok(tight))
            .unwrap();
        assert_eq!(a.window.unwrap().1, w + 50 * MIB, "half of 100 MB");
        // A stalls: after the stall its window counts for nobody, and B may use the room.
        std::thread::sleep(Duration::from_millis(400));
        b.cover(w, w + 256 * 1024, GB, 80 * MIB, || Ok(tight))
            .unwrap();
        assert_eq!(b.window.unwrap().1, w + 80 * MIB + 256 * 1024);
        // A comes back: its window is checked again, and there is no room left for it.
        let r = a.cover(w, w + 256 * 1024, 72 * GB, 32 * MIB, || {
            Ok(SPACE_MARGIN + MIB)
        });
        let refusal = r.expect_err("no room");
        assert_eq!(refusal.code, Code::NoSpace);
        assert!(refusal.message.contains("full for now"), "{refusal}");
        // Dropped reservations release everything.
        drop((a, b));
        let s2 = lock(&ledger.inner);
        assert!(s2.windows.is_empty() && s2.busy.is_empty());
        assert!(s2.promised.values().all(|v| *v == 0));
    }
}
