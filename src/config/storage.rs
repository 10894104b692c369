//! The `[[storage]]` tables: where backups may go. Each table has a positive, unique `id`,
//! a `path`, an optional `name` and a `usage`; without any table there is one `backup`
//! storage, id 1, at `<data_dir>/storage`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{bad, toml_string, ConfigError};

/// A storage location that can hold a source's backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Storage {
    pub id: u64,
    pub name: String,
    pub path: PathBuf,
    /// Only `backup` storage can be chosen when accepting a source.
    pub usage: StorageUsage,
}

/// What a storage location is for: the `usage` key of a `[[storage]]` table, shown as the
/// same word on the wire. Defaults to `backup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageUsage {
    /// Holds sources' backups: the only usage an accept can choose.
    Backup,
    Archive,
    Other,
}

impl StorageUsage {
    pub const ALL: [StorageUsage; 3] = [
        StorageUsage::Backup,
        StorageUsage::Archive,
        StorageUsage::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StorageUsage::Backup => "backup",
            StorageUsage::Archive => "archive",
            StorageUsage::Other => "other",
        }
    }
}

impl fmt::Display for StorageUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StorageUsage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StorageUsage::ALL
            .into_iter()
            .find(|u| u.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not one of backup, archive, other"))
    }
}

/// A `[[storage]]` table as written.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    id: Option<u64>,
    name: Option<String>,
    path: Option<String>,
    usage: Option<String>,
}

/// The storage locations of the `[[storage]]` tables, or the default one below `data_dir`.
pub(super) fn resolve(
    tables: Option<Vec<RawStorage>>,
    data_dir: &Path,
) -> Result<Vec<Storage>, ConfigError> {
    let list = tables.unwrap_or_default();
    if list.is_empty() {
        return Ok(vec![Storage {
            id: 1,
            name: "default".into(),
            path: data_dir.join("storage"),
            usage: StorageUsage::Backup,
        }]);
    }
    let mut ids = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.into_iter().enumerate() {
        let key = format!("storage[{i}]");
        let id =
            s.id.ok_or_else(|| bad(&format!("{key}.id"), "is required"))?;
        if id == 0 || !ids.insert(id) {
            return Err(bad(
                &format!("{key}.id"),
                format!("{id} must be positive and unique"),
            ));
        }
        let path = s
            .path
            .ok_or_else(|| bad(&format!("{key}.path"), "is required"))?;
        let usage = match s.usage {
            None => StorageUsage::Backup,
            Some(u) => u.parse().map_err(|e| bad(&format!("{key}.usage"), e))?,
        };
        out.push(Storage {
            id,
            name: s.name.unwrap_or_else(|| format!("storage-{id}")),
            path: PathBuf::from(path),
            usage,
        });
    }
    Ok(out)
}

/// One `[[storage]]` table as `check-config` prints it, headed by where it came from.
pub(super) fn to_toml(s: &Storage, source: &str) -> String {
    format!(
        "\n[[storage]]  # {source}\nid = {}\nname = {}\npath = {}\nusage = {}\n",
        s.id,
        toml_string(&s.name),
        toml_string(&s.path.to_string_lossy()),
        toml_string(s.usage.as_str())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{env, Config};

    #[test]
    fn storage_tables_are_validated() {
        let c = Config::from_toml(
            "[[storage]]\nid = 2\nname = \"big\"\npath = \"/srv/a\"\n[[storage]]\nid = 3\npath = \"/srv/b\"\nusage = \"archive\"\n",
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.storage.len(), 2);
        assert_eq!(c.default_storage().unwrap().id, 2);
        let e = Config::from_toml(
            "[[storage]]\nid = 2\npath = \"/a\"\n[[storage]]\nid = 2\npath = \"/b\"\n",
            env(&[]),
        )
        .unwrap_err();
        assert_eq!(e.key, "storage[1].id");
    }

    #[test]
    fn storage_usage_reads_and_shows_the_three_words() {
        let c = Config::from_toml(
            "[[storage]]\nid = 1\npath = \"/a\"\nusage = \"other\"\n[[storage]]\nid = 2\npath = \"/b\"\n",
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.storage[0].usage, StorageUsage::Other);
        assert_eq!(c.storage[1].usage, StorageUsage::Backup);
        for u in StorageUsage::ALL {
            assert_eq!(u.as_str().parse::<StorageUsage>(), Ok(u));
            assert_eq!(u.to_string(), u.as_str());
        }
        let e = Config::from_toml(
            "[[storage]]\nid = 1\npath = \"/a\"\nusage = \"Backup\"\n",
            env(&[]),
        )
        .unwrap_err();
        assert_eq!(e.key, "storage[0].usage");
        assert!(
            e.to_string()
                .contains("\"Backup\" is not one of backup, archive, other"),
            "{e}"
        );
    }
}
