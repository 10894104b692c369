//! Certificate upkeep, source side (SPEC 12), run as a poller job: renews the installed
//! certificate over the tunnel with a new key, installs the renewed generation (the row
//! chooses it, only once its key and checked certificate are on disk), proves it with a
//! hello and only then drops the old generation; files a new request once a certificate
//! has ended. Also follows a rollover of the target's CA (SPEC 22): at each heartbeat and
//! before each renewal it reads the target's CAs over the tunnel, trusts a new CA the
//! pinned one endorsed, pins it once it is in force, and renews at once onto it when the
//! target asks; and it recognises a target that replaced its CA while this appliance was
//! away. The network code of renewal; the rules are in `source::upkeep`,
//! `source::rollover` and `lifecycle`.
//!
//! Crash safety, step by step (a kill -9 anywhere leaves a working pair, or one that
//! renews on the next attempt):
//! 1. The new key is written, then recorded as the row's `next_key`. A crash before the
//!    record leaves a stray file that the next attempt overwrites.
//! 2. The CSR for that key goes out. If the answer is lost, the retry sends a CSR for the
//!    same key and the target hands back the certificate it already issued.
//! 3. The checked certificate is written beside its key; a crash here is picked up by the
//!    next attempt, which installs the file without asking again.
//! 4. One transaction makes it the installed generation (`generation`, `cert_serial`),
//!    keeping the old one as `previous_generation`.
//! 5. A hello with it proves it (and retires the old serial on the target); then the old
//!    generation's files go. A crash before that proves again on the next attempt.

use std::fmt;
use std::time::Duration;

use crate::ca::{self, CaError, DeliveryError};
use crate::config::Fault;
use crate::identity::{self, IdentityError, TargetDirs};
use crate::model::{format_utc, UnixTime};
use crate::pairing::source::request::{self, Me, Outgoing, SourceError, SourceSide};
use crate::pairing::source::rollover::{self as ca_rollover, Change, Follow, FollowRefusal};
use crate::pairing::source::{self, Upkeep};
use crate::remote::{LiveSource, Remote, RemoteError};
use crate::store::{AuditRecord, Store, StoreError, TargetRecord};
use crate::wire::protocol::Hello;

/// What the source's pairing jobs need (the poller's polls, and the upkeep here that it
/// runs), built once by the daemon.
pub(crate) struct SourceContext {
    pub store: Store,
    /// One directory per pairing with its key and certificates.
    pub dirs: TargetDirs,
    pub poll_interval: Duration,
    pub heartbeat: Duration,
    /// This appliance as it introduces itself when it files a request again.
    pub system_uuid: String,
    pub name: String,
    pub asset_tag: String,
    /// Crash points for the renewal crash tests (`Fault::None` in production).
    pub fault: Fault,
}

/// Why an upkeep step failed; it is retried after a backoff.
#[derive(Debug)]
pub(crate) enum UpkeepError {
    /// The pairing's directory, key or certificate could not be used.
    Identity(IdentityError),
    /// A key or CSR could not be made.
    Key(CaError),
    /// The renewed certificate failed a check (another key, another CA, out of date).
    Refused(DeliveryError),
    /// The target could not be reached, or refused.
    Remote {
        action: &'static str,
        address: String,
        source: RemoteError,
    },
    /// The row could not be read or written.
    Record(StoreError),
    /// Filing a new request failed.
    Refile(SourceError),
    /// The row changed meanwhile (forgotten, or another generation installed).
    Changed,
    /// Nothing is installed, or no tunnel address is known.
    NotInstalled,
    /// The target's answer about its CAs was not followed (a new CA the pinned one did
    /// not endorse, or a CA in force this appliance never trusted).
    CaRefused(FollowRefusal),
}

