//! Configuration: the TOML file plus `REPLGATE_<KEY>` environment overrides, resolved into a
//! validated [`Config`] with the documented defaults. Reads one file; never writes any.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The packaged config file, used when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/replgate/replgate.toml";

/// Defaults that code outside this module builds on (the listeners' limits), written once:
/// [`Config`] resolves missing keys to these, and `listener::Limits`, `front::Limits` and
/// `tunnel::Limits` default to them.
pub mod defaults {
    use std::time::Duration;

    /// `max_connections`.
    pub const MAX_CONNECTIONS: usize = 256;
    /// `max_connections_per_address`.
    pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 32;
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
}

impl Fault {
    const NAMES: [(&'static str, Fault); 5] = [
        ("none", Fault::None),
        ("crash_after_accept_commit", Fault::CrashAfterAcceptCommit),
        ("crash_after_renew_commit", Fault::CrashAfterRenewCommit),
        ("crash_after_renew_receive", Fault::CrashAfterRenewReceive),
        ("crash_after_renew_install", Fault::CrashAfterRenewInstall),
    ];

    /// The configuration's word for it.
    pub fn name(self) -> &'static str {
        Fault::NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("none", |(name, _)| name)
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

/// The resolved configuration. Every field's doc names its key and default.
#[derive(Clone, Debug)]
pub struct Config {
    /// `data_dir`: database, keys, certificates, spool. Defaults to `./replgate-data`.
    pub data_dir: PathBuf,
    /// `api_listen`: admin API and appliance protocol (TLS). Defaults to `127.0.0.1:8443`.
    pub api_listen: SocketAddr,
    /// `tunnel_listen`: the mutual-TLS tunnel. Defaults to `127.0.0.1:8444`.
    pub tunnel_listen: SocketAddr,
    /// `hostnames`: names put in the API and tunnel certificates. Defaults to `["localhost"]`.
    pub hostnames: Vec<String>,
    /// `console_hosts`: further `Host` names the web console answers to (a reverse proxy's
    /// name), besides `hostnames`, the listen address and loopback. Defaults to `[]`.
    pub console_hosts: Vec<String>,
    /// `console_origins`: further origins (`https://name[:port]`) whose pages may send
    /// state-changing console requests (a reverse proxy that serves the console under
    /// another name). Defaults to `[]`.
    pub console_origins: Vec<String>,
    /// `name`, read through [`Config::name`].
    name: String,
    /// `asset_tag`: the appliance's asset tag, shown on its systems row and sent to the
    /// targets it asks. Defaults to `""` (none).
    pub asset_tag: String,
    /// `poll_interval` (s): source poll period while a request is open. Defaults to 30.
    pub poll_interval: Duration,
    /// `heartbeat_interval` (s): source poll period after completion. Defaults to 300.
    pub heartbeat_interval: Duration,
    /// `max_connections`: connection cap per listener (API and tunnel). Defaults to 256.
    pub max_connections: usize,
    /// `max_connections_per_address`: connections one client address (IPv4 address or
    /// IPv6 /64) may hold open per listener; capped by `max_connections`. Defaults to 32.
    pub max_connections_per_address: usize,
    /// `log`: log filter; `RUST_LOG` wins when set. Defaults to `info`.
    pub log: String,
    /// `handshake_timeout` (s): a TLS handshake must finish within it. Defaults to 10.
    pub handshake_timeout: Duration,
    /// `idle_timeout` (s): a connection with no traffic is closed. Defaults to 60.
    pub idle_timeout: Duration,
    /// `head_timeout` (s): a request head must arrive within it once begun. Defaults to 10.
    pub head_timeout: Duration,
    /// `max_head_bytes`: request line plus headers. Defaults to 16384.
    pub max_head_bytes: usize,
    /// `max_body_bytes`: request body cap. Defaults to 65536.
    pub max_body_bytes: u64,
    /// `session_idle` (s): a token unused this long expires. Defaults to 3600.
    pub session_idle: Duration,
    /// `session_lifetime` (s): a token expires this long after login. Defaults to 43200.
    pub session_lifetime: Duration,
    /// `login_max_failures`: failed logins per user or address within `login_window`
    /// before further attempts get 429. Defaults to 5.
    pub login_max_failures: u32,
    /// `login_window` (s): the login throttle's window. Defaults to 300.
    pub login_window: Duration,
    /// `login_delay_max` (s): the longest wait the per-account bound imposes between
    /// attempts on one account once it has had `login_max_failures` failures from anywhere
    /// (the wait doubles per further failure, from 1 s up to this). Defaults to 30.
    pub login_delay_max: Duration,
    /// `request_ttl` (s): a pending pairing request expires after it. Defaults to 604800 (7 days).
    pub request_ttl: Duration,
    /// `request_retention` (s): rejected, expired and ignored requests (and their spool) are
    /// deleted this long after they ended. Defaults to 2592000 (30 days).
    pub request_retention: Duration,
    /// `max_pending`: global cap on open pairing requests. Defaults to 1000.
    pub max_pending: u32,
    /// `max_pending_per_address`: open pairing requests per remote network (see the two
    /// prefixes). Defaults to 20.
    pub max_pending_per_address: u32,
    /// `pending_prefix_v4`: the IPv4 network an address counts in for
    /// `max_pending_per_address`, as a prefix length (8 to 32). Defaults to 24.
    pub pending_prefix_v4: u8,
    /// `pending_prefix_v6`: the same for IPv6 (16 to 128). Defaults to 64.
    pub pending_prefix_v6: u8,
    /// `unverified_request_ttl` (s): a pending request filed without a pairing token
    /// expires after the shorter of it and `request_ttl`. Defaults to `request_ttl`.
    pub unverified_request_ttl: Duration,
    /// `require_token`: refuse every pairing request filed without a valid pairing token.
    /// Defaults to false.
    pub require_token: bool,
    /// `certificate_days` (or `certificate_seconds`, which wins, at least 60): lifetime of
    /// issued source certificates. Defaults to 365 days.
    pub client_cert_lifetime: Duration,
    /// `server_certificate_seconds` (at least 60): lifetime of the API and tunnel listener
    /// certificates. Defaults to 63072000 (two years).
    pub server_cert_lifetime: Duration,
    /// `renew_grace` (s, at least 60): how long a renewed source certificate's predecessor
    /// stays valid when the source does not prove the new one first. Defaults to 604800
    /// (7 days).
    pub renew_grace: Duration,
    /// `workers`: threads that run request handlers. Defaults to 4.
    pub workers: usize,
    /// `[[storage]]`: storage locations. Defaults to one `backup` storage, id 1, at
    /// `<data_dir>/storage`.
    pub storage: Vec<Storage>,
    /// `replicate_from`: the id of the storage whose backups this appliance replicates to
    /// its targets. Defaults to the default backup storage.
    pub replicate_from: Option<u64>,
    /// `fault`: fault injection for crash tests (`none`, `crash_after_accept_commit`,
    /// `crash_after_renew_commit`, `crash_after_renew_receive`, `crash_after_renew_install`).
    /// Defaults to `none`.
    pub fault: Fault,
    /// Where each key that is not a default came from: `file PATH` or `env REPLGATE_KEY`.
    pub sources: BTreeMap<String, String>,
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

/// The key a TOML error is about. basic-toml says `... for key `poll_interval` ...` for a
/// wrong type and "unknown field `x`" for an unknown key; the first backticked word of a
/// type error is the value (`5.5`), never the key.
fn toml_error_key(msg: &str) -> String {
    let after = |marker: &str| {
        msg.split_once(marker)
            .and_then(|(_, rest)| rest.split('`').next())
            .filter(|k| !k.is_empty())
            .map(String::from)
    };
    after("for key `")
        .or_else(|| after("unknown field `"))
        .unwrap_or_default()
}

fn bad(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    id: Option<u64>,
    name: Option<String>,
    path: Option<String>,
    usage: Option<String>,
}

/// The file as written: every key optional; types checked by the TOML parser.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<String>,
    api_listen: Option<String>,
    tunnel_listen: Option<String>,
    hostnames: Option<Vec<String>>,
    console_hosts: Option<Vec<String>>,
    console_origins: Option<Vec<String>>,
    name: Option<String>,
    asset_tag: Option<String>,
    poll_interval: Option<u64>,
    heartbeat_interval: Option<u64>,
    max_connections: Option<u64>,
    max_connections_per_address: Option<u64>,
    log: Option<String>,
    handshake_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    head_timeout: Option<u64>,
    max_head_bytes: Option<u64>,
    max_body_bytes: Option<u64>,
    session_idle: Option<u64>,
    session_lifetime: Option<u64>,
    login_max_failures: Option<u64>,
    login_window: Option<u64>,
    login_delay_max: Option<u64>,
    request_ttl: Option<u64>,
    request_retention: Option<u64>,
    max_pending: Option<u64>,
    max_pending_per_address: Option<u64>,
    pending_prefix_v4: Option<u64>,
    pending_prefix_v6: Option<u64>,
    unverified_request_ttl: Option<u64>,
    require_token: Option<bool>,
    certificate_days: Option<u64>,
    certificate_seconds: Option<u64>,
    server_certificate_seconds: Option<u64>,
    renew_grace: Option<u64>,
    workers: Option<u64>,
    replicate_from: Option<u64>,
    fault: Option<String>,
    storage: Option<Vec<RawStorage>>,
}

/// Keys that `REPLGATE_<KEY>` may override (storage is a list of tables, file only).
const NUMERIC_KEYS: &[&str] = &[
    "poll_interval",
    "heartbeat_interval",
    "max_connections",
    "max_connections_per_address",
    "handshake_timeout",
    "idle_timeout",
    "head_timeout",
    "max_head_bytes",
    "max_body_bytes",
    "session_idle",
    "session_lifetime",
    "login_max_failures",
    "login_window",
    "login_delay_max",
    "request_ttl",
    "request_retention",
    "max_pending",
    "max_pending_per_address",
    "pending_prefix_v4",
    "pending_prefix_v6",
    "unverified_request_ttl",
    "certificate_days",
    "certificate_seconds",
    "server_certificate_seconds",
    "renew_grace",
    "workers",
    "replicate_from",
];

impl RawConfig {
    fn numeric_mut(&mut self, key: &str) -> Option<&mut Option<u64>> {
        Some(match key {
            "poll_interval" => &mut self.poll_interval,
            "heartbeat_interval" => &mut self.heartbeat_interval,
            "max_connections" => &mut self.max_connections,
            "max_connections_per_address" => &mut self.max_connections_per_address,
            "handshake_timeout" => &mut self.handshake_timeout,
            "idle_timeout" => &mut self.idle_timeout,
            "head_timeout" => &mut self.head_timeout,
            "max_head_bytes" => &mut self.max_head_bytes,
            "max_body_bytes" => &mut self.max_body_bytes,
            "session_idle" => &mut self.session_idle,
            "session_lifetime" => &mut self.session_lifetime,
            "login_max_failures" => &mut self.login_max_failures,
            "login_window" => &mut self.login_window,
            "login_delay_max" => &mut self.login_delay_max,
            "request_ttl" => &mut self.request_ttl,
            "request_retention" => &mut self.request_retention,
            "max_pending" => &mut self.max_pending,
            "max_pending_per_address" => &mut self.max_pending_per_address,
            "pending_prefix_v4" => &mut self.pending_prefix_v4,
            "pending_prefix_v6" => &mut self.pending_prefix_v6,
            "unverified_request_ttl" => &mut self.unverified_request_ttl,
            "certificate_days" => &mut self.certificate_days,
            "certificate_seconds" => &mut self.certificate_seconds,
            "server_certificate_seconds" => &mut self.server_certificate_seconds,
            "renew_grace" => &mut self.renew_grace,
            "workers" => &mut self.workers,
            "replicate_from" => &mut self.replicate_from,
            _ => return None,
        })
    }

    /// Applies `REPLGATE_<KEY>` overrides from `env` (an iterator so tests need no globals);
    /// returns the names of the variables that set a key.
    fn apply_env(
        &mut self,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Vec<String>, ConfigError> {
        let mut applied = Vec::new();
        for (name, value) in env {
            let Some(key) = name.strip_prefix("REPLGATE_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if not_a_setting(&key) {
                continue;
            }
            applied.push(name.clone());
            match key.as_str() {
                "data_dir" => self.data_dir = Some(value),
                "api_listen" => self.api_listen = Some(value),
                "tunnel_listen" => self.tunnel_listen = Some(value),
                "log" => self.log = Some(value),
                "asset_tag" => self.asset_tag = Some(value),
                "name" => self.name = Some(value),
                "fault" => self.fault = Some(value),
                "require_token" => {
                    self.require_token = Some(match value.trim() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(bad(
                                "require_token",
                                format!("{name}={value:?} is not true, false, 1 or 0"),
                            ))
                        }
                    })
                }
                "hostnames" => self.hostnames = Some(comma_list(&value)),
                "console_hosts" => self.console_hosts = Some(comma_list(&value)),
                "console_origins" => self.console_origins = Some(comma_list(&value)),
                k if NUMERIC_KEYS.contains(&k) => {
                    let parsed = value.trim().parse::<u64>().map_err(|_| {
                        bad(k, format!("{name}={value:?} is not a non-negative integer"))
                    })?;
                    if let Some(slot) = self.numeric_mut(k) {
                        *slot = Some(parsed);
                    }
                }
                other => return Err(bad(other, format!("{name} is not a known setting"))),
            }
        }
        Ok(applied)
    }
}

/// A list key given in one environment variable: comma-separated, blanks dropped.
fn comma_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A host name or IP literal as `hostnames` and `console_hosts` take them.
fn valid_host(h: &str) -> bool {
    h.parse::<std::net::IpAddr>().is_ok()
        || (!h.is_empty()
            && h.len() <= 253
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
}

/// `console_origins`: each exactly `https://host[:port]` (what a browser sends as
/// `Origin`), stored lower-case.
fn console_origins(raw: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for o in raw.unwrap_or_default() {
        let lower = o.to_ascii_lowercase();
        let authority = lower.strip_prefix("https://").unwrap_or("");
        let host_ok =
            crate::wire::http::split_authority(authority).is_some_and(|(host, _)| valid_host(host));
        if !host_ok {
            return Err(bad(
                "console_origins",
                format!("{o:?} is not an origin like https://backup.example.net[:port]"),
            ));
        }
        out.push(lower);
    }
    Ok(out)
}

fn seconds(
    key: &str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(ranged(key, value, default, min, max)?))
}

fn ranged(
    key: &str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(bad(
            key,
            format!("{v} is outside the allowed range {min}..={max}"),
        ));
    }
    Ok(v)
}

