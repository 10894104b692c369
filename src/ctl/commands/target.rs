//! Target-side commands (this appliance receives replication): pairing requests, the
//! systems and storage here, pairing tokens.

use super::{other_command, Command, Cx, Help, Opt, Run};
use crate::ctl::args::{duration, positive, request_id, CtlCommand, TokenOptions, UsageError};
use crate::ctl::client::{Client, Refusal, Resolution};
use crate::ctl::table::{self, cell, utc};
use crate::ctl::CtlError;
use crate::model::{Network, Secret};
use crate::wire::token::PairingToken;

pub(super) const COMMANDS: &[Command] = &[
    Command {
        name: "pending",
        help: &[Help {
            syntax: "pending [--all]",
            about: "open pairing requests (--all: rejected ones too)",
        }],
        options: &[Opt::Flag("--all")],
        parse: |i| {
            i.no_operands()?;
            Ok(CtlCommand::Pending {
                include_rejected: i.flag("--all")?,
            })
        },
        run: Run::Daemon(pending),
    },
    Command {
        name: "accept",
        help: &[Help {
            syntax: "accept ID [--storage N] [--replaces SID]",
            about: "accept request ID (storage N, else the default backup storage;\n\
                    --replaces: a new appliance takes over lost source SID)",
        }],
        options: &[Opt::Value("--storage"), Opt::Value("--replaces")],
        parse: |i| {
            let [id] = i.operands(["a request ID"])?;
            Ok(CtlCommand::Accept {
                request_id: request_id(id)?,
                storage_id: i.positive("--storage")?,
                replaces: i.positive("--replaces")?,
            })
        },
        run: Run::Daemon(accept),
    },
    Command {
        name: "reject",
        help: &[Help {
            syntax: "reject ID --message TEXT",
            about: "reject request ID; the source is told TEXT",
        }],
        options: &[Opt::Value("--message")],
        parse: |i| {
            let [id] = i.operands(["a request ID"])?;
            let request_id = request_id(id)?;
            let message = i
                .value("--message")?
                .filter(|m| !m.trim().is_empty())
                .ok_or_else(|| {
                    UsageError("`reject` needs --message: the source's admin reads it".into())
                })?;
            Ok(CtlCommand::Reject {
                request_id,
                message,
            })
        },
        run: Run::Daemon(reject),
    },
    Command {
        name: "ignore",
        help: &[
            Help {
                syntax: "ignore ID",
                about: "drop request ID silently (the source sees it expire)",
            },
            Help {
                syntax: "ignore --from ADDRESS|NETWORK",
                about: "drop every open request from there (192.0.2.0/24)",
            },
        ],
        options: &[Opt::Value("--from")],
        parse: |i| match i.value("--from")? {
            Some(from) => {
                i.no_operands()?;
                Network::parse(&from).ok_or_else(|| {
                    UsageError(format!(
                        "--from {from:?} is not an address or a network such as 192.0.2.0/24"
                    ))
                })?;
                Ok(CtlCommand::IgnoreFrom { remote_addr: from })
            }
            None => {
                let [id] = i.operands(["a request ID (or --from NETWORK)"])?;
                Ok(CtlCommand::Ignore {
                    request_id: request_id(id)?,
                })
            }
        },
        run: Run::Daemon(ignore),
    },
    Command {
        name: "unpair",
        help: &[Help {
            syntax: "unpair SID",
            about: "revoke paired system SID and remove it",
        }],
        options: &[],
        parse: |i| {
            let [sid] = i.operands(["a system ID"])?;
            if let Some(id) = sid.strip_prefix('-') {
                return Err(UsageError(format!(
                    "system {sid} is pending request {id}, not a paired system: drop it with \
                     `replgate ctl ignore {id}` or `replgate ctl reject {id} --message TEXT`"
                )));
            }
            Ok(CtlCommand::Unpair {
                system_id: positive("the system ID", sid)?,
            })
        },
        run: Run::Daemon(unpair),
    },
    Command {
        name: "share",
        help: &[Help {
            syntax: "share SID WEIGHT|default",
            about: "set paired source SID's weight in the sharing of transfer sessions\n\
                    (1 to 100; default 1)",
        }],
        options: &[],
        parse: |i| {
            let [sid, weight] = i.operands(["a system ID", "a weight"])?;
            let share = match weight {
                "default" => None,
                w => Some(positive("the weight", w)?),
            };
            Ok(CtlCommand::Share {
                system_id: positive("the system ID", sid)?,
                share,
            })
        },
        run: Run::Daemon(set_share),
    },
    Command {
        name: "systems",
        help: &[Help {
            syntax: "systems",
            about: "appliances known here, pending requests included",
        }],
        options: &[],
        parse: |i| i.no_operands().map(|_| CtlCommand::Systems),
        run: Run::Daemon(|cx, _| Ok(cx.show(cx.client.systems(&cx.token()?)?, table::systems_table))),
    },
    Command {
        name: "storage",
        help: &[Help {
            syntax: "storage",
            about: "storage areas",
        }],
        options: &[],
        parse: |i| i.no_operands().map(|_| CtlCommand::Storage),
        run: Run::Daemon(|cx, _| Ok(cx.show(cx.client.storage(&cx.token()?)?, table::storage_table))),
    },
    Command {
        name: "token create",
        help: &[Help {
            syntax: "token create [--uses N] [--expires-in D] [--storage N] [--quota-mb N]\n             \
                     [--system-uuid U] [--host H] [--note TEXT] [--address HOST[:PORT]]\n             \
                     [--replaces SID]",
            about: "issue a pairing token; prints it and its join line once\n\
                    (D: seconds, or 90m, 12h, 7d; default 7d, at most 90d)\n\
                    (--replaces: its one user takes over lost source SID)",
        }],
        options: &[
            Opt::Value("--uses"),
            Opt::Value("--expires-in"),
            Opt::Value("--storage"),
            Opt::Value("--quota-mb"),
            Opt::Value("--system-uuid"),
            Opt::Value("--host"),
            Opt::Value("--note"),
            Opt::Value("--address"),
            Opt::Value("--replaces"),
        ],
        parse: |i| {
            i.no_operands()?;
            Ok(CtlCommand::TokenCreate(TokenOptions {
                uses: i.positive("--uses")?,
                expires_in: i
                    .value("--expires-in")?
                    .map(|d| duration("--expires-in", &d))
                    .transpose()?,
                storage_id: i.positive("--storage")?,
                quota_mb: i.positive("--quota-mb")?,
                system_uuid: i.value("--system-uuid")?,
                host: i.value("--host")?,
                note: i.value("--note")?,
                address: i.value("--address")?,
                replaces: i.positive("--replaces")?,
            }))
        },
        run: Run::Daemon(token_create),
    },
    Command {
        name: "token list",
        help: &[Help {
            syntax: "token list",
            about: "pairing tokens and their state (never a secret)",
        }],
        options: &[],
        parse: |i| i.no_operands().map(|_| CtlCommand::TokenList),
        run: Run::Daemon(|cx, _| Ok(cx.show(cx.client.tokens(&cx.token()?)?, table::tokens_table))),
    },
    Command {
        name: "token revoke",
        help: &[Help {
            syntax: "token revoke ID",
            about: "revoke a token (pairings made with it stay)",
        }],
        options: &[],
        parse: |i| {
            let [id] = i.operands(["a token ID"])?;
            if !PairingToken::valid_id(id) {
                return Err(UsageError(format!(
                    "{id:?} is not a token ID (12 hex digits, the part before the dot)"
                )));
            }
            Ok(CtlCommand::TokenRevoke {
                token_id: id.to_string(),
            })
        },
        run: Run::Daemon(token_revoke),
    },
];

