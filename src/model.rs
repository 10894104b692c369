//! Plain types shared by every layer: privilege levels, the time type and its one UTC
//! rendering, address networks (CIDR), secrets that never print. No I/O, no logic beyond parsing, ordering and
//! formatting.

use std::error::Error;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The appliance privilege levels, ordered so that one comparison authorizes:
/// `session.privilege >= Privilege::Administer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    /// Read anything.
    Monitor,
    /// Ask for or remove replication targets.
    Manage,
    /// Accept, reject, unpair; storage changes.
    Administer,
    /// Manage users.
    Superuser,
}

impl Privilege {
    pub const ALL: [Privilege; 4] = [
        Privilege::Monitor,
        Privilege::Manage,
        Privilege::Administer,
        Privilege::Superuser,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Privilege::Monitor => "monitor",
            Privilege::Manage => "manage",
            Privilege::Administer => "administer",
            Privilege::Superuser => "superuser",
        }
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Privilege {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Privilege::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let shown: String = s.chars().take(32).collect();
                format!("{shown:?} is not one of monitor, manage, administer, superuser")
            })
    }
}

/// A row's role in `GET /api/systems`, with exactly the appliance API's strings. Stored
/// system rows hold the same strings, so databases written before this enum decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A system this appliance manages, not (yet) replicating to it.
    #[serde(rename = "Managed DPU")]
    Managed,
    /// A managed system that became a paired replication source.
    #[serde(rename = "Replication Source")]
    Source,
    /// A paired replication source this appliance did not manage before.
    #[serde(rename = "Non-Managed Replication Source")]
    NonManagedSource,
    /// A source with an open pairing request (listed, never stored).
    #[serde(rename = "Pending Replication Source")]
    PendingSource,
    /// This appliance itself, the first row of the list (never stored).
    #[serde(rename = "Local Appliance")]
    Local,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Managed => "Managed DPU",
            Role::Source => "Replication Source",
            Role::NonManagedSource => "Non-Managed Replication Source",
            Role::PendingSource => "Pending Replication Source",
            Role::Local => "Local Appliance",
        }
    }

    /// A paired replication source (managed before or not).
    pub fn is_source(self) -> bool {
        matches!(self, Role::Source | Role::NonManagedSource)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Prints an error and its causes as one line, `outer: cause: root cause`. Errors here
/// follow one rule: `Display` says only what failed at its own level and `source()` hands
/// on the cause, so this is the one place a chain is joined (logs, 500 details, `main`).
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch; the one clock type stored and passed to domain code.
pub type UnixTime = i64;

/// The current time, read once per request by adapters and passed down.
pub fn now() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What is left until `deadline`, or a `TimedOut` error once it has passed: the bound of
/// each read and write of a call or a connection with a deadline.
pub fn time_left(deadline: Instant) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
}

/// `t` as UTC `YYYY-MM-DD HH:MM:SS` for people (tables, messages); `None` outside the
/// calendar's range.
pub fn utc_text(t: UnixTime) -> Option<String> {
    let d = time::OffsetDateTime::from_unix_timestamp(t).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    ))
}

/// `t` as `YYYY-MM-DD HH:MM:SS UTC`, for messages that stand alone; `unix time <t>`
/// outside the calendar's range.
pub fn format_utc(t: UnixTime) -> String {
    match utc_text(t) {
        Some(s) => format!("{s} UTC"),
        None => format!("unix time {t}"),
    }
}

/// The local weekday (0 = Sunday) and hour (0–23) now, as the admin's throttle windows
/// read the clock. From the C library's `localtime_r`, which follows `TZ` and the
/// system's zone file; UTC if it fails.
pub fn local_weekday_hour() -> (u8, u32) {
    let t: libc::time_t = now() as libc::time_t;
    // SAFETY: localtime_r writes only into the zeroed struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        let days = now().div_euclid(86_400);
        // 1970-01-01 was a Thursday (4).
        return (
            ((days + 4) % 7) as u8,
            (now().rem_euclid(86_400) / 3_600) as u32,
        );
    }
    (tm.tm_wday.clamp(0, 6) as u8, tm.tm_hour.clamp(0, 23) as u32)
}

/// An address network: a base address and a prefix length (`192.0.2.0/24`,
/// `2001:db8::/64`). An IPv4-mapped IPv6 address (`::ffff:192.0.2.7`) counts as IPv4, so
/// one peer is one network however its socket reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Network {
    /// Invariant: the bits past `prefix` are zero.
    base: IpAddr,
    /// Invariant: at most 32 for IPv4, 128 for IPv6.
    prefix: u8,
}

