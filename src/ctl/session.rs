//! The token cache of `replgate ctl`: one cached login per API URL, in a file of mode 0600
//! written atomically through `fsx`. A token is only ever handed out for the API that
//! issued it.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{CtlError, MAX_LOCAL_FILE_BYTES};
use crate::fsx;
use crate::model::Secret;

/// One cached login, keyed by the API it was issued by: a token is never sent to any
/// other daemon.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CachedSession {
    pub api: String,
    pub user: String,
    pub privilege: String,
    /// The absolute expiry the daemon announced (unix seconds); idle expiry may come first.
    pub expires: i64,
    pub token: Secret<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenCache {
    sessions: Vec<CachedSession>,
}

/// The token cache file (mode 0600, written through `fsx`); located by
/// `settings::token_file`.
pub(super) struct TokenFile {
    pub path: PathBuf,
    /// True for the default locations, whose `replgate` directory ctl owns and keeps 0700;
    /// a directory named by `REPLGATE_CTL_TOKEN_FILE` is created if missing, never chmod-ed.
    pub owns_dir: bool,
}

impl TokenFile {
    fn load(&self) -> Result<TokenCache, CtlError> {
        match fsx::read_regular_nofollow(&self.path, MAX_LOCAL_FILE_BYTES) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CtlError::Local(format!(
                    "token file {} does not parse ({e}); remove it and log in again",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TokenCache::default()),
            Err(e) => Err(CtlError::Local(format!(
                "read token file {}: {e}",
                self.path.display()
            ))),
        }
    }

    /// Writes `cache`; the file goes away with its last session.
    fn save(&self, cache: &TokenCache) -> Result<(), CtlError> {
        let local = |e: io::Error| {
            CtlError::Local(format!("write token file {}: {e}", self.path.display()))
        };
        if cache.sessions.is_empty() {
            return fsx::remove_file_durable(&self.path).map_err(local);
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if self.owns_dir || !dir.exists() {
                fsx::ensure_private_dir(dir).map_err(local)?;
            }
        }
        let bytes = serde_json::to_vec_pretty(cache).map_err(|e| local(io::Error::other(e)))?;
        fsx::write_atomic(&self.path, &bytes).map_err(local)
    }

    /// The cached token for `api`.
    pub(super) fn token(&self, api: &str) -> Result<Secret<String>, CtlError> {
        self.load()?
            .sessions
            .into_iter()
            .find(|s| s.api == api)
            .map(|s| s.token)
            .ok_or_else(|| CtlError::NotLoggedIn(format!("not logged in to {api}")))
    }

    /// Caches `session`, replacing an earlier one for the same API. A cache that does not
    /// parse is replaced (with a warning): a new login is the way out of a broken file.
    pub(super) fn remember(&self, session: CachedSession) -> Result<(), CtlError> {
        let mut cache = self.load().unwrap_or_else(|e| {
            eprintln!("replgate ctl: {e}; replacing it");
            TokenCache::default()
        });
        cache.sessions.retain(|s| s.api != session.api);
        cache.sessions.push(session);
        self.save(&cache)
    }

    /// Removes and returns the session for `api`, if any.
    pub(super) fn forget(&self, api: &str) -> Result<Option<CachedSession>, CtlError> {
        let mut cache = self.load()?;
        let Some(i) = cache.sessions.iter().position(|s| s.api == api) else {
            return Ok(None);
        };
        let session = cache.sessions.remove(i);
        self.save(&cache)?;
        Ok(Some(session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = CachedSession {
            api: "https://h:1".into(),
            user: "root".into(),
            privilege: "superuser".into(),
            expires: 1,
            token: Secret::new("deadbeef".into()),
        };
        assert!(!format!("{s:?}").contains("deadbeef"));
    }
}
