//! Crash consistency: a real daemon is SIGKILLed at random moments while two client threads
//! file, accept, reject, ignore and unpair pairing requests; after every restart the database
//! and the spool are checked against each other and against what the clients were told.
//!
//! Each round is one of:
//! - **kill**: SIGKILL 0–300 ms after the clients start. The spool as the crash left it is
//!   checked (it may lag the database, never lead it; nothing partial under a served name),
//!   then the daemon restarts (its reconcile runs), stops cleanly, and the database and the
//!   repaired spool are checked exactly.
//! - **fault**: the daemon runs with `REPLGATE_FAULT=crash_after_accept_commit`, so the first
//!   accept aborts it after its commit and before its spool; then as for a kill.
//! - **quiesce**: the clients stop, the daemon gets SIGTERM, and the spool must match the
//!   database exactly *without* any repair (what concurrent handlers wrote must be right).
//!
//! Invariants checked after every round (see `check_database` and the spool checks): the
//! database opens; every request's spool is byte for byte what `Spool::render` makes of it
//! and nothing else is in the spool; no resolution happened twice (audit rows) and no
//! resolved request went back to pending; no certificate serial repeats or moves to another
//! request; every acknowledged operation survived the crash; the rows an accept or an
//! unpair writes together are all there or all absent.
//!
//! Replay: `REPLGATE_CRASH_SEED=<printed seed> cargo test --test it crash -- --nocapture`.
//! Long run: `cargo test --test it crash_long -- --ignored --nocapture`
//! (`REPLGATE_CRASH_KILLS` sets the number of kills).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use replgate::spool::Spool;
use replgate::store::{RequestRecord, RequestStatus, Store};

use crate::harness::{request_body, scratch_dir, simple_csr, spool_token, Client, Daemon, Options};
use crate::rng::{count_from_env, seed_from_env, Rng};

const SEED_VAR: &str = "REPLGATE_CRASH_SEED";
const KILLS_VAR: &str = "REPLGATE_CRASH_KILLS";
const DEFAULT_SEED: u64 = 0x5eed_0c4a_5b00_0001;
/// What the daemons in this test are told to answer in `status.json` (`poll_interval`).
const RETRY_AFTER: u64 = 30;
/// Longest random delay between the clients' start and the kill.
const MAX_DELAY_MS: u64 = 300;
/// Client threads per round: two, so that decisions race each other.
const CLIENTS: usize = 2;

#[test]
fn crash_consistency_survives_random_kills() {
    let kills = crashes_wanted(KILLS_VAR, 10);
    run(seed_from_env(SEED_VAR, DEFAULT_SEED), kills);
}

#[test]
#[ignore = "long: at least 200 kills (about 10 minutes); see docs/testing.md"]
fn crash_long() {
    let kills = crashes_wanted(KILLS_VAR, 200).max(200);
    run(seed_from_env(SEED_VAR, DEFAULT_SEED ^ 0x10_0000), kills);
}

/// How many crashes a crash test is asked for (`var`, else `default`); refuses none: a
/// crash test that crashed nothing proved nothing and must not pass.
#[track_caller]
pub(crate) fn crashes_wanted(var: &str, default: u64) -> u64 {
    let n = count_from_env(var, default);
    assert!(
        n >= 1,
        "{var}={n}: a crash test must crash at least once (the floor it asserts at the end)"
    );
    n
}

/// A crash test's floor on the work it did: `got` of `what` must be at least `floor`.
#[track_caller]
pub(crate) fn assert_floor(what: &str, got: u64, floor: u64) {
    assert!(
        got >= floor,
        "the run did too little to prove anything: {got} {what}, the floor is {floor}"
    );
}

/// The crash tests fail when asked for no crashes (they used to pass, having checked
/// nothing): each is run as a child of this test binary with its count set to 0.
#[test]
fn crash_tests_refuse_to_pass_without_crashing() {
    let exe = std::env::current_exe().expect("the test binary");
    for (test, var, ignored) in [
        (
            "crash::crash_consistency_survives_random_kills",
            KILLS_VAR,
            false,
        ),
        ("crash_pair::crash_pair", KILLS_VAR, false),
        (
            "crash_renewal::crash_renewal_long",
            "REPLGATE_CRASH_ROUNDS",
            true,
        ),
    ] {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(var, "0")
            .env_remove("REPLGATE_CRASH_PAIRS");
        if ignored {
            cmd.arg("--ignored");
        }
        let out = cmd.output().expect("run the test binary");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("running 1 test"),
            "{test} did not run:\n{text}"
        );
        assert!(
            !out.status.success(),
            "{test} passed with {var}=0, having crashed nothing:\n{text}"
        );
        assert!(
            text.contains("must crash at least once"),
            "{test} failed, but not for want of crashes:\n{text}"
        );
    }
}

