//! The grammar of every command in the table, through `parse` as `replgate ctl` runs it
//! (moved from `cli.rs` with the grammar).

use std::path::PathBuf;

use super::{all, parse, usage, Opt, GLOBAL_OPTIONS};
use crate::cli::VERSION_LINE;
use crate::ctl::args::{
    duration, Ctl, CtlCommand, PasswordFrom, ThrottleWindow, TokenOptions, Trust, UsageError,
};
use crate::model::Privilege;
use crate::wire::token::PairingToken;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn parse_ctl(words: &[String]) -> Result<Ctl, UsageError> {
    parse(words)
}

fn ctl(s: &str) -> Result<Ctl, UsageError> {
    parse_ctl(&args(s))
}

fn command(s: &str) -> CtlCommand {
    ctl(s).unwrap_or_else(|e| panic!("{s}: {}", e.0)).command
}

fn usage_error(s: &str) -> String {
    match ctl(s) {
        Ok(c) => panic!("{s} parsed as {c:?}"),
        Err(e) => e.0,
    }
}

#[test]
fn version_and_help_are_answered_everywhere() {
    assert!(VERSION_LINE.starts_with(&format!("replgate {} (commit ", env!("CARGO_PKG_VERSION"))));
    assert_eq!(command("--version"), CtlCommand::Version);
    assert_eq!(command("version"), CtlCommand::Version);
    assert_eq!(command("-V"), CtlCommand::Version);
}

#[test]
fn replication_commands_parse_with_their_checks() {
    assert_eq!(
        command("compression 2 zstd:3"),
        CtlCommand::TargetCompression {
            target_id: 2,
            setting: Some("zstd:3".into())
        }
    );
    assert_eq!(
        command("compression 2 default"),
        CtlCommand::TargetCompression {
            target_id: 2,
            setting: None
        }
    );
    assert!(usage_error("compression 2 zstd:9").contains("zstd:<level>"));
    assert!(usage_error("compression 0 off").contains("target ID"));
    assert!(usage_error("compression 2").contains("auto, off"));
    assert_eq!(
        command("queue --target 3 --all"),
        CtlCommand::Queue {
            target_id: Some(3),
            include_done: true
        }
    );
    assert_eq!(
        command("queue add 2 web/monday"),
        CtlCommand::QueueAdd {
            target_id: 2,
            backup: "web/monday".into()
        }
    );
    assert_eq!(
        command("queue reset 4 5 --client db"),
        CtlCommand::QueueChange {
            ids: vec![4, 5],
            clients: vec!["db".into()],
            reset: true
        }
    );
    assert_eq!(
        command("restore 2 web/mon web/tue --storage 3 --overwrite"),
        CtlCommand::Restore {
            target_id: 2,
            backups: vec!["web/mon".into(), "web/tue".into()],
            clients: vec![],
            all: false,
            storage_id: Some(3),
            overwrite: true
        }
    );
    assert_eq!(
        command("restore 2 --all"),
        CtlCommand::Restore {
            target_id: 2,
            backups: vec![],
            clients: vec![],
            all: true,
            storage_id: None,
            overwrite: false
        }
    );
    assert_eq!(
        command("drill 2 --bytes 1000"),
        CtlCommand::Drill {
            target_id: Some(2),
            bytes: Some(1000)
        }
    );
    assert_eq!(
        command("drill"),
        CtlCommand::Drill {
            target_id: None,
            bytes: None
        }
    );
    assert!(usage_error("drill 2 3").contains("no further argument"));
    let targets = |rows: serde_json::Value| serde_json::json!({ "targets": rows });
    let only = |v| super::source::only_paired_target(&targets(v)).map_err(|e| e.to_string());
    assert_eq!(
        only(serde_json::json!([{"target_id": 4, "status": "complete"},
                                {"target_id": 5, "status": "pending"}])),
        Ok(4)
    );
    assert!(only(serde_json::json!([]))
        .unwrap_err()
        .contains("no pairing is complete"));
    assert!(
        only(serde_json::json!([{"target_id": 4, "status": "complete"},
                                    {"target_id": 6, "status": "complete"}]))
        .unwrap_err()
        .contains("one of 4, 6")
    );
    assert_eq!(command("drills"), CtlCommand::Drills);
    assert!(usage_error("restore 2").contains("exactly one of"));
    assert!(usage_error("restore 2 --all --client web").contains("exactly one of"));
    assert!(usage_error("restore").contains("target ID"));
    assert!(usage_error("queue remove").contains("item IDs or --client"));
    assert!(usage_error("queue drop 1").contains("add, remove or reset"));
    assert_eq!(
        command("throttle --link-mbps 100 --window 10:1-5:8-18 --window 50:0,6:22-6"),
        CtlCommand::Throttle {
            link_mbps: Some(100),
            windows: Some(vec![
                ThrottleWindow {
                    percentage: 10,
                    days: vec![1, 2, 3, 4, 5],
                    start: 8,
                    end: 18
                },
                ThrottleWindow {
                    percentage: 50,
                    days: vec![0, 6],
                    start: 22,
                    end: 6
                },
            ])
        }
    );
    assert_eq!(
        command("throttle --clear"),
        CtlCommand::Throttle {
            link_mbps: None,
            windows: Some(vec![])
        }
    );
    assert_eq!(
        command("throttle"),
        CtlCommand::Throttle {
            link_mbps: None,
            windows: None
        }
    );
    for bad in [
        "0:1:1-2",
        "101:1:1-2",
        "10:7:1-2",
        "10:5-1:1-2",
        "10:1:24-2",
        "10:1",
        "x:1:1-2",
    ] {
        assert!(
            usage_error(&format!("throttle --window {bad}")).contains("PCT:DAYS:START-END"),
            "{bad}"
        );
    }
    assert!(usage_error("throttle --clear --window 10:1:1-2").contains("do not go together"));
    assert!(
        usage_error("replication-config --strategy fast").contains("manual, retention or recency")
    );
    assert_eq!(command("verify 7"), CtlCommand::Verify { system_id: 7 });
}

