//! CA rollover, target side (SPEC 22): replace the appliance CA's key with no failed
//! handshake and no action on any source. `start` makes a new CA and the cross-certificate
//! by which the CA in force endorses it; from then on the new CA signs (pairings,
//! renewals, the listeners), both are trusted, and sources learn the new one over the
//! tunnel and renew onto it. `finish` puts the new CA in force and removes the old one
//! once every active source was seen with a new-chain certificate (or `rollover_window`
//! has passed, leaving the stragglers to pair again); `abort` goes back to the old CA
//! alone, still trusting the aborted one for the certificates it issued until their
//! sources renewed. Also the start-up `load` that repairs what a crash left, the
//! `status` the admin reads, and the answer the CA endpoints give. Writes files only
//! through the [`CaKeys`] it is handed; the time is passed in.
//!
//! Invariants:
//! - Each phase is one transaction of the CA state with its audit row, and the caller
//!   holds `Authority::changing` from before it until the new set is in place.
//! - Files come before the row that names them (the new CA's key and certificate are
//!   durable before `start` commits) and go after the row that stops naming them (the old
//!   key after `finish`, the new key after `abort`). So a crash at any point leaves a
//!   state whose files exist, and `load` removes the files no row names. A row naming a
//!   missing or different file is an error the admin sees, never a new key.
//! - The CA sources pin stays the one in force until `finish`: a rollover never changes
//!   what a source already trusts, it only adds the new CA, endorsed by the old one.
//! - The target never takes a CA from anyone: the new CA is made here; sources read it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::ca::{self, Ca, CaError, CaSet, Successor};
use crate::config::Fault;
use crate::identity::{CaFiles, CaPems, IdentityError};
use crate::model::{format_utc, UnixTime};
use crate::pairing::error::time_of;
use crate::pairing::Actor;
use crate::store::{
    AbortedCa, CaState, CertRecord, Endorsement, Rollover, Store, StoreError, SystemRecord,
};
use crate::wire::protocol::CaAnswer;

/// The CA's files, as the rollover uses them (`identity::CaFiles` in the daemon).
pub trait CaKeys {
    fn read(&self, generation: u64) -> Result<CaPems, IdentityError>;
    /// Writes a generation's key and certificate, durably.
    fn write(&self, generation: u64, cert_pem: &str, key_pem: &str) -> Result<(), IdentityError>;
    /// Makes the trust file (`ca.pem`) hold `pem`; true when it changed.
    fn write_trust(&self, pem: &str) -> Result<bool, IdentityError>;
    /// Removes every generation's files but `keep`'s.
    fn remove_except(&self, keep: &[u64]) -> Result<Vec<PathBuf>, IdentityError>;
}

impl CaKeys for CaFiles {
    fn read(&self, generation: u64) -> Result<CaPems, IdentityError> {
        CaFiles::read(self, generation)
    }
    fn write(&self, generation: u64, cert_pem: &str, key_pem: &str) -> Result<(), IdentityError> {
        CaFiles::write(self, generation, cert_pem, key_pem)
    }
    fn write_trust(&self, pem: &str) -> Result<bool, IdentityError> {
        CaFiles::write_trust(self, pem)
    }
    fn remove_except(&self, keep: &[u64]) -> Result<Vec<PathBuf>, IdentityError> {
        CaFiles::remove_except(self, keep)
    }
}

/// Why a rollover phase or the CA's loading failed.
#[derive(Debug)]
pub enum RolloverError {
    /// `start` while a rollover is in progress.
    AlreadyRolling {
        started: UnixTime,
    },
    /// `finish` or `abort` with no rollover in progress.
    NotRolling,
    /// `finish` while active sources were not yet seen on the new CA, before the window
    /// ended.
    Stragglers {
        sources: Vec<SourceChain>,
        window_ends: UnixTime,
    },
    /// A CA generation's files could not be read or written.
    Files {
        generation: u64,
        source: IdentityError,
    },
    /// A CA generation's files do not make a CA.
    Ca {
        generation: u64,
        source: CaError,
    },
    /// A CA generation's files hold another CA than the database names.
    Mismatch {
        generation: u64,
        expected: String,
        found: String,
    },
    /// The clock reads a time no certificate can carry.
    Clock(UnixTime),
    Store(StoreError),
}

