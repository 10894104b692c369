//! Asking a target for a pairing, and forgetting one: the orchestration behind
//! `POST /api/replication/target` and `DELETE /api/replication/target/{host}`. Every I/O
//! (the CA probe, the call to the target, key generation, the pairing directory) comes in
//! through [`SourceIo`] and the time as a value, so all of it runs in tests without sockets
//! or files. Holds no transaction across a call: the target is asked first, the row is
//! committed after.

use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{clamp_retry_after, same_target, trust, valid_poll_path, Distrust};
use crate::ca::{self, CaError, CsrError};
use crate::identity::IdentityError;
use crate::model::{Chain, UnixTime};
use crate::pairing::Actor;
use crate::store::{Store, StoreError, TargetRecord, TargetStatus};
use crate::tls::TlsError;
use crate::wire::protocol::{Filed, RequestBody};
use crate::wire::token::PairingToken;

/// At most this many requests to targets run at once: one can take close to a minute when
/// the target does not answer, and the API workers must stay free for everything else.
pub const MAX_OUTGOING: usize = 2;
/// What an admin is told to wait when the target answered 429 without a `Retry-After` in
/// seconds (a replgate target always sends one).
pub const DEFAULT_RETRY_AFTER: u64 = 60;

/// The I/O of source-side pairing: over the network and the disk in the daemon
/// (`remote::LiveSource`), fakes in tests.
pub trait SourceIo {
    /// The CA certificate (DER) that `host` presents in its TLS handshake; nothing is
    /// trusted yet.
    fn probe_ca(&self, host: &str) -> Result<Vec<u8>, TlsError>;
    /// Files `body` with `host`'s `/replication/v1/requests`, trusting only `ca_pem`.
    fn file_request(
        &self,
        host: &str,
        ca_pem: &str,
        body: &RequestBody,
    ) -> Result<Filed, CallError>;
    /// A fresh private key and a CSR for it, both PEM, with `system_uuid` as subject.
    fn key_and_csr(&self, system_uuid: &str) -> Result<(String, String), CaError>;
    /// Stores `key_pem` in a new pairing directory and returns the directory's name.
    fn create_dir(&self, key_pem: &str) -> Result<String, IdentityError>;
    /// Removes a pairing directory and everything in it.
    fn remove_dir(&self, name: &str) -> Result<(), IdentityError>;
    /// Stores the key of a new generation in the pairing directory `dir`.
    fn write_key(&self, dir: &str, generation: u64, key_pem: &str) -> Result<(), IdentityError>;
    /// The key of `generation` in the pairing directory `dir`.
    fn read_key(&self, dir: &str, generation: u64) -> Result<String, IdentityError>;
}

/// A call to a target that failed, as the I/O classifies it.
#[derive(Debug)]
pub enum CallError {
    /// The target answered with an error status: its message, and its `Retry-After` in
    /// seconds when it sent one.
    Refused {
        status: u16,
        message: String,
        retry_after: Option<u64>,
        /// With code 12506: the id of the target's open request from us, filed with a
        /// key we no longer have.
        open_request: Option<u64>,
    },
    /// The call could not be made or its answer not read: unreachable, not trusted, outside
    /// the protocol.
    Failed(Box<dyn Error + Send + Sync>),
    /// Our own material for the call (the pinned CA, the TLS set-up) is unusable.
    Local(Box<dyn Error + Send + Sync>),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Refused {
                status, message, ..
            } => write!(f, "refused with {status}: {message}"),
            CallError::Failed(e) | CallError::Local(e) => write!(f, "{e}"),
        }
    }
}

impl Error for CallError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CallError::Refused { .. } => None,
            CallError::Failed(e) | CallError::Local(e) => e.source(),
        }
    }
}

/// How a target's answer to a filed request breaks the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadAnswer {
    /// The CA fingerprint it reports is not that of the CA it presented.
    CaMismatch { reported: String, presented: String },
    /// Its poll path is not `/replication/v1/spool/<token>/`.
    PollPath,
    /// Its verification code is not the one computed from what we sent.
    Code { sent: String, expected: String },
}

impl fmt::Display for BadAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadAnswer::CaMismatch {
                reported,
                presented,
            } => write!(f, "reports CA {reported} but presented {presented}"),
            BadAnswer::PollPath => f.write_str("answered with an invalid poll path"),
            BadAnswer::Code { sent, expected } => {
                write!(
                    f,
                    "sent verification code {sent} where {expected} was expected"
                )
            }
        }
    }
}

