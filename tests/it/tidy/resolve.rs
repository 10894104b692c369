//! Name resolution, as rustc does it for modules (Rust 2018 paths): what each `use` leaf
//! and each path written in code reaches. `crate::`, `self::`, `super::super::`, a
//! leading `::`, the crate's own name (in `main.rs`), and a first segment that is a name
//! in scope: a `use` binding (a block's, then the module's), an item or child module of
//! the module, a name a glob import brings (`use crate::*`, `use super::*`,
//! `use std::net::*`), else an external crate. Re-exports (`pub use self::x::*`,
//! `pub(crate) use super::y as z`, uniform paths like `pub use child::f`) and type aliases
//! are followed to the module that defines the item, so an import reaches what it really
//! names, however many hops away.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use super::tree::{PathRef, Tree};

/// What a path reaches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Res {
    /// A module of the crate.
    Module(Vec<String>),
    /// An item defined in this module of the crate (or something below the item: a
    /// variant, an associated function).
    Item(Vec<String>),
    /// Outside the crate, as a full path: `["std", "net", "TcpStream", "connect"]`.
    External(Vec<String>),
}

/// A resolution: what the path reaches, the crate modules whose names it went through
/// (the last one holds what it reaches: the defining module of an item, or the module
/// whose alias or re-export stands for something outside the crate), and the re-exports
/// and aliases it followed (file index, token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Resolved {
    pub res: Res,
    pub through: Vec<Vec<String>>,
    pub via: Vec<(usize, usize)>,
}

impl Resolved {
    fn plain(res: Res) -> Resolved {
        Resolved {
            res,
            through: Vec::new(),
            via: Vec::new(),
        }
    }

    /// The crate module it reaches in the end: the file it depends on.
    pub fn module(&self) -> Option<&[String]> {
        self.through.last().map(Vec::as_slice)
    }

    /// Takes on what `next` went through.
    fn follow(&mut self, next: Resolved) {
        self.res = next.res;
        self.through.extend(next.through);
        self.via.extend(next.via);
    }
}

#[derive(Clone, PartialEq, Eq)]
enum Key {
    Leaf(usize, usize),
    Name(Vec<String>, String),
    Alias(usize, usize),
}

pub(super) struct Resolver<'t> {
    tree: &'t Tree,
    /// The crate's own name (`replgate`): how `main.rs` reaches the library.
    crate_name: String,
    /// External crates (`std`, `core`, `alloc` and the dependencies).
    externs: BTreeSet<String>,
    memo: RefCell<HashMap<(usize, usize), Option<Resolved>>>,
    active: RefCell<Vec<Key>>,
}

