//! Tidy: reads `src/` and holds the house rules the compiler cannot see. The layers of
//! ARCHITECTURE.md ("Layers"): a module uses its own layer or lower ones, and every module
//! has a place in [`LAYERS`]. One owner per resource: only `store` names `redb`, only `ca`
//! names `rcgen`, only `tls` builds rustls configs, only `fsx` writes files.
//!
//! It reads code, not prose: comments and the contents of string and character literals
//! are blanked first. Test code (a `#[cfg(test)]` item, or a file declared by
//! `#[cfg(test)] mod x;`) must keep the layers too, but may write fixture files, make
//! foreign certificates with rcgen and build rustls clients: planting what a crash or a
//! peer would leave is its job. `tests/` is not read at all.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use Layer::*;

/// The layers, lowest first (ARCHITECTURE.md, "Layers").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// Plain types, the file writer, configuration, process-wide settings.
    Base,
    /// One owner per resource: the database, the CA, TLS, the spool, identities on disk.
    Resource,
    /// Rules over plain types, time passed in, no socket I/O.
    Domain,
    /// What talks to the world: HTTP, TLS listeners, peers, the command line.
    Adapter,
    /// Starts and stops everything.
    Wiring,
}

/// Every module of `src/` and its layer. A submodule not listed has its parent's layer;
/// list one where it differs (`pairing::poller`). A top-level module missing here fails
/// the test, so a new module must be placed; an entry for a module that is gone fails too.
const LAYERS: &[(&str, Layer)] = &[
    ("wire", Base),
    ("model", Base),
    ("fsx", Base),
    ("rand", Base),
    ("config", Base),
    ("memory", Base),
    ("logging", Base),
    ("metrics", Base),
    ("notify", Base),
    ("store", Resource),
    ("ca", Resource),
    ("tls", Resource),
    ("spool", Resource),
    ("identity", Resource),
    ("auth", Domain),
    ("pairing", Domain),
    ("lifecycle", Domain),
    ("pairing::poller", Adapter),
    ("replication", Domain),
    ("pairing::renewer", Adapter),
    ("api", Adapter),
    ("front", Adapter),
    ("listener", Adapter),
    ("tunnel", Adapter),
    // Unit-test support (real CA, TLS configs, loopback clients) for listener and tunnel.
    ("test_pki", Adapter),
    ("remote", Adapter),
    ("ctl", Adapter),
    ("cli", Adapter),
    ("ingest", Adapter),
    ("jobs", Adapter),
    ("daemon", Wiring),
    ("lib", Wiring),
    ("main", Wiring),
];

/// Where each resource may be named or touched (a file, or a folder ending in `/`).
const REDB_OWNER: &[&str] = &["src/store/"];
const RCGEN_OWNER: &[&str] = &["src/ca.rs", "src/ca/"];
const RUSTLS_CONFIG_OWNER: &[&str] = &["src/tls.rs", "src/tls/"];
const FILE_WRITER: &[&str] = &["src/fsx.rs", "src/fsx/"];

/// `std::fs` functions that change the file system (after `fs::`).
const FS_WRITES: &[&str] = &[
    "write",
    "rename",
    "copy",
    "create_dir",
    "create_dir_all",
    "remove_file",
    "remove_dir",
    "remove_dir_all",
    "hard_link",
    "soft_link",
    "symlink",
    "set_permissions",
];
/// `File::` constructors that create or open for writing.
const FILE_WRITES: &[&str] = &["create", "create_new", "options"];
/// Types whose only use is to create or open files for writing.
const WRITER_TYPES: &[&str] = &["OpenOptions", "DirBuilder"];
/// libc calls that change the file system (after `libc::`).
const LIBC_WRITES: &[&str] = &[
    "open",
    "openat",
    "creat",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "mkdir",
    "mkdirat",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "truncate",
    "ftruncate",
    "chmod",
    "fchmod",
];