impl fmt::Display for RolloverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RolloverError::AlreadyRolling { started } => write!(
                f,
                "a ca rollover is already in progress (started {}): finish or abort it first",
                format_utc(*started)
            ),
            RolloverError::NotRolling => f.write_str("no ca rollover is in progress"),
            RolloverError::Stragglers {
                sources,
                window_ends,
            } => write!(
                f,
                "{} active sources were not seen with a certificate of the new ca yet \
                 (systems {}); finish waits for them until the rollover window ends at {} \
                 (then it proceeds and they must pair again), or abort",
                sources.len(),
                sources
                    .iter()
                    .map(|s| s.system_id.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                format_utc(*window_ends)
            ),
            RolloverError::Files { generation, source } => {
                write!(f, "ca generation {generation}: {source}")
            }
            RolloverError::Ca { generation, .. } => {
                write!(f, "ca generation {generation} does not load")
            }
            RolloverError::Mismatch {
                generation,
                expected,
                found,
            } => write!(
                f,
                "ca generation {generation} on disk is {found}, but the database names {expected}: \
                 restore the data directory's ca files from a backup"
            ),
            RolloverError::Clock(now) => write!(
                f,
                "the clock reads unix time {now}, outside the dates a certificate can carry"
            ),
            RolloverError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RolloverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RolloverError::Files { source, .. } => source.source(),
            RolloverError::Ca { source, .. } => Some(source),
            RolloverError::Store(e) => e.source(),
            _ => None,
        }
    }
}

impl From<StoreError> for RolloverError {
    fn from(e: StoreError) -> Self {
        RolloverError::Store(e)
    }
}

/// Where a rollover stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// One CA in force (and perhaps aborted ones still trusted).
    Idle,
    /// A new CA signs; both are trusted; sources move over.
    Rolling,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Rolling => "rolling",
        }
    }
}

/// Which CA a source's certificate chains to, as far as the target knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// The source was seen with a certificate of the newest CA (the rollover's new CA, or
    /// the one in force when there is none).
    New,
    /// Anything else: an older CA's certificate, or a new one it was not seen with yet.
    Old,
}

impl Chain {
    pub fn as_str(self) -> &'static str {
        match self {
            Chain::New => "new",
            Chain::Old => "old",
        }
    }
}

/// One paired source in a rollover's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceChain {
    pub system_id: u64,
    pub name: String,
    pub chain: Chain,
    pub last_seen: Option<UnixTime>,
    /// Its current certificate is live and in date: it counts for `finish`.
    pub active: bool,
}

/// What `GET /api/ca/rollover` shows.
#[derive(Clone, Debug)]
pub struct Status {
    pub phase: Phase,
    /// The CA in force.
    pub fingerprint: String,
    /// During a rollover: the new CA, when it started, when its window ends.
    pub next: Option<String>,
    pub started: Option<UnixTime>,
    pub window_ends: Option<UnixTime>,
    pub sources: Vec<SourceChain>,
    /// Aborted CAs still trusted for the certificates they issued.
    pub aborted: usize,
}

impl Status {
    /// Active sources not on the newest CA: the ones `finish` waits for.
    pub fn stragglers(&self) -> impl Iterator<Item = &SourceChain> {
        self.sources
            .iter()
            .filter(|s| s.active && s.chain == Chain::Old)
    }
}

/// What a rollover phase works with, borrowed from the caller (who holds
/// `Authority::changing` throughout).
pub struct RolloverSide<'a> {
    pub store: &'a Store,
    pub keys: &'a dyn CaKeys,
    /// The set in force before the phase.
    pub set: &'a CaSet,
    /// `rollover_window`.
    pub window: Duration,
    /// The name this appliance's CAs carry (`replgate CA <uuid>`); a rollover's CA adds
    /// its generation, so old and new never share a subject.
    pub name: &'a str,
    /// Crash points for the crash tests (`Fault::None` in production).
    pub fault: Fault,
}

/// The name of this appliance's CAs: `replgate CA` and the start of its uuid (a
/// rollover's CA adds ` gen <g>`, so no two generations share a subject).
pub fn ca_name(system_uuid: &str) -> String {
    format!("replgate CA {}", &system_uuid[..8.min(system_uuid.len())])
}

/// Which CA each paired source's certificate is on, and whether it counts for `finish`.
pub fn status(
    store: &Store,
    set: &CaSet,
    window: Duration,
    now: UnixTime,
) -> Result<Status, StoreError> {
    Ok(status_of(&store.systems_with_certs()?, set, window, now))
}