fn listen(key: &str, value: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    text.parse().map_err(|_| {
        bad(
            key,
            format!("{text:?} is not an address like 127.0.0.1:8443"),
        )
    })
}

/// The appliance's name when `name` is not set: the first configured host name, unless
/// that is still the default `localhost`, which would name every appliance alike (two on
/// one target's pending list could not be told apart); then the machine's host name.
fn default_name(hostnames: &[String]) -> String {
    match hostnames.first().map(String::as_str) {
        Some(first) if first != "localhost" => first.to_string(),
        _ => system_host_name().unwrap_or_else(|| "localhost".into()),
    }
}

/// The kernel's host name (`gethostname`), when it is set and printable.
fn system_host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many
    // bytes, and the result is read only up to the first NUL within the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty() && !name.chars().any(char::is_control) && name != "(none)")
        .then(|| name.to_string())
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
        let mut raw: RawConfig = basic_toml::from_str(text).map_err(|e| {
            let msg = e.to_string();
            bad(&toml_error_key(&msg), msg)
        })?;
        let mut sources: BTreeMap<String, String> =
            basic_toml::from_str::<BTreeMap<String, serde::de::IgnoredAny>>(text)
                .unwrap_or_default()
                .into_keys()
                .map(|k| (k, "file".to_string()))
                .collect();
        for name in raw.apply_env(env)? {
            let key = name["REPLGATE_".len()..].to_ascii_lowercase();
            sources.insert(key, format!("env {name}"));
        }
        let mut config = Config::resolve(raw)?;
        config.sources = sources;
        Ok(config)
    }

    fn resolve(raw: RawConfig) -> Result<Config, ConfigError> {
        let data_dir = PathBuf::from(raw.data_dir.unwrap_or_else(|| "./replgate-data".into()));
        if data_dir.as_os_str().is_empty() {
            return Err(bad("data_dir", "must not be empty"));
        }
        let hostnames = raw.hostnames.unwrap_or_else(|| vec!["localhost".into()]);
        if let Some(h) = hostnames.iter().find(|h| !valid_host(h)) {
            return Err(bad("hostnames", format!("{h:?} is not a valid host name")));
        }
        let console_hosts = raw.console_hosts.unwrap_or_default();
        if let Some(h) = console_hosts.iter().find(|h| !valid_host(h)) {
            return Err(bad(
                "console_hosts",
                format!("{h:?} is not a valid host name"),
            ));
        }
        let console_origins = console_origins(raw.console_origins)?;
        let name = match raw.name {
            Some(n) => n,
            None => default_name(&hostnames),
        };
        if name.is_empty() || name.chars().count() > 255 || name.chars().any(char::is_control) {
            return Err(bad("name", "must be 1-255 printable characters"));
        }
        let asset_tag = raw.asset_tag.unwrap_or_default();
        if asset_tag.len() > 255 || asset_tag.chars().any(char::is_control) {
            return Err(bad("asset_tag", "must be at most 255 printable characters"));
        }
        let fault_name = raw.fault.as_deref().unwrap_or("none");
        let fault = Fault::NAMES
            .iter()
            .find(|(name, _)| *name == fault_name)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::NAMES.iter().map(|(n, _)| *n).collect();
                bad(
                    "fault",
                    format!("{fault_name:?} is not one of {}", names.join(", ")),
                )
            })?;
        let days = ranged("certificate_days", raw.certificate_days, 365, 1, 3_650)?;
        let client_cert_lifetime = match raw.certificate_seconds {
            Some(_) => seconds(
                "certificate_seconds",
                raw.certificate_seconds,
                0,
                60,
                3_650 * 86_400,
            )?,
            None => Duration::from_secs(days * 86_400),
        };
        let storage = resolve_storage(raw.storage, &data_dir)?;
        let session_idle = seconds("session_idle", raw.session_idle, 3_600, 1, 31_536_000)?;
        let session_lifetime = seconds(
            "session_lifetime",
            raw.session_lifetime,
            43_200,
            1,
            31_536_000,
        )?;
        let request_ttl = seconds("request_ttl", raw.request_ttl, 604_800, 1, 31_536_000)?;
        let unverified_request_ttl = seconds(
            "unverified_request_ttl",
            raw.unverified_request_ttl,
            request_ttl.as_secs(),
            1,
            31_536_000,
        )?;
        let api_listen = listen("api_listen", raw.api_listen, "127.0.0.1:8443")?;
        let tunnel_listen = listen("tunnel_listen", raw.tunnel_listen, "127.0.0.1:8444")?;
        if api_listen == tunnel_listen && api_listen.port() != 0 {
            return Err(bad("tunnel_listen", "must differ from api_listen"));
        }
        Ok(Config {
            data_dir,
            api_listen,
            tunnel_listen,
            hostnames,
            console_hosts,
            console_origins,
            name,
            asset_tag,
            poll_interval: seconds("poll_interval", raw.poll_interval, 30, 1, 86_400)?,
            heartbeat_interval: seconds(
                "heartbeat_interval",
                raw.heartbeat_interval,
                300,
                1,
                604_800,
            )?,
            max_connections: ranged(
                "max_connections",
                raw.max_connections,
                defaults::MAX_CONNECTIONS as u64,
                1,
                65_536,
            )? as usize,
            max_connections_per_address: ranged(
                "max_connections_per_address",
                raw.max_connections_per_address,
                defaults::MAX_CONNECTIONS_PER_ADDRESS as u64,
                1,
                65_536,
            )? as usize,
            log: {
                let log = raw.log.unwrap_or_else(|| "info".into());
                crate::logging::check_filter(&log).map_err(|e| bad("log", e))?;
                log
            },
            handshake_timeout: seconds(
                "handshake_timeout",
                raw.handshake_timeout,
                defaults::HANDSHAKE_TIMEOUT.as_secs(),
                1,
                600,
            )?,
            idle_timeout: seconds(
                "idle_timeout",
                raw.idle_timeout,
                defaults::IDLE_TIMEOUT.as_secs(),
                1,
                3_600,
            )?,
            head_timeout: seconds(
                "head_timeout",
                raw.head_timeout,
                defaults::HEAD_TIMEOUT.as_secs(),
                1,
                600,
            )?,
            max_head_bytes: ranged(
                "max_head_bytes",
                raw.max_head_bytes,
                defaults::MAX_HEAD_BYTES as u64,
                1_024,
                1_048_576,
            )? as usize,
            max_body_bytes: ranged(
                "max_body_bytes",
                raw.max_body_bytes,
                defaults::MAX_BODY_BYTES,
                1_024,
                16_777_216,
            )?,
            session_idle,
            session_lifetime,
            login_max_failures: ranged("login_max_failures", raw.login_max_failures, 5, 1, 1_000)?
                as u32,
            login_window: seconds("login_window", raw.login_window, 300, 1, 86_400)?,
            login_delay_max: seconds("login_delay_max", raw.login_delay_max, 30, 1, 3_600)?,
            request_ttl,
            request_retention: seconds(
                "request_retention",
                raw.request_retention,
                2_592_000,
                1,
                315_360_000,
            )?,
            max_pending: ranged("max_pending", raw.max_pending, 1_000, 1, 1_000_000)? as u32,
            max_pending_per_address: ranged(
                "max_pending_per_address",
                raw.max_pending_per_address,
                20,
                1,
                1_000_000,
            )? as u32,
            pending_prefix_v4: ranged("pending_prefix_v4", raw.pending_prefix_v4, 24, 8, 32)? as u8,
            pending_prefix_v6: ranged("pending_prefix_v6", raw.pending_prefix_v6, 64, 16, 128)?
                as u8,
            unverified_request_ttl,
            require_token: raw.require_token.unwrap_or(false),
            client_cert_lifetime,
            server_cert_lifetime: seconds(
                "server_certificate_seconds",
                raw.server_certificate_seconds,
                defaults::SERVER_CERTIFICATE_SECONDS,
                60,
                20 * 365 * 86_400,
            )?,
            renew_grace: seconds("renew_grace", raw.renew_grace, 604_800, 60, 31_536_000)?,
            workers: ranged("workers", raw.workers, 4, 1, 64)? as usize,
            replicate_from: match raw.replicate_from {
                Some(id) if !storage.iter().any(|s| s.id == id) => {
                    return Err(bad(
                        "replicate_from",
                        format!("{id} is not the id of a configured storage"),
                    ))
                }
                other => other,
            },
            storage,
            fault,
            sources: BTreeMap::new(),
        })
    }

    /// The resolved configuration as a TOML file that would give it, each line commented
    /// with where its value came from (`default`, `file PATH`, `env REPLGATE_KEY`): what
    /// `check-config` prints.
    pub fn to_toml(&self) -> String {
        let q = toml_string;
        let secs = |d: Duration| d.as_secs().to_string();
        let list = |items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|i| q(i)).collect();
            format!("[{}]", quoted.join(", "))
        };
        let lines: Vec<(&str, String)> = vec![
            ("data_dir", q(&self.data_dir.to_string_lossy())),
            ("api_listen", q(&self.api_listen.to_string())),
            ("tunnel_listen", q(&self.tunnel_listen.to_string())),
            ("hostnames", list(&self.hostnames)),
            ("console_hosts", list(&self.console_hosts)),
            ("console_origins", list(&self.console_origins)),
            ("name", q(&self.name)),
            ("asset_tag", q(&self.asset_tag)),
            ("log", q(&self.log)),
            ("poll_interval", secs(self.poll_interval)),
            ("heartbeat_interval", secs(self.heartbeat_interval)),
            ("max_connections", self.max_connections.to_string()),
            (
                "max_connections_per_address",
                self.max_connections_per_address.to_string(),
            ),
            ("handshake_timeout", secs(self.handshake_timeout)),
            ("idle_timeout", secs(self.idle_timeout)),
            ("head_timeout", secs(self.head_timeout)),
            ("max_head_bytes", self.max_head_bytes.to_string()),
            ("max_body_bytes", self.max_body_bytes.to_string()),
            ("session_idle", secs(self.session_idle)),
            ("session_lifetime", secs(self.session_lifetime)),
            ("login_max_failures", self.login_max_failures.to_string()),
            ("login_window", secs(self.login_window)),
            ("login_delay_max", secs(self.login_delay_max)),
            ("request_ttl", secs(self.request_ttl)),
            ("request_retention", secs(self.request_retention)),
            ("max_pending", self.max_pending.to_string()),
            (
                "max_pending_per_address",
                self.max_pending_per_address.to_string(),
            ),
            ("pending_prefix_v4", self.pending_prefix_v4.to_string()),
            ("pending_prefix_v6", self.pending_prefix_v6.to_string()),
            ("unverified_request_ttl", secs(self.unverified_request_ttl)),
            ("require_token", self.require_token.to_string()),
            // The key that gave the lifetime: `certificate_seconds` when it was set.
            if self.sources.contains_key("certificate_seconds") {
                ("certificate_seconds", secs(self.client_cert_lifetime))
            } else {
                (
                    "certificate_days",
                    (self.client_cert_lifetime.as_secs() / 86_400).to_string(),
                )
            },
            (
                "server_certificate_seconds",
                secs(self.server_cert_lifetime),
            ),
            ("renew_grace", secs(self.renew_grace)),
            ("workers", self.workers.to_string()),
            ("fault", q(self.fault.name())),
        ];
        let source = |key: &str| {
            self.sources
                .get(key)
                .map(String::as_str)
                .unwrap_or("default")
                .to_string()
        };
        let mut out = String::new();
        for (key, value) in lines {
            out.push_str(&format!("{key} = {value}  # {}\n", source(key)));
        }
        match self.replicate_from {
            Some(id) => out.push_str(&format!(
                "replicate_from = {id}  # {}\n",
                source("replicate_from")
            )),
            None => out.push_str("# replicate_from: the default backup storage  # default\n"),
        }
        for s in &self.storage {
            out.push_str(&format!(
                "\n[[storage]]  # {}\nid = {}\nname = {}\npath = {}\nusage = {}\n",
                source("storage"),
                s.id,
                q(&s.name),
                q(&s.path.to_string_lossy()),
                q(s.usage.as_str())
            ));
        }
        out
    }

    /// `name`: how this appliance introduces itself (its systems row, the `name` and `host`
    /// of the requests it files). Defaults to the first of `hostnames`, or, while those are
    /// the default `["localhost"]`, the machine's host name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The storage marked default: the first with usage `backup`.
    pub fn default_storage(&self) -> Option<&Storage> {
        self.storage
            .iter()
            .find(|s| s.usage == StorageUsage::Backup)
    }

    /// The storage whose backups replicate to targets: `replicate_from`, else the default.
    pub fn replication_storage(&self) -> Option<&Storage> {
        match self.replicate_from {
            Some(id) => self.storage.iter().find(|s| s.id == id),
            None => self.default_storage(),
        }
    }
}

