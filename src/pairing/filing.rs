//! Filing a request, target side: the caps on open requests and idempotency
//! (`decide_filing`), storing a pending request with its verification code, and filing
//! with a pairing token, which checks the token, files and accepts in one transaction
//! that counts its use. Writes no files: the caller renders the spool after the commit
//! returns.

use crate::ca::{self, ValidCsr};
use crate::model::{Network, UnixTime};
use crate::pairing::error::{Cap, PairingError, TokenRefusal};
use crate::pairing::fields::NewRequest;
use crate::pairing::target::{
    accept_in, choose_storage, ignore_in, replaced_system, sign, TargetSide,
};
use crate::pairing::tokens::check;
use crate::pairing::Actor;
use crate::store::{
    OpenRequest, RequestRecord, RequestStatus, Store, StoreError, SystemRecord, TokenRecord, Txn,
};
use crate::wire::token::PairingToken;

/// The limits on open requests.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub max_pending: u32,
    /// Open requests per network (`max_pending_per_address`).
    pub per_address: u32,
    /// The network an address counts in: its first `network_v4` bits for IPv4
    /// (`pending_prefix_v4`), `network_v6` bits for IPv6 (`pending_prefix_v6`).
    pub network_v4: u8,
    pub network_v6: u8,
    pub ttl_seconds: i64,
    /// The shorter TTL of a request filed from a crowded network while the inbox is under
    /// pressure ([`ttl_for`]; `crowded_request_ttl`, at most `ttl_seconds`).
    pub crowded_ttl_seconds: i64,
    /// What a refused source is told to wait.
    pub retry_after: u64,
}

impl Caps {
    /// Open requests past which only networks with none may file: the last quarter of
    /// `max_pending` is theirs.
    fn crowded_limit(&self) -> usize {
        let max = self.max_pending as usize;
        max - max / 4
    }

    /// Open requests from which the inbox is under pressure: half of `max_pending`.
    fn pressure(&self) -> usize {
        (self.max_pending as usize).div_ceil(2)
    }
}

/// How requests are filed: the caps on open requests, and whether a token is required.
#[derive(Clone, Copy, Debug)]
pub struct FilingRules {
    pub caps: Caps,
    /// `require_token`: every request without a valid token is refused.
    pub require_token: bool,
}

/// What filing decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Filing {
    /// The same source and key already have an open request: answer with it.
    Existing(u64),
    Create,
    Refuse(Cap),
}

/// The idempotency and cap rules over the open requests (expired ones already excluded).
/// The inbox's policy under a flood (docs/operations.md, "The pairing inbox under a
/// flood"): a network holds at most `per_address` open requests; a network that already
/// holds some may file only while fewer than three quarters of `max_pending` are open, so
/// the last quarter stays for networks with none; and past half of `max_pending` a
/// crowded network's requests expire sooner ([`ttl_for`]). Requests with a pairing token
/// never count and are never refused by a cap (`file_with_token`).
pub fn decide_filing(
    open: &[(u64, OpenRequest)],
    system_uuid: &str,
    csr_fingerprint: &str,
    address: &str,
    caps: &Caps,
) -> Filing {
    if let Some((id, o)) = open.iter().find(|(_, o)| o.system_uuid == system_uuid) {
        if o.csr_fingerprint == csr_fingerprint {
            return Filing::Existing(*id);
        }
        return Filing::Refuse(Cap::OtherKey {
            system_uuid: system_uuid.to_string(),
            request: *id,
        });
    }
    let (network, held) = network_of(open, address, caps);
    if held >= caps.per_address as usize {
        return Filing::Refuse(Cap::PerAddress { address: network });
    }
    if open.len() >= caps.max_pending as usize {
        return Filing::Refuse(Cap::Total);
    }
    if held > 0 && open.len() >= caps.crowded_limit() {
        return Filing::Refuse(Cap::Crowded { address: network });
    }
    Filing::Create
}

/// How long a request filed now from `address` lives: `ttl_seconds`, or
/// `crowded_ttl_seconds` when the inbox is under pressure (half of `max_pending` open)
/// and the address's network already holds open requests, so a flood clears itself
/// soon while a quiet network's request waits its full time for the admin.
pub fn ttl_for(open: &[(u64, OpenRequest)], address: &str, caps: &Caps) -> i64 {
    let (_, held) = network_of(open, address, caps);
    if held > 0 && open.len() >= caps.pressure() {
        caps.crowded_ttl_seconds.min(caps.ttl_seconds)
    } else {
        caps.ttl_seconds
    }
}