/// Why asking a target or forgetting one failed, grouped by who must act.
#[derive(Debug)]
pub enum SourceError {
    /// A pairing with this target is open or done; the admin must forget it first.
    AlreadyPaired {
        host: String,
        status: TargetStatus,
    },
    /// `MAX_OUTGOING` requests to targets are running; retry shortly.
    Busy,
    /// The target's TLS listener could not be reached to read its CA.
    Unreachable {
        host: String,
        source: TlsError,
    },
    /// The CA the target presented is not trusted: unknown (the admin compares
    /// `presented` out of band and retries with it) or another than the one expected.
    Untrusted {
        host: String,
        presented: String,
        distrust: Distrust,
    },
    /// Filing the request with the target failed.
    Call {
        host: String,
        source: CallError,
    },
    /// The target's answer breaks the protocol.
    BadAnswer {
        host: String,
        problem: BadAnswer,
    },
    /// Our own key and CSR could not be made.
    Key(CaError),
    /// Our own CSR does not parse back (a bug).
    OwnCsr(CsrError),
    /// A pairing directory could not be written or removed.
    Identity(IdentityError),
    Store(StoreError),
    /// No pairing with the target the admin named.
    UnknownTarget(String),
}

impl SourceError {
    /// The wait to pass on when the target said "too many" (429): its own `Retry-After`,
    /// bounded like every wait a peer supplies, else [`DEFAULT_RETRY_AFTER`].
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            SourceError::Call {
                source:
                    CallError::Refused {
                        status: 429,
                        retry_after,
                        ..
                    },
                ..
            } => Some(clamp_retry_after(
                retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            )),
            _ => None,
        }
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::AlreadyPaired { host, status } => write!(
                f,
                "a pairing with {host} is already {}; forget it first to start over",
                status.as_str()
            ),
            SourceError::Busy => {
                f.write_str("other requests to targets are in progress; retry in a minute")
            }
            SourceError::Unreachable { host, .. } => write!(f, "cannot reach target {host}"),
            SourceError::Untrusted {
                host,
                presented,
                distrust: Distrust::Unknown,
            } => write!(
                f,
                "target {host} presented a CA with SHA-256 fingerprint {presented}, which is not trusted yet; \
                 compare it with the fingerprint shown on the target and retry with \"fingerprint\" (or \"insecure\": 1)"
            ),
            SourceError::Untrusted {
                host,
                presented,
                distrust: Distrust::Mismatch { expected },
            } => write!(
                f,
                "target {host} presented CA {presented}, not the expected {expected}"
            ),
            SourceError::Call { host, .. } => write!(f, "target {host}"),
            SourceError::BadAnswer { host, problem } => write!(f, "target {host} {problem}"),
            SourceError::Key(_) => f.write_str("make a pairing key"),
            SourceError::OwnCsr(_) => f.write_str("parse our own csr"),
            SourceError::Identity(e) => write!(f, "{e}"),
            SourceError::Store(e) => write!(f, "{e}"),
            SourceError::UnknownTarget(given) => write!(f, "no target {given}"),
        }
    }
}

impl Error for SourceError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            SourceError::Unreachable { source, .. } => Some(source),
            SourceError::Call { source, .. } => Some(source),
            SourceError::Key(e) => Some(e),
            SourceError::OwnCsr(e) => Some(e),
            SourceError::Identity(e) => e.source(),
            SourceError::Store(e) => e.source(),
            _ => None,
        }
    }
}

impl From<StoreError> for SourceError {
    fn from(e: StoreError) -> Self {
        SourceError::Store(e)
    }
}

/// Counts the requests to targets in flight, so that at most [`MAX_OUTGOING`] run at once.
#[derive(Debug, Default)]
pub struct Outgoing(AtomicUsize);

impl Outgoing {
    pub const fn new() -> Outgoing {
        Outgoing(AtomicUsize::new(0))
    }

    fn take(&self) -> Option<Slot<'_>> {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_OUTGOING).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self))
    }
}

/// One of the [`MAX_OUTGOING`] places, given back on drop.
struct Slot<'a>(&'a Outgoing);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the admin asked for, already parsed.
#[derive(Clone, Debug)]
pub struct Ask {
    /// `host:port`, normalized by [`super::parse_target`].
    pub host: String,
    /// The CA fingerprint the admin compared out of band (normalized), if given.
    pub fingerprint: Option<String>,
    /// Trust whatever CA is presented (trust on first use).
    pub insecure: bool,
    /// The address to connect to instead of resolving the host (the admin's `ip`).
    pub ip: Option<std::net::IpAddr>,
    /// The storage on the target to ask for.
    pub storage_id: Option<u64>,
    /// A pairing token from the target's admin: the target then accepts at once.
    pub token: Option<PairingToken>,
}

impl Ask {
    /// Where the target's API is reached: `ip` with the host's port, else `host:port`.
    pub fn connect_to(&self) -> String {
        match self.ip {
            Some(ip) => {
                let port = self
                    .host
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .unwrap_or(super::DEFAULT_PORT);
                std::net::SocketAddr::new(ip, port).to_string()
            }
            None => self.host.clone(),
        }
    }
}

/// This appliance as it introduces itself to a target.
#[derive(Clone, Copy, Debug)]
pub struct Me<'a> {
    pub system_uuid: &'a str,
    /// Sent as both `name` and `host`.
    pub name: &'a str,
    /// Sent when not empty.
    pub asset_tag: &'a str,
    pub version: &'a str,
}

