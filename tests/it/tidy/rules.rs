//! The house rules over a resolved tree. Each rule turns the tree (and what every
//! reference resolved to) into findings; the tables they hold the code to are in
//! `mod.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::architecture::{code_map, Layers};
use super::resolve::{Res, Resolved, Resolver};
use super::tree::Tree;
use super::{
    Owner, SizeException, DOMAIN_FORBIDDEN, DOMAIN_FORBIDDEN_NAMES, DOMAIN_LAYER, MAX_FILE_LINES,
    MAX_FN_LINES, OWNERS,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Rule {
    /// The layer table: equal to ARCHITECTURE.md's, no submodule entries.
    Table,
    /// A module with no layer, or a table entry for a module that is gone.
    Unplaced,
    /// An import that runs to a higher layer.
    Upward,
    /// A cycle between files of one folder.
    Cycle,
    /// A socket, thread, `libc` or `std::fs` in a domain module.
    Domain,
    /// A resource touched outside its owner.
    Owner,
    /// A file the code map does not name, or a code map entry for nothing.
    CodeMap,
    /// A production file or function over the limit.
    Size,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Finding {
    pub rule: Rule,
    pub file: String,
    /// 0: the file as a whole.
    pub line: usize,
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.text)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.text)
        }
    }
}

/// One reference from code: a `use` leaf or a path written in code, resolved.
pub(super) struct Reference {
    pub file: usize,
    pub line: usize,
    /// The module the reference is written in.
    pub from: Vec<String>,
    /// As written: `use super::x::*`, `crate::remote::call`.
    pub written: String,
    pub resolved: Resolved,
    pub test: bool,
    pub glob: bool,
    /// A `pub use`: a re-export.
    pub reexport: bool,
    /// For a path whose first segment is a `use` binding: what the binding alone reaches.
    /// A path that reaches no further than its import repeats it and is not counted again.
    pub binding: Option<Resolved>,
}

/// Every reference of the tree, resolved.
pub(super) fn references(tree: &Tree, resolver: &Resolver) -> Vec<Reference> {
    let mut out = Vec::new();
    for (fi, f) in tree.files.iter().enumerate() {
        for (k, u) in f.uses.iter().enumerate() {
            let Some(resolved) = resolver.leaf(fi, k) else {
                continue;
            };
            let mut written = format!("use {}", u.path.join("::").replacen("::::", "::", 1));
            if u.glob {
                written.push_str("::*");
            }
            out.push(Reference {
                file: fi,
                line: f.line(u.at),
                from: u.module.clone(),
                written,
                resolved,
                test: f.is_test(u.at),
                glob: u.glob,
                reexport: u.public,
                binding: None,
            });
        }
        for p in &f.paths {
            let Some(resolved) = resolver.path(fi, p) else {
                continue;
            };
            let from = f.module_at(p.at).to_vec();
            let binding = if p.global {
                None
            } else {
                resolver
                    .binding(fi, p.at, &from, &p.segs[0])
                    .and_then(|k| resolver.leaf(fi, k))
            };
            out.push(Reference {
                file: fi,
                line: f.line(p.at),
                from,
                written: format!("{}{}", if p.global { "::" } else { "" }, p.segs.join("::")),
                resolved,
                test: f.is_test(p.at),
                glob: false,
                reexport: false,
                binding,
            });
        }
    }
    out
}

/// `file:line` of each re-export or alias a resolution went through.
fn via(tree: &Tree, r: &Resolved) -> String {
    if r.via.is_empty() {
        return String::new();
    }
    let hops: Vec<String> = r
        .via
        .iter()
        .map(|&(f, at)| format!("{}:{}", tree.files[f].path, tree.files[f].line(at)))
        .collect();
    format!(" (via {})", hops.join(", "))
}

/// Every top-level module has a layer; every entry names a module that exists.
pub(super) fn placement(tree: &Tree, layers: &Layers) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &tree.files {
        let top = f.module.first().cloned().unwrap_or_else(|| "lib".into());
        if layers.of(&f.module).is_none() && seen.insert(top.clone()) {
            out.push(Finding {
                rule: Rule::Unplaced,
                file: f.path.clone(),
                line: 0,
                text: format!(
                    "module `{top}` has no layer: place it in LAYERS (tests/it/tidy/mod.rs) and in ARCHITECTURE.md's table"
                ),
            });
        }
    }
    for (entry, l) in &layers.modules {
        let path: Vec<String> = if entry == "lib" {
            Vec::new()
        } else {
            entry.split("::").map(String::from).collect()
        };
        if !tree.is_module(&path) {
            out.push(Finding {
                rule: Rule::Unplaced,
                file: "LAYERS".into(),
                line: 0,
                text: format!(
                    "`{entry}` ({}) is no module of src/: remove or rename the entry",
                    layers.name(*l)
                ),
            });
        }
    }
    out
}

