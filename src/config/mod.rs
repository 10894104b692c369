//! Configuration: the TOML file plus `REPLGATE_<KEY>` environment overrides, resolved into a
//! validated [`Config`] with the documented defaults. Reads one file; never writes any.
//!
//! - `keys`: every key once (name, kind, default, range, unit, meaning), the table all of
//!   the rest reads; docs/configuration.md's key table is held to it by a test,
//! - `values`: the file and the environment to one checked value per key,
//! - `storage`: the `[[storage]]` tables.
//!
//! This file builds the typed [`Config`] from the resolved values (with the rules that
//! span keys) and prints it back as TOML for `check-config`.

mod keys;
mod storage;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::Secret;
use crate::wire::compress::Compression;
use keys::Kind;
use values::{toml_value, Given, Values};

pub use storage::{parse_endpoint, S3Storage, Storage, StorageKind, StorageUsage};

/// The packaged config file, used when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/replgate/replgate.toml";

/// Defaults that code outside this module builds on (the listeners' limits), written once:
/// the key table resolves missing keys to these, and `listener::Limits`, `front::Limits`
/// and `tunnel::Limits` default to them.
pub mod defaults {
    use std::time::Duration;

    /// `max_connections`.
    pub const MAX_CONNECTIONS: usize = 256;
    /// `max_connections_per_address`.
    pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 32;
    /// `max_receive_sessions`.
    pub const MAX_RECEIVE_SESSIONS: usize = 64;
    /// `handshake_timeout`.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// `idle_timeout`.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `head_timeout`.
    pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
    /// `max_head_bytes`.
    pub const MAX_HEAD_BYTES: usize = 16_384;
    /// `max_body_bytes`.
    pub const MAX_BODY_BYTES: u64 = 65_536;
    /// `server_certificate_seconds`: two years.
    pub const SERVER_CERTIFICATE_SECONDS: u64 = 2 * 365 * 86_400;
}

/// Fault injection for crash tests; `none` in production.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Abort the process right after an accept is committed and before its spool is written.
    CrashAfterAcceptCommit,
    /// Target: abort right after a renewal is committed, before the source hears of it.
    CrashAfterRenewCommit,
    /// Source: abort right after a renewed certificate is written, before it is installed.
    CrashAfterRenewReceive,
    /// Source: abort right after a renewed generation is installed, before it is proven.
    CrashAfterRenewInstall,
    /// Target: abort after a CA rollover's new key and certificate are written, before
    /// the start commits.
    CrashAfterRolloverFiles,
    /// Target: abort after a CA rollover's start commits, before it takes effect.
    CrashAfterRolloverStart,
    /// Target: abort after a CA rollover's finish commits, before the old key is removed.
    CrashAfterRolloverFinish,
}

impl Fault {
    /// Every fault, in the order of [`Fault::WORDS`].
    const ALL: [Fault; 8] = [
        Fault::None,
        Fault::CrashAfterAcceptCommit,
        Fault::CrashAfterRenewCommit,
        Fault::CrashAfterRenewReceive,
        Fault::CrashAfterRenewInstall,
        Fault::CrashAfterRolloverFiles,
        Fault::CrashAfterRolloverStart,
        Fault::CrashAfterRolloverFinish,
    ];
    /// The configuration's word for each of [`Fault::ALL`].
    const WORDS: [&'static str; 8] = [
        "none",
        "crash_after_accept_commit",
        "crash_after_renew_commit",
        "crash_after_renew_receive",
        "crash_after_renew_install",
        "crash_after_rollover_files",
        "crash_after_rollover_start",
        "crash_after_rollover_finish",
    ];

    /// The configuration's word for it.
    pub fn name(self) -> &'static str {
        Fault::ALL
            .iter()
            .position(|f| *f == self)
            .map_or("none", |i| Fault::WORDS[i])
    }

    fn from_word(word: &str) -> Option<Fault> {
        Fault::WORDS
            .iter()
            .position(|w| *w == word)
            .map(|i| Fault::ALL[i])
    }

    /// Aborts the process (as kill -9 would end it: no destructor, no flush) when `self`
    /// is the fault configured for this point.
    pub fn crash_if(self, point: Fault) {
        if self == point && point != Fault::None {
            log::error!("fault injection: aborting at {point:?}");
            std::process::abort();
        }
    }
}

