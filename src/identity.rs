//! Identity: this appliance's keys and certificates for each pairing with a target, on
//! disk under `<data_dir>/targets/<dir>/`, where `<dir>` is named by the target's database
//! row: the pinned CA as delivered (`ca.pem`) and one file pair per key generation, the
//! first (generation 0) as `key.pem`/`cert.pem`, renewals and re-pairings as
//! `key-<g>.pem`/`cert-<g>.pem`. The one owner of that layout and those file names, and
//! of the appliance CA's files (`ca_files`: one key and certificate per CA generation);
//! writes only through `fsx`. Decides nothing about trust: callers check what they install.
//!
//! Invariants:
//! - The target row's `generation` chooses the installed key and certificate; a row names
//!   a generation only after both its files are durable and the certificate was checked
//!   against the key, and those two files are never written again. So whatever a crash
//!   interrupts, the installed pair matches.
//! - Files of generations no row names (a renewal or re-pairing interrupted before its
//!   row was written, a generation replaced and proven) are removed, never reused as they
//!   are: a stray key is overwritten by a fresh one.

mod ca_files;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::store::{Store, StoreError};
use crate::{ca, fsx};

pub use ca_files::{CaFiles, CaPems, TRUST_FILE};

/// The pairing's first private key (0600, generation 0), written when the request is filed.
pub const KEY_FILE: &str = "key.pem";
/// The certificate the target issued for the first key, installed after it passed the
/// delivery checks.
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
    /// The target row could not be read.
    Store(StoreError),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Io { path, .. } => write!(f, "{}", path.display()),
            IdentityError::NotText { path, .. } => write!(f, "{} is not text", path.display()),
            IdentityError::BadName(name) => {
                write!(f, "pairing directory name {name:?} is not one of ours")
            }
            IdentityError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for IdentityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IdentityError::Io { source, .. } => Some(source),
            IdentityError::NotText { source, .. } => Some(source),
            IdentityError::BadName(_) => None,
            IdentityError::Store(e) => e.source(),
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

/// The key file of `generation`.
fn key_name(generation: u64) -> String {
    match generation {
        0 => KEY_FILE.to_string(),
        g => format!("key-{g}.pem"),
    }
}

/// The certificate file of `generation`.
fn cert_name(generation: u64) -> String {
    match generation {
        0 => CERT_FILE.to_string(),
        g => format!("cert-{g}.pem"),
    }
}

/// The generation a file of ours belongs to (`key.pem` → 0, `cert-7.pem` → 7).
fn generation_of(name: &str) -> Option<u64> {
    if name == KEY_FILE || name == CERT_FILE {
        return Some(0);
    }
    let stem = name
        .strip_prefix("key-")
        .or_else(|| name.strip_prefix("cert-"))?
        .strip_suffix(".pem")?;
    let ours =
        !stem.is_empty() && !stem.starts_with('0') && stem.bytes().all(|b| b.is_ascii_digit());
    ours.then(|| stem.parse().ok()).flatten()
}

impl PairingDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first private key (generation 0).
    pub fn key(&self) -> Result<String, IdentityError> {
        self.key_of(0)
    }

    /// The installed first certificate (generation 0), once a delivery passed its checks.
    pub fn certificate(&self) -> Result<String, IdentityError> {
        self.certificate_of(0)
    }

    /// The private key of `generation`.
    pub fn key_of(&self, generation: u64) -> Result<String, IdentityError> {
        self.read(&key_name(generation))
    }

    /// The certificate of `generation`.
    pub fn certificate_of(&self, generation: u64) -> Result<String, IdentityError> {
        self.read(&cert_name(generation))
    }

    /// Writes the private key of a generation no row names as installed yet (0600),
    /// replacing a stray one a crash left.
    pub fn write_key(&self, generation: u64, key_pem: &str) -> Result<(), IdentityError> {
        self.write(&key_name(generation), key_pem)
    }

    /// Installs a checked delivery for `generation`: the CA first, then the certificate,
    /// each atomically, so a present certificate always has its `ca.pem` beside it. The
    /// caller records the generation in the target row afterwards.
    pub fn install(
        &self,
        generation: u64,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<(), IdentityError> {
        self.write(CA_FILE, ca_pem)?;
        self.write(&cert_name(generation), cert_pem)
    }

    /// Writes the checked certificate of a generation whose key is there and that no row
    /// names as installed yet (a renewal: the CA is the pinned one, already beside it).
    pub fn write_certificate(&self, generation: u64, cert_pem: &str) -> Result<(), IdentityError> {
        self.write(&cert_name(generation), cert_pem)
    }

    /// Removes the files of every generation not in `keep`; returns what it removed.
    pub fn remove_generations_except(&self, keep: &[u64]) -> Result<Vec<PathBuf>, IdentityError> {
        let entries = std::fs::read_dir(&self.path).map_err(io_at(&self.path))?;
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(generation) = name.to_str().and_then(generation_of) else {
                continue;
            };
            if keep.contains(&generation) {
                continue;
            }
            let path = entry.path();
            fsx::remove_file_durable(&path).map_err(io_at(&path))?;
            removed.push(path);
        }
        Ok(removed)
    }

    fn write(&self, name: &str, pem: &str) -> Result<(), IdentityError> {
        let path = self.path.join(name);
        fsx::write_atomic(&path, pem.as_bytes()).map_err(io_at(&path))
    }

    fn read(&self, name: &str) -> Result<String, IdentityError> {
        let path = self.path.join(name);
        let bytes = fsx::read_regular_nofollow(&path, MAX_PEM_BYTES).map_err(io_at(&path))?;
        String::from_utf8(bytes).map_err(|source| IdentityError::NotText { path, source })
    }
}

