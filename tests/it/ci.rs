//! The CI scripts' own promises (`.ci/`): what they check for is what the tests need, a step
//! that cannot be done fails rather than being skipped, and every step is timed. Reads the
//! scripts and runs their helpers; starts no daemon.

use std::path::Path;
use std::process::Command;

fn script(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `program:package` entries of `.ci/run`'s `tools=( ... )` list.
fn ci_tools() -> Vec<(String, String)> {
    let run = script("run");
    let start = run
        .find("\ntools=(")
        .expect(".ci/run has a tools=( ... ) list")
        + 8;
    let end = start + run[start..].find(')').expect("the tools list ends");
    run[start..end]
        .split_whitespace()
        .map(|entry| {
            let (program, package) = entry
                .split_once(':')
                .unwrap_or_else(|| panic!("{entry}: not program:package"));
            (program.to_string(), package.to_string())
        })
        .collect()
}

/// What bash's `type -t` says `name` is (`builtin`, `file`, `keyword`, ...; empty when
/// nothing).
fn bash_type(name: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", "type -t \"$1\" || true", "bash", name])
        .output()
        .expect("run bash");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `.ci/run` checks each program with `command -v`, which a shell builtin satisfies
/// whether or not the program is installed: `kill` passed on a machine without procps,
/// and the harness (which runs `/usr/bin/kill`, not a shell) then failed.
#[test]
fn ci_checks_every_program_as_a_file_never_a_shell_builtin() {
    let tools = ci_tools();
    assert!(tools.len() >= 5, "{tools:?}");
    for (program, package) in &tools {
        let kind = bash_type(program);
        assert!(
            !matches!(kind.as_str(), "builtin" | "keyword" | "alias" | "function"),
            ".ci/run checks `{program}` (package {package}) with `command -v`, which bash \
             answers with its {kind} even where {package} is not installed: check the \
             program's path instead"
        );
    }
    // The programs the harness runs are among them.
    let names: Vec<&str> = tools.iter().map(|(p, _)| p.as_str()).collect();
    for needed in ["/usr/bin/kill", "openssl", "curl", "slowhttptest"] {
        assert!(names.contains(&needed), ".ci/run does not check {needed}");
    }
    assert!(
        tools
            .iter()
            .any(|(p, pkg)| p == "/usr/bin/kill" && pkg == "procps"),
        "{tools:?}"
    );
}

/// `.ci/contract.sh` makes a venv with `python3 -m venv`, which Debian's python3 can do
/// only with python3-venv installed: CI on a plain Debian machine must install it.
#[test]
fn ci_installs_python3_venv_for_the_contract_test() {
    assert!(script("contract.sh").contains("python3 -m venv"));
    let run = script("run");
    assert!(
        run.contains("python3-venv"),
        ".ci/run never installs python3-venv"
    );
    assert!(
        run.contains("import ensurepip"),
        ".ci/run does not check that python3 can make a venv (ensurepip)"
    );
}

/// A machine where the unit cannot be run under systemd fails the operations check; it
/// used to print SKIPPED and pass, having only checked the unit offline.
#[test]
fn ops_fails_rather_than_skips_the_unit_under_systemd() {
    let ops = script("ops.sh");
    let start = ops
        .find("\nrun_under_systemd() {")
        .expect("ops.sh defines run_under_systemd");
    let end = start + ops[start..].find("\n}\n").expect("the function ends");
    let body = &ops[start..end];
    assert!(
        !body.contains("SKIPPED") && !body.contains("return 0"),
        "run_under_systemd still skips:\n{body}"
    );
    assert!(
        body.contains("fail "),
        "run_under_systemd never fails:\n{body}"
    );
}

/// `.ci/steps.sh`, sourced by `.ci/run`: each step prints its wall time, and the summary
/// lists every step, a failed one marked, and the total, then the free disk; a failing
/// command fails its step at its first failing line.
#[test]
fn ci_times_each_step_and_prints_a_summary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci");
    let out = Command::new("bash")
        .current_dir(&dir)
        .args([
            "-c",
            "set -euo pipefail; source ./steps.sh; trap steps_summary EXIT
             half() { echo first; false; echo never; }
             step 'a quick step' true
             step 'a step of 0.3 s' sleep 0.3
             step 'a failing step' half
             step 'not reached' true",
        ])
        .output()
        .expect("run bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("first") && !text.contains("never"), "{text}");
    assert!(!text.contains("== not reached"), "{text}");
    let (summary, disk) = text
        .split("== step timings\n")
        .nth(1)
        .and_then(|rest| rest.split_once("== disk\n"))
        .unwrap_or_else(|| panic!("no summary, or no disk after it:\n{text}"));
    assert!(disk.contains("Avail"), "the free disk is printed: {disk}");
    let lines: Vec<&str> = summary.lines().collect();
    assert_eq!(lines.len(), 4, "{summary}");
    let seconds = |line: &str| -> f64 {
        line.split_whitespace()
            .rev()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no time in {line:?}"))
    };
    assert!(lines[0].starts_with("a quick step"), "{summary}");
    assert!(lines[1].starts_with("a step of 0.3 s"), "{summary}");
    assert!(seconds(lines[1]) >= 0.3, "{summary}");
    assert!(
        lines[2].starts_with("a failing step") && lines[2].contains("failed: exit 1"),
        "{summary}"
    );
    assert!(lines[3].starts_with("total"), "{summary}");
    assert!(seconds(lines[3]) >= seconds(lines[1]), "{summary}");
    // .ci/run itself runs every step through it and prints the summary on exit.
    let run = script("run");
    assert!(
        run.contains("source .ci/steps.sh"),
        ".ci/run does not use steps.sh"
    );
    assert!(run.contains("trap steps_summary EXIT"), "{run}");
    assert!(
        !run.lines().any(|l| l.starts_with("echo \"== ")),
        ".ci/run has an untimed step heading"
    );
}

/// The same check as `.ci/ops.sh` (which runs late and slowly), here in the suite: every
/// key of docs/configuration.md's table appears in the packaged config, as `#key = ` or
/// `# key = `, so a new key is documented where an admin edits the file.
#[test]
fn the_packaged_config_mentions_every_configuration_key() {
    let root = env!("CARGO_MANIFEST_DIR");
    let table = std::fs::read_to_string(format!("{root}/docs/configuration.md")).expect("read");
    let packaged =
        std::fs::read_to_string(format!("{root}/packaging/replgate.toml")).expect("read");
    let keys: Vec<&str> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split_once("` |").map(|(k, _)| k))
        .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    assert!(keys.len() > 20, "keys read from the table: {keys:?}");
    let missing: Vec<&&str> = keys
        .iter()
        .filter(|k| {
            !packaged.lines().any(|l| {
                [format!("#{k} = "), format!("# {k} = "), format!("{k} = ")]
                    .iter()
                    .any(|p| l.starts_with(p.as_str()))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "packaging/replgate.toml does not mention {missing:?}"
    );
}
