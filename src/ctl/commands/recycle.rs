//! Target-side commands for what a source's backups become here (SPEC 20): its retention
//! policy and its recycle bin (list, restore, purge).

use serde_json::Value;

use super::{other_command, Command, Cx, Help, Opt, Run};
use crate::ctl::args::{positive, CtlCommand, Input, RetentionRules, UsageError};
use crate::ctl::table::{self, cell};
use crate::ctl::CtlError;

pub(super) const COMMANDS: &[Command] = &[
    Command {
        name: "retention",
        help: &[Help {
            syntax: "retention SID [--keep-last N] [--keep-days D]\n             \
                     [--keep-all]",
            about: "show source SID's retention policy, or replace it: keep the\n\
                    newest N backups per client and/or those received within D\n\
                    days (--keep-all: every backup, the default)",
        }],
        options: &[
            Opt::Value("--keep-last"),
            Opt::Value("--keep-days"),
            Opt::Flag("--keep-all"),
        ],
        parse: retention_parse,
        run: Run::Daemon(retention),
    },
    Command {
        name: "recycle list",
        help: &[Help {
            syntax: "recycle list SID",
            about: "what retention moved to source SID's recycle bin",
        }],
        options: &[],
        parse: |i| {
            let [sid] = i.operands(["a system ID"])?;
            Ok(CtlCommand::Recycle {
                system_id: positive("the system ID", sid)?,
            })
        },
        run: Run::Daemon(recycle),
    },
    Command {
        name: "recycle restore",
        help: &[Help {
            syntax: "recycle restore SID CLIENT/FILE",
            about: "put a backup back from the bin (retention then keeps it)",
        }],
        options: &[],
        parse: |i| {
            let [sid, backup] = i.operands(["a system ID", "a backup (CLIENT/FILE)"])?;
            Ok(CtlCommand::RecycleRestore {
                system_id: positive("the system ID", sid)?,
                backup: backup.to_string(),
            })
        },
        run: Run::Daemon(recycle_restore),
    },
    Command {
        name: "recycle purge",
        help: &[Help {
            syntax: "recycle purge SID CLIENT/FILE | --all",
            about: "delete a backup from the bin, or everything in it, for good",
        }],
        options: &[Opt::Flag("--all")],
        parse: recycle_purge_parse,
        run: Run::Daemon(recycle_purge),
    },
];

fn retention_parse(i: &mut Input<'_>) -> Result<CtlCommand, UsageError> {
    let [sid] = i.operands(["a system ID"])?;
    let system_id = positive("the system ID", sid)?;
    let keep_last = i.positive("--keep-last")?;
    let keep_days = i.positive("--keep-days")?;
    let keep_all = i.flag("--keep-all")?;
    let policy = match (keep_all, keep_last.is_some() || keep_days.is_some()) {
        (true, true) => {
            return Err(UsageError(
                "`retention` takes --keep-all or --keep-last/--keep-days, not both".into(),
            ))
        }
        (true, false) => Some(None),
        (false, true) => Some(Some(RetentionRules {
            keep_last,
            keep_days,
        })),
        (false, false) => None,
    };
    Ok(CtlCommand::Retention { system_id, policy })
}

fn recycle_purge_parse(i: &mut Input<'_>) -> Result<CtlCommand, UsageError> {
    let all = i.flag("--all")?;
    let (sid, backup) = match (i.words(), all) {
        ([sid], true) => (sid.as_str(), None),
        ([sid, backup], false) => (sid.as_str(), Some(backup.to_string())),
        ([], _) => return Err(UsageError("`recycle purge` needs a system ID".into())),
        ([_], false) => {
            return Err(UsageError(
                "`recycle purge` needs a backup (CLIENT/FILE), or --all to empty the bin".into(),
            ))
        }
        _ => {
            return Err(UsageError(
                "`recycle purge` takes a system ID and either one backup or --all".into(),
            ))
        }
    };
    Ok(CtlCommand::RecyclePurge {
        system_id: positive("the system ID", sid)?,
        backup,
    })
}

/// A policy as a sentence.
fn policy_text(p: &Value) -> String {
    let mut rules = Vec::new();
    if let Some(n) = p["keep_last"].as_u64() {
        rules.push(format!("the newest {n} backups of each client"));
    }
    if let Some(d) = p["keep_days"].as_u64() {
        rules.push(format!("backups received within {d} days"));
    }
    if rules.is_empty() {
        "every backup".into()
    } else {
        format!("{} (and always each client's newest)", rules.join(" and "))
    }
}

fn retention(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Retention { system_id, policy } = *c else {
        return Err(other_command());
    };
    let token = cx.token()?;
    let Some(policy) = policy else {
        let a = cx.client.recycle(&token, system_id)?;
        return Ok(cx.show(a, |v| {
            format!(
                "system {system_id} keeps {}\n",
                policy_text(&v["retention"])
            )
        }));
    };
    let body = match policy {
        None => Value::Null,
        Some(r) => {
            let mut m = serde_json::Map::new();
            if let Some(n) = r.keep_last {
                m.insert("keep_last".into(), n.into());
            }
            if let Some(d) = r.keep_days {
                m.insert("keep_days".into(), d.into());
            }
            Value::Object(m)
        }
    };
    let a = cx.client.set_retention(&token, system_id, &body)?;
    Ok(cx.show(a, |v| {
        format!(
            "system {system_id} now keeps {}; what it lets go moves to the recycle bin\n",
            policy_text(&v["retention"])
        )
    }))
}

fn recycle(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::Recycle { system_id } = *c else {
        return Err(other_command());
    };
    let a = cx.client.recycle(&cx.token()?, system_id)?;
    Ok(cx.show(a, table::recycle_table))
}

fn recycle_restore(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::RecycleRestore { system_id, backup } = c else {
        return Err(other_command());
    };
    let a = cx
        .client
        .recycle_restore(&cx.token()?, *system_id, backup)?;
    Ok(cx.show(a, |v| {
        format!(
            "restored {} of system {system_id} from the recycle bin; retention keeps it\n",
            cell(&v["restored"]["backup"])
        )
    }))
}

fn recycle_purge(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::RecyclePurge { system_id, backup } = c else {
        return Err(other_command());
    };
    let a = cx
        .client
        .recycle_purge(&cx.token()?, *system_id, backup.as_deref())?;
    Ok(cx.show(a, |v| {
        format!(
            "purged {} backups ({} bytes) from the recycle bin of system {system_id}\n",
            cell(&v["count"]),
            cell(&v["bytes"])
        )
    }))
}
