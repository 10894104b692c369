//! Authentication and authorization: argon2id passwords, random session tokens stored only
//! as SHA-256 hashes, idle and absolute expiry, the login throttle, and [`Session`], the
//! capability a handler holds once a token checked out. Time is always passed in; the only
//! I/O is through the store.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::model::{Privilege, UnixTime};
use crate::store::{AuditRecord, SessionRecord, Store, StoreError, UserRecord};

/// A session's `last_used` is written back at most this often (seconds), so that reads do
/// not each become a durable write.
const TOUCH_EVERY: i64 = 60;
/// Bound on the throttle's memory: beyond it the oldest keys are forgotten.
const THROTTLE_MAX_KEYS: usize = 10_000;
/// Passwords are bounded so hashing cost cannot be driven up by a huge input.
pub const MAX_PASSWORD_BYTES: usize = 1_024;

#[derive(Debug)]
pub enum AuthError {
    /// Wrong user or password; one message for both so names cannot be probed.
    BadCredentials,
    /// Too many failures for this user or address; retry after the given seconds.
    Throttled {
        retry_after: u64,
    },
    /// Missing, unknown, expired or ended token.
    NoSession,
    /// The session's privilege is below what the operation needs.
    Forbidden {
        needed: Privilege,
    },
    Store(StoreError),
    /// Hashing failed (bad parameters); never caused by a peer.
    Hash(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::BadCredentials => f.write_str("invalid user name or password"),
            AuthError::Throttled { retry_after } => {
                write!(f, "too many failed logins, retry in {retry_after} seconds")
            }
            AuthError::NoSession => f.write_str("missing, invalid or expired AuthToken"),
            AuthError::Forbidden { needed } => {
                write!(f, "this operation needs the {needed} privilege")
            }
            AuthError::Store(e) => write!(f, "{e}"),
            AuthError::Hash(e) => write!(f, "password hashing: {e}"),
        }
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Shown as the store error itself (see Display), so its cause comes next.
            AuthError::Store(e) => e.source(),
            _ => None,
        }
    }
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Store(e)
    }
}

/// Proof that a request carried a live token: who, with which privilege.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    pub privilege: Privilege,
    token_hash: [u8; 32],
}

impl Session {
    /// The one authorization check: privileges are ordered.
    pub fn require(&self, needed: Privilege) -> Result<(), AuthError> {
        if self.privilege >= needed {
            Ok(())
        } else {
            Err(AuthError::Forbidden { needed })
        }
    }
}

/// What a successful login returns to the client.
pub struct Login {
    pub token: String,
    pub expires: UnixTime,
    pub privilege: Privilege,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("token", &"…")
            .field("expires", &self.expires)
            .field("privilege", &self.privilege)
            .finish()
    }
}

/// Session timing rules.
#[derive(Clone, Copy, Debug)]
pub struct SessionRules {
    pub idle: Duration,
    pub lifetime: Duration,
}

impl SessionRules {
    pub fn expired(&self, s: &SessionRecord, now: UnixTime) -> bool {
        !s.scraper
            && (now >= s.last_used.saturating_add(self.idle.as_secs() as i64)
                || now >= s.created.saturating_add(self.lifetime.as_secs() as i64))
    }

    pub fn expires_at(&self, s: &SessionRecord) -> UnixTime {
        s.created.saturating_add(self.lifetime.as_secs() as i64)
    }
}

/// Failed-login counting per user and per address within a sliding window.
#[derive(Debug)]
pub struct Throttle {
    max_failures: usize,
    window: i64,
    failures: HashMap<String, Vec<UnixTime>>,
}