/// [`status`] from the systems with their current certificates' rows
/// (`Store::systems_with_certs`, or `lifecycle::CertCache`'s copy).
pub fn status_of(
    systems: &[(SystemRecord, Option<CertRecord>)],
    set: &CaSet,
    window: Duration,
    now: UnixTime,
) -> Status {
    let newest = set.signing().fingerprint();
    let mut sources = Vec::new();
    for (s, cert) in systems {
        let Some(serial) = s.cert_serial.as_deref().filter(|_| s.role.is_source()) else {
            continue;
        };
        let on_newest = cert
            .as_ref()
            .is_some_and(|c| set.issuer_of(c.issuer.as_deref()) == newest);
        let seen_with_it = s.last_serial.as_deref() == Some(serial);
        sources.push(SourceChain {
            system_id: s.id,
            name: s.name.clone(),
            chain: if on_newest && seen_with_it {
                Chain::New
            } else {
                Chain::Old
            },
            last_seen: s.last_seen,
            active: cert
                .as_ref()
                .is_some_and(|c| c.is_live() && c.not_after > now),
        });
    }
    let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    Status {
        phase: if set.next.is_some() {
            Phase::Rolling
        } else {
            Phase::Idle
        },
        fingerprint: set.fingerprint(),
        next: set.next.as_ref().map(|n| n.ca.fingerprint()),
        started: set.next.as_ref().map(|n| n.started),
        window_ends: set.next.as_ref().map(|n| n.started.saturating_add(window)),
        sources,
        aborted: set.aborted.len(),
    }
}

/// The health warnings of a rollover's status at `now` (counts only: the endpoint is
/// public): one while a rollover runs, another once its window ended, one while aborted
/// CAs are still trusted.
pub fn warnings(st: &Status, now: UnixTime) -> Vec<String> {
    let mut out = Vec::new();
    let left = st.stragglers().count();
    if let (Some(started), Some(ends)) = (st.started, st.window_ends) {
        if now >= ends {
            out.push(format!(
                "the ca rollover's window ended at {} with {left} sources still on the old ca: \
                 finish it (those sources must pair again) or abort it",
                format_utc(ends)
            ));
        } else {
            out.push(format!(
                "a ca rollover is in progress since {}: {left} sources still on the old ca; \
                 finish it once none is left (its window ends at {})",
                format_utc(started),
                format_utc(ends)
            ));
        }
    }
    if st.aborted > 0 {
        out.push(format!(
            "{} aborted ca(s) still trusted for the certificates they issued, until their \
             sources renewed",
            st.aborted
        ));
    }
    out
}

/// What the CA endpoints answer (`GET /tunnel/v1/ca`, `GET /replication/v1/ca`): the CA
/// in force, during a rollover the new CA and the cross-certificate, the
/// cross-certificates of finished rollovers, and for a tunnel peer whether the
/// certificate it presented (`presented`) was issued by another CA than the one that
/// signs now, so it should renew at once.
pub fn answer(set: &CaSet, presented: Option<&CertRecord>) -> CaAnswer {
    let signing = set.signing().fingerprint();
    CaAnswer {
        phase: if set.next.is_some() {
            Phase::Rolling
        } else {
            Phase::Idle
        }
        .as_str()
        .to_string(),
        ca: set.current.cert_pem().to_string(),
        fingerprint: set.fingerprint(),
        next: set.next.as_ref().map(|n| n.ca.cert_pem().to_string()),
        cross: set.next.as_ref().map(|n| n.cross_pem.clone()),
        endorsements: set.endorsements.clone(),
        renew: presented.is_some_and(|c| set.issuer_of(c.issuer.as_deref()) != signing),
    }
}

/// A CA generation's files as a CA, checked to be the one the database names.
fn load_generation(
    keys: &dyn CaKeys,
    generation: u64,
    expected: &str,
) -> Result<Ca, RolloverError> {
    let pems = keys
        .read(generation)
        .map_err(|source| RolloverError::Files { generation, source })?;
    let ca = Ca::from_pem(&pems.cert_pem, &pems.key_pem)
        .map_err(|source| RolloverError::Ca { generation, source })?;
    if !expected.is_empty() && ca.fingerprint() != expected {
        return Err(RolloverError::Mismatch {
            generation,
            expected: expected.to_string(),
            found: ca.fingerprint(),
        });
    }
    Ok(ca)
}