// ---- what the clients did ----

/// An operation the daemon confirmed before the crash: it must survive it.
#[derive(Clone, Debug)]
enum Ack {
    Filed {
        id: u64,
        token: String,
    },
    Accepted {
        id: u64,
    },
    Rejected {
        id: u64,
    },
    Ignored {
        id: u64,
    },
    /// The systems row of request `id` was unpaired.
    Unpaired {
        id: u64,
    },
}

impl Ack {
    /// The request and the statuses it may have in the database once a client heard this.
    fn allowed(&self) -> (u64, &'static [RequestStatus]) {
        use RequestStatus::*;
        match self {
            Ack::Filed { id, .. } => (*id, &[Pending, Accepted, Rejected, Ignored, Revoked]),
            Ack::Accepted { id } => (*id, &[Accepted, Revoked]),
            Ack::Rejected { id } => (*id, &[Rejected]),
            Ack::Ignored { id } => (*id, &[Ignored]),
            Ack::Unpaired { id } => (*id, &[Revoked]),
        }
    }
}

/// What the clients believe, rebuilt from the database at the start of every round.
#[derive(Default)]
struct Model {
    pending: Vec<u64>,
    /// (request id, system id)
    accepted: Vec<(u64, u64)>,
    resolved: Vec<u64>,
    max_system_id: u64,
}