impl<'a> Me<'a> {
    /// The request this appliance files with a target for `csr`.
    fn request(
        &self,
        csr: &'a str,
        storage_id: Option<u64>,
        token: Option<&'a PairingToken>,
    ) -> RequestBody<'a> {
        RequestBody {
            system_uuid: self.system_uuid,
            name: self.name,
            host: self.name,
            asset_tag: Some(self.asset_tag).filter(|t| !t.is_empty()),
            version: self.version,
            csr,
            storage_id,
            token,
        }
    }
}

/// What source-side pairing works with, borrowed from the caller.
pub struct SourceSide<'a> {
    pub store: &'a Store,
    pub io: &'a dyn SourceIo,
    pub outgoing: &'a Outgoing,
    pub me: Me<'a>,
}

/// Checks a target's answer against what we presented and sent.
fn check_answer(filed: &Filed, presented_fp: &str, spki_der: &[u8]) -> Result<(), BadAnswer> {
    if filed.ca_fingerprint != presented_fp {
        return Err(BadAnswer::CaMismatch {
            reported: filed.ca_fingerprint.clone(),
            presented: presented_fp.to_string(),
        });
    }
    if !valid_poll_path(&filed.poll) {
        return Err(BadAnswer::PollPath);
    }
    let expected = ca::verification_code(presented_fp, spki_der, filed.request_id);
    if filed.verification_code != expected {
        return Err(BadAnswer::Code {
            sent: filed.verification_code.clone(),
            expected,
        });
    }
    Ok(())
}

/// Asks the target `ask.host` for a pairing: read the CA it presents and apply the trust
/// rules, make a key in a new pairing directory, file the request, check the answer, and
/// commit the target row (replacing an ended pairing with the same target, under a new
/// id). Any failure after the directory was made removes it again.
pub fn request_target(
    side: &SourceSide,
    ask: Ask,
    actor: &Actor,
    now: UnixTime,
) -> Result<TargetRecord, SourceError> {
    let connect = ask.connect_to();
    let Ask {
        host,
        fingerprint,
        insecure,
        ip: _,
        storage_id,
        token,
    } = ask;
    let existing = side.store.targets()?.into_iter().find(|t| t.host == host);
    if let Some(t) = &existing {
        if matches!(
            t.status,
            TargetStatus::Pending | TargetStatus::Accepted | TargetStatus::Complete
        ) {
            return Err(SourceError::AlreadyPaired {
                host,
                status: t.status,
            });
        }
    }
    let _slot = side.outgoing.take().ok_or(SourceError::Busy)?;

    // Trust: the CA the target presents must be pinned, given, or accepted as presented.
    let presented = side
        .io
        .probe_ca(&connect)
        .map_err(|source| SourceError::Unreachable {
            host: host.clone(),
            source,
        })?;
    let presented_fp = ca::sha256_hex(&presented);
    let pinned = existing.as_ref().map(|t| t.ca_fingerprint.as_str());
    if let Err(distrust) = trust(&presented_fp, fingerprint.as_deref(), insecure, pinned) {
        return Err(SourceError::Untrusted {
            host,
            presented: presented_fp,
            distrust,
        });
    }
    let ca_pem = ca::cert_der_to_pem(&presented);

    let (key_pem, csr_pem) = side
        .io
        .key_and_csr(side.me.system_uuid)
        .map_err(SourceError::Key)?;
    let csr = ca::parse_csr(&csr_pem).map_err(SourceError::OwnCsr)?;
    let dir = side
        .io
        .create_dir(&key_pem)
        .map_err(SourceError::Identity)?;
    let filed = Filing {
        host: &host,
        connect: &connect,
        storage_id,
        token: token.as_ref(),
        ca_pem: &ca_pem,
        presented_fp: &presented_fp,
        csr_pem: &csr_pem,
        spki_der: csr.spki_der(),
        dir: &dir,
    };
    let record = match file_and_record(side, &filed, existing.as_ref(), actor, now) {
        Ok(r) => r,
        Err(e) => {
            remove_dir(side.io, &dir);
            return Err(e);
        }
    };
    if let Some(old) = existing.filter(|t| t.dir != dir) {
        remove_dir(side.io, &old.dir);
    }
    Ok(record)
}

/// What one request to a target is made of, once its key exists.
struct Filing<'a> {
    host: &'a str,
    /// `host`, or the admin's `ip` with its port.
    connect: &'a str,
    storage_id: Option<u64>,
    token: Option<&'a PairingToken>,
    ca_pem: &'a str,
    presented_fp: &'a str,
    csr_pem: &'a str,
    spki_der: &'a [u8],
    dir: &'a str,
}

