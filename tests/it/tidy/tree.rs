//! The crate as the checker sees it: every `.rs` file below `src/` with its module path,
//! tokens, scopes (inline modules and blocks), the items each module defines, every leaf
//! of every `use` tree, every path written in code, its functions and its test code.
//!
//! Modules come from the file system (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`,
//! `src/lib.rs` the crate root, `src/main.rs` the binary's root `main`) and from inline
//! `mod x { .. }` blocks; `#[path]` attributes are not followed. Test code is a
//! `#[cfg(test)]` (or `#[cfg(all(test, ..))]`) item, a file declared by
//! `#[cfg(test)] mod x;` (and everything below it), a `tests.rs` file, or a file that
//! starts with `#![cfg(test)]`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::lex::{tokenize, Kind, Token};

/// One file of the tree.
pub(super) struct File {
    /// Relative to the repository, with `/`: `src/pairing/target.rs`.
    pub path: String,
    /// The file's module: `["pairing", "target"]`; `[]` for `src/lib.rs`, `["main"]` for
    /// `src/main.rs`.
    pub module: Vec<String>,
    pub toks: Vec<Token>,
    /// Lines in the file.
    pub lines: usize,
    /// The whole file is test code.
    pub test_file: bool,
    /// Token ranges (inclusive) of `#[cfg(test)]` items.
    pub test_ranges: Vec<(usize, usize)>,
    /// For each opening bracket, the index of its closing one.
    pub closing: BTreeMap<usize, usize>,
    /// Inline modules: (`{`, `}`, module path).
    pub inline_mods: Vec<(usize, usize, Vec<String>)>,
    /// `mod x;` declarations: (module path, declared under `#[cfg(test)]`).
    pub declared: Vec<(Vec<String>, bool)>,
    /// Names a module defines (functions, types, traits, constants, statics, macros,
    /// modules), by module path.
    pub items: BTreeMap<Vec<String>, BTreeSet<String>>,
    /// `type Name = some::path<..>;` at module level: (module, name, the path, its first
    /// token).
    pub aliases: Vec<(Vec<String>, String, Vec<String>, usize)>,
    pub uses: Vec<UseLeaf>,
    pub paths: Vec<PathRef>,
    pub fns: Vec<FnSpan>,
}

/// One leaf of a `use` tree: `use a::{b, c::d as e, f::*};` has three.
#[derive(Clone, Debug)]
pub(super) struct UseLeaf {
    /// The token of the leaf's last segment (its line is the one reported).
    pub at: usize,
    /// The path as written, `["super", "x", "Y"]`; a leading `::` is kept as `"::"`.
    pub path: Vec<String>,
    /// The name it binds (`None` for `as _` and for a glob).
    pub name: Option<String>,
    pub glob: bool,
    /// `pub use` / `pub(crate) use`: a re-export.
    pub public: bool,
    /// Tokens where the binding is visible (its module's, or the block's it is in).
    pub scope: (usize, usize),
    /// Declared in a block rather than at module level.
    pub in_block: bool,
    /// The module it belongs to.
    pub module: Vec<String>,
}

/// A use tree's leaf as parsed: (its last token, path, bound name, glob).
type Leaf = (usize, Vec<String>, Option<String>, bool);

/// A path of two or more segments written in code: `crate::remote::x`, `store::Store`.
#[derive(Clone, Debug)]
pub(super) struct PathRef {
    pub at: usize,
    pub segs: Vec<String>,
    /// Began with `::` (an external crate).
    pub global: bool,
}

/// A function with a body.
#[derive(Clone, Debug)]
pub(super) struct FnSpan {
    pub name: String,
    /// The `fn` token.
    pub at: usize,
    pub first_line: usize,
    pub last_line: usize,
}

/// Every file of a tree, and which modules exist.
pub(super) struct Tree {
    pub files: Vec<File>,
    /// Module path → (file index, token range of the module in that file).
    pub modules: BTreeMap<Vec<String>, (usize, (usize, usize))>,
}