#[test]
fn layers_and_resource_owners_hold_in_src() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = read_tree(&root.join("src"));
    assert!(files.len() > 20, "read only {} files of src/", files.len());
    let paths: usize = files.iter().map(|f| f.crate_paths().len()).sum();
    assert!(
        paths > 200,
        "found only {paths} paths into the crate: is the reader broken?"
    );
    let mut problems = Vec::new();
    check_table(&files, &mut problems);
    for file in &files {
        check_file(file, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "{} house rule(s) broken (see ARCHITECTURE.md, \"Layers\" and \"Invariants\"):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checker finds what it is meant to find: each rule on a small made-up file.
#[test]
fn tidy_catches_each_kind_of_break() {
    let found = |path: &str, module: &str, text: &str| {
        let file = SourceFile::new(path.into(), module_path(module), text);
        let mut problems = Vec::new();
        check_file(&file, &mut problems);
        problems
    };
    // Upward imports, in every spelling; lower and own-layer ones pass.
    let store = "src/store/mod.rs";
    for text in [
        "use crate::api::Reply;",
        "use crate::{fsx, api::error::ApiError};",
        "pub(crate) use crate::front::{self as f};",
        "fn f() { crate::pairing::poller::spawn(); }",
        "fn f() -> crate::daemon::Config { todo!() }",
    ] {
        let p = found(store, "store", text);
        assert_eq!(p.len(), 1, "{text}: {p:?}");
        assert!(p[0].contains("layer"), "{p:?}");
    }
    for text in [
        "use crate::{fsx, model::UnixTime};",
        "use crate::store::txn::Txn;",
        "// use crate::api::Reply;",
        r#"const S: &str = "crate::api::Reply";"#,
        "pub(super) fn f() {}",
    ] {
        assert_eq!(found(store, "store", text), Vec::<String>::new(), "{text}");
    }
    assert!(found(
        "src/store/txn.rs",
        "store::txn",
        "use super::records::Request;"
    )
    .is_empty());
    // `super::` from a domain module to its adapter sibling.
    let p = found(
        "src/pairing/target.rs",
        "pairing::target",
        "use super::poller::X;",
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(found(
        "src/pairing/poller.rs",
        "pairing::poller",
        "use super::target::X;"
    )
    .is_empty());
    // A module nobody placed.
    let p = found("src/newthing.rs", "newthing", "fn f() {}");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("LAYERS"), "{p:?}");
    let p = found("src/api/mod.rs", "api", "use crate::newthing::X;");
    assert_eq!(p.len(), 1, "{p:?}");
    // Resource owners.
    let api = |text| found("src/api/mod.rs", "api", text);
    assert_eq!(api("fn f(db: redb::Database) {}").len(), 1);
    assert_eq!(api("use rcgen::KeyPair;").len(), 1);
    assert_eq!(
        api("fn f() { rustls::ServerConfig::builder_with_provider(p); }").len(),
        1
    );
    assert_eq!(api("fn f() { x.builder_with_provider(p); }").len(), 1);
    assert_eq!(api("fn f() { ClientConfig::builder(); }").len(), 1);
    assert_eq!(api("fn f() { std::fs::write(p, b); }").len(), 1);
    assert_eq!(api("use std::fs::{self, rename};").len(), 1);
    assert_eq!(api("use std::fs::write;").len(), 1);
    assert_eq!(api("fn f() { std::os::unix::fs::symlink(a, b); }").len(), 1);
    assert_eq!(api("fn f() { fs::create_dir_all(p); }").len(), 1);
    assert_eq!(api("fn f() { File::create(p); }").len(), 1);
    assert_eq!(api("fn f() { std::fs::OpenOptions::new(); }").len(), 1);
    assert_eq!(api("fn f() { unsafe { libc::unlink(p) }; }").len(), 1);
    assert!(api("fn f() { fsx::remove_file_durable(p); fs::read(p); }").is_empty());
    assert!(api("fn f() { let s = \"fs::write\"; let c = 'x'; }").is_empty());
    assert!(found("src/fsx.rs", "fsx", "fn f() { std::fs::rename(a, b); }").is_empty());
    assert!(found("src/store/txn.rs", "store::txn", "use redb::Table;").is_empty());
    assert!(found("src/ca/csr.rs", "ca::csr", "use rcgen::KeyPair;").is_empty());
    // Test code may plant files and make certificates, but keeps the layers.
    let tests = "fn f() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n    fn t() { std::fs::write(p, b); rcgen::KeyPair::generate(); }\n}\n";
    assert!(api(tests).is_empty(), "{:?}", api(tests));
    let upward = "#[cfg(test)]\nmod tests {\n    use crate::daemon::X;\n}\n";
    assert_eq!(found(store, "store", upward).len(), 1);
    // Code after a test module is checked again.
    let after = "#[cfg(test)]\nmod tests {}\nfn g() { std::fs::write(p, b); }\n";
    assert_eq!(api(after).len(), 1);
}

// ---- the rules ----

/// Every top-level module has a layer; every entry names a module that exists.
fn check_table(files: &[SourceFile], problems: &mut Vec<String>) {
    let modules: BTreeSet<String> = files.iter().map(|f| f.module.join("::")).collect();
    for (entry, _) in LAYERS {
        let exists = modules
            .iter()
            .any(|m| m == entry || m.starts_with(&format!("{entry}::")));
        if !exists {
            problems.push(format!(
                "tests/it/tidy.rs: LAYERS names `{entry}`, which is no module of src/ (remove or rename the entry)"
            ));
        }
    }
}

fn check_file(file: &SourceFile, problems: &mut Vec<String>) {
    let mut say = |line: usize, what: String| {
        problems.push(format!("{}:{line}: {what}", file.path.display()));
    };
    let own_module = file.module.join("::");
    let Some(_) = layer_of(&file.module[..1]) else {
        say(
            1,
            format!("module `{own_module}` has no layer: place it in LAYERS in tests/it/tidy.rs and in ARCHITECTURE.md"),
        );
        return;
    };
    let toks = &file.tokens;
    let owned_by = |owners: &[&str]| owned(&file.path, owners);
    let in_use = file.use_statement_tokens();

    // Layers: every path into the crate, in `use` trees and in code.
    for (at, path) in file.crate_paths() {
        let here = file.module_at(at);
        let (Some(own), Some(target)) = (layer_of(&here), layer_of(&path[..1])) else {
            say(
                toks[at].line,
                format!(
                    "`crate::{}` names a module that has no layer in LAYERS (tests/it/tidy.rs)",
                    path.join("::")
                ),
            );
            continue;
        };
        let target = layer_of(&path).unwrap_or(target);
        if target > own {
            say(
                toks[at].line,
                format!(
                    "`{}` ({own:?} layer) uses `crate::{}` ({target:?} layer): a lower layer never uses a higher one",
                    here.join("::"),
                    path.join("::")
                ),
            );
        }
    }

    // Resource owners; test code is exempt (see the module doc).
    for (i, t) in toks.iter().enumerate() {
        if file.is_test(i) {
            continue;
        }
        let next = |k: usize| toks.get(i + k).map(|t| t.text.as_str()).unwrap_or("");
        let after_colons = if next(1) == "::" { next(2) } else { "" };
        let previous = if i > 1 { toks[i - 2].text.as_str() } else { "" };
        if t.text == "redb" && !owned_by(REDB_OWNER) {
            say(
                t.line,
                "`redb` outside src/store/: only the store opens the database".into(),
            );
        }
        if t.text == "rcgen" && !owned_by(RCGEN_OWNER) {
            say(
                t.line,
                "`rcgen` outside src/ca: only the CA makes certificates".into(),
            );
        }
        if !owned_by(RUSTLS_CONFIG_OWNER) {
            let config_type = |s: &str| s == "ServerConfig" || s == "ClientConfig";
            let config_builder = config_type(&t.text) && after_colons.starts_with("builder");
            let bare_call = t.text == "builder_with_provider" && !config_type(previous);
            if config_builder || bare_call {
                say(
                    t.line,
                    format!("a rustls config built outside src/tls.rs (`{}`)", t.text),
                );
            }
        }
        if !owned_by(FILE_WRITER) {
            // `use` trees are read whole below; here, calls in code.
            let write = match t.text.as_str() {
                other if WRITER_TYPES.contains(&other) => true,
                _ if in_use.contains(&i) => false,
                module => writes(module, after_colons),
            };
            if write {
                say(
                    t.line,
                    format!(
                        "a file written outside src/fsx.rs (`{}{}`): write through fsx (temp, fsync, rename, dir fsync)",
                        t.text,
                        if after_colons.is_empty() { String::new() } else { format!("::{after_colons}") }
                    ),
                );
            }
        }
    }
    // `use std::fs::{rename, write}` names the function without `fs::` before it.
    if !owned_by(FILE_WRITER) {
        for (at, path) in file.use_paths() {
            if file.is_test(at) {
                continue;
            }
            if let [.., module, f] = path.as_slice() {
                if writes(module, f) {
                    say(
                        toks[at].line,
                        format!(
                            "a file written outside src/fsx.rs (`use {}`)",
                            path.join("::")
                        ),
                    );
                }
            }
        }
    }
}

/// Whether `module::f` changes the file system.
fn writes(module: &str, f: &str) -> bool {
    match module {
        "fs" => FS_WRITES.contains(&f),
        "File" => FILE_WRITES.contains(&f),
        "libc" => LIBC_WRITES.contains(&f),
        _ => false,
    }
}

/// The layer of `module`: its longest listed prefix.
fn layer_of(module: &[String]) -> Option<Layer> {
    (1..=module.len()).rev().find_map(|n| {
        let key = module[..n].join("::");
        LAYERS.iter().find(|(m, _)| *m == key).map(|(_, l)| *l)
    })
}

fn owned(path: &Path, owners: &[&str]) -> bool {
    let path = path.to_string_lossy();
    owners.iter().any(|o| {
        if o.ends_with('/') {
            path.starts_with(o)
        } else {
            path == *o
        }
    })
}

fn module_path(dotted: &str) -> Vec<String> {
    dotted.split("::").map(String::from).collect()
}

// ---- reading the tree ----

/// One file of `src/`: where it is, its module path, its code as tokens.
struct SourceFile {
    /// Relative to the repository: `src/pairing/poller.rs`.
    path: PathBuf,
    /// `["pairing", "poller"]`; `src/lib.rs` is `lib`, `src/main.rs` is `main`.
    module: Vec<String>,
    tokens: Vec<Token>,
    /// Token ranges of `#[cfg(test)]` items.
    test_ranges: Vec<(usize, usize)>,
    /// The whole file is test code (declared by `#[cfg(test)] mod x;`).
    test_file: bool,
    /// Inline `mod name { .. }` blocks: (first token, last token, name).
    inline_mods: Vec<(usize, usize, String)>,
    /// Child modules declared `#[cfg(test)] mod x;` here.
    test_children: Vec<String>,
}

#[derive(Debug)]
struct Token {
    text: String,
    line: usize,
}

/// Every `.rs` file below `src`, test-only files marked.
fn read_tree(src: &Path) -> Vec<SourceFile> {
    let repo = src.parent().expect("src/ has a parent");
    let mut paths = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a folder of src/") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    let mut files: Vec<SourceFile> = paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(repo).expect("below the repository");
            let text = std::fs::read_to_string(p).expect("read a source file");
            SourceFile::new(rel.to_path_buf(), module_of(rel), &text)
        })
        .collect();
    let test_modules: BTreeSet<Vec<String>> = files
        .iter()
        .flat_map(|f| {
            f.test_children.iter().map(|c| {
                let mut m = f.parent_for_children();
                m.push(c.clone());
                m
            })
        })
        .collect();
    for f in &mut files {
        f.test_file = test_modules
            .iter()
            .any(|t| f.module.starts_with(t.as_slice()));
    }
    files
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .skip(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") && parts.len() > 1 {
        parts.pop();
    }
    parts
}

