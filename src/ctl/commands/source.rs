//! Source-side commands (this appliance replicates to a target): asking targets, the
//! replication queue, its settings and throttle, and what sources delivered here.

use serde_json::Value;

use super::{other_command, Command, Cx, Help, Opt, Run};
use crate::ctl::args::{
    positive, throttle_window, CtlCommand, Input, ThrottleWindow, Trust, UsageError,
};
use crate::ctl::table::{self, cell, clean};
use crate::ctl::CtlError;
use crate::replication::compress::Compression;
use crate::wire::token::{JoinLine, PairingToken};

pub(super) const COMMANDS: &[Command] = &[
    Command {
        name: "request-target",
        help: &[
            Help {
                syntax: "request-target HOST[:PORT] [--fingerprint SHA256 | --insecure] \
                         [--token TOKEN]",
                about: "ask a target for replication",
            },
            Help {
                syntax: "request-target --join LINE",
                about: "ask with the target's join line: its address,\n\
                        CA fingerprint and a pairing token in one",
            },
        ],
        options: &[
            Opt::Value("--fingerprint"),
            Opt::Flag("--insecure"),
            Opt::Value("--token"),
            Opt::Value("--join"),
        ],
        parse: |i| match i.has("--join") {
            true => request_with_join_line(i),
            false => request_with_host(i),
        },
        run: Run::Daemon(request_target),
    },
    Command {
        name: "targets",
        help: &[Help {
            syntax: "targets",
            about: "targets asked, and each pairing's state",
        }],
        options: &[],
        parse: |i| i.no_operands().map(|_| CtlCommand::Targets),
        run: Run::Daemon(|cx, _| {
            Ok(cx.show(cx.client.targets(&cx.token()?)?, table::targets_table))
        }),
    },
    Command {
        name: "forget-target",
        help: &[Help {
            syntax: "forget-target HOST[:PORT]",
            about: "forget a target, its key and its certificates",
        }],
        options: &[],
        parse: |i| {
            let [host] = i.operands(["the target's HOST[:PORT]"])?;
            Ok(CtlCommand::ForgetTarget {
                host: host.to_string(),
            })
        },
        run: Run::Daemon(forget_target),
    },
    Command {
        name: "compression",
        help: &[Help {
            syntax: "compression TARGET_ID SETTING",
            about: "how content sent to a target is compressed from its\n\
                    next session: auto, off, zstd:LEVEL (1-3), or default\n\
                    (the daemon's `compression` key)",
        }],
        options: &[],
        parse: |i| {
            let [target, setting] =
                i.operands(["a target ID", "auto, off, zstd:LEVEL or default"])?;
            let setting = match setting {
                "default" => None,
                s => Some(
                    Compression::parse(s)
                        .map_err(|e| UsageError(format!("compression: {e}, nor default")))?
                        .to_string(),
                ),
            };
            Ok(CtlCommand::TargetCompression {
                target_id: positive("the target ID", target)?,
                setting,
            })
        },
        run: Run::Daemon(target_compression),
    },
    Command {
        name: "queue",
        help: &[Help {
            syntax: "queue [--target ID] [--all]",
            about: "the replication queue: active and waiting items,\n\
                    what sources send here now (--all: finished ones too)",
        }],
        options: &[Opt::Value("--target"), Opt::Flag("--all")],
        parse: |i| {
            Ok(CtlCommand::Queue {
                target_id: i.positive("--target")?,
                include_done: i.flag("--all")?,
            })
        },
        run: Run::Daemon(queue),
    },
    Command {
        name: "queue add",
        help: &[Help {
            syntax: "queue add TARGET_ID CLIENT/FILE",
            about: "queue one backup by hand (at the end, any strategy)",
        }],
        options: &[],
        parse: |i| {
            let [target, backup] = i.operands(["a target ID", "a backup (CLIENT/FILE)"])?;
            Ok(CtlCommand::QueueAdd {
                target_id: positive("the target ID", target)?,
                backup: backup.to_string(),
            })
        },
        run: Run::Daemon(queue_add),
    },
    Command {
        name: "queue remove",
        help: &[Help {
            syntax: "queue remove ID... | --client NAME",
            about: "take items out of the queue (an active one stops)",
        }],
        options: &[Opt::Value("--client")],
        parse: |i| queue_change(i, false),
        run: Run::Daemon(queue_change_run),
    },
    Command {
        name: "queue reset",
        help: &[Help {
            syntax: "queue reset ID... | --client NAME",
            about: "take them out and queue them again at the end",
        }],
        options: &[Opt::Value("--client")],
        parse: |i| queue_change(i, true),
        run: Run::Daemon(queue_change_run),
    },
    Command {
        name: "restore",
        help: &[Help {
            syntax: "restore TARGET_ID CLIENT/FILE... | --client NAME... | --all \
                     [--storage ID] [--overwrite]",
            about: "pull backups back from a target, verified by SHA-256\n\
                    (--overwrite: replace a different local file)",
        }],
        options: &[
            Opt::Value("--client"),
            Opt::Flag("--all"),
            Opt::Value("--storage"),
            Opt::Flag("--overwrite"),
        ],
        parse: restore_parse,
        run: Run::Daemon(restore),
    },
    Command {
        name: "drill",
        help: &[Help {
            syntax: "drill [TARGET_ID] [--bytes N]",
            about: "restore a random sample (N bytes, default 64 MiB) from a\n\
                    target (the only paired one if none is named) into a\n\
                    scratch directory and check it",
        }],
        options: &[Opt::Value("--bytes")],
        parse: |i| {
            let target_id = match i.words() {
                [] => None,
                _ => Some(positive("the target ID", i.operands(["a target ID"])?[0])?),
            };
            Ok(CtlCommand::Drill {
                target_id,
                bytes: i.positive("--bytes")?,
            })
        },
        run: Run::Daemon(drill),
    },
    Command {
        name: "drills",
        help: &[Help {
            syntax: "drills",
            about: "restore drills: date, size, duration and result",
        }],
        options: &[],
        parse: |i| i.no_operands().map(|_| CtlCommand::Drills),
        run: Run::Daemon(|cx, _| {
            Ok(cx.show(cx.client.drills(&cx.token()?)?, |v| {
                let mut out = String::new();
                for d in table::rows(v, "drills") {
                    out.push_str(&format!(
                        "drill {}  target {}  {}  {} bytes in {} copies  {} ms  requested {}{}\n",
                        cell(&d["id"]),
                        cell(&d["target_id"]),
                        cell(&d["result"]),
                        cell(&d["bytes"]),
                        cell(&d["copies"]),
                        cell(&d["duration_ms"]),
                        cell(&d["requested"]),
                        d["message"]
                            .as_str()
                            .map(|m| format!("  {}", clean(m)))
                            .unwrap_or_default()
                    ));
                }
                if out.is_empty() {
                    out.push_str("no restore drill yet\n");
                }
                out
            }))
        }),
    },
    Command {
        name: "replication-config",
        help: &[Help {
            syntax: "replication-config [--max-concurrent N] \
                     [--strategy manual|retention|recency] [--retries N]",
            about: "show, or change, how the queue replicates",
        }],
        options: &[
            Opt::Value("--max-concurrent"),
            Opt::Value("--strategy"),
            Opt::Value("--retries"),
        ],
        parse: replication_config_parse,
        run: Run::Daemon(replication_config),
    },
    Command {
        name: "throttle",
        help: &[Help {
            syntax: "throttle [--link-mbps N] [--window PCT:DAYS:START-END ...] [--clear]",
            about: "show, or set, the throttle windows (DAYS 0-6, 0 is\n\
                    Sunday, as 1-5 or 0,6; hours 0-23; --clear: none)",
        }],
        options: &[
            Opt::Value("--link-mbps"),
            Opt::Value("--window"),
            Opt::Flag("--clear"),
        ],
        parse: throttle_parse,
        run: Run::Daemon(throttle),
    },
    Command {
        name: "received",
        help: &[Help {
            syntax: "received SID",
            about: "what source SID delivered here, and its last verify",
        }],
        options: &[],
        parse: |i| {
            let [sid] = i.operands(["a system ID"])?;
            Ok(CtlCommand::Received {
                system_id: positive("the system ID", sid)?,
            })
        },
        run: Run::Daemon(received),
    },
    Command {
        name: "verify",
        help: &[Help {
            syntax: "verify SID",
            about: "re-read every copy SID delivered and check its SHA-256",
        }],
        options: &[],
        parse: |i| {
            let [sid] = i.operands(["a system ID"])?;
            Ok(CtlCommand::Verify {
                system_id: positive("the system ID", sid)?,
            })
        },
        run: Run::Daemon(verify),
    },
];