impl fmt::Display for UpkeepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpkeepError::Identity(e) => write!(f, "{e}"),
            UpkeepError::Key(_) => f.write_str("make a key"),
            UpkeepError::Refused(_) => f.write_str("renewed certificate refused"),
            UpkeepError::Remote {
                action, address, ..
            } => write!(f, "{action} at {address}"),
            UpkeepError::Record(_) => f.write_str("record the certificate"),
            UpkeepError::Refile(e) => write!(f, "{e}"),
            UpkeepError::Changed => f.write_str("the pairing changed meanwhile"),
            UpkeepError::NotInstalled => f.write_str("no certificate or tunnel is installed"),
            UpkeepError::CaRefused(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for UpkeepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpkeepError::Identity(e) => e.source(),
            UpkeepError::Key(e) => Some(e),
            UpkeepError::Refused(e) => Some(e),
            UpkeepError::Remote { source, .. } => Some(source),
            UpkeepError::Record(e) => Some(e),
            UpkeepError::Refile(e) => e.source(),
            UpkeepError::CaRefused(e) => e.source(),
            UpkeepError::Changed | UpkeepError::NotInstalled => None,
        }
    }
}

impl From<IdentityError> for UpkeepError {
    fn from(e: IdentityError) -> Self {
        UpkeepError::Identity(e)
    }
}

impl From<StoreError> for UpkeepError {
    fn from(e: StoreError) -> Self {
        UpkeepError::Record(e)
    }
}

/// Runs one upkeep step for target `t`.
pub(crate) fn run(
    ctx: &SourceContext,
    t: &TargetRecord,
    job: &Upkeep,
    now: UnixTime,
) -> Result<(), UpkeepError> {
    let tunnel = t.tunnel.as_deref().ok_or(UpkeepError::NotInstalled)?;
    match job {
        Upkeep::Prove { .. } => prove(ctx, t.id, tunnel).map(|_| ()),
        Upkeep::Renew => renew(ctx, t, tunnel, now),
        Upkeep::Refile => refile(ctx, t, now),
    }
}

/// Applies `change` to the stored row `id` in one transaction, if it is still the
/// pairing `expect` says (the same installed generation); else nothing.
fn update_if(
    ctx: &SourceContext,
    id: u64,
    expect: impl Fn(&TargetRecord) -> bool,
    change: impl FnOnce(&mut TargetRecord),
) -> Result<TargetRecord, UpkeepError> {
    ctx.store.write(|tx| {
        let mut r = tx.target(id)?.ok_or(UpkeepError::Changed)?;
        if !expect(&r) {
            return Err(UpkeepError::Changed);
        }
        change(&mut r);
        tx.put_target(&r)?;
        Ok(r)
    })
}

/// Reads the target's CAs over the tunnel with the installed certificate (whose server
/// verified against the CAs trusted now) and follows a rollover of them
/// (`source::rollover::follow`): an endorsed new CA is trusted too, the new CA is pinned
/// once it is in force, an aborted one is dropped; each change is one audited
/// transaction. Returns the row as it is then, and whether the target asks for a renewal
/// at once (the installed certificate is on another CA than the one that signs now).
pub(crate) fn follow_ca(
    ctx: &SourceContext,
    id: u64,
    tunnel: &str,
    now: UnixTime,
) -> Result<(TargetRecord, bool), UpkeepError> {
    let (row, _, answer) = over_the_tunnel(
        ctx,
        id,
        tunnel,
        "read the target's ca over the tunnel",
        |r| r.ca(),
    )?;
    let followed = ca_rollover::follow(&row, &answer, now).map_err(|e| {
        log::warn!(
            "target {id} ({}): {} (answered over the tunnel at {tunnel})",
            row.host,
            crate::model::Chain(&e)
        );
        UpkeepError::CaRefused(e)
    })?;
    let Follow::Trust {
        ca_pem,
        fingerprint,
        change,
    } = followed
    else {
        return Ok((row, answer.renew));
    };
    let (action, detail) = match &change {
        Change::Learned(fp) => (
            "target ca learned",
            format!(
                "new ca {fp}, endorsed by the pinned {}, trusted too",
                row.ca_fingerprint
            ),
        ),
        Change::Promoted(fp) => (
            "target ca pinned",
            format!("ca {fp} in force, {} no longer trusted", row.ca_fingerprint),
        ),
        Change::Dropped(fp) => (
            "target ca dropped",
            format!("the target's rollover to {fp} was aborted; {fp} no longer trusted"),
        ),
    };
    let row = ctx.store.write(|tx| {
        let mut r = tx.target(id)?.ok_or(UpkeepError::Changed)?;
        if r.ca_pem != row.ca_pem {
            return Err(UpkeepError::Changed);
        }
        r.ca_pem = ca_pem.clone();
        r.ca_fingerprint = fingerprint.clone();
        r.updated = now;
        tx.put_target(&r)?;
        tx.audit(&AuditRecord {
            time: now,
            user: "-".into(),
            address: tunnel.to_string(),
            action: action.into(),
            object: format!("target:{}", r.host),
            detail: detail.clone(),
        })?;
        Ok(r)
    })?;
    Ok((row, answer.renew))
}