#[test]
fn retention_and_the_recycle_bin_parse_and_refuse_what_would_surprise() {
    use crate::ctl::args::RetentionRules;
    assert_eq!(
        command("retention 3"),
        CtlCommand::Retention {
            system_id: 3,
            policy: None
        }
    );
    assert_eq!(
        command("retention 3 --keep-last 5 --keep-days=30"),
        CtlCommand::Retention {
            system_id: 3,
            policy: Some(Some(RetentionRules {
                keep_last: Some(5),
                keep_days: Some(30)
            }))
        }
    );
    assert_eq!(
        command("retention 3 --keep-all"),
        CtlCommand::Retention {
            system_id: 3,
            policy: Some(None)
        }
    );
    assert!(usage_error("retention 3 --keep-all --keep-last 2").contains("not both"));
    assert!(usage_error("retention 3 --keep-last 0").contains("positive"));
    assert!(usage_error("retention x").contains("positive"));
    assert_eq!(
        command("recycle list 4"),
        CtlCommand::Recycle { system_id: 4 }
    );
    assert_eq!(
        command("recycle restore 4 c/f.tar"),
        CtlCommand::RecycleRestore {
            system_id: 4,
            backup: "c/f.tar".into()
        }
    );
    assert!(usage_error("recycle restore 4").contains("a backup (CLIENT/FILE)"));
    // Emptying a bin is never what a forgotten argument does.
    assert!(usage_error("recycle purge 4").contains("--all"));
    assert!(usage_error("recycle purge 4 c/f --all").contains("either one backup or --all"));
    assert_eq!(
        command("recycle purge 4 --all"),
        CtlCommand::RecyclePurge {
            system_id: 4,
            backup: None
        }
    );
    assert_eq!(
        command("recycle purge 4 c/f"),
        CtlCommand::RecyclePurge {
            system_id: 4,
            backup: Some("c/f".into())
        }
    );
}

#[test]
fn global_options_go_before_or_after_the_command() {
    let before = ctl("--api https://h:1 --cacert /c.pem --json pending").unwrap();
    let after = ctl("pending --json --cacert=/c.pem --api=https://h:1").unwrap();
    assert_eq!(before, after);
    assert_eq!(before.api.as_deref(), Some("https://h:1"));
    assert_eq!(before.cacert, Some(PathBuf::from("/c.pem")));
    assert!(before.json);
    let plain = ctl("systems").unwrap();
    assert_eq!((plain.api, plain.cacert, plain.json), (None, None, false));
}

#[test]
fn login_defaults_to_root_and_the_ambient_password() {
    assert_eq!(
        command("login"),
        CtlCommand::Login {
            user: "root".into(),
            password: PasswordFrom::EnvOrPrompt
        }
    );
    assert_eq!(
        command("login --user ops --password-stdin"),
        CtlCommand::Login {
            user: "ops".into(),
            password: PasswordFrom::Stdin
        }
    );
}