/// The CAs as the database names them, at start: the CA in force and a rollover's new CA
/// loaded (an error when a named file is missing or holds another CA), the files of
/// generations no row names removed (a crash between a phase's files and its commit, or
/// between its commit and the removal), the trust file brought in line. Returns the set
/// and the files removed.
pub fn load(store: &Store, keys: &dyn CaKeys) -> Result<(CaSet, Vec<PathBuf>), RolloverError> {
    let state = store.ca_state()?;
    let current = load_generation(keys, state.generation, &state.fingerprint)?;
    let next = match &state.rollover {
        None => None,
        Some(r) => Some(Successor {
            ca: Arc::new(load_generation(keys, r.generation, &r.fingerprint)?),
            cross_pem: r.cross_pem.clone(),
            started: r.started,
        }),
    };
    let mut keep = vec![state.generation];
    keep.extend(state.rollover.as_ref().map(|r| r.generation));
    let removed = keys
        .remove_except(&keep)
        .map_err(|source| RolloverError::Files {
            generation: state.generation,
            source,
        })?;
    let original = if state.original.is_empty() {
        current.fingerprint()
    } else {
        state.original.clone()
    };
    let set = CaSet {
        current: Arc::new(current),
        next,
        aborted: state.aborted.iter().map(|a| a.cert_pem.clone()).collect(),
        endorsements: state.finished.iter().map(|e| e.cross_pem.clone()).collect(),
        original,
    };
    keys.write_trust(&set.trust_file_pem())
        .map_err(|source| RolloverError::Files {
            generation: state.generation,
            source,
        })?;
    Ok((set, removed))
}

/// Brings the trust file in line with `set` and removes the files of generations other
/// than `keep`, after a commit: a failure is logged, and the next start repairs it.
fn tidy_files(keys: &dyn CaKeys, set: &CaSet, keep: &[u64]) {
    if let Err(e) = keys.write_trust(&set.trust_file_pem()) {
        log::warn!(
            "ca rollover: write ca.pem: {} (repaired at the next start)",
            crate::model::Chain(&e)
        );
    }
    match keys.remove_except(keep) {
        Ok(removed) => {
            for path in removed {
                log::info!("ca rollover: removed {}", path.display());
            }
        }
        Err(e) => log::warn!(
            "ca rollover: remove the files of the ca that left: {} (removed at the next start)",
            crate::model::Chain(&e)
        ),
    }
}

/// Starts a rollover: a new CA (its own subject name), the cross-certificate by which the
/// CA in force endorses it, its files written durably, then one transaction records it.
/// Returns the set to put in place (the new CA signs from now on).
pub fn start(side: &RolloverSide, actor: &Actor, now: UnixTime) -> Result<CaSet, RolloverError> {
    let state = side.store.ca_state()?;
    if let Some(r) = &state.rollover {
        return Err(RolloverError::AlreadyRolling { started: r.started });
    }
    let generation = state.last_generation.max(state.generation) + 1;
    let when = time_of(now).map_err(|_| RolloverError::Clock(now))?;
    let ca_error = |source| RolloverError::Ca { generation, source };
    let next = Ca::generate(&format!("{} gen {generation}", side.name), when).map_err(ca_error)?;
    let cross = side
        .set
        .current
        .cross_certify(&next, when)
        .map_err(ca_error)?;
    let (old_fp, new_fp) = (side.set.fingerprint(), next.fingerprint());
    side.keys
        .write(generation, next.cert_pem(), &next.key_pem())
        .map_err(|source| RolloverError::Files { generation, source })?;
    side.fault.crash_if(Fault::CrashAfterRolloverFiles);
    let committed = side.store.write(|tx| {
        let mut s = tx.ca_state()?;
        if let Some(r) = &s.rollover {
            return Err(RolloverError::AlreadyRolling { started: r.started });
        }
        if s.fingerprint.is_empty() {
            s.fingerprint = old_fp.clone();
        }
        if s.original.is_empty() {
            s.original = side.set.original.clone();
        }
        s.last_generation = generation;
        s.rollover = Some(Rollover {
            generation,
            fingerprint: new_fp.clone(),
            cross_pem: cross.clone(),
            started: now,
        });
        tx.put_ca_state(&s)?;
        tx.audit(&actor.audit(
            now,
            "ca rollover started",
            "ca".into(),
            format!("new ca {new_fp} (generation {generation}), endorsed by {old_fp}"),
        ))?;
        Ok(())
    });
    if let Err(e) = committed {
        // Nothing names the new files: they go now (or at the next start).
        let _ = side.keys.remove_except(&[state.generation]);
        return Err(e);
    }
    side.fault.crash_if(Fault::CrashAfterRolloverStart);
    let set = CaSet {
        current: side.set.current.clone(),
        next: Some(Successor {
            ca: Arc::new(next),
            cross_pem: cross,
            started: now,
        }),
        aborted: side.set.aborted.clone(),
        endorsements: side.set.endorsements.clone(),
        original: side.set.original.clone(),
    };
    tidy_files(side.keys, &set, &[state.generation, generation]);
    Ok(set)
}

