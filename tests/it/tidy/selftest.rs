//! The checker finds what it is meant to find: small made-up trees, in memory, each with
//! one way to break a rule, among them the four that fooled the earlier tidy test (a
//! relative `use` re-export, a module imported by name and then used by path,
//! `use crate::*`, a socket opened in a domain module), a cycle and `std::fs` in the
//! domain; and a correct tree that passes every rule.

use super::architecture::Layers;
use super::resolve::Resolver;
use super::rules::{self, Rule};
use super::tree::Tree;
use super::{check, Krate, SizeException};

/// The made-up crate's layers (the real table's shape, fewer modules).
const TABLE: &[(&str, &[&str])] = &[
    ("base", &["wire", "fsx"]),
    ("resources", &["store"]),
    ("domain", &["pairing"]),
    ("adapters", &["remote", "api"]),
    ("wiring", &["daemon", "main", "lib"]),
];

/// A correct little crate; each test replaces or adds files.
const BASE: &[(&str, &str)] = &[
    (
        "src/lib.rs",
        "pub mod api;\npub mod daemon;\npub mod fsx;\npub mod pairing;\npub mod remote;\npub mod store;\npub mod wire;\n",
    ),
    ("src/main.rs", "use replgate::daemon;\n\nfn main() {\n    daemon::run();\n}\n"),
    ("src/wire/mod.rs", "pub mod frame;\n\npub use self::frame::Frame;\n"),
    ("src/wire/frame.rs", "pub struct Frame;\n"),
    (
        "src/fsx.rs",
        "pub fn write_atomic(p: &str) {\n    std::fs::write(p, b\"\").ok();\n}\n",
    ),
    (
        "src/store/mod.rs",
        "mod read;\n\npub use read::get;\n\npub struct Store;\n\nimpl Store {\n    pub fn open() -> Store {\n        crate::fsx::write_atomic(\"db\");\n        Store\n    }\n}\n",
    ),
    ("src/store/read.rs", "use super::Store;\n\npub fn get(_: &Store) {}\n"),
    (
        "src/pairing/mod.rs",
        "pub mod target;\npub mod tokens;\n\npub use self::target::accept;\n",
    ),
    (
        "src/pairing/target.rs",
        "use super::tokens::issue;\nuse crate::store::{self, Store};\nuse crate::wire::*;\n\npub fn accept(_: Frame) {\n    issue();\n    store::get(&Store::open());\n}\n",
    ),
    (
        "src/pairing/tokens.rs",
        "pub fn issue() {}\n\n#[cfg(test)]\nmod tests {\n    use super::super::target::accept;\n}\n",
    ),
    (
        "src/remote/mod.rs",
        "pub mod http;\n\npub struct Remote;\n\npub fn call() {\n    let _ = std::net::TcpStream::connect(\"x:1\");\n    http::get();\n}\n",
    ),
    ("src/remote/http.rs", "pub fn get() {}\n"),
    (
        "src/api/mod.rs",
        "use crate::pairing;\n\npub struct Reply;\n\npub fn handle() {\n    pairing::accept(crate::wire::Frame);\n    crate::remote::call();\n}\n",
    ),
    (
        "src/daemon.rs",
        "pub fn run() {\n    std::thread::spawn(crate::api::handle);\n}\n",
    ),
];

/// ARCHITECTURE.md of the made-up crate: its table and a code map naming every file.
const ARCHITECTURE: &str = "# Architecture\n\n## Code map\n\n| module | owns | must not |\n|---|---|---|\n| `main.rs` | entry | |\n| `lib.rs` | the module list | |\n| `wire/` | frames (`frame.rs`) | |\n| `fsx.rs` | writes | |\n| `store/` | the database, reads (`read.rs`) | |\n| `pairing/` | `target.rs`, `tokens.rs` | |\n| `remote/` | the client (`http.rs`) | |\n| `api/` | handlers | |\n| `daemon.rs` | wiring | |\n\n## Layers\n\n| layer | modules | may |\n|---|---|---|\n| 0 base | `wire`, `fsx` | |\n| 1 resources | `store` | |\n| 2 domain | `pairing` | |\n| 3 adapters | `remote`, `api` | |\n| 4 wiring | `daemon`, `main` (and `lib`, the module list) | |\n\n## Next\n";

