//! The daemon's signals: SIGTERM and SIGINT ask it to stop (the signal and its sender are
//! kept for the log), SIGHUP asks it to read `hostnames` again (the maintenance job takes
//! the flag), SIGPIPE is ignored. The handlers only store to atomics.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);
/// The signal that asked to stop, and the process that sent it (for the log).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
static STOP_SENDER: AtomicI32 = AtomicI32::new(0);
/// Set by SIGHUP: read the configuration again (for `hostnames`).
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo_t to an SA_SIGINFO handler.
    let sender = if info.is_null() {
        0
    } else {
        unsafe { (*info).si_pid() }
    };
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    STOP_SENDER.store(sender, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_hangup(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    RELOAD.store(true, Ordering::SeqCst);
}

type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

pub(super) fn install() {
    // SAFETY: the handlers only store to atomics, which is async-signal-safe; the
    // sigaction struct is zeroed (an empty mask) before its fields are set.
    unsafe {
        let install = |sig: libc::c_int, handler: Handler| {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigaction(sig, &action, std::ptr::null_mut());
        };
        install(libc::SIGTERM, on_signal);
        install(libc::SIGINT, on_signal);
        install(libc::SIGHUP, on_hangup);
        // A peer closing a socket mid-write must not kill the daemon.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Returns once SIGTERM or SIGINT arrived.
pub(super) fn wait_for_stop() {
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The signal that asked to stop, and the process that sent it (0 when unknown).
pub(super) fn stop_cause() -> (i32, i32) {
    (
        STOP_SIGNAL.load(Ordering::SeqCst),
        STOP_SENDER.load(Ordering::SeqCst),
    )
}

/// The flag SIGHUP sets: whoever acts on it takes it back (`swap(false)`).
pub(super) fn hangup() -> &'static AtomicBool {
    &RELOAD
}