/// Finishes the rollover: refused while an active source was not seen on the new CA,
/// unless `rollover_window` has passed; then one transaction puts the new CA in force,
/// and the old CA's files go. Returns the set to put in place and the sources left behind
/// (they must pair again).
pub fn finish(
    side: &RolloverSide,
    actor: &Actor,
    now: UnixTime,
) -> Result<(CaSet, Vec<SourceChain>), RolloverError> {
    let Some(next) = &side.set.next else {
        return Err(RolloverError::NotRolling);
    };
    let status = status(side.store, side.set, side.window, now)?;
    let stragglers: Vec<SourceChain> = status.stragglers().cloned().collect();
    let window_ends = status.window_ends.unwrap_or(now);
    if !stragglers.is_empty() && now < window_ends {
        return Err(RolloverError::Stragglers {
            sources: stragglers,
            window_ends,
        });
    }
    let (old_fp, new_fp) = (side.set.fingerprint(), next.ca.fingerprint());
    let left: Vec<String> = stragglers.iter().map(|s| s.system_id.to_string()).collect();
    let generation = side.store.write(|tx| {
        let mut s: CaState = tx.ca_state()?;
        let r = s.rollover.take().ok_or(RolloverError::NotRolling)?;
        s.finished.push(Endorsement {
            from: old_fp.clone(),
            to: r.fingerprint.clone(),
            cross_pem: r.cross_pem,
            finished: now,
        });
        s.generation = r.generation;
        s.fingerprint = r.fingerprint;
        tx.put_ca_state(&s)?;
        tx.audit(&actor.audit(
            now,
            "ca rollover finished",
            "ca".into(),
            if left.is_empty() {
                format!("ca {new_fp} in force, {old_fp} removed")
            } else {
                format!(
                    "ca {new_fp} in force, {old_fp} removed; the window ended with systems {} \
                     on the old ca: they must pair again",
                    left.join(", ")
                )
            },
        ))?;
        Ok::<_, RolloverError>(s.generation)
    })?;
    side.fault.crash_if(Fault::CrashAfterRolloverFinish);
    let mut endorsements = side.set.endorsements.clone();
    endorsements.push(next.cross_pem.clone());
    let set = CaSet {
        current: next.ca.clone(),
        next: None,
        aborted: side.set.aborted.clone(),
        endorsements,
        original: side.set.original.clone(),
    };
    tidy_files(side.keys, &set, &[generation]);
    Ok((set, stragglers))
}

/// Aborts the rollover: one transaction returns to the CA in force alone (the aborted CA
/// stays trusted for the client certificates it issued, whose sources are asked to renew
/// at once), then the new CA's files go. Returns the set to put in place.
pub fn abort(side: &RolloverSide, actor: &Actor, now: UnixTime) -> Result<CaSet, RolloverError> {
    let Some(next) = &side.set.next else {
        return Err(RolloverError::NotRolling);
    };
    let new_fp = next.ca.fingerprint();
    let generation = side.store.write(|tx| {
        let mut s = tx.ca_state()?;
        let r = s.rollover.take().ok_or(RolloverError::NotRolling)?;
        s.aborted.push(AbortedCa {
            fingerprint: r.fingerprint,
            cert_pem: next.ca.cert_pem().to_string(),
            aborted: now,
        });
        tx.put_ca_state(&s)?;
        tx.audit(&actor.audit(
            now,
            "ca rollover aborted",
            "ca".into(),
            format!(
                "new ca {new_fp} dropped, {} stays in force; the certificates {new_fp} issued \
                 work until their sources renewed",
                s.fingerprint
            ),
        ))?;
        Ok::<_, RolloverError>(s.generation)
    })?;
    let mut aborted = side.set.aborted.clone();
    aborted.push(next.ca.cert_pem().to_string());
    let set = CaSet {
        current: side.set.current.clone(),
        next: None,
        aborted,
        endorsements: side.set.endorsements.clone(),
        original: side.set.original.clone(),
    };
    tidy_files(side.keys, &set, &[generation]);
    Ok(set)
}

