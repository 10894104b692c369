//! The target's verify job: one thread that takes the verify requests the API queued
//! (`replication::verify::Verifier`) and re-reads one source's copies at a time, until
//! shutdown. What a verify checks and records is `replication::verify`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::model;
use crate::replication::verify::{self, Verifier};
use crate::store::Store;

/// Starts the verify job; it stops when `shutdown` is set.
pub fn spawn_verifier(
    verifier: Arc<Verifier>,
    store: Store,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let rx = verifier.open();
    std::thread::Builder::new()
        .name("verifier".into())
        .spawn(move || {
            while !shutdown.load(Ordering::SeqCst) {
                let job = match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                let sid = job.system_id;
                match verify::run(&verifier, &store, &job, &shutdown, model::now) {
                    Ok(()) => {}
                    Err(e) => log::error!("verify of system {sid}: {e}"),
                }
                let s = verifier.finished(sid, model::now());
                log::info!(
                    "verify of system {sid}: {} of {} copies checked, {} damaged, {} missing",
                    s.checked,
                    s.total,
                    s.damaged,
                    s.missing
                );
            }
            verifier.close();
        })
}