/// Files the request, checks the answer, then commits the row in one transaction.
fn file_and_record(
    side: &SourceSide,
    f: &Filing,
    existing: Option<&TargetRecord>,
    actor: &Actor,
    now: UnixTime,
) -> Result<TargetRecord, SourceError> {
    let me = side.me;
    let answer = side
        .io
        .file_request(
            f.connect,
            f.ca_pem,
            &me.request(f.csr_pem, f.storage_id, f.token),
        )
        .map_err(|source| SourceError::Call {
            host: f.host.to_string(),
            source,
        })?;
    check_answer(&answer, f.presented_fp, f.spki_der).map_err(|problem| {
        SourceError::BadAnswer {
            host: f.host.to_string(),
            problem,
        }
    })?;
    side.store.write(|tx| {
        // A new pairing gets a new id, so nothing still in flight for the old one (a
        // poll, a schedule) can touch it.
        if let Some(t) = existing {
            tx.delete_target(t.id)?;
            tx.delete_items_of(t.id)?;
        }
        let r = TargetRecord {
            id: tx.next_target_id()?,
            host: f.host.to_string(),
            status: TargetStatus::Pending,
            message: None,
            created: now,
            updated: now,
            last_poll: None,
            ca_fingerprint: f.presented_fp.to_string(),
            ca_pem: f.ca_pem.to_string(),
            request_id: answer.request_id,
            poll: answer.poll.clone(),
            verification_code: answer.verification_code.clone(),
            dir: f.dir.to_string(),
            retry_after: clamp_retry_after(answer.retry_after),
            tunnel: None,
            certificate_expires: None,
            cert_serial: None,
            address: (f.connect != f.host).then(|| f.connect.to_string()),
            generation: 0,
            request_generation: 0,
            next_key: None,
            previous_generation: None,
            certificate_starts: None,
            renewed: None,
            took_over: None,
            compression: None,
        };
        tx.put_target(&r)?;
        tx.audit(&actor.audit(
            now,
            "target requested",
            format!("target:{}", f.host),
            match f.token {
                Some(t) => format!(
                    "request {} ca {} with token {}",
                    answer.request_id,
                    f.presented_fp,
                    t.id()
                ),
                None => format!("request {} ca {}", answer.request_id, f.presented_fp),
            } + &match answer.replaces_system_id {
                Some(old) => format!(", taking over system {old}"),
                None => String::new(),
            },
        ))?;
        Ok(r)
    })
}

/// Files a new request with the target of pairing `id`, whose installed certificate has
/// ended (SPEC 12: an expired certificate cannot renew). Only the pinned CA is trusted; the
/// key is a new generation in the same pairing directory, recorded in the row
/// (`next_key`) before the request leaves, so a retry after a crash or a lost answer files
/// the same key again and the target hands back the same request. The target marks it
/// `replaces_system_id`; once its admin accepts it, the poller installs the certificate
/// as usual. Returns the row, now `pending` with the new request.
pub fn refile_expired(
    side: &SourceSide,
    id: u64,
    now: UnixTime,
) -> Result<TargetRecord, SourceError> {
    let gone = || SourceError::UnknownTarget(format!("target {id}"));
    let t = side.store.target(id)?.ok_or_else(gone)?;
    let me = side.me;
    let kept = t
        .next_key
        .and_then(|g| side.io.read_key(&t.dir, g).ok().map(|key| (g, key)));
    let (generation, key_pem) = match kept {
        Some(kept) => kept,
        None => {
            let (key, _) = side
                .io
                .key_and_csr(me.system_uuid)
                .map_err(SourceError::Key)?;
            let generation = t.fresh_generation();
            side.io
                .write_key(&t.dir, generation, &key)
                .map_err(SourceError::Identity)?;
            side.store.write(|tx| {
                let mut r = tx.target(id)?.ok_or_else(gone)?;
                r.next_key = Some(generation);
                tx.put_target(&r)?;
                Ok::<_, SourceError>(())
            })?;
            (generation, key)
        }
    };
    let csr_pem = ca::csr_for_key(&key_pem, me.system_uuid).map_err(SourceError::Key)?;
    let csr = ca::parse_csr(&csr_pem).map_err(SourceError::OwnCsr)?;
    let answer = side
        .io
        .file_request(t.connect_to(), &t.ca_pem, &me.request(&csr_pem, None, None))
        .map_err(|source| SourceError::Call {
            host: t.host.clone(),
            source,
        })?;
    check_answer(&answer, &t.ca_fingerprint, csr.spki_der()).map_err(|problem| {
        SourceError::BadAnswer {
            host: t.host.clone(),
            problem,
        }
    })?;
    side.store.write(|tx| {
        let mut r = tx.target(id)?.ok_or_else(gone)?;
        r.request_id = answer.request_id;
        r.poll = answer.poll.clone();
        r.verification_code = answer.verification_code.clone();
        r.retry_after = clamp_retry_after(answer.retry_after);
        r.request_generation = generation;
        r.next_key = None;
        r.status = TargetStatus::Pending;
        r.message = None;
        r.updated = now;
        tx.put_target(&r)?;
        tx.audit(
            &Actor {
                user: "-".into(),
                address: "local".into(),
            }
            .audit(
                now,
                "target requested again",
                format!("target:{}", r.host),
                format!(
                    "certificate {} expired; request {} key generation {generation}",
                    t.cert_serial.clone().unwrap_or_default(),
                    answer.request_id
                ),
            ),
        )?;
        Ok(r)
    })
}

