//! Identity: this appliance's key and certificates for each pairing with a target, on
//! disk as `<data_dir>/targets/<dir>/{key.pem,cert.pem,ca.pem}`, where `<dir>` is named by
//! the target's database row. The one owner of that layout and those file names; writes
//! only through `fsx`. Decides nothing about trust: callers check what they install.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsx;

/// The pairing's private key (0600), written when the request is filed.
pub const KEY_FILE: &str = "key.pem";
/// The certificate the target issued, installed after it passed the delivery checks.
pub const CERT_FILE: &str = "cert.pem";
/// The target's CA as it delivered it beside the certificate.
pub const CA_FILE: &str = "ca.pem";

/// A directory name is 128 random bits as 32 lowercase hex digits.
const NAME_BYTES: usize = 16;
/// Our own PEM files are a few KB; anything larger was not written by us.
const MAX_PEM_BYTES: u64 = 64 * 1024;

#[derive(Debug)]
pub enum IdentityError {
    /// A pairing's file or directory could not be created, written, read or removed.
    Io { path: PathBuf, source: io::Error },
    /// A stored PEM file is not text.
    NotText {
        path: PathBuf,
        source: std::string::FromUtf8Error,
    },
    /// A database row names a directory this module never makes.
    BadName(String),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Io { path, .. } => write!(f, "{}", path.display()),
            IdentityError::NotText { path, .. } => write!(f, "{} is not text", path.display()),
            IdentityError::BadName(name) => {
                write!(f, "pairing directory name {name:?} is not one of ours")
            }
        }
    }
}

impl std::error::Error for IdentityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IdentityError::Io { source, .. } => Some(source),
            IdentityError::NotText { source, .. } => Some(source),
            IdentityError::BadName(_) => None,
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<data_dir>/targets`: one directory per pairing with a target.
#[derive(Clone, Debug)]
pub struct TargetDirs {
    root: PathBuf,
}

impl TargetDirs {
    pub fn new(root: PathBuf) -> TargetDirs {
        TargetDirs { root }
    }

    /// Creates the parent directory (0700) if it is missing.
    pub fn ensure(&self) -> Result<(), IdentityError> {
        fsx::ensure_private_dir(&self.root).map_err(io_at(&self.root))
    }

    /// Makes a new pairing directory (0700, a fresh random name) holding `key_pem` (0600)
    /// and returns its name. A failure leaves nothing behind.
    pub fn create(&self, key_pem: &str) -> Result<String, IdentityError> {
        let name = crate::rand::hex_string(NAME_BYTES);
        let dir = self.root.join(&name);
        fsx::ensure_private_dir(&dir).map_err(io_at(&dir))?;
        let key = dir.join(KEY_FILE);
        if let Err(e) = fsx::write_atomic(&key, key_pem.as_bytes()) {
            let _ = fsx::remove_dir_all_durable(&dir);
            return Err(io_at(&key)(e));
        }
        Ok(name)
    }

    /// The pairing directory a database row names.
    pub fn open(&self, name: &str) -> Result<PairingDir, IdentityError> {
        let ours = name.len() == 2 * NAME_BYTES
            && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ours {
            return Err(IdentityError::BadName(name.chars().take(80).collect()));
        }
        Ok(PairingDir {
            path: self.root.join(name),
        })
    }

    /// Removes a pairing directory and everything in it, durably; a missing one is fine.
    pub fn remove(&self, name: &str) -> Result<(), IdentityError> {
        let dir = self.open(name)?;
        fsx::remove_dir_all_durable(&dir.path).map_err(io_at(&dir.path))
    }

    /// Removes every directory whose name is not in `known` (what a crash between writing
    /// a key and committing its row leaves) and returns the paths it removed.
    pub fn remove_unknown(&self, known: &[&str]) -> Result<Vec<PathBuf>, IdentityError> {
        let entries = std::fs::read_dir(&self.root).map_err(io_at(&self.root))?;
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if known.iter().any(|k| name == std::ffi::OsStr::new(k)) {
                continue;
            }
            let path = entry.path();
            fsx::remove_dir_all_durable(&path).map_err(io_at(&path))?;
            removed.push(path);
        }
        Ok(removed)
    }
}

/// One pairing's directory.
#[derive(Clone, Debug)]
pub struct PairingDir {
    path: PathBuf,
}

impl PairingDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pairing's private key.
    pub fn key(&self) -> Result<String, IdentityError> {
        self.read(KEY_FILE)
    }

    /// The installed certificate, once a delivery passed its checks.
    pub fn certificate(&self) -> Result<String, IdentityError> {
        self.read(CERT_FILE)
    }

    /// Installs a checked delivery: the CA first, then the certificate, each atomically,
    /// so a present `cert.pem` always has its `ca.pem` beside it.
    pub fn install(&self, cert_pem: &str, ca_pem: &str) -> Result<(), IdentityError> {
        for (name, pem) in [(CA_FILE, ca_pem), (CERT_FILE, cert_pem)] {
            let path = self.path.join(name);
            fsx::write_atomic(&path, pem.as_bytes()).map_err(io_at(&path))?;
        }
        Ok(())
    }

    fn read(&self, name: &str) -> Result<String, IdentityError> {
        let path = self.path.join(name);
        let bytes = fsx::read_regular_nofollow(&path, MAX_PEM_BYTES).map_err(io_at(&path))?;
        String::from_utf8(bytes).map_err(|source| IdentityError::NotText { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp(name: &str) -> TargetDirs {
        let root =
            std::env::temp_dir().join(format!("replgate-identity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dirs = TargetDirs::new(root);
        dirs.ensure().unwrap();
        dirs
    }

    #[test]
    fn a_new_pairing_directory_holds_a_private_key_and_installs_beside_it() {
        let dirs = temp("create");
        let name = dirs.create("KEY").unwrap();
        let dir = dirs.open(&name).unwrap();
        assert_eq!(dir.key().unwrap(), "KEY");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
        assert!(dir.certificate().is_err());
        dir.install("CERT", "CA").unwrap();
        assert_eq!(dir.certificate().unwrap(), "CERT");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CA_FILE)).unwrap(),
            "CA"
        );
        dirs.remove(&name).unwrap();
        assert!(!dir.path().exists());
        dirs.remove(&name).unwrap();
    }

    #[test]
    fn only_our_own_names_open_and_unknown_directories_are_removed() {
        let dirs = temp("names");
        for bad in ["", "..", "../x", "ABCDEF0123456789abcdef0123456789", "a/b"] {
            assert!(
                matches!(dirs.open(bad), Err(IdentityError::BadName(_))),
                "{bad}"
            );
        }
        let keep = dirs.create("a").unwrap();
        let stray = dirs.create("b").unwrap();
        let removed = dirs.remove_unknown(&[keep.as_str()]).unwrap();
        assert_eq!(
            removed,
            vec![dirs.open(&stray).unwrap().path().to_path_buf()]
        );
        assert!(dirs.open(&keep).unwrap().path().exists());
    }
}