/// The resolved configuration. Each field names its key; `keys.rs` has its default and
/// range, docs/configuration.md its full meaning.
#[derive(Clone, Debug)]
pub struct Config {
    /// `data_dir`: database, keys, certificates, spool.
    pub data_dir: PathBuf,
    /// `api_listen`: admin API and appliance protocol (TLS).
    pub api_listen: SocketAddr,
    /// `tunnel_listen`: the mutual-TLS tunnel.
    pub tunnel_listen: SocketAddr,
    /// `hostnames`: names put in the API and tunnel certificates.
    pub hostnames: Vec<String>,
    /// `console_hosts`: further `Host` names the web console answers to (a reverse proxy's
    /// name), besides `hostnames`, the listen address and loopback.
    pub console_hosts: Vec<String>,
    /// `console_origins`: further origins (`https://name[:port]`) whose pages may send
    /// state-changing console requests (a reverse proxy that serves the console under another
    /// name).
    pub console_origins: Vec<String>,
    /// `name`, read through [`Config::name`].
    name: String,
    /// `asset_tag`: the appliance's asset tag, shown on its systems row and sent to the targets
    /// it asks.
    pub asset_tag: String,
    /// `poll_interval` (s): source poll period while a request is open.
    pub poll_interval: Duration,
    /// `heartbeat_interval` (s): source poll period after completion.
    pub heartbeat_interval: Duration,
    /// `drill_interval` (s): scheduled restore drills per target; 0 is never.
    pub drill_interval: Duration,
    /// `drill_warn_days`: health warning after this many days without a passed drill; 0
    /// is never.
    pub drill_warn_days: u64,
    /// `max_connections`: connection cap per listener (API and tunnel).
    pub max_connections: usize,
    /// `max_connections_per_address`: connections one client address (IPv4 address or IPv6 /64)
    /// may hold open per listener; capped by `max_connections`.
    pub max_connections_per_address: usize,
    /// `max_receive_sessions`: replication sessions received at once, from all sources.
    pub max_receive_sessions: usize,
    /// `log`: log filter; `RUST_LOG` wins when set.
    pub log: String,
    /// `handshake_timeout` (s): a TLS handshake must finish within it.
    pub handshake_timeout: Duration,
    /// `idle_timeout` (s): a connection with no traffic is closed.
    pub idle_timeout: Duration,
    /// `head_timeout` (s): a request head must arrive within it once begun.
    pub head_timeout: Duration,
    /// `max_head_bytes`: request line plus headers.
    pub max_head_bytes: usize,
    /// `max_body_bytes`: request body cap.
    pub max_body_bytes: u64,
    /// `session_idle` (s): a token unused this long expires.
    pub session_idle: Duration,
    /// `session_lifetime` (s): a token expires this long after login.
    pub session_lifetime: Duration,
    /// `login_max_failures`: failed logins per user or address within `login_window` before
    /// further attempts get 429.
    pub login_max_failures: u32,
    /// `login_window` (s): the login throttle's window.
    pub login_window: Duration,
    /// `login_delay_max` (s): the longest wait the per-account bound imposes between attempts
    /// on one account once it has had `login_max_failures` failures from anywhere (the wait
    /// doubles per further failure, from 1 s up to this).
    pub login_delay_max: Duration,
    /// `request_ttl` (s): a pending pairing request expires after it.
    pub request_ttl: Duration,
    /// `request_retention` (s): rejected, expired and ignored requests (and their spool) are
    /// deleted this long after they ended.
    pub request_retention: Duration,
    /// `max_pending`: global cap on open pairing requests.
    pub max_pending: u32,
    /// `max_pending_per_address`: open pairing requests per remote network (see the two
    /// prefixes).
    pub max_pending_per_address: u32,
    /// `pending_prefix_v4`: the IPv4 network an address counts in for
    /// `max_pending_per_address`, as a prefix length (8 to 32).
    pub pending_prefix_v4: u8,
    /// `pending_prefix_v6`: the same for IPv6 (16 to 128).
    pub pending_prefix_v6: u8,
    /// `unverified_request_ttl` (s): a pending request filed without a pairing token expires
    /// after the shorter of it and `request_ttl`.
    pub unverified_request_ttl: Duration,
    /// `crowded_request_ttl` (s): a pending request filed without a token while the inbox
    /// is at least half full, from a network that already has open requests, expires after
    /// the shorter of it and the other TTLs.
    pub crowded_request_ttl: Duration,
    /// `require_token`: refuse every pairing request filed without a valid pairing token.
    pub require_token: bool,
    /// `certificate_days` (or `certificate_seconds`, which wins, at least 60): lifetime of
    /// issued source certificates.
    pub client_cert_lifetime: Duration,
    /// `server_certificate_seconds` (at least 60): lifetime of the API and tunnel listener
    /// certificates.
    pub server_cert_lifetime: Duration,
    /// `renew_grace` (s, at least 60): how long a renewed source certificate's predecessor
    /// stays valid when the source does not prove the new one first.
    pub renew_grace: Duration,
    /// `rollover_window` (s): how long a CA rollover waits for every source before
    /// `finish` may leave the stragglers behind.
    pub rollover_window: Duration,
    /// `workers`: threads that run request handlers.
    pub workers: usize,
    /// `[[storage]]`: storage locations.
    pub storage: Vec<Storage>,
    /// `replicate_from`: the id of the storage whose backups this appliance replicates to its
    /// targets.
    pub replicate_from: Option<u64>,
    /// `recycle_days`: how long a backup retention removed stays in the recycle bin.
    pub recycle_days: u64,
    /// `verify_interval` (s): how often every source's copies are verified; zero: never
    /// on a schedule.
    pub verify_interval: Duration,
    /// `partial_retention` (s): a partial copy no session resumed for this long is removed.
    pub partial_retention: Duration,
    /// `compression`: of replicated content (`auto`, `off`, `zstd:<level>`).
    pub compression: Compression,
    /// `tunnel_congestion`: TCP congestion control of tunnel sockets (`system`: leave it).
    pub tunnel_congestion: String,
    /// `dedup`: send and accept chunk lists (`auto`), or whole files only (`off`).
    pub dedup: bool,
    /// `dedup_scope = "target"`: a source's new backup may take chunks from every source's
    /// copies on the storage, not only its own.
    pub dedup_across_sources: bool,
    /// `fault`: fault injection for crash tests (`none`, `crash_after_accept_commit`,
    /// `crash_after_renew_commit`, `crash_after_renew_receive`, `crash_after_renew_install`,
    /// `crash_after_rollover_files`, `crash_after_rollover_start`,
    /// `crash_after_rollover_finish`).
    pub fault: Fault,
    /// Where each key that is not a default came from: `file PATH` or `env REPLGATE_KEY`.
    pub sources: BTreeMap<String, String>,
    /// `REPLGATE_ADMIN_PASSWORD`, read through [`Config::admin_password`].
    admin_password: Option<Secret<String>>,
    /// Every key's resolved value, which `check-config` prints.
    values: Values,
}

