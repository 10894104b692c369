//! The listeners' only calls into libc: `poll(2)`, the `RLIMIT_NOFILE` limit,
//! `TCP_NODELAY` on a listening socket, the congestion control and dead-peer detection of
//! tunnel sockets (`TCP_CONGESTION`, keepalive, `TCP_USER_TIMEOUT`; source and target),
//! and a connect from a chosen local address. Knows nothing about TLS, HTTP or
//! connections.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Readiness flags, re-exported so the callers need no `libc` import of their own.
pub(crate) const POLLIN: i16 = libc::POLLIN;
pub(crate) const POLLOUT: i16 = libc::POLLOUT;

/// One descriptor to watch. A negative `fd` is skipped by the kernel, which is how a
/// caller says "not interested in this one now" without it reporting `POLLHUP` again and
/// again.
pub(crate) fn poll_fd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd: if events == 0 { -1 } else { fd },
        events,
        revents: 0,
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (`None` waits without limit).
/// Returns how many descriptors are ready; an interrupted wait counts as zero ready.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let millis = match timeout {
        None => -1,
        // Rounded up, so that a deadline 0.3 ms away does not turn into a busy loop of
        // zero-length waits.
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    let count = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `fds` is a valid, exclusively borrowed slice of `count` pollfd structs for
    // the whole call; poll(2) only writes their `revents` fields.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, millis) };
    if ready < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(usize::try_from(ready).unwrap_or(0))
}

/// Whether `pollfd` reported anything (readiness, hang-up or error) for the descriptor.
pub(crate) fn ready(pollfd: &libc::pollfd) -> bool {
    pollfd.fd >= 0 && pollfd.revents != 0
}

/// Whether `pollfd` reported the descriptor readable, hung up or in error: in each case a
/// read returns at once (with data, end of stream or the error).
pub(crate) fn readable(pollfd: &libc::pollfd) -> bool {
    pollfd.fd >= 0 && pollfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

/// Whether `pollfd` reported the descriptor writable, hung up or in error: in each case a
/// write returns at once.
pub(crate) fn writable(pollfd: &libc::pollfd) -> bool {
    pollfd.fd >= 0 && pollfd.revents & (libc::POLLOUT | libc::POLLHUP | libc::POLLERR) != 0
}

/// The soft and hard `RLIMIT_NOFILE` after trying to raise the soft limit to the hard
/// one. `None` for a limit means unlimited.
pub(crate) struct FdLimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises the soft descriptor limit to the hard limit when it is lower (an unprivileged
/// process may do that), then reports both limits.
pub(crate) fn raise_fd_limit() -> io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur != libc::RLIM_INFINITY
        && (lim.rlim_max == libc::RLIM_INFINITY || lim.rlim_cur < lim.rlim_max)
    {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit struct; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            log::debug!(
                "raise open-file limit to {}: {}",
                lim.rlim_max,
                io::Error::last_os_error()
            );
        }
    }
    // `rlim_t` is u64 here but 32 bits wide on some armv7 targets.
    #[allow(clippy::useless_conversion)]
    let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then(|| u64::from(v));
    Ok(FdLimit {
        soft: finite(lim.rlim_cur),
        hard: finite(lim.rlim_max),
    })
}