fn pending(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Pending { include_rejected } = *c else {
        return Err(other_command());
    };
    let a = cx.client.pending(&cx.token()?, include_rejected)?;
    Ok(cx.show(a, |v| table::pending_table(v, include_rejected)))
}

fn accept(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Accept {
        request_id,
        storage_id,
        replaces,
    } = *c
    else {
        return Err(other_command());
    };
    let how = Resolution::Accept {
        storage_id,
        replaces,
    };
    let a = cx.client.resolve(&cx.token()?, request_id, how)?;
    Ok(cx.show(a, |v| {
        format!(
            "accepted request {request_id}: system {} ({})\n",
            cell(&v["system_id"]),
            cell(&v["status"])
        )
    }))
}

fn reject(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Reject {
        request_id,
        message,
    } = c
    else {
        return Err(other_command());
    };
    let how = Resolution::Reject { message };
    let a = cx.client.resolve(&cx.token()?, *request_id, how)?;
    Ok(cx.show(a, |v| {
        format!("request {request_id}: {}\n", cell(&v["status"]))
    }))
}

fn ignore(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    match c {
        CtlCommand::Ignore { request_id } => {
            let a = cx.client.ignore(&cx.token()?, *request_id)?;
            Ok(cx.show(a, |_| format!("ignored request {request_id}\n")))
        }
        CtlCommand::IgnoreFrom { remote_addr } => {
            let a = cx.client.ignore_from(&cx.token()?, remote_addr)?;
            Ok(cx.show(a, |v| {
                format!(
                    "ignored {} open requests from {}\n",
                    cell(&v["ignored"]),
                    cell(&v["remote_addr"])
                )
            }))
        }
        _ => Err(other_command()),
    }
}