/// A configuration problem, naming the key (or file) at fault.
#[derive(Debug)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "configuration: {}", self.problem)
        } else {
            write!(f, "config key `{}`: {}", self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// `s` as a TOML basic string. JSON's escapes are TOML's too, but JSON leaves DEL (U+007F)
/// raw, which TOML refuses in a string; so `check-config` printed a file that did not
/// parse for a path holding one (found by the `config` fuzz target).
fn toml_string(s: &str) -> String {
    serde_json::Value::from(s)
        .to_string()
        .replace('\u{7f}', "\\u007f")
}

fn bad(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

impl Config {
    /// Loads `path` when given (it must exist), else the packaged file when present, else
    /// the embedded defaults; then applies the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => Some((
                p.to_path_buf(),
                std::fs::read_to_string(p).map_err(|e| {
                    bad(
                        "",
                        format!("cannot read the --config file {}: {e}", p.display()),
                    )
                })?,
            )),
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                match std::fs::read_to_string(p) {
                    Ok(t) => Some((p.to_path_buf(), t)),
                    Err(_) => None,
                }
            }
        };
        let env = std::env::vars().filter(|(k, _)| k.starts_with("REPLGATE_"));
        match text {
            Some((p, t)) => {
                let mut c = Config::from_toml(&t, env).map_err(|mut e| {
                    e.problem = format!("{} (in {})", e.problem, p.display());
                    e
                })?;
                for source in c.sources.values_mut() {
                    if source == "file" {
                        *source = format!("file {}", p.display());
                    }
                }
                Ok(c)
            }
            None => Config::from_toml("", env),
        }
    }

    /// Parses `text` as the config file, then applies `env` overrides and validates.
    pub fn from_toml(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut given = Given::file(text)?;
        let mut admin_password = None;
        let env = env.inspect(|(name, value)| {
            if name == "REPLGATE_ADMIN_PASSWORD" && !value.is_empty() {
                admin_password = Some(Secret::new(value.clone()));
            }
        });
        given.apply_env(env)?;
        let sources = std::mem::take(&mut given.sources);
        let mut config = Config::from_values(given.resolve()?)?;
        config.sources = sources;
        config.admin_password = admin_password;
        Ok(config)
    }

    /// The typed configuration from every key's value, with the rules that span keys.
    fn from_values(v: Values) -> Result<Config, ConfigError> {
        let data_dir = PathBuf::from(v.text("data_dir")?);
        let storage = storage::resolve(v.storage()?, &data_dir)?;
        let replicate_from = v.optional("replicate_from")?;
        if let Some(id) = replicate_from {
            match storage.iter().find(|s| s.id == id) {
                None => {
                    return Err(bad(
                        "replicate_from",
                        format!("{id} is not the id of a configured storage"),
                    ))
                }
                Some(s) if s.kind != StorageKind::Dir => {
                    return Err(bad(
                        "replicate_from",
                        format!("{id} is an s3 storage; a source replicates from a dir storage"),
                    ))
                }
                Some(_) => {}
            }
        }
        let api_listen = v.address("api_listen")?;
        let tunnel_listen = v.address("tunnel_listen")?;
        if api_listen == tunnel_listen && api_listen.port() != 0 {
            return Err(bad("tunnel_listen", "must differ from api_listen"));
        }
        // `certificate_seconds` wins over `certificate_days` when it is set.
        let client_cert_lifetime = match v.optional("certificate_seconds")? {
            Some(seconds) => Duration::from_secs(seconds),
            None => Duration::from_secs(v.number("certificate_days")? * 86_400),
        };
        let fault = v.text("fault")?;
        Ok(Config {
            data_dir,
            api_listen,
            tunnel_listen,
            hostnames: v.list("hostnames")?,
            console_hosts: v.list("console_hosts")?,
            console_origins: v.list("console_origins")?,
            name: v.text("name")?,
            asset_tag: v.text("asset_tag")?,
            poll_interval: v.seconds("poll_interval")?,
            heartbeat_interval: v.seconds("heartbeat_interval")?,
            drill_interval: v.seconds("drill_interval")?,
            drill_warn_days: v.number("drill_warn_days")?,
            max_connections: v.count("max_connections")?,
            max_connections_per_address: v.count("max_connections_per_address")?,
            max_receive_sessions: v.count("max_receive_sessions")?,
            log: v.text("log")?,
            handshake_timeout: v.seconds("handshake_timeout")?,
            idle_timeout: v.seconds("idle_timeout")?,
            head_timeout: v.seconds("head_timeout")?,
            max_head_bytes: v.count("max_head_bytes")?,
            max_body_bytes: v.number("max_body_bytes")?,
            session_idle: v.seconds("session_idle")?,
            session_lifetime: v.seconds("session_lifetime")?,
            login_max_failures: v.count("login_max_failures")?,
            login_window: v.seconds("login_window")?,
            login_delay_max: v.seconds("login_delay_max")?,
            request_ttl: v.seconds("request_ttl")?,
            request_retention: v.seconds("request_retention")?,
            max_pending: v.count("max_pending")?,
            max_pending_per_address: v.count("max_pending_per_address")?,
            pending_prefix_v4: v.count("pending_prefix_v4")?,
            pending_prefix_v6: v.count("pending_prefix_v6")?,
            unverified_request_ttl: v.seconds("unverified_request_ttl")?,
            crowded_request_ttl: v.seconds("crowded_request_ttl")?,
            require_token: v.flag("require_token")?,
            client_cert_lifetime,
            server_cert_lifetime: v.seconds("server_certificate_seconds")?,
            renew_grace: v.seconds("renew_grace")?,
            rollover_window: v.seconds("rollover_window")?,
            workers: v.count("workers")?,
            storage,
            replicate_from,
            recycle_days: v.number("recycle_days")?,
            verify_interval: v.seconds("verify_interval")?,
            partial_retention: v.seconds("partial_retention")?,
            compression: Compression::parse(&v.text("compression")?)
                .map_err(|e| bad("compression", e))?,
            tunnel_congestion: v.text("tunnel_congestion")?,
            dedup: v.text("dedup")? == "auto",
            dedup_across_sources: v.text("dedup_scope")? == "target",
            fault: Fault::from_word(&fault).ok_or_else(|| bad("fault", "internal: unchecked"))?,
            sources: BTreeMap::new(),
            admin_password: None,
            values: v,
        })
    }

    /// The resolved configuration as a TOML file that would give it, each line commented
    /// with where its value came from (`default`, `file PATH`, `env REPLGATE_KEY`): what
    /// `check-config` prints. An unset key is a comment saying what that means.
    pub fn to_toml(&self) -> String {
        let source = |key: &str| {
            self.sources
                .get(key)
                .map(String::as_str)
                .unwrap_or("default")
                .to_string()
        };
        let mut out = String::new();
        for (key, value) in self.values.iter() {
            match (toml_value(value), &key.kind) {
                (Some(value), _) => {
                    out.push_str(&format!("{} = {value}  # {}\n", key.name, source(key.name)))
                }
                (
                    None,
                    Kind::Number {
                        default: keys::NumberDefault::Unset(what),
                        ..
                    },
                ) => {
                    let what = what.replace('`', "");
                    out.push_str(&format!("# {}: {what}  # default\n", key.name));
                }
                (None, _) => {}
            }
        }
        for s in &self.storage {
            out.push_str(&storage::to_toml(s, &source("storage")));
        }
        out
    }

    /// `name`: how this appliance introduces itself (its systems row, the `name` and `host`
    /// of the requests it files). Defaults to the first of `hostnames`, or, while those are
    /// the default `["localhost"]`, the machine's host name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `REPLGATE_ADMIN_PASSWORD` (not a key: never in a file, never printed): root's
    /// password for a database without users.
    pub fn admin_password(&self) -> Option<&Secret<String>> {
        self.admin_password.as_ref()
    }

    /// The storage marked default: the first with usage `backup`.
    pub fn default_storage(&self) -> Option<&Storage> {
        self.storage
            .iter()
            .find(|s| s.usage == StorageUsage::Backup)
    }

    /// The storage whose backups replicate to targets: `replicate_from`, else the default
    /// when it is a directory (a source replicates the files it holds itself).
    pub fn replication_storage(&self) -> Option<&Storage> {
        match self.replicate_from {
            Some(id) => self.storage.iter().find(|s| s.id == id),
            None => self
                .default_storage()
                .filter(|s| s.kind == StorageKind::Dir),
        }
    }
}

