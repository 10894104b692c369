//! The one client of `replgate ctl` for its daemon's own admin API: one method per call
//! ctl makes, built once per invocation over `remote::pinned_client`, so it trusts only
//! the daemon's CA, uses no proxy, follows no redirect and bounds every call.
//! Knows paths and bodies; never decides what to print.

use std::io;
use std::time::Duration;

use serde_json::{json, Value};

use super::args::{TokenOptions, Trust};
use super::table::clean;
use super::CtlError;
use crate::model::{Privilege, Secret};
use crate::remote::http::{self, HttpError};
use crate::wire::token::PairingToken;

/// Whole-call bound. `request-target` makes the daemon probe the target (10 s) and file
/// the request there (up to 10 s connect plus 30 s call), so this stays above 50 s. The
/// connect bound is `remote::http`'s (10 s): a daemon on this host or LAN answers at once.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest answer read: a full audit page (1 000 rows) is about 300 KB.
const MAX_ANSWER_BYTES: u64 = 8 * 1024 * 1024;
/// The daemon's largest audit page.
pub(super) const AUDIT_PAGE: u64 = 1_000;

/// A documented error answer: `{"result":[{"message","code","kb"}]}`.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// `result[0].message`, or an excerpt of an undocumented body.
    pub message: String,
    /// `result[0].fingerprint` of a 412: the CA the target presented.
    pub fingerprint: Option<String>,
    /// The body as it came, for `--json`.
    pub body: String,
}