fn unpair(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Unpair { system_id } = *c else {
        return Err(other_command());
    };
    let token = cx.token()?;
    let a = cx
        .client
        .unpair(&token, system_id)
        .map_err(|e| explain_unpair(cx.client, &token, system_id, e))?;
    Ok(cx.show(a, |_| {
        format!("unpaired system {system_id}: its certificate is revoked\n")
    }))
}

fn set_share(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Share { system_id, share } = *c else {
        return Err(other_command());
    };
    let a = cx.client.set_share(&cx.token()?, system_id, share)?;
    Ok(cx.show(a, |v| {
        format!("system {system_id}: share {}\n", cell(&v["share"]))
    }))
}

/// A 404 for this appliance's own row says so: it is listed by `systems` but is nobody's
/// pairing.
fn explain_unpair(
    client: &Client,
    token: &Secret<String>,
    system_id: u64,
    e: CtlError,
) -> CtlError {
    let CtlError::Refused(r) = &e else {
        return e;
    };
    let local = r.status == 404
        && client.systems(token).is_ok_and(|a| {
            table::rows(&a.json, "appliance")
                .iter()
                .any(|s| s["id"] == system_id && s["local"] == true)
        });
    if !local {
        return e;
    }
    CtlError::Refused(Refusal {
        message: format!(
            "system {system_id} is this appliance itself, not a paired system; nothing to unpair"
        ),
        ..Refusal::parse(r.status, r.body.clone())
    })
}

fn token_create(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::TokenCreate(options) = c else {
        return Err(other_command());
    };
    let a = cx.client.create_token(&cx.token()?, options)?;
    Ok(cx.show(a, |v| {
        let takes_over = match v["replaces_system_id"].as_u64() {
            Some(sid) => format!("; the appliance that uses it takes over system {sid}"),
            None => String::new(),
        };
        format!(
            "pairing token {} created: {} use(s), expires {} UTC{takes_over}\n\
             token (shown once, keep it secret):\n  {}\n\
             join line, for `replgate ctl request-target --join LINE` on the source:\n  {}\n",
            cell(&v["token_id"]),
            cell(&v["uses"]),
            utc(v["expires"].as_i64().unwrap_or(0)),
            cell(&v["token"]),
            cell(&v["join"])
        )
    }))
}

fn token_revoke(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::TokenRevoke { token_id } = c else {
        return Err(other_command());
    };
    let a = cx.client.revoke_token(&cx.token()?, token_id)?;
    Ok(cx.show(a, |v| {
        format!(
            "revoked pairing token {} (used {} of {}); sources paired with it stay paired\n",
            cell(&v["token_id"]),
            cell(&v["used"]),
            cell(&v["uses"])
        )
    }))
}
