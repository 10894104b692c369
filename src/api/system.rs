//! Health, the knowledge base and the metrics: the informational endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};

use serde_json::json;

use super::body::parse_id;
use super::error::{kb_text, ApiError};
use super::{App, Call, Reply};
use crate::lifecycle::Certified;
use crate::metrics::{self, Exposition};
use crate::model::Role;
use crate::replication::live::{Peer, PeerStats};
use crate::store::{
    ItemStatus, QueueItem, RequestStatus, SystemRecord, TargetRecord, TargetStatus,
};
use crate::sync::lock;

/// `GET /api/health` (no token): up, the version, and a warning for each certificate
/// (or the CA) that ends within 30 days (`lifecycle::warnings`), for a CA rollover in
/// progress (`rollover::warnings`), and on a target while a verify's damaged copies wait to
/// be fetched again, and one when no restore drill passed within `drill_warn_days`
/// (`replication::drill::warning`). The warnings name ids and counts only, never host names: the endpoint
/// is open to anyone who reaches the listener.
/// `status` is `degraded`, with the `reason` and since when, while the database refuses
/// writes (a full disk); still 200: the daemon serves, and reads work.
pub(super) fn health(call: &Call) -> Result<Reply, ApiError> {
    let certs = call.app.certificates()?;
    let mut warnings = crate::lifecycle::warnings(&certs, call.now);
    warnings.extend(crate::pairing::rollover::warnings(
        &rollover_status(call.app, call.now)?,
        call.now,
    ));
    warnings.extend(damage_warning(call.app)?);
    warnings.extend(bucket_warnings());
    let paired_since = call
        .app
        .store
        .targets()?
        .iter()
        .filter(|t| t.status == TargetStatus::Complete)
        .map(|t| t.updated)
        .min();
    let drills = call.app.store.drills()?;
    warnings.extend(crate::replication::drill::warning(
        &drills.drills,
        paired_since,
        call.app.config.drill_warn_days,
        call.now,
    ));
    let version = env!("CARGO_PKG_VERSION");
    let body = match call.app.store.degraded() {
        None => json!({ "status": "ok", "version": version, "warnings": warnings }),
        Some(d) => json!({
            "status": "degraded",
            "reason": d.to_string(),
            "since": d.since,
            "version": version,
            "warnings": warnings,
        }),
    };
    Ok(Reply::json(200, body))
}

/// A warning for each `s3` storage whose bucket failed the receiver's last call of it
/// (items for it wait and are tried again; the next call that succeeds clears it).
fn bucket_warnings() -> Vec<String> {
    crate::objstore::failing()
        .into_iter()
        .map(|(id, since, why)| {
            format!(
                "storage {id} (s3) failed since {}: {why}; its items wait and are tried again",
                crate::model::format_utc(since)
            )
        })
        .collect()
}

/// Most damaged copies looked at for the health warning's system ids.
const DAMAGED_SCANNED: usize = 10_000;

