//! Where `replgate ctl` finds its daemon, the CA to trust and the token cache: flags, then
//! `REPLGATE_CTL_*` variables, then defaults. Reads the CA file; writes nothing.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::args::Ctl;
use super::session::TokenFile;
use super::{CtlError, MAX_LOCAL_FILE_BYTES};

/// Default API address: the daemon's default `api_listen`.
pub const DEFAULT_API: &str = "https://127.0.0.1:8443";
/// Default CA files, the first that is there: the daemon's CA under its default
/// `data_dir` (a daemon started in this directory), then under the packaged one.
pub const DEFAULT_CACERTS: [&str; 2] = ["./replgate-data/ca.pem", "/var/lib/replgate/ca.pem"];

/// Where the API is and whom to trust, resolved from flags, environment and defaults.
pub(super) struct Settings {
    /// `https://host:port`, no trailing slash.
    pub api: String,
    pub cacert: PathBuf,
    /// The CA file is a default, not given.
    cacert_defaulted: bool,
}

/// An environment variable that is set and not empty.
pub(super) fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Checks `given` is `https://HOST[:PORT]` and returns it without a trailing slash.
fn api_base(given: &str) -> Result<String, CtlError> {
    let trimmed = given.trim().trim_end_matches('/');
    let bad = || {
        CtlError::Usage(format!(
            "--api {given:?} is not https://HOST:PORT (the API is HTTPS only)"
        ))
    };
    let rest = trimmed.strip_prefix("https://").ok_or_else(bad)?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad());
    }
    Ok(format!("https://{rest}"))
}

impl Settings {
    /// Flags win over `REPLGATE_CTL_API`/`REPLGATE_CTL_CACERT`, which win over defaults.
    pub(super) fn resolve(ctl: &Ctl) -> Result<Settings, CtlError> {
        let api = ctl
            .api
            .clone()
            .or_else(|| env_nonempty("REPLGATE_CTL_API"))
            .unwrap_or_else(|| DEFAULT_API.into());
        let given = ctl
            .cacert
            .clone()
            .or_else(|| env_nonempty("REPLGATE_CTL_CACERT").map(PathBuf::from));
        let cacert_defaulted = given.is_none();
        Ok(Settings {
            api: api_base(&api)?,
            cacert: given.unwrap_or_else(default_cacert),
            cacert_defaulted,
        })
    }

    /// The CA file's bytes.
    pub(super) fn ca_pem(&self) -> Result<Vec<u8>, CtlError> {
        read_small(&self.cacert).map_err(|e| {
            let tried = if self.cacert_defaulted && e.kind() == io::ErrorKind::NotFound {
                format!("no CA file at {}", DEFAULT_CACERTS.join(" or "))
            } else {
                format!("read the CA file {}: {e}", self.cacert.display())
            };
            CtlError::Usage(format!(
                "{tried} (give --cacert or REPLGATE_CTL_CACERT: the daemon's <data_dir>/ca.pem)"
            ))
        })
    }
}

/// The first default CA file that exists (or that is there but not readable, so the error
/// says why), else the first.
fn default_cacert() -> PathBuf {
    DEFAULT_CACERTS
        .iter()
        .map(PathBuf::from)
        .find(|p| !matches!(std::fs::metadata(p), Err(e) if e.kind() == io::ErrorKind::NotFound))
        .unwrap_or_else(|| DEFAULT_CACERTS[0].into())
}

fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_LOCAL_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_LOCAL_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file larger than 1 MiB",
        ));
    }
    Ok(bytes)
}

/// The token cache: `REPLGATE_CTL_TOKEN_FILE`, else `$XDG_RUNTIME_DIR/replgate/token`,
/// else `$HOME/.cache/replgate/token`.
pub(super) fn token_file() -> Result<TokenFile, CtlError> {
    if let Some(p) = env_nonempty("REPLGATE_CTL_TOKEN_FILE") {
        return Ok(TokenFile {
            path: p.into(),
            owns_dir: false,
        });
    }
    let absolute = |v: String| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let dir = match env_nonempty("XDG_RUNTIME_DIR").and_then(absolute) {
        Some(runtime) => runtime.join("replgate"),
        None => env_nonempty("HOME")
            .and_then(absolute)
            .map(|home| home.join(".cache").join("replgate"))
            .ok_or_else(|| {
                CtlError::Local(
                    "no place for the token cache: set REPLGATE_CTL_TOKEN_FILE, XDG_RUNTIME_DIR or HOME"
                        .into(),
                )
            })?,
    };
    Ok(TokenFile {
        path: dir.join("token"),
        owns_dir: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_are_https_without_a_path() {
        assert_eq!(api_base("https://h:1/").unwrap(), "https://h:1");
        assert_eq!(
            api_base("https://[::1]:8443").unwrap(),
            "https://[::1]:8443"
        );
        assert!(api_base("http://h:1").is_err());
        assert!(api_base("h:1").is_err());
        assert!(api_base("https://h:1/api").is_err());
    }
}