/// The network `address` counts in and its open requests. Per network, not per address:
/// one host owns a whole /64, and a /24 of addresses is cheap. An address that does not
/// parse (never from the front) counts alone.
fn network_of(open: &[(u64, OpenRequest)], address: &str, caps: &Caps) -> (String, usize) {
    match address.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            let net = Network::of(ip, caps.network_v4, caps.network_v6);
            let held = open
                .iter()
                .filter(|(_, o)| o.remote_addr.parse().is_ok_and(|ip| net.contains(ip)))
                .count();
            (net.to_string(), held)
        }
        Err(_) => {
            let held = open
                .iter()
                .filter(|(_, o)| o.remote_addr == address)
                .count();
            (address.to_string(), held)
        }
    }
}

/// Result of filing: the request, whether it was created now, and what else changed that
/// the caller must re-render in the spool.
#[derive(Debug)]
pub struct Filed {
    pub request: RequestRecord,
    pub created: bool,
    /// The earlier request of the same source that an accepted replacement key revoked.
    pub replaced: Option<u64>,
    /// Open requests of the same source that a request with a token closed.
    pub superseded: Vec<u64>,
}

/// Files a request: verify the CSR, then with a token check it and accept at once
/// ([`file_with_token`]), else apply idempotency and caps and store it pending,
/// with a fresh sequential id and `spool_token` as its poll token. The spool is written by
/// the caller.
pub fn file_request(
    side: &TargetSide,
    new: NewRequest,
    rules: &FilingRules,
    spool_token: String,
    now: UnixTime,
) -> Result<Filed, PairingError> {
    new.validate()?;
    if new.token.is_none() && rules.require_token {
        return Err(PairingError::TokenRequired);
    }
    let csr: ValidCsr = ca::parse_csr(&new.csr_pem).map_err(PairingError::Csr)?;
    if let Some(token) = &new.token {
        return file_with_token(side, &new, &csr, token, rules, spool_token, now);
    }
    let store = side.store;
    let ca_fingerprint = side.cas.fingerprint();
    let caps = &rules.caps;
    let fingerprint = csr.fingerprint();
    store.write(|tx| {
        let open: Vec<_> = tx
            .open_requests()?
            .into_iter()
            .filter(|(_, o)| o.expires > now)
            .collect();
        match decide_filing(
            &open,
            &new.system_uuid,
            &fingerprint,
            &new.remote_addr,
            caps,
        ) {
            Filing::Existing(id) => {
                let request = tx.request(id)?.ok_or(PairingError::UnknownRequest(id))?;
                Ok(Filed {
                    request,
                    created: false,
                    replaced: None,
                    superseded: Vec::new(),
                })
            }
            Filing::Refuse(cap) => Err(PairingError::Busy {
                cap,
                retry_after: caps.retry_after,
            }),
            Filing::Create => {
                let ttl = ttl_for(&open, &new.remote_addr, caps);
                let request = insert_request(
                    tx,
                    &ca_fingerprint,
                    &new,
                    &csr,
                    spool_token.clone(),
                    ttl,
                    now,
                )?;
                Ok(Filed {
                    request,
                    created: true,
                    replaced: None,
                    superseded: Vec::new(),
                })
            }
        }
    })
}

/// Stores `new` as a fresh pending request (the next id, its verification code from the
/// fingerprint of the CA in force, the systems row it would replace) and audits the
/// filing.
pub(crate) fn insert_request(
    tx: &Txn,
    ca_fingerprint: &str,
    new: &NewRequest,
    csr: &ValidCsr,
    spool_token: String,
    ttl_seconds: i64,
    now: UnixTime,
) -> Result<RequestRecord, PairingError> {
    let id = tx.next_request_id()?;
    let replaces_system_id = paired_system(tx, &new.system_uuid)?.map(|s| s.id);
    let request = RequestRecord {
        id,
        system_uuid: new.system_uuid.clone(),
        name: new.name.clone(),
        host: new.host.clone(),
        asset_tag: new.asset_tag.clone(),
        version: new.version.clone(),
        csr_pem: new.csr_pem.clone(),
        csr_fingerprint: csr.fingerprint(),
        remote_addr: new.remote_addr.clone(),
        token: spool_token,
        verification_code: ca::verification_code(ca_fingerprint, csr.spki_der(), id),
        created: now,
        expires: now.saturating_add(ttl_seconds),
        status: RequestStatus::Pending,
        message: None,
        resolved_at: None,
        resolved_by: None,
        replaces_system_id,
        system_id: None,
        cert_serial: None,
        requested_storage_id: new.requested_storage_id,
        pairing_token: new.token.as_ref().map(|t| t.id().to_string()),
        took_over: None,
    };
    tx.put_request(&request)?;
    let actor = Actor {
        user: "-".into(),
        address: new.remote_addr.clone(),
    };
    let with_token = match &new.token {
        Some(t) => format!(" with token {}", t.id()),
        None => String::new(),
    };
    tx.audit(&actor.audit(
        now,
        "request filed",
        format!("request:{id}"),
        format!(
            "system {} ({}) key {}{with_token}",
            new.system_uuid,
            new.host,
            csr.key_kind()
        ),
    ))?;
    Ok(request)
}

