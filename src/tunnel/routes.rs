//! The daemon's tunnel routes (hello, the CAs, renew, transfer) and the state their
//! handlers share. Handlers are thin: parse, authorize (the peer is the connection's
//! verified certificate), call the domain, map the result.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{BodyLimit, Call, Reply, Route, TunnelHttpError};
use crate::ca::Authority;
use crate::config::{Fault, Storage};
use crate::model::Chain;
use crate::pairing::renewal::{self, RenewSide};
use crate::pairing::{rollover, target};
use crate::replication::{receiver, Shared};
use crate::store::Store;
use crate::wire::protocol::{Hello, Renewal};
use crate::wire::transfer::{Code, Features, FEATURES_HEADER};

/// What tunnel handlers may use, built once by the daemon.
pub struct App {
    pub store: Store,
    /// The configured storages, to name a source's storage.
    pub storage: Vec<Storage>,
    /// Replication's live state: receiving sessions, quotas, progress.
    pub replication: Arc<Shared>,
    /// The CAs in force: the signing one signs renewed certificates (during a CA
    /// rollover, the new one).
    pub cas: Arc<Authority>,
    /// Lifetime of a renewed certificate (`certificate_days` / `certificate_seconds`).
    pub client_lifetime: Duration,
    /// How long a renewed certificate's predecessor stays valid (`renew_grace`).
    pub renew_grace: Duration,
    /// Crash points for the renewal crash tests (`Fault::None` in production).
    pub fault: Fault,
    /// Chunk lists accepted (`dedup`), and the copies chunks may come from
    /// (`dedup_scope`); None: whole files only.
    pub dedup: Option<receiver::Scope>,
    /// Renewal calls per certificate, bounded (`renewal::Attempts`).
    pub renewals: renewal::Attempts,
}

/// Largest CSR accepted for a renewal (as for a pairing request).
const MAX_CSR_BYTES: u64 = 16 * 1024;

/// Every route the tunnel serves.
pub fn table() -> Vec<Route<App>> {
    vec![
        Route::new("GET", "/tunnel/v1/hello", BodyLimit::Capped(0), hello),
        Route::new("GET", "/tunnel/v1/ca", BodyLimit::Capped(0), ca),
        Route::new(
            "POST",
            "/tunnel/v1/renew",
            BodyLimit::Capped(MAX_CSR_BYTES + 1_024),
            renew,
        ),
        Route::new("POST", "/tunnel/v1/transfer", BodyLimit::Duplex, transfer),
        Route::new(
            "GET",
            "/tunnel/v1/restore",
            BodyLimit::Capped(0),
            |app, call| super::restore::list(&app.store, &app.storage, call),
        ),
        Route::new(
            "POST",
            "/tunnel/v1/restore/file",
            BodyLimit::Capped(super::restore::MAX_FILE_REQUEST_BYTES),
            |app, call| super::restore::file(&app.store, &app.storage, call),
        ),
        Route::new(
            "POST",
            "/tunnel/v1/restore/chunks",
            BodyLimit::Capped(super::restore::MAX_CHUNKS_REQUEST_BYTES),
            |app, call| {
                let dedup = app.dedup.is_some();
                super::restore::chunks(&app.store, &app.storage, dedup, call)
            },
        ),
    ]
}

/// `POST /tunnel/v1/renew {"csr"}`: renews the certificate of this connection for the
/// CSR's new key (SPEC 12). The identity is the connection's verified certificate.
fn renew(app: &App, call: &mut Call<'_>) -> Result<Reply, TunnelHttpError> {
    let serial = call.peer().serial.clone();
    app.renewals
        .admit(&serial, call.now)
        .map_err(|retry_after| TunnelHttpError::TooMany {
            message: format!(
                "more than {} renewal calls with certificate {serial} within {} s; try again later",
                renewal::ATTEMPTS,
                renewal::ATTEMPT_WINDOW
            ),
            retry_after,
        })?;
    let body = call.json()?;
    let csr = body["csr"]
        .as_str()
        .ok_or_else(|| TunnelHttpError::BadRequest("field `csr` must be a PEM string".into()))?;
    if csr.len() as u64 > MAX_CSR_BYTES {
        return Err(TunnelHttpError::BadRequest(format!(
            "field `csr` exceeds {MAX_CSR_BYTES} bytes"
        )));
    }
    let cas = app.cas.get();
    let side = RenewSide {
        store: &app.store,
        ca: cas.signing(),
        client_lifetime: app.client_lifetime,
        grace: app.renew_grace,
    };
    let address = call.peer().addr.ip().to_string();
    let renewed = renewal::renew(&side, &serial, csr, &address, call.now).map_err(|e| {
        log::warn!(
            "tunnel: renewal from {address} with certificate {serial} refused: {}",
            Chain(&e)
        );
        TunnelHttpError::from(e)
    })?;
    if renewed.repeated {
        log::info!(
            "system {}: renewal from {address} answered again with certificate {} (generation {})",
            renewed.system_id,
            renewed.serial,
            renewed.generation
        );
    }
    app.fault.crash_if(Fault::CrashAfterRenewCommit);
    let answer = Renewal {
        certificate: renewed.cert_pem,
        serial: renewed.serial,
        not_after: renewed.not_after,
    };
    let value: Value =
        serde_json::to_value(answer).map_err(|e| TunnelHttpError::Internal(Box::new(e)))?;
    Ok(Reply::json(200, &value))
}