/// When target `t` no longer verifies (or refuses this appliance's certificate): the
/// message that says so plainly if it replaced its CA while this appliance was away (a
/// new CA the pinned one endorsed, `source::rollover::replaced_while_away`); None when
/// that is not what happened, or it cannot be told.
pub(crate) fn replaced_ca_message(t: &TargetRecord, now: UnixTime) -> Option<String> {
    let (presented, answer) = crate::remote::presented_ca(t.connect_to())?;
    let fingerprint = ca_rollover::replaced_while_away(t, &presented, &answer, now)?;
    Some(format!(
        "the target replaced its CA while this appliance was offline: pair again (a pairing \
         token works); its new CA {fingerprint} is endorsed by the pinned {} (compare it with \
         the target's admin)",
        t.ca_fingerprint
    ))
}

/// A complete pairing's heartbeat: follow the target's CAs, and renew at once when the
/// target asks (a rollover of its CA started, or was aborted, since the installed
/// certificate was issued) and no other upkeep comes first.
pub(crate) fn heartbeat(
    ctx: &SourceContext,
    t: &TargetRecord,
    now: UnixTime,
) -> Result<(), UpkeepError> {
    let tunnel = t.tunnel.as_deref().ok_or(UpkeepError::NotInstalled)?;
    let (row, renew_now) = follow_ca(ctx, t.id, tunnel, now)?;
    if !renew_now || !matches!(source::upkeep(&row, now), None | Some(Upkeep::Renew)) {
        return Ok(());
    }
    log::info!(
        "target {} ({}): the target asks to renew onto the ca that signs now; renewing at once",
        t.id,
        t.host
    );
    renew_followed(ctx, &row, tunnel, now)
}

/// Renews `t`'s installed certificate over the tunnel at `tunnel`, after following the
/// target's CAs (so that a certificate of a new CA verifies), steps 1–5 above.
fn renew(
    ctx: &SourceContext,
    t: &TargetRecord,
    tunnel: &str,
    now: UnixTime,
) -> Result<(), UpkeepError> {
    let (row, _) = follow_ca(ctx, t.id, tunnel, now)?;
    if row.generation != t.generation {
        return Err(UpkeepError::Changed);
    }
    renew_followed(ctx, &row, tunnel, now)
}

