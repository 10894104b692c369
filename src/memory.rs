//! The process's allocator settings: glibc's `malloc` tuned so that the daemon's resident
//! memory comes back down after logins and after connections close. Owns no data; on
//! other C libraries (musl) both calls do nothing, because musl already returns large
//! blocks and free pages to the kernel.
//!
//! Measured (`bench/footprint.sh`, see BENCHMARKS.md): glibc raises its mmap threshold to
//! the size of the largest block freed so far (up to 32 MiB). argon2id hashes a password
//! in one 19 MiB block aligned to 64 bytes; from the second hash on, that block came from
//! the worker thread's arena instead of a fresh mapping, and the arenas kept it: each
//! login grew the resident set by 19 MiB, to 205 MB after ten logins. Separately, the
//! arenas of the threads that served 256 connections kept about 10 MB of free pages
//! after those connections closed (`release_free`), and then still 128 KiB of top pad
//! each (`TOP_PAD_BYTES`).

/// Blocks of at least this size are mapped on their own and unmapped when freed. This is
/// glibc's default starting value; setting it explicitly turns its dynamic raising off.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 128 * 1024;

/// Free space kept at the top of each arena when it shrinks. glibc's default is 128 KiB
/// per arena, which `malloc_trim` never releases in a thread arena (it only releases free
/// chunks inside one): after a burst of connections every one of the 10–16 thread arenas
/// kept its 128 KiB resident, about 1 MB in all (measured with `malloc_info`, 8 s after
/// 256 connections closed: 14 arenas, each over 95% free).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD_BYTES: libc::c_int = 16 * 1024;
/// A free block at the top of an arena larger than this is given back when it is freed.
/// glibc's default is 128 KiB; halved so that an arena left with little in use shrinks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD_BYTES: libc::c_int = 64 * 1024;

/// Arenas at most. glibc's default is 8 per core, and a thread keeps the arena it first
/// allocated in: a target with hundreds of connection and session threads spread its
/// short-lived allocations (handshakes, frames) over 16 arenas on 2 cores, each keeping
/// its own free pages. With 2 they share them: with 5,000 polling sources and 200
/// senders the arenas held about 43 MB instead of 73 (bench/scale.sh), and the threads
/// contend little, since the large buffers of a transfer are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS_MAX: libc::c_int = 2;

/// Fixes the allocator's mmap threshold, its arenas and how much free memory an arena
/// keeps. Call once at start, before any large block is allocated and freed (and before
/// the second thread allocates: the arenas are made then).
pub(crate) fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let ok = [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (libc::M_TOP_PAD, TOP_PAD_BYTES),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (libc::M_ARENA_MAX, ARENAS_MAX),
    ]
    .into_iter()
    // SAFETY: mallopt only changes allocator parameters and takes its own lock; its
    // arguments are valid parameter numbers and values.
    .all(|(param, value)| unsafe { libc::mallopt(param, value) } == 1);
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let ok = true;
    if !ok {
        log::warn!("could not set the allocator's thresholds; memory may stay resident");
    }
}

/// Hands free heap pages back to the kernel (glibc's `malloc_trim`, which also releases
/// whole free pages in the middle of each thread arena). Costs a walk over the free lists
/// of every arena, so call it after a burst of work ended, not per request.
pub(crate) fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the arena locks itself and only releases memory that is
    // free; a pad of 0 is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How many threads the process has now (`Threads:` in `/proc/self/status`), or 0 where
/// that cannot be read. The daemon gives free memory back when this falls: threads end
/// after a burst. (Not `/proc/self/stat`: qemu-user, which runs the ARM builds in CI,
/// fakes that file with a thread count of 0.)
pub(crate) fn thread_count() -> usize {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_reads_this_process_and_counts_a_new_thread() {
        let before = thread_count();
        assert!(before >= 1, "{before}");
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let extra = std::thread::spawn(move || {
            ready_tx.send(thread_count()).expect("report");
            let _ = stop_rx.recv();
        });
        let during = ready_rx.recv().expect("count from the new thread");
        drop(stop_tx);
        extra.join().expect("join");
        // Other tests run threads at the same time, so only the direction is certain
        // for this thread's own start: it was counted.
        assert!(during >= 2, "{during}");
    }
}