/// One listener's server certificate on disk: `<data_dir>/<name>.pem` (leaf then CA),
/// `<name>.key` (0600) and `<name>.names` (what it was issued for). Each file is replaced
/// atomically, but the three are three writes: a crash between them leaves a pair that
/// [`ListenerFiles::load`] does not return (a key that is not the certificate's, or names
/// that differ), so the caller issues a fresh one.
#[derive(Clone, Debug)]
pub struct ListenerFiles {
    cert: PathBuf,
    key: PathBuf,
    names: PathBuf,
}

/// A listener certificate as stored: its chain and key, and what its leaf says.
pub struct ListenerCert {
    pub chain_pem: String,
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
    pub serial: String,
}

impl fmt::Debug for ListenerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerCert")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key_pem", &"…")
            .finish()
    }
}

impl ListenerFiles {
    /// The files of listener `name` (`api`, `tunnel`) under `root`.
    pub fn new(root: &Path, name: &str) -> ListenerFiles {
        ListenerFiles {
            cert: root.join(format!("{name}.pem")),
            key: root.join(format!("{name}.key")),
            names: root.join(format!("{name}.names")),
        }
    }

    /// The stored certificate, when all three files are there, the key is the leaf's and
    /// it was issued for exactly `names`; None when it must be issued anew. An unreadable
    /// file is an error (permissions, a symlink where a file belongs).
    pub fn load(&self, names: &str) -> Result<Option<ListenerCert>, IdentityError> {
        let read =
            |path: &Path| -> Result<Option<String>, IdentityError> {
                match fsx::read_regular_nofollow(path, MAX_PEM_BYTES) {
                    Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|source| {
                        IdentityError::NotText {
                            path: path.to_path_buf(),
                            source,
                        }
                    }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_at(path)(e)),
                }
            };
        let (Some(chain_pem), Some(key_pem), Some(stored_names)) =
            (read(&self.cert)?, read(&self.key)?, read(&self.names)?)
        else {
            return Ok(None);
        };
        if stored_names != names {
            return Ok(None);
        }
        let Ok(info) = ca::cert_pem_to_der(&chain_pem).and_then(|der| ca::cert_info(&der)) else {
            return Ok(None);
        };
        if ca::key_fingerprint(&key_pem).ok().as_deref() != Some(info.key_fingerprint.as_str()) {
            return Ok(None);
        }
        Ok(Some(ListenerCert {
            chain_pem,
            key_pem,
            not_before: info.not_before,
            not_after: info.not_after,
            serial: info.serial,
        }))
    }

    /// Stores a freshly issued certificate: the key, then the chain, then the names, each
    /// atomically. A crash after the key leaves a key that is not the chain's; one after
    /// the chain, names that may differ: either way `load` refuses the pair, and the old
    /// pair is never taken as issued for new names.
    pub fn store(&self, chain_pem: &str, key_pem: &str, names: &str) -> Result<(), IdentityError> {
        for (path, text) in [
            (&self.key, key_pem),
            (&self.cert, chain_pem),
            (&self.names, names),
        ] {
            fsx::write_atomic(path, text.as_bytes()).map_err(io_at(path))?;
        }
        Ok(())
    }
}

/// The key and certificate a pairing presents to its target's tunnel now.
#[derive(Clone)]
pub struct ClientIdentity {
    pub generation: u64,
    pub serial: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("generation", &self.generation)
            .field("serial", &self.serial)
            .field("key_pem", &"…")
            .finish()
    }
}