struct Shared {
    model: Mutex<Model>,
    acks: Mutex<Vec<Ack>>,
    /// Answers no operation should get (a 500, a 201 for a resolved request, ...).
    surprises: Mutex<Vec<String>>,
    next_uuid: AtomicU64,
    ops: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn surprise(&self, s: String) {
        self.surprises.lock().unwrap().push(s);
    }
    fn ack(&self, a: Ack) {
        self.acks.lock().unwrap().push(a);
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    File,
    Accept(u64),
    Reject(u64),
    Ignore(u64),
    Unpair(u64, u64),
    /// Accept a request that is already resolved: must be 409.
    Again(u64),
    /// Unpair the system id the next accept will get (races an accept in flight).
    Guess(u64),
}

fn choose(rng: &mut Rng, m: &Model) -> Op {
    let roll = rng.below(100);
    let pending = (!m.pending.is_empty()).then(|| *rng.pick(&m.pending));
    let op = match roll {
        0..=29 => None,
        30..=49 => pending.map(Op::Accept),
        50..=61 => pending.map(Op::Reject),
        62..=71 => pending.map(Op::Ignore),
        72..=88 => (!m.accepted.is_empty()).then(|| {
            let (id, sid) = *rng.pick(&m.accepted);
            Op::Unpair(id, sid)
        }),
        89..=94 => (!m.resolved.is_empty()).then(|| Op::Again(*rng.pick(&m.resolved))),
        _ => Some(Op::Guess(m.max_system_id + 1)),
    };
    op.unwrap_or(Op::File)
}

/// One operation. `Err` means the connection failed: the daemon is gone.
fn perform(client: &Client, auth: &str, shared: &Shared, op: Op) -> std::io::Result<()> {
    let post = |path: &str, body: serde_json::Value| {
        client.try_request(
            "POST",
            path,
            &[("AuthToken", auth), ("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    };
    let delete = |path: &str| client.try_request("DELETE", path, &[("AuthToken", auth)], b"");
    let resolved = |id: u64| {
        let mut m = shared.model.lock().unwrap();
        m.pending.retain(|p| *p != id);
        if !m.resolved.contains(&id) {
            m.resolved.push(id);
        }
    };
    match op {
        Op::File => {
            let n = shared.next_uuid.fetch_add(1, Ordering::SeqCst);
            let uuid = format!("c7a5c7a5-0000-4000-8000-{n:012x}");
            let body = request_body(&uuid, &simple_csr().pem);
            let r = client.try_request(
                "POST",
                "/replication/v1/requests",
                &[("Content-Type", "application/json")],
                body.to_string().as_bytes(),
            )?;
            if r.status == 202 {
                let v = r.json();
                let id = v["request_id"].as_u64().unwrap_or(0);
                let token = spool_token(v["poll"].as_str().unwrap_or(""));
                shared.ack(Ack::Filed { id, token });
                shared.model.lock().unwrap().pending.push(id);
            } else {
                shared.surprise(format!("file {uuid}: {} {}", r.status, r.text()));
            }
        }
        Op::Accept(id) => {
            let r = post(
                "/api/replication/source",
                json!({"request_id": id, "accept": true}),
            )?;
            match r.status {
                201 => {
                    let sid = r.json()["system_id"].as_u64().unwrap_or(0);
                    shared.ack(Ack::Accepted { id });
                    let mut m = shared.model.lock().unwrap();
                    m.pending.retain(|p| *p != id);
                    m.resolved.push(id);
                    m.accepted.push((id, sid));
                    m.max_system_id = m.max_system_id.max(sid);
                }
                409 => resolved(id),
                s => shared.surprise(format!("accept {id}: {s} {}", r.text())),
            }
        }
        Op::Reject(id) => {
            let r = post(
                "/api/replication/source",
                json!({"request_id": id.to_string(), "accept": false, "message": format!("not {id}")}),
            )?;
            match r.status {
                201 => {
                    shared.ack(Ack::Rejected { id });
                    resolved(id);
                }
                409 => resolved(id),
                s => shared.surprise(format!("reject {id}: {s} {}", r.text())),
            }
        }
        Op::Ignore(id) => {
            let r = delete(&format!("/api/replication/pending/{id}"))?;
            match r.status {
                200 => {
                    shared.ack(Ack::Ignored { id });
                    resolved(id);
                }
                409 => resolved(id),
                s => shared.surprise(format!("ignore {id}: {s} {}", r.text())),
            }
        }
        Op::Unpair(id, sid) => {
            let r = delete(&format!("/api/replication/source?sid={sid}"))?;
            match r.status {
                200 => shared.ack(Ack::Unpaired { id }),
                404 => {}
                s => shared.surprise(format!("unpair {sid}: {s} {}", r.text())),
            }
            shared
                .model
                .lock()
                .unwrap()
                .accepted
                .retain(|(_, s)| *s != sid);
        }
        Op::Again(id) => {
            let r = post(
                "/api/replication/source",
                json!({"request_id": id, "accept": true}),
            )?;
            if r.status != 409 {
                shared.surprise(format!(
                    "accept of resolved request {id}: {} {} (resolved twice?)",
                    r.status,
                    r.text()
                ));
            }
        }
        Op::Guess(sid) => {
            let r = delete(&format!("/api/replication/source?sid={sid}"))?;
            if !matches!(r.status, 200 | 404) {
                shared.surprise(format!("unpair guessed {sid}: {} {}", r.status, r.text()));
            }
            if r.status == 200 {
                shared
                    .model
                    .lock()
                    .unwrap()
                    .accepted
                    .retain(|(_, s)| *s != sid);
            }
        }
    }
    shared.ops.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn drive(client: Client, auth: String, shared: Arc<Shared>, mut rng: Rng) {
    while !shared.stop.load(Ordering::SeqCst) {
        let op = choose(&mut rng, &shared.model.lock().unwrap());
        if perform(&client, &auth, &shared, op).is_err() {
            return;
        }
    }
}

// ---- the spool as files ----

#[derive(Debug)]
enum Entry {
    Dir(BTreeMap<String, Vec<u8>>),
    /// A file, symlink or anything else at the top of the spool.
    Other,
}

fn snapshot_spool(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = std::fs::symlink_metadata(e.path())
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if !is_dir {
            out.insert(name, Entry::Other);
            continue;
        }
        let mut files = BTreeMap::new();
        for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
            let fname = f.file_name().to_string_lossy().into_owned();
            let regular = std::fs::symlink_metadata(f.path())
                .map(|m| m.is_file())
                .unwrap_or(false);
            let bytes = if regular {
                std::fs::read(f.path()).unwrap_or_default()
            } else {
                b"<not a regular file>".to_vec()
            };
            files.insert(fname, bytes);
        }
        out.insert(name, Entry::Dir(files));
    }
    out
}

const SERVED: [&str; 3] = ["status.json", "certificate.pem", "ca.pem"];

/// The spool must be exactly what the database renders to: one directory per request with
/// exactly the rendered files, nothing else anywhere.
fn check_spool_exact(
    spool: &BTreeMap<String, Entry>,
    requests: &[RequestRecord],
    renderer: &Spool,
    store: &Store,
    v: &mut Vec<String>,
) {
    let mut tokens = BTreeSet::new();
    for r in requests {
        tokens.insert(r.token.clone());
        let want = match renderer.render(r, store) {
            Ok(f) => f,
            Err(e) => {
                v.push(format!("request {}: render: {e}", r.id));
                continue;
            }
        };
        let Some(Entry::Dir(files)) = spool.get(&r.token) else {
            v.push(format!(
                "request {} ({}): no spool directory",
                r.id,
                r.status.as_str()
            ));
            continue;
        };
        let want_names: BTreeSet<&str> = want.iter().map(|(n, _)| *n).collect();
        let have_names: BTreeSet<&str> = files.keys().map(String::as_str).collect();
        if want_names != have_names {
            v.push(format!(
                "request {} ({}): spool holds {have_names:?}, database renders {want_names:?}",
                r.id,
                r.status.as_str()
            ));
        }
        for (name, bytes) in &want {
            if let Some(have) = files.get(*name) {
                if have != bytes {
                    v.push(format!(
                        "request {} ({}): {name} differs from the database: {:?} vs {:?}",
                        r.id,
                        r.status.as_str(),
                        String::from_utf8_lossy(&have[..have.len().min(120)]),
                        String::from_utf8_lossy(&bytes[..bytes.len().min(120)]),
                    ));
                }
            }
        }
    }
    for (name, e) in spool {
        if !tokens.contains(name) {
            v.push(format!("spool entry {name} belongs to no request ({e:?})"));
        }
    }
}

/// Which statuses a request's spool may show while it lags a database at `status`.
fn lagging(status: RequestStatus) -> &'static [RequestStatus] {
    use RequestStatus::*;
    match status {
        Pending => &[Pending],
        Accepted => &[Pending, Accepted],
        Revoked => &[Pending, Accepted, Revoked],
        Rejected => &[Pending, Rejected],
        Ignored => &[Pending, Ignored],
        Expired => &[Pending, Expired],
    }
}

/// The spool as a crash left it: it may lag the database (a commit whose spool was not
/// written yet) but never lead it; every file under a served name is complete; `accepted`
/// is never visible before both certificate files; what a client was told survived.
fn check_spool_after_crash(
    spool: &BTreeMap<String, Entry>,
    requests: &[RequestRecord],
    renderer: &Spool,
    store: &Store,
    ca_pem: &[u8],
    acks: &[Ack],
    v: &mut Vec<String>,
) {
    let by_token: HashMap<&str, &RequestRecord> =
        requests.iter().map(|r| (r.token.as_str(), r)).collect();
    let mut status_of_token: HashMap<&str, RequestStatus> = HashMap::new();
    for (token, entry) in spool {
        let Some(r) = by_token.get(token.as_str()) else {
            v.push(format!(
                "after the crash: spool entry {token} belongs to no request (spool ahead of the database)"
            ));
            continue;
        };
        let Entry::Dir(files) = entry else {
            v.push(format!(
                "after the crash: spool entry {token} is not a directory"
            ));
            continue;
        };
        for name in files.keys() {
            // A crash can leave a temporary (`<served name>.<pid>.<n>.tmp`, see fsx); it is
            // never served and the restart sweeps it. Anything else is a stray.
            let base = match name.strip_suffix(".tmp") {
                Some(stem) => stem.split('.').take(2).collect::<Vec<_>>().join("."),
                None => name.to_string(),
            };
            if !SERVED.contains(&base.as_str()) {
                v.push(format!(
                    "after the crash: request {}: stray file {name}",
                    r.id
                ));
            }
        }
        if let Some(bytes) = files.get("status.json") {
            let mut matched = None;
            for s in lagging(r.status) {
                let mut variant = (*r).clone();
                variant.status = *s;
                let want = renderer.status_of(&variant);
                if serde_json::to_vec(&want).ok().as_deref() == Some(bytes.as_slice()) {
                    matched = Some(*s);
                }
            }
            match matched {
                None => v.push(format!(
                    "after the crash: request {} ({}): status.json {:?} is not the database's state or an earlier one",
                    r.id,
                    r.status.as_str(),
                    String::from_utf8_lossy(bytes)
                )),
                Some(s) => {
                    status_of_token.insert(token.as_str(), s);
                    if s == RequestStatus::Accepted
                        && !(files.contains_key("certificate.pem") && files.contains_key("ca.pem"))
                    {
                        v.push(format!(
                            "after the crash: request {}: status.json says accepted before the certificate files exist",
                            r.id
                        ));
                    }
                }
            }
        }
        let certified = matches!(r.status, RequestStatus::Accepted | RequestStatus::Revoked);
        if let Some(bytes) = files.get("certificate.pem") {
            let want = r
                .cert_serial
                .as_deref()
                .and_then(|s| store.cert(s).ok().flatten())
                .map(|c| c.pem.into_bytes());
            if !certified || want.as_deref() != Some(bytes.as_slice()) {
                v.push(format!(
                    "after the crash: request {} ({}): certificate.pem is not the issued certificate",
                    r.id,
                    r.status.as_str()
                ));
            }
        }
        if let Some(bytes) = files.get("ca.pem") {
            if !certified || bytes.as_slice() != ca_pem {
                v.push(format!(
                    "after the crash: request {} ({}): ca.pem is not the CA certificate",
                    r.id,
                    r.status.as_str()
                ));
            }
        }
    }
    // A client hears of an operation only after its spool is written.
    let by_id: HashMap<u64, &RequestRecord> = requests.iter().map(|r| (r.id, r)).collect();
    for a in acks {
        let (id, allowed) = a.allowed();
        let Some(r) = by_id.get(&id) else { continue };
        let seen = status_of_token.get(r.token.as_str());
        if !seen.is_some_and(|s| allowed.contains(s)) {
            v.push(format!(
                "after the crash: {a:?} was acknowledged but the spool shows {seen:?}"
            ));
        }
    }
}

// ---- the database ----

/// What earlier rounds saw, so that history can be checked across crashes.
#[derive(Default)]
struct History {
    status: BTreeMap<u64, RequestStatus>,
    /// Certificate serial → request id, over the whole run.
    serials: HashMap<String, u64>,
}

fn allowed_transition(from: RequestStatus, to: RequestStatus) -> bool {
    use RequestStatus::*;
    from == to || matches!((from, to), (Pending, _) | (Accepted, Revoked))
}

fn serial_of_pem(pem: &str) -> Option<String> {
    let der = crate::harness::pem_certs(pem.as_bytes())
        .into_iter()
        .next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let raw = cert.raw_serial();
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    Some(raw[start..].iter().map(|b| format!("{b:02x}")).collect())
}

fn check_database(
    store: &Store,
    requests: &[RequestRecord],
    history: &mut History,
    acks: &[Ack],
    v: &mut Vec<String>,
) {
    use RequestStatus::*;
    let open: BTreeSet<u64> = match store.open_requests() {
        Ok(o) => o.into_iter().map(|(id, _)| id).collect(),
        Err(e) => return v.push(format!("open requests: {e}")),
    };
    let systems = match store.systems() {
        Ok(s) => s,
        Err(e) => return v.push(format!("systems: {e}")),
    };
    let certs = match store.certs() {
        Ok(c) => c,
        Err(e) => return v.push(format!("certs: {e}")),
    };
    let revoked: BTreeSet<String> = match store.revoked_serials() {
        Ok(r) => r.into_iter().collect(),
        Err(e) => return v.push(format!("revoked: {e}")),
    };
    let audit = match store.audit(0, usize::MAX) {
        Ok(a) => a,
        Err(e) => return v.push(format!("audit: {e}")),
    };

    // Audit rows per request and per serial.
    let mut actions: HashMap<String, Vec<&str>> = HashMap::new();
    let mut unpairs_by_serial: HashMap<String, u32> = HashMap::new();
    for (_, a) in &audit {
        actions
            .entry(a.object.clone())
            .or_default()
            .push(a.action.as_str());
        if a.action == "source unpaired" {
            let serial = a.detail.strip_prefix("serial ");
            if let Some(serial) = serial.and_then(|s| s.split_whitespace().next()) {
                *unpairs_by_serial.entry(serial.to_string()).or_default() += 1;
            }
        }
    }

    let by_id: HashMap<u64, &RequestRecord> = requests.iter().map(|r| (r.id, r)).collect();
    let mut tokens = BTreeSet::new();
    for r in requests {
        let id = r.id;
        if !tokens.insert(r.token.clone()) {
            v.push(format!(
                "request {id}: spool token {} is used twice",
                r.token
            ));
        }
        // Resolution audit rows: exactly the one that matches the status.
        let rows = actions
            .get(&format!("request:{id}"))
            .cloned()
            .unwrap_or_default();
        let count = |what: &str| rows.iter().filter(|a| **a == what).count();
        if count("request filed") != 1 {
            v.push(format!(
                "request {id}: {} `request filed` audit rows",
                count("request filed")
            ));
        }
        let resolutions = [
            ("request accepted", count("request accepted")),
            ("request rejected", count("request rejected")),
            ("request ignored", count("request ignored")),
            ("request expired", count("request expired")),
        ];
        let total: usize = resolutions.iter().map(|(_, n)| n).sum();
        let expected = match r.status {
            Pending => None,
            Accepted | Revoked => Some("request accepted"),
            Rejected => Some("request rejected"),
            Ignored => Some("request ignored"),
            Expired => Some("request expired"),
        };
        let ok = match expected {
            None => total == 0,
            Some(what) => total == 1 && count(what) == 1,
        };
        if !ok {
            v.push(format!(
                "request {id} ({}): resolution audit rows {resolutions:?} (resolved twice, or not atomically)",
                r.status.as_str()
            ));
        }
        // The open index follows the status.
        if (r.status == Pending) != open.contains(&id) {
            v.push(format!(
                "request {id} ({}): open index says {}",
                r.status.as_str(),
                open.contains(&id)
            ));
        }
        // The rows an accept or an unpair writes together.
        match r.status {
            Pending | Rejected | Ignored | Expired => {
                if r.cert_serial.is_some() || r.system_id.is_some() {
                    v.push(format!(
                        "request {id} ({}) carries a certificate or a system",
                        r.status.as_str()
                    ));
                }
                if r.status == Rejected && r.message.as_deref().unwrap_or("").is_empty() {
                    v.push(format!("request {id}: rejected without a message"));
                }
            }
            Accepted | Revoked => {
                let Some(serial) = r.cert_serial.clone() else {
                    v.push(format!(
                        "request {id} ({}) has no certificate serial",
                        r.status.as_str()
                    ));
                    continue;
                };
                match certs.iter().find(|c| c.serial == serial) {
                    None => v.push(format!("request {id}: certificate {serial} is not stored")),
                    Some(c) if c.request_id != id => v.push(format!(
                        "request {id}: certificate {serial} is stored for request {}",
                        c.request_id
                    )),
                    Some(_) => {}
                }
                let row = systems
                    .iter()
                    .find(|s| s.cert_serial.as_deref() == Some(serial.as_str()));
                if r.status == Accepted {
                    if revoked.contains(&serial) {
                        v.push(format!(
                            "request {id}: accepted but its certificate is revoked"
                        ));
                    }
                    match row {
                        Some(s) if Some(s.id) == r.system_id => {}
                        other => v.push(format!(
                            "request {id}: accepted, system {:?}, but the systems row with its certificate is {:?}",
                            r.system_id,
                            other.map(|s| s.id)
                        )),
                    }
                    if unpairs_by_serial.contains_key(&serial) {
                        v.push(format!("request {id}: accepted but audited as unpaired"));
                    }
                } else {
                    if !revoked.contains(&serial) {
                        v.push(format!(
                            "request {id}: revoked but certificate {serial} is not"
                        ));
                    }
                    if row.is_some() {
                        v.push(format!(
                            "request {id}: revoked but a systems row still holds {serial}"
                        ));
                    }
                    if unpairs_by_serial.get(&serial).copied().unwrap_or(0) != 1 {
                        v.push(format!(
                            "request {id}: revoked with {} `source unpaired` audit rows",
                            unpairs_by_serial.get(&serial).copied().unwrap_or(0)
                        ));
                    }
                }
            }
        }
        // History: a resolved request never changes its mind.
        if let Some(before) = history.status.get(&id) {
            if !allowed_transition(*before, r.status) {
                v.push(format!(
                    "request {id}: was {} in an earlier round, now {}",
                    before.as_str(),
                    r.status.as_str()
                ));
            }
        }
    }
    for id in history.status.keys() {
        if !by_id.contains_key(id) {
            v.push(format!(
                "request {id} existed in an earlier round and is gone"
            ));
        }
    }
    // Certificates: unique serials, each bound to one request for the whole run.
    let mut seen = BTreeSet::new();
    for c in &certs {
        if !seen.insert(c.serial.clone()) {
            v.push(format!("certificate serial {} is stored twice", c.serial));
        }
        match serial_of_pem(&c.pem) {
            Some(s) if s == c.serial => {}
            other => v.push(format!(
                "certificate {}: its PEM has serial {other:?}",
                c.serial
            )),
        }
        match by_id.get(&c.request_id) {
            Some(r) if r.cert_serial.as_deref() == Some(c.serial.as_str()) => {}
            _ => v.push(format!(
                "certificate {} names request {}, which does not name it",
                c.serial, c.request_id
            )),
        }
        if let Some(prev) = history.serials.insert(c.serial.clone(), c.request_id) {
            if prev != c.request_id {
                v.push(format!(
                    "certificate serial {} was issued to request {prev} and now to {}",
                    c.serial, c.request_id
                ));
            }
        }
    }
    for serial in history.serials.keys() {
        if !seen.contains(serial) {
            v.push(format!(
                "certificate {serial} existed in an earlier round and is gone"
            ));
        }
    }
    // What the clients were told survived the crash.
    for a in acks {
        let (id, allowed) = a.allowed();
        match by_id.get(&id) {
            Some(r) if allowed.contains(&r.status) => {
                if let Ack::Filed { token, .. } = a {
                    if *token != r.token {
                        v.push(format!(
                            "{a:?} acknowledged; the database has token {}",
                            r.token
                        ));
                    }
                }
            }
            other => v.push(format!(
                "{a:?} was acknowledged; the database has {:?}",
                other.map(|r| r.status)
            )),
        }
    }
    for r in requests {
        history.status.insert(r.id, r.status);
    }
}

// ---- the run ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    Kill,
    Fault,
    Quiesce,
}

struct Totals {
    rounds: u64,
    kills: u64,
    fault_aborts: u64,
    quiesced: u64,
    ops: u64,
    acks: u64,
}

fn model_from(requests: &[RequestRecord]) -> Model {
    let mut m = Model::default();
    for r in requests {
        match r.status {
            RequestStatus::Pending => m.pending.push(r.id),
            RequestStatus::Accepted => {
                let sid = r.system_id.unwrap_or(0);
                m.accepted.push((r.id, sid));
                m.resolved.push(r.id);
            }
            _ => m.resolved.push(r.id),
        }
        m.max_system_id = m.max_system_id.max(r.system_id.unwrap_or(0));
    }
    // Keep the lists short so that later rounds still pick recent requests often.
    let keep = |l: &mut Vec<u64>| {
        if l.len() > 200 {
            l.drain(..l.len() - 200);
        }
    };
    keep(&mut m.pending);
    keep(&mut m.resolved);
    m
}

/// Opens the stopped daemon's database and checks everything; returns the violations and
/// the requests it read.
#[allow(clippy::too_many_arguments)]
fn check(
    d: &Daemon,
    renderer: &Spool,
    history: &mut History,
    acks: &[Ack],
    after_crash: Option<&BTreeMap<String, Entry>>,
    ca_pem: &[u8],
) -> (Vec<String>, Vec<RequestRecord>) {
    let mut v = Vec::new();
    let store = match Store::open(&d.data_dir.join("replgate.redb")) {
        Ok(s) => s,
        Err(e) => return (vec![format!("the database does not open: {e}")], Vec::new()),
    };
    let requests = match store.requests(0, usize::MAX, |_| true) {
        Ok(r) => r,
        Err(e) => return (vec![format!("requests: {e}")], Vec::new()),
    };
    if let Some(snapshot) = after_crash {
        check_spool_after_crash(snapshot, &requests, renderer, &store, ca_pem, acks, &mut v);
    }
    let now = snapshot_spool(&d.data_dir.join("spool"));
    check_spool_exact(&now, &requests, renderer, &store, &mut v);
    check_database(&store, &requests, history, acks, &mut v);
    (v, requests)
}

fn run(seed: u64, kills_wanted: u64) {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let base = Options::default()
        .set("max_pending", 1_000_000)
        .set("max_pending_per_address", 1_000_000)
        .set("poll_interval", RETRY_AFTER)
        .set("workers", 4);
    let faulty = base.clone().set("fault", "crash_after_accept_commit");
    let mut d = Daemon::start("crash", base.clone());
    let auth = d.root_token();
    let ca_pem = std::fs::read(d.data_dir.join("ca.pem")).expect("ca.pem");
    // Renders what the daemon must have written: same CA, tunnel endpoint and retry_after
    // (daemon.rs: `tunnel_endpoint` is the tunnel listen address when it is not 0.0.0.0).
    let renderer = Spool::open(
        scratch_dir("crash-render"),
        String::from_utf8(ca_pem.clone()).expect("ca.pem is text"),
        d.tunnel.to_string(),
        RETRY_AFTER,
    )
    .expect("renderer");
    let next_uuid = Arc::new(AtomicU64::new(0));
    let mut history = History::default();
    let mut requests: Vec<RequestRecord> = Vec::new();
    let mut totals = Totals {
        rounds: 0,
        kills: 0,
        fault_aborts: 0,
        quiesced: 0,
        ops: 0,
        acks: 0,
    };
    let mut kind = Round::Kill;
    let mut violations: Vec<String> = Vec::new();

    while totals.kills + totals.fault_aborts < kills_wanted {
        totals.rounds += 1;
        let round = totals.rounds;
        let shared = Arc::new(Shared {
            model: Mutex::new(model_from(&requests)),
            acks: Mutex::new(Vec::new()),
            surprises: Mutex::new(Vec::new()),
            next_uuid: AtomicU64::new(next_uuid.load(Ordering::SeqCst)),
            ops: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (client, auth, shared, rng) =
                    (d.client(), auth.clone(), shared.clone(), rng.fork());
                std::thread::spawn(move || drive(client, auth, shared, rng))
            })
            .collect();
        let delay = Duration::from_millis(rng.below(MAX_DELAY_MS + 1));
        let mut crashed = true;
        match kind {
            Round::Kill => {
                std::thread::sleep(delay);
                d.kill9();
                totals.kills += 1;
            }
            Round::Fault => {
                if d.wait_exit(delay + Duration::from_secs(2)).is_some() {
                    totals.fault_aborts += 1;
                } else {
                    d.kill9();
                    totals.kills += 1;
                }
            }
            Round::Quiesce => {
                std::thread::sleep(delay);
                crashed = false;
            }
        }
        shared.stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().expect("client thread");
        }
        next_uuid.store(shared.next_uuid.load(Ordering::SeqCst), Ordering::SeqCst);
        let acks = shared.acks.lock().unwrap().clone();
        totals.ops += shared.ops.load(Ordering::Relaxed);
        totals.acks += acks.len() as u64;
        let mut round_violations: Vec<String> = shared.surprises.lock().unwrap().clone();

        let after_crash = if crashed {
            let snapshot = snapshot_spool(&d.data_dir.join("spool"));
            // Restart: the daemon repairs the spool; then stop it so the test may open the
            // database (redb's lock is exclusive).
            d.opts = base.clone();
            d.restart();
            Some(snapshot)
        } else {
            totals.quiesced += 1;
            None
        };
        let status = d.stop();
        if !status.success() {
            round_violations.push(format!("clean stop exited with {status}"));
        }
        let (found, now) = check(
            &d,
            &renderer,
            &mut history,
            &acks,
            after_crash.as_ref(),
            &ca_pem,
        );
        round_violations.extend(found);
        if !now.is_empty() {
            requests = now;
        }
        if !round_violations.is_empty() {
            eprintln!(
                "round {round} ({kind:?}, delay {delay:?}, {} acks): {} violations",
                acks.len(),
                round_violations.len()
            );
            for x in &round_violations {
                eprintln!("  {x}");
            }
            violations.extend(
                round_violations
                    .into_iter()
                    .map(|x| format!("round {round}: {x}")),
            );
        }
        if violations.len() > 20 {
            break;
        }

        kind = match rng.below(100) {
            0..=69 => Round::Kill,
            70..=84 => Round::Fault,
            _ => Round::Quiesce,
        };
        d.opts = if kind == Round::Fault {
            faulty.clone()
        } else {
            base.clone()
        };
        d.restart();
    }
    d.opts = base;
    let counts: BTreeMap<&str, usize> = requests.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.status.as_str()).or_default() += 1;
        m
    });
    eprintln!(
        "crash: seed {seed:#x}: {} rounds, {} SIGKILLs, {} fault aborts, {} quiesced stops, \
         {} operations ({} acknowledged), {} requests {counts:?}, {} violations, {:.1} s",
        totals.rounds,
        totals.kills,
        totals.fault_aborts,
        totals.quiesced,
        totals.ops,
        totals.acks,
        requests.len(),
        violations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        violations.is_empty(),
        "seed {seed:#x}: {} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    // The floors: the crashes asked for happened, SIGKILLs among them (the first round is
    // always one), and the clients got work done between them.
    assert_floor("crashes", totals.kills + totals.fault_aborts, kills_wanted);
    assert_floor("SIGKILLs", totals.kills, 1);
    assert_floor("acknowledged operations", totals.acks, totals.rounds);
}
