//! The `[[storage]]` tables: where backups may go. Each table has a positive, unique `id`,
//! an optional `name`, a `usage` and a `kind`: `dir` (the default) with a `path`, or `s3`
//! with a bucket's `endpoint`, `bucket`, `prefix`, `region`, `credentials_file`,
//! `path_style`, `ca_file` and `capacity_mb` (SPEC 19). Without any table there is one
//! `backup` storage, id 1, at `<data_dir>/storage`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{bad, toml_string, ConfigError};

/// A storage location that can hold a source's backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Storage {
    pub id: u64,
    pub name: String,
    /// A `dir` storage's directory. An `s3` storage's local state (`<data_dir>/s3/<id>`):
    /// never its backups, which are in the bucket.
    pub path: PathBuf,
    /// Only `backup` storage can be chosen when accepting a source.
    pub usage: StorageUsage,
    pub kind: StorageKind,
}

/// Where a storage keeps its backups: the `kind` key of a `[[storage]]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StorageKind {
    /// Files below `path`.
    #[default]
    Dir,
    /// Objects in an S3-compatible bucket.
    S3(Box<S3Storage>),
}

impl StorageKind {
    /// The word of the `kind` key.
    pub fn as_str(&self) -> &'static str {
        match self {
            StorageKind::Dir => "dir",
            StorageKind::S3(_) => "s3",
        }
    }
}

/// An `s3` storage's bucket (SPEC 19). The secret is not here: `credentials_file` names
/// the file that holds it (`objstore::Credentials::load` reads it, mode 0600 or stricter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Storage {
    /// `https://host[:port][/path]`, or `http://` to a loopback host.
    pub endpoint: String,
    pub bucket: String,
    /// Keys start `<prefix>/`; empty for the bucket's root. No slash at either end.
    pub prefix: String,
    pub region: String,
    pub credentials_file: PathBuf,
    /// `https://host/bucket/key` rather than `https://bucket.host/key`.
    pub path_style: bool,
    /// PEM CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// What quotas and the space check count as the bucket's size (an object store has
    /// no free-space figure).
    pub capacity_mb: u64,
}

/// The region an `s3` storage signs for when its table names none (what S3's own tools
/// assume; SeaweedFS and Garage take it unless configured otherwise).
const DEFAULT_REGION: &str = "us-east-1";

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
    kind: Option<String>,
    endpoint: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    credentials_file: Option<String>,
    path_style: Option<bool>,
    ca_file: Option<String>,
    capacity_mb: Option<u64>,
}

impl RawStorage {
    /// The `s3`-only keys this table sets, by name.
    fn s3_keys(&self) -> Vec<&'static str> {
        [
            ("endpoint", self.endpoint.is_some()),
            ("bucket", self.bucket.is_some()),
            ("prefix", self.prefix.is_some()),
            ("region", self.region.is_some()),
            ("credentials_file", self.credentials_file.is_some()),
            ("path_style", self.path_style.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("capacity_mb", self.capacity_mb.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
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
            kind: StorageKind::Dir,
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
        let usage = match &s.usage {
            None => StorageUsage::Backup,
            Some(u) => u.parse().map_err(|e| bad(&format!("{key}.usage"), e))?,
        };
        let (path, kind) = match s.kind.as_deref().unwrap_or("dir") {
            "dir" => {
                if let Some(k) = s.s3_keys().first() {
                    return Err(bad(&format!("{key}.{k}"), "is for kind = \"s3\" only"));
                }
                let path = s
                    .path
                    .clone()
                    .ok_or_else(|| bad(&format!("{key}.path"), "is required"))?;
                (PathBuf::from(path), StorageKind::Dir)
            }
            "s3" => {
                if s.path.is_some() {
                    return Err(bad(
                        &format!("{key}.path"),
                        "is for kind = \"dir\" only (an s3 storage keeps its backups in the bucket)",
                    ));
                }
                let s3 = s3_storage(&s, &key)?;
                (
                    data_dir.join("s3").join(id.to_string()),
                    StorageKind::S3(Box::new(s3)),
                )
            }
            other => {
                return Err(bad(
                    &format!("{key}.kind"),
                    format!("{other:?} is not one of dir, s3"),
                ))
            }
        };
        out.push(Storage {
            id,
            name: s.name.unwrap_or_else(|| format!("storage-{id}")),
            path,
            usage,
            kind,
        });
    }
    Ok(out)
}

/// The bucket of an `s3` table, its keys checked (the endpoint's form, the bucket's name,
/// the prefix as a key's start); nothing is read or sent: the credentials file is read
/// when the storage is used, and by `check-config`.
fn s3_storage(s: &RawStorage, key: &str) -> Result<S3Storage, ConfigError> {
    let required = |name: &str, v: &Option<String>| {
        v.clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(&format!("{key}.{name}"), "is required for kind = \"s3\""))
    };
    let endpoint = required("endpoint", &s.endpoint)?;
    parse_endpoint(&endpoint).map_err(|e| bad(&format!("{key}.endpoint"), e))?;
    let bucket = required("bucket", &s.bucket)?;
    if !bucket_name_ok(&bucket) {
        return Err(bad(
            &format!("{key}.bucket"),
            format!(
                "{bucket:?} is not a bucket name (3 to 63 of a-z, 0-9, `.` and `-`, \
                 starting and ending with a letter or digit)"
            ),
        ));
    }
    let prefix = s.prefix.clone().unwrap_or_default();
    let prefix = prefix.trim_matches('/').to_string();
    if !prefix.is_empty() && !prefix_ok(&prefix) {
        return Err(bad(
            &format!("{key}.prefix"),
            format!(
                "{prefix:?} is not a key prefix (at most 512 bytes, no control character, \
                 no empty, `.` or `..` segment)"
            ),
        ));
    }
    let region = s
        .region
        .clone()
        .unwrap_or_else(|| DEFAULT_REGION.to_string());
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(bad(
            &format!("{key}.region"),
            format!("{region:?} is not a region name (letters, digits and `-`)"),
        ));
    }
    let credentials_file = PathBuf::from(required("credentials_file", &s.credentials_file)?);
    let capacity_mb = s.capacity_mb.ok_or_else(|| {
        bad(
            &format!("{key}.capacity_mb"),
            "is required for kind = \"s3\"",
        )
    })?;
    if capacity_mb == 0 || capacity_mb > u64::MAX / (1024 * 1024) {
        return Err(bad(
            &format!("{key}.capacity_mb"),
            format!(
                "{capacity_mb} must be positive and at most {}",
                u64::MAX / (1024 * 1024)
            ),
        ));
    }
    Ok(S3Storage {
        endpoint,
        bucket,
        prefix,
        region,
        credentials_file,
        path_style: s.path_style.unwrap_or(false),
        ca_file: s
            .ca_file
            .clone()
            .filter(|f| !f.is_empty())
            .map(PathBuf::from),
        capacity_mb,
    })
}