/// The highest-layer crate module a resolution went through (the last of equals).
fn reach<'r>(r: &'r Resolved, layers: &Layers) -> Option<(usize, &'r [String])> {
    r.through
        .iter()
        .filter_map(|m| layers.of(m).map(|l| (l, m.as_slice())))
        .max_by_key(|(l, _)| *l)
}

/// Imports that run to a higher layer, in `use` trees and in code, test code included:
/// every crate module a path goes through counts (a re-export's module as much as the
/// module that defines the item).
pub(super) fn upward(tree: &Tree, refs: &[Reference], layers: &Layers) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for r in refs {
        let (Some(own), Some((to, target))) = (layers.of(&r.from), reach(&r.resolved, layers))
        else {
            continue;
        };
        if r.binding.as_ref().and_then(|b| reach(b, layers)) == Some((to, target)) {
            continue;
        }
        if to <= own || !seen.insert((r.file, r.line, target.to_vec())) {
            continue;
        }
        out.push(Finding {
            rule: Rule::Upward,
            file: tree.files[r.file].path.clone(),
            line: r.line,
            text: format!(
                "`{}` ({}) -> `{}` ({}): `{}`{}",
                Layers::key(&r.from),
                layers.name(own),
                Layers::key(target),
                layers.name(to),
                r.written,
                via(tree, &r.resolved)
            ),
        });
    }
    out
}

/// A dependency between two entries of one folder: the first place that makes it
/// (file index, line).
type Edges = BTreeMap<(String, String), (usize, usize)>;

/// The dependency graph between the entries of each folder, production code only. The
/// entries of a folder are its files and its subfolders (`fsx.rs` and `fsx/` are one
/// entry, the module `fsx`); its own `mod.rs` (`lib.rs` for `src/`) is their parent, not
/// one of them. Entry A depends on entry B when code in A reaches something B defines,
/// re-exports followed to the defining file; a re-export itself is no dependency.
/// Graphs are keyed by the folder's module path.
pub(super) fn folder_edges(tree: &Tree, refs: &[Reference]) -> BTreeMap<Vec<String>, Edges> {
    let mut graphs: BTreeMap<Vec<String>, Edges> = BTreeMap::new();
    for r in refs.iter().filter(|r| !r.test && !r.reexport) {
        let Some(target) = r.resolved.module() else {
            continue;
        };
        let Some(to) = tree.file_of(target) else {
            continue;
        };
        let (a, b) = (&tree.files[r.file].module, &tree.files[to].module);
        let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        if to == r.file || tree.files[to].test_file || common == a.len() || common == b.len() {
            continue;
        }
        let edge = (a[common].clone(), b[common].clone());
        let first = graphs
            .entry(a[..common].to_vec())
            .or_default()
            .entry(edge)
            .or_insert((r.file, r.line));
        if tree.files[r.file].path < tree.files[first.0].path
            || (r.file == first.0 && r.line < first.1)
        {
            *first = (r.file, r.line);
        }
    }
    graphs
}

/// At most this many cycles are listed per folder.
const CYCLES_PER_FOLDER: usize = 200;

/// Every elementary cycle of each folder's graph, each once (from its smallest entry).
pub(super) fn cycles(tree: &Tree, refs: &[Reference]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (parent, edges) in folder_edges(tree, refs) {
        let dir = if parent.is_empty() {
            "src/".to_string()
        } else {
            format!("src/{}/", parent.join("/"))
        };
        // `target.rs` for a file, `source/` for a folder.
        let entry = |name: &str| {
            let file = format!("{dir}{name}.rs");
            if tree.files.iter().any(|f| f.path == file) {
                format!("{name}.rs")
            } else {
                format!("{name}/")
            }
        };
        let mut found: Vec<Vec<String>> = Vec::new();
        let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
        for start in nodes {
            let mut path = vec![start.clone()];
            walk(&edges, start, &mut path, &mut found);
        }
        found.sort_by_key(|c| c.len());
        for cycle in found {
            let mut names: Vec<String> = cycle.iter().map(|n| entry(n)).collect();
            names.push(entry(&cycle[0]));
            let arrows: Vec<String> = cycle
                .iter()
                .zip(cycle.iter().cycle().skip(1))
                .map(|(a, b)| {
                    let (file, line) = edges[&(a.clone(), b.clone())];
                    let path = &tree.files[file].path;
                    format!("{}:{line}", path.strip_prefix(&dir).unwrap_or(path))
                })
                .collect();
            out.push(Finding {
                rule: Rule::Cycle,
                file: dir.clone(),
                line: 0,
                text: format!(
                    "cycle {} (imports at {})",
                    names.join(" -> "),
                    arrows.join(", ")
                ),
            });
        }
    }
    out
}