fn tree(changes: &[(&str, &str)]) -> Tree {
    let mut files: Vec<(String, String)> = BASE
        .iter()
        .filter(|(p, _)| !changes.iter().any(|(c, _)| c == p))
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    files.extend(
        changes
            .iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(p, t)| (p.to_string(), t.to_string())),
    );
    Tree::from_sources(files)
}

fn krate() -> Krate {
    Krate {
        name: "replgate".into(),
        externs: vec![
            "libc".into(),
            "redb".into(),
            "rcgen".into(),
            "rustls".into(),
        ],
    }
}

/// Findings of `rule` on the base crate with `changes` (an empty text removes a file),
/// as `file:line: text`.
fn found(rule: Rule, changes: &[(&str, &str)]) -> Vec<String> {
    found_with(rule, changes, &[])
}

/// The same, with size exceptions.
fn found_with(rule: Rule, changes: &[(&str, &str)], exceptions: &[SizeException]) -> Vec<String> {
    let checked = check(
        &tree(changes),
        &Layers::from_table(TABLE),
        Some(ARCHITECTURE),
        &krate(),
        exceptions,
    );
    checked.of(rule).iter().map(|f| f.to_string()).collect()
}

/// Asserts one finding starts with `at` (`src/x.rs:3`) and says `what`.
fn assert_finds(found: &[String], at: &str, what: &str) {
    assert!(
        found
            .iter()
            .any(|f| f.starts_with(&format!("{at}:")) && f.contains(what)),
        "expected a finding at {at} saying {what:?}, got {found:#?}"
    );
}

#[test]
fn tidy_passes_a_correct_tree() {
    let checked = check(
        &tree(&[]),
        &Layers::from_table(TABLE),
        Some(ARCHITECTURE),
        &krate(),
        &[],
    );
    let all: Vec<String> = checked.findings.iter().map(|f| f.to_string()).collect();
    assert!(all.is_empty(), "{all:#?}");
    assert_eq!(checked.files, BASE.len());
    // It did read the imports: the re-export, the group, the glob, the binary's path.
    assert!(
        checked.crate_refs >= 15,
        "{} references",
        checked.crate_refs
    );
}

/// Evasion 1: a relative re-export, in every spelling: `pub(crate) use super::...`,
/// `pub use self::x::*`, and a uniform path without `self::`.
#[test]
fn tidy_catches_an_upward_import_through_a_relative_reexport() {
    // base `wire` re-exports an adapter's function through a glob of a child...
    let up = found(
        Rule::Upward,
        &[
            ("src/wire/mod.rs", "pub mod frame;\nmod hop;\n\npub use self::frame::Frame;\npub(crate) use self::hop::*;\n"),
            ("src/wire/hop.rs", "pub(crate) use super::super::remote::call;\n"),
            (
                "src/pairing/target.rs",
                "use crate::wire::call;\n\npub fn accept(_: crate::wire::Frame) {\n    call();\n}\n",
            ),
        ],
    );
    assert_finds(
        &up,
        "src/wire/hop.rs:1",
        "`wire::hop` (base) -> `remote` (adapters)",
    );
    assert_finds(
        &up,
        "src/pairing/target.rs:1",
        "(domain) -> `remote` (adapters)",
    );
    assert_finds(
        &up,
        "src/pairing/target.rs:1",
        "via src/wire/mod.rs:5, src/wire/hop.rs:1",
    );
    // ... and the domain's own mod.rs re-exports with a uniform path (no `self::`).
    let up = found(
        Rule::Upward,
        &[
            ("src/pairing/mod.rs", "pub mod target;\npub mod tokens;\nmod net;\n\npub use self::target::accept;\npub use net::call;\n"),
            ("src/pairing/net.rs", "pub use crate::remote::call;\n"),
            ("src/pairing/tokens.rs", "pub fn issue() {\n    super::call();\n}\n"),
        ],
    );
    assert_finds(&up, "src/pairing/net.rs:1", "-> `remote` (adapters)");
    assert_finds(&up, "src/pairing/mod.rs:6", "-> `remote` (adapters)");
    assert_finds(&up, "src/pairing/tokens.rs:2", "`super::call`");
    // A re-export of an adapter's module under another name, used by path.
    let up = found(
        Rule::Upward,
        &[(
            "src/store/read.rs",
            "use super::Store;\npub(crate) use crate::api as handlers;\n\npub fn get(_: &Store) {\n    self::handlers::handle();\n}\n",
        )],
    );
    assert_finds(
        &up,
        "src/store/read.rs:2",
        "`store::read` (resources) -> `api` (adapters)",
    );
}