#[test]
fn target_side_commands_parse_their_ids_and_options() {
    assert_eq!(
        command("pending --all"),
        CtlCommand::Pending {
            include_rejected: true
        }
    );
    assert_eq!(
        command("accept 7 --storage 2"),
        CtlCommand::Accept {
            request_id: 7,
            storage_id: Some(2),
            replaces: None
        }
    );
    assert_eq!(
        command("accept 7"),
        CtlCommand::Accept {
            request_id: 7,
            storage_id: None,
            replaces: None
        }
    );
    let reject = parse_ctl(&[
        "reject".into(),
        "3".into(),
        "--message".into(),
        "call us first".into(),
    ])
    .unwrap();
    assert_eq!(
        reject.command,
        CtlCommand::Reject {
            request_id: 3,
            message: "call us first".into()
        }
    );
    assert_eq!(command("ignore 4"), CtlCommand::Ignore { request_id: 4 });
    assert_eq!(command("unpair 9"), CtlCommand::Unpair { system_id: 9 });
}

#[test]
fn a_pending_rows_negative_system_id_names_its_request() {
    assert_eq!(
        command("accept -7"),
        CtlCommand::Accept {
            request_id: 7,
            storage_id: None,
            replaces: None
        }
    );
    assert_eq!(command("ignore -4"), CtlCommand::Ignore { request_id: 4 });
    assert_eq!(
        command("reject -3 --message no"),
        CtlCommand::Reject {
            request_id: 3,
            message: "no".into()
        }
    );
    let e = usage_error("unpair -3");
    assert!(
        e.contains("pending request 3") && e.contains("ctl ignore 3"),
        "{e}"
    );
    assert!(usage_error("accept -0").contains("positive number"));
    assert!(usage_error("accept -x").contains("unknown option"));
}

#[test]
fn the_manual_page_has_every_ctl_command() {
    let man = include_str!("../../../docs/replgate.1").replace("\\-", "-");
    let commands: Vec<String> = usage()
        .lines()
        .filter(|l| l.starts_with("  ") && l.as_bytes()[2].is_ascii_lowercase())
        .map(|l| {
            // The command, before the two spaces that start its description.
            let syntax = l.trim_start().split("  ").next().unwrap_or("");
            let words: Vec<&str> = syntax
                .split_whitespace()
                .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                .collect();
            words.join(" ")
        })
        .collect();
    assert!(commands.len() >= 18, "{commands:?}");
    for c in commands {
        assert!(man.contains(&c), "docs/replgate.1 lacks `{c}`");
    }
}

#[test]
fn request_target_takes_one_way_of_trust() {
    let fp = "AB:".repeat(31) + "AB";
    assert_eq!(
        command(&format!("request-target 10.0.0.2:8443 --fingerprint {fp}")),
        CtlCommand::RequestTarget {
            target: "10.0.0.2:8443".into(),
            trust: Trust::Fingerprint("ab".repeat(32)),
            token: None,
        }
    );
    assert_eq!(
        command("request-target t --insecure"),
        CtlCommand::RequestTarget {
            target: "t".into(),
            trust: Trust::Insecure,
            token: None,
        }
    );
    assert_eq!(
        command("request-target t"),
        CtlCommand::RequestTarget {
            target: "t".into(),
            trust: Trust::Pinned,
            token: None,
        }
    );
    assert!(
        usage_error(&format!("request-target t --insecure --fingerprint {fp}"))
            .contains("not both")
    );
    assert!(usage_error("request-target t --fingerprint abc").contains("SHA-256"));
}

#[test]
fn request_target_with_a_join_line_pins_its_fingerprint_and_sends_its_token() {
    let fp = "cd".repeat(32);
    let tok = "0123456789ab.00112233445566778899aabbccddeeff";
    let join = format!("replgate-join/1/2001:db8::7/9443/{fp}/{tok}");
    assert_eq!(
        command(&format!("request-target --join {join}")),
        CtlCommand::RequestTarget {
            target: "[2001:db8::7]:9443".into(),
            trust: Trust::Fingerprint(fp.clone()),
            token: PairingToken::parse(tok),
        }
    );
    assert_eq!(
        command(&format!(
            "request-target t.example --fingerprint {fp} --token {tok}"
        )),
        CtlCommand::RequestTarget {
            target: "t.example".into(),
            trust: Trust::Fingerprint(fp.clone()),
            token: PairingToken::parse(tok),
        }
    );
    for (args, says) in [
        (format!("request-target t --join {join}"), "no HOST"),
        (
            format!("request-target --join {join} --insecure"),
            "give no",
        ),
        (
            format!("request-target --join {join} --token {tok}"),
            "give no",
        ),
        (
            "request-target --join replgate-join/1/h".to_string(),
            "--join: ",
        ),
        ("request-target t --token abc.def".to_string(), "--token"),
    ] {
        assert!(
            usage_error(&args).contains(says),
            "{args}: {}",
            usage_error(&args)
        );
    }
    // A secret never shows in Debug, even of a whole invocation.
    let debug = format!(
        "{:?}",
        ctl(&format!("request-target --join {join}")).unwrap()
    );
    assert!(!debug.contains("00112233445566778899"), "{debug}");
}