/// Stops trusting the aborted CAs that no live, unexpired certificate names as its issuer
/// any more (their sources renewed onto the CA in force); the new set when one went.
pub fn end_aborted(store: &Store, set: &CaSet, now: UnixTime) -> Result<Option<CaSet>, StoreError> {
    if set.aborted.is_empty() {
        return Ok(None);
    }
    let certs = store.certs()?;
    let in_use = |fp: &str| {
        certs
            .iter()
            .any(|c| c.issuer.as_deref() == Some(fp) && c.is_live() && c.not_after > now)
    };
    let fingerprint = |pem: &String| {
        ca::cert_pem_to_der(pem)
            .map(|der| ca::sha256_hex(&der))
            .unwrap_or_default()
    };
    let kept: Vec<String> = set
        .aborted
        .iter()
        .filter(|pem| in_use(&fingerprint(pem)))
        .cloned()
        .collect();
    if kept.len() == set.aborted.len() {
        return Ok(None);
    }
    let kept_fps: Vec<String> = kept.iter().map(fingerprint).collect();
    store.write(|tx| {
        let mut s = tx.ca_state()?;
        let dropped: Vec<String> = s
            .aborted
            .iter()
            .filter(|a| !kept_fps.contains(&a.fingerprint))
            .map(|a| a.fingerprint.clone())
            .collect();
        s.aborted.retain(|a| kept_fps.contains(&a.fingerprint));
        tx.put_ca_state(&s)?;
        tx.audit(
            &Actor {
                user: "-".into(),
                address: "local".into(),
            }
            .audit(
                now,
                "aborted ca no longer trusted",
                "ca".into(),
                format!(
                    "{}: no certificate it issued is in use any more",
                    dropped.join(", ")
                ),
            ),
        )
    })?;
    Ok(Some(CaSet {
        current: set.current.clone(),
        next: set.next.as_ref().map(|n| Successor {
            ca: n.ca.clone(),
            cross_pem: n.cross_pem.clone(),
            started: n.started,
        }),
        aborted: kept,
        endorsements: set.endorsements.clone(),
        original: set.original.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::SystemRecord;

    const NOW: UnixTime = 1_767_225_600;
    const WINDOW: Duration = Duration::from_secs(600);

    /// A store and a data directory with generation 0 written, as the first start leaves.
    fn first_start(name: &str) -> (Store, CaFiles, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("replgate-rollover-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        let store = Store::open(&dir.join("replgate.redb")).unwrap();
        let files = CaFiles::new(&dir);
        let ca = Ca::generate(&ca_name("5f0c7a52-x"), time_of(NOW - 60).unwrap()).unwrap();
        files.write(0, ca.cert_pem(), &ca.key_pem()).unwrap();
        (store, files, dir)
    }

    fn admin() -> Actor {
        Actor {
            user: "root".into(),
            address: "192.0.2.1".into(),
        }
    }

    fn side<'a>(store: &'a Store, files: &'a CaFiles, set: &'a CaSet) -> RolloverSide<'a> {
        RolloverSide {
            store,
            keys: files,
            set,
            window: WINDOW,
            name: "replgate CA 5f0c7a52",
            fault: Fault::None,
        }
    }

    /// A paired source `id` whose current certificate `serial` was issued by `issuer`,
    /// last seen with `seen` (a serial).
    fn source(store: &Store, id: u64, serial: &str, issuer: &str, seen: Option<&str>) {
        let row: SystemRecord = serde_json::from_value(json!({
            "id": id, "name": format!("src-{id}"), "host": "h", "role": "Non-Managed Replication Source",
            "system_uuid": format!("u-{id}"), "created": 0, "updated": 0,
            "cert_serial": serial, "last_seen": seen.map(|_| NOW - 5), "last_serial": seen,
        }))
        .unwrap();
        let cert = CertRecord {
            serial: serial.into(),
            request_id: 1,
            system_id: id,
            subject: format!("u-{id}"),
            issued_at: NOW - 100,
            not_after: NOW + 86_400,
            pem: String::new(),
            revoked_at: None,
            generation: 0,
            renews: None,
            superseded_at: None,
            retired_at: None,
            issuer: Some(issuer.into()),
        };
        store
            .write(|tx| {
                tx.put_system(&row)?;
                if tx.cert(serial)?.is_none() {
                    let generation = tx.next_generation(id)?;
                    tx.insert_cert(&CertRecord { generation, ..cert })?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ca"))
            .collect();
        names.sort();
        names
    }

    fn trust_file(dir: &std::path::Path) -> Vec<String> {
        let pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        ca::certs_pem_to_der(&pem)
            .unwrap()
            .iter()
            .map(|der| ca::sha256_hex(der))
            .collect()
    }

    #[test]
    fn a_rollover_finishes_once_every_active_source_was_seen_on_the_new_ca() {
        let (store, files, dir) = first_start("finish");
        let (old, _) = load(&store, &files).unwrap();
        let old_fp = old.fingerprint();
        source(&store, 2, "a1", &old_fp, Some("a1"));
        let rolling = start(&side(&store, &files, &old), &admin(), NOW).unwrap();
        let next = rolling.next.as_ref().unwrap();
        let new_fp = next.ca.fingerprint();
        assert_eq!(
            rolling.fingerprint(),
            old_fp,
            "sources still pin the old ca"
        );
        assert_ne!(new_fp, old_fp);
        ca::check_endorsement(
            &old.current.cert_der(),
            &next.ca.cert_der(),
            &ca::cert_pem_to_der(&next.cross_pem).unwrap(),
            NOW,
        )
        .unwrap();
        assert_eq!(names(&dir), ["ca-1.key", "ca-1.pem", "ca.key", "ca.pem"]);
        assert_eq!(trust_file(&dir), [old_fp.clone(), new_fp.clone()]);
        let state = store.ca_state().unwrap();
        assert_eq!(state.rollover.as_ref().map(|r| r.generation), Some(1));
        assert_eq!(
            (state.fingerprint.as_str(), state.original.as_str()),
            (old_fp.as_str(), old_fp.as_str())
        );
        assert!(matches!(
            start(&side(&store, &files, &rolling), &admin(), NOW),
            Err(RolloverError::AlreadyRolling { started: NOW })
        ));
        // A source still on the old ca holds finish back...
        let st = status(&store, &rolling, WINDOW, NOW).unwrap();
        assert_eq!((st.phase, st.stragglers().count()), (Phase::Rolling, 1));
        let refused = finish(&side(&store, &files, &rolling), &admin(), NOW + 10).unwrap_err();
        assert!(
            matches!(&refused, RolloverError::Stragglers { sources, window_ends } if sources[0].system_id == 2 && *window_ends == NOW + 600),
            "{refused:?}"
        );
        // ...and so does one renewed but not seen with its new certificate yet.
        source(&store, 2, "b1", &new_fp, Some("a1"));
        assert!(finish(&side(&store, &files, &rolling), &admin(), NOW + 10).is_err());
        // An unpaired source (revoked) does not count, nor does the answer ask it to renew.
        source(&store, 3, "c1", &old_fp, Some("c1"));
        store.write(|tx| tx.revoke("c1", NOW)).unwrap();
        source(&store, 2, "b1", &new_fp, Some("b1"));
        let (done, left) = finish(&side(&store, &files, &rolling), &admin(), NOW + 10).unwrap();
        assert!(left.is_empty());
        assert_eq!(done.fingerprint(), new_fp);
        assert!(done.next.is_none());
        assert_eq!(done.endorsements, std::slice::from_ref(&next.cross_pem));
        assert_eq!(
            names(&dir),
            ["ca-1.key", "ca-1.pem", "ca.pem"],
            "the old key is gone"
        );
        assert_eq!(trust_file(&dir), std::slice::from_ref(&new_fp));
        let (again, removed) = load(&store, &files).unwrap();
        assert!(removed.is_empty());
        assert_eq!(again.fingerprint(), new_fp);
        assert_eq!(
            again.original, old_fp,
            "certificates without an issuer are the first ca's"
        );
        assert!(matches!(
            finish(&side(&store, &files, &again), &admin(), NOW + 20),
            Err(RolloverError::NotRolling)
        ));
        let audit: Vec<String> = store
            .audit(0, 50)
            .unwrap()
            .into_iter()
            .map(|(_, a)| a.action)
            .collect();
        assert!(
            audit.contains(&"ca rollover started".to_string()),
            "{audit:?}"
        );
        assert!(
            audit.contains(&"ca rollover finished".to_string()),
            "{audit:?}"
        );
    }

    #[test]
    fn after_its_window_finish_leaves_the_stragglers_behind_and_names_them() {
        let (store, files, _dir) = first_start("window");
        let (old, _) = load(&store, &files).unwrap();
        source(&store, 2, "a1", &old.fingerprint(), Some("a1"));
        source(&store, 4, "d1", &old.fingerprint(), None);
        let rolling = start(&side(&store, &files, &old), &admin(), NOW).unwrap();
        let st = status(&store, &rolling, WINDOW, NOW + 600).unwrap();
        let w = warnings(&st, NOW + 600);
        assert!(
            w[0].contains("window ended") && w[0].contains("2 sources"),
            "{w:?}"
        );
        let (done, left) = finish(&side(&store, &files, &rolling), &admin(), NOW + 600).unwrap();
        let ids: Vec<u64> = left.iter().map(|s| s.system_id).collect();
        assert_eq!(ids, [2, 4]);
        let st = status(&store, &done, WINDOW, NOW + 601).unwrap();
        assert_eq!(
            st.stragglers().count(),
            2,
            "still listed: they must pair again"
        );
        assert!(warnings(&st, NOW + 601).is_empty());
    }

    #[test]
    fn abort_goes_back_to_the_old_ca_and_trusts_the_new_one_only_for_its_leaves() {
        let (store, files, dir) = first_start("abort");
        let (old, _) = load(&store, &files).unwrap();
        let rolling = start(&side(&store, &files, &old), &admin(), NOW).unwrap();
        let new_fp = rolling.signing().fingerprint();
        source(&store, 2, "n1", &new_fp, Some("n1"));
        let presented = store.cert("n1").unwrap();
        assert!(
            !answer(&rolling, presented.as_ref()).renew,
            "on the ca that signs"
        );
        let back = abort(&side(&store, &files, &rolling), &admin(), NOW + 5).unwrap();
        assert_eq!(back.fingerprint(), old.fingerprint());
        assert_eq!(back.signing().fingerprint(), old.fingerprint());
        assert_eq!(names(&dir), ["ca.key", "ca.pem"], "the new key is gone");
        assert_eq!(trust_file(&dir), [old.fingerprint()]);
        assert_eq!(
            back.client_anchors().len(),
            2,
            "its leaves still open the tunnel"
        );
        let a = answer(&back, presented.as_ref());
        assert!(a.renew && a.next.is_none() && a.phase == "idle");
        assert_eq!(
            end_aborted(&store, &back, NOW + 6).unwrap().map(|_| ()),
            None
        );
        // Its source renewed onto the old ca and proved it: nothing uses the aborted ca.
        store
            .write(|tx| tx.retire("n1", NOW + 7).map(|_| ()))
            .unwrap();
        store
            .write(|tx| {
                tx.supersede("n1", NOW + 7, NOW + 8)?;
                tx.retire("n1", NOW + 8).map(|_| ())
            })
            .unwrap();
        let dropped = end_aborted(&store, &back, NOW + 9)
            .unwrap()
            .expect("dropped");
        assert!(dropped.aborted.is_empty());
        assert_eq!(dropped.client_anchors().len(), 1);
        assert!(store.ca_state().unwrap().aborted.is_empty());
        assert!(matches!(
            abort(&side(&store, &files, &dropped), &admin(), NOW + 10),
            Err(RolloverError::NotRolling)
        ));
    }

    #[test]
    fn load_repairs_what_a_crash_left_and_refuses_what_it_cannot_trust() {
        let (store, files, dir) = first_start("load");
        let (old, _) = load(&store, &files).unwrap();
        // A crash between the new files and the start's commit: nothing names them.
        let stray = Ca::generate("stray", time_of(NOW).unwrap()).unwrap();
        files.write(1, stray.cert_pem(), &stray.key_pem()).unwrap();
        let (set, removed) = load(&store, &files).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(set.next.is_none());
        assert_eq!(names(&dir), ["ca.key", "ca.pem"]);
        // A crash after the start's commit, before ca.pem was rewritten.
        let rolling = start(&side(&store, &files, &old), &admin(), NOW).unwrap();
        files.write_trust(old.current.cert_pem()).unwrap();
        let (set, _) = load(&store, &files).unwrap();
        assert_eq!(set.signing().fingerprint(), rolling.signing().fingerprint());
        assert_eq!(trust_file(&dir).len(), 2, "ca.pem lists both again");
        // The new key went missing: an error naming it, never a new key.
        let key = files.key_path(1);
        let saved = std::fs::read(&key).unwrap();
        std::fs::remove_file(&key).unwrap();
        let e = load(&store, &files).expect_err("refused");
        assert!(
            matches!(&e, RolloverError::Files { generation: 1, .. }),
            "{e:?}"
        );
        assert!(
            crate::model::Chain(&e).to_string().contains("ca-1.key"),
            "{e}"
        );
        // Another CA in its place.
        let other = Ca::generate("other", time_of(NOW).unwrap()).unwrap();
        files.write(1, other.cert_pem(), &other.key_pem()).unwrap();
        assert!(matches!(
            load(&store, &files),
            Err(RolloverError::Mismatch { generation: 1, .. })
        ));
        files
            .write(
                1,
                rolling.signing().cert_pem(),
                std::str::from_utf8(&saved).unwrap(),
            )
            .unwrap();
        // A crash after the finish's commit, before the old key went.
        let (done, _) = finish(&side(&store, &files, &rolling), &admin(), NOW + 600).unwrap();
        files
            .write(0, old.current.cert_pem(), &old.current.key_pem())
            .unwrap();
        let (set, removed) = load(&store, &files).unwrap();
        assert_eq!(set.fingerprint(), done.fingerprint());
        let removed: Vec<_> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(removed, ["ca.key"]);
        assert_eq!(trust_file(&dir), [done.fingerprint()]);
    }
}