/// Evasion 2: a module imported by name (a legal import) and then used by path.
#[test]
fn tidy_catches_a_module_imported_by_name_then_used_by_path() {
    // With a submodule exception in the table (as the earlier table had): the import names
    // the domain module, the path reaches its adapter part.
    let table: &[(&str, &[&str])] = &[
        ("base", &["wire", "fsx"]),
        ("resources", &["store"]),
        ("domain", &["pairing"]),
        ("adapters", &["remote", "api", "pairing::poller"]),
        ("wiring", &["daemon", "main", "lib"]),
    ];
    let t = tree(&[
        (
            "src/pairing/mod.rs",
            "pub mod poller;\npub mod target;\npub mod tokens;\n\npub use self::target::accept;\n",
        ),
        ("src/pairing/poller.rs", "pub fn spawn() {}\n"),
        (
            "src/pairing/tokens.rs",
            "use crate::pairing;\n\npub fn issue() {\n    pairing::poller::spawn();\n}\n",
        ),
    ]);
    let checked = check(&t, &Layers::from_table(table), None, &krate(), &[]);
    let up: Vec<String> = checked
        .of(Rule::Upward)
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_finds(
        &up,
        "src/pairing/tokens.rs:4",
        "-> `pairing::poller` (adapters): `pairing::poller::spawn`",
    );
    assert_eq!(up.len(), 1, "the import itself is legal: {up:#?}");
    // Without exceptions: a lower module imported by name, a path through its re-export.
    let up = found(
        Rule::Upward,
        &[
            (
                "src/wire/mod.rs",
                "pub mod frame;\npub mod up;\n\npub use self::frame::Frame;\n",
            ),
            ("src/wire/up.rs", "pub use crate::remote::Remote;\n"),
            (
                "src/pairing/tokens.rs",
                "use crate::wire;\n\npub fn issue() {\n    let _ = wire::up::Remote;\n}\n",
            ),
        ],
    );
    assert_finds(
        &up,
        "src/pairing/tokens.rs:4",
        "`wire::up::Remote` (via src/wire/up.rs:1)",
    );
    // An alias of a higher module, then a path through the alias.
    let up = found(
        Rule::Upward,
        &[(
            "src/pairing/tokens.rs",
            "use super::super::remote as r;\n\npub fn issue() {\n    r::http::get();\n}\n",
        )],
    );
    assert_finds(&up, "src/pairing/tokens.rs:1", "-> `remote` (adapters)");
    assert_finds(
        &up,
        "src/pairing/tokens.rs:4",
        "-> `remote::http` (adapters): `r::http::get`",
    );
}