#[test]
fn token_and_bulk_ignore_commands() {
    assert_eq!(command("token list"), CtlCommand::TokenList);
    assert_eq!(
        command("token revoke 0123456789ab"),
        CtlCommand::TokenRevoke {
            token_id: "0123456789ab".into()
        }
    );
    assert_eq!(
        command("token create --uses 5 --expires-in 12h --storage 2 --quota-mb 100 --system-uuid u-1 --host h --note n --address t.example:8443"),
        CtlCommand::TokenCreate(TokenOptions {
            uses: Some(5),
            expires_in: Some(43_200),
            storage_id: Some(2),
            quota_mb: Some(100),
            system_uuid: Some("u-1".into()),
            host: Some("h".into()),
            note: Some("n".into()),
            address: Some("t.example:8443".into()),
            replaces: None,
        })
    );
    assert_eq!(
        command("token create --replaces 7"),
        CtlCommand::TokenCreate(TokenOptions {
            replaces: Some(7),
            ..TokenOptions::default()
        })
    );
    assert_eq!(
        command("token create"),
        CtlCommand::TokenCreate(TokenOptions::default())
    );
    for (d, secs) in [("90", 90), ("90s", 90), ("30m", 1_800), ("7d", 604_800)] {
        assert_eq!(duration("d", d).unwrap(), secs, "{d}");
    }
    for bad in ["", "0", "7w", "d", "-1h", "1.5h"] {
        assert!(duration("d", bad).is_err(), "{bad:?}");
    }
    assert!(usage_error("token").contains("create, list or revoke"));
    assert!(usage_error("token revoke nope").contains("token ID"));
    assert!(usage_error("token list --uses 3").contains("does not take --uses"));
    assert_eq!(
        command("ignore --from 192.0.2.0/24"),
        CtlCommand::IgnoreFrom {
            remote_addr: "192.0.2.0/24".into()
        }
    );
    assert!(usage_error("ignore --from 192.0.2.0/99").contains("network"));
    assert!(usage_error("ignore 3 --from 192.0.2.1").contains("no further"));
}

#[test]
fn users_subcommands() {
    assert_eq!(command("users"), CtlCommand::Users);
    assert_eq!(command("users list"), CtlCommand::Users);
    assert_eq!(
        command("users add ops --privilege manage --password-stdin"),
        CtlCommand::UserAdd {
            name: "ops".into(),
            privilege: Privilege::Manage,
            password: PasswordFrom::Stdin
        }
    );
    assert_eq!(
        command("users set ops --privilege monitor"),
        CtlCommand::UserSet {
            name: "ops".into(),
            privilege: Some(Privilege::Monitor),
            password: None
        }
    );
    assert_eq!(
        command("users set ops --password"),
        CtlCommand::UserSet {
            name: "ops".into(),
            privilege: None,
            password: Some(PasswordFrom::EnvOrPrompt)
        }
    );
    assert_eq!(
        command("users remove ops"),
        CtlCommand::UserRemove { name: "ops".into() }
    );
    assert!(usage_error("users add ops").contains("--privilege"));
    assert!(usage_error("users add ops --privilege root").contains("monitor"));
    assert!(usage_error("users set ops").contains("needs"));
    assert!(usage_error("users set ops --password --password-stdin").contains("not both"));
    assert!(usage_error("users rename ops").contains("unknown users command"));
}

#[test]
fn audit_limit_defaults_and_must_be_positive() {
    assert_eq!(command("audit"), CtlCommand::Audit { limit: 50 });
    assert_eq!(command("audit --limit 5"), CtlCommand::Audit { limit: 5 });
    assert!(usage_error("audit --limit 0").contains("positive"));
}

#[test]
fn help_in_any_spelling() {
    assert_eq!(command("help"), CtlCommand::Help);
    assert_eq!(command("--help"), CtlCommand::Help);
    assert_eq!(command("accept -h"), CtlCommand::Help);
}