/// The systems row of a paired source with this `system_uuid`, if any.
pub(crate) fn paired_system(
    tx: &Txn,
    system_uuid: &str,
) -> Result<Option<SystemRecord>, StoreError> {
    Ok(tx
        .systems()?
        .into_iter()
        .find(|s| s.role.is_source() && s.system_uuid.as_deref() == Some(system_uuid)))
}

/// Files `new` with its token `token` and accepts it at once, in one transaction: check
/// the token, close the source's other open requests, store the request, accept it with
/// the token's storage and quota (the request cannot name others), count the use. Two
/// filings racing for a token's last use are serialized by the write transaction: the
/// second sees it spent and files nothing. The caps on open requests do not apply: the
/// request never stays open. Refusals by a verified token are audited.
#[allow(clippy::too_many_arguments)]
pub(crate) fn file_with_token(
    side: &TargetSide,
    new: &NewRequest,
    csr: &ValidCsr,
    token: &PairingToken,
    rules: &FilingRules,
    spool_token: String,
    now: UnixTime,
) -> Result<Filed, PairingError> {
    let (store, cas) = (side.store, side.cas);
    let ca_fingerprint = cas.fingerprint();
    let refused = |r: TokenRefusal| refuse(store, new, r, now);
    // Checked once before signing, so a refused token costs no signature; the check inside
    // the transaction is the one that counts.
    let found = store.token(token.id())?;
    let t = check(found.as_ref(), token, &new.system_uuid, &new.host, now).map_err(refused)?;
    let storage_id = match token_storage(store, t) {
        Err(PairingError::Token(r)) => return Err(refused(r)),
        other => other?,
    };
    let storage = choose_storage(side.storage, storage_id)?;
    let issued = sign(
        cas.signing(),
        csr,
        &new.system_uuid,
        side.client_lifetime,
        now,
    )?;
    let filed = store.write(|tx| {
        let current = tx.token(token.id())?;
        let mut t = check(current.as_ref(), token, &new.system_uuid, &new.host, now)
            .map_err(PairingError::Token)?
            .clone();
        if let Some(row) = paired_system(tx, &new.system_uuid)? {
            let bound = t.system_uuid.as_deref() == Some(new.system_uuid.as_str());
            if !bound && t.replaces_system_id.is_none() {
                return Err(PairingError::Token(TokenRefusal::Replaces {
                    id: t.id.clone(),
                    system_id: row.id,
                }));
            }
        }
        let actor = Actor {
            user: format!("token:{}", t.id),
            address: new.remote_addr.clone(),
        };
        let mut superseded = Vec::new();
        for (id, open) in tx.open_requests()? {
            if open.system_uuid != new.system_uuid {
                continue;
            }
            if let Some(r) = tx
                .request(id)?
                .filter(|r| r.status == RequestStatus::Pending)
            {
                let detail = format!("by a request with pairing token {}", t.id);
                ignore_in(tx, r, &actor, "request superseded", detail, now)?;
                superseded.push(id);
            }
        }
        let request = insert_request(
            tx,
            &ca_fingerprint,
            new,
            csr,
            spool_token,
            rules.caps.ttl_seconds,
            now,
        )?;
        let replaces = token_replacement(tx, &t, &request)?;
        let resolved = accept_in(
            tx,
            request,
            storage,
            &issued,
            t.quota_mb.map(Some),
            replaces,
            &actor,
            now,
        )?;
        t.used += 1;
        t.last_used = Some(now);
        tx.put_token(&t)?;
        tx.audit(&actor.audit(
            now,
            "token used",
            format!("token:{}", t.id),
            format!(
                "request {} system {} ({}){}, use {} of {}",
                resolved.request.id,
                resolved.request.system_id.unwrap_or_default(),
                new.system_uuid,
                match resolved.request.took_over {
                    Some(old) => format!(" took over system {old}"),
                    None => String::new(),
                },
                t.used,
                t.uses
            ),
        ))?;
        Ok(Filed {
            request: resolved.request,
            created: true,
            replaced: resolved.replaced,
            superseded,
        })
    });
    filed.map_err(|e| match e {
        PairingError::Token(r) => refused(r),
        other => other,
    })
}

/// The storage a token's source gets: the token's, else for a token that takes over a
/// lost source that source's (a gone one refuses before anything is signed), else none
/// (the default backup storage).
fn token_storage(store: &Store, t: &TokenRecord) -> Result<Option<u64>, PairingError> {
    let Some(old) = t.replaces_system_id.filter(|_| t.storage_id.is_none()) else {
        return Ok(t.storage_id);
    };
    match store.system(old)? {
        Some(row) => Ok(row.storage_id),
        None => Err(PairingError::Token(TokenRefusal::ReplacedGone {
            id: t.id.clone(),
            system_id: old,
        })),
    }
}