/// Evasion 3: `use crate::*` brings every top-level module into scope.
#[test]
fn tidy_catches_names_brought_by_use_crate_glob() {
    let up = found(
        Rule::Upward,
        &[(
            "src/pairing/tokens.rs",
            "use crate::*;\nuse remote::Remote;\n\npub fn issue() -> api::Reply {\n    remote::call();\n    api::Reply\n}\n",
        )],
    );
    assert_finds(
        &up,
        "src/pairing/tokens.rs:2",
        "-> `remote` (adapters): `use remote::Remote`",
    );
    assert_finds(
        &up,
        "src/pairing/tokens.rs:4",
        "-> `api` (adapters): `api::Reply`",
    );
    assert_finds(
        &up,
        "src/pairing/tokens.rs:5",
        "-> `remote` (adapters): `remote::call`",
    );
    // `use super::*` in a child of the crate root's glob, and `use crate::remote::*`.
    let up = found(
        Rule::Upward,
        &[(
            "src/pairing/tokens.rs",
            "use crate::remote::*;\n\npub fn issue() {\n    call();\n}\n\nmod inner {\n    use super::*;\n    fn f() {\n        http::get();\n    }\n}\n",
        )],
    );
    assert_finds(
        &up,
        "src/pairing/tokens.rs:1",
        "-> `remote` (adapters): `use crate::remote::*`",
    );
    assert_finds(
        &up,
        "src/pairing/tokens.rs:10",
        "-> `remote::http` (adapters): `http::get`",
    );
}

/// Evasion 4: a socket opened in a domain module, however it is named.
#[test]
fn tidy_catches_a_socket_in_a_domain_module() {
    let target = "src/pairing/target.rs";
    let cases: &[(&str, usize)] = &[
        ("pub fn dial() {\n    let _ = std::net::TcpStream::connect(\"x:1\");\n}\n", 2),
        ("use std::net;\n\npub fn dial() {\n    let _ = net::TcpStream::connect(\"x:1\");\n}\n", 4),
        ("use std::net::TcpStream as Conn;\n\npub fn dial() {\n    let _ = Conn::connect(\"x:1\");\n}\n", 1),
        ("use std::net::*;\n\npub fn dial() {\n    let _ = TcpListener::bind(\"x:1\");\n}\n", 1),
        ("use ::std::os::unix::net::UnixStream;\n", 1),
        ("use std::{io, net::{self, UdpSocket}};\n", 1),
        ("pub fn dial(s: &impl std::io::Read) {}\npub fn f() {\n    use std::net::TcpStream;\n}\n", 3),
    ];
    for (text, line) in cases {
        let d = found(Rule::Domain, &[(target, text)]);
        assert_finds(&d, &format!("{target}:{line}"), "a socket in the domain");
    }
    // Through a base module's re-export or alias: the path names wire, the socket is std's.
    let d = found(
        Rule::Domain,
        &[
            ("src/wire/mod.rs", "pub mod frame;\n\npub use self::frame::Frame;\npub use std::net::TcpStream as Conn;\npub type Listener = std::net::TcpListener;\n"),
            (target, "use crate::wire::Conn;\n\npub fn f(_: crate::wire::Listener) {}\n"),
        ],
    );
    assert_finds(
        &d,
        &format!("{target}:1"),
        "reaches `std::net::TcpStream` (via src/wire/mod.rs:4)",
    );
    assert_finds(
        &d,
        &format!("{target}:3"),
        "reaches `std::net::TcpListener` (via src/wire/mod.rs:5)",
    );
    // The same code in an adapter (remote opens one in BASE) or in domain tests is fine.
    assert!(found(Rule::Domain, &[]).is_empty());
    let tests = "#[cfg(test)]\nmod tests {\n    use std::net::TcpListener;\n}\n";
    assert!(found(Rule::Domain, &[(target, tests)]).is_empty());
    let inner = "mod tests {\n    #![cfg(test)]\n    use std::net::TcpListener;\n}\n";
    assert!(found(Rule::Domain, &[(target, inner)]).is_empty());
    let file = "#![allow(dead_code)]\n#![cfg(test)]\nuse std::net::TcpListener;\n";
    assert!(found(Rule::Domain, &[(target, file)]).is_empty());
}

