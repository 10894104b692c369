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
    /// The absolute end of the session (`session_lifetime` after login); idle expiry can
    /// end it earlier.
    pub expires: UnixTime,
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

/// The login throttle (docs/decisions.md, "Login throttle"). Two bounds, both in memory:
///
/// 1. Per (user, network) and per network: `max_failures` failures within `window`, then
///    429 until the oldest leaves the window. A network is an IPv4 address or an IPv6 /64.
/// 2. Per account, across every network: the first `max_failures` failures within `window`
///    are free; after them, each attempt on the account, from anywhere, waits
///    `min(2^(n - max_failures), max_delay)` seconds after the previous one (n = failures
///    within the window). Guessing from many addresses is slowed to one guess per
///    `max_delay`, while a stranger holds the account for at most `max_delay` at a time;
///    and a network the account logged in from successfully since the daemon started is
///    exempt from this bound (only bound 1 applies there), so the admin's usual address is
///    never held up by someone else's guesses.
#[derive(Debug)]
pub struct Throttle {
    max_failures: usize,
    window: i64,
    max_delay: i64,
    failures: HashMap<String, Vec<UnixTime>>,
    accounts: HashMap<String, Account>,
}

/// Per-account state of bound 2.
#[derive(Debug, Default)]
struct Account {
    /// Failures within the window, oldest first; at most `max_failures + ACCOUNT_HISTORY`.
    failures: Vec<UnixTime>,
    /// No attempt outside a trusted network is admitted before this time.
    next_try: UnixTime,
    /// Networks this account logged in from successfully, newest last.
    trusted: Vec<String>,
    /// Whether the name is a user; unknown names are forgotten first when the table fills.
    known: bool,
}

/// Failures remembered per account beyond the free ones: enough to reach any `max_delay`
/// up to an hour (2^12 s), so the delay never drops while guessing goes on.
const ACCOUNT_HISTORY: usize = 12;
/// Networks remembered as trusted per account.
const TRUSTED_PER_ACCOUNT: usize = 8;

impl Throttle {
    pub fn new(max_failures: u32, window: Duration, max_delay: Duration) -> Self {
        Throttle {
            max_failures: max_failures.max(1) as usize,
            window: window.as_secs().max(1) as i64,
            max_delay: max_delay.as_secs().max(1) as i64,
            failures: HashMap::new(),
            accounts: HashMap::new(),
        }
    }

    fn recent<'a>(&'a mut self, key: &str, now: UnixTime) -> Option<&'a mut Vec<UnixTime>> {
        let window = self.window;
        let v = self.failures.get_mut(key)?;
        v.retain(|t| now - t < window);
        Some(v)
    }

    /// Seconds to wait if any of `keys` has reached the limit (bound 1).
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

    /// The wait bound 2 asks for after `failures` failures within the window: none for the
    /// first `max_failures`, then 1 s, doubling up to `max_delay`.
    fn account_delay(max_failures: usize, max_delay: i64, failures: usize) -> i64 {
        match failures.checked_sub(max_failures) {
            None => 0,
            Some(over) => (1_i64 << over.min(62)).min(max_delay),
        }
    }

    /// Bound 2: admits an attempt on `account` from `network`, or says how many seconds to
    /// wait. An admitted attempt outside a trusted network reserves the account's next
    /// slot at once, so attempts in flight together cannot all pass the gate.
    pub fn admit(
        &mut self,
        account: &str,
        network: &str,
        known: bool,
        now: UnixTime,
    ) -> Result<(), u64> {
        self.make_room_for_account(account, now);
        let (window, max, cap) = (self.window, self.max_failures, self.max_delay);
        let a = self.accounts.entry(account.to_owned()).or_default();
        a.known |= known;
        a.failures.retain(|t| now - t < window);
        if a.trusted.iter().any(|n| n == network) {
            return Ok(());
        }
        if now < a.next_try {
            return Err((a.next_try - now) as u64);
        }
        a.next_try = now.saturating_add(Self::account_delay(max, cap, a.failures.len()));
        Ok(())
    }

    /// Bound 2: a failed attempt on `account`.
    pub fn account_failed(&mut self, account: &str, now: UnixTime) {
        let (max, cap) = (self.max_failures, self.max_delay);
        let Some(a) = self.accounts.get_mut(account) else {
            return;
        };
        a.failures.push(now);
        if a.failures.len() > max + ACCOUNT_HISTORY {
            a.failures.remove(0);
        }
        let delay = Self::account_delay(max, cap, a.failures.len());
        a.next_try = a.next_try.max(now.saturating_add(delay));
    }

    /// Bound 2: `account` logged in from `network`, which is trusted from now on.
    pub fn account_succeeded(&mut self, account: &str, network: &str) {
        let Some(a) = self.accounts.get_mut(account) else {
            return;
        };
        a.known = true;
        a.trusted.retain(|n| n != network);
        a.trusted.push(network.to_owned());
        if a.trusted.len() > TRUSTED_PER_ACCOUNT {
            a.trusted.remove(0);
        }
    }

    /// Keeps the account table bounded: idle entries go first, then names that are not
    /// users, then the longest idle; a user's trusted networks are kept while it can be.
    fn make_room_for_account(&mut self, account: &str, now: UnixTime) {
        if self.accounts.len() < THROTTLE_MAX_KEYS || self.accounts.contains_key(account) {
            return;
        }
        let window = self.window;
        self.accounts.retain(|_, a| {
            now < a.next_try
                || a.failures.last().is_some_and(|t| now - t < window)
                || (a.known && !a.trusted.is_empty())
        });
        if self.accounts.len() >= THROTTLE_MAX_KEYS {
            let mut by_age: Vec<(bool, UnixTime, String)> = self
                .accounts
                .iter()
                .map(|(k, a)| (a.known, a.failures.last().copied().unwrap_or(0), k.clone()))
                .collect();
            by_age.sort();
            for (_, _, k) in by_age.into_iter().take(THROTTLE_MAX_KEYS / 10) {
                self.accounts.remove(&k);
            }
        }
    }
}

