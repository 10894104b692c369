//! Users and audit: the users of this daemon, its audit trail, a Prometheus scraper's
//! token.

use std::collections::VecDeque;

use serde_json::{json, Value};

use super::{other_command, Command, Cx, Help, Opt, Run};
use crate::ctl::args::{privilege, CtlCommand, PasswordFrom, UsageError, DEFAULT_AUDIT_LIMIT};
use crate::ctl::client::{Client, AUDIT_PAGE};
use crate::ctl::prompt::password;
use crate::ctl::table::{self, cell};
use crate::ctl::CtlError;
use crate::model::Secret;

pub(super) const COMMANDS: &[Command] = &[
    Command {
        name: "users",
        help: &[Help {
            syntax: "users",
            about: "list users",
        }],
        options: &[],
        parse: |_| Ok(CtlCommand::Users),
        run: Run::Daemon(|cx, _| Ok(cx.show(cx.client.users(&cx.token()?)?, table::users_table))),
    },
    Command {
        name: "users list",
        help: &[],
        options: &[],
        parse: |i| i.no_operands().map(|_| CtlCommand::Users),
        run: Run::Daemon(|cx, _| Ok(cx.show(cx.client.users(&cx.token()?)?, table::users_table))),
    },
    Command {
        name: "users add",
        help: &[Help {
            syntax: "users add NAME --privilege P [--password-stdin]",
            about: "add a user with privilege P",
        }],
        options: &[Opt::Value("--privilege"), Opt::Flag("--password-stdin")],
        parse: |i| {
            let [name] = i.operands(["a user NAME"])?;
            let p = i
                .value("--privilege")?
                .ok_or_else(|| UsageError("`users add` needs --privilege".into()))?;
            Ok(CtlCommand::UserAdd {
                name: name.to_string(),
                privilege: privilege(&p)?,
                password: i.password()?,
            })
        },
        run: Run::Daemon(user_add),
    },
    Command {
        name: "users set",
        help: &[Help {
            syntax: "users set NAME [--privilege P] [--password | --password-stdin]",
            about: "change a user's privilege or password",
        }],
        options: &[
            Opt::Value("--privilege"),
            Opt::Flag("--password"),
            Opt::Flag("--password-stdin"),
        ],
        parse: |i| {
            let [name] = i.operands(["a user NAME"])?;
            let privilege = i.value("--privilege")?.map(|p| privilege(&p)).transpose()?;
            let password = match (i.flag("--password-stdin")?, i.flag("--password")?) {
                (true, true) => {
                    return Err(UsageError(
                        "give --password or --password-stdin, not both".into(),
                    ))
                }
                (true, false) => Some(PasswordFrom::Stdin),
                (false, true) => Some(PasswordFrom::EnvOrPrompt),
                (false, false) => None,
            };
            if privilege.is_none() && password.is_none() {
                return Err(UsageError(
                    "`users set` needs --privilege, --password or --password-stdin".into(),
                ));
            }
            Ok(CtlCommand::UserSet {
                name: name.to_string(),
                privilege,
                password,
            })
        },
        run: Run::Daemon(user_set),
    },
    Command {
        name: "users remove",
        help: &[Help {
            syntax: "users remove NAME",
            about: "remove a user and end its sessions",
        }],
        options: &[],
        parse: |i| {
            let [name] = i.operands(["a user NAME"])?;
            Ok(CtlCommand::UserRemove {
                name: name.to_string(),
            })
        },
        run: Run::Daemon(user_remove),
    },
    Command {
        name: "audit",
        help: &[Help {
            syntax: "audit [--limit N]",
            about: "the latest N audit entries (default 50)",
        }],
        options: &[Opt::Value("--limit")],
        parse: |i| {
            i.no_operands()?;
            Ok(CtlCommand::Audit {
                limit: i.positive("--limit")?.unwrap_or(DEFAULT_AUDIT_LIMIT),
            })
        },
        run: Run::Daemon(audit),
    },
    Command {
        name: "metrics-token",
        help: &[Help {
            syntax: "metrics-token [--name LABEL]",
            about: "a token for a Prometheus scraper (monitor, no expiry), shown once",
        }],
        options: &[Opt::Value("--name")],
        parse: |i| {
            i.no_operands()?;
            Ok(CtlCommand::MetricsToken {
                name: i.value("--name")?,
            })
        },
        run: Run::Daemon(metrics_token),
    },
];

