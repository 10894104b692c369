//! Tidy: reads `src/` and holds the house rules the compiler cannot see (ARCHITECTURE.md,
//! "Layers"). It resolves every import and every path written in code the way rustc does
//! for modules (`resolve.rs`: relative paths, groups, globs, re-exports, aliases, a module
//! imported by name and used by path), then checks:
//!
//! - layers: every module has a layer in [`LAYERS`], which equals ARCHITECTURE.md's table
//!   and lists top-level modules only; nothing reaches a higher layer (test code neither);
//! - no cycle between the entries (files, subfolders) of one folder, production code;
//! - domain modules hold no socket, thread, `libc` or `std::fs` ([`DOMAIN_FORBIDDEN`]);
//! - one owner per resource ([`OWNERS`], invariant 4);
//! - ARCHITECTURE.md's code map names every file of `src/`;
//! - no production file over [`MAX_FILE_LINES`] lines, no production function over
//!   [`MAX_FN_LINES`], but the declarative tables of [`SIZE_EXCEPTIONS`].
//!
//! It reads code, not prose: comments and literals are no tokens (`lex.rs`). Test code is
//! a `#[cfg(test)]` item, a file declared by `#[cfg(test)] mod x;`, or a `tests.rs`; it
//! keeps the layers and its files are in the code map, but it makes no cycle and is exempt
//! from the domain, owner and size rules. `tests/` is not read. Not followed: `#[path]`
//! attributes and `include!` (a file counts where it lies below `src/`).
//!
//! Each rule is its own test below; `selftest.rs` feeds the checker small trees with each
//! evasion it must catch. `cargo test --test it tidy_report -- --nocapture` prints every
//! finding for the tree at `REPLGATE_TIDY_SRC` (default `src/`) with the layer table of
//! the ARCHITECTURE.md at `REPLGATE_TIDY_ARCH` (default the repository's), and never fails
//! on a finding.

mod architecture;
mod lex;
mod resolve;
mod rules;
mod selftest;
mod tree;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use architecture::Layers;
use resolve::Resolver;
use rules::{Finding, Rule};
use tree::Tree;

/// The layers, lowest first, and their modules (ARCHITECTURE.md, "Layers": the test checks
/// the two tables are equal). Top-level modules only: a submodule has its parent's layer,
/// and a part that belongs elsewhere moves there. `lib` is the crate root.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "base",
        &[
            "wire", "fsx", "model", "config", "rand", "sync", "memory", "logging", "metrics",
            "notify",
        ],
    ),
    (
        "resources",
        &["store", "ca", "tls", "identity", "spool", "objstore"],
    ),
    ("domain", &["auth", "pairing", "replication", "lifecycle"]),
    (
        "adapters",
        &[
            "api", "front", "tunnel", "remote", "ctl", "cli", "jobs", "ingest", "listener",
            "test_pki",
        ],
    ),
    ("wiring", &["daemon", "main", "lib"]),
];

/// The layer whose modules hold rules only: time and I/O are handed in.
const DOMAIN_LAYER: &str = "domain";

/// What a domain module may not reach, by external path prefix (through any path, alias,
/// re-export or glob), and what it is.
const DOMAIN_FORBIDDEN: &[(&str, &str)] = &[
    ("std::net::TcpStream", "a socket"),
    ("std::net::TcpListener", "a socket"),
    ("std::net::UdpSocket", "a socket"),
    ("std::os::unix::net", "a socket"),
    ("std::thread", "a thread"),
    ("libc", "libc"),
    ("std::fs", "std::fs"),
    ("std::os::unix::fs", "std::fs"),
];

/// Socket types a domain module may not name, however they came into scope.
const DOMAIN_FORBIDDEN_NAMES: &[&str] = &[
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "UnixStream",
    "UnixListener",
    "UnixDatagram",
];