impl SourceFile {
    fn new(path: PathBuf, module: Vec<String>, text: &str) -> SourceFile {
        let tokens = tokenize(&code_only(text));
        let mut file = SourceFile {
            path,
            module,
            tokens,
            test_ranges: Vec::new(),
            test_file: false,
            inline_mods: Vec::new(),
            test_children: Vec::new(),
        };
        file.find_items();
        file
    }

    /// The module its `mod x;` children belong to: `lib` and `main` declare top-level ones.
    fn parent_for_children(&self) -> Vec<String> {
        if self.module == ["lib"] || self.module == ["main"] {
            Vec::new()
        } else {
            self.module.clone()
        }
    }

    fn text(&self, i: usize) -> &str {
        self.tokens.get(i).map(|t| t.text.as_str()).unwrap_or("")
    }

    /// The index of the token closing the bracket opened at `open`.
    fn closing(&self, open: usize) -> usize {
        let mut depth = 0i32;
        for i in open..self.tokens.len() {
            match self.text(i) {
                "{" | "(" | "[" => depth += 1,
                "}" | ")" | "]" => {
                    depth -= 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => {}
            }
        }
        self.tokens.len().saturating_sub(1)
    }

    /// Finds `#[cfg(test)]` items, inline modules and test-only child modules.
    fn find_items(&mut self) {
        let n = self.tokens.len();
        let mut i = 0;
        while i < n {
            let cfg_test = ["#", "[", "cfg", "(", "test", ")", "]"]
                .iter()
                .enumerate()
                .all(|(k, t)| self.text(i + k) == *t);
            if cfg_test {
                // Skip further attributes, then the item runs to its `;` or its block.
                let mut j = i + 7;
                while self.text(j) == "#" && self.text(j + 1) == "[" {
                    j = self.closing(j + 1) + 1;
                }
                let start = j;
                while j < n && self.text(j) != ";" && self.text(j) != "{" {
                    if matches!(self.text(j), "(" | "[") {
                        j = self.closing(j);
                    }
                    j += 1;
                }
                if self.text(j) == ";" {
                    if let Some(m) = (start..j).find(|&k| self.text(k) == "mod") {
                        let name = self.text(m + 1).to_string();
                        self.test_children.push(name);
                    }
                } else {
                    j = self.closing(j);
                }
                self.test_ranges.push((i, j));
            }
            if self.text(i) == "mod" && self.text(i + 2) == "{" {
                let end = self.closing(i + 2);
                let name = self.text(i + 1).to_string();
                self.inline_mods.push((i, end, name));
            }
            i += 1;
        }
    }

    fn is_test(&self, at: usize) -> bool {
        self.test_file
            || self
                .test_ranges
                .iter()
                .any(|(a, b)| (*a..=*b).contains(&at))
    }

    /// The module at token `at`: the file's, plus the inline modules around it.
    fn module_at(&self, at: usize) -> Vec<String> {
        let mut m = self.module.clone();
        for (a, b, name) in &self.inline_mods {
            if (*a..=*b).contains(&at) {
                m.push(name.clone());
            }
        }
        m
    }

    /// Every path of every `use` tree, with the index of its `use` token.
    fn use_paths(&self) -> Vec<(usize, Vec<String>)> {
        let mut out = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if t.text == "use" {
                let mut j = i + 1;
                if self.text(j) == "::" {
                    j += 1;
                }
                let mut paths = Vec::new();
                self.expand_use(&mut j, Vec::new(), &mut paths);
                out.extend(paths.into_iter().map(|p| (i, p)));
            }
        }
        out
    }