/// `std::fs`, threads and `libc` in the domain, through any path or alias.
#[test]
fn tidy_catches_fs_threads_and_libc_in_a_domain_module() {
    let target = "src/pairing/target.rs";
    let cases: &[(&str, usize, &str)] = &[
        (
            "pub fn f() {\n    let _ = std::fs::read(\"x\");\n}\n",
            2,
            "std::fs",
        ),
        (
            "use std::fs as files;\n\npub fn f() {\n    let _ = files::read(\"x\");\n}\n",
            1,
            "std::fs",
        ),
        ("use std::{fs, io};\n", 1, "std::fs"),
        ("use std::fs::File;\n", 1, "std::fs"),
        ("use std::os::unix::fs::PermissionsExt;\n", 1, "std::fs"),
        (
            "use std::thread;\n\npub fn f() {\n    thread::spawn(|| ());\n}\n",
            1,
            "a thread",
        ),
        (
            "use std::thread::Builder;\n\npub fn f() {\n    Builder::new().spawn(|| ());\n}\n",
            1,
            "a thread",
        ),
        (
            "pub fn f() {\n    std::thread::scope(|_| ());\n}\n",
            2,
            "a thread",
        ),
        (
            "pub fn f() {\n    unsafe { libc::close(3) };\n}\n",
            2,
            "libc",
        ),
        ("use libc::c_int;\n", 1, "libc"),
        ("use std::*;\n", 1, "a socket"),
        (
            "extern crate std as s;\n\npub fn f() {\n    let _ = s::fs::read(\"x\");\n}\n",
            4,
            "std::fs",
        ),
    ];
    for (text, line, what) in cases {
        let d = found(Rule::Domain, &[(target, text)]);
        assert_finds(
            &d,
            &format!("{target}:{line}"),
            &format!("{what} in the domain"),
        );
    }
    // A lower module's re-export of std::fs, then a path through it.
    let d = found(
        Rule::Domain,
        &[
            (
                "src/wire/mod.rs",
                "pub mod frame;\n\npub use self::frame::Frame;\npub use std::fs;\n",
            ),
            (
                target,
                "use crate::wire;\n\npub fn f() {\n    let _ = wire::fs::read(\"x\");\n}\n",
            ),
        ],
    );
    assert_finds(&d, &format!("{target}:4"), "std::fs in the domain");
    // What the domain may: std::io, std::path, std::sync, a file handed in as `impl Read`.
    let fine = "use std::io::{self, Read};\nuse std::path::Path;\nuse std::sync::Mutex;\n\npub fn f(_: &mut impl Read, _: &Path, _: &Mutex<u8>) -> io::Result<()> {\n    Ok(())\n}\n";
    assert!(found(Rule::Domain, &[(target, fine)]).is_empty());
}

#[test]
fn tidy_catches_cycles_between_files_of_a_folder() {
    let two = found(
        Rule::Cycle,
        &[(
            "src/pairing/tokens.rs",
            "pub fn issue() {\n    super::target::accept(crate::wire::Frame);\n}\n",
        )],
    );
    assert_eq!(two.len(), 1, "{two:#?}");
    assert!(
        two[0].starts_with("src/pairing/: cycle target.rs -> tokens.rs -> target.rs (imports at target.rs:1, tokens.rs:2)"),
        "{two:#?}"
    );
    // Through the folder's re-export (pairing/mod.rs: `pub use self::target::accept`).
    let via = found(
        Rule::Cycle,
        &[(
            "src/pairing/tokens.rs",
            "use super::accept;\n\npub fn issue() {}\n",
        )],
    );
    assert_eq!(via.len(), 1, "{via:#?}");
    // Three files, and between top-level modules (entries of src/).
    let three = found(
        Rule::Cycle,
        &[
            ("src/pairing/mod.rs", "pub mod target;\npub mod tokens;\npub mod fields;\n\npub use self::target::accept;\n"),
            ("src/pairing/fields.rs", "pub fn check() {\n    super::tokens::issue();\n}\n"),
            ("src/pairing/tokens.rs", "pub fn issue() {\n    super::target::accept(crate::wire::Frame);\n}\n"),
            ("src/pairing/target.rs", "use crate::wire::*;\n\npub fn accept(_: Frame) {\n    super::fields::check();\n}\n"),
            ("src/fsx.rs", "pub fn write_atomic(_: &str) {\n    let _ = crate::wire::frame::Frame;\n}\n"),
            ("src/wire/frame.rs", "pub struct Frame;\n\npub fn f() {\n    crate::fsx::write_atomic(\"x\");\n}\n"),
        ],
    );
    assert_eq!(three.len(), 2, "{three:#?}");
    assert_finds(
        &three,
        "src/pairing/",
        "cycle fields.rs -> tokens.rs -> target.rs -> fields.rs",
    );
    assert_finds(&three, "src/", "cycle fsx.rs -> wire/ -> fsx.rs");
    // Test code makes no cycle (BASE's tokens.rs tests import target).
    assert!(found(Rule::Cycle, &[]).is_empty());
}