fn resolve_storage(
    raw: Option<Vec<RawStorage>>,
    data_dir: &Path,
) -> Result<Vec<Storage>, ConfigError> {
    let Some(list) = raw.filter(|l| !l.is_empty()) else {
        return Ok(vec![Storage {
            id: 1,
            name: "default".into(),
            path: data_dir.join("storage"),
            usage: StorageUsage::Backup,
        }]);
    };
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

/// `s` as a TOML basic string. JSON's escapes are TOML's too, but JSON leaves DEL (U+007F)
/// raw, which TOML refuses in a string; so `check-config` printed a file that did not
/// parse for a path holding one (found by the `config` fuzz target).
fn toml_string(s: &str) -> String {
    serde_json::Value::from(s)
        .to_string()
        .replace('\u{7f}', "\\u007f")
}

/// `REPLGATE_<KEY>` variables that are not settings, so neither set one nor stop the daemon:
/// `admin_password` and `config` are read by the daemon itself (the first at database
/// creation only); `password` and `ctl_*` are `replgate ctl`'s, often exported in an
/// admin's shell; `commit` is the build's (build.rs), which `cargo run` passes to the
/// binary it runs and packagers export for their builds.
fn not_a_setting(key: &str) -> bool {
    matches!(key, "admin_password" | "config" | "password" | "commit") || key.starts_with("ctl_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

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
            system_host_name().unwrap_or_else(|| "localhost".into())
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
