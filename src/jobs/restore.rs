//! The source's restore job (SPEC 20): one thread that pulls the waiting restore items
//! one at a time from their target's tunnel (`remote::restore`) into their local storage,
//! by `replication::restore`'s rules, and settles each (done, waiting again after a cut,
//! failed). Items a crash left active wait again at start and resume from their partial
//! copy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Storage;
use crate::identity::TargetDirs;
use crate::model::{self, Chain};
use crate::pairing::Actor;
use crate::remote::restore::RestoreClient;
use crate::remote::tunnel::OpenTransferError;
use crate::replication::restore::{self, PullError, Pulled};
use crate::replication::Shared;
use crate::store::{RestoreItem, Store, TargetStatus};

/// What the restore job works with, built once by the daemon.
pub struct Context {
    pub store: Store,
    pub shared: Arc<Shared>,
    /// The configured storages: where an item is written.
    pub storages: Vec<Storage>,
    pub dirs: TargetDirs,
}

/// How often waiting items are looked for.
const TICK: Duration = Duration::from_millis(500);

/// Starts the restore job; it stops when `shutdown` is set (an item being pulled stops
/// within one read and keeps its partial copy).
pub fn spawn_restorer(ctx: Context, shutdown: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    super::spawn_named(
        "restorer".into(),
        Box::new(move || {
            match restore::reset_active(&ctx.store) {
                Ok(0) => {}
                Ok(n) => log::info!("restore: {n} interrupted items wait again"),
                Err(e) => log::error!("restore: reset interrupted items: {}", Chain(&e)),
            }
            while !shutdown.load(Ordering::SeqCst) {
                match restore::claim_next(&ctx.store, model::now()) {
                    Ok(Some(item)) => run(&ctx, &item, &shutdown),
                    Ok(None) => std::thread::sleep(TICK),
                    Err(e) => {
                        log::error!("restore: next item: {}", Chain(&e));
                        std::thread::sleep(TICK);
                    }
                }
            }
        }),
    )
}

fn fetch_error(e: OpenTransferError) -> PullError {
    match e {
        OpenTransferError::Refused {
            status: 404,
            message,
            ..
        } => PullError::Gone(message),
        other => PullError::Cut(other.to_string()),
    }
}

/// Pulls one item and settles it.
fn run(ctx: &Context, item: &RestoreItem, stop: &AtomicBool) {
    let board = &ctx.shared.restores;
    let result = pull(ctx, item, stop);
    let held = board.get(item.id).unwrap_or(item.bytes_done);
    board.clear(item.id);
    let actor = Actor {
        user: "restore".into(),
        address: "local".into(),
    };
    match restore::settle(&ctx.store, item.id, &result, held, &actor, model::now()) {
        Ok(Some(settled)) => match &result {
            Ok(Pulled::Restored { received }) => log::info!(
                "restore {}: {} restored from target {} and verified ({received} bytes received)",
                item.id,
                item.backup,
                item.target_id
            ),
            Ok(Pulled::AlreadyThere) => log::info!(
                "restore {}: {} already present with the same SHA-256",
                item.id,
                item.backup
            ),
            Err(e) => log::warn!(
                "restore {}: {} from target {}: {e} (now {})",
                item.id,
                item.backup,
                item.target_id,
                settled.status.as_str()
            ),
        },
        Ok(None) => {}
        Err(e) => log::error!("restore {}: settle: {}", item.id, Chain(&e)),
    }
}

fn pull(ctx: &Context, item: &RestoreItem, stop: &AtomicBool) -> Result<Pulled, PullError> {
    let storage = ctx
        .storages
        .iter()
        .find(|s| s.id == item.storage_id)
        .ok_or_else(|| {
            PullError::Local(std::io::Error::other(format!(
                "no storage {} is configured",
                item.storage_id
            )))
        })?;
    let target = match ctx.store.target(item.target_id) {
        Ok(Some(t)) if t.status == TargetStatus::Complete => t,
        Ok(_) => {
            return Err(PullError::Gone(format!(
                "target {} is not paired",
                item.target_id
            )))
        }
        Err(e) => return Err(PullError::Cut(Chain(&e).to_string())),
    };
    let tunnel = target
        .tunnel
        .clone()
        .ok_or_else(|| PullError::Gone(format!("target {} has no tunnel", item.target_id)))?;
    let identity = match crate::identity::installed(&ctx.store, &ctx.dirs, item.target_id) {
        Ok(Some(i)) => i,
        Ok(None) => {
            return Err(PullError::Gone(format!(
                "target {} has no installed certificate",
                item.target_id
            )))
        }
        Err(e) => return Err(PullError::Cut(Chain(&e).to_string())),
    };
    let client = RestoreClient {
        addr: &tunnel,
        ca_pem: &target.ca_pem,
        cert_pem: &identity.cert_pem,
        key_pem: &identity.key_pem,
    };
    let board = &ctx.shared.restores;
    let progress = |held: u64| board.set(item.id, held);
    restore::pull(&storage.path, item, stop, &progress, &mut |offset| {
        let stream = client.file(&item.backup, offset).map_err(fetch_error)?;
        Ok(Box::new(stream))
    })
}