#[test]
fn tidy_catches_resources_outside_their_owner() {
    let api = |text: &str| found(Rule::Owner, &[("src/api/mod.rs", text)]);
    for text in [
        "fn f(db: redb::Database) {}",
        "use rcgen::KeyPair;",
        "fn f() { rustls::ServerConfig::builder_with_provider(p); }",
        "fn f() { x.builder_with_provider(p); }",
        "use rustls::ClientConfig;\nfn f() { ClientConfig::builder(); }",
        "fn f() { std::fs::write(p, b); }",
        "use std::fs::{self, rename};",
        "use std::fs::write;",
        "use std::fs as f;\nfn g() { f::remove_file(p); }",
        "fn f() { std::os::unix::fs::symlink(a, b); }",
        "fn f() { fs::create_dir_all(p); }",
        "use std::fs::File;\nfn f() { File::create(p); }",
        "fn f() { std::fs::OpenOptions::new(); }",
        "fn f() { unsafe { libc::unlink(p) }; }",
    ] {
        assert_eq!(api(text).len(), 1, "{text}: {:#?}", api(text));
    }
    for text in [
        "fn f() { crate::fsx::write_atomic(p); let _ = std::fs::read(p); }",
        "fn f() { let s = \"fs::write\"; let c = 'x'; }",
        "// std::fs::write(p, b)",
        "#[cfg(test)]\nmod tests {\n    fn t() { std::fs::write(p, b); rcgen::KeyPair::generate(); }\n}\n",
    ] {
        assert!(api(text).is_empty(), "{text}: {:#?}", api(text));
    }
    // Code after a test module is checked again.
    let after = "#[cfg(test)]\nmod tests {}\nfn g() { std::fs::write(p, b); }\n";
    assert_finds(&api(after), "src/api/mod.rs:3", "a file write");
    // The owners themselves.
    assert!(found(Rule::Owner, &[("src/store/read.rs", "use redb::Table;\n")]).is_empty());
    assert!(found(
        Rule::Owner,
        &[("src/fsx.rs", "fn f() { std::fs::rename(a, b); }\n")]
    )
    .is_empty());
}

