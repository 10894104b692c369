//! Object keys: which keys we make, and the layout of a storage's bucket.
//!
//! A backup lives at `<prefix>/<source uuid>/<client>/<name>` (SPEC 19), the same path as
//! under a `dir` storage. There is no in-progress name: a multipart upload is invisible
//! (absent from listings, `GET` and `HEAD` answer 404) until it is completed, and we
//! complete only after the SHA-256 of every byte matched the source's (the writer keeps
//! the digest across a resume), so a key holds either the previous object or the new,
//! checked one. replgate itself shows a backup only once its database row records it.

use std::fmt;

use super::ObjStoreError;

/// The longest key S3 takes, in bytes.
pub(super) const MAX_KEY: usize = 1024;

/// A key that means the same thing to every S3 implementation and to the URL it becomes:
/// 1 to 1024 bytes of UTF-8, no control characters, no empty, `.` or `..` segment, no
/// leading `/` (a URL path resolves `..`, and some stores collapse `//`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    pub fn parse(text: &str) -> Result<Key, ObjStoreError> {
        let bad = |why: &str| ObjStoreError::Config(format!("object key {text:?}: {why}"));
        if text.is_empty() || text.len() > MAX_KEY {
            return Err(bad("must be 1 to 1024 bytes"));
        }
        if text.chars().any(char::is_control) {
            return Err(bad("holds a control character"));
        }
        if text
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(bad("has an empty, `.` or `..` segment"));
        }
        Ok(Key(text.to_string()))
    }

    /// The key of backup `name` of `client` from source `source_uuid` under `prefix`
    /// (slashes at its ends ignored; empty for the bucket's root). The caller has checked
    /// `client` and `name` as backup names (`replication::names`) already; this checks
    /// again only what would make the key ambiguous.
    pub fn backup(
        prefix: &str,
        source_uuid: &str,
        client: &str,
        name: &str,
    ) -> Result<Key, ObjStoreError> {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            Key::parse(&format!("{source_uuid}/{client}/{name}"))
        } else {
            Key::parse(&format!("{prefix}/{source_uuid}/{client}/{name}"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_take_the_layout_and_ambiguous_keys_are_refused() {
        let uuid = "5f0c7a52-3f5e-4a6b-9c0d-2b1e8f7a6c11";
        let k = Key::backup("/tenants/a/", uuid, "web01", "daily/2024-01-01.img").unwrap();
        assert_eq!(
            k.as_str(),
            format!("tenants/a/{uuid}/web01/daily/2024-01-01.img")
        );
        let k = Key::backup("", uuid, "web01", "x.img").unwrap();
        assert_eq!(k.as_str(), format!("{uuid}/web01/x.img"));
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/./b",
            "a/../b",
            "..",
            "trailing/",
            "nul\0",
            "tab\there",
        ] {
            assert!(Key::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Key::parse(&"k".repeat(MAX_KEY)).is_ok());
        assert!(Key::parse(&"k".repeat(MAX_KEY + 1)).is_err());
        assert!(Key::backup("p", uuid, "..", "x").is_err());
        assert!(Key::parse("ünïcode key/with spaces+plus%percent").is_ok());
    }
}