/// `pairs` as the environment [`Config::from_toml`] takes, for unit tests.
#[cfg(test)]
fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>()
        .into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = Config::from_toml("", env(&[])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./replgate-data"));
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.tunnel_listen.to_string(), "127.0.0.1:8444");
        assert_eq!(c.hostnames, vec!["localhost".to_string()]);
        assert_eq!(c.poll_interval, Duration::from_secs(30));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(300));
        assert_eq!(c.max_connections, 256);
        assert_eq!(c.max_connections_per_address, 32);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.head_timeout, Duration::from_secs(10));
        assert_eq!(c.max_head_bytes, 16_384);
        assert_eq!(c.max_body_bytes, 65_536);
        assert_eq!(c.log, "info");
        assert_eq!(c.storage.len(), 1);
        assert_eq!(c.default_storage().unwrap().id, 1);
        assert_eq!((c.pending_prefix_v4, c.pending_prefix_v6), (24, 64));
        assert!(!c.require_token);
        assert_eq!(c.unverified_request_ttl, c.request_ttl);
    }

    #[test]
    fn the_name_is_set_or_the_first_host_name_or_the_machines_never_a_bare_localhost() {
        let named = Config::from_toml("name = \"north-dpu\"\n", env(&[])).unwrap();
        assert_eq!(named.name(), "north-dpu");
        let from_env = Config::from_toml("", env(&[("REPLGATE_NAME", "south")])).unwrap();
        assert_eq!(from_env.name(), "south");
        let first = Config::from_toml("hostnames = [\"b.example\", \"c\"]\n", env(&[])).unwrap();
        assert_eq!(first.name(), "b.example");
        let default = Config::from_toml("", env(&[])).unwrap();
        assert_eq!(
            default.name,
            keys::system_host_name().unwrap_or_else(|| "localhost".into())
        );
        assert!(!default.name().is_empty());
        for bad in ["name = \"\"\n", "name = \"a\\nb\"\n"] {
            let e = Config::from_toml(bad, env(&[])).unwrap_err();
            assert_eq!(e.key, "name", "{bad}");
        }
    }

    #[test]
    fn token_and_flood_keys_parse_and_are_bounded() {
        let c = Config::from_toml(
            "require_token = true\nrequest_ttl = 900\npending_prefix_v4 = 32\n",
            env(&[("REPLGATE_UNVERIFIED_REQUEST_TTL", "60")]),
        )
        .unwrap();
        assert!(c.require_token);
        assert_eq!(c.unverified_request_ttl, Duration::from_secs(60));
        assert_eq!(c.pending_prefix_v4, 32);
        let c = Config::from_toml("request_ttl = 900", env(&[])).unwrap();
        assert_eq!(
            c.unverified_request_ttl,
            Duration::from_secs(900),
            "defaults to request_ttl"
        );
        let c = Config::from_toml("", env(&[("REPLGATE_REQUIRE_TOKEN", "1")])).unwrap();
        assert!(c.require_token);
        for (text, key) in [
            ("pending_prefix_v4 = 33", "pending_prefix_v4"),
            ("pending_prefix_v6 = 8", "pending_prefix_v6"),
            ("unverified_request_ttl = 0", "unverified_request_ttl"),
        ] {
            assert_eq!(
                Config::from_toml(text, env(&[])).unwrap_err().key,
                key,
                "{text}"
            );
        }
        let e = Config::from_toml("", env(&[("REPLGATE_REQUIRE_TOKEN", "yes")])).unwrap_err();
        assert_eq!(e.key, "require_token");
        assert!(Config::from_toml("require_token = \"yes\"", env(&[])).is_err());
        assert_eq!(c.client_cert_lifetime, Duration::from_secs(365 * 86_400));
        assert_eq!(
            c.server_cert_lifetime,
            Duration::from_secs(2 * 365 * 86_400)
        );
        assert_eq!(c.renew_grace, Duration::from_secs(604_800));
    }

    #[test]
    fn certificate_seconds_overrides_days_and_lifetimes_have_a_floor_of_a_minute() {
        let c =
            Config::from_toml("certificate_days = 30\ncertificate_seconds = 90", env(&[])).unwrap();
        assert_eq!(c.client_cert_lifetime, Duration::from_secs(90));
        let c = Config::from_toml("certificate_days = 30", env(&[])).unwrap();
        assert_eq!(c.client_cert_lifetime, Duration::from_secs(30 * 86_400));
        let c = Config::from_toml(
            "",
            env(&[
                ("REPLGATE_SERVER_CERTIFICATE_SECONDS", "60"),
                ("REPLGATE_RENEW_GRACE", "120"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server_cert_lifetime, Duration::from_secs(60));
        assert_eq!(c.renew_grace, Duration::from_secs(120));
        for key in [
            "certificate_seconds",
            "server_certificate_seconds",
            "renew_grace",
        ] {
            let e = Config::from_toml(&format!("{key} = 59"), env(&[])).unwrap_err();
            assert_eq!(e.key, key);
        }
        let e = Config::from_toml("fault = \"sometimes\"", env(&[])).unwrap_err();
        assert!(e.to_string().contains("crash_after_renew_commit"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = Config::from_toml(
            "poll_interval = 10\napi_listen = \"127.0.0.1:9000\"\n",
            env(&[
                ("REPLGATE_POLL_INTERVAL", "3"),
                ("REPLGATE_HOSTNAMES", "a.example, b"),
            ]),
        )
        .unwrap();
        assert_eq!(c.poll_interval, Duration::from_secs(3));
        assert_eq!(c.api_listen.port(), 9000);
        assert_eq!(c.hostnames, vec!["a.example".to_string(), "b".to_string()]);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::from_toml("max_connections = 0", env(&[])).unwrap_err();
        assert_eq!(e.key, "max_connections");
        let e = Config::from_toml("api_listen = \"nowhere\"", env(&[])).unwrap_err();
        assert_eq!(e.key, "api_listen");
        let e = Config::from_toml("", env(&[("REPLGATE_IDLE_TIMEOUT", "soon")])).unwrap_err();
        assert_eq!(e.key, "idle_timeout");
        let e = Config::from_toml("", env(&[("REPLGATE_NO_SUCH", "1")])).unwrap_err();
        assert_eq!(e.key, "no_such");
    }

    /// Strips the `# source` comments of `to_toml`'s lines.
    fn values(toml: &str) -> String {
        toml.lines()
            .map(|l| l.split("  # ").next().unwrap_or(l))
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `config` fuzz target's find: a data_dir holding DEL (and other controls) from
    /// the environment is printed so that it parses back to the same value.
    #[test]
    fn check_config_escapes_every_control_character_toml_refuses() {
        let dir = "/srv/a\u{7f}b\u{1}c\td\u{0}e\u{9f}";
        let c = Config::from_toml("", env(&[("REPLGATE_DATA_DIR", dir)])).unwrap();
        let toml = c.to_toml();
        assert!(toml.contains("\\u007f"), "{toml}");
        let again = Config::from_toml(&values(&toml), env(&[])).unwrap();
        assert_eq!(again.data_dir, std::path::Path::new(dir));
        assert_eq!(values(&again.to_toml()), values(&toml));
    }

    #[test]
    fn check_config_prints_toml_that_gives_the_same_config_and_says_where_values_came_from() {
        let file = "poll_interval = 10\nhostnames = [\"a.example\", \"b\"]\n[[storage]]\nid = 4\npath = \"/srv/x\"\n";
        let c = Config::from_toml(file, env(&[("REPLGATE_IDLE_TIMEOUT", "70")])).unwrap();
        let toml = c.to_toml();
        assert!(toml.contains("poll_interval = 10  # file\n"), "{toml}");
        assert!(
            toml.contains("idle_timeout = 70  # env REPLGATE_IDLE_TIMEOUT\n"),
            "{toml}"
        );
        assert!(
            toml.contains("max_connections = 256  # default\n"),
            "{toml}"
        );
        assert!(toml.contains("[[storage]]  # file\nid = 4\n"), "{toml}");
        let again = Config::from_toml(&values(&toml), env(&[])).unwrap();
        assert_eq!(values(&again.to_toml()), values(&toml));
        // Every key the file may hold is shown (serde lists them for an unknown one).
        let e = Config::from_toml("no_such_key = 1", env(&[])).unwrap_err();
        let keys: Vec<&str> = e.problem.split('`').skip(3).step_by(2).collect();
        assert!(keys.len() > 20, "{e}");
        for k in keys {
            assert!(
                toml.contains(&format!("{k} = "))
                    || toml.contains(&format!("[[{k}]]"))
                    || toml.contains(&format!("# {k}:")),
                "check-config does not show `{k}`:\n{toml}"
            );
        }
    }

    #[test]
    fn type_errors_name_the_key_not_the_value() {
        let e = Config::from_toml("poll_interval = 5.5", env(&[])).unwrap_err();
        assert_eq!(e.key, "poll_interval", "{e}");
        let e = Config::load(Some(Path::new("/nonexistent/replgate.toml"))).unwrap_err();
        assert!(!e.to_string().contains("key"), "{e}");
        assert!(e.to_string().contains("/nonexistent/replgate.toml"), "{e}");
    }

    #[test]
    fn a_log_filter_that_would_silence_the_daemon_is_refused() {
        let e = Config::from_toml("log = \"verbose\"", env(&[])).unwrap_err();
        assert_eq!(e.key, "log");
        let e = Config::from_toml("", env(&[("REPLGATE_LOG", "verbose")])).unwrap_err();
        assert_eq!(e.key, "log");
        assert!(Config::from_toml("log = \"replgate=debug,warn\"", env(&[])).is_ok());
    }

    #[test]
    fn ctl_and_build_settings_in_the_environment_do_not_concern_the_daemon() {
        let ctl = env(&[
            ("REPLGATE_CTL_API", "https://10.0.0.1:8443"),
            ("REPLGATE_CTL_CACERT", "/var/lib/replgate/ca.pem"),
            ("REPLGATE_CTL_TOKEN_FILE", "/tmp/t"),
            ("REPLGATE_PASSWORD", "secret"),
            ("REPLGATE_COMMIT", "0123456789ab"),
        ]);
        let c = Config::from_toml("", ctl).unwrap();
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:8443");
    }

    #[test]
    fn console_hosts_and_origins_are_lists_checked_like_hostnames() {
        let c = Config::from_toml(
            "console_hosts = [\"proxy.example\"]\n",
            env(&[(
                "REPLGATE_CONSOLE_ORIGINS",
                "https://Proxy.Example, https://[::1]:8443",
            )]),
        )
        .unwrap();
        assert_eq!(c.console_hosts, vec!["proxy.example".to_string()]);
        assert_eq!(
            c.console_origins,
            vec![
                "https://proxy.example".to_string(),
                "https://[::1]:8443".into()
            ]
        );
        let defaults = Config::from_toml("", env(&[])).unwrap();
        assert!(defaults.console_hosts.is_empty() && defaults.console_origins.is_empty());
        for bad in [
            "http://proxy.example",
            "https://proxy.example/",
            "https://proxy.example:0",
            "https://",
            "proxy.example",
        ] {
            let e = Config::from_toml("", env(&[("REPLGATE_CONSOLE_ORIGINS", bad)])).unwrap_err();
            assert_eq!(e.key, "console_origins", "{bad}");
        }
        let e = Config::from_toml("console_hosts = [\"a b\"]", env(&[])).unwrap_err();
        assert_eq!(e.key, "console_hosts");
    }

    #[test]
    fn unknown_and_mistyped_file_keys_are_named() {
        let e = Config::from_toml("pol_interval = 3", env(&[])).unwrap_err();
        assert_eq!(e.key, "pol_interval", "{e}");
        let e = Config::from_toml("poll_interval = \"3\"", env(&[])).unwrap_err();
        assert!(
            e.to_string().contains("poll_interval") || e.key == "poll_interval",
            "{e}"
        );
    }

    #[test]
    fn the_admin_password_is_taken_from_the_environment_and_never_shown() {
        let c = Config::from_toml("", env(&[("REPLGATE_ADMIN_PASSWORD", "s3cret-pw")])).unwrap();
        assert_eq!(
            c.admin_password().map(|p| p.expose().as_str()),
            Some("s3cret-pw")
        );
        let shown = format!("{c:?}\n{}", c.to_toml());
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        let empty = Config::from_toml("", env(&[("REPLGATE_ADMIN_PASSWORD", "")])).unwrap();
        assert!(empty.admin_password().is_none());
        let e = Config::from_toml("admin_password = \"x\"", env(&[])).unwrap_err();
        assert_eq!(e.key, "admin_password", "a file never holds it");
    }
}