fn user_add(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::UserAdd {
        name,
        privilege,
        password: from,
    } = c
    else {
        return Err(other_command());
    };
    let token = cx.token()?;
    let pw = password(*from, &format!("password for the new user {name}: "), true)?;
    let a = cx.client.add_user(&token, name, *privilege, &pw)?;
    Ok(cx.show(a, |v| user_line("added", v)))
}

fn user_set(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::UserSet {
        name,
        privilege,
        password: from,
    } = c
    else {
        return Err(other_command());
    };
    let token = cx.token()?;
    let pw = match from {
        Some(from) => Some(password(
            *from,
            &format!("new password for {name}: "),
            true,
        )?),
        None => None,
    };
    let a = cx.client.set_user(&token, name, *privilege, pw.as_ref())?;
    Ok(cx.show(a, |v| user_line("updated", v)))
}

fn user_remove(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::UserRemove { name } = c else {
        return Err(other_command());
    };
    let a = cx.client.remove_user(&cx.token()?, name)?;
    Ok(cx.show(a, |v| format!("removed user {}\n", cell(&v["name"]))))
}

/// `added user ops (manage)`: what `users add` and `users set` print.
fn user_line(verb: &str, v: &Value) -> String {
    format!(
        "{verb} user {} ({})\n",
        cell(&v["name"]),
        cell(&v["privilege"])
    )
}

fn audit(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Audit { limit } = *c else {
        return Err(other_command());
    };
    let rows = latest_audit(cx.client, &cx.token()?, limit)?;
    Ok(if cx.ctl.json {
        format!("{}\n", json!({ "audit": rows }))
    } else {
        table::audit_table(&rows)
    })
}

/// The latest `limit` audit rows, oldest first. The daemon pages forward from the oldest,
/// so this reads every page and keeps the tail.
fn latest_audit(
    client: &Client,
    token: &Secret<String>,
    limit: u64,
) -> Result<Vec<Value>, CtlError> {
    let mut rows: VecDeque<Value> = VecDeque::new();
    let mut after = 0u64;
    loop {
        let a = client.audit_page(token, after)?;
        let page = a.json["audit"]
            .as_array()
            .ok_or_else(|| CtlError::Malformed("audit answer without `audit`".into()))?;
        let Some(last) = page.last() else {
            break;
        };
        let last_id = last["id"]
            .as_u64()
            .filter(|id| *id > after)
            .ok_or_else(|| {
                CtlError::Malformed("audit ids do not increase from page to page".into())
            })?;
        rows.extend(page.iter().cloned());
        while rows.len() as u64 > limit {
            rows.pop_front();
        }
        if (page.len() as u64) < AUDIT_PAGE {
            break;
        }
        after = last_id;
    }
    Ok(rows.into())
}

fn metrics_token(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::MetricsToken { name } = c else {
        return Err(other_command());
    };
    let a = cx.client.metrics_token(&cx.token()?, name.as_deref())?;
    let api = cx.api;
    let api_host = api.trim_start_matches("https://");
    Ok(cx.show(a, |v| {
        format!(
            "a scraper token (privilege monitor, no expiry) for user {}; it is shown only now:\n\
             {}\n\
             end it with `curl --cacert CA -X POST -H \"AuthToken: <token>\" {api}/api/logout`.\n\
             A Prometheus scrape job for it:\n\
             \x20 - job_name: replgate\n\
             \x20   scheme: https\n\
             \x20   metrics_path: /api/metrics\n\
             \x20   authorization: {{credentials_file: /etc/prometheus/replgate.token}}\n\
             \x20   tls_config: {{ca_file: /etc/prometheus/replgate-ca.pem}}\n\
             \x20   static_configs: [{{targets: ['{api_host}']}}]\n",
            cell(&v["user"]),
            cell(&v["token"]),
        )
    }))
}