impl<'t> Resolver<'t> {
    pub fn new(tree: &'t Tree, crate_name: &str, externs: &[String]) -> Resolver<'t> {
        let mut all: BTreeSet<String> = ["std", "core", "alloc"].map(String::from).into();
        all.extend(externs.iter().map(|e| e.replace('-', "_")));
        Resolver {
            tree,
            crate_name: crate_name.to_string(),
            externs: all,
            memo: RefCell::new(HashMap::new()),
            active: RefCell::new(Vec::new()),
        }
    }

    /// Runs `f` unless `key` is already being resolved (an import cycle): then `None`.
    fn guarded<T>(&self, key: Key, f: impl FnOnce() -> Option<T>) -> Option<T> {
        if self.active.borrow().contains(&key) {
            return None;
        }
        self.active.borrow_mut().push(key);
        let out = f();
        self.active.borrow_mut().pop();
        out
    }

    /// What `use` leaf `idx` of file `file` names (for a glob: the module or item it
    /// opens).
    pub fn leaf(&self, file: usize, idx: usize) -> Option<Resolved> {
        if let Some(done) = self.memo.borrow().get(&(file, idx)) {
            return done.clone();
        }
        let leaf = &self.tree.files[file].uses[idx];
        let out = self.guarded(Key::Leaf(file, idx), || {
            self.resolve(file, leaf.at, &leaf.module, &leaf.path)
        });
        // A result cut short by a cycle is not remembered.
        if self.active.borrow().is_empty() || out.is_some() {
            self.memo.borrow_mut().insert((file, idx), out.clone());
        }
        out
    }

    /// What a path written in code reaches.
    pub fn path(&self, file: usize, p: &PathRef) -> Option<Resolved> {
        let f = &self.tree.files[file];
        let module = f.module_at(p.at).to_vec();
        if p.global {
            return Some(Resolved::plain(Res::External(p.segs.clone())));
        }
        self.resolve(file, p.at, &module, &p.segs)
    }

    /// The `use` leaf that binds `name` at token `at` of `file` (innermost scope first).
    pub fn binding(&self, file: usize, at: usize, module: &[String], name: &str) -> Option<usize> {
        self.tree.files[file]
            .uses
            .iter()
            .enumerate()
            .filter(|(_, u)| {
                !u.glob
                    && u.name.as_deref() == Some(name)
                    && u.module == module
                    && (u.scope.0..=u.scope.1).contains(&at)
            })
            .min_by_key(|(_, u)| u.scope.1 - u.scope.0)
            .map(|(k, _)| k)
    }

    /// The root a `crate::` path starts from: the library's, or the binary's in `main.rs`.
    fn crate_root(&self, file: usize) -> Vec<String> {
        let m = &self.tree.files[file].module;
        if m.first().is_some_and(|s| s == "main") {
            vec!["main".to_string()]
        } else {
            Vec::new()
        }
    }

    fn resolve(
        &self,
        file: usize,
        at: usize,
        module: &[String],
        segs: &[String],
    ) -> Option<Resolved> {
        let first = segs.first()?;
        if first == "::" {
            return Some(Resolved::plain(Res::External(segs[1..].to_vec())));
        }
        let (mut cur, mut rest) = match first.as_str() {
            "crate" => (Resolved::plain(Res::Module(self.crate_root(file))), 1),
            "self" => (Resolved::plain(Res::Module(module.to_vec())), 1),
            "super" => {
                let ups = segs.iter().take_while(|s| *s == "super").count();
                if ups > module.len() {
                    return None;
                }
                let base = module[..module.len() - ups].to_vec();
                (Resolved::plain(Res::Module(base)), ups)
            }
            "Self" => return None,
            name => (self.in_scope(file, at, module, name)?, 1),
        };
        while rest < segs.len() {
            let seg = &segs[rest];
            rest += 1;
            match cur.res {
                Res::Module(ref g) => {
                    let g = g.clone();
                    if !g.is_empty() {
                        cur.through.push(g.clone());
                    }
                    match self.in_module(&g, seg) {
                        Some(next) => cur.follow(next),
                        None => {
                            cur.res = Res::Item(g);
                            break;
                        }
                    }
                }
                Res::External(ref mut p) => p.push(seg.clone()),
                Res::Item(_) => break,
            }
        }
        if let Res::Module(m) | Res::Item(m) = &cur.res {
            let root_itself = m.is_empty() && matches!(cur.res, Res::Module(_));
            if !root_itself && cur.through.last() != Some(m) {
                cur.through.push(m.clone());
            }
        }
        Some(cur)
    }

    /// A first segment: a `use` binding, an item of the module, a glob's name, an
    /// external crate.
    fn in_scope(&self, file: usize, at: usize, module: &[String], name: &str) -> Option<Resolved> {
        if let Some(k) = self.binding(file, at, module, name) {
            if let Some(r) = self.leaf(file, k) {
                return Some(r);
            }
        }
        if let Some(r) = self.defined(module, name) {
            return Some(r);
        }
        let f = &self.tree.files[file];
        let mut globs: Vec<usize> = (0..f.uses.len())
            .filter(|&k| {
                let u = &f.uses[k];
                u.glob && u.module == module && (u.scope.0..=u.scope.1).contains(&at)
            })
            .collect();
        globs.sort_by_key(|&k| f.uses[k].scope.1 - f.uses[k].scope.0);
        let mut external = None;
        for k in globs {
            let Some(g) = self.leaf(file, k) else {
                continue;
            };
            match g.res {
                Res::Module(m) => {
                    if let Some(r) = self.in_module(&m, name) {
                        let mut out = Resolved {
                            res: Res::Module(m.clone()),
                            through: [g.through, vec![m]].concat(),
                            via: g.via,
                        };
                        out.through.retain(|t| !t.is_empty());
                        out.follow(r);
                        return Some(out);
                    }
                }
                Res::External(p) if external.is_none() && !self.externs.contains(name) => {
                    external = Some(Resolved {
                        res: Res::External([p, vec![name.to_string()]].concat()),
                        through: g.through,
                        via: g.via,
                    });
                }
                _ => {}
            }
        }
        if name == self.crate_name {
            return Some(Resolved::plain(Res::Module(Vec::new())));
        }
        Some(external.unwrap_or_else(|| Resolved::plain(Res::External(vec![name.to_string()]))))
    }

    /// `name` as a child module or an item of `module` (a type alias followed).
    fn defined(&self, module: &[String], name: &str) -> Option<Resolved> {
        let child = [module, &[name.to_string()]].concat();
        if self.tree.is_module(&child) {
            return Some(Resolved::plain(Res::Module(child)));
        }
        if !self.tree.defines(module, name) {
            return None;
        }
        let file = self.tree.file_of(module)?;
        let f = &self.tree.files[file];
        let alias = f
            .aliases
            .iter()
            .enumerate()
            .find(|(_, a)| a.0 == module && a.1 == name);
        if let Some((k, (_, _, path, at))) = alias {
            let target = self.guarded(Key::Alias(file, k), || {
                self.resolve(file, *at, module, path)
            });
            if let Some(r) = target {
                let mut out = Resolved::plain(Res::Item(module.to_vec()));
                out.through.push(module.to_vec());
                out.via.push((file, *at));
                out.follow(r);
                if matches!(out.res, Res::External(_)) {
                    // The alias's module holds what the path reaches.
                    out.through.push(module.to_vec());
                }
                return Some(out);
            }
        }
        Some(Resolved::plain(Res::Item(module.to_vec())))
    }

    /// `module::name` from outside: a child, an item, or what the module imports under
    /// that name (its re-exports, glob ones included).
    fn in_module(&self, module: &[String], name: &str) -> Option<Resolved> {
        let key = Key::Name(module.to_vec(), name.to_string());
        self.guarded(key, || {
            if let Some(r) = self.defined(module, name) {
                return Some(r);
            }
            let &(file, _) = self.tree.modules.get(module)?;
            let f = &self.tree.files[file];
            let at_module = |k: &usize| !f.uses[*k].in_block && f.uses[*k].module == module;
            let named = (0..f.uses.len())
                .filter(at_module)
                .find(|&k| !f.uses[k].glob && f.uses[k].name.as_deref() == Some(name));
            let hop = |k: usize, r: Resolved| {
                let mut out = Resolved::plain(Res::Module(module.to_vec()));
                out.through.push(module.to_vec());
                out.via.push((file, f.uses[k].at));
                out.follow(r);
                if matches!(out.res, Res::External(_)) {
                    // A re-export of something outside the crate: this module holds it.
                    out.through.push(module.to_vec());
                }
                out
            };
            if let Some(k) = named {
                return Some(hop(k, self.leaf(file, k)?));
            }
            let mut external = None;
            for k in (0..f.uses.len()).filter(|k| at_module(k) && f.uses[*k].glob) {
                let Some(g) = self.leaf(file, k) else {
                    continue;
                };
                match g.res.clone() {
                    Res::Module(m) => {
                        if let Some(r) = self.in_module(&m, name) {
                            let mut g = g;
                            g.through.push(m);
                            g.follow(r);
                            return Some(hop(k, g));
                        }
                    }
                    Res::External(p) if external.is_none() && !self.externs.contains(name) => {
                        let mut g = g;
                        g.res = Res::External([p, vec![name.to_string()]].concat());
                        external = Some(hop(k, g));
                    }
                    _ => {}
                }
            }
            external
        })
    }
}