impl Throttle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Throttle {
            max_failures: max_failures.max(1) as usize,
            window: window.as_secs().max(1) as i64,
            failures: HashMap::new(),
        }
    }

    fn recent<'a>(&'a mut self, key: &str, now: UnixTime) -> Option<&'a mut Vec<UnixTime>> {
        let window = self.window;
        let v = self.failures.get_mut(key)?;
        v.retain(|t| now - t < window);
        Some(v)
    }

    /// Seconds to wait if any of `keys` has reached the limit.
    pub fn check(&mut self, keys: &[String], now: UnixTime) -> Option<u64> {
        let (max, window) = (self.max_failures, self.window);
        keys.iter()
            .filter_map(|k| {
                let v = self.recent(k, now)?;
                (v.len() >= max)
                    .then(|| v.first().map(|first| (first + window - now).max(1) as u64))?
            })
            .max()
    }

    pub fn fail(&mut self, keys: &[String], now: UnixTime) {
        if self.failures.len() >= THROTTLE_MAX_KEYS {
            let window = self.window;
            self.failures
                .retain(|_, v| v.last().is_some_and(|t| now - t < window));
            // Still full of live keys (a spray from many addresses): forget the oldest
            // tenth rather than everything, so no attacker can reset a counter at will.
            if self.failures.len() >= THROTTLE_MAX_KEYS {
                let mut by_age: Vec<(UnixTime, String)> = self
                    .failures
                    .iter()
                    .map(|(k, v)| (v.last().copied().unwrap_or(0), k.clone()))
                    .collect();
                by_age.sort();
                for (_, k) in by_age.into_iter().take(THROTTLE_MAX_KEYS / 10) {
                    self.failures.remove(&k);
                }
            }
        }
        for k in keys {
            let v = self.failures.entry(k.clone()).or_default();
            v.push(now);
            if v.len() > self.max_failures {
                v.remove(0);
            }
        }
    }

    pub fn clear(&mut self, key: &str) {
        self.failures.remove(key);
    }
}

