//! Why the daemon could not start: `DaemonError`, each variant with what to look at;
//! `main` prints it with its causes and exits.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::auth::AuthError;
use crate::ca::CaError;
use crate::identity::IdentityError;
use crate::jobs::listener_certs::ListenerCertError;
use crate::pairing::rollover::RolloverError;
use crate::spool::SpoolError;
use crate::store::StoreError;
use crate::tls::TlsError;

/// Why the daemon could not start, each with what to look at.
#[derive(Debug)]
pub enum DaemonError {
    /// A file or directory of the daemon's own could not be read, written or created
    /// (permissions, a full disk, a symlink where a file belongs).
    File { path: PathBuf, source: io::Error },
    /// A file of the daemon's own is not text (damaged or replaced).
    NotText {
        path: PathBuf,
        source: std::string::FromUtf8Error,
    },
    /// `ca.pem` exists without `ca.key`: restore the key from backup. A new CA would
    /// invalidate every certificate it issued, so the daemon refuses to make one.
    CaKeyMissing { cert: PathBuf, key: PathBuf },
    /// The appliance CA or a listener certificate could not be loaded, created or issued.
    Ca { action: String, source: CaError },
    /// The CAs the database names could not be loaded (a CA file missing, unreadable or
    /// replaced): restore the data directory's CA files from a backup.
    Rollover(RolloverError),
    /// The database could not be opened or read.
    Store {
        action: &'static str,
        source: StoreError,
    },
    /// A listener's TLS configuration was refused (its certificate or key).
    Tls {
        listener: &'static str,
        source: TlsError,
    },
    /// A listen address could not be bound (in use, not local, no permission).
    Bind {
        setting: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// The internal loopback listener for tiny_http could not be set up.
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The spool could not be opened or reconciled with the database.
    Spool {
        action: &'static str,
        source: SpoolError,
    },
    /// The authenticator could not start, or the first user not be created.
    Auth {
        action: &'static str,
        source: AuthError,
    },
    /// The pairing directories could not be prepared.
    Identity(IdentityError),
    /// A thread could not be started (a process or memory limit).
    Spawn {
        what: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::File { path, .. } | DaemonError::NotText { path, .. } => {
                write!(f, "{}", path.display())
            }
            DaemonError::CaKeyMissing { cert, key } => write!(
                f,
                "{} exists but {} is missing: restore the ca key from backup (refusing to create a new ca, \
                 which would invalidate every issued certificate)",
                cert.display(),
                key.display()
            ),
            DaemonError::Ca { action, .. } => f.write_str(action),
            DaemonError::Rollover(_) => f.write_str(
                "load the appliance ca as the database names it (restore its files from a backup)",
            ),
            DaemonError::Store { action, .. }
            | DaemonError::Spool { action, .. }
            | DaemonError::Auth { action, .. } => f.write_str(action),
            DaemonError::Tls { listener, .. } => write!(f, "{listener} tls"),
            DaemonError::Bind { setting, addr, .. } => write!(f, "{setting} {addr}"),
            DaemonError::Backend(_) => f.write_str("internal listener"),
            DaemonError::Identity(e) => write!(f, "{e}"),
            DaemonError::Spawn { what, .. } => write!(f, "start {what}"),
        }
    }
}

impl std::error::Error for DaemonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DaemonError::File { source, .. }
            | DaemonError::Bind { source, .. }
            | DaemonError::Spawn { source, .. } => Some(source),
            DaemonError::NotText { source, .. } => Some(source),
            DaemonError::CaKeyMissing { .. } => None,
            DaemonError::Ca { source, .. } => Some(source),
            DaemonError::Rollover(e) => Some(e),
            DaemonError::Store { source, .. } => Some(source),
            DaemonError::Tls { source, .. } => Some(source),
            DaemonError::Backend(e) => Some(e.as_ref()),
            DaemonError::Spool { source, .. } => Some(source),
            DaemonError::Auth { source, .. } => Some(source),
            DaemonError::Identity(e) => e.source(),
        }
    }
}

impl From<ListenerCertError> for DaemonError {
    fn from(e: ListenerCertError) -> Self {
        match e {
            ListenerCertError::Issue { listener, source } => DaemonError::Ca {
                action: format!("issue the {listener} certificate"),
                source,
            },
            ListenerCertError::Files(e) => DaemonError::Identity(e),
            ListenerCertError::Tls { listener, source } => DaemonError::Tls { listener, source },
        }
    }
}

pub(super) fn file_error(path: &Path) -> impl FnOnce(io::Error) -> DaemonError + '_ {
    move |source| DaemonError::File {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn spawn_error(what: &'static str) -> impl FnOnce(io::Error) -> DaemonError {
    move |source| DaemonError::Spawn { what, source }
}
