//! Health, the knowledge base and the metrics: the informational endpoints.

use serde_json::json;

use super::body::parse_id;
use super::error::{kb_text, ApiError};
use super::{App, Call, Reply};
use crate::metrics::Exposition;
use crate::model::Role;
use crate::store::{RequestStatus, TargetStatus};

/// `GET /api/health` (no token): up, the version, and a warning for each certificate
/// (or the CA) that ends within 30 days (`lifecycle::warnings`), and for a CA rollover
/// in progress (`rollover::warnings`). The warnings name ids and counts only, never host
/// names: the endpoint is open to anyone who reaches the listener.
pub fn health(call: &Call) -> Result<Reply, ApiError> {
    let certs = call.app.certificates()?;
    let mut warnings = crate::lifecycle::warnings(&certs, call.now);
    warnings.extend(crate::pairing::rollover::warnings(
        &rollover_status(call.app, call.now)?,
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

fn rollover_status(
    app: &App,
    now: crate::model::UnixTime,
) -> Result<crate::pairing::rollover::Status, ApiError> {
    Ok(crate::pairing::rollover::status(
        &app.store,
        &app.cas.get(),
        app.config.rollover_window,
        now,
    )?)
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
        "Certificates (or the CA) ending within 30 days or ended: the certificate warnings of GET /api/health.",
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