#[test]
fn tidy_checks_the_table_and_the_code_map_against_architecture() {
    // A submodule entry, and a table that differs from ARCHITECTURE.md's.
    let table: &[(&str, &[&str])] = &[
        ("base", &["wire", "fsx"]),
        ("resources", &["store"]),
        ("domain", &["pairing"]),
        ("adapters", &["remote", "api", "pairing::poller"]),
        ("wiring", &["daemon", "main", "lib"]),
    ];
    let findings = super::table(&Layers::from_table(table), Some(ARCHITECTURE));
    let text: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(text.len(), 2, "{text:#?}");
    assert_finds(
        &text,
        "LAYERS",
        "`pairing::poller` (adapters) is a submodule entry",
    );
    assert_finds(
        &text,
        "LAYERS",
        "`pairing::poller` is adapters here, not there",
    );
    // The earlier ARCHITECTURE.md's form: exceptions "(but ...)" in one row, listed in another.
    let old = "## Layers\n\n| layer | modules | may |\n|---|---|---|\n| 0 base | `wire` | x |\n| 2 domain | `pairing` (but `pairing::poller`) | x |\n| 3 adapters | `api`, `pairing::poller` (and `test_pki`, unit-test support) | x |\n";
    let parsed = Layers::from_architecture(old).expect("the table parses");
    assert_eq!(parsed.names, ["base", "domain", "adapters"]);
    let of = |m: &str| parsed.of(&m.split("::").map(String::from).collect::<Vec<_>>());
    assert_eq!(of("pairing::target"), Some(1));
    assert_eq!(of("pairing::poller::x"), Some(2));
    assert_eq!(of("test_pki"), Some(2));
    // A module with no layer, and an entry with no module.
    let t = tree(&[("src/newthing.rs", "pub fn f() {}\n")]);
    let unplaced = super::rules::placement(&t, &Layers::from_table(&TABLE[..4]));
    let text: Vec<String> = unplaced.iter().map(|f| f.to_string()).collect();
    assert_finds(&text, "src/newthing.rs", "module `newthing` has no layer");
    assert_finds(&text, "src/daemon.rs", "module `daemon` has no layer");
    let t = tree(&[("src/fsx.rs", "")]);
    let gone: Vec<String> = super::rules::placement(&t, &Layers::from_table(TABLE))
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_finds(&gone, "LAYERS", "`fsx` (base) is no module of src/");
    // The code map: a file it does not name, a row for a file that is gone.
    let map = found(
        Rule::CodeMap,
        &[
            ("src/pairing/fields.rs", "pub fn f() {}\n"),
            ("src/remote/http.rs", ""),
        ],
    );
    assert_eq!(map.len(), 2, "{map:#?}");
    assert_finds(
        &map,
        "src/pairing/fields.rs",
        "not named in ARCHITECTURE.md's code map",
    );
    assert_finds(
        &map,
        "ARCHITECTURE.md:13",
        "names `http.rs`, which is no file",
    );
}

#[test]
fn tidy_catches_long_production_files_and_functions() {
    let body = |n: usize| "    let _ = 1;\n".repeat(n);
    let long_fn = format!("pub fn accept() {{\n{}}}\n", body(119));
    let at_limit = format!("pub fn accept() {{\n{}}}\n", body(118));
    let sizes = |text: &str| found(Rule::Size, &[("src/pairing/target.rs", text)]);
    let long = sizes(&long_fn);
    assert_eq!(long.len(), 1, "{long:#?}");
    assert_finds(
        &long,
        "src/pairing/target.rs:1",
        "fn `accept` has 121 lines",
    );
    assert!(sizes(&at_limit).is_empty());
    // In test code, no limit; test lines do not count towards the file's.
    let in_tests = format!("#[cfg(test)]\nmod tests {{\n{long_fn}{}}}\n", body(900));
    assert!(sizes(&in_tests).is_empty());
    let long_file = format!("pub fn accept() {{}}\n{}", "pub fn f() {}\n".repeat(800));
    assert_finds(
        &sizes(&long_file),
        "src/pairing/target.rs",
        "801 production lines",
    );
    // The allow-list: its entry passes, and an entry no tree needs is reported.
    let allowed: &[SizeException] = &[("src/api/routes.rs", "route_table", "the route table")];
    let table = format!("pub fn route_table() {{\n{}}}\n", body(200));
    let with_table = found_with(Rule::Size, &[("src/api/routes.rs", &table)], allowed);
    assert!(with_table.is_empty(), "{with_table:#?}");
    let stale = found_with(Rule::Size, &[], allowed);
    assert_finds(&stale, "SIZE_EXCEPTIONS", "remove the entry");
}