/// An audit row for what `user` did to their own account (log in, log out).
fn own_audit(user: &str, address: &str, action: &str, now: UnixTime) -> AuditRecord {
    AuditRecord {
        time: now,
        user: user.into(),
        address: address.into(),
        action: action.into(),
        object: format!("user:{user}"),
        detail: String::new(),
    }
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    crate::rand::fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

pub fn token_hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Validates a user name: what the users API accepts.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// Logins, sessions and the throttle over the store.
pub struct Authenticator {
    store: Store,
    rules: SessionRules,
    throttle: Mutex<Throttle>,
    /// A real hash to verify against for unknown users, so timing does not reveal names.
    dummy_hash: String,
}

impl Authenticator {
    pub fn new(store: Store, rules: SessionRules, throttle: Throttle) -> Result<Self, AuthError> {
        Ok(Authenticator {
            store,
            rules,
            throttle: Mutex::new(throttle),
            dummy_hash: hash_password("replgate-dummy-password")?,
        })
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        // A panic while holding the lock cannot leave the counters inconsistent in a way
        // that matters; keep serving.
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn login(
        &self,
        user: &str,
        password: &str,
        address: &str,
        now: UnixTime,
    ) -> Result<Login, AuthError> {
        // Per user *and* address, plus per address: a stranger guessing root's password is
        // stopped without locking the real admin (on another address) out.
        let keys = [format!("user:{user}@{address}"), format!("addr:{address}")];
        if let Some(retry_after) = self.throttle().check(&keys, now) {
            return Err(AuthError::Throttled { retry_after });
        }
        let record = if password.len() > MAX_PASSWORD_BYTES {
            None
        } else {
            self.store.user(user)?
        };
        let ok = match &record {
            Some(r) => verify_password(password, &r.password_hash),
            None => {
                verify_password(password, &self.dummy_hash);
                false
            }
        };
        let Some(record) = record.filter(|_| ok) else {
            self.throttle().fail(&keys, now);
            crate::metrics::counter(
                "replgate_login_failures_total",
                "Logins refused for a wrong user name or password.",
                &[],
            )
            .inc();
            let shown: String = user.chars().take(64).collect();
            let failed = own_audit(&shown, address, "login failed", now);
            self.store.write(|tx| tx.audit(&failed))?;
            return Err(AuthError::BadCredentials);
        };
        self.throttle().clear(&keys[0]);
        let token = crate::rand::hex_string(32);
        let session = SessionRecord {
            user: record.name.clone(),
            created: now,
            last_used: now,
            scraper: false,
        };
        let login = own_audit(&record.name, address, "login", now);
        self.store
            .write(|tx| tx.insert_session(&token_hash(&token), &session, &login))?;
        Ok(Login {
            token,
            expires: self.rules.expires_at(&session),
            privilege: record.privilege,
        })
    }

    /// The session behind `token`, with the user's current privilege.
    pub fn session(&self, token: &str, now: UnixTime) -> Result<Session, AuthError> {
        if token.is_empty() || token.len() > 256 {
            return Err(AuthError::NoSession);
        }
        let hash = token_hash(token);
        let Some(s) = self.store.session(&hash)? else {
            return Err(AuthError::NoSession);
        };
        if self.rules.expired(&s, now) {
            self.store.write(|tx| tx.delete_session(&hash, None))?;
            return Err(AuthError::NoSession);
        }
        let Some(user) = self.store.user(&s.user)? else {
            return Err(AuthError::NoSession);
        };
        // Refresh well within the idle timeout, whatever it is configured to.
        let touch_every = (self.rules.idle.as_secs() as i64 / 2).clamp(1, TOUCH_EVERY);
        if now - s.last_used >= touch_every {
            self.store.write(|tx| tx.touch_session(&hash, now))?;
        }
        let privilege = if s.scraper {
            user.privilege.min(Privilege::Monitor)
        } else {
            user.privilege
        };
        Ok(Session {
            user: user.name,
            privilege,
            token_hash: hash,
        })
    }

    /// A new scraper token for `session`'s user (see `SessionRecord::scraper`); shown
    /// once, stored hashed like every token.
    pub fn scraper_token(
        &self,
        session: &Session,
        name: &str,
        address: &str,
        now: UnixTime,
    ) -> Result<String, AuthError> {
        let token = crate::rand::hex_string(32);
        let record = SessionRecord {
            user: session.user.clone(),
            created: now,
            last_used: now,
            scraper: true,
        };
        let audit = AuditRecord {
            detail: format!("named {name}"),
            ..own_audit(&session.user, address, "scraper token created", now)
        };
        self.store
            .write(|tx| tx.insert_session(&token_hash(&token), &record, &audit))?;
        Ok(token)
    }

    pub fn logout(&self, session: &Session, address: &str, now: UnixTime) -> Result<(), AuthError> {
        let logout = own_audit(&session.user, address, "logout", now);
        self.store
            .write(|tx| tx.delete_session(&session.token_hash, Some(&logout)))?;
        Ok(())
    }

    pub fn purge_expired(&self, now: UnixTime) -> Result<u64, AuthError> {
        let rules = self.rules;
        Ok(self
            .store
            .write(|tx| tx.purge_sessions(|s| rules.expired(s, now)))?)
    }

    /// Creates the first superuser when the database has no users at all.
    pub fn bootstrap_root(&self, password: &str, now: UnixTime) -> Result<bool, AuthError> {
        if self.store.user_count()? > 0 {
            return Ok(false);
        }
        let user = UserRecord {
            name: "root".into(),
            password_hash: hash_password(password)?,
            privilege: Privilege::Superuser,
            created: now,
            updated: now,
        };
        let created = AuditRecord {
            time: now,
            user: "-".into(),
            address: "local".into(),
            action: "user created".into(),
            object: "user:root".into(),
            detail: "first start".into(),
        };
        Ok(self.store.write(|tx| tx.create_user(&user, &created))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_verifies_only_the_right_password() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn sessions_expire_on_idle_and_on_lifetime() {
        let rules = SessionRules {
            idle: Duration::from_secs(60),
            lifetime: Duration::from_secs(600),
        };
        let s = SessionRecord {
            user: "a".into(),
            created: 1_000,
            last_used: 1_000,
            scraper: false,
        };
        assert!(!rules.expired(&s, 1_059));
        assert!(rules.expired(&s, 1_060));
        let busy = SessionRecord {
            user: "a".into(),
            created: 1_000,
            last_used: 1_590,
            scraper: false,
        };
        assert!(!rules.expired(&busy, 1_599));
        assert!(rules.expired(&busy, 1_600));
    }

    #[test]
    fn throttle_blocks_after_max_failures_until_the_window_passes() {
        let mut t = Throttle::new(3, Duration::from_secs(100));
        let keys = ["user:a@x".to_string(), "addr:x".to_string()];
        for i in 0..3 {
            assert_eq!(t.check(&keys, 10 + i), None);
            t.fail(&keys, 10 + i);
        }
        assert_eq!(t.check(&keys, 20), Some(90));
        // Another user from the same address is blocked too.
        assert!(t.check(&["user:b@x".into(), "addr:x".into()], 20).is_some());
        // The same user from another address is not.
        assert_eq!(t.check(&["user:a@y".into(), "addr:y".into()], 20), None);
        assert_eq!(t.check(&keys, 113), None);
    }

    #[test]
    fn session_require_compares_privileges() {
        let s = Session {
            user: "m".into(),
            privilege: Privilege::Manage,
            token_hash: [0; 32],
        };
        assert!(s.require(Privilege::Monitor).is_ok());
        assert!(s.require(Privilege::Manage).is_ok());
        assert!(matches!(
            s.require(Privilege::Administer),
            Err(AuthError::Forbidden {
                needed: Privilege::Administer
            })
        ));
    }

    #[test]
    fn tokens_are_hex_of_256_bits_and_hash_stably() {
        let t = crate::rand::hex_string(32);
        assert_eq!(t.len(), 64);
        assert_ne!(t, crate::rand::hex_string(32));
        assert_eq!(token_hash(&t), token_hash(&t));
    }
}
