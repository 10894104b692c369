//! Health, the knowledge base and the metrics: the informational endpoints.

use serde_json::json;

use super::body::parse_id;
use super::error::{kb_text, ApiError};
use super::{App, Call, Reply};
use crate::metrics::Exposition;
use crate::model::Role;
use crate::store::{RequestStatus, TargetStatus};

/// `GET /api/health` (no token): up, the version, and a warning for each certificate
/// (or the CA) that ends within 30 days (`lifecycle::warnings`), and one when no restore
/// drill passed within `drill_warn_days` (`replication::drill::warning`). The warnings name ids
/// only, never host names: the endpoint is open to anyone who reaches the listener.
pub fn health(call: &Call) -> Result<Reply, ApiError> {
    let certs = call.app.certificates()?;
    let mut warnings = crate::lifecycle::warnings(&certs, call.now);
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
    Ok(Reply::json(
        200,
        json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "warnings": warnings }),
    ))
}

/// `GET /api/metrics`: the Prometheus text exposition of the process's metrics and of
/// what the database holds now (SPEC 15; the metric names are in docs/operations.md).
pub fn metrics(call: &Call) -> Result<Reply, ApiError> {
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

/// The samples read from state at scrape time: every status and role is listed, zero or
/// not, so a series never vanishes when its count drops to nothing.
fn state(app: &App, out: &mut Exposition) -> Result<(), ApiError> {
    use RequestStatus as R;
    use TargetStatus as T;
    let requests = app.store.requests(0, usize::MAX, |_| true)?;
    let statuses = [
        R::Pending,
        R::Accepted,
        R::Rejected,
        R::Expired,
        R::Ignored,
        R::Revoked,
    ];
    let counted = statuses.map(|st| {
        let n = requests.iter().filter(|r| r.status == st).count();
        (st.as_str(), n)
    });
    gauges(
        out,
        "replgate_pairing_requests",
        "Pairing requests this appliance holds as a target, by status.",
        "status",
        &counted,
    );
    last_drill(app, out)?;
    let systems = app.store.systems()?;
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
    let ca_der = crate::ca::cert_pem_to_der(app.ca.cert_pem()).ok();
    if let Some(not_after) = ca_der.and_then(|d| crate::ca::cert_not_after(&d).ok()) {
        out.gauge(
            "replgate_ca_expiry_seconds",
            "When the appliance CA's certificate expires (unix time).",
            &[],
            not_after as f64,
        );
    }
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
    for e in &certs {
        let id = e.kind.id().map(|id| id.to_string());
        match (&e.kind, id.as_deref()) {
            (crate::lifecycle::CertKind::Listener(name), _) => out.gauge(
                "replgate_listener_certificate_expiry_seconds",
                "When a listener's server certificate in use expires (unix time); it renews while running.",
                &[("listener", name)],
                e.not_after as f64,
            ),
            (crate::lifecycle::CertKind::System(_), Some(id)) => out.gauge(
                "replgate_system_certificate_expiry_seconds",
                "When a paired source's current certificate expires (unix time).",
                &[("system", id)],
                e.not_after as f64,
            ),
            _ => {}
        }
    }
    out.gauge(
        "replgate_certificate_warnings",
        "Certificates (or the CA) ending within 30 days or ended: the warnings of GET /api/health.",
        &[],
        crate::lifecycle::warnings(&certs, crate::model::now()).len() as f64,
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
pub fn metrics_token(call: &Call) -> Result<Reply, ApiError> {
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

pub fn kb(call: &Call) -> Result<Reply, ApiError> {
    let code = parse_id("code", call.param(0))?;
    let text = u32::try_from(code)
        .ok()
        .and_then(kb_text)
        .ok_or_else(|| ApiError::NotFound(format!("no knowledge-base entry for code {code}")))?;
    Ok(Reply::json(200, json!({ "code": code, "text": text })))
}