/// `request-target --join LINE`: the line carries the target, its CA fingerprint (the
/// pin: it authenticates the target) and a pairing token.
fn request_with_join_line(i: &mut Input<'_>) -> Result<CtlCommand, UsageError> {
    i.no_operands().map_err(|_| {
        UsageError("`request-target --join` takes the join line only, no HOST".into())
    })?;
    if i.has("--fingerprint") || i.has("--insecure") || i.has("--token") {
        return Err(UsageError(
            "--join carries the target's fingerprint and token: give no --fingerprint, \
             --insecure or --token with it"
                .into(),
        ));
    }
    let line = i.value("--join")?.unwrap_or_default();
    let join = JoinLine::parse(&line).map_err(|e| UsageError(format!("--join: {e}")))?;
    Ok(CtlCommand::RequestTarget {
        target: join.target(),
        trust: Trust::Fingerprint(join.ca_fingerprint.clone()),
        token: Some(join.token),
    })
}

/// `request-target HOST[:PORT]`, trusting the pinned CA, a fingerprint or anything.
fn request_with_host(i: &mut Input<'_>) -> Result<CtlCommand, UsageError> {
    let [target] = i.operands(["the target's HOST[:PORT] (or --join LINE)"])?;
    let fingerprint = i.value("--fingerprint")?;
    let insecure = i.flag("--insecure")?;
    let token = i
        .value("--token")?
        .map(|t| {
            PairingToken::parse(t.trim()).ok_or_else(|| {
                UsageError(
                    "--token is not a pairing token (<12 hex digits>.<32 hex digits>)".into(),
                )
            })
        })
        .transpose()?;
    let trust = match (fingerprint, insecure) {
        (Some(_), true) => {
            return Err(UsageError(
                "give --fingerprint or --insecure, not both".into(),
            ))
        }
        (Some(f), false) => {
            Trust::Fingerprint(crate::ca::normalize_fingerprint(&f).ok_or_else(|| {
                UsageError(format!(
                    "--fingerprint {f:?} is not a SHA-256 fingerprint (64 hex digits, colons \
                     optional)"
                ))
            })?)
        }
        (None, true) => Trust::Insecure,
        (None, false) => Trust::Pinned,
    };
    Ok(CtlCommand::RequestTarget {
        target: target.to_string(),
        trust,
        token,
    })
}