/// The health warning for copies a verify found damaged and no new copy replaced yet.
fn damage_warning(app: &App) -> Result<Option<String>, ApiError> {
    let count = app.store.damaged_count()?;
    if count == 0 {
        return Ok(None);
    }
    let damaged = app.store.damaged(None, DAMAGED_SCANNED)?;
    let systems = app.store.systems()?;
    let mut ids: Vec<u64> = damaged
        .iter()
        .filter_map(|(uuid, _, _)| {
            systems
                .iter()
                .find(|s| s.system_uuid.as_deref() == Some(uuid.as_str()))
                .map(|s| s.id)
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    Ok(Some(format!(
        "{count} received copies found damaged by verify (systems {}); each is fetched \
         again from its source at the next session",
        ids.join(", ")
    )))
}

/// `GET /api/metrics`: the Prometheus text exposition of the process's metrics and of
/// what the database holds now (SPEC 15; the metric names are in docs/operations.md).
pub(super) fn metrics(call: &Call) -> Result<Reply, ApiError> {
    let mut failed = None;
    let text = crate::metrics::global().render_with(|out| {
        if let Err(e) = state(call.app, out) {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(Reply {
        status: 200,
        body: text.into_bytes(),
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        headers: Vec::new(),
    })
}

fn rollover_status(
    app: &App,
    now: crate::model::UnixTime,
) -> Result<crate::pairing::rollover::Status, ApiError> {
    Ok(crate::pairing::rollover::status_of(
        &app.certified.get(&app.store)?.systems,
        &app.cas.get(),
        app.config.rollover_window,
        now,
    ))
}

/// The CA rollover's samples: its phase (every phase listed, 1 for the one it is in), the
/// sources still on the old CA, and while it runs when it started and when its window
/// ends.
fn rollover_state(app: &App, out: &mut Exposition) -> Result<(), ApiError> {
    use crate::pairing::rollover::Phase;
    let st = rollover_status(app, crate::model::now())?;
    for phase in [Phase::Idle, Phase::Rolling] {
        out.gauge(
            "replgate_ca_rollover_phase",
            "The CA rollover's phase: 1 for the phase it is in (idle, rolling).",
            &[("phase", phase.as_str())],
            f64::from(u8::from(st.phase == phase)),
        );
    }
    out.gauge(
        "replgate_ca_rollover_old_chain_sources",
        "Active paired sources not seen with a certificate of the newest CA (during a rollover: the ones finish waits for).",
        &[],
        st.stragglers().count() as f64,
    );
    if let (Some(started), Some(ends)) = (st.started, st.window_ends) {
        out.gauge(
            "replgate_ca_rollover_started_seconds",
            "When the CA rollover in progress started (unix time).",
            &[],
            started as f64,
        );
        out.gauge(
            "replgate_ca_rollover_window_end_seconds",
            "When the CA rollover's window ends (unix time): finish may leave sources behind after it.",
            &[],
            ends as f64,
        );
    }
    Ok(())
}

/// The samples read from state at scrape time: every status and role is listed, zero or
/// not, so a series never vanishes when its count drops to nothing.
fn state(app: &App, out: &mut Exposition) -> Result<(), ApiError> {
    rollover_state(app, out)?;
    use RequestStatus as R;
    use TargetStatus as T;
    let statuses = [
        R::Pending,
        R::Accepted,
        R::Rejected,
        R::Expired,
        R::Ignored,
        R::Revoked,
    ];
    let counts = request_counts(app, &statuses)?;
    let counted: Vec<(&str, usize)> = statuses
        .iter()
        .zip(counts)
        .map(|(st, n)| (st.as_str(), n))
        .collect();
    gauges(
        out,
        "replgate_pairing_requests",
        "Pairing requests this appliance holds as a target, by status.",
        "status",
        &counted,
    );
    last_drill(app, out)?;
    let certified = app.certified.get(&app.store)?;
    let systems: Vec<&SystemRecord> = certified.systems.iter().map(|(s, _)| s).collect();
    let counted = [Role::Managed, Role::Source, Role::NonManagedSource].map(|role| {
        let n = systems.iter().filter(|s| s.role == role).count();
        (role.as_str(), n)
    });
    gauges(
        out,
        "replgate_systems",
        "Stored systems (sources and managed systems), by role.",
        "role",
        &counted,
    );
    let targets = app.store.targets()?;
    let statuses = [
        T::Pending,
        T::Accepted,
        T::Complete,
        T::Rejected,
        T::Expired,
        T::Revoked,
        T::Failed,
    ];
    let counted = statuses.map(|st| {
        let n = targets.iter().filter(|t| t.status == st).count();
        (st.as_str(), n)
    });
    gauges(
        out,
        "replgate_targets",
        "Targets this appliance asked for replication, by the pairing's status.",
        "status",
        &counted,
    );
    out.gauge(
        "replgate_ca_expiry_seconds",
        "When the appliance CA's certificate expires (unix time).",
        &[],
        app.cas.get().current.not_after() as f64,
    );
    for t in &targets {
        if let Some(expires) = t.certificate_expires {
            out.gauge(
                "replgate_target_certificate_expiry_seconds",
                "When this appliance's certificate for a target expires (unix time).",
                &[("target", t.host.as_str())],
                expires as f64,
            );
        }
    }
    let certs = app.certificates()?;
    // The paired sources' are kept as lines: `expiry_lines` below.
    for e in &certs {
        if let crate::lifecycle::CertKind::Listener(name) = &e.kind {
            out.gauge(
                "replgate_listener_certificate_expiry_seconds",
                "When a listener's server certificate in use expires (unix time); it renews while running.",
                &[("listener", name)],
                e.not_after as f64,
            );
        }
    }
    let sources = app.expiry_lines.get(&certified);
    if !sources.is_empty() {
        out.lines(
            "replgate_system_certificate_expiry_seconds",
            "When a paired source's current certificate expires (unix time).",
            false,
            &sources,
        );
    }
    out.gauge(
        "replgate_certificate_warnings",
        "Certificates (or the CA) ending within 30 days or ended: the certificate warnings of GET /api/health.",
        &[],
        crate::lifecycle::warnings(&certs, crate::model::now()).len() as f64,
    );
    verify_state(app, out)?;
    sending(app, out, &targets)?;
    receiving(app, out, &systems);
    process(app, out);
    Ok(())
}

/// The pairing requests by status (in the order of `statuses`), counted again only when
/// the store's request generation moved since the last count.
fn request_counts(app: &App, statuses: &[RequestStatus]) -> Result<Vec<usize>, ApiError> {
    let generation = app.store.request_generation();
    if let Some((g, counts)) = crate::sync::lock(&app.request_counts).as_ref() {
        if *g == generation && counts.len() == statuses.len() {
            return Ok(counts.clone());
        }
    }
    let mut counts = vec![0; statuses.len()];
    app.store.visit_requests(
        false,
        0,
        usize::MAX,
        |_| true,
        |r| {
            if let Some(i) = statuses.iter().position(|s| *s == r.status) {
                counts[i] += 1;
            }
        },
    )?;
    *crate::sync::lock(&app.request_counts) = Some((generation, counts.clone()));
    Ok(counts)
}

/// Source side of replication (SPEC 15), per target (every one this appliance asked, zero
/// or not): its queue's open items and their bytes by state, its sessions, the bytes and
/// files sent, attempts that did not end done by how they ended, the rate now.
fn sending(app: &App, out: &mut Exposition, targets: &[TargetRecord]) -> Result<(), ApiError> {
    let live = &app.replication.live;
    let peers = live.peers();
    let items = app.store.open_items(None)?;
    for t in targets {
        let target = [("target", t.host.as_str())];
        let mine: Vec<&QueueItem> = items.iter().filter(|i| i.target_id == t.id).collect();
        for status in [ItemStatus::Waiting, ItemStatus::Active, ItemStatus::Failed] {
            let of = mine.iter().filter(|i| i.status == status);
            let labels = [("target", t.host.as_str()), ("status", status.as_str())];
            out.gauge(
                "replgate_replication_queue_items",
                "Open items of a target's queue (source side), by status.",
                &labels,
                of.clone().count() as f64,
            );
            out.gauge(
                "replgate_replication_queue_bytes",
                "Bytes of the open items of a target's queue (source side), by status.",
                &labels,
                of.map(|i| i.size as f64).sum(),
            );
        }
        let stats = peers.get(&Peer::Target(t.id)).cloned().unwrap_or_default();
        out.gauge(
            "replgate_replication_send_sessions",
            "Transfer sessions open now to a target.",
            &target,
            stats.sessions as f64,
        );
        out.counter(
            "replgate_replication_sent_bytes_total",
            "Backup content bytes put on the wire to a target.",
            &target,
            stats.bytes as f64,
        );
        out.counter(
            "replgate_replication_sent_files_total",
            "Backups a target verified and committed.",
            &target,
            stats.files as f64,
        );
        out.counter(
            "replgate_replication_skipped_files_total",
            "Backups not sent because the target already held them with the same SHA-256.",
            &target,
            stats.skipped as f64,
        );
        for reason in ["refused", "failed", "interrupted"] {
            out.counter(
                "replgate_replication_send_failures_total",
                "Attempts to send a backup to a target that did not end done, by how they ended.",
                &[("target", t.host.as_str()), ("reason", reason)],
                stats.failures.get(reason).copied().unwrap_or(0) as f64,
            );
        }
        let rate: u64 = mine
            .iter()
            .filter_map(|i| live.progress_of(i.id))
            .map(|p| p.rate_bps())
            .sum();
        out.gauge(
            "replgate_replication_send_rate_bytes_per_second",
            "Bytes per second going to a target now (the last few seconds).",
            &target,
            rate as f64,
        );
    }
    Ok(())
}

/// The paired sources' certificate expiry lines (5,000 with 5,000 sources), kept with
/// the rows they were rendered from: `lifecycle::CertCache` hands out the same rows until
/// a certificate changes. The rows are held weakly, so a replaced read is freed at once
/// (and, while it is held, its address is not reused by another).
#[derive(Default)]
pub struct ExpiryLines {
    kept: Mutex<Option<(Weak<Certified>, Arc<str>)>>,
}

impl ExpiryLines {
    /// The lines for `rows`: each source with a current certificate, in the order of the
    /// rows (`lifecycle::expiries` reports the same).
    fn get(&self, rows: &Arc<Certified>) -> Arc<str> {
        let mut kept = lock(&self.kept);
        if let Some((from, lines)) = kept.as_ref() {
            if Weak::ptr_eq(from, &Arc::downgrade(rows)) {
                return lines.clone();
            }
        }
        let mut text = String::new();
        for (s, c) in &rows.systems {
            if let (true, Some(c)) = (s.role.is_source(), c) {
                let id = s.id.to_string();
                metrics::line(
                    &mut text,
                    "replgate_system_certificate_expiry_seconds",
                    &[("system", id.as_str())],
                    c.not_after as f64,
                );
            }
        }
        let lines: Arc<str> = text.into();
        *kept = Some((Arc::downgrade(rows), lines.clone()));
        lines
    }
}

/// The families of [`receiving`], in the order of [`SourceLines::lines`]: name, help,
/// and whether it is a counter.
const RECEIVE_FAMILIES: [(&str, &str, bool); 5] = [
    (
        "replgate_replication_receive_sessions",
        "Transfer sessions open now from a source.",
        false,
    ),
    (
        "replgate_replication_received_bytes_total",
        "Backup content bytes received from a source.",
        true,
    ),
    (
        "replgate_replication_received_files_total",
        "Backups received from a source, verified and committed.",
        true,
    ),
    (
        "replgate_replication_receive_failures_total",
        "Offers refused and files failed from a source, by the code it was told.",
        true,
    ),
    (
        "replgate_replication_receive_rate_bytes_per_second",
        "Bytes per second arriving from a source now (the last few seconds).",
        false,
    ),
];

/// Each source's lines of the receiving families, kept with the counters and rate they
/// show: a scrape renders again only the sources whose values moved (with thousands of
/// sources, most are idle between two scrapes, and rendering 30,000 lines was most of a
/// scrape).
#[derive(Default)]
pub struct ReceiveLines {
    /// In id order.
    kept: Mutex<Vec<SourceLines>>,
}

struct SourceLines {
    id: u64,
    values: (PeerStats, u64),
    lines: [String; 5],
}

impl SourceLines {
    fn render(id: u64, values: (PeerStats, u64)) -> SourceLines {
        let system = id.to_string();
        let labels = [("system", system.as_str())];
        let (stats, rate) = &values;
        let mut lines: [String; 5] = Default::default();
        let [sessions, bytes, files, failures, rate_line] = &mut lines;
        let names = RECEIVE_FAMILIES.map(|(name, _, _)| name);
        metrics::line(sessions, names[0], &labels, stats.sessions as f64);
        metrics::line(bytes, names[1], &labels, stats.bytes as f64);
        metrics::line(files, names[2], &labels, stats.files as f64);
        for (reason, n) in &stats.failures {
            let labels = [("reason", *reason), ("system", system.as_str())];
            metrics::line(failures, names[3], &labels, *n as f64);
        }
        metrics::line(rate_line, names[4], &labels, *rate as f64);
        SourceLines { id, values, lines }
    }
}

impl ReceiveLines {
    /// The families' lines for `sources` in id order, from each one's counters in
    /// `peers` and its rate in `rates` (zero when absent).
    fn families(
        &self,
        sources: &BTreeSet<u64>,
        peers: &BTreeMap<Peer, PeerStats>,
        rates: &BTreeMap<u64, u64>,
    ) -> [String; 5] {
        let mut kept = lock(&self.kept);
        let mut old = std::mem::take(&mut *kept).into_iter().peekable();
        let mut families: [String; 5] = Default::default();
        for &id in sources {
            let stats = peers.get(&Peer::Source(id)).cloned().unwrap_or_default();
            let values = (stats, rates.get(&id).copied().unwrap_or(0));
            // Sources gone since the last scrape are passed over and dropped.
            while old.next_if(|k| k.id < id).is_some() {}
            let source = match old.next_if(|k| k.id == id) {
                Some(k) if k.values == values => k,
                _ => SourceLines::render(id, values),
            };
            for (family, lines) in families.iter_mut().zip(&source.lines) {
                family.push_str(lines);
            }
            kept.push(source);
        }
        families
    }
}

/// Target side of replication (SPEC 15), per source (every paired source, and any other
/// that sent since start, by system id): its sessions, the bytes and files received, the
/// offers and files that did not end committed by the target's code (a series appears
/// with its first failure), the rate now.
fn receiving(app: &App, out: &mut Exposition, systems: &[&SystemRecord]) {
    let live = &app.replication.live;
    let peers = live.peers();
    let rates = live.receive_rates();
    let mut sources: BTreeSet<u64> = systems
        .iter()
        .filter(|s| s.role.is_source())
        .map(|s| s.id)
        .collect();
    sources.extend(peers.keys().filter_map(|p| match p {
        Peer::Source(id) => Some(*id),
        Peer::Target(_) => None,
    }));
    let families = app.receive_lines.families(&sources, &peers, &rates);
    for ((name, help, counter), lines) in RECEIVE_FAMILIES.iter().zip(&families) {
        if !lines.is_empty() {
            out.lines(name, help, *counter, lines);
        }
    }
}

/// The process: its database's state, version and start.
fn process(app: &App, out: &mut Exposition) {
    let degraded = app.store.degraded().is_some();
    out.gauge(
        "replgate_database_degraded",
        "1 while the database refuses writes after a failed one (a full disk), else 0.",
        &[],
        if degraded { 1.0 } else { 0.0 },
    );
    out.counter(
        "replgate_database_failures_total",
        "Times a database write failed (a full disk, an I/O error) and writes were refused for a while.",
        &[],
        app.store.failures() as f64,
    );
    out.gauge(
        "replgate_build_info",
        "The running version and commit (always 1).",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("REPLGATE_COMMIT")),
        ],
        1.0,
    );
    out.gauge(
        "replgate_start_time_seconds",
        "When this process started (unix time).",
        &[],
        app.started as f64,
    );
}

/// What the target's verifies found: damaged copies now, each source's last verify.
fn verify_state(app: &App, out: &mut Exposition) -> Result<(), ApiError> {
    out.gauge(
        "replgate_damaged_copies",
        "Received copies a verify found damaged or missing that no new copy replaced yet.",
        &[],
        app.store.damaged_count()? as f64,
    );
    for (sid, run) in app.store.verify_runs()? {
        if let (Some(finished), false) = (run.finished, run.stopped) {
            out.gauge(
                "replgate_last_verify_timestamp_seconds",
                "When the last complete verify of a source's copies ended (unix time).",
                &[("system", &sid.to_string())],
                finished as f64,
            );
        }
    }
    Ok(())
}

/// One gauge sample per `(label value, count)`.
fn gauges(
    out: &mut Exposition,
    name: &'static str,
    help: &'static str,
    label: &'static str,
    counted: &[(&str, usize)],
) {
    for (value, n) in counted {
        out.gauge(name, help, &[(label, value)], *n as f64);
    }
}

/// `replgate_last_drill_success_timestamp`: the last restore drill that passed (0: none).
fn last_drill(app: &App, out: &mut Exposition) -> Result<(), ApiError> {
    let drills = app.store.drills()?;
    out.gauge(
        "replgate_last_drill_success_timestamp",
        "Unix time of the last restore drill that passed (0: none yet).",
        &[],
        crate::replication::drill::last_success(&drills.drills).unwrap_or(0) as f64,
    );
    Ok(())
}

/// `POST /api/metrics/token`: a scraper token for the caller, capped to `monitor` and
/// without expiry, shown once.
pub(super) fn metrics_token(call: &Call) -> Result<Reply, ApiError> {
    let body = super::body::Body::parse(call.body)?;
    let name = body.opt_str("name")?.unwrap_or("scraper");
    if name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "`name` is a label of at most 64 printable characters".into(),
        ));
    }
    let session = call.session()?;
    let token =
        call.app
            .auth
            .scraper_token(session, name, &call.peer.addr.ip().to_string(), call.now)?;
    Ok(Reply::json(
        201,
        json!({ "token": token, "user": session.user, "privilege": "monitor" }),
    ))
}

