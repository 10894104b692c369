//! The source's restore job (SPEC 20): one thread that pulls the waiting restore items
//! one at a time from their target's tunnel (`remote::restore`) into their local storage,
//! by `replication::restore`'s rules, and settles each (done, waiting again after a cut,
//! failed); and runs restore drills (`replication::drill`), the queued ones and those
//! `drill_interval` makes due, into a scratch directory. Items a crash left active wait
//! again at start and resume from their partial copy; a drill a crash cut failed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Storage;
use crate::identity::TargetDirs;
use crate::model::{self, Chain};
use crate::pairing::Actor;
use crate::remote::restore::RestoreClient;
use crate::remote::tunnel::OpenTransferError;
use crate::replication::drill;
use crate::replication::names::BackupName;
use crate::replication::restore::{self, PullError, Pulled};
use crate::replication::restore_chunks;
use crate::replication::Shared;
use crate::store::{RestoreItem, Store, TargetStatus};

/// What the restore job works with, built once by the daemon.
pub(crate) struct Context {
    pub store: Store,
    pub shared: Arc<Shared>,
    /// The configured storages: where an item is written.
    pub storages: Vec<Storage>,
    pub dirs: TargetDirs,
    /// Where drills restore their samples (emptied after each).
    pub scratch: PathBuf,
    /// `drill_interval` in seconds; 0: no scheduled drills.
    pub drill_interval: u64,
    /// `dedup = "auto"`: pull by chunks, taking what the storage already holds.
    pub dedup: bool,
}

/// How often waiting items are looked for.
const TICK: Duration = Duration::from_millis(500);