/// The media type of a transfer session's frames, both ways.
pub const TRANSFER_TYPE: &str = "application/x-replgate-transfer";

/// `POST /tunnel/v1/transfer`: one replication session (frames of `wire::transfer` both
/// ways, full duplex). The source and its storage come from the certificate only.
fn transfer(app: &App, call: &mut Call<'_>) -> Result<Reply, TunnelHttpError> {
    let source =
        receiver::identify(&app.store, &app.storage, &call.peer().serial).map_err(|refusal| {
            match refusal.code {
                Code::Unavailable => TunnelHttpError::Unavailable(refusal.message),
                _ => TunnelHttpError::Forbidden(refusal.message),
            }
        })?;
    let shared = &app.replication;
    let peer = call.peer().addr.to_string();
    // The features this session uses: what the source asked for that this side has
    // (chunk lists only with `dedup = "auto"`, and only into a `dir` storage: a copy in a
    // bucket is not read back for chunks, so a source of one sends whole files).
    let ours = Features {
        chunks: app.dedup.is_some() && source.storage.kind == crate::config::StorageKind::Dir,
        ..Features::ALL
    };
    let features = call
        .header(FEATURES_HEADER)
        .map_or(Features::default(), Features::parse)
        .and(ours);
    let (body, mut writer) = call
        .duplex()
        .ok_or_else(|| TunnelHttpError::Internal("transfer route is not duplex".into()))?;
    writer
        .start_with(200, TRANSFER_TYPE, &[(FEATURES_HEADER, features.render())])
        .map_err(|e| TunnelHttpError::Internal(Box::new(e)))?;
    let ctx = receiver::Context {
        store: &app.store,
        live: &shared.live,
        ledger: &shared.ledger,
        dedup: app.dedup.filter(|_| features.chunks),
        slots: Some(&shared.slots),
        peer,
        now: crate::model::now,
        features,
    };
    crate::ingest::serve(&ctx, &source, body, &mut writer);
    // A broken stream cannot be finished; the session already logged how it ended.
    let _ = writer.finish();
    Ok(Reply::sent())
}

/// `GET /tunnel/v1/ca`: the target's CAs (SPEC 22), which a source reads at its
/// heartbeat and before a renewal to follow a CA rollover; `renew` when the certificate
/// of this connection was issued by another CA than the one that signs now. Read only:
/// nothing a source sends here changes what this appliance trusts. Counts as a hello
/// (the source is seen with this certificate).
fn ca(app: &App, call: &mut Call<'_>) -> Result<Reply, TunnelHttpError> {
    let serial = call.peer().serial.clone();
    target::record_hello(&app.store, &serial, call.now)?.ok_or_else(|| {
        TunnelHttpError::Forbidden("this certificate belongs to no paired system".into())
    })?;
    let presented = app.store.cert(&serial)?;
    let answer = rollover::answer(&app.cas.get(), presented.as_ref());
    let value: Value =
        serde_json::to_value(answer).map_err(|e| TunnelHttpError::Internal(Box::new(e)))?;
    Ok(Reply::json(200, &value))
}

/// `GET /tunnel/v1/hello`: the source's system id and storage. The first hello of a
/// certificate marks its pairing collected.
fn hello(app: &App, call: &mut Call<'_>) -> Result<Reply, TunnelHttpError> {
    let serial = &call.peer().serial;
    let row = target::record_hello(&app.store, serial, call.now)?.ok_or_else(|| {
        TunnelHttpError::Forbidden("this certificate belongs to no paired system".into())
    })?;
    let storage = row
        .storage_id
        .and_then(|id| app.storage.iter().find(|s| s.id == id));
    let hello = Hello {
        system_id: row.id,
        system_uuid: row.system_uuid.clone().unwrap_or_default(),
        storage_id: row.storage_id,
        storage_name: storage.map(|s| s.name.clone()),
    };
    let value: Value =
        serde_json::to_value(hello).map_err(|e| TunnelHttpError::Internal(Box::new(e)))?;
    Ok(Reply::json(200, &value))
}