/// Steps 1–5 above for `t` as it is now.
fn renew_followed(
    ctx: &SourceContext,
    t: &TargetRecord,
    tunnel: &str,
    now: UnixTime,
) -> Result<(), UpkeepError> {
    let dir = ctx.dirs.open(&t.dir)?;
    let same = |r: &TargetRecord| r.generation == t.generation && r.is_installed();
    // 1. The key: the one recorded for this renewal, else a new one, recorded before the
    // CSR leaves.
    let kept = t
        .next_key
        .and_then(|g| dir.key_of(g).ok().map(|key| (g, key)));
    let (generation, key_pem) = match kept {
        Some(kept) => kept,
        None => {
            let (key, _) =
                ca::generate_client_key_and_csr(&ctx.system_uuid).map_err(UpkeepError::Key)?;
            let generation = t.fresh_generation();
            dir.write_key(generation, &key)?;
            update_if(ctx, t.id, same, |r| r.next_key = Some(generation))?;
            (generation, key)
        }
    };
    let check = |cert_pem: &str| {
        ca::check_delivered(cert_pem, &t.ca_pem, &key_pem, &t.ca_fingerprint, now)
            .map_err(UpkeepError::Refused)
    };
    // 3 (after a crash): a certificate received for this key is installed as it is.
    let on_disk = dir
        .certificate_of(generation)
        .ok()
        .filter(|pem| check(pem).is_ok());
    let cert_pem = match on_disk {
        Some(pem) => pem,
        None => {
            // 2. Ask, authenticated by the installed certificate.
            let current = identity::installed(&ctx.store, &ctx.dirs, t.id)?
                .filter(|c| c.generation == t.generation)
                .ok_or(UpkeepError::Changed)?;
            let csr = ca::csr_for_key(&key_pem, &ctx.system_uuid).map_err(UpkeepError::Key)?;
            let remote = |source| UpkeepError::Remote {
                action: "renew over the tunnel",
                address: tunnel.to_string(),
                source,
            };
            let renewal = Remote::tunnel(tunnel, &t.ca_pem, &current.cert_pem, &current.key_pem)
                .and_then(|r| r.renew(&csr))
                .map_err(remote)?;
            check(&renewal.certificate)?;
            dir.write_certificate(generation, &renewal.certificate)?;
            ctx.fault.crash_if(Fault::CrashAfterRenewReceive);
            renewal.certificate
        }
    };
    let delivered = check(&cert_pem)?;
    // 4. Install: from this commit on, the row chooses the new generation (an audited
    // event, so also the log line of the renewal).
    ctx.store.write(|tx| {
        let mut r = tx.target(t.id)?.ok_or(UpkeepError::Changed)?;
        if !(same(&r) && r.next_key == Some(generation)) {
            return Err(UpkeepError::Changed);
        }
        r.previous_generation = Some(r.generation);
        r.generation = generation;
        r.next_key = None;
        r.cert_serial = Some(delivered.serial.clone());
        r.certificate_expires = Some(delivered.not_after);
        r.certificate_starts = Some(delivered.not_before);
        r.renewed = Some(now);
        r.message = None;
        r.updated = now;
        tx.put_target(&r)?;
        tx.audit(&AuditRecord {
            time: now,
            user: "-".into(),
            address: tunnel.to_string(),
            action: "certificate renewed".into(),
            object: format!("target:{}", t.host),
            detail: format!(
                "serial {} -> {} generation {generation} until {}",
                t.cert_serial.as_deref().unwrap_or("-"),
                delivered.serial,
                format_utc(delivered.not_after)
            ),
        })?;
        Ok(())
    })?;
    ctx.fault.crash_if(Fault::CrashAfterRenewInstall);
    // 5. Prove it, then drop the old generation.
    prove(ctx, t.id, tunnel).map(|_| ())
}

/// One call through the tunnel at `tunnel` with the installed generation of pairing `id`,
/// trusting the CAs its row holds; with the row and the identity as read.
fn over_the_tunnel<T>(
    ctx: &SourceContext,
    id: u64,
    tunnel: &str,
    action: &'static str,
    call: impl FnOnce(Remote) -> Result<T, RemoteError>,
) -> Result<(TargetRecord, identity::ClientIdentity, T), UpkeepError> {
    let installed =
        identity::installed(&ctx.store, &ctx.dirs, id)?.ok_or(UpkeepError::NotInstalled)?;
    let row = ctx.store.target(id)?.ok_or(UpkeepError::Changed)?;
    let answer = Remote::tunnel(tunnel, &row.ca_pem, &installed.cert_pem, &installed.key_pem)
        .and_then(call)
        .map_err(|source| UpkeepError::Remote {
            action,
            address: tunnel.to_string(),
            source,
        })?;
    Ok((row, installed, answer))
}

