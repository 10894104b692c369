//! The chunk index job (target side, `dedup = "auto"`): shortly after start and then every
//! [`EVERY`], one pass of `replication::index::catch_up` indexes the received copies the
//! index does not cover (sent whole, by an older source, resumed, or a lost or stale
//! index), drops what no backup names and purges the entries of files that are gone. A
//! pass stops early at shutdown; what it left is taken up by the next.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Storage;
use crate::replication::index;
use crate::store::Store;

/// The first pass waits this long after start (the listeners and the repair come first).
const FIRST_AFTER: Duration = Duration::from_secs(30);
/// Later passes.
const EVERY: Duration = Duration::from_secs(600);
const TICK: Duration = Duration::from_millis(250);

/// Starts the job; it stops when `shutdown` is set.
pub(crate) fn spawn_chunk_index(
    store: Store,
    storages: Vec<Storage>,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    super::spawn_named(
        "chunk-index".into(),
        Box::new(move || run(&store, &storages, &shutdown)),
    )
}

fn run(store: &Store, storages: &[Storage], shutdown: &AtomicBool) {
    let mut next = Instant::now() + FIRST_AFTER;
    while !shutdown.load(Ordering::SeqCst) {
        if Instant::now() < next {
            std::thread::sleep(TICK);
            continue;
        }
        match index::catch_up(store, storages, true, shutdown) {
            Ok(done) if done == index::CatchUp::default() => {}
            Ok(done) => log::info!(
                "chunk index: {} copies indexed, {} left for later, {} indexed files dropped, {} entries purged",
                done.indexed,
                done.pending,
                done.dropped,
                done.purged
            ),
            Err(e) => log::warn!("chunk index: {e}"),
        }
        next = Instant::now() + EVERY;
    }
}