/// The lost source a token bound to one (`replaces_system_id`) lets request `r` take
/// over, with the checks of an admin's accept (`replaced_system`: it exists, is a source
/// here, the requesting appliance is not another system here) and one more: nobody took it
/// over since the token was issued. None for an ordinary token.
fn token_replacement(
    tx: &Txn,
    t: &TokenRecord,
    r: &RequestRecord,
) -> Result<Option<SystemRecord>, PairingError> {
    let Some(old) = t.replaces_system_id else {
        return Ok(None);
    };
    let refusal = |r: TokenRefusal| Err(PairingError::Token(r));
    let id = t.id.clone();
    if let Some(other) = paired_system(tx, &r.system_uuid)?.filter(|s| s.id != old) {
        return refusal(TokenRefusal::PairedAsOther {
            id,
            system_id: old,
            other: other.id,
        });
    }
    let row = match replaced_system(tx, r, old) {
        Err(PairingError::UnknownSystem(_) | PairingError::NotASource(_)) => {
            return refusal(TokenRefusal::ReplacedGone { id, system_id: old })
        }
        other => other?,
    };
    if row.system_uuid != t.replaces_uuid {
        return refusal(TokenRefusal::AlreadyReplaced { id, system_id: old });
    }
    Ok(Some(row))
}