impl Refusal {
    pub fn parse(status: u16, body: String) -> Refusal {
        let first = serde_json::from_str::<Value>(&body)
            .ok()
            .map(|v| v["result"][0].clone())
            .unwrap_or(Value::Null);
        let message = match first["message"].as_str() {
            Some(m) => m.to_string(),
            None => format!(
                "HTTP {status}: {}",
                clean(&body.chars().take(200).collect::<String>())
            ),
        };
        Refusal {
            status,
            message,
            fingerprint: first["fingerprint"].as_str().map(String::from),
            body,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Method {
    Get,
    Post,
    Put,
    Delete,
}

/// A 2xx answer: the body as it came (printed with `--json`), and parsed.
pub(super) struct Answer {
    pub text: String,
    pub json: Value,
}

/// How `accept`/`reject` resolve a request.
pub(super) enum Resolution<'a> {
    Accept {
        storage_id: Option<u64>,
        replaces: Option<u64>,
    },
    Reject {
        message: &'a str,
    },
}

/// The one client for the daemon's admin API, built once per invocation.
pub(super) struct Client {
    http: http::Client,
    /// `https://host:port` as given, for messages.
    base: String,
    /// `host:port` of `base`.
    authority: String,
}

/// Percent-encodes one path segment (a host name with a port, a user name).
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub(super) fn new(base: &str, ca_pem: &[u8]) -> Result<Client, CtlError> {
        let text = String::from_utf8_lossy(ca_pem);
        let anchors = crate::remote::anchors_of(&text)
            .map_err(|e| CtlError::Usage(format!("the CA file holds no certificate: {e}")))?;
        // Only the daemon's own CA (both CAs during a rollover of it, as its ca.pem then
        // holds): its API certificate is issued by it, never by a public CA, and no other
        // certificate may stand in for it.
        let http = crate::remote::pinned_client(
            anchors,
            None,
            CALL_TIMEOUT,
            concat!("replgate-ctl/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(|e| CtlError::Usage(format!("the CA file: {e}")))?;
        let authority = base
            .strip_prefix("https://")
            .map(|rest| rest.strip_suffix('/').unwrap_or(rest))
            .filter(|a| !a.is_empty() && !a.contains(['/', '?', '#', '@']))
            .ok_or_else(|| CtlError::Usage(format!("--api {base}: not https://HOST:PORT")))?;
        Ok(Client {
            http,
            base: base.to_string(),
            authority: authority.to_string(),
        })
    }

    pub(super) fn login(&self, user: &str, password: &Secret<String>) -> Result<Answer, CtlError> {
        let body = json!({ "username": user, "password": password.expose() });
        self.call(Method::Post, "/api/login", None, Some(&body))
    }

    pub(super) fn logout(&self, token: &Secret<String>) -> Result<Answer, CtlError> {
        self.call(Method::Post, "/api/logout", Some(token), None)
    }

    pub(super) fn health(&self) -> Result<Answer, CtlError> {
        self.call(Method::Get, "/api/health", None, None)
    }

    pub(super) fn pending(
        &self,
        token: &Secret<String>,
        include_rejected: bool,
    ) -> Result<Answer, CtlError> {
        let path = if include_rejected {
            "/api/replication/pending?include_rejected=1"
        } else {
            "/api/replication/pending"
        };
        self.call(Method::Get, path, Some(token), None)
    }

    pub(super) fn resolve(
        &self,
        token: &Secret<String>,
        request_id: u64,
        resolution: Resolution,
    ) -> Result<Answer, CtlError> {
        let body = match resolution {
            Resolution::Accept {
                storage_id,
                replaces,
            } => {
                let mut body = json!({ "request_id": request_id, "accept": true });
                if let Some(s) = storage_id {
                    body["storage_id"] = json!(s);
                }
                if let Some(r) = replaces {
                    body["replaces_system_id"] = json!(r);
                }
                body
            }
            Resolution::Reject { message } => {
                json!({ "request_id": request_id, "accept": false, "message": message })
            }
        };
        let path = "/api/replication/source";
        self.call(Method::Post, path, Some(token), Some(&body))
    }

    pub(super) fn ignore(
        &self,
        token: &Secret<String>,
        request_id: u64,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/replication/pending/{request_id}");
        self.call(Method::Delete, &path, Some(token), None)
    }

    /// Ignores every open request from an address or network.
    pub(super) fn ignore_from(
        &self,
        token: &Secret<String>,
        remote_addr: &str,
    ) -> Result<Answer, CtlError> {
        let path = format!(
            "/api/replication/pending?remote_addr={}",
            segment(remote_addr)
        );
        self.call(Method::Delete, &path, Some(token), None)
    }

    pub(super) fn create_token(
        &self,
        token: &Secret<String>,
        o: &TokenOptions,
    ) -> Result<Answer, CtlError> {
        let mut body = json!({});
        let numbers = [
            ("uses", o.uses),
            ("expires_in", o.expires_in),
            ("storage_id", o.storage_id),
            ("quota_mb", o.quota_mb),
            ("replaces_system_id", o.replaces),
        ];
        for (k, v) in numbers {
            if let Some(v) = v {
                body[k] = json!(v);
            }
        }
        let texts = [
            ("system_uuid", &o.system_uuid),
            ("host", &o.host),
            ("note", &o.note),
            ("address", &o.address),
        ];
        for (k, v) in texts {
            if let Some(v) = v {
                body[k] = json!(v);
            }
        }
        self.call(
            Method::Post,
            "/api/replication/tokens",
            Some(token),
            Some(&body),
        )
    }

    pub(super) fn tokens(&self, token: &Secret<String>) -> Result<Answer, CtlError> {
        self.call(Method::Get, "/api/replication/tokens", Some(token), None)
    }

    pub(super) fn revoke_token(
        &self,
        token: &Secret<String>,
        token_id: &str,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/replication/tokens/{}", segment(token_id));
        self.call(Method::Delete, &path, Some(token), None)
    }

    pub(super) fn unpair(
        &self,
        token: &Secret<String>,
        system_id: u64,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/replication/source?sid={system_id}");
        self.call(Method::Delete, &path, Some(token), None)
    }

    /// `PUT /api/replication/source?sid= {"share"}` (null: the default weight).
    pub(super) fn set_share(
        &self,
        token: &Secret<String>,
        system_id: u64,
        share: Option<u64>,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/replication/source?sid={system_id}");
        self.call(
            Method::Put,
            &path,
            Some(token),
            Some(&json!({ "share": share })),
        )
    }

    pub(super) fn systems(&self, token: &Secret<String>) -> Result<Answer, CtlError> {
        self.call(Method::Get, "/api/systems", Some(token), None)
    }

    /// `GET /api/ca/rollover`.
    pub(super) fn ca_rollover(&self, token: &Secret<String>) -> Result<Answer, CtlError> {
        self.call(Method::Get, "/api/ca/rollover", Some(token), None)
    }

    /// `POST /api/ca/rollover {"phase"}`.
    pub(super) fn ca_rollover_phase(
        &self,
        token: &Secret<String>,
        phase: &str,
    ) -> Result<Answer, CtlError> {
        let body = json!({ "phase": phase });
        self.call(Method::Post, "/api/ca/rollover", Some(token), Some(&body))
    }

    pub(super) fn storage(&self, token: &Secret<String>) -> Result<Answer, CtlError> {
        self.call(Method::Get, "/api/storage", Some(token), None)
    }

    pub(super) fn request_target(
        &self,
        token: &Secret<String>,
        target: &str,
        trust: &Trust,
        pairing_token: Option<&PairingToken>,
    ) -> Result<Answer, CtlError> {
        let mut body = json!({ "type": "appliance", "target": target });
        match trust {
            Trust::Pinned => {}
            Trust::Fingerprint(f) => body["fingerprint"] = json!(f),
            Trust::Insecure => body["insecure"] = json!(1),
        }
        if let Some(t) = pairing_token {
            body["token"] = json!(t.expose());
        }
        let path = "/api/replication/target";
        self.call(Method::Post, path, Some(token), Some(&body))
    }

    pub(super) fn queue(
        &self,
        token: &Secret<String>,
        target_id: Option<u64>,
        include_done: bool,
    ) -> Result<Answer, CtlError> {
        let mut path = "/api/replication/queue?count=1000".to_string();
        if let Some(t) = target_id {
            path.push_str(&format!("&target_id={t}"));
        }
        if include_done {
            path.push_str("&include_done=1");
        }
        self.call(Method::Get, &path, Some(token), None)
    }

    pub(super) fn queue_add(
        &self,
        token: &Secret<String>,
        target_id: u64,
        backup: &str,
    ) -> Result<Answer, CtlError> {
        let body = json!({ "target_id": target_id, "backup": backup });
        self.call(
            Method::Post,
            "/api/replication/queue",
            Some(token),
            Some(&body),
        )
    }

    pub(super) fn queue_change(
        &self,
        token: &Secret<String>,
        ids: &[u64],
        clients: &[String],
        reset: bool,
    ) -> Result<Answer, CtlError> {
        let backups: Vec<Value> = ids.iter().map(|id| json!({ "id": id })).collect();
        let body = json!({
            "backups": backups,
            "clients": clients,
            "action": if reset { "reset" } else { "none" },
        });
        self.call(
            Method::Put,
            "/api/replication/queue",
            Some(token),
            Some(&body),
        )
    }

    /// The replication config; with `changes` (an object of fields), changes it first.
    pub(super) fn replication_config(
        &self,
        token: &Secret<String>,
        changes: Option<&Value>,
    ) -> Result<Answer, CtlError> {
        self.read_or_change("/api/replication/config", token, changes)
    }

    /// The throttle; with `changes`, sets it first.
    pub(super) fn throttle(
        &self,
        token: &Secret<String>,
        changes: Option<&Value>,
    ) -> Result<Answer, CtlError> {
        self.read_or_change("/api/replication/throttle", token, changes)
    }

    /// `GET path`, or with `changes`, `PUT path` with them (a settings object).
    fn read_or_change(
        &self,
        path: &str,
        token: &Secret<String>,
        changes: Option<&Value>,
    ) -> Result<Answer, CtlError> {
        match changes {
            Some(body) => self.call(Method::Put, path, Some(token), Some(body)),
            None => self.call(Method::Get, path, Some(token), None),
        }
    }

    pub(super) fn received(
        &self,
        token: &Secret<String>,
        system_id: u64,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/replication/received?sid={system_id}");
        self.call(Method::Get, &path, Some(token), None)
    }

    pub(super) fn restore(&self, token: &Secret<String>, body: &Value) -> Result<Answer, CtlError> {
        self.call(
            Method::Post,
            "/api/replication/restore",
            Some(token),
            Some(body),
        )
    }

    pub(super) fn drill(&self, token: &Secret<String>, body: &Value) -> Result<Answer, CtlError> {
        self.call(
            Method::Post,
            "/api/replication/drill",
            Some(token),
            Some(body),
        )
    }

    pub(super) fn drills(&self, token: &Secret<String>) -> Result<Answer, CtlError> {
        self.call(Method::Get, "/api/replication/drill", Some(token), None)
    }

    pub(super) fn verify(
        &self,
        token: &Secret<String>,
        system_id: u64,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/replication/verify?sid={system_id}");
        self.call(Method::Post, &path, Some(token), Some(&json!({})))
    }

    /// Sets source `system_id`'s retention policy (`Value::Null`: keep all).
    pub(super) fn set_retention(
        &self,
        token: &Secret<String>,
        system_id: u64,
        policy: &Value,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/replication/source?sid={system_id}");
        let body = json!({ "retention": policy });
        self.call(Method::Put, &path, Some(token), Some(&body))
    }

    pub(super) fn recycle(
        &self,
        token: &Secret<String>,
        system_id: u64,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/replication/recycle?sid={system_id}");
        self.call(Method::Get, &path, Some(token), None)
    }

    pub(super) fn recycle_restore(
        &self,
        token: &Secret<String>,
        system_id: u64,
        backup: &str,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/replication/recycle/restore?sid={system_id}");
        let body = json!({ "backup": backup });
        self.call(Method::Post, &path, Some(token), Some(&body))
    }

    /// Purges one backup from source `system_id`'s bin, or (`None`) all of it.
    pub(super) fn recycle_purge(
        &self,
        token: &Secret<String>,
        system_id: u64,
        backup: Option<&str>,
    ) -> Result<Answer, CtlError> {
        let mut path = format!("/api/replication/recycle?sid={system_id}");
        if let Some(b) = backup {
            path.push_str(&format!("&backup={}", segment(b)));
        }
        self.call(Method::Delete, &path, Some(token), None)
    }

    pub(super) fn targets(&self, token: &Secret<String>) -> Result<Answer, CtlError> {
        self.call(Method::Get, "/api/replication/targets", Some(token), None)
    }

    /// `PUT /api/replication/target?target_id= {"compression"}` (null: the daemon's).
    pub(super) fn set_target_compression(
        &self,
        token: &Secret<String>,
        target_id: u64,
        setting: Option<&str>,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/replication/target?target_id={target_id}");
        self.call(
            Method::Put,
            &path,
            Some(token),
            Some(&json!({ "compression": setting })),
        )
    }

    pub(super) fn forget_target(
        &self,
        token: &Secret<String>,
        host: &str,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/replication/target/{}", segment(host));
        self.call(Method::Delete, &path, Some(token), None)
    }

    pub(super) fn users(&self, token: &Secret<String>) -> Result<Answer, CtlError> {
        self.call(Method::Get, "/api/users", Some(token), None)
    }

    pub(super) fn add_user(
        &self,
        token: &Secret<String>,
        name: &str,
        privilege: Privilege,
        password: &Secret<String>,
    ) -> Result<Answer, CtlError> {
        let body = json!({ "name": name, "privilege": privilege, "password": password.expose() });
        self.call(Method::Post, "/api/users", Some(token), Some(&body))
    }

    /// Changes what is given; at least one of `privilege` and `password` is.
    pub(super) fn set_user(
        &self,
        token: &Secret<String>,
        name: &str,
        privilege: Option<Privilege>,
        password: Option<&Secret<String>>,
    ) -> Result<Answer, CtlError> {
        let mut body = json!({});
        if let Some(p) = privilege {
            body["privilege"] = json!(p);
        }
        if let Some(pw) = password {
            body["password"] = json!(pw.expose());
        }
        let path = format!("/api/users/{}", segment(name));
        self.call(Method::Put, &path, Some(token), Some(&body))
    }

    pub(super) fn remove_user(
        &self,
        token: &Secret<String>,
        name: &str,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/users/{}", segment(name));
        self.call(Method::Delete, &path, Some(token), None)
    }

    pub(super) fn metrics_token(
        &self,
        token: &Secret<String>,
        name: Option<&str>,
    ) -> Result<Answer, CtlError> {
        let body = match name {
            Some(n) => json!({ "name": n }),
            None => json!({}),
        };
        self.call(Method::Post, "/api/metrics/token", Some(token), Some(&body))
    }

    /// Up to [`AUDIT_PAGE`] audit rows with ids above `after`, oldest first.
    pub(super) fn audit_page(
        &self,
        token: &Secret<String>,
        after: u64,
    ) -> Result<Answer, CtlError> {
        let path = format!("/api/audit?after={after}&limit={AUDIT_PAGE}");
        self.call(Method::Get, &path, Some(token), None)
    }

    fn classify(&self, e: HttpError) -> CtlError {
        if let Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)) =
            e.tls()
        {
            return CtlError::Unreachable(format!(
                "{} asks for a client certificate, so it is a tunnel listener: give --api the \
                 API listener (api_listen, port 8443 by default)",
                self.base
            ));
        }
        match e {
            HttpError::Io(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::UnexpectedEof
                ) =>
            {
                CtlError::Unreachable(format!(
                    "the daemon at {} closed the connection before answering ({io}); is --api \
                     the API listener (api_listen, port 8443 by default), not the tunnel?",
                    self.base
                ))
            }
            HttpError::Address(_) => {
                CtlError::Usage(format!("--api {}: not https://HOST:PORT", self.base))
            }
            HttpError::TooLarge(n) => CtlError::Malformed(format!("answer larger than {n} bytes")),
            HttpError::Malformed(what) => CtlError::Malformed(format!(
                "the daemon at {} answered no HTTP: {what}",
                self.base
            )),
            e if e.tls().is_some() => CtlError::Unreachable(format!(
                "TLS with {} failed: {e} (is --cacert the CA of this daemon?)",
                self.base
            )),
            HttpError::Io(io) => {
                CtlError::Unreachable(format!("cannot reach the daemon at {}: {io}", self.base))
            }
        }
    }

    /// One call; a non-2xx answer is a [`CtlError::Refused`].
    fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret<String>>,
        body: Option<&Value>,
    ) -> Result<Answer, CtlError> {
        let json_body = body.map(Value::to_string);
        let (verb, sends) = match method {
            Method::Get => ("GET", false),
            Method::Delete => ("DELETE", false),
            Method::Post => ("POST", true),
            Method::Put => ("PUT", true),
        };
        let body = sends.then(|| http::Body {
            content_type: "application/json",
            bytes: json_body.as_deref().unwrap_or("").as_bytes(),
        });
        let auth = token.map(|t| ("AuthToken", t.expose().as_str()));
        let response = self
            .http
            .call(
                &self.authority,
                verb,
                path,
                auth.as_slice(),
                body,
                MAX_ANSWER_BYTES,
            )
            .map_err(|e| self.classify(e))?;
        let (status, text) = (response.status, response.body);
        if !(200..300).contains(&status) {
            return Err(CtlError::Refused(Refusal::parse(status, text)));
        }
        let json = serde_json::from_str(&text)
            .map_err(|e| CtlError::Malformed(format!("{method:?} {path}: {e}")))?;
        Ok(Answer { text, json })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_daemons_message_and_fingerprint() {
        let r = Refusal::parse(
            412,
            r#"{"result":[{"message":"not trusted","code":12505,"fingerprint":"ab"}]}"#.into(),
        );
        assert_eq!(r.message, "not trusted");
        assert_eq!(r.fingerprint.as_deref(), Some("ab"));
        let odd = Refusal::parse(502, "<html>bad gateway</html>".into());
        assert_eq!(odd.message, "HTTP 502: <html>bad gateway</html>");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("10.0.0.2:8443"), "10.0.0.2%3A8443");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("ops-1_x.y~"), "ops-1_x.y~");
    }
}