/// A resource and its one owner.
struct Owner {
    what: &'static str,
    /// Files, or folders ending in `/`, that may touch it.
    owners: &'static [&'static str],
    /// External paths, as consecutive segments anywhere in a resolved path (`fs::write`
    /// matches `std::fs::write` and an unresolved `fs::write`).
    paths: &'static [&'static str],
    /// Identifiers that name it wherever they stand (a crate's name, a method's).
    words: &'static [&'static str],
    why: &'static str,
}

/// Invariant 4 of ARCHITECTURE.md.
const OWNERS: &[Owner] = &[
    Owner {
        what: "redb",
        owners: &["src/store/"],
        paths: &["redb"],
        words: &["redb"],
        why: "only the store opens the database",
    },
    Owner {
        what: "rcgen",
        owners: &["src/ca.rs", "src/ca/"],
        paths: &["rcgen"],
        words: &["rcgen"],
        why: "only the CA makes certificates",
    },
    Owner {
        what: "a rustls config builder",
        owners: &["src/tls.rs", "src/tls/"],
        paths: &[
            "ServerConfig::builder",
            "ServerConfig::builder_with_provider",
            "ServerConfig::builder_with_protocol_versions",
            "ServerConfig::builder_with_details",
            "ClientConfig::builder",
            "ClientConfig::builder_with_provider",
            "ClientConfig::builder_with_protocol_versions",
            "ClientConfig::builder_with_details",
        ],
        words: &[
            "builder_with_provider",
            "builder_with_protocol_versions",
            "builder_with_details",
        ],
        why: "only tls builds rustls configs",
    },
    Owner {
        what: "a file write",
        owners: &["src/fsx.rs", "src/fsx/"],
        paths: &[
            "fs::write",
            "fs::rename",
            "fs::copy",
            "fs::create_dir",
            "fs::create_dir_all",
            "fs::remove_file",
            "fs::remove_dir",
            "fs::remove_dir_all",
            "fs::hard_link",
            "fs::soft_link",
            "fs::symlink",
            "fs::set_permissions",
            "File::create",
            "File::create_new",
            "File::options",
            "OpenOptions",
            "DirBuilder",
            "libc::open",
            "libc::openat",
            "libc::creat",
            "libc::unlink",
            "libc::unlinkat",
            "libc::rename",
            "libc::renameat",
            "libc::renameat2",
            "libc::mkdir",
            "libc::mkdirat",
            "libc::link",
            "libc::linkat",
            "libc::symlink",
            "libc::symlinkat",
            "libc::truncate",
            "libc::ftruncate",
            "libc::chmod",
            "libc::fchmod",
        ],
        words: &["OpenOptions", "DirBuilder"],
        why: "only fsx writes files (temp, fsync, rename, dir fsync)",
    },
];

/// The longest production file, in lines (test code not counted).
const MAX_FILE_LINES: usize = 800;
/// The longest production function, in lines from `fn` to its closing brace.
const MAX_FN_LINES: usize = 120;

/// (file, function or "" for the whole file, why).
type SizeException = (&'static str, &'static str, &'static str);

/// Declarative tables allowed past the size limits: (file, function, or "" for the whole
/// file; why). Only tables belong here (one entry per route, setting or command, read top
/// to bottom), never logic; an entry no longer needed fails the test.
const SIZE_EXCEPTIONS: &[SizeException] = &[(
    "src/api/routes.rs",
    "route_table",
    "the route table: one `route(method, path, access, handler)` line per route",
)];

/// The crate as Cargo.toml names it: its own name and its dependencies' (external crates).
struct Krate {
    name: String,
    externs: Vec<String>,
}

impl Krate {
    /// Reads `[package] name` and the keys of the dependency tables; without a Cargo.toml,
    /// `replgate` and no dependencies.
    fn read(cargo_toml: &Path) -> Krate {
        let text = std::fs::read_to_string(cargo_toml).unwrap_or_default();
        let mut krate = Krate {
            name: "replgate".into(),
            externs: Vec::new(),
        };
        let mut table = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with('[') {
                table = line.trim_matches(|c| c == '[' || c == ']').to_string();
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if table == "package" && key == "name" {
                krate.name = value.trim().trim_matches('"').replace('-', "_");
            } else if table.ends_with("dependencies") {
                krate.externs.push(key.replace('-', "_"));
            }
        }
        krate
    }
}

/// Everything the rules found in one tree.
struct Checked {
    findings: Vec<Finding>,
    files: usize,
    /// References that reached a module of the crate: a floor for a reader that broke.
    crate_refs: usize,
}

impl Checked {
    fn of(&self, rule: Rule) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.rule == rule).collect()
    }
}

