//! Replicated backup names (`replication::names`), the one check before any path is built
//! on either side. Any bytes: `BackupName::parse_bytes` never panics and accepts exactly
//! what the documented rule accepts (UTF-8, `<client>/<file>`, each component 1 to 200
//! bytes, not starting with `.`, no control character); an accepted name, joined to a
//! directory, names exactly two plain components below it (no `..`, no root, no `.`);
//! and `from_parts` of its two parts is the same name.

use std::path::{Component, Path};

use replgate::replication::names::{BackupName, MAX_COMPONENT_BYTES};

fn component_ok(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= MAX_COMPONENT_BYTES
        && !c.starts_with('.')
        && !c.chars().any(char::is_control)
}

/// One input: panics when a property fails.
pub fn run(input: &[u8]) {
    let got = BackupName::parse_bytes(input);
    let want = std::str::from_utf8(input).ok().is_some_and(|s| {
        let parts: Vec<&str> = s.split('/').collect();
        parts.len() == 2 && parts.iter().all(|c| component_ok(c))
    });
    assert_eq!(
        got.is_ok(),
        want,
        "{:?} -> {got:?}",
        String::from_utf8_lossy(input)
    );
    let Ok(name) = got else {
        return;
    };
    assert_eq!(name.as_str().as_bytes(), input);
    assert_eq!(format!("{}/{}", name.client(), name.file()), name.as_str());
    let joined = Path::new("/storage/uuid").join(name.as_str());
    let below: Vec<Component> = joined
        .strip_prefix("/storage/uuid")
        .expect("stays below the directory")
        .components()
        .collect();
    assert_eq!(below.len(), 2, "{joined:?}");
    assert!(
        below.iter().all(|c| matches!(c, Component::Normal(_))),
        "{joined:?}"
    );
    assert_eq!(
        BackupName::from_parts(name.client(), name.file()).as_ref(),
        Ok(&name)
    );
}