/// Extends `path` (which starts at its smallest node) through larger nodes only.
fn walk(edges: &Edges, start: &String, path: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
    let last = path.last().expect("a path has a node").clone();
    let next: Vec<&String> = edges
        .keys()
        .filter(|(a, _)| *a == last)
        .map(|(_, b)| b)
        .collect();
    for next in next {
        if found.len() >= CYCLES_PER_FOLDER {
            return;
        }
        if next == start {
            found.push(path.clone());
        } else if next > start && !path.contains(next) {
            path.push(next.clone());
            walk(edges, start, path, found);
            path.pop();
        }
    }
}

/// Whether the external path `p` starts with `prefix` (`std::fs`), segment by segment.
fn starts_with(p: &[String], prefix: &str) -> bool {
    let want: Vec<&str> = prefix.split("::").collect();
    p.len() >= want.len() && p.iter().zip(&want).all(|(a, b)| a == b)
}

/// What of DOMAIN_FORBIDDEN an external path reaches (a glob: what it brings in).
fn forbidden(p: &[String], glob: bool) -> Option<&'static str> {
    DOMAIN_FORBIDDEN.iter().find_map(|(prefix, what)| {
        let reaches = starts_with(p, prefix);
        let brings = glob && {
            let want: Vec<&str> = prefix.split("::").collect();
            p.len() < want.len() && p.iter().zip(&want).all(|(a, b)| a == b)
        };
        (reaches || brings).then_some(*what)
    })
}

/// No sockets, threads, `libc` or `std::fs` in domain modules (test code aside), through
/// any path, alias, re-export or glob.
pub(super) fn domain(tree: &Tree, refs: &[Reference], layers: &Layers) -> Vec<Finding> {
    let is_domain = |m: &[String]| layers.of(m).is_some_and(|l| layers.name(l) == DOMAIN_LAYER);
    let mut out = Vec::new();
    let mut lines = BTreeSet::new();
    for r in refs.iter().filter(|r| !r.test && is_domain(&r.from)) {
        let Res::External(p) = &r.resolved.res else {
            continue;
        };
        let Some(what) = forbidden(p, r.glob) else {
            continue;
        };
        let binding = match r.binding.as_ref().map(|b| &b.res) {
            Some(Res::External(b)) => forbidden(b, false),
            _ => None,
        };
        if binding == Some(what) || !lines.insert((r.file, r.line)) {
            continue;
        }
        let verb = if r.glob { "brings" } else { "reaches" };
        out.push(Finding {
            rule: Rule::Domain,
            file: tree.files[r.file].path.clone(),
            line: r.line,
            text: format!(
                "{what} in the domain (`{}`): `{}` {verb} `{}`{}",
                Layers::key(&r.from),
                r.written,
                p.join("::"),
                via(tree, &r.resolved)
            ),
        });
    }
    // A socket type named bare, however it got into scope.
    for (fi, f) in tree.files.iter().enumerate() {
        for (i, t) in f.toks.iter().enumerate() {
            if !DOMAIN_FORBIDDEN_NAMES.contains(&t.text.as_str())
                || f.is_test(i)
                || !is_domain(f.module_at(i))
                || !lines.insert((fi, t.line))
            {
                continue;
            }
            out.push(Finding {
                rule: Rule::Domain,
                file: f.path.clone(),
                line: t.line,
                text: format!(
                    "a socket in the domain (`{}`): `{}`",
                    Layers::key(f.module_at(i)),
                    t.text
                ),
            });
        }
    }
    out
}

fn owns(owner: &Owner, path: &str) -> bool {
    owner.owners.iter().any(|o| {
        if o.ends_with('/') {
            path.starts_with(o)
        } else {
            path == *o
        }
    })
}

/// Whether `p` has the segments of `needle` (`fs::write`) one after the other.
fn contains_segments(p: &[String], needle: &str) -> bool {
    let want: Vec<&str> = needle.split("::").collect();
    p.windows(want.len())
        .any(|w| w.iter().zip(&want).all(|(a, b)| a == b))
}