/// The installed identity of the pairing with target `target_id`, as its row chooses it,
/// for a connection about to open (a transfer, a hello); None when the row is gone or has
/// no certificate installed. A renewal can switch generations and remove the old files
/// between reading the row and reading them: then the row is read again.
pub fn installed(
    store: &Store,
    dirs: &TargetDirs,
    target_id: u64,
) -> Result<Option<ClientIdentity>, IdentityError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let Some(row) = store.target(target_id).map_err(IdentityError::Store)? else {
            return Ok(None);
        };
        let Some(serial) = row.cert_serial.clone() else {
            return Ok(None);
        };
        let dir = dirs.open(&row.dir)?;
        let read = dir
            .key_of(row.generation)
            .and_then(|key| Ok((key, dir.certificate_of(row.generation)?)));
        match read {
            Ok((key_pem, cert_pem)) => {
                return Ok(Some(ClientIdentity {
                    generation: row.generation,
                    serial,
                    cert_pem,
                    key_pem,
                }))
            }
            Err(IdentityError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound && attempts < 3 => {}
            Err(e) => return Err(e),
        }
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
        dir.install(0, "CERT", "CA").unwrap();
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
    fn each_generation_has_its_own_files_and_the_others_are_removed() {
        let dirs = temp("generations");
        let name = dirs.create("KEY0").unwrap();
        let dir = dirs.open(&name).unwrap();
        dir.install(0, "CERT0", "CA").unwrap();
        dir.write_key(1, "KEY1").unwrap();
        dir.install(1, "CERT1", "CA").unwrap();
        dir.write_key(2, "KEY2").unwrap();
        assert_eq!(dir.key_of(1).unwrap(), "KEY1");
        assert_eq!(dir.certificate_of(1).unwrap(), "CERT1");
        assert_eq!(dir.key().unwrap(), "KEY0");
        assert!(dir.path().join("key-2.pem").exists());
        let mode = std::fs::metadata(dir.path().join("key-1.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("notes.txt"), "kept").unwrap();
        let mut removed = dir.remove_generations_except(&[1]).unwrap();
        removed.sort();
        let names: Vec<_> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["cert.pem", "key-2.pem", "key.pem"]);
        assert_eq!(dir.key_of(1).unwrap(), "KEY1");
        assert!(dir.path().join(CA_FILE).exists());
        assert!(dir.path().join("notes.txt").exists());
        for (file, g) in [
            ("key.pem", Some(0)),
            ("cert-12.pem", Some(12)),
            ("key-01.pem", None),
            ("key-.pem", None),
            ("ca.pem", None),
            ("key-1.pem.tmp", None),
        ] {
            assert_eq!(generation_of(file), g, "{file}");
        }
    }

    #[test]
    fn the_installed_identity_is_the_generation_the_row_names() {
        let root = std::env::temp_dir().join(format!(
            "replgate-identity-installed-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        fsx::ensure_private_dir(&root).unwrap();
        let store = Store::open(&root.join("replgate.redb")).unwrap();
        let dirs = TargetDirs::new(root.join("targets"));
        dirs.ensure().unwrap();
        let name = dirs.create("KEY0").unwrap();
        let dir = dirs.open(&name).unwrap();
        dir.write_key(3, "KEY3").unwrap();
        dir.install(3, "CERT3", "CA").unwrap();
        let mut row = crate::store::TargetRecord::fixture(7);
        row.dir = name;
        store.write(|tx| tx.put_target(&row)).unwrap();
        assert!(
            installed(&store, &dirs, 7).unwrap().is_none(),
            "nothing installed yet"
        );
        row.cert_serial = Some("ab".into());
        row.generation = 3;
        store.write(|tx| tx.put_target(&row)).unwrap();
        let id = installed(&store, &dirs, 7).unwrap().unwrap();
        assert_eq!(
            (id.generation, id.key_pem.as_str(), id.cert_pem.as_str()),
            (3, "KEY3", "CERT3")
        );
        assert!(!format!("{id:?}").contains("KEY3"));
        assert!(installed(&store, &dirs, 8).unwrap().is_none());
        row.generation = 4;
        store.write(|tx| tx.put_target(&row)).unwrap();
        assert!(matches!(
            installed(&store, &dirs, 7),
            Err(IdentityError::Io { .. })
        ));
    }

    #[test]
    fn a_listener_pair_loads_only_whole_matching_and_for_the_same_names() {
        let root =
            std::env::temp_dir().join(format!("replgate-identity-listener-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        fsx::ensure_private_dir(&root).unwrap();
        let ca = ca::Ca::generate("ca", time::OffsetDateTime::now_utc()).unwrap();
        let issue = || {
            ca.issue_server_cert(
                &["localhost".to_owned()],
                &[],
                std::time::Duration::from_secs(3_600),
                time::OffsetDateTime::now_utc(),
            )
            .unwrap()
        };
        let files = ListenerFiles::new(&root, "api");
        assert!(files.load("n1").unwrap().is_none(), "nothing stored");
        let first = issue();
        let chain = format!("{}{}", first.cert_pem, ca.cert_pem());
        files.store(&chain, &first.key_pem, "n1").unwrap();
        let loaded = files.load("n1").unwrap().unwrap();
        assert_eq!(
            (loaded.serial.as_str(), loaded.not_after),
            (first.serial.as_str(), first.not_after)
        );
        assert_eq!(loaded.key_pem, first.key_pem);
        assert!(
            files.load("n2").unwrap().is_none(),
            "other names: issue anew"
        );
        // What a crash between the key and the chain leaves: refused, not served.
        let second = issue();
        fsx::write_atomic(&root.join("api.key"), second.key_pem.as_bytes()).unwrap();
        assert!(files.load("n1").unwrap().is_none());
        let mode = std::fs::metadata(root.join("api.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
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
