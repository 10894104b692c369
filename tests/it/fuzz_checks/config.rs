//! `Config::from_toml` with `REPLGATE_*` overrides. The input is a TOML file, then after
//! a NUL byte one `KEY=VALUE` line per variable (`REPLGATE_` is put in front of each
//! key). Never a panic; a refusal names a key; and what `check-config` prints for an
//! accepted configuration (`Config::to_toml`) is itself a file that gives the same
//! values, so an admin can paste it.

use replgate::config::Config;

/// The values of `check-config` output: each line without its trailing comment (every
/// comment `to_toml` writes says where the value came from), comment-only lines dropped.
fn values(toml: &str) -> Vec<String> {
    toml.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rsplit_once("  # ") {
            Some((value, source))
                if source == "default"
                    || source.starts_with("file")
                    || source.starts_with("env REPLGATE_") =>
            {
                value.to_string()
            }
            _ => l.to_string(),
        })
        .collect()
}

/// One input: panics when a property fails.
pub fn run(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let (file, env) = text.split_once('\0').unwrap_or((text, ""));
    let env = env.lines().filter_map(|l| {
        let (k, v) = l.split_once('=')?;
        Some((format!("REPLGATE_{k}"), v.to_string()))
    });
    let config = match Config::from_toml(file, env) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let shown = config.to_toml();
    let again = Config::from_toml(&shown, std::iter::empty())
        .unwrap_or_else(|e| panic!("check-config output does not parse ({e}):\n{shown}"));
    assert_eq!(values(&again.to_toml()), values(&shown), "{shown}");
}