/// Runs every rule over `tree` with `layers` and the size `exceptions`; with
/// `architecture` (ARCHITECTURE.md's text) also the table's equality and the code map.
fn check(
    tree: &Tree,
    layers: &Layers,
    architecture: Option<&str>,
    krate: &Krate,
    exceptions: &[SizeException],
) -> Checked {
    let resolver = Resolver::new(tree, &krate.name, &krate.externs);
    let refs = rules::references(tree, &resolver);
    let mut findings = table(layers, architecture);
    findings.extend(rules::placement(tree, layers));
    findings.extend(rules::upward(tree, &refs, layers));
    findings.extend(rules::cycles(tree, &refs));
    findings.extend(rules::domain(tree, &refs, layers));
    findings.extend(rules::owners(tree, &refs));
    if let Some(text) = architecture {
        findings.extend(rules::code_map_names_every_file(tree, text));
    }
    findings.extend(rules::sizes(tree, exceptions));
    findings.sort();
    findings.dedup();
    Checked {
        findings,
        files: tree.files.len(),
        crate_refs: refs
            .iter()
            .filter(|r| r.resolved.module().is_some())
            .count(),
    }
}

/// The table lists top-level modules only, and equals ARCHITECTURE.md's.
fn table(layers: &Layers, architecture: Option<&str>) -> Vec<Finding> {
    let finding = |text: String| Finding {
        rule: Rule::Table,
        file: "LAYERS".into(),
        line: 0,
        text,
    };
    let mut out: Vec<Finding> = layers
        .modules
        .iter()
        .filter(|(m, _)| m.contains("::"))
        .map(|(m, l)| {
            finding(format!(
                "`{m}` ({}) is a submodule entry: a submodule has its parent's layer; move it to a module of its layer",
                layers.name(*l)
            ))
        })
        .collect();
    if let Some(text) = architecture {
        match Layers::from_architecture(text) {
            Ok(theirs) => out.extend(
                layers
                    .differences(&theirs)
                    .into_iter()
                    .map(|d| finding(format!("differs from ARCHITECTURE.md's table: {d}"))),
            ),
            Err(e) => out.push(finding(format!("ARCHITECTURE.md: {e}"))),
        }
    }
    out
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The repository's tree checked against LAYERS, once for all the tests below.
fn repo_checked() -> &'static Checked {
    static CHECKED: OnceLock<Checked> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let repo = repository();
        let tree = Tree::read(&repo.join("src"));
        let architecture =
            std::fs::read_to_string(repo.join("ARCHITECTURE.md")).expect("read ARCHITECTURE.md");
        let krate = Krate::read(&repo.join("Cargo.toml"));
        let layers = Layers::from_table(LAYERS);
        let checked = check(&tree, &layers, Some(&architecture), &krate, SIZE_EXCEPTIONS);
        assert!(
            checked.files > 20,
            "read only {} files of src/",
            checked.files
        );
        assert!(
            checked.crate_refs > 500,
            "only {} references reach the crate: is the reader broken?",
            checked.crate_refs
        );
        checked
    })
}

/// Fails with the findings of `rule` on the repository, if any.
fn hold(rule: Rule, what: &str) {
    let found = repo_checked().of(rule);
    let lines: Vec<String> = found.iter().map(|f| format!("  {f}")).collect();
    assert!(
        found.is_empty(),
        "{} finding(s): {what} (ARCHITECTURE.md, \"Layers\"; tests/it/tidy/mod.rs):\n{}",
        found.len(),
        lines.join("\n")
    );
}