/// What each reference of a small tree resolves to: the resolver alone.
#[test]
fn tidy_resolves_every_spelling_of_an_import() {
    let t = Tree::from_sources(vec![
        ("src/lib.rs", "pub mod a;\npub mod x;\n"),
        ("src/a/mod.rs", "pub mod b;\npub mod c;\n\npub use self::b::*;\npub(crate) use super::x::y as why;\n"),
        ("src/a/b.rs", "pub fn in_b() {}\n"),
        ("src/a/c/mod.rs", "pub mod d;\n"),
        ("src/a/c/d.rs", "use super::super::b;\nuse crate::a::{b::in_b, c::{self as see, d}};\nuse self::inner::deep;\n\nmod inner {\n    pub fn deep() {}\n}\n\nfn f() {\n    super::super::why::g();\n    crate::x::y::g();\n    b::in_b();\n    see::d::h();\n}\n\npub fn h() {}\n"),
        ("src/x/mod.rs", "pub mod y;\n"),
        ("src/x/y.rs", "pub fn g() {}\n\npub type Id = u64;\n\nfn f() -> ::std::fs::File {\n    crate::a::in_b();\n}\n"),
        ("src/main.rs", "use replgate::a::why;\n\nfn main() {\n    replgate::x::y::g();\n}\n"),
    ]);
    let resolver = Resolver::new(&t, "replgate", &[]);
    let refs = rules::references(&t, &resolver);
    let reached = |file: &str, line: usize| -> Vec<String> {
        refs.iter()
            .filter(|r| t.files[r.file].path == file && r.line == line)
            .map(|r| match r.resolved.module() {
                Some(m) => format!("{} -> {}", r.written, m.join("::")),
                None => format!("{} -> {:?}", r.written, r.resolved.res),
            })
            .collect()
    };
    let d = "src/a/c/d.rs";
    assert_eq!(reached(d, 1), ["use super::super::b -> a::b"]);
    assert_eq!(
        reached(d, 2),
        [
            "use crate::a::b::in_b -> a::b",
            "use crate::a::c -> a::c",
            "use crate::a::c::d -> a::c::d"
        ]
    );
    assert_eq!(reached(d, 3), ["use self::inner::deep -> a::c::d::inner"]);
    assert_eq!(reached(d, 10), ["super::super::why::g -> x::y"]);
    assert_eq!(reached(d, 11), ["crate::x::y::g -> x::y"]);
    assert_eq!(reached(d, 12), ["b::in_b -> a::b"]);
    assert_eq!(reached(d, 13), ["see::d::h -> a::c::d"]);
    assert_eq!(reached("src/a/mod.rs", 4), ["use self::b::* -> a::b"]);
    let y = "src/x/y.rs";
    assert_eq!(
        reached(y, 5),
        ["::std::fs::File -> External([\"std\", \"fs\", \"File\"])"]
    );
    assert_eq!(reached(y, 6), ["crate::a::in_b -> a::b"]);
    assert_eq!(reached("src/main.rs", 1), ["use replgate::a::why -> x::y"]);
    assert_eq!(reached("src/main.rs", 4), ["replgate::x::y::g -> x::y"]);
}

/// Comments, strings, raw strings and chars are not code; `#[cfg(test)]` blocks are test
/// code, and what follows them is not.
#[test]
fn tidy_reads_code_not_prose() {
    let text = "// use crate::remote::call;\n/* crate::api::Reply */\nconst S: &str = \"crate::remote::call()\";\nconst R: &str = r#\"use crate::remote;\"#;\nconst C: char = '\"';\n\npub fn issue() {}\n";
    assert!(found(Rule::Upward, &[("src/pairing/tokens.rs", text)]).is_empty());
    let after = "#[cfg(test)]\nmod tests {\n    use crate::remote::call;\n}\n\npub fn issue() {\n    crate::remote::call();\n}\n";
    let up = found(Rule::Upward, &[("src/pairing/tokens.rs", after)]);
    assert_finds(&up, "src/pairing/tokens.rs:3", "-> `remote` (adapters)");
    assert_finds(&up, "src/pairing/tokens.rs:7", "-> `remote` (adapters)");
}
