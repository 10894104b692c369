//! The storage's S3 credentials: read once from its `credentials_file` (TOML with
//! `access_key_id` and `secret_access_key`), refused unless only its owner can read it,
//! and held where neither `Debug` nor a log line shows the secret.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Deserialize;

use super::ObjStoreError;
use crate::fsx;

/// The most a credentials file may hold: two short lines.
const MAX_FILE: u64 = 64 * 1024;

/// An access key and its secret. `Debug` shows the key id (it identifies, it does not
/// authenticate; stores log it too) and never the secret.
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    access_key_id: String,
    secret_access_key: String,
}

impl Credentials {
    pub fn new(access_key_id: &str, secret_access_key: &str) -> Credentials {
        Credentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
        }
    }

    /// Reads `path`: a regular file (no symlink at its last component) that group and
    /// others cannot read or write (`0600` or `0400`, as SPEC 19 asks and as ssh treats
    /// its keys), TOML with exactly `access_key_id` and `secret_access_key`, both
    /// non-empty printable ASCII. No error text carries the file's contents.
    pub fn load(path: &Path) -> Result<Credentials, ObjStoreError> {
        let shown = path.display();
        let (bytes, meta) = fsx::read_regular_nofollow_with_metadata(path, MAX_FILE)
            .map_err(|e| ObjStoreError::Config(format!("credentials file {shown}: {e}")))?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ObjStoreError::Config(format!(
                "credentials file {shown} has mode {mode:04o}: group and others must have \
                 no access (chmod 600)"
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| ObjStoreError::Config(format!("credentials file {shown} is not UTF-8")))?;
        // basic-toml's message can quote the offending line, which may be the secret.
        let file: File = basic_toml::from_str(&text).map_err(|_| {
            ObjStoreError::Config(format!(
                "credentials file {shown} is not TOML with exactly access_key_id and \
                 secret_access_key"
            ))
        })?;
        for (name, value) in [
            ("access_key_id", &file.access_key_id),
            ("secret_access_key", &file.secret_access_key),
        ] {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ObjStoreError::Config(format!(
                    "credentials file {shown}: {name} must be non-empty printable ASCII"
                )));
            }
        }
        Ok(Credentials {
            access_key_id: file.access_key_id,
            secret_access_key: file.secret_access_key,
        })
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The signing form (rusty-s3's, which zeroes its copy when dropped).
    pub(super) fn signer(&self) -> rusty_s3::Credentials {
        rusty_s3::Credentials::new(&self.access_key_id, &self.secret_access_key)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"…")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file(name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "replgate-objstore-creds-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("s3.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_file_loads_and_debug_hides_the_secret() {
        let path = file(
            "ok",
            "access_key_id = \"AKEXAMPLE\"\nsecret_access_key = \"s3cr3t/KEY+x\"\n",
            0o600,
        );
        let c = Credentials::load(&path).unwrap();
        assert_eq!(c.access_key_id(), "AKEXAMPLE");
        let shown = format!("{c:?}");
        assert!(
            shown.contains("AKEXAMPLE") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        let signer = format!("{:?}", c.signer());
        assert!(!signer.contains("s3cr3t"), "{signer}");
    }

    #[test]
    fn loose_modes_broken_files_and_extra_keys_are_refused_without_echoing_the_secret() {
        let good = "access_key_id = \"AK\"\nsecret_access_key = \"s3cr3t\"\n";
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let e = Credentials::load(&file(&format!("m{mode:o}"), good, mode)).unwrap_err();
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        assert!(Credentials::load(&file("ro", good, 0o400)).is_ok());
        for (name, text) in [
            (
                "extra",
                "access_key_id = \"AK\"\nsecret_access_key = \"s3cr3t\"\nx = 1\n",
            ),
            ("missing", "access_key_id = \"AK\"\n"),
            (
                "broken",
                "access_key_id = \"AK\"\nsecret_access_key = s3cr3t\n",
            ),
            (
                "space",
                "access_key_id = \"AK\"\nsecret_access_key = \"s3 cr3t\"\n",
            ),
            (
                "empty",
                "access_key_id = \"\"\nsecret_access_key = \"s3cr3t\"\n",
            ),
        ] {
            let e = Credentials::load(&file(name, text, 0o600)).unwrap_err();
            assert!(matches!(e, ObjStoreError::Config(_)), "{name}: {e:?}");
            assert!(!e.to_string().contains("s3cr3t") && !e.to_string().contains("s3 cr3t"));
        }
        let missing = Credentials::load(Path::new("/nonexistent/s3.toml")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/s3.toml"),
            "{missing}"
        );
    }
}