pub(super) fn kb(call: &Call) -> Result<Reply, ApiError> {
    let code = parse_id("code", call.param(0))?;
    let text = u32::try_from(code)
        .ok()
        .and_then(kb_text)
        .ok_or_else(|| ApiError::NotFound(format!("no knowledge-base entry for code {code}")))?;
    Ok(Reply::json(200, json!({ "code": code, "text": text })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expiry lines are rendered again exactly when the rows are another read, and
    /// name each source with a current certificate (not a managed system, not a source
    /// without one).
    #[test]
    fn expiry_lines_follow_the_rows_they_were_rendered_from() {
        use crate::store::{CertRecord, SystemRecord};
        let cert = |system_id, not_after| CertRecord {
            serial: format!("{system_id:02x}"),
            request_id: 1,
            system_id,
            subject: "s".into(),
            issued_at: 1,
            not_after,
            pem: String::new(),
            revoked_at: None,
            generation: 1,
            renews: None,
            superseded_at: None,
            retired_at: None,
            issuer: None,
        };
        let managed = SystemRecord {
            role: Role::Managed,
            ..SystemRecord::fixture(3)
        };
        let rows = |not_after| {
            Arc::new(Certified {
                systems: vec![
                    (SystemRecord::fixture(2), Some(cert(2, not_after))),
                    (managed.clone(), Some(cert(3, 9))),
                    (SystemRecord::fixture(4), None),
                ],
                targets: Vec::new(),
            })
        };
        let lines = ExpiryLines::default();
        let first = rows(100);
        let a = lines.get(&first);
        assert_eq!(
            &*a,
            "replgate_system_certificate_expiry_seconds{system=\"2\"} 100\n"
        );
        assert!(Arc::ptr_eq(&a, &lines.get(&first)), "the same rows");
        let renewed = rows(200);
        let b = lines.get(&renewed);
        assert_eq!(
            &*b,
            "replgate_system_certificate_expiry_seconds{system=\"2\"} 200\n"
        );
    }

    fn pointers(lines: &ReceiveLines) -> BTreeMap<u64, *const u8> {
        let kept = lock(&lines.kept);
        kept.iter().map(|s| (s.id, s.lines[0].as_ptr())).collect()
    }

    /// A source's lines are rendered again exactly when its counters or rate moved; the
    /// families always say what the counters say now, in id order.
    #[test]
    fn receive_lines_are_rendered_again_only_for_sources_whose_values_moved() {
        let lines = ReceiveLines::default();
        let sources: BTreeSet<u64> = [2, 3].into();
        let mut stats = PeerStats {
            bytes: 10,
            sessions: 1,
            ..PeerStats::default()
        };
        stats.failures.insert("no-space", 1);
        let mut peers = BTreeMap::from([(Peer::Source(3), stats.clone())]);
        let rates = BTreeMap::from([(3, 5)]);
        let first = lines.families(&sources, &peers, &rates);
        assert_eq!(
            first[0],
            "replgate_replication_receive_sessions{system=\"2\"} 0\n\
             replgate_replication_receive_sessions{system=\"3\"} 1\n"
        );
        assert_eq!(
            first[3],
            "replgate_replication_receive_failures_total{reason=\"no-space\",system=\"3\"} 1\n"
        );
        assert!(first[4]
            .ends_with("replgate_replication_receive_rate_bytes_per_second{system=\"3\"} 5\n"));
        let kept = pointers(&lines);
        assert_eq!(lines.families(&sources, &peers, &rates), first);
        assert_eq!(pointers(&lines), kept, "nothing moved: nothing rendered");

        stats.bytes = 20;
        peers.insert(Peer::Source(3), stats);
        let moved = lines.families(&sources, &peers, &rates);
        assert!(moved[1].ends_with("replgate_replication_received_bytes_total{system=\"3\"} 20\n"));
        let now = pointers(&lines);
        assert_eq!(now[&2], kept[&2]);
        assert_ne!(now[&3], kept[&3]);

        let fewer = lines.families(&[3].into(), &peers, &BTreeMap::new());
        assert!(!fewer[0].contains("system=\"2\""));
        assert!(
            fewer[4].ends_with("{system=\"3\"} 0\n"),
            "the rate fell to 0"
        );
        assert_eq!(pointers(&lines).len(), 1, "a source gone is dropped");
    }
}