/// Checks an endpoint as a `[[storage]]` table gives it: `https://host[:port][/path]`, or
/// `http://` to a loopback host (`127.0.0.0/8`, `::1`, `localhost`); true when it is
/// HTTPS. The one place this rule lives (the object-store client opens endpoints through
/// it). Stricter than a URL parser, on purpose: no user info, query or fragment, and a
/// host of plain ASCII letters, digits, `.` and `-` (an IDN in its `xn--` form) or an IP
/// literal, so what is checked here is what the client connects to.
pub fn parse_endpoint(endpoint: &str) -> Result<bool, String> {
    let bad = |why: &str| format!("endpoint {endpoint:?}: {why}");
    let (https, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad(
            "must start with https:// (or http:// to a loopback host)",
        ));
    };
    if rest.contains(['?', '#']) || rest.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad("has a query, a fragment or a space"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad("credentials belong in credentials_file, not the URL"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed `[`"))?;
            let ip: Ipv6Addr = addr.parse().map_err(|_| bad("has a bad IPv6 address"))?;
            (
                Host::Ip(IpAddr::V6(ip)),
                after.strip_prefix(':').map(str::to_string),
            )
        }
        None => {
            let (name, port) = match authority.split_once(':') {
                Some((n, p)) => (n, Some(p.to_string())),
                None => (authority, None),
            };
            let host = match name.parse::<Ipv4Addr>() {
                Ok(ip) => Host::Ip(IpAddr::V4(ip)),
                Err(_) => Host::Name(name),
            };
            (host, port)
        }
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("has a bad port"));
        }
    }
    let loopback = match host {
        Host::Ip(ip) => ip.is_loopback(),
        Host::Name(name) => {
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
                return Err(bad(
                    "has no host, or one that is not a DNS name or an IP address",
                ));
            }
            name.eq_ignore_ascii_case("localhost")
        }
    };
    if !https && !loopback {
        return Err(bad(
            "plain http is allowed only to a loopback host; use https",
        ));
    }
    Ok(https)
}

enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// A key prefix that means the same to every store and URL: at most 512 bytes (the
/// longest uuid, client and name must still fit S3's 1,024), no control character, no
/// empty, `.` or `..` segment.
fn prefix_ok(prefix: &str) -> bool {
    prefix.len() <= 512
        && !prefix.chars().any(char::is_control)
        && prefix
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// S3's bucket naming rules, less the IP-address form (which no store hands out).
fn bucket_name_ok(b: &str) -> bool {
    let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && edge(b.bytes().next())
        && edge(b.bytes().last())
        && !b.contains("..")
}

/// One `[[storage]]` table as `check-config` prints it, headed by where it came from.
pub(super) fn to_toml(s: &Storage, source: &str) -> String {
    let mut out = format!(
        "\n[[storage]]  # {source}\nid = {}\nname = {}\nkind = {}\nusage = {}\n",
        s.id,
        toml_string(&s.name),
        toml_string(s.kind.as_str()),
        toml_string(s.usage.as_str())
    );
    match &s.kind {
        StorageKind::Dir => out.push_str(&format!(
            "path = {}\n",
            toml_string(&s.path.to_string_lossy())
        )),
        StorageKind::S3(b) => {
            out.push_str(&format!(
                "endpoint = {}\nbucket = {}\nprefix = {}\nregion = {}\n\
                 credentials_file = {}\npath_style = {}\ncapacity_mb = {}\n",
                toml_string(&b.endpoint),
                toml_string(&b.bucket),
                toml_string(&b.prefix),
                toml_string(&b.region),
                toml_string(&b.credentials_file.to_string_lossy()),
                b.path_style,
                b.capacity_mb,
            ));
            if let Some(ca) = &b.ca_file {
                out.push_str(&format!(
                    "ca_file = {}\n",
                    toml_string(&ca.to_string_lossy())
                ));
            }
        }
    }
    out
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

    const S3: &str = "[[storage]]\nid = 4\nkind = \"s3\"\nendpoint = \"https://s3.example.net:8443\"\n\
                      bucket = \"replgate-b\"\ncredentials_file = \"/etc/r/s3.toml\"\ncapacity_mb = 100\n";

    #[test]
    fn an_s3_table_reads_its_keys_with_defaults() {
        let c = Config::from_toml(
            &format!("{S3}prefix = \"/a/b/\"\nregion = \"eu-west-3\"\npath_style = true\nca_file = \"/etc/r/ca.pem\"\n"),
            env(&[]),
        )
        .unwrap();
        let s = &c.storage[0];
        assert_eq!(s.path, Path::new("./replgate-data/s3/4"));
        let StorageKind::S3(b) = &s.kind else {
            panic!("{s:?}")
        };
        assert_eq!(
            **b,
            S3Storage {
                endpoint: "https://s3.example.net:8443".into(),
                bucket: "replgate-b".into(),
                prefix: "a/b".into(),
                region: "eu-west-3".into(),
                credentials_file: "/etc/r/s3.toml".into(),
                path_style: true,
                ca_file: Some("/etc/r/ca.pem".into()),
                capacity_mb: 100,
            }
        );
        let c = Config::from_toml(S3, env(&[])).unwrap();
        let StorageKind::S3(b) = &c.storage[0].kind else {
            panic!()
        };
        assert_eq!(
            (
                b.prefix.as_str(),
                b.region.as_str(),
                b.path_style,
                b.ca_file.is_none()
            ),
            ("", "us-east-1", false, true)
        );
        // check-config's output reads back to the same storage.
        let again = Config::from_toml(&c.to_toml(), env(&[])).unwrap();
        assert_eq!(again.storage, c.storage);
        // A bucket is never the storage a source replicates from.
        assert_eq!(c.replication_storage(), None);
        let e = Config::from_toml(&format!("replicate_from = 4\n{S3}"), env(&[])).unwrap_err();
        assert_eq!(e.key, "replicate_from");
    }

    #[test]
    fn s3_and_dir_keys_do_not_mix_and_bad_values_name_the_key() {
        let cases = [
            (
                "[[storage]]\nid = 1\npath = \"/a\"\nbucket = \"b\"\n",
                "storage[0].bucket",
            ),
            (&format!("{S3}path = \"/x\"\n") as &str, "storage[0].path"),
            (
                "[[storage]]\nid = 1\nkind = \"nfs\"\npath = \"/a\"\n",
                "storage[0].kind",
            ),
            (
                &S3.replace("capacity_mb = 100\n", ""),
                "storage[0].capacity_mb",
            ),
            (
                &S3.replace("capacity_mb = 100", "capacity_mb = 0"),
                "storage[0].capacity_mb",
            ),
            (
                &S3.replace("credentials_file = \"/etc/r/s3.toml\"\n", ""),
                "storage[0].credentials_file",
            ),
            (
                &S3.replace("https://s3.example.net:8443", "http://s3.example.net"),
                "storage[0].endpoint",
            ),
            (
                &S3.replace("https://s3.example.net:8443", "ftp://s3.example.net"),
                "storage[0].endpoint",
            ),
            (
                &S3.replace("https://s3.example.net:8443", "https://k:s@s3.example.net"),
                "storage[0].endpoint",
            ),
            (&S3.replace("replgate-b", "Replgate_B"), "storage[0].bucket"),
            (&S3.replace("replgate-b", "ab"), "storage[0].bucket"),
            (&format!("{S3}prefix = \"a/../b\"\n"), "storage[0].prefix"),
            (&format!("{S3}region = \"us east\"\n"), "storage[0].region"),
        ];
        for (text, key) in cases {
            let e = Config::from_toml(text, env(&[])).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        // Plain http to loopback is taken (a store on the same box, the test engine).
        for ok in [
            "http://127.0.0.1:8333",
            "http://[::1]:8333/s3",
            "http://localhost",
            "https://[2001:db8::1]",
        ] {
            let local = S3.replace("https://s3.example.net:8443", ok);
            assert!(Config::from_toml(&local, env(&[])).is_ok(), "{ok}");
        }
    }
}