    /// Expands one use tree starting at `*j` under `prefix`.
    fn expand_use(&self, j: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut path = prefix;
        loop {
            match self.text(*j) {
                "{" => {
                    *j += 1;
                    while !matches!(self.text(*j), "}" | "") {
                        self.expand_use(j, path.clone(), out);
                        if self.text(*j) == "," {
                            *j += 1;
                        }
                    }
                    *j += 1;
                    return;
                }
                "*" => {
                    *j += 1;
                    out.push(path);
                    return;
                }
                "" | ";" | "," | "}" => {
                    out.push(path);
                    return;
                }
                word => {
                    if word != "self" || path.is_empty() {
                        path.push(word.to_string());
                    }
                    *j += 1;
                    match self.text(*j) {
                        "::" => *j += 1,
                        "as" => {
                            *j += 2;
                            out.push(path);
                            return;
                        }
                        _ => {
                            out.push(path);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Every path into this crate (`crate::`, `super::`, `self::`; `replgate::` in
    /// main.rs), resolved to module segments, with the index of its first token.
    fn crate_paths(&self) -> Vec<(usize, Vec<String>)> {
        let mut raw = self.use_paths();
        let in_use: BTreeSet<usize> = self.use_statement_tokens();
        for i in 0..self.tokens.len() {
            if in_use.contains(&i) || self.text(i + 1) != "::" {
                continue;
            }
            if i > 0 && self.text(i - 1) == "::" {
                continue;
            }
            if !matches!(self.text(i), "crate" | "super" | "self" | "replgate") {
                continue;
            }
            let mut path = vec![self.text(i).to_string()];
            let mut j = i + 1;
            while self.text(j) == "::" && is_word(self.text(j + 1)) {
                path.push(self.text(j + 1).to_string());
                j += 2;
            }
            raw.push((i, path));
        }
        let crate_name_root = self.module == ["main"];
        raw.into_iter()
            .filter_map(|(at, path)| {
                let mut here = self.module_at(at);
                if here.first().is_some_and(|m| m == "lib" || m == "main") {
                    here.remove(0);
                }
                let resolved = match path.first().map(String::as_str) {
                    Some("crate") => path[1..].to_vec(),
                    Some("replgate") if crate_name_root => path[1..].to_vec(),
                    Some("self") => [here, path[1..].to_vec()].concat(),
                    Some("super") => {
                        let ups = path.iter().take_while(|s| *s == "super").count();
                        let base = here[..here.len().saturating_sub(ups)].to_vec();
                        [base, path[ups..].to_vec()].concat()
                    }
                    _ => return None,
                };
                // Only the module part matters; `crate::{self}` and `super::*` name none.
                let resolved: Vec<String> = resolved.into_iter().filter(|s| s != "*").collect();
                (!resolved.is_empty()).then_some((at, resolved))
            })
            .collect()
    }

    /// Indices of the tokens of `use ...;` statements.
    fn use_statement_tokens(&self) -> BTreeSet<usize> {
        let mut set = BTreeSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if t.text == "use" {
                let end = (i..self.tokens.len())
                    .find(|&k| self.text(k) == ";")
                    .unwrap_or(self.tokens.len());
                set.extend(i..=end);
            }
        }
        set
    }
}

fn is_word(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::` and single punctuation characters, each with its line.
fn tokenize(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token {
                text: chars[start..i].iter().collect(),
                line,
            });
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            tokens.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    tokens
}

/// `text` with comments and the insides of string and character literals turned into
/// spaces (newlines kept, so line numbers stay right). Lifetimes stay as they are.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        if peek(&c, i) == '/' && peek(&c, i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if peek(&c, i) == '/' && peek(&c, i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if peek(&c, i) == 'r'
            && (peek(&c, i + 1) == '"'
                || (peek(&c, i + 1) == '#' && matches!(peek(&c, i + 2), '"' | '#')))
            && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
        {
            // A raw string: r"..." or r#"..."#, also after b.
            out.push('r');
            i += 1;
            let mut hashes = 0;
            while peek(&c, i) == '#' {
                hashes += 1;
                out.push('#');
                i += 1;
            }
            out.push('"');
            i += 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    out.push('"');
                    out.extend(std::iter::repeat_n('#', hashes));
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if peek(&c, i) == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if peek(&c, i) == '\''
            && (peek(&c, i + 1) == '\\' || (peek(&c, i + 2) == '\'' && peek(&c, i + 1) != '\''))
        {
            // A character literal ('x', '\n', '\u{1b}'); a lifetime has no closing quote.
            out.push('\'');
            i += 1;
            if peek(&c, i) == '\\' {
                out.push_str("  ");
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    out.push(' ');
                    i += 1;
                }
            } else {
                out.push(' ');
                i += 1;
            }
            out.push('\'');
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The character at `i`, or NUL past the end.
fn peek(c: &[char], i: usize) -> char {
    c.get(i).copied().unwrap_or('\0')
}

#[test]
fn code_only_blanks_comments_strings_and_chars_but_keeps_lines() {
    let text =
        "a // x::y\nb /* c /* d */ e */ f \"g\\\"h\" r#\"i\"# 'j' '\\n' '\\\\' 'k: &'static str\n";
    let code = code_only(text);
    assert_eq!(code.lines().count(), text.lines().count());
    let words: Vec<String> = tokenize(&code)
        .into_iter()
        .filter(|t| is_word(&t.text))
        .map(|t| t.text)
        .collect();
    assert_eq!(words, ["a", "b", "f", "r", "k", "static", "str"]);
}