/// Sets the congestion control of a TCP socket (`TCP_CONGESTION`, a name the kernel
/// knows: `bbr`, `cubic`, `reno`, …). Linux copies a listening socket's to every socket
/// it accepts. Fails if the kernel has no such algorithm (or not as a loaded module) or
/// does not let this process choose it.
pub(crate) fn set_congestion(sock: &impl std::os::fd::AsRawFd, name: &str) -> io::Result<()> {
    let len = libc::socklen_t::try_from(name.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is open for the call (borrowed from `sock`); the kernel reads
    // `len` bytes of `name`.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The congestion control a TCP socket uses.
pub(crate) fn congestion(sock: &impl std::os::fd::AsRawFd) -> io::Result<String> {
    let mut name = [0u8; 16];
    let mut len = libc::socklen_t::try_from(name.len()).unwrap_or(16);
    // SAFETY: as in `set_congestion`; the kernel writes at most `len` bytes into `name`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Applies the `tunnel_congestion` setting to a tunnel socket (`what` names it in the log)
/// and returns the algorithm it then uses. `system` leaves the kernel's default. A name
/// the kernel refuses leaves it too, with one warning per process and setting.
pub(crate) fn apply_congestion(
    sock: &impl std::os::fd::AsRawFd,
    setting: &str,
    what: &str,
) -> Option<String> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if setting != "system" {
        if let Err(e) = set_congestion(sock, setting) {
            if !WARNED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let default = congestion(sock).unwrap_or_else(|_| "unknown".into());
                log::warn!(
                    "tunnel_congestion = {setting:?}: the kernel refused it for {what} ({e}); \
                     using the system's default, {default}"
                );
            }
        }
    }
    congestion(sock).ok()
}

/// How long a tunnel connection may go without a sign of its peer before the kernel ends
/// it (SPEC 17, link cuts). Unacknowledged data for this long (`TCP_USER_TIMEOUT`), or an
/// idle connection whose keepalive probes go unanswered as long, is a dead link: both
/// ends drop the session, free its slot and the names it held, and the source opens a new
/// one that resumes. Linux (since 5.11) also ends a connection whose peer kept a zero
/// window this long, though it answers every probe: a receiver stalled that long (a disk
/// that stops, a large partial copy hashed before a resume while data is in flight) costs
/// a reconnection and a resume, never data. 20 s, so that ordinary stalls pass; a watch
/// on `TCP_INFO`'s last acknowledgement would tell a stalled peer from a cut link.
pub(crate) const DEAD_PEER_AFTER: Duration = Duration::from_secs(20);
/// Keepalive: the first probe after this much silence, then one every [`KEEPALIVE_EVERY`].
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: libc::c_int = 3;

/// Sets dead-peer detection (see [`DEAD_PEER_AFTER`]) on a tunnel socket. Linux copies
/// these options from a listening socket to every socket it accepts.
pub(crate) fn set_dead_peer_detection(sock: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    let secs = |d: Duration| libc::c_int::try_from(d.as_secs()).unwrap_or(libc::c_int::MAX);
    let millis = libc::c_int::try_from(DEAD_PEER_AFTER.as_millis()).unwrap_or(libc::c_int::MAX);
    set_int(sock, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int(
        sock,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        secs(KEEPALIVE_IDLE),
    )?;
    set_int(
        sock,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        secs(KEEPALIVE_EVERY),
    )?;
    set_int(sock, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES)?;
    set_int(sock, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, millis)
}

fn set_int(
    sock: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: the descriptor is open for the call (borrowed from `sock`), and `value` is a
    // valid c_int whose size is passed as the option length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
fn get_int(
    sock: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    option: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: as in `set_int`; the kernel writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Sets `TCP_NODELAY` on a listening socket. Linux copies it to every socket the listener
/// accepts, which is the only way to reach sockets that tiny_http accepts itself.
pub(crate) fn set_listener_nodelay(listener: &std::net::TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: the descriptor is open for the duration of the call (borrowed from
    // `listener`), and `on` is a valid c_int whose size is passed as the option length.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connects to `target` from the local address `source` with a blocking socket (std
/// cannot bind before connecting). Every address of 127.0.0.0/8 is this machine, so tests
/// and benchmarks use it to be several clients as the listeners count them.
pub fn connect_from(
    source: std::net::Ipv4Addr,
    target: std::net::SocketAddr,
) -> io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(target) = target else {
        return Err(io::Error::other("connect_from: ipv4 targets only"));
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(16);
    // SAFETY: plain socket calls on a descriptor this function owns (the TcpStream closes
    // it from right after creation); each sockaddr lives across its call and `len` is its
    // size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let local = sockaddr(source, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = sockaddr(*target.ip(), target.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_control_is_set_per_socket_inherited_on_accept_and_refused_when_unknown() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // reno is built into every Linux kernel; the host default here is another.
        set_congestion(&listener, "reno").unwrap();
        assert_eq!(congestion(&listener).unwrap(), "reno");
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(congestion(&accepted).unwrap(), "reno");
        let before = congestion(&client).unwrap();
        assert!(set_congestion(&client, "no-such-cc").is_err());
        assert_eq!(
            apply_congestion(&client, "no-such-cc", "a test"),
            Some(before)
        );
        assert_eq!(
            apply_congestion(&client, "cubic", "a test").as_deref(),
            Some("cubic")
        );
        assert_eq!(
            apply_congestion(&client, "system", "a test").as_deref(),
            Some("cubic")
        );
    }

    #[test]
    fn dead_peer_detection_is_set_and_inherited_on_accept() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_dead_peer_detection(&listener).unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let millis = i32::try_from(DEAD_PEER_AFTER.as_millis()).unwrap();
        let sock = &accepted;
        assert_eq!(
            get_int(sock, libc::SOL_SOCKET, libc::SO_KEEPALIVE).unwrap(),
            1
        );
        assert_eq!(
            get_int(sock, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE).unwrap(),
            5
        );
        assert_eq!(
            get_int(sock, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL).unwrap(),
            5
        );
        assert_eq!(
            get_int(sock, libc::IPPROTO_TCP, libc::TCP_KEEPCNT).unwrap(),
            3
        );
        assert_eq!(
            get_int(sock, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT).unwrap(),
            millis
        );
        // A socket it was not set on keeps the kernel's defaults.
        assert_eq!(
            get_int(&client, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT).unwrap(),
            0
        );
        set_dead_peer_detection(&client).unwrap();
        assert_eq!(
            get_int(&client, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT).unwrap(),
            millis
        );
    }
}
