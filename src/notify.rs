//! systemd readiness notification over the `NOTIFY_SOCKET` datagram socket, without a
//! dependency. A no-op when the variable is unset (not started by systemd).

use std::os::unix::net::UnixDatagram;

/// Sends one state line such as `READY=1`; failures are logged, never fatal.
pub(crate) fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // Abstract namespace socket (Linux).
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        log::warn!("systemd notify {state:?}: {e}");
    }
}