/// `queue remove` and `queue reset`: items by id, and every open item of the clients.
fn queue_change(i: &mut Input<'_>, reset: bool) -> Result<CtlCommand, UsageError> {
    let ids = i
        .words()
        .iter()
        .map(|id| positive("an item ID", id))
        .collect::<Result<Vec<u64>, _>>()?;
    let clients = i.values("--client")?;
    if ids.is_empty() && clients.is_empty() {
        return Err(UsageError(format!(
            "`{}` needs item IDs or --client NAME",
            i.name
        )));
    }
    Ok(CtlCommand::QueueChange {
        ids,
        clients,
        reset,
    })
}

/// `restore`: the target, then what to restore: backups as operands, `--client`s, or
/// `--all`; exactly one of the three.
fn restore_parse(i: &mut Input<'_>) -> Result<CtlCommand, UsageError> {
    let words = i.words();
    let Some((target, backups)) = words.split_first() else {
        return Err(UsageError("`restore` needs a target ID".into()));
    };
    let target_id = positive("the target ID", target)?;
    let clients = i.values("--client")?;
    let all = i.flag("--all")?;
    let chosen = [!backups.is_empty(), !clients.is_empty(), all];
    if chosen.iter().filter(|c| **c).count() != 1 {
        return Err(UsageError(
            "`restore` needs exactly one of: backups (CLIENT/FILE...), --client NAME, --all".into(),
        ));
    }
    Ok(CtlCommand::Restore {
        target_id,
        backups: backups.to_vec(),
        clients,
        all,
        storage_id: i.positive("--storage")?,
        overwrite: i.flag("--overwrite")?,
    })
}

/// `replication-config`: the fields given change, none shows the config.
fn replication_config_parse(i: &mut Input<'_>) -> Result<CtlCommand, UsageError> {
    i.no_operands()?;
    let strategy = i.value("--strategy")?;
    if let Some(s) = &strategy {
        if !["manual", "retention", "recency"].contains(&s.as_str()) {
            return Err(UsageError(format!(
                "--strategy {s:?} is not manual, retention or recency"
            )));
        }
    }
    Ok(CtlCommand::ReplicationConfig {
        max_concurrent: number(i, "--max-concurrent")?,
        strategy,
        retries: number(i, "--retries")?,
    })
}