/// A refusal as the source hears it; when the secret was right, also an audit row (a
/// wrong or unknown secret is a stranger's guess and gets none, so guessing cannot grow
/// the log).
fn refuse(store: &Store, new: &NewRequest, r: TokenRefusal, now: UnixTime) -> PairingError {
    if let Some(id) = r.verified_id() {
        let actor = Actor {
            user: "-".into(),
            address: new.remote_addr.clone(),
        };
        let row = actor.audit(
            now,
            "token refused",
            format!("token:{id}"),
            format!(
                "request from system {} ({}): {r}",
                new.system_uuid, new.host
            ),
        );
        if let Err(e) = store.write(|tx| tx.audit(&row)) {
            log::warn!("audit a refused pairing token: {}", crate::model::Chain(&e));
        }
    }
    PairingError::Token(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(uuid: &str, fp: &str, addr: &str) -> OpenRequest {
        OpenRequest {
            system_uuid: uuid.into(),
            csr_fingerprint: fp.into(),
            remote_addr: addr.into(),
            expires: 100,
        }
    }

    const CAPS: Caps = Caps {
        max_pending: 3,
        per_address: 2,
        network_v4: 24,
        network_v6: 64,
        ttl_seconds: 60,
        crowded_ttl_seconds: 10,
        retry_after: 30,
    };

    #[test]
    fn same_source_and_key_is_the_existing_request() {
        let o = vec![(7, open("u1", "k1", "a"))];
        assert_eq!(
            decide_filing(&o, "u1", "k1", "a", &CAPS),
            Filing::Existing(7)
        );
        assert!(matches!(
            decide_filing(&o, "u1", "k2", "a", &CAPS),
            Filing::Refuse(_)
        ));
        assert_eq!(decide_filing(&o, "u2", "k1", "a", &CAPS), Filing::Create);
    }

    #[test]
    fn address_and_global_caps_refuse() {
        let o = vec![(1, open("u1", "k", "a")), (2, open("u2", "k", "a"))];
        assert!(
            matches!(decide_filing(&o, "u3", "k", "a", &CAPS), Filing::Refuse(r) if r.to_string().contains("from a"))
        );
        assert_eq!(decide_filing(&o, "u3", "k", "b", &CAPS), Filing::Create);
        let o = vec![
            (1, open("u1", "k", "a")),
            (2, open("u2", "k", "b")),
            (3, open("u3", "k", "c")),
        ];
        assert!(matches!(
            decide_filing(&o, "u4", "k", "d", &CAPS),
            Filing::Refuse(_)
        ));
    }

    #[test]
    fn the_address_cap_counts_per_network() {
        let caps = Caps {
            per_address: 2,
            max_pending: 100,
            ..CAPS
        };
        let o = vec![
            (1, open("u1", "k", "198.51.100.7")),
            (2, open("u2", "k", "198.51.100.200")),
            (3, open("u3", "k", "2001:db8:0:1::1")),
        ];
        let refused = decide_filing(&o, "u9", "k", "198.51.100.99", &caps);
        assert_eq!(
            refused,
            Filing::Refuse(Cap::PerAddress {
                address: "198.51.100.0/24".into()
            })
        );
        assert!(refused_text(&refused).contains("from 198.51.100.0/24"));
        assert_eq!(
            decide_filing(&o, "u9", "k", "198.51.101.1", &caps),
            Filing::Create
        );
        let o6 = vec![
            (1, open("u1", "k", "2001:db8:0:1::1")),
            (2, open("u2", "k", "2001:db8:0:1:ffff::9")),
        ];
        assert!(matches!(
            decide_filing(&o6, "u9", "k", "2001:db8:0:1::77", &caps),
            Filing::Refuse(Cap::PerAddress { address }) if address == "2001:db8:0:1::/64"
        ));
        assert_eq!(
            decide_filing(&o6, "u9", "k", "2001:db8:0:2::1", &caps),
            Filing::Create
        );
        // Prefix lengths of a whole address count per address again.
        let exact = Caps {
            network_v4: 32,
            ..caps
        };
        assert_eq!(
            decide_filing(&o, "u9", "k", "198.51.100.99", &exact),
            Filing::Create
        );
    }

    #[test]
    fn a_flood_from_many_networks_leaves_a_quarter_of_the_inbox_to_quiet_networks() {
        let caps = Caps {
            max_pending: 1_000,
            per_address: 20,
            ..CAPS
        };
        // 1,000 requests from 50 /24 networks, 20 each, filed in turn.
        let mut o: Vec<(u64, OpenRequest)> = Vec::new();
        let mut refused = 0;
        let mut short = 0;
        for i in 0..1_000u64 {
            let n = i % 50;
            let addr = format!("10.{n}.{n}.{}", 1 + i / 50);
            let uuid = format!("flood-{i}");
            match decide_filing(&o, &uuid, "k", &addr, &caps) {
                Filing::Create => {
                    if ttl_for(&o, &addr, &caps) == caps.crowded_ttl_seconds {
                        short += 1;
                    }
                    o.push((i, open(&uuid, "k", &addr)));
                }
                Filing::Refuse(Cap::Crowded { .. }) => refused += 1,
                other => panic!("{i}: {other:?}"),
            }
        }
        assert_eq!(o.len(), 750, "a quarter stays free");
        assert_eq!(refused, 250);
        assert_eq!(short, 250, "requests 500 to 749 expire sooner");
        // A network with no open request still gets in, for the full TTL; one of the
        // flooding networks does not.
        assert_eq!(
            decide_filing(&o, "quiet", "k", "192.0.2.7", &caps),
            Filing::Create
        );
        assert_eq!(ttl_for(&o, "192.0.2.7", &caps), caps.ttl_seconds);
        assert!(matches!(
            decide_filing(&o, "again", "k", "10.3.3.9", &caps),
            Filing::Refuse(Cap::Crowded { address }) if address == "10.3.3.0/24"
        ));
    }

    fn refused_text(f: &Filing) -> String {
        match f {
            Filing::Refuse(c) => c.to_string(),
            other => format!("{other:?}"),
        }
    }

    // ---- filing with a token, over a real store and CA ----

    use crate::ca::{Ca, CaSet};
    use crate::config::{Storage, StorageUsage};
    use crate::pairing::tokens::tests::{spec, NOW, UUID};
    use crate::pairing::tokens::{create, revoke, status, Issued, TokenSpec, TokenStatus};

    fn temp_store(name: &str) -> Store {
        let dir =
            std::env::temp_dir().join(format!("replgate-tokens-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        Store::open(&dir.join("replgate.redb")).unwrap()
    }

    fn test_ca() -> Ca {
        Ca::generate(
            "tokens test",
            time::OffsetDateTime::from_unix_timestamp(NOW - 60).unwrap(),
        )
        .unwrap()
    }

    fn two_storages() -> Vec<Storage> {
        [1, 2]
            .map(|id| Storage {
                id,
                name: format!("s{id}"),
                path: format!("/s{id}").into(),
                usage: StorageUsage::Backup,
                kind: crate::config::StorageKind::Dir,
            })
            .to_vec()
    }

    fn rules() -> FilingRules {
        FilingRules {
            caps: Caps {
                max_pending: 100,
                per_address: 1,
                network_v4: 24,
                network_v6: 64,
                ttl_seconds: 600,
                crowded_ttl_seconds: 600,
                retry_after: 30,
            },
            require_token: false,
        }
    }

    fn side<'a>(store: &'a Store, cas: &'a CaSet, storage: &'a [Storage]) -> TargetSide<'a> {
        TargetSide {
            store,
            cas,
            storage,
            client_lifetime: std::time::Duration::from_secs(30 * 86_400),
        }
    }

    fn new_request(uuid: &str, token: Option<&PairingToken>) -> NewRequest {
        let (_, csr) = crate::ca::generate_client_key_and_csr(uuid).unwrap();
        NewRequest {
            system_uuid: uuid.into(),
            name: "src".into(),
            host: "src.example".into(),
            asset_tag: None,
            version: "1".into(),
            csr_pem: csr,
            remote_addr: "192.0.2.7".into(),
            requested_storage_id: Some(1),
            token: token.cloned(),
        }
    }

    fn admin() -> Actor {
        Actor {
            user: "root".into(),
            address: "192.0.2.1".into(),
        }
    }

    /// A store, a CA and two backup storages, for filings with tokens.
    struct Fixture {
        store: Store,
        ca: CaSet,
        storage: Vec<Storage>,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            Fixture {
                store: temp_store(name),
                ca: CaSet::single(test_ca()),
                storage: two_storages(),
            }
        }

        fn issue(&self, spec: TokenSpec) -> Issued {
            create(&self.store, &self.storage, spec, &admin(), NOW).unwrap()
        }

        /// Files a request for `uuid` (with a fresh key) under the default rules.
        fn file(&self, uuid: &str, token: Option<&PairingToken>) -> Result<Filed, PairingError> {
            self.file_new(new_request(uuid, token))
        }

        fn file_new(&self, new: NewRequest) -> Result<Filed, PairingError> {
            file_request(
                &side(&self.store, &self.ca, &self.storage),
                new,
                &rules(),
                crate::rand::hex_string(16),
                NOW,
            )
        }
    }

    fn request_count(store: &Store) -> usize {
        store.requests(0, usize::MAX, |_| true).unwrap().len()
    }

    #[test]
    fn a_system_uuid_that_is_not_a_uuid_is_refused_and_nothing_is_filed() {
        let fx = Fixture::new("uuid");
        let issued = fx.issue(TokenSpec::default());
        // Names that would land beside the target's own client directories, or outside.
        for bad in [
            "web01",
            "backup",
            "..",
            "0e0e0e0e0000400080000000000000ff",
            "0E0E0E0E-0000-4000-8000-0000000000FF",
        ] {
            for token in [None, Some(&issued.token)] {
                let e = fx.file(bad, token).unwrap_err();
                assert!(
                    matches!(
                        e,
                        PairingError::InvalidField {
                            field: "system_uuid",
                            ..
                        }
                    ),
                    "{bad}: {e:?}"
                );
            }
        }
        assert_eq!(request_count(&fx.store), 0);
        assert!(fx
            .file("0e0e0e0e-0000-4000-8000-0000000000ff", None)
            .is_ok());
    }

    #[test]
    fn a_token_accepts_at_once_with_its_storage_and_quota_and_is_spent_after_its_uses() {
        let fx = Fixture::new("accept");
        let store = &fx.store;
        let issued = fx.issue(spec(|s| {
            s.storage_id = Some(2);
            s.quota_mb = Some(500);
        }));
        let secret = &issued.token.expose()[PairingToken::ID_LEN + 1..];
        let stored = store.token(issued.token.id()).unwrap().unwrap();
        assert_ne!(stored.secret_hash, issued.token.expose());
        assert!(
            !stored.secret_hash.contains(secret),
            "only a hash is stored"
        );

        // The request asks for storage 1; the token's storage 2 wins.
        let filed = fx.file(UUID, Some(&issued.token)).unwrap();
        let r = &filed.request;
        assert_eq!(r.status, RequestStatus::Accepted);
        assert_eq!(r.pairing_token.as_deref(), Some(issued.token.id()));
        assert_eq!(
            r.resolved_by.as_deref(),
            Some(format!("token:{}", issued.token.id()).as_str())
        );
        let row = store.system(r.system_id.unwrap()).unwrap().unwrap();
        assert_eq!((row.storage_id, row.quota_mb), (Some(2), Some(500)));
        assert!(store
            .cert(r.cert_serial.as_deref().unwrap())
            .unwrap()
            .is_some());
        let t = store.token(issued.token.id()).unwrap().unwrap();
        assert_eq!((t.used, t.last_used), (1, Some(NOW)));
        assert_eq!(status(&t, NOW), TokenStatus::Used);

        // Spent: 403 material, and nothing filed; the refusal is audited.
        let before = request_count(store);
        let e = fx
            .file("0e0e0e0e-0000-4000-8000-000000000001", Some(&issued.token))
            .unwrap_err();
        assert!(
            matches!(&e, PairingError::Token(TokenRefusal::Spent { uses: 1, .. })),
            "{e:?}"
        );
        assert_eq!(request_count(store), before);
        let audit = store.audit(0, 100).unwrap();
        let actions: Vec<&str> = audit.iter().map(|(_, a)| a.action.as_str()).collect();
        for wanted in [
            "token created",
            "request filed",
            "request accepted",
            "token used",
            "token refused",
        ] {
            assert!(actions.contains(&wanted), "{wanted} in {actions:?}");
        }
        for (_, a) in &audit {
            let text = format!("{a:?}");
            assert!(!text.contains(secret), "the secret in an audit row: {text}");
        }
        let used = audit
            .iter()
            .find(|(_, a)| a.action == "token used")
            .unwrap();
        assert_eq!(used.1.object, format!("token:{}", issued.token.id()));

        // A wrong secret is an unknown token, and a stranger's guess is not audited.
        let guess = PairingToken::from_parts(issued.token.id(), &"0".repeat(32)).unwrap();
        let rows = store.audit(0, 1_000).unwrap().len();
        let e = fx
            .file("0e0e0e0e-0000-4000-8000-000000000002", Some(&guess))
            .unwrap_err();
        assert!(
            matches!(e, PairingError::Token(TokenRefusal::Unknown)),
            "{e:?}"
        );
        assert_eq!(store.audit(0, 1_000).unwrap().len(), rows);
    }

    #[test]
    fn two_filings_racing_for_the_last_use_let_exactly_one_in() {
        let fx = Fixture::new("race");
        let store = &fx.store;
        let issued = fx.issue(TokenSpec::default());
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = [
                "0e0e0e0e-0000-4000-8000-000000000006",
                "0e0e0e0e-0000-4000-8000-000000000007",
            ]
            .map(|uuid| {
                let new = new_request(uuid, Some(&issued.token));
                let (fx, barrier) = (&fx, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    fx.file_new(new)
                })
            })
            .into_iter()
            .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{results:?}");
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(PairingError::Token(TokenRefusal::Spent { .. })))));
        assert_eq!(request_count(store), 1);
        assert_eq!(store.systems().unwrap().len(), 1);
        assert_eq!(store.token(issued.token.id()).unwrap().unwrap().used, 1);
    }

    #[test]
    fn a_token_replaces_a_paired_key_only_when_bound_to_that_system() {
        let fx = Fixture::new("replace");
        let store = &fx.store;
        let free = fx.issue(spec(|s| s.uses = 5));
        let first = fx.file(UUID, Some(&free.token)).unwrap();
        // The same system_uuid again with an unbound token: refused, the pairing untouched.
        let e = fx.file(UUID, Some(&free.token)).unwrap_err();
        let system_id = first.request.system_id.unwrap();
        assert_eq!(
            e.to_string(),
            TokenRefusal::Replaces {
                id: free.token.id().into(),
                system_id
            }
            .to_string()
        );
        let serial = first.request.cert_serial.clone().unwrap();
        assert!(!store.is_revoked(&serial).unwrap());
        // Bound to it: the new key replaces the old one, whose certificate is revoked.
        let bound = fx.issue(spec(|s| s.system_uuid = Some(UUID.into())));
        let second = fx.file(UUID, Some(&bound.token)).unwrap();
        assert_eq!(second.replaced, Some(first.request.id));
        assert_eq!(second.request.system_id, Some(system_id));
        assert!(store.is_revoked(&serial).unwrap());
        // And a token bound to this system refuses any other.
        let e = fx
            .file("0e0e0e0e-0000-4000-8000-000000000003", Some(&bound.token))
            .unwrap_err();
        assert!(
            matches!(
                e,
                PairingError::Token(TokenRefusal::Spent { .. } | TokenRefusal::OtherSystem { .. })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_token_bound_to_a_lost_source_takes_it_over_once_and_refuses_once_it_is_gone_or_taken() {
        let fx = Fixture::new("takeover");
        let store = &fx.store;
        let uuid = |n: u8| format!("7a7a7a7a-0000-4000-8000-0000000000{n:02}");
        let issue = |sid: u64| create(store, &fx.storage, spec_replacing(sid), &admin(), NOW);
        // The lost source: storage 2, a quota.
        let first = fx.issue(spec(|s| {
            s.storage_id = Some(2);
            s.quota_mb = Some(50);
        }));
        let lost = fx.file(UUID, Some(&first.token)).unwrap();
        let sid = lost.request.system_id.unwrap();
        let old_serial = lost.request.cert_serial.clone().unwrap();
        assert!(matches!(issue(99), Err(PairingError::UnknownSystem(99))));
        let bound = issue(sid).unwrap();
        assert_eq!(bound.record.uses, 1);
        // Issued at the same time: the first used wins, the other then refuses.
        let twin = issue(sid).unwrap();
        // An appliance paired here as another system cannot take this one over.
        let other = fx.file(&uuid(1), Some(&fx.issue(TokenSpec::default()).token));
        let other = other.unwrap().request.system_id.unwrap();
        let e = fx.file(&uuid(1), Some(&bound.token)).unwrap_err();
        assert!(
            matches!(e, PairingError::Token(TokenRefusal::PairedAsOther { other: o, .. }) if o == other),
            "{e:?}"
        );
        // A new appliance takes it over: the same row, its storage, quota and copies; the
        // old certificate revoked in the same transaction.
        let new = fx.file(&uuid(2), Some(&bound.token)).unwrap();
        assert_eq!(
            (new.request.system_id, new.request.took_over),
            (Some(sid), Some(sid))
        );
        let row = store.system(sid).unwrap().unwrap();
        assert_eq!((row.storage_id, row.quota_mb), (Some(2), Some(50)));
        assert_eq!(row.system_uuid, Some(uuid(2)));
        assert_eq!(row.copies_uuid.as_deref(), Some(UUID));
        assert!(store.is_revoked(&old_serial).unwrap());
        let e = fx.file(&uuid(3), Some(&bound.token)).unwrap_err();
        assert!(
            matches!(e, PairingError::Token(TokenRefusal::Spent { .. })),
            "{e:?}"
        );
        let e = fx.file(&uuid(3), Some(&twin.token)).unwrap_err();
        assert!(
            matches!(e, PairingError::Token(TokenRefusal::AlreadyReplaced { .. })),
            "{e:?}"
        );
        // Issued for the new appliance's row, then an admin lets a third one take it over:
        // the token refuses, it consented to replacing the second.
        let stale = issue(sid).unwrap();
        let pending = fx.file(&uuid(4), None).unwrap().request.id;
        let accept = crate::pairing::target::Decision::Accept {
            storage_id: None,
            quota_mb: None,
            replaces_system_id: Some(sid),
        };
        let side = side(store, &fx.ca, &fx.storage);
        crate::pairing::target::resolve(&side, pending, accept, &admin(), NOW).unwrap();
        let e = fx.file(&uuid(5), Some(&stale.token)).unwrap_err();
        assert!(
            matches!(e, PairingError::Token(TokenRefusal::AlreadyReplaced { .. })),
            "{e:?}"
        );
        // Unpaired after its token was issued: the token refuses before signing anything.
        let gone = issue(sid).unwrap();
        crate::pairing::target::unpair(store, sid, &admin(), NOW).unwrap();
        let e = fx.file(&uuid(6), Some(&gone.token)).unwrap_err();
        assert!(
            matches!(e, PairingError::Token(TokenRefusal::ReplacedGone { .. })),
            "{e:?}"
        );
        let refused: Vec<_> = store.audit(0, 1000).unwrap();
        assert!(refused.iter().any(|(_, a)| a.action == "token refused"
            && a.detail.contains("no longer a replication source")));
    }

    fn spec_replacing(sid: u64) -> TokenSpec {
        TokenSpec {
            replaces_system_id: Some(sid),
            ..TokenSpec::default()
        }
    }

    #[test]
    fn a_token_closes_the_sources_open_request_and_needs_no_room_under_the_caps() {
        let fx = Fixture::new("supersede");
        let store = &fx.store;
        // Per-network cap 1: the open request fills this /24.
        let open = fx.file(UUID, None).unwrap();
        assert_eq!(open.request.status, RequestStatus::Pending);
        let e = fx
            .file("0e0e0e0e-0000-4000-8000-000000000004", None)
            .unwrap_err();
        assert!(matches!(e, PairingError::Busy { .. }), "{e:?}");
        let issued = fx.issue(TokenSpec::default());
        let filed = fx.file(UUID, Some(&issued.token)).unwrap();
        assert_eq!(filed.superseded, vec![open.request.id]);
        let closed = store.request(open.request.id).unwrap().unwrap();
        assert_eq!(closed.status, RequestStatus::Ignored);
        assert!(store.open_requests().unwrap().is_empty());
    }

    #[test]
    fn require_token_refuses_a_request_without_one_and_files_nothing() {
        let fx = Fixture::new("require");
        let store = &fx.store;
        let mut p = rules();
        p.require_token = true;
        let side = side(store, &fx.ca, &fx.storage);
        let e = file_request(&side, new_request(UUID, None), &p, "t".into(), NOW).unwrap_err();
        assert!(matches!(e, PairingError::TokenRequired), "{e:?}");
        assert_eq!(request_count(store), 0);
        let issued = fx.issue(TokenSpec::default());
        let filed = file_request(
            &side,
            new_request(UUID, Some(&issued.token)),
            &p,
            crate::rand::hex_string(16),
            NOW,
        )
        .unwrap();
        assert_eq!(filed.request.status, RequestStatus::Accepted);
    }

    #[test]
    fn revoking_refuses_further_uses_and_leaves_pairings_up() {
        let fx = Fixture::new("revoke");
        let store = &fx.store;
        let issued = fx.issue(spec(|s| s.uses = 3));
        let filed = fx.file(UUID, Some(&issued.token)).unwrap();
        let t = revoke(store, issued.token.id(), &admin(), NOW).unwrap();
        assert_eq!(status(&t, NOW), TokenStatus::Revoked);
        let serial = filed.request.cert_serial.unwrap();
        assert!(!store.is_revoked(&serial).unwrap(), "the pairing stays");
        assert!(store
            .system(filed.request.system_id.unwrap())
            .unwrap()
            .is_some());
        let e = fx
            .file("0e0e0e0e-0000-4000-8000-000000000005", Some(&issued.token))
            .unwrap_err();
        assert!(
            matches!(e, PairingError::Token(TokenRefusal::Revoked { .. })),
            "{e:?}"
        );
        assert!(matches!(
            revoke(store, issued.token.id(), &admin(), NOW),
            Err(PairingError::TokenAlreadyRevoked(_))
        ));
        assert!(matches!(
            revoke(store, "000000000000", &admin(), NOW),
            Err(PairingError::UnknownToken(_))
        ));
        assert!(matches!(
            revoke(store, "../x", &admin(), NOW),
            Err(PairingError::UnknownToken(_))
        ));
    }
}