impl Tree {
    /// Every `.rs` file below `src`, read from disk. Paths are reported relative to the
    /// folder holding `src` (as `src/...`).
    pub fn read(src: &Path) -> Tree {
        let mut found = Vec::new();
        let mut dirs = vec![src.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("read the folder {}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path.strip_prefix(src).expect("below src");
                    let rel = rel.to_string_lossy().replace('\\', "/");
                    let text = std::fs::read_to_string(&path)
                        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                    found.push((format!("src/{rel}"), text));
                }
            }
        }
        Tree::from_sources(found)
    }

    /// A tree from (path, text) pairs, paths as `src/...`.
    pub fn from_sources<P: Into<String>, T: AsRef<str>>(sources: Vec<(P, T)>) -> Tree {
        let mut files: Vec<File> = sources
            .into_iter()
            .map(|(p, t)| File::new(p.into(), t.as_ref()))
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        // A file declared by `#[cfg(test)] mod x;` is test code, with all below it.
        let test_modules: Vec<Vec<String>> = files
            .iter()
            .flat_map(|f| f.declared.iter().filter(|d| d.1).map(|d| d.0.clone()))
            .collect();
        for f in &mut files {
            if test_modules.iter().any(|t| f.module.starts_with(t)) || f.path.ends_with("/tests.rs")
            {
                f.test_file = true;
            }
        }
        let mut modules = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            modules.insert(f.module.clone(), (i, (0, f.toks.len())));
            for (open, close, m) in &f.inline_mods {
                modules.insert(m.clone(), (i, (*open, *close)));
            }
        }
        Tree { files, modules }
    }

    pub fn is_module(&self, m: &[String]) -> bool {
        self.modules.contains_key(m)
    }

    /// The file holding module `m` (or, for an unknown one, its nearest known parent).
    pub fn file_of(&self, m: &[String]) -> Option<usize> {
        (0..=m.len())
            .rev()
            .find_map(|n| self.modules.get(&m[..n]).map(|(f, _)| *f))
    }

    /// Whether module `m` defines `name` as an item.
    pub fn defines(&self, m: &[String], name: &str) -> bool {
        let Some(&(file, _)) = self.modules.get(m) else {
            return false;
        };
        self.files[file]
            .items
            .get(m)
            .is_some_and(|names| names.contains(name))
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`.
pub(super) fn module_of(path: &str) -> Vec<String> {
    let rel = path.strip_prefix("src/").unwrap_or(path);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = rel.split('/').map(String::from).collect();
    if parts.last().is_some_and(|p| p == "mod") && parts.len() > 1 {
        parts.pop();
    }
    if parts == ["lib"] {
        parts.clear();
    }
    parts
}

/// Keywords that start an item whose name follows.
const ITEM_KEYWORDS: &[&str] = &[
    "fn", "struct", "enum", "trait", "type", "const", "static", "mod",
];

impl File {
    pub fn new(path: String, text: &str) -> File {
        let toks = tokenize(text);
        let module = module_of(&path);
        let mut file = File {
            lines: text.lines().count(),
            path,
            module,
            toks,
            test_file: false,
            test_ranges: Vec::new(),
            closing: BTreeMap::new(),
            inline_mods: Vec::new(),
            declared: Vec::new(),
            items: BTreeMap::new(),
            aliases: Vec::new(),
            uses: Vec::new(),
            paths: Vec::new(),
            fns: Vec::new(),
        };
        file.match_brackets();
        file.scan();
        file
    }

    pub fn text(&self, i: usize) -> &str {
        self.toks.get(i).map(|t| t.text.as_str()).unwrap_or("")
    }

    fn is_ident(&self, i: usize) -> bool {
        self.toks.get(i).is_some_and(|t| t.kind == Kind::Ident)
    }

    pub fn line(&self, i: usize) -> usize {
        self.toks
            .get(i)
            .or(self.toks.last())
            .map(|t| t.line)
            .unwrap_or(1)
    }

    pub fn is_test(&self, at: usize) -> bool {
        self.test_file
            || self
                .test_ranges
                .iter()
                .any(|(a, b)| (*a..=*b).contains(&at))
    }

    /// The module at token `at`: the file's, or the innermost inline module around it.
    pub fn module_at(&self, at: usize) -> &[String] {
        self.inline_mods
            .iter()
            .filter(|(a, b, _)| (*a..=*b).contains(&at))
            .max_by_key(|(_, _, m)| m.len())
            .map(|(_, _, m)| m.as_slice())
            .unwrap_or(&self.module)
    }

    fn match_brackets(&mut self) {
        let mut stack = Vec::new();
        for (i, t) in self.toks.iter().enumerate() {
            if t.kind != Kind::Punct {
                continue;
            }
            match t.text.as_str() {
                "{" | "(" | "[" => stack.push(i),
                "}" | ")" | "]" => {
                    if let Some(open) = stack.pop() {
                        self.closing.insert(open, i);
                    }
                }
                _ => {}
            }
        }
    }

    /// The closing bracket of the one opened at `open` (the end of the file if unmatched).
    pub fn close(&self, open: usize) -> usize {
        self.closing
            .get(&open)
            .copied()
            .unwrap_or(self.toks.len().saturating_sub(1))
    }

    /// `#[cfg(test)]`, `#![cfg(test)]` or `#[cfg(all(test, ..))]` at `i` (the `#`).
    fn cfg_test_at(&self, i: usize) -> bool {
        if self.text(i) != "#" {
            return false;
        }
        let inner = usize::from(self.text(i + 1) == "!");
        let at = |k: usize, s: &str| self.text(i + 1 + inner + k) == s;
        at(0, "[")
            && at(1, "cfg")
            && at(2, "(")
            && ((at(3, "test") && at(4, ")")) || (at(3, "all") && at(4, "(") && at(5, "test")))
    }

    /// One pass over the tokens: scopes, items, `use` trees, paths, test code, functions.
    fn scan(&mut self) {
        let n = self.toks.len();
        // Scopes: (open token, close token, Some(module) for a module, None for a block).
        let mut scopes: Vec<(usize, usize, Option<Vec<String>>)> =
            vec![(0, n, Some(self.module.clone()))];
        let mut i = 0;
        while i < n {
            while scopes.len() > 1 && scopes.last().is_some_and(|s| i > s.1) {
                scopes.pop();
            }
            let module = scopes
                .iter()
                .rev()
                .find_map(|s| s.2.clone())
                .unwrap_or_default();
            let at_module_level = scopes.last().is_some_and(|s| s.2.is_some());
            let t = self.text(i).to_string();
            if t == "#" && self.text(i + 1) == "!" && self.cfg_test_at(i) {
                // `#![cfg(test)]`: the module it stands in is test code.
                match scopes.last() {
                    Some(&(open, close, Some(_))) if scopes.len() > 1 => {
                        self.test_ranges.push((open, close));
                    }
                    _ if scopes.len() == 1 => self.test_file = true,
                    _ => {}
                }
            }
            if t == "#" && self.text(i + 1) != "!" && self.cfg_test_at(i) {
                self.test_item(i);
            }
            if t == "{" {
                let close = self.close(i);
                let is_mod = i >= 2 && self.text(i - 2) == "mod" && self.is_ident(i - 1);
                let inner = is_mod.then(|| {
                    let mut m = module.clone();
                    m.push(self.text(i - 1).to_string());
                    m
                });
                if let Some(m) = &inner {
                    self.inline_mods.push((i, close, m.clone()));
                    self.items.entry(m.clone()).or_default();
                }
                scopes.push((i, close, inner));
            } else if t == "use"
                && self.toks[i].kind == Kind::Ident
                && self.text(i + 1) != "<"
                && !matches!(self.text(i.wrapping_sub(1)), "." | "+")
            {
                let scope = scopes.last().map(|s| (s.0, s.1)).unwrap_or((0, n));
                i = self.use_tree(i, scope, !at_module_level, module);
                continue;
            } else if t == "extern" && self.text(i + 1) == "crate" && self.is_ident(i + 2) {
                let scope = scopes.last().map(|s| (s.0, s.1)).unwrap_or((0, n));
                self.extern_crate(i, scope, !at_module_level, module.clone());
            } else if at_module_level && ITEM_KEYWORDS.contains(&t.as_str()) {
                self.item(i, &module);
            } else if at_module_level && t == "macro_rules" && self.text(i + 1) == "!" {
                let name = self.text(i + 2).to_string();
                self.items.entry(module.clone()).or_default().insert(name);
            }
            if t == "fn" && self.is_ident(i + 1) {
                self.function(i);
            }
            self.path_at(i);
            i += 1;
        }
    }

    /// An item keyword at module level: remember the name (and a type alias's target).
    fn item(&mut self, i: usize, module: &[String]) {
        let kw = self.text(i).to_string();
        let mut k = i + 1;
        if kw == "static" && self.text(k) == "mut" {
            k += 1;
        }
        if !self.is_ident(k) || matches!(self.text(k), "fn" | "unsafe" | "extern" | "async" | "_") {
            return;
        }
        // `fn(u8) -> u8` is a type, `const X: fn()` has its name before.
        if kw == "fn" && self.text(k) == "(" {
            return;
        }
        let name = self.text(k).to_string();
        if kw == "mod" && self.text(k + 1) == ";" {
            let test = self.is_test(i);
            let mut m = module.to_vec();
            if m == ["main"] {
                m.clear();
            }
            m.push(name.clone());
            self.declared.push((m, test));
        }
        if kw == "type" {
            // `type Name<..> = a::b::C<..>;`
            let mut j = k + 1;
            if self.text(j) == "<" {
                let mut depth = 0;
                while j < self.toks.len() {
                    match self.text(j) {
                        "<" => depth += 1,
                        ">" => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                    if depth == 0 {
                        break;
                    }
                }
            }
            if self.text(j) == "=" {
                let mut path = Vec::new();
                j += 1;
                let at = j;
                if self.text(j) == "::" {
                    path.push("::".to_string());
                    j += 1;
                }
                while self.is_ident(j) {
                    path.push(self.text(j).to_string());
                    if self.text(j + 1) != "::" {
                        break;
                    }
                    j += 2;
                }
                if !path.is_empty() {
                    self.aliases.push((module.to_vec(), name.clone(), path, at));
                }
            }
        }
        self.items.entry(module.to_vec()).or_default().insert(name);
    }

    /// A `#[cfg(test)]` attribute at `i`: the item after it (its further attributes, then
    /// up to its `;` or its block) is test code.
    fn test_item(&mut self, i: usize) {
        let n = self.toks.len();
        let mut j = self.close(i + 1) + 1;
        while self.text(j) == "#" && self.text(j + 1) == "[" {
            j = self.close(j + 1) + 1;
        }
        while j < n && self.text(j) != ";" && self.text(j) != "{" {
            if matches!(self.text(j), "(" | "[") {
                j = self.close(j);
            }
            j += 1;
        }
        if self.text(j) == "{" {
            j = self.close(j);
        }
        self.test_ranges.push((i, j));
    }

    /// A function at the `fn` token `i` with its body, if it has one.
    fn function(&mut self, i: usize) {
        let mut j = i + 2;
        while j < self.toks.len() {
            match self.text(j) {
                ";" => return,
                "{" => break,
                "(" | "[" => j = self.close(j),
                _ => {}
            }
            j += 1;
        }
        if j >= self.toks.len() {
            return;
        }
        let end = self.close(j);
        self.fns.push(FnSpan {
            name: self.text(i + 1).to_string(),
            at: i,
            first_line: self.line(i),
            last_line: self.line(end),
        });
    }

    /// A path of two or more segments starting at `i`, if one does.
    fn path_at(&mut self, i: usize) {
        let prev = self.text(i.wrapping_sub(1));
        // `<T as Trait>::f` and `x::<T>::f` go on a path; `-> ::std::x` and `=> ::x` start one.
        let arrow = prev == ">" && matches!(self.text(i.wrapping_sub(2)), "-" | "=");
        let global = self.text(i) == "::"
            && self.is_ident(i + 1)
            && !(i > 0 && (self.is_ident(i - 1) || (prev == ">" && !arrow) || prev == ")"));
        let start = if global { i + 1 } else { i };
        if !global {
            if !self.is_ident(i) || self.text(i + 1) != "::" || !self.is_ident(i + 2) {
                return;
            }
            // `a::b` is not a path start; nor `x.f::<T>()`; `$crate` counts as `crate`.
            if matches!(prev, "::" | ".") {
                return;
            }
            // `pub(in crate::x)` names a visibility, not a dependency.
            if prev == "in" && self.text(i.wrapping_sub(2)) == "(" {
                return;
            }
        }
        let mut segs = vec![self.text(start).to_string()];
        let mut j = start;
        while self.text(j + 1) == "::" && self.is_ident(j + 2) {
            segs.push(self.text(j + 2).to_string());
            j += 2;
        }
        if global || segs.len() > 1 {
            self.paths.push(PathRef {
                at: start,
                segs,
                global,
            });
        }
    }

    /// `extern crate name as alias;` binds `alias` to the crate (`self`: this crate).
    fn extern_crate(
        &mut self,
        i: usize,
        scope: (usize, usize),
        in_block: bool,
        module: Vec<String>,
    ) {
        let name = self.text(i + 2).to_string();
        let path = if name == "self" {
            vec!["crate".to_string()]
        } else {
            vec!["::".to_string(), name.clone()]
        };
        let alias = if self.text(i + 3) == "as" {
            self.text(i + 4).to_string()
        } else {
            name
        };
        self.uses.push(UseLeaf {
            at: i + 2,
            path,
            name: Some(alias).filter(|a| a != "_"),
            glob: false,
            public: self.text(i.wrapping_sub(1)) == "pub",
            scope,
            in_block,
            module,
        });
    }

    /// The `use` statement at `i`; returns the token after its `;`.
    fn use_tree(
        &mut self,
        i: usize,
        scope: (usize, usize),
        in_block: bool,
        module: Vec<String>,
    ) -> usize {
        let public = {
            let mut k = i.wrapping_sub(1);
            if self.text(k) == ")" {
                // pub(crate), pub(super), pub(in path)
                k = (0..k).rev().find(|&o| self.close(o) == k).unwrap_or(k);
                k = k.wrapping_sub(1);
            }
            self.text(k) == "pub"
        };
        let mut j = i + 1;
        let mut prefix = Vec::new();
        if self.text(j) == "::" {
            prefix.push("::".to_string());
            j += 1;
        }
        let mut leaves = Vec::new();
        self.use_subtree(&mut j, prefix, &mut leaves);
        for (at, path, name, glob) in leaves {
            self.uses.push(UseLeaf {
                at,
                path,
                name,
                glob,
                public,
                scope,
                in_block,
                module: module.clone(),
            });
        }
        while j < self.toks.len() && self.text(j) != ";" {
            j += 1;
        }
        j + 1
    }

    /// Expands the use tree at `*j` under `path` into leaves.
    fn use_subtree(&self, j: &mut usize, mut path: Vec<String>, out: &mut Vec<Leaf>) {
        loop {
            match self.text(*j) {
                "{" => {
                    *j += 1;
                    while !matches!(self.text(*j), "}" | "" | ";") {
                        self.use_subtree(j, path.clone(), out);
                        if self.text(*j) == "," {
                            *j += 1;
                        }
                    }
                    *j += 1;
                    return;
                }
                "*" => {
                    out.push((*j, path, None, true));
                    *j += 1;
                    return;
                }
                word if self.is_ident(*j) => {
                    let at = *j;
                    let in_group_self = word == "self" && !path.iter().all(|s| s == "::");
                    if !in_group_self {
                        path.push(word.to_string());
                    }
                    *j += 1;
                    if self.text(*j) == "::" {
                        *j += 1;
                        continue;
                    }
                    let mut name = path.last().cloned().filter(|n| n != "::");
                    if self.text(*j) == "as" {
                        name = Some(self.text(*j + 1).to_string()).filter(|n| n != "_");
                        *j += 2;
                    }
                    out.push((at, path, name, false));
                    return;
                }
                _ => return,
            }
        }
    }
}