/// One owner per resource (invariant 4): each OWNERS entry's paths are reached only in
/// its owner's files. Test code is exempt: it plants what a crash or a peer would leave.
pub(super) fn owners(tree: &Tree, refs: &[Reference]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut say = |file: &str, line: usize, owner: &Owner, what: String| {
        if seen.insert((file.to_string(), line, owner.what)) {
            out.push(Finding {
                rule: Rule::Owner,
                file: file.to_string(),
                line,
                text: format!("{} outside its owner ({what}): {}", owner.what, owner.why),
            });
        }
    };
    for r in refs.iter().filter(|r| !r.test) {
        let path = &tree.files[r.file].path;
        let Res::External(p) = &r.resolved.res else {
            continue;
        };
        for owner in OWNERS.iter().filter(|o| !owns(o, path)) {
            if let Some(hit) = owner.paths.iter().find(|s| contains_segments(p, s)) {
                say(
                    path,
                    r.line,
                    owner,
                    format!("`{}` reaches `{hit}`", r.written),
                );
            }
        }
    }
    // Words no resolution is needed for: a method named like a builder, a crate's name.
    for f in tree.files.iter() {
        for (i, t) in f.toks.iter().enumerate() {
            if f.is_test(i) {
                continue;
            }
            for owner in OWNERS.iter().filter(|o| !owns(o, &f.path)) {
                if owner.words.contains(&t.text.as_str()) {
                    say(&f.path, t.line, owner, format!("`{}`", t.text));
                }
            }
        }
    }
    out
}

/// ARCHITECTURE.md's code map names every file of src/, and nothing that is gone.
pub(super) fn code_map_names_every_file(tree: &Tree, architecture: &str) -> Vec<Finding> {
    let finding = |file: String, line: usize, text: String| Finding {
        rule: Rule::CodeMap,
        file,
        line,
        text,
    };
    let map = match code_map(architecture, tree) {
        Ok(map) => map,
        Err(e) => return vec![finding("ARCHITECTURE.md".into(), 0, e)],
    };
    let mut out: Vec<Finding> = tree
        .files
        .iter()
        .filter(|f| !map.named.contains(&f.path))
        .map(|f| {
            finding(
                f.path.clone(),
                0,
                "not named in ARCHITECTURE.md's code map: add it to its module's row".into(),
            )
        })
        .collect();
    out.extend(map.stale.into_iter().map(|(line, what)| {
        finding(
            "ARCHITECTURE.md".into(),
            line,
            format!("the code map names {what}, which is no file or folder of src/"),
        )
    }));
    out
}

/// No production file over MAX_FILE_LINES lines and no production function over
/// MAX_FN_LINES, but the `exceptions` (SIZE_EXCEPTIONS), each of which must still be needed.
pub(super) fn sizes(tree: &Tree, exceptions: &[SizeException]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut used = BTreeSet::new();
    let mut excepted = |file: &str, item: &str| {
        let hit = exceptions
            .iter()
            .position(|(f, i, _)| *f == file && *i == item);
        hit.inspect(|k| {
            used.insert(*k);
        })
        .is_some()
    };
    for f in tree.files.iter().filter(|f| !f.test_file) {
        let test_lines: BTreeSet<usize> = f
            .test_ranges
            .iter()
            .flat_map(|&(a, b)| f.line(a)..=f.line(b))
            .collect();
        let production = f.lines.saturating_sub(test_lines.len());
        if production > MAX_FILE_LINES && !excepted(&f.path, "") {
            out.push(Finding {
                rule: Rule::Size,
                file: f.path.clone(),
                line: 0,
                text: format!(
                    "{production} production lines (the limit is {MAX_FILE_LINES}; test code not counted)"
                ),
            });
        }
        for func in f.fns.iter().filter(|func| !f.is_test(func.at)) {
            let length = func.last_line + 1 - func.first_line;
            if length > MAX_FN_LINES && !excepted(&f.path, &func.name) {
                out.push(Finding {
                    rule: Rule::Size,
                    file: f.path.clone(),
                    line: func.first_line,
                    text: format!(
                        "fn `{}` has {length} lines (the limit is {MAX_FN_LINES})",
                        func.name
                    ),
                });
            }
        }
    }
    for (k, (file, item, _)) in exceptions.iter().enumerate() {
        if !used.contains(&k) {
            out.push(Finding {
                rule: Rule::Size,
                file: "SIZE_EXCEPTIONS".into(),
                line: 0,
                text: format!(
                    "({file:?}, {item:?}) is within the limits or gone: remove the entry"
                ),
            });
        }
    }
    out
}