#[test]
fn ctl_usage_errors_name_the_problem() {
    assert!(usage_error("").contains("a command is needed"));
    assert!(usage_error("frobnicate").contains("unknown command"));
    assert!(usage_error("accept").contains("needs a request ID"));
    assert!(usage_error("accept x").contains("positive number"));
    assert!(usage_error("accept 0").contains("positive number"));
    assert!(usage_error("accept 1 2").contains("no further argument"));
    assert!(usage_error("accept 1 --message hi").contains("does not take --message"));
    assert!(usage_error("reject 1").contains("--message"));
    assert!(usage_error("pending --bogus").contains("unknown option"));
    assert!(usage_error("pending --json --json").contains("more than once"));
    assert!(usage_error("pending --all=1").contains("takes no value"));
    assert!(usage_error("login --user").contains("needs a value"));
    assert!(usage_error("systems extra").contains("no further argument"));
}

#[test]
fn an_option_value_may_look_like_an_option() {
    let c = parse_ctl(&[
        "reject".into(),
        "1".into(),
        "--message".into(),
        "--json".into(),
    ])
    .unwrap();
    assert!(!c.json);
    assert_eq!(
        c.command,
        CtlCommand::Reject {
            request_id: 1,
            message: "--json".into()
        }
    );
}

/// The table's option lists and help lines say the same: each option a command declares is
/// in its help, each option its help shows is declared (or global), and no option takes a
/// value for one command and none for another (the split before the command is known
/// could not tell).
#[test]
fn each_commands_options_are_its_help_options() {
    let name = |o: &Opt| match *o {
        Opt::Value(n) | Opt::Flag(n) => n,
    };
    for c in all().filter(|c| !c.help.is_empty()) {
        let syntax: String = c.help.iter().map(|h| format!("{} ", h.syntax)).collect();
        for o in c.options {
            assert!(
                syntax.contains(name(o)),
                "`{}` takes {o:?} but its help does not show it",
                c.name
            );
        }
        for word in syntax
            .split([' ', '[', ']', '|', '='])
            .filter(|w| w.starts_with("--"))
        {
            assert!(
                c.options
                    .iter()
                    .chain(GLOBAL_OPTIONS)
                    .any(|o| name(o) == word),
                "`{}`'s help shows {word}, which it does not declare",
                c.name
            );
        }
        assert!(
            c.help.iter().all(|h| h.syntax.starts_with(c.name)),
            "`{}`'s help names another command",
            c.name
        );
    }
    let options: Vec<&Opt> = all()
        .flat_map(|c| c.options)
        .chain(GLOBAL_OPTIONS)
        .collect();
    for o in &options {
        let other = match **o {
            Opt::Value(n) => Opt::Flag(n),
            Opt::Flag(n) => Opt::Value(n),
        };
        assert!(!options.contains(&&other), "{o:?} is declared both ways");
    }
}

/// Every command parses under its own name, and names are unique.
#[test]
fn every_command_parses_to_its_own_entry() {
    let mut names: Vec<&str> = all().map(|c| c.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "a name twice in the table");
    for (words, name) in [
        ("pending", "pending"),
        ("accept 1", "accept"),
        ("reject 1 --message m", "reject"),
        ("ignore 1", "ignore"),
        ("ignore --from 192.0.2.1", "ignore"),
        ("users", "users"),
        ("users list", "users list"),
        ("users remove ops", "users remove"),
        ("queue", "queue"),
        ("queue reset 3", "queue reset"),
        ("restore 1 --all", "restore"),
        ("token list", "token list"),
        ("help", "help"),
        ("accept 1 --help", "help"),
    ] {
        assert_eq!(ctl(words).map(|c| c.name), Ok(name), "{words}");
    }
}

#[test]
fn help_keeps_its_columns() {
    let text = usage();
    assert!(text.starts_with("usage: replgate ctl [--api https://HOST:PORT]"));
    assert!(text.contains(
        "\n  login [--user NAME] [--password-stdin]   log in (default user root) and cache the token\n"
    ));
    assert!(text.contains(
        "\n                                           (D: seconds, or 90m, 12h, 7d; default 7d, at most 90d)\n"
    ));
    assert!(text.contains("\n\noptions (before or after the command):\n"));
    for c in all() {
        for h in c.help {
            assert!(text.contains(&format!("  {}", h.syntax.lines().next().unwrap_or(""))));
        }
    }
}