/// Option `name` as a number (zero allowed), if given.
fn number(i: &mut Input<'_>, name: &str) -> Result<Option<u64>, UsageError> {
    i.value(name)?
        .map(|n| {
            n.parse::<u64>()
                .map_err(|_| UsageError(format!("{name} must be a number, not {n:?}")))
        })
        .transpose()
}

/// `throttle`: the link speed and the windows given change, `--clear` removes every
/// window, nothing shows the throttle.
fn throttle_parse(i: &mut Input<'_>) -> Result<CtlCommand, UsageError> {
    i.no_operands()?;
    let clear = i.flag("--clear")?;
    let windows = i
        .values("--window")?
        .iter()
        .map(|w| throttle_window(w))
        .collect::<Result<Vec<ThrottleWindow>, _>>()?;
    if clear && !windows.is_empty() {
        return Err(UsageError("--clear and --window do not go together".into()));
    }
    Ok(CtlCommand::Throttle {
        link_mbps: i.positive("--link-mbps")?,
        windows: if clear {
            Some(Vec::new())
        } else {
            Some(windows).filter(|w| !w.is_empty())
        },
    })
}

fn request_target(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::RequestTarget {
        target,
        trust,
        token: pairing_token,
    } = c
    else {
        return Err(other_command());
    };
    let a = cx
        .client
        .request_target(&cx.token()?, target, trust, pairing_token.as_ref())?;
    let next = match pairing_token {
        Some(_) => "  the pairing token lets the target accept at once; follow it with `replgate ctl targets`\n",
        None => "  the target's admin must see the same code in `replgate ctl pending` before accepting\n",
    };
    Ok(cx.show(a, |v| {
        format!(
            "asked {} for replication: target {}, request {}, {}\n\
             verification code: {}\n{next}",
            clean(target),
            cell(&v["target_id"]),
            cell(&v["request_id"]),
            cell(&v["status"]),
            cell(&v["verification_code"])
        )
    }))
}

fn forget_target(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::ForgetTarget { host } = c else {
        return Err(other_command());
    };
    let a = cx.client.forget_target(&cx.token()?, host)?;
    Ok(cx.show(a, |v| format!("forgot target {}\n", cell(&v["host"]))))
}

fn target_compression(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::TargetCompression { target_id, setting } = c else {
        return Err(other_command());
    };
    let a = cx
        .client
        .set_target_compression(&cx.token()?, *target_id, setting.as_deref())?;
    Ok(cx.show(a, |v| {
        let setting = match v["compression"].as_str() {
            Some(c) => c.to_string(),
            None => "the daemon's setting".into(),
        };
        format!(
            "target {} ({}): compression {setting}\n",
            cell(&v["target_id"]),
            cell(&v["host"])
        )
    }))
}

fn queue(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Queue {
        target_id,
        include_done,
    } = *c
    else {
        return Err(other_command());
    };
    let a = cx.client.queue(&cx.token()?, target_id, include_done)?;
    Ok(cx.show(a, table::queue_table))
}

fn queue_add(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::QueueAdd { target_id, backup } = c else {
        return Err(other_command());
    };
    let a = cx.client.queue_add(&cx.token()?, *target_id, backup)?;
    Ok(cx.show(a, |v| {
        format!(
            "queued {} for target {} as item {} (at the end of the queue)\n",
            cell(&v["backup"]),
            cell(&v["target_id"]),
            cell(&v["id"])
        )
    }))
}

fn queue_change_run(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::QueueChange {
        ids,
        clients,
        reset,
    } = c
    else {
        return Err(other_command());
    };
    let a = cx.client.queue_change(&cx.token()?, ids, clients, *reset)?;
    Ok(cx.show(a, |v| {
        let items = table::rows(v, "items");
        let what = if *reset {
            "reset (queued again at the end)"
        } else {
            "removed"
        };
        let ids: Vec<String> = items.iter().map(|i| cell(&i["id"])).collect();
        match ids.len() {
            0 => "no open item matched\n".to_string(),
            _ => format!("{what}: items {}\n", ids.join(", ")),
        }
    }))
}