/// The unit the throttle counts an address in: an IPv4 address (also IPv4-mapped), or the
/// /64 of an IPv6 address, since one site usually holds a whole /64. Anything that is not
/// an address is its own unit.
fn network(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Ok(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Err(_) => address.to_owned(),
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

/// Logins refused for a wrong user name or password (a metric).
fn login_failures() -> crate::metrics::Counter {
    crate::metrics::counter(
        "replgate_login_failures_total",
        "Logins refused for a wrong user name or password.",
        &[],
    )
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
        // At zero from the start: a scrape sees the series before the first failure.
        login_failures();
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
        crate::sync::lock(&self.throttle)
    }

    pub fn login(
        &self,
        user: &str,
        password: &str,
        address: &str,
        now: UnixTime,
    ) -> Result<Login, AuthError> {
        // Bound 1 per user *and* network, plus per network: a stranger guessing root's
        // password is stopped without locking the real admin (elsewhere) out. Bound 2 per
        // account: guessing from many networks is slowed down (see [`Throttle`]).
        let net = network(address);
        let account: String = user.chars().take(64).collect();
        let keys = [format!("user:{user}@{net}"), format!("addr:{net}")];
        if let Some(retry_after) = self.throttle().check(&keys, now) {
            return Err(AuthError::Throttled { retry_after });
        }
        let record = if password.len() > MAX_PASSWORD_BYTES {
            None
        } else {
            self.store.user(user)?
        };
        self.throttle()
            .admit(&account, &net, record.is_some(), now)
            .map_err(|retry_after| AuthError::Throttled { retry_after })?;
        let ok = match &record {
            Some(r) => verify_password(password, &r.password_hash),
            None => {
                verify_password(password, &self.dummy_hash);
                false
            }
        };
        let Some(record) = record.filter(|_| ok) else {
            {
                let mut throttle = self.throttle();
                throttle.fail(&keys, now);
                throttle.account_failed(&account, now);
            }
            login_failures().inc();
            let failed = own_audit(&account, address, "login failed", now);
            self.store.write(|tx| tx.audit(&failed))?;
            return Err(AuthError::BadCredentials);
        };
        {
            let mut throttle = self.throttle();
            throttle.clear(&keys[0]);
            throttle.account_succeeded(&account, &net);
        }
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
            match self.store.write(|tx| tx.touch_session(&hash, now)) {
                // While the database refuses writes (a full disk) the session still reads:
                // it is touched again once writes resume.
                Err(StoreError::Unavailable(_)) => {}
                other => other?,
            }
        }
        let privilege = if s.scraper {
            user.privilege.min(Privilege::Monitor)
        } else {
            user.privilege
        };
        Ok(Session {
            user: user.name,
            privilege,
            expires: self.rules.expires_at(&s),
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
        let mut t = Throttle::new(3, Duration::from_secs(100), Duration::from_secs(30));
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

    /// Attempts as the daemon makes them: bound 1, then bound 2; `Ok(())` when admitted.
    fn attempt(t: &mut Throttle, net: &str, now: UnixTime, success: bool) -> Result<(), u64> {
        let keys = [format!("user:root@{net}"), format!("addr:{net}")];
        if let Some(wait) = t.check(&keys, now) {
            return Err(wait);
        }
        t.admit("root", net, true, now)?;
        if success {
            t.clear(&keys[0]);
            t.account_succeeded("root", net);
        } else {
            t.fail(&keys, now);
            t.account_failed("root", now);
        }
        Ok(())
    }

    #[test]
    fn guesses_from_many_networks_wait_a_doubling_delay_per_account() {
        let mut t = Throttle::new(3, Duration::from_secs(300), Duration::from_secs(30));
        // Three free failures from three networks, then 1, 2, 4, 8, 16, 30, 30 s apart.
        let mut now = 1_000;
        for i in 0..3 {
            assert_eq!(attempt(&mut t, &format!("10.0.0.{i}"), now, false), Ok(()));
        }
        for (i, wait) in [1_u64, 2, 4, 8, 16, 30, 30].into_iter().enumerate() {
            let net = format!("10.0.1.{i}");
            assert_eq!(attempt(&mut t, &net, now, false), Err(wait), "guess {i}");
            assert_eq!(attempt(&mut t, &net, now + wait as i64 - 1, false), Err(1));
            now += wait as i64;
            assert_eq!(attempt(&mut t, &net, now, false), Ok(()), "guess {i}");
        }
        // Refused attempts count for nothing: the wait is still the last one's.
        assert_eq!(attempt(&mut t, "10.0.2.1", now + 29, false), Err(1));
        // When the guessing stops, the window forgets it.
        assert_eq!(attempt(&mut t, "10.0.2.2", now + 300, true), Ok(()));
    }

    #[test]
    fn a_spray_from_fresh_addresses_gets_one_guess_per_max_delay() {
        let mut t = Throttle::new(5, Duration::from_secs(300), Duration::from_secs(30));
        let mut admitted = 0;
        // A guess every second for an hour, each from a network never seen before.
        for i in 0..3_600_i64 {
            let net = format!("2001:db8:{:x}:{:x}::1", i / 0x1_0000, i % 0x1_0000);
            if attempt(&mut t, &network(&net), 10_000 + i, false).is_ok() {
                admitted += 1;
            }
        }
        // 5 free, 1+2+4+8+16 s to reach the cap, then one per 30 s.
        assert!(
            admitted <= 5 + 5 + 3_600 / 30,
            "{admitted} guesses admitted"
        );
        assert!(
            admitted >= 3_600 / 30,
            "{admitted}: the bound slows, it does not stop"
        );
    }

    #[test]
    fn the_admins_trusted_network_is_not_held_by_a_strangers_guesses() {
        let mut t = Throttle::new(3, Duration::from_secs(300), Duration::from_secs(30));
        assert_eq!(attempt(&mut t, "192.0.2.7", 1_000, true), Ok(()));
        for i in 0..20 {
            let _ = attempt(&mut t, &format!("198.51.100.{i}"), 1_001 + i, false);
        }
        // The account is held for everyone else...
        assert!(attempt(&mut t, "203.0.113.1", 1_021, true).is_err());
        // ...but not for the network root logged in from before.
        assert_eq!(attempt(&mut t, "192.0.2.7", 1_021, true), Ok(()));
        // A new network gets in after at most the capped wait.
        let wait = attempt(&mut t, "203.0.113.1", 1_021, true).unwrap_err();
        assert!((1..=30).contains(&wait), "{wait}");
        assert_eq!(
            attempt(&mut t, "203.0.113.1", 1_021 + wait as i64, true),
            Ok(())
        );
    }

    #[test]
    fn attempts_in_flight_together_cannot_all_pass_a_held_account() {
        let mut t = Throttle::new(1, Duration::from_secs(300), Duration::from_secs(30));
        assert_eq!(attempt(&mut t, "10.0.0.1", 1_000, false), Ok(()));
        // Two attempts admitted at the same second, before either has failed.
        assert_eq!(t.admit("root", "10.0.0.2", true, 1_001), Ok(()));
        assert_eq!(t.admit("root", "10.0.0.3", true, 1_001), Err(1));
    }

    #[test]
    fn networks_are_ipv4_addresses_and_ipv6_slash_64s() {
        assert_eq!(network("192.0.2.1"), "192.0.2.1");
        assert_eq!(network("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(network("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(network("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64");
        assert_eq!(network("local"), "local");
    }

    #[test]
    fn the_account_table_stays_bounded_and_keeps_users_over_unknown_names() {
        let mut t = Throttle::new(1, Duration::from_secs(300), Duration::from_secs(30));
        assert_eq!(t.admit("root", "10.0.0.1", true, 1_000), Ok(()));
        t.account_failed("root", 1_000);
        for i in 0..THROTTLE_MAX_KEYS + 500 {
            let name = format!("ghost{i}");
            if t.admit(&name, "10.0.0.2", false, 1_000).is_ok() {
                t.account_failed(&name, 1_000);
            }
        }
        assert!(
            t.accounts.len() <= THROTTLE_MAX_KEYS,
            "{}",
            t.accounts.len()
        );
        // root's failure was not forgotten: the account still waits.
        assert_eq!(t.admit("root", "10.0.0.3", true, 1_000), Err(1));
    }

    #[test]
    fn session_require_compares_privileges() {
        let s = Session {
            user: "m".into(),
            privilege: Privilege::Manage,
            expires: 0,
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