#[test]
fn tidy_layer_table_equals_architecture_and_lists_top_level_modules() {
    hold(Rule::Table, "the layer table");
}

#[test]
fn tidy_every_module_has_a_layer() {
    hold(Rule::Unplaced, "modules and LAYERS entries");
}

#[test]
fn tidy_no_import_runs_to_a_higher_layer() {
    hold(Rule::Upward, "imports to a higher layer");
}

#[test]
fn tidy_no_cycle_between_files_of_a_folder() {
    hold(Rule::Cycle, "cycles between files of one folder");
}

#[test]
fn tidy_domain_has_no_sockets_threads_libc_or_fs() {
    hold(Rule::Domain, "I/O in the domain");
}

#[test]
fn tidy_each_resource_has_one_owner() {
    hold(Rule::Owner, "resources touched outside their owner");
}

#[test]
fn tidy_code_map_names_every_file() {
    hold(Rule::CodeMap, "the code map");
}

#[test]
fn tidy_no_long_production_files_or_functions() {
    hold(Rule::Size, "sizes");
}

/// Section titles of the report, in its order.
const SECTIONS: &[(Rule, &str)] = &[
    (
        Rule::Upward,
        "upward import arrows (file:line: from (layer) -> to (layer))",
    ),
    (Rule::Cycle, "cycles between files of one folder"),
    (Rule::Table, "the layer table"),
    (
        Rule::Unplaced,
        "modules without a layer, entries without a module",
    ),
    (
        Rule::Domain,
        "sockets, threads, libc, std::fs in the domain",
    ),
    (Rule::Owner, "resources outside their owner"),
    (Rule::CodeMap, "the code map"),
    (Rule::Size, "files and functions over the limits"),
];

/// Prints every finding for the tree at `REPLGATE_TIDY_SRC` with the layer table of the
/// ARCHITECTURE.md at `REPLGATE_TIDY_ARCH`; fails only when it cannot read them.
#[test]
fn tidy_report() {
    let var = |name: &str, default: PathBuf| std::env::var_os(name).map_or(default, PathBuf::from);
    let src = var("REPLGATE_TIDY_SRC", repository().join("src"));
    let arch_path = var("REPLGATE_TIDY_ARCH", repository().join("ARCHITECTURE.md"));
    let architecture = std::fs::read_to_string(&arch_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", arch_path.display()));
    let cargo = src
        .parent()
        .map(|p| p.join("Cargo.toml"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| repository().join("Cargo.toml"));
    let tree = Tree::read(&src);
    assert!(
        !tree.files.is_empty(),
        "no .rs file below {}",
        src.display()
    );
    let ours = Layers::from_table(LAYERS);
    let (layers, source) = match Layers::from_architecture(&architecture) {
        Ok(l) => (l, arch_path.display().to_string()),
        Err(e) => (
            ours.clone(),
            format!("LAYERS ({}: {e})", arch_path.display()),
        ),
    };
    let krate = Krate::read(&cargo);
    let checked = check(&tree, &layers, Some(&architecture), &krate, SIZE_EXCEPTIONS);
    let mut out = vec![
        "tidy report".to_string(),
        format!(
            "  src: {} ({} files, {} references into the crate)",
            src.display(),
            checked.files,
            checked.crate_refs
        ),
        format!("  layer table: {source}"),
        format!("    {}", layers.describe()),
    ];
    let differences = ours.differences(&layers);
    if differences.is_empty() {
        out.push("  LAYERS (tests/it/tidy/mod.rs) equals it".into());
    } else {
        out.push("  LAYERS (tests/it/tidy/mod.rs) differs from it (\"here\" is LAYERS):".into());
        out.extend(differences.iter().map(|d| format!("    {d}")));
    }
    for (rule, title) in SECTIONS {
        let found = checked.of(*rule);
        out.push(String::new());
        out.push(format!("{title}: {}", found.len()));
        out.extend(found.iter().map(|f| format!("  {f}")));
    }
    println!("{}", out.join("\n"));
}
