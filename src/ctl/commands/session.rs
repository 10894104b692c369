//! Session commands: log in and out, is the daemon there, help, version.

use super::{other_command, usage, Command, Cx, Help, Opt, Run};
use crate::ca;
use crate::ctl::args::{CtlCommand, DEFAULT_LOGIN_USER};
use crate::ctl::prompt::password;
use crate::ctl::session::CachedSession;
use crate::ctl::table::{cell, clean, utc};
use crate::ctl::{settings, CtlError};
use crate::model::Secret;

pub(super) const COMMANDS: &[Command] = &[
    Command {
        name: "login",
        help: &[Help {
            syntax: "login [--user NAME] [--password-stdin]",
            about: "log in (default user root) and cache the token",
        }],
        options: &[Opt::Value("--user"), Opt::Flag("--password-stdin")],
        parse: |i| {
            i.no_operands()?;
            Ok(CtlCommand::Login {
                user: i
                    .value("--user")?
                    .unwrap_or_else(|| DEFAULT_LOGIN_USER.into()),
                password: i.password()?,
            })
        },
        run: Run::Daemon(login),
    },
    Command {
        name: "logout",
        help: &[Help {
            syntax: "logout",
            about: "end the session and forget the cached token",
        }],
        options: &[],
        parse: |i| i.no_operands().map(|_| CtlCommand::Logout),
        run: Run::Daemon(logout),
    },
    Command {
        name: "health",
        help: &[Help {
            syntax: "health",
            about: "is the daemon up; its version and CA fingerprint",
        }],
        options: &[],
        parse: |i| i.no_operands().map(|_| CtlCommand::Health),
        run: Run::Daemon(health),
    },
    Command {
        name: "help",
        help: &[Help {
            syntax: "help",
            about: "print this text (also -h or --help, after any command)",
        }],
        options: &[],
        parse: |i| {
            i.ignore_rest();
            Ok(CtlCommand::Help)
        },
        run: Run::Local(|| format!("{}\n", usage())),
    },
    Command {
        name: "version",
        help: &[Help {
            syntax: "version",
            about: "print the version (also --version)",
        }],
        options: &[],
        parse: |i| {
            i.ignore_rest();
            Ok(CtlCommand::Version)
        },
        run: Run::Local(|| format!("{}\n", crate::cli::VERSION_LINE)),
    },
];

fn login(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Login {
        user,
        password: from,
    } = c
    else {
        return Err(other_command());
    };
    let api = cx.api;
    let tokens = settings::token_file()?;
    let pw = password(*from, &format!("password for {user} at {api}: "), false)?;
    let a = cx.client.login(user, &pw)?;
    let token = a.json["auth_token"]
        .as_str()
        .ok_or_else(|| CtlError::Malformed("login answer without auth_token".into()))?;
    let session = CachedSession {
        api: api.to_string(),
        user: user.clone(),
        privilege: a.json["privilege"].as_str().unwrap_or("").to_string(),
        expires: a.json["expires"].as_i64().unwrap_or(0),
        token: Secret::new(token.to_string()),
    };
    let out = if cx.ctl.json {
        // The token is a secret: it goes to the cache, never to the screen.
        let mut v = a.json.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("auth_token");
        }
        format!("{v}\n")
    } else {
        format!(
            "logged in to {api} as {} ({}); the token is cached in {}\n\
             it lapses when unused for the daemon's session_idle (1 h by default) and at {} UTC at the latest\n",
            clean(user),
            clean(&session.privilege),
            tokens.path.display(),
            utc(session.expires)
        )
    };
    tokens.remember(session)?;
    Ok(out)
}

fn logout(cx: &Cx<'_>, _: &CtlCommand) -> Result<String, CtlError> {
    let api = cx.api;
    // Forget the token locally whatever the daemon says; then tell the daemon.
    let Some(session) = settings::token_file()?.forget(api)? else {
        return Ok(format!("not logged in to {api}\n"));
    };
    match cx.client.logout(&session.token) {
        Ok(a) => Ok(cx.show(a, |_| format!("logged out of {api}\n"))),
        // An expired session is already over.
        Err(CtlError::Refused(r)) if r.status == 401 => Ok(format!(
            "logged out of {api} (the session had already expired)\n"
        )),
        Err(e) => Err(e),
    }
}

fn health(cx: &Cx<'_>, _: &CtlCommand) -> Result<String, CtlError> {
    let a = cx.client.health()?;
    let fingerprint = std::str::from_utf8(cx.ca_pem)
        .ok()
        .and_then(|pem| ca::cert_pem_to_der(pem).ok())
        .map(|der| ca::sha256_hex(&der))
        .unwrap_or_else(|| "-".into());
    let api = cx.api;
    Ok(cx.show(a, |v| {
        let mut out = format!(
            "status:  {}\nversion: {}\napi:     {api}\nCA fingerprint (SHA-256): {fingerprint}\n",
            cell(&v["status"]),
            cell(&v["version"])
        );
        for w in v["warnings"].as_array().into_iter().flatten() {
            out.push_str(&format!("warning: {}\n", cell(w)));
        }
        out
    }))
}