fn restore(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Restore {
        target_id,
        backups,
        clients,
        all,
        storage_id,
        overwrite,
    } = c
    else {
        return Err(other_command());
    };
    let mut body = serde_json::json!({ "target_id": target_id, "overwrite": overwrite });
    if *all {
        body["all"] = true.into();
    } else if !clients.is_empty() {
        body["clients"] = clients.clone().into();
    } else {
        body["backups"] = backups.clone().into();
    }
    if let Some(id) = storage_id {
        body["storage_id"] = (*id).into();
    }
    let a = cx.client.restore(&cx.token()?, &body)?;
    Ok(cx.show(a, |v| {
        let items = table::rows(v, "restore");
        format!(
            "restoring {} backups from target {target_id} (items {}); \
             follow them with `replgate ctl queue --all`\n",
            items.len(),
            items
                .iter()
                .map(|i| cell(&i["id"]))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }))
}

fn drill(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Drill { target_id, bytes } = *c else {
        return Err(other_command());
    };
    let target_id = match target_id {
        Some(id) => id,
        None => only_paired_target(&cx.client.targets(&cx.token()?)?.json)?,
    };
    let mut body = serde_json::json!({ "target_id": target_id });
    if let Some(b) = bytes {
        body["bytes"] = b.into();
    }
    let a = cx.client.drill(&cx.token()?, &body)?;
    Ok(cx.show(a, |v| {
        format!(
            "restore drill {} of target {target_id} queued; follow it with `replgate ctl drills`\n",
            cell(&v["drill"]["id"])
        )
    }))
}

/// The target a `drill` without an ID means: the one complete pairing, or an error that
/// lists the choices (SPEC 20's `ctl drill [--bytes N]`; a source may have several).
pub(super) fn only_paired_target(targets: &serde_json::Value) -> Result<u64, CtlError> {
    let paired: Vec<u64> = table::rows(targets, "targets")
        .iter()
        .filter(|t| t["status"] == "complete")
        .filter_map(|t| t["target_id"].as_u64())
        .collect();
    match paired[..] {
        [id] => Ok(id),
        [] => Err(CtlError::Usage("`drill`: no pairing is complete".into())),
        _ => Err(CtlError::Usage(format!(
            "`drill` needs a target ID: one of {}",
            paired
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn replication_config(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::ReplicationConfig {
        max_concurrent,
        strategy,
        retries,
    } = c
    else {
        return Err(other_command());
    };
    let mut changes = serde_json::Map::new();
    if let Some(n) = max_concurrent {
        changes.insert("max_concurrent".into(), (*n).into());
    }
    if let Some(s) = strategy {
        changes.insert("strategy".into(), s.clone().into());
    }
    if let Some(n) = retries {
        changes.insert("retries".into(), (*n).into());
    }
    let changes = (!changes.is_empty()).then_some(Value::Object(changes));
    let a = cx
        .client
        .replication_config(&cx.token()?, changes.as_ref())?;
    Ok(cx.show(a, table::config_text))
}

fn throttle(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Throttle { link_mbps, windows } = c else {
        return Err(other_command());
    };
    let mut changes = serde_json::Map::new();
    if let Some(n) = link_mbps {
        changes.insert("link_mbps".into(), (*n).into());
    }
    if let Some(ws) = windows {
        let list: Vec<Value> = ws
            .iter()
            .map(|w| {
                serde_json::json!({"percentage": w.percentage, "days": w.days,
                                   "start": w.start, "end": w.end})
            })
            .collect();
        changes.insert("throttle".into(), Value::Array(list));
    }
    let changes = (!changes.is_empty()).then_some(Value::Object(changes));
    let a = cx.client.throttle(&cx.token()?, changes.as_ref())?;
    Ok(cx.show(a, table::throttle_table))
}

fn received(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Received { system_id } = *c else {
        return Err(other_command());
    };
    let a = cx.client.received(&cx.token()?, system_id)?;
    Ok(cx.show(a, table::received_table))
}

fn verify(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Verify { system_id } = *c else {
        return Err(other_command());
    };
    let a = cx.client.verify(&cx.token()?, system_id)?;
    Ok(cx.show(a, |v| {
        format!(
            "verifying what system {system_id} delivered ({} copies); \
             follow it with `replgate ctl received {system_id}`\n",
            cell(&v["verify"]["total"])
        )
    }))
}
