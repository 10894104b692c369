//! The appliance CA: its rollover (SPEC 22), `ca rollover start|status|finish|abort`.

use serde_json::Value;

use super::{other_command, Command, Cx, Help, Run};
use crate::ctl::args::{CtlCommand, UsageError};
use crate::ctl::table::{self, cell, rows, utc};
use crate::ctl::CtlError;

pub(super) const COMMANDS: &[Command] = &[Command {
    name: "ca rollover",
    help: &[Help {
        syntax: "ca rollover start|status|finish|abort",
        about: "replace the appliance CA: start (a new CA, cross-signed\n\
                by the old), status (every source's chain), finish\n\
                (remove the old CA), abort (back to the old CA)",
    }],
    options: &[],
    parse: |i| {
        let [phase] = i.operands(["start, status, finish or abort"])?;
        match phase {
            "status" => Ok(CtlCommand::CaRollover { phase: None }),
            "start" | "finish" | "abort" => Ok(CtlCommand::CaRollover {
                phase: Some(phase.to_string()),
            }),
            other => Err(UsageError(format!(
                "`ca rollover` takes start, status, finish or abort, not {other:?}"
            ))),
        }
    },
    run: Run::Daemon(rollover),
}];

fn rollover(cx: &Cx<'_>, c: &CtlCommand) -> Result<String, CtlError> {
    let CtlCommand::CaRollover { phase } = c else {
        return Err(other_command());
    };
    let token = cx.token()?;
    let answer = match phase {
        None => cx.client.ca_rollover(&token)?,
        Some(phase) => cx.client.ca_rollover_phase(&token, phase)?,
    };
    Ok(cx.show(answer, rollover_text))
}

/// The rollover's status as an admin reads it: the phase and the CAs, then every paired
/// source with its chain (and, after `finish`, the sources left behind).
fn rollover_text(v: &Value) -> String {
    let mut out = String::new();
    let phase = v["phase"].as_str().unwrap_or("-");
    match (phase, v["started"].as_i64(), v["window_ends"].as_i64()) {
        ("rolling", Some(started), Some(ends)) => out.push_str(&format!(
            "phase:   rolling since {} UTC (window ends {} UTC)\n",
            utc(started),
            utc(ends)
        )),
        _ => out.push_str(&format!("phase:   {}\n", table::clean(phase))),
    }
    out.push_str(&format!("ca:      {}\n", cell(&v["ca_fingerprint"])));
    if !v["new_ca_fingerprint"].is_null() {
        out.push_str(&format!("new ca:  {}\n", cell(&v["new_ca_fingerprint"])));
    }
    out.push_str(&format!(
        "sources on the old chain: {}\n",
        cell(&v["old_chain"])
    ));
    if v["aborted_cas"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "aborted cas still trusted for their certificates: {}\n",
            cell(&v["aborted_cas"])
        ));
    }
    let sources: Vec<Vec<String>> = rows(v, "sources")
        .iter()
        .map(|s| {
            vec![
                cell(&s["sid"]),
                cell(&s["name"]),
                cell(&s["chain"]),
                cell(&s["active"]),
                s["last_seen"]
                    .as_i64()
                    .map_or_else(|| "-".into(), |t| format!("{} UTC", utc(t))),
            ]
        })
        .collect();
    out.push('\n');
    if sources.is_empty() {
        out.push_str("no paired sources\n");
    } else {
        out.push_str(&table::table(
            &["SID", "NAME", "CHAIN", "ACTIVE", "LAST SEEN"],
            &sources,
        ));
    }
    let left: Vec<String> = rows(v, "left_behind")
        .iter()
        .map(|s| cell(&s["sid"]))
        .collect();
    if !left.is_empty() {
        out.push_str(&format!(
            "\nleft behind on the old ca (they must pair again): systems {}\n",
            left.join(", ")
        ));
    }
    out
}