/// Removes a pairing directory that no committed row names; a failure is only logged,
/// since the start-up sweep removes such directories.
fn remove_dir(io: &dyn SourceIo, name: &str) {
    if let Err(e) = io.remove_dir(name) {
        log::warn!("remove pairing directory {name}: {}", Chain(&e));
    }
}

/// Forgets the pairing with the target `given` (`host[:port]`): its row and then its
/// directory with the key and certificates.
pub fn forget_target(
    store: &Store,
    io: &dyn SourceIo,
    given: &str,
    actor: &Actor,
    now: UnixTime,
) -> Result<TargetRecord, SourceError> {
    let unknown = || SourceError::UnknownTarget(given.chars().take(260).collect());
    let found = store
        .targets()?
        .into_iter()
        .find(|t| same_target(&t.host, given))
        .ok_or_else(unknown)?;
    let deleted = store.write(|tx| {
        let gone = tx.delete_target(found.id)?;
        if gone {
            // Its replication queue goes with it; what the target received stays there.
            tx.delete_items_of(found.id)?;
            tx.audit(&actor.audit(
                now,
                "target forgotten",
                format!("target:{}", found.host),
                format!("request {}", found.request_id),
            ))?;
        }
        Ok::<_, SourceError>(gone)
    })?;
    if !deleted {
        return Err(unknown());
    }
    io.remove_dir(&found.dir).map_err(SourceError::Identity)?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use super::*;
    use crate::ca::Ca;

    const NOW: UnixTime = 1_767_225_600;
    const HOST: &str = "backup.example:8443";

    type Answer = Box<dyn Fn(&RequestBody, &str) -> Result<Filed, CallError>>;

    /// The I/O of a pairing without sockets or files: a target that presents `presented`
    /// and answers with `answer`; directories are names in a set.
    struct Fake {
        presented: Vec<u8>,
        answer: Answer,
        dirs: RefCell<BTreeSet<String>>,
        made: RefCell<u32>,
        calls: RefCell<u32>,
        /// Every address probed or called, in order.
        contacted: RefCell<Vec<String>>,
        /// Keys of later generations, by (directory, generation).
        keys: RefCell<std::collections::BTreeMap<(String, u64), String>>,
    }

    impl SourceIo for Fake {
        fn probe_ca(&self, host: &str) -> Result<Vec<u8>, TlsError> {
            self.contacted.borrow_mut().push(host.to_string());
            Ok(self.presented.clone())
        }
        fn file_request(
            &self,
            host: &str,
            ca_pem: &str,
            body: &RequestBody,
        ) -> Result<Filed, CallError> {
            self.contacted.borrow_mut().push(host.to_string());
            *self.calls.borrow_mut() += 1;
            assert_eq!(ca_pem, ca::cert_der_to_pem(&self.presented), "pinned CA");
            (self.answer)(body, ca_pem)
        }
        fn key_and_csr(&self, system_uuid: &str) -> Result<(String, String), CaError> {
            ca::generate_client_key_and_csr(system_uuid)
        }
        fn create_dir(&self, _key_pem: &str) -> Result<String, IdentityError> {
            let mut made = self.made.borrow_mut();
            *made += 1;
            let name = format!("{:032x}", *made);
            self.dirs.borrow_mut().insert(name.clone());
            Ok(name)
        }
        fn remove_dir(&self, name: &str) -> Result<(), IdentityError> {
            self.dirs.borrow_mut().remove(name);
            Ok(())
        }
        fn write_key(
            &self,
            dir: &str,
            generation: u64,
            key_pem: &str,
        ) -> Result<(), IdentityError> {
            self.keys
                .borrow_mut()
                .insert((dir.to_string(), generation), key_pem.to_string());
            Ok(())
        }
        fn read_key(&self, dir: &str, generation: u64) -> Result<String, IdentityError> {
            self.keys
                .borrow()
                .get(&(dir.to_string(), generation))
                .cloned()
                .ok_or_else(|| IdentityError::BadName(dir.to_string()))
        }
    }

    /// A target's CA (DER) and its fingerprint.
    fn target_ca() -> (Vec<u8>, String) {
        let at = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        let der = Ca::generate("target ca", at).unwrap().cert_der().to_vec();
        let fp = ca::sha256_hex(&der);
        (der, fp)
    }

    /// What a genuine target answers: its CA, a spool path, the right code.
    fn genuine(fp: &str) -> Filed {
        Filed {
            request_id: 7,
            poll: "/replication/v1/spool/0123456789abcdef0123456789abcdef/".into(),
            retry_after: 30,
            expires: NOW + 600,
            verification_code: String::new(),
            ca_fingerprint: fp.to_string(),
            status: Some("pending".into()),
            replaces_system_id: None,
        }
    }

    fn code_for(fp: &str, body: &RequestBody, id: u64) -> String {
        let csr = ca::parse_csr(body.csr).unwrap();
        ca::verification_code(fp, csr.spki_der(), id)
    }

    /// A target that answers `genuine` changed by `change`, with the right code unless
    /// `change` sets another.
    fn target(change: impl Fn(&mut Filed) + 'static) -> Fake {
        let (der, fp) = target_ca();
        let answer_fp = fp.clone();
        fake(
            der,
            Box::new(move |body, _| {
                let mut f = genuine(&answer_fp);
                f.verification_code = code_for(&answer_fp, body, f.request_id);
                change(&mut f);
                Ok(f)
            }),
        )
    }

    fn fake(presented: Vec<u8>, answer: Answer) -> Fake {
        Fake {
            presented,
            answer,
            dirs: RefCell::default(),
            made: RefCell::new(0),
            calls: RefCell::new(0),
            contacted: RefCell::default(),
            keys: RefCell::default(),
        }
    }

    fn temp_store(name: &str) -> Store {
        let dir = std::env::temp_dir().join(format!(
            "replgate-source-request-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        Store::open(&dir.join("replgate.redb")).unwrap()
    }

    fn ask(fingerprint: Option<&str>, insecure: bool) -> Ask {
        Ask {
            host: HOST.into(),
            fingerprint: fingerprint.map(String::from),
            insecure,
            ip: None,
            storage_id: None,
            token: None,
        }
    }

    fn actor() -> Actor {
        Actor {
            user: "root".into(),
            address: "192.0.2.1".into(),
        }
    }

    fn run(
        store: &Store,
        io: &Fake,
        outgoing: &Outgoing,
        ask: Ask,
    ) -> Result<TargetRecord, SourceError> {
        let side = SourceSide {
            store,
            io,
            outgoing,
            me: Me {
                system_uuid: "5f0c7a52-3f5e-4a6b-9c0d-2b1e8f7a6c11",
                name: "src.example",
                asset_tag: "",
                version: "1.0",
            },
        };
        request_target(&side, ask, &actor(), NOW)
    }

    #[test]
    fn an_expired_pairing_files_again_with_one_new_key_even_when_the_first_answer_is_lost() {
        let store = temp_store("refile");
        let sent = std::rc::Rc::new(RefCell::new(Vec::<String>::new()));
        let fail_first = std::rc::Rc::new(RefCell::new(false));
        let (der, fp) = target_ca();
        let (seen, fail) = (sent.clone(), fail_first.clone());
        let io = fake(
            der,
            Box::new(move |body, _| {
                let key = ca::parse_csr(body.csr).unwrap().fingerprint();
                seen.borrow_mut().push(key);
                if fail.replace(false) {
                    return Err(CallError::Failed("connection reset".into()));
                }
                // The first pairing is request 7, the one filed again 9.
                let id = if seen.borrow().len() == 1 { 7 } else { 9 };
                let mut f = genuine(&fp);
                f.request_id = id;
                f.verification_code = code_for(&fp, body, id);
                Ok(f)
            }),
        );
        let paired = run(&store, &io, &Outgoing::new(), ask(None, true)).unwrap();
        // As the poller leaves it once the certificate of request 7 is installed.
        let mut installed = paired.clone();
        installed.status = TargetStatus::Complete;
        installed.cert_serial = Some("aa".into());
        installed.certificate_expires = Some(NOW - 1);
        store.write(|tx| tx.put_target(&installed)).unwrap();
        sent.borrow_mut().clear();
        fail_first.replace(true);
        let side = SourceSide {
            store: &store,
            io: &io,
            outgoing: &Outgoing::new(),
            me: Me {
                system_uuid: "5f0c7a52-3f5e-4a6b-9c0d-2b1e8f7a6c11",
                name: "src.example",
                asset_tag: "",
                version: "1.0",
            },
        };
        let e = refile_expired(&side, paired.id, NOW).unwrap_err();
        assert!(matches!(e, SourceError::Call { .. }), "{e:?}");
        let kept = store.target(paired.id).unwrap().unwrap();
        assert_eq!(
            kept.next_key,
            Some(1),
            "the key is recorded before the call"
        );
        assert_eq!((kept.status, kept.request_id), (TargetStatus::Complete, 7));
        let r = refile_expired(&side, paired.id, NOW + 5).unwrap();
        let sent = sent.borrow();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], sent[1], "the retry asks for the same key");
        assert_eq!((r.status, r.request_id), (TargetStatus::Pending, 9));
        assert_eq!(
            (r.generation, r.request_generation, r.next_key),
            (0, 1, None)
        );
        assert!(r.is_repairing() && !r.is_installed());
        assert_eq!(
            r.cert_serial.as_deref(),
            Some("aa"),
            "the old one stays until replaced"
        );
        assert_eq!(r.generations_in_use(), [0, 1]);
        let audit = store.audit(0, 10).unwrap();
        assert_eq!(audit.last().unwrap().1.action, "target requested again");
    }

    #[test]
    fn ip_is_where_the_target_is_reached_and_storage_id_is_asked_for() {
        let store = temp_store("ip");
        let (der, fp) = target_ca();
        let io = fake(
            der,
            Box::new(move |body, _| {
                assert_eq!(body.storage_id, Some(2));
                assert_eq!(body.asset_tag, None, "an empty asset tag is not sent");
                let mut f = genuine(&fp);
                f.verification_code = code_for(&fp, body, f.request_id);
                Ok(f)
            }),
        );
        let mut a = ask(None, true);
        a.ip = Some("::1".parse().unwrap());
        a.storage_id = Some(2);
        assert_eq!(
            a.connect_to(),
            format!("[::1]:{}", HOST.rsplit(':').next().unwrap())
        );
        let r = run(&store, &io, &Outgoing::new(), a.clone()).unwrap();
        let connect = a.connect_to();
        assert_eq!(
            *io.contacted.borrow(),
            vec![connect.clone(), connect.clone()]
        );
        // The row keeps the name the admin gave and the address the poller must use.
        assert_eq!(r.host, HOST);
        assert_eq!(r.address.as_deref(), Some(connect.as_str()));
        assert_eq!(r.connect_to(), connect);
        // Without ip nothing changes: the host is resolved, no address is stored.
        let store = temp_store("no-ip");
        let io = target(|_| {});
        let r = run(&store, &io, &Outgoing::new(), ask(None, true)).unwrap();
        assert_eq!(
            *io.contacted.borrow(),
            vec![HOST.to_string(), HOST.to_string()]
        );
        assert_eq!((r.address.as_deref(), r.connect_to()), (None, HOST));
    }

    #[test]
    fn a_trusted_target_is_filed_and_recorded_with_its_ca_pinned() {
        let store = temp_store("ok");
        let io = target(|_| {});
        let fp = ca::sha256_hex(&io.presented);
        let r = run(&store, &io, &Outgoing::new(), ask(None, true)).unwrap();
        assert_eq!(r.status, TargetStatus::Pending);
        assert_eq!(r.host, HOST);
        assert_eq!(r.ca_fingerprint, fp);
        assert_eq!(r.request_id, 7);
        assert_eq!(r.retry_after, 30);
        assert_eq!(r.created, NOW);
        assert_eq!(io.dirs.borrow().iter().collect::<Vec<_>>(), vec![&r.dir]);
        assert_eq!(store.targets().unwrap(), vec![r.clone()]);
        let audit = store.audit(0, 10).unwrap();
        assert_eq!(audit.last().unwrap().1.action, "target requested");
        // Open now: asking again is a conflict and calls nobody.
        let again = run(&store, &io, &Outgoing::new(), ask(None, true));
        assert!(
            matches!(
                again,
                Err(SourceError::AlreadyPaired {
                    status: TargetStatus::Pending,
                    ..
                })
            ),
            "{again:?}"
        );
        assert_eq!(*io.calls.borrow(), 1);
    }

    #[test]
    fn an_unknown_ca_is_refused_with_its_fingerprint_before_any_key_exists() {
        let store = temp_store("unknown");
        let io = target(|_| {});
        let fp = ca::sha256_hex(&io.presented);
        let e = run(&store, &io, &Outgoing::new(), ask(None, false)).unwrap_err();
        match &e {
            SourceError::Untrusted {
                presented,
                distrust: Distrust::Unknown,
                ..
            } => assert_eq!(presented, &fp),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains(&fp), "{e}");
        assert_eq!(*io.made.borrow(), 0);
        assert_eq!(*io.calls.borrow(), 0);
        assert!(store.targets().unwrap().is_empty());
        // The fingerprint the admin compared is then enough.
        run(&store, &io, &Outgoing::new(), ask(Some(&fp), false)).unwrap();
    }

    #[test]
    fn a_ca_other_than_the_given_or_pinned_one_is_a_mismatch() {
        let store = temp_store("mismatch");
        let io = target(|_| {});
        let other = "ab".repeat(32);
        let e = run(&store, &io, &Outgoing::new(), ask(Some(&other), true)).unwrap_err();
        assert!(
            matches!(&e, SourceError::Untrusted { distrust: Distrust::Mismatch { expected }, .. } if *expected == other),
            "{e:?}"
        );
        // A pinned CA (an earlier pairing, now rejected) wins over `insecure`.
        let mut r = run(&store, &io, &Outgoing::new(), ask(None, true)).unwrap();
        r.status = TargetStatus::Rejected;
        r.ca_fingerprint = other.clone();
        store.write(|tx| tx.put_target(&r)).unwrap();
        let e = run(&store, &io, &Outgoing::new(), ask(None, true)).unwrap_err();
        assert!(
            matches!(&e, SourceError::Untrusted { distrust: Distrust::Mismatch { expected }, .. } if *expected == other),
            "{e:?}"
        );
        assert_eq!(
            io.dirs.borrow().len(),
            1,
            "only the first pairing's directory"
        );
    }

    #[test]
    fn a_bad_answer_is_refused_and_its_key_directory_removed() {
        type Case = (Fake, fn(&BadAnswer) -> bool);
        let cases: Vec<Case> = vec![
            (
                target(|f| f.verification_code = "000-000".into()),
                |p| matches!(p, BadAnswer::Code { sent, .. } if sent == "000-000"),
            ),
            (
                target(|f| f.poll = "/replication/v1/spool/../".into()),
                |p| *p == BadAnswer::PollPath,
            ),
            (target(|f| f.ca_fingerprint = "cd".repeat(32)), |p| {
                matches!(p, BadAnswer::CaMismatch { .. })
            }),
        ];
        for (i, (io, expected)) in cases.into_iter().enumerate() {
            let store = temp_store(&format!("bad-answer-{i}"));
            let e = run(&store, &io, &Outgoing::new(), ask(None, true)).unwrap_err();
            match &e {
                SourceError::BadAnswer { problem, .. } => assert!(expected(problem), "{e:?}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(*io.made.borrow(), 1, "a key was made");
            assert!(io.dirs.borrow().is_empty(), "and removed again: {e}");
            assert!(store.targets().unwrap().is_empty());
        }
    }

    #[test]
    fn a_refusal_by_the_target_passes_its_retry_after_and_removes_the_key_directory() {
        let (der, _) = target_ca();
        let refuse = |retry_after: Option<u64>| -> Answer {
            Box::new(move |_, _| {
                Err(CallError::Refused {
                    status: 429,
                    message: "too many open requests from 192.0.2.1".into(),
                    retry_after,
                    open_request: None,
                })
            })
        };
        for (given, passed) in [
            (Some(17), 17),
            (None, DEFAULT_RETRY_AFTER),
            (Some(u64::MAX), super::super::MAX_RETRY_AFTER),
        ] {
            let store = temp_store("429");
            let io = fake(der.clone(), refuse(given));
            let e = run(&store, &io, &Outgoing::new(), ask(None, true)).unwrap_err();
            assert_eq!(e.retry_after(), Some(passed), "{e:?}");
            assert!(io.dirs.borrow().is_empty());
            assert!(store.targets().unwrap().is_empty());
        }
        let io = fake(
            der,
            Box::new(|_, _| Err(CallError::Failed("connection reset".into()))),
        );
        let e = run(
            &temp_store("failed"),
            &io,
            &Outgoing::new(),
            ask(None, true),
        )
        .unwrap_err();
        assert!(matches!(e, SourceError::Call { .. }) && e.retry_after().is_none());
        assert_eq!(
            Chain(&e).to_string(),
            format!("target {HOST}: connection reset")
        );
        assert!(io.dirs.borrow().is_empty());
    }

    #[test]
    fn asking_again_after_an_ended_pairing_replaces_row_and_directory() {
        let store = temp_store("again");
        let io = target(|_| {});
        let mut first = run(&store, &io, &Outgoing::new(), ask(None, true)).unwrap();
        first.status = TargetStatus::Expired;
        store.write(|tx| tx.put_target(&first)).unwrap();
        let second = run(&store, &io, &Outgoing::new(), ask(None, false)).unwrap();
        assert_ne!(second.id, first.id);
        assert_eq!(store.targets().unwrap(), vec![second.clone()]);
        assert_eq!(
            io.dirs.borrow().iter().collect::<Vec<_>>(),
            vec![&second.dir]
        );
    }

    #[test]
    fn only_max_outgoing_requests_run_at_once() {
        let store = temp_store("busy");
        let io = target(|_| {});
        let outgoing = Outgoing::new();
        let held: Vec<_> = (0..MAX_OUTGOING)
            .map(|_| outgoing.take().unwrap())
            .collect();
        let e = run(&store, &io, &outgoing, ask(None, true)).unwrap_err();
        assert!(matches!(e, SourceError::Busy), "{e:?}");
        drop(held);
        run(&store, &io, &outgoing, ask(None, true)).unwrap();
        assert_eq!(
            outgoing.0.load(Ordering::SeqCst),
            0,
            "the place is given back"
        );
    }

    #[test]
    fn forgetting_drops_the_row_and_the_directory() {
        let store = temp_store("forget");
        let io = target(|_| {});
        let r = run(&store, &io, &Outgoing::new(), ask(None, true)).unwrap();
        let gone = forget_target(&store, &io, "BACKUP.example", &actor(), NOW).unwrap();
        assert_eq!(gone.id, r.id);
        assert!(store.targets().unwrap().is_empty());
        assert!(io.dirs.borrow().is_empty());
        let e = forget_target(&store, &io, "backup.example", &actor(), NOW).unwrap_err();
        assert!(matches!(e, SourceError::UnknownTarget(_)), "{e:?}");
    }
}