/// Says hello through the tunnel at `tunnel` with the installed generation of pairing
/// `id`; once that worked, a generation it replaced is dropped (row first, then files).
pub(crate) fn prove(ctx: &SourceContext, id: u64, tunnel: &str) -> Result<Hello, UpkeepError> {
    let (row, installed, hello) =
        over_the_tunnel(ctx, id, tunnel, "hello through the tunnel", |r| r.hello())?;
    let Some(previous) = row.previous_generation else {
        return Ok(hello);
    };
    let row = update_if(
        ctx,
        id,
        |r| r.generation == installed.generation,
        |r| r.previous_generation = None,
    )?;
    let removed = ctx
        .dirs
        .open(&row.dir)?
        .remove_generations_except(&row.generations_in_use())?;
    log::info!(
        "target {id}: certificate {} (generation {}) proven; generation {previous} dropped ({} files)",
        installed.serial,
        installed.generation,
        removed.len()
    );
    Ok(hello)
}

/// Rows written before renewals knew no `certificate_starts`: read it from the installed
/// certificate, so that their renewal is planned like any other. Run once at start.
pub(crate) fn backfill_starts(ctx: &SourceContext) {
    let targets = match ctx.store.targets() {
        Ok(t) => t,
        Err(e) => {
            log::warn!("poller: read targets: {}", crate::model::Chain(&e));
            return;
        }
    };
    for t in targets
        .iter()
        .filter(|t| t.certificate_starts.is_none() && t.is_installed())
    {
        let starts = identity::installed(&ctx.store, &ctx.dirs, t.id)
            .ok()
            .flatten()
            .and_then(|c| ca::cert_pem_to_der(&c.cert_pem).ok())
            .and_then(|der| ca::cert_info(&der).ok())
            .map(|info| info.not_before);
        let Some(starts) = starts else {
            log::warn!(
                "target {}: cannot read the installed certificate to plan its renewal",
                t.id
            );
            continue;
        };
        let same = |r: &TargetRecord| r.generation == t.generation;
        match update_if(ctx, t.id, same, |r| r.certificate_starts = Some(starts)) {
            Ok(_) => log::info!(
                "target {}: certificate {} valid from {}: renewal planned",
                t.id,
                t.cert_serial.as_deref().unwrap_or("-"),
                format_utc(starts)
            ),
            Err(e) => log::warn!(
                "target {}: record the certificate's start: {}",
                t.id,
                crate::model::Chain(&e)
            ),
        }
    }
}

/// Files a new request for a pairing whose certificate ended (`request::refile_expired`).
fn refile(ctx: &SourceContext, t: &TargetRecord, now: UnixTime) -> Result<(), UpkeepError> {
    let io = LiveSource { dirs: &ctx.dirs };
    let outgoing = Outgoing::new();
    let side = SourceSide {
        store: &ctx.store,
        io: &io,
        outgoing: &outgoing,
        me: Me {
            system_uuid: &ctx.system_uuid,
            name: &ctx.name,
            asset_tag: &ctx.asset_tag,
            version: env!("CARGO_PKG_VERSION"),
        },
    };
    let r = request::refile_expired(&side, t.id, now).map_err(UpkeepError::Refile)?;
    log::warn!(
        "target {} ({}): certificate {} expired at {}; filed request {} (verification code {}) \
         to replace it: the target's admin must accept it",
        t.id,
        t.host,
        t.cert_serial.as_deref().unwrap_or("-"),
        format_utc(t.certificate_expires.unwrap_or(0)),
        r.request_id,
        r.verification_code
    );
    Ok(())
}