/// `addr` with IPv4-mapped IPv6 addresses turned into IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl Network {
    /// The network of `addr`: its first `v4` bits for IPv4, `v6` bits for IPv6 (each
    /// clamped to the address length).
    pub fn of(addr: IpAddr, v4: u8, v6: u8) -> Network {
        let addr = canonical(addr);
        let prefix = match addr {
            IpAddr::V4(_) => v4.min(32),
            IpAddr::V6(_) => v6.min(128),
        };
        Network {
            base: mask(addr, prefix),
            prefix,
        }
    }

    /// `addr` or `addr/prefix`, exactly (no brackets, no blanks, a prefix without leading
    /// zeros); a bare address is the network of that one address. Bits past the prefix
    /// are cleared (`192.0.2.7/24` is `192.0.2.0/24`).
    pub fn parse(text: &str) -> Option<Network> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr = canonical(addr.parse().ok()?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p)
                if (1..=3).contains(&p.len())
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0')) =>
            {
                p.parse::<u8>().ok().filter(|p| *p <= max)?
            }
            Some(_) => return None,
            None => max,
        };
        Some(Network {
            base: mask(addr, prefix),
            prefix,
        })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        addr.is_ipv4() == self.base.is_ipv4() && mask(addr, self.prefix) == self.base
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// A secret (password, token, key) whose `Debug` prints `…`, so no log line, error or
/// `{:?}` of a struct holding one shows it. The value is reached only by naming it:
/// [`Secret::expose`]. Serde passes it through unchanged (`replgate ctl`'s token cache,
/// a 0600 file, stores one); nothing else about it is redacted, so do not `Display` it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The secret itself, for the one place that needs it (a hash, a header, a login).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("…")
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Secret<T> {
        Secret(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_text_is_calendar_time() {
        assert_eq!(
            utc_text(1_700_000_000).as_deref(),
            Some("2023-11-14 22:13:20")
        );
        assert_eq!(utc_text(0).as_deref(), Some("1970-01-01 00:00:00"));
        assert_eq!(utc_text(i64::MAX), None);
    }

    #[test]
    fn format_utc_says_utc() {
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_utc(i64::MAX), format!("unix time {}", i64::MAX));
    }

    #[test]
    fn privileges_are_ordered_and_round_trip() {
        assert!(Privilege::Monitor < Privilege::Manage);
        assert!(Privilege::Administer < Privilege::Superuser);
        for p in Privilege::ALL {
            assert_eq!(p.as_str().parse::<Privilege>().unwrap(), p);
        }
        assert!("root".parse::<Privilege>().is_err());
    }

    #[test]
    fn a_chain_prints_every_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("write key for target 3")
            }
        }
        impl Error for Outer {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(Chain(&e).to_string(), "write key for target 3: disk full");
    }

    #[test]
    fn roles_are_the_appliance_strings_on_the_wire() {
        for role in [
            Role::Managed,
            Role::Source,
            Role::NonManagedSource,
            Role::PendingSource,
            Role::Local,
        ] {
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
            assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role);
        }
        assert!(serde_json::from_str::<Role>("\"managed dpu\"").is_err());
    }

    #[test]
    fn networks_mask_parse_and_contain() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let n = Network::of(ip("192.0.2.77"), 24, 64);
        assert_eq!(n.to_string(), "192.0.2.0/24");
        assert!(n.contains(ip("192.0.2.1")));
        assert!(n.contains(ip("::ffff:192.0.2.200")), "mapped IPv4 is IPv4");
        assert!(!n.contains(ip("192.0.3.1")));
        assert!(!n.contains(ip("::1")));
        let n6 = Network::of(ip("2001:db8:1:2:3:4:5:6"), 24, 64);
        assert_eq!(n6.to_string(), "2001:db8:1:2::/64");
        assert!(n6.contains(ip("2001:db8:1:2::99")));
        assert!(!n6.contains(ip("2001:db8:1:3::1")));
        assert_eq!(Network::of(ip("10.1.2.3"), 0, 0).to_string(), "0.0.0.0/0");
        assert_eq!(
            Network::of(ip("10.1.2.3"), 99, 0).to_string(),
            "10.1.2.3/32"
        );

        assert_eq!(Network::parse("192.0.2.9/24"), Some(n));
        assert_eq!(
            Network::parse("192.0.2.9").unwrap().to_string(),
            "192.0.2.9/32"
        );
        assert_eq!(Network::parse("2001:db8:1:2::5/64"), Some(n6));
        assert_eq!(Network::parse("::1").unwrap().to_string(), "::1/128");
        for bad in [
            "",
            "x",
            "192.0.2.0/33",
            "192.0.2.0/",
            "192.0.2.0/-1",
            "::/129",
            "1.2.3/8",
            "192.0.2.0/ 8",
            "192.0.2.0/024",
            "[::1]",
            " 192.0.2.1",
        ] {
            assert_eq!(Network::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_secret_never_shows_in_debug_but_serializes_as_itself() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Login {
            user: String,
            password: Secret<String>,
        }
        let l = Login {
            user: "root".into(),
            password: Secret::new("hunter2".into()),
        };
        let debug = format!("{l:?} {:?} {:#?}", l.password, l);
        assert!(!debug.contains("hunter2") && debug.contains('…'), "{debug}");
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json, r#"{"user":"root","password":"hunter2"}"#);
        let back: Login = serde_json::from_str(&json).unwrap();
        assert_eq!(back.password.expose(), "hunter2");
    }
}