/// Starts the restore job; it stops when `shutdown` is set (an item being pulled stops
/// within one read and keeps its partial copy).
pub(crate) fn spawn_restorer(
    ctx: Context,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    super::spawn_named(
        "restorer".into(),
        Box::new(move || {
            match restore::reset_active(&ctx.store) {
                Ok(0) => {}
                Ok(n) => log::info!("restore: {n} interrupted items wait again"),
                Err(e) => log::error!("restore: reset interrupted items: {}", Chain(&e)),
            }
            if let Err(e) = drill::fail_interrupted(&ctx.store, model::now()) {
                log::error!("restore drill: interrupted drills: {}", Chain(&e));
            }
            while !shutdown.load(Ordering::SeqCst) {
                schedule_drills(&ctx);
                match drill::claim_next(&ctx.store, model::now()) {
                    Ok(Some(d)) => {
                        run_drill(&ctx, &d, &shutdown);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => log::error!("restore drill: next drill: {}", Chain(&e)),
                }
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
    let held = board.get(item.id).map_or(item.bytes_done, |(held, _)| held);
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
    let creds = credentials(ctx, item.target_id)?;
    let client = creds.client();
    let board = &ctx.shared.restores;
    // Bytes that came over the link: with chunks, the `have` list and the records.
    let wire = AtomicU64::new(0);
    let by_chunks = ctx.dedup && item.size >= restore_chunks::MIN_SIZE;
    let rebuilt = std::cell::Cell::new(false);
    let progress = |held: u64| {
        let over = if rebuilt.get() {
            wire.load(Ordering::Relaxed)
        } else {
            held.saturating_sub(item.bytes_done)
        };
        board.set(item.id, held, item.bytes_received.saturating_add(over));
    };
    let whole = |offset: u64| -> Result<Box<dyn std::io::Read + '_>, PullError> {
        let stream = client.file(&item.backup, offset).map_err(fetch_error)?;
        Ok(Box::new(stream))
    };
    let pulled = restore::pull(&storage.path, item, stop, &progress, &mut |offset| {
        if !by_chunks {
            return whole(offset);
        }
        let dir = match BackupName::parse(&item.backup) {
            Ok(name) => (storage.path.join(name.client()), name),
            Err(_) => return whole(offset),
        };
        let local = restore_chunks::LocalChunks::scan(&dir.0, dir.1.file(), item.size, stop);
        if local.is_empty() {
            return whole(offset);
        }
        let have = local.have();
        let records = match client.chunks(&item.backup, offset, &have) {
            Ok(r) => r,
            Err(OpenTransferError::Refused {
                status, message, ..
            }) => {
                log::info!(
                    "restore {}: target {} does not restore by chunks ({status}: {message}); whole bytes",
                    item.id,
                    item.target_id
                );
                return whole(offset);
            }
            Err(e) => return Err(PullError::Cut(e.to_string())),
        };
        wire.fetch_add(have.len() as u64, Ordering::Relaxed);
        rebuilt.set(true);
        Ok(Box::new(restore_chunks::Rebuilt::new(
            records,
            offset,
            local,
            &wire,
            Box::new(move |at| whole(at).map_err(|e| std::io::Error::other(e.to_string()))),
        )))
    })?;
    Ok(match pulled {
        Pulled::Restored { .. } if rebuilt.get() => Pulled::Restored {
            received: wire.load(Ordering::Relaxed),
        },
        other => other,
    })
}

/// A target's tunnel and this pairing's certificate, for the restore client.
struct Credentials {
    tunnel: String,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Credentials {
    fn client(&self) -> RestoreClient<'_> {
        RestoreClient {
            addr: &self.tunnel,
            ca_pem: &self.ca_pem,
            cert_pem: &self.cert_pem,
            key_pem: &self.key_pem,
        }
    }
}

fn credentials(ctx: &Context, target_id: u64) -> Result<Credentials, PullError> {
    let target = match ctx.store.target(target_id) {
        Ok(Some(t)) if t.status == TargetStatus::Complete => t,
        Ok(_) => return Err(PullError::Gone(format!("target {target_id} is not paired"))),
        Err(e) => return Err(PullError::Cut(Chain(&e).to_string())),
    };
    let tunnel = target
        .tunnel
        .clone()
        .ok_or_else(|| PullError::Gone(format!("target {target_id} has no tunnel")))?;
    let identity = match crate::identity::installed(&ctx.store, &ctx.dirs, target_id) {
        Ok(Some(i)) => i,
        Ok(None) => {
            return Err(PullError::Gone(format!(
                "target {target_id} has no installed certificate"
            )))
        }
        Err(e) => return Err(PullError::Cut(Chain(&e).to_string())),
    };
    Ok(Credentials {
        tunnel,
        ca_pem: target.ca_pem,
        cert_pem: identity.cert_pem,
        key_pem: identity.key_pem,
    })
}

/// Queues the scheduled drills `drill_interval` makes due.
fn schedule_drills(ctx: &Context) {
    if ctx.drill_interval == 0 {
        return;
    }
    let now = model::now();
    let (targets, book) = match (ctx.store.targets(), ctx.store.drills()) {
        (Ok(t), Ok(b)) => (t, b),
        (Err(e), _) | (_, Err(e)) => {
            log::error!("restore drill: schedule: {}", Chain(&e));
            return;
        }
    };
    let actor = Actor {
        user: "drill_interval".into(),
        address: "local".into(),
    };
    for target_id in drill::due(&targets, &book.drills, ctx.drill_interval, now) {
        if let Err(e) = drill::request(&ctx.store, target_id, None, true, &actor, now) {
            log::warn!("restore drill of target {target_id}: {}", Chain(&e));
        }
    }
}

/// Runs one drill: the target's listing, a random sample, each copy restored into the
/// scratch directory and checked, the result recorded.
fn run_drill(ctx: &Context, d: &crate::store::DrillRecord, stop: &AtomicBool) {
    let started = std::time::Instant::now();
    let outcome = drill_outcome(ctx, d, stop);
    let _ = crate::fsx::remove_dir_all_durable(&ctx.scratch);
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let actor = Actor {
        user: "drill".into(),
        address: "local".into(),
    };
    match drill::finish(&ctx.store, d.id, &outcome, ms, &actor, model::now()) {
        Ok(_) => match &outcome {
            Ok((bytes, copies)) => log::info!(
                "restore drill {} of target {}: passed, {copies} copies, {bytes} bytes in {ms} ms",
                d.id,
                d.target_id
            ),
            Err(m) => log::warn!(
                "restore drill {} of target {}: failed: {m}",
                d.id,
                d.target_id
            ),
        },
        Err(e) => log::error!("restore drill {}: record: {}", d.id, Chain(&e)),
    }
}

fn drill_outcome(
    ctx: &Context,
    d: &crate::store::DrillRecord,
    stop: &AtomicBool,
) -> drill::Outcome {
    let creds = credentials(ctx, d.target_id).map_err(|e| e.to_string())?;
    let client = creds.client();
    let listing = client
        .listing()
        .map_err(|e| format!("the target's list of backups: {e}"))?;
    let offered = restore::check_listing(&listing).map_err(|e| e.to_string())?;
    let chosen = drill::sample(offered, d.bytes_asked, &mut crate::rand::unit);
    crate::fsx::ensure_private_dir(&ctx.scratch).map_err(|e| format!("scratch directory: {e}"))?;
    drill::run(
        &ctx.scratch,
        d.target_id,
        &chosen,
        stop,
        &mut |backup, offset| {
            let stream = client.file(backup, offset).map_err(fetch_error)?;
            Ok(Box::new(stream))
        },
    )
}
