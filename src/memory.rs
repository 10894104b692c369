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
//! after those connections closed.

/// Blocks of at least this size are mapped on their own and unmapped when freed. This is
/// glibc's default starting value; setting it explicitly turns its dynamic raising off.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 128 * 1024;

/// Fixes the allocator's mmap threshold. Call once at start, before any large block is
/// allocated and freed.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters and takes its own lock; its
    // arguments are a valid parameter number and value.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) } == 1;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let ok = true;
    if !ok {
        log::warn!("could not fix the allocator's mmap threshold; logins may keep memory");
    }
}

/// Hands free heap pages back to the kernel (glibc's `malloc_trim`, which also releases
/// whole free pages in the middle of each thread arena). Costs a walk over the free lists
/// of every arena, so call it after a burst of work ended, not per request.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the arena locks itself and only releases memory that is
    // free; a pad of 0 is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}
