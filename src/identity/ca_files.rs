//! The appliance CA's files under the data directory, one key and certificate per CA
//! generation: generation 0 (every appliance's first CA) is `ca.key` and the first
//! certificate of `ca.pem`; a CA made by a rollover is `ca-<g>.key` and `ca-<g>.pem`.
//! `ca.pem` is also the trust file `ctl` and scripts read: the CA in force, then during a
//! rollover the new CA (OpenSSL clients need it: they apply the old CA's path length to
//! the cross-certificate path). Writes only through `fsx`; decides nothing: the database's
//! CA state names the generations in use (`store::CaState`).
//!
//! Invariants:
//! - A generation's files are written (durably) before any row names the generation, and
//!   never written again; files of generations no row names are removed at start, so a
//!   crash between the files and the commit leaves nothing that is ever used.
//! - A row naming a missing file is an error, never a reason to make a new key.

use std::path::{Path, PathBuf};

use super::{io_at, IdentityError, MAX_PEM_BYTES};
use crate::fsx;

/// The trust file, and generation 0's certificate.
pub const TRUST_FILE: &str = "ca.pem";
/// Generation 0's key.
const FIRST_KEY: &str = "ca.key";

/// The CA files of one data directory.
#[derive(Clone, Debug)]
pub struct CaFiles {
    root: PathBuf,
}

/// A generation's certificate and key, as read.
pub struct CaPems {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaPems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPems").field("key_pem", &"…").finish()
    }
}

/// The generation a CA file of ours belongs to (`ca.key` → 0, `ca-3.pem` → 3); not the
/// trust file, which every generation shares.
fn generation_of(name: &str) -> Option<u64> {
    if name == FIRST_KEY {
        return Some(0);
    }
    let stem = name
        .strip_prefix("ca-")?
        .strip_suffix(".key")
        .or_else(|| name.strip_prefix("ca-")?.strip_suffix(".pem"))?;
    let ours =
        !stem.is_empty() && !stem.starts_with('0') && stem.bytes().all(|b| b.is_ascii_digit());
    ours.then(|| stem.parse().ok()).flatten()
}

impl CaFiles {
    pub fn new(root: &Path) -> CaFiles {
        CaFiles {
            root: root.to_path_buf(),
        }
    }

    /// Where generation `g`'s key is.
    pub fn key_path(&self, g: u64) -> PathBuf {
        match g {
            0 => self.root.join(FIRST_KEY),
            g => self.root.join(format!("ca-{g}.key")),
        }
    }

    /// Where generation `g`'s certificate is (for generation 0, the trust file's first).
    pub fn cert_path(&self, g: u64) -> PathBuf {
        match g {
            0 => self.root.join(TRUST_FILE),
            g => self.root.join(format!("ca-{g}.pem")),
        }
    }

    /// Whether generation `g` has a certificate or a key on disk.
    pub fn exists(&self, g: u64) -> bool {
        self.cert_path(g).exists() || self.key_path(g).exists()
    }

    /// Generation `g`'s certificate and key; an error names a file that is missing or
    /// unreadable.
    pub fn read(&self, g: u64) -> Result<CaPems, IdentityError> {
        Ok(CaPems {
            cert_pem: read_text(&self.cert_path(g))?,
            key_pem: read_text(&self.key_path(g))?,
        })
    }

    /// Writes generation `g`'s key (0600) and certificate, each durably, before any row
    /// names `g`. Generation 0's certificate is the trust file.
    pub fn write(&self, g: u64, cert_pem: &str, key_pem: &str) -> Result<(), IdentityError> {
        for (path, text) in [(self.key_path(g), key_pem), (self.cert_path(g), cert_pem)] {
            fsx::write_atomic(&path, text.as_bytes()).map_err(io_at(&path))?;
        }
        Ok(())
    }

    /// Makes the trust file `ca.pem` hold `pem` (replaced atomically when it differs);
    /// true when it was rewritten.
    pub fn write_trust(&self, pem: &str) -> Result<bool, IdentityError> {
        let path = self.root.join(TRUST_FILE);
        let current = fsx::read_regular_nofollow(&path, MAX_PEM_BYTES).ok();
        if current.as_deref() == Some(pem.as_bytes()) {
            return Ok(false);
        }
        fsx::write_atomic(&path, pem.as_bytes()).map_err(io_at(&path))?;
        Ok(true)
    }

    /// Removes the key and certificate of every generation not in `keep` (the trust file
    /// stays); returns what it removed.
    pub fn remove_except(&self, keep: &[u64]) -> Result<Vec<PathBuf>, IdentityError> {
        let entries = std::fs::read_dir(&self.root).map_err(io_at(&self.root))?;
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(g) = name.to_str().and_then(generation_of) else {
                continue;
            };
            if keep.contains(&g) {
                continue;
            }
            let path = entry.path();
            fsx::remove_file_durable(&path).map_err(io_at(&path))?;
            removed.push(path);
        }
        removed.sort();
        Ok(removed)
    }
}

fn read_text(path: &Path) -> Result<String, IdentityError> {
    let bytes = fsx::read_regular_nofollow(path, MAX_PEM_BYTES).map_err(io_at(path))?;
    String::from_utf8(bytes).map_err(|source| IdentityError::NotText {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn temp(name: &str) -> (CaFiles, PathBuf) {
        let root =
            std::env::temp_dir().join(format!("replgate-ca-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        fsx::ensure_private_dir(&root).unwrap();
        (CaFiles::new(&root), root)
    }

    #[test]
    fn each_generation_has_its_files_and_the_unnamed_ones_are_removed() {
        let (files, root) = temp("generations");
        files.write(0, "CERT0", "KEY0").unwrap();
        files.write(1, "CERT1", "KEY1").unwrap();
        files.write(2, "CERT2", "KEY2").unwrap();
        let one = files.read(1).unwrap();
        assert_eq!(
            (one.cert_pem.as_str(), one.key_pem.as_str()),
            ("CERT1", "KEY1")
        );
        assert!(!format!("{one:?}").contains("KEY1"));
        assert_eq!(files.read(0).unwrap().cert_pem, "CERT0");
        let mode = std::fs::metadata(files.key_path(2))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(root.join("api.key"), "listener").unwrap();
        let removed = files.remove_except(&[1]).unwrap();
        let names: Vec<_> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ca-2.key", "ca-2.pem", "ca.key"]);
        assert!(root.join(TRUST_FILE).exists(), "the trust file stays");
        assert!(root.join("api.key").exists(), "not ours");
        assert!(files.exists(1) && !files.exists(2));
        assert!(matches!(files.read(2), Err(IdentityError::Io { .. })));
        for (name, g) in [
            ("ca.key", Some(0)),
            ("ca-12.pem", Some(12)),
            ("ca-3.key", Some(3)),
            ("ca.pem", None),
            ("ca-01.key", None),
            ("ca-.pem", None),
            ("ca-1.pem.tmp", None),
        ] {
            assert_eq!(generation_of(name), g, "{name}");
        }
    }

    #[test]
    fn the_trust_file_is_rewritten_only_when_it_differs() {
        let (files, root) = temp("trust");
        assert!(files.write_trust("A").unwrap());
        assert!(!files.write_trust("A").unwrap());
        assert!(files.write_trust("AB").unwrap());
        assert_eq!(
            std::fs::read_to_string(root.join(TRUST_FILE)).unwrap(),
            "AB"
        );
    }
}
