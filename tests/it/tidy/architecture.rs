//! What the checker reads from ARCHITECTURE.md: the layer table (section "Layers") and
//! the files the code map (section "Code map") names.

use std::collections::BTreeSet;

use super::tree::Tree;

/// A layer table: names lowest first, and each module's layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Layers {
    pub names: Vec<String>,
    /// (`a` or `a::b`, layer index); `lib` is the crate root.
    pub modules: Vec<(String, usize)>,
}

impl Layers {
    pub fn from_table(table: &[(&str, &[&str])]) -> Layers {
        Layers {
            names: table.iter().map(|(n, _)| n.to_string()).collect(),
            modules: table
                .iter()
                .enumerate()
                .flat_map(|(l, (_, ms))| ms.iter().map(move |m| (m.to_string(), l)))
                .collect(),
        }
    }

    /// The table of ARCHITECTURE.md's "Layers" section, rows lowest first:
    /// `| 0 base | `wire`, `model` (and `x`, why) | may |`. Names in a parenthesis that
    /// starts with "but" are exceptions placed in another row, and are skipped here.
    pub fn from_architecture(text: &str) -> Result<Layers, String> {
        let rows = table_rows(section(text, "Layers").ok_or("no \"## Layers\" section")?);
        let mut layers = Layers {
            names: Vec::new(),
            modules: Vec::new(),
        };
        for cells in rows {
            let Some(first) = cells.first() else { continue };
            let name = first.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
            let modules = backticked_outside_but(cells.get(1).map(String::as_str).unwrap_or(""));
            if name.is_empty() || modules.is_empty() {
                return Err(format!(
                    "a \"Layers\" row without a layer or modules: {cells:?}"
                ));
            }
            let l = layers.names.len();
            layers.names.push(name.to_string());
            layers.modules.extend(modules.into_iter().map(|m| (m, l)));
        }
        if layers.names.is_empty() {
            return Err("the \"Layers\" section has no table".into());
        }
        Ok(layers)
    }

    /// The table's key for a module: `lib` for the crate root, else `a::b`.
    pub fn key(module: &[String]) -> String {
        if module.is_empty() {
            "lib".into()
        } else {
            module.join("::")
        }
    }

    /// The layer of `module`: its longest listed prefix.
    pub fn of(&self, module: &[String]) -> Option<usize> {
        if module.is_empty() {
            return self.find("lib");
        }
        (1..=module.len())
            .rev()
            .find_map(|n| self.find(&module[..n].join("::")))
    }

    fn find(&self, key: &str) -> Option<usize> {
        self.modules.iter().find(|(m, _)| m == key).map(|(_, l)| *l)
    }

    pub fn name(&self, l: usize) -> &str {
        &self.names[l]
    }

    /// `base: wire, model | resources: store | …`
    pub fn describe(&self) -> String {
        (0..self.names.len())
            .map(|l| {
                let ms: Vec<&str> = self
                    .modules
                    .iter()
                    .filter(|(_, x)| *x == l)
                    .map(|(m, _)| m.as_str())
                    .collect();
                format!("{}: {}", self.names[l], ms.join(", "))
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// How `other` differs from this table (empty when they are equal).
    pub fn differences(&self, other: &Layers) -> Vec<String> {
        let mut out = Vec::new();
        if self.names != other.names {
            out.push(format!(
                "layer names differ: {:?} here, {:?} there",
                self.names, other.names
            ));
        }
        let here: BTreeSet<(&str, &str)> = self
            .modules
            .iter()
            .map(|(m, l)| (m.as_str(), self.names[*l].as_str()))
            .collect();
        let there: BTreeSet<(&str, &str)> = other
            .modules
            .iter()
            .map(|(m, l)| (m.as_str(), other.names[*l].as_str()))
            .collect();
        for (m, l) in here.difference(&there) {
            out.push(format!("`{m}` is {l} here, not there"));
        }
        for (m, l) in there.difference(&here) {
            out.push(format!("`{m}` is {l} there, not here"));
        }
        out
    }
}

/// The lines of section `## title` (up to the next `## `).
pub(super) fn section<'a>(text: &'a str, title: &str) -> Option<Vec<&'a str>> {
    let mut lines = text.lines();
    lines.find(|l| l.trim_end() == format!("## {title}"))?;
    Some(lines.take_while(|l| !l.starts_with("## ")).collect())
}

/// The cells of a section's table rows, header and separator left out.
fn table_rows(lines: Vec<&str>) -> Vec<Vec<String>> {
    lines
        .iter()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .filter(|l| !l.starts_with("|---") && !l.starts_with("| ---"))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// Every `name` in backticks.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.to_string())
        .collect()
}

/// Backticked module names, except those in a parenthesis that starts with "but".
fn backticked_outside_but(cell: &str) -> Vec<String> {
    let mut kept = String::new();
    let mut skip_depth: Option<usize> = None;
    let mut depth = 0;
    for (i, ch) in cell.char_indices() {
        match ch {
            '(' => {
                depth += 1;
                if skip_depth.is_none() && cell[i + 1..].trim_start().starts_with("but ") {
                    skip_depth = Some(depth);
                }
            }
            ')' => {
                if skip_depth == Some(depth) {
                    skip_depth = None;
                    depth -= 1;
                    continue;
                }
                depth -= 1;
            }
            _ => {}
        }
        if skip_depth.is_none() {
            kept.push(ch);
        }
    }
    backticked(&kept)
        .into_iter()
        .filter(|m| {
            !m.is_empty()
                && m.split("::")
                    .all(|s| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_'))
        })
        .collect()
}

/// What the code map says about the files: those it names, and its mentions of files or
/// folders that do not exist (line of ARCHITECTURE.md, what).
pub(super) struct CodeMap {
    pub named: BTreeSet<String>,
    pub stale: Vec<(usize, String)>,
}

/// Reads the "Code map" table. A row's first cell is a file (`pairing/target.rs`) or a
/// folder (`store/`), which names that file or the folder's `mod.rs`. Backticked `x.rs`
/// and `sub/` in a row are read relative to the row's folder (a folder row's own; a file
/// row's folder, or for `fsx.rs` also `fsx/`), and relative to any subfolder the same
/// row names (`console/`: `assets.rs`), or as written from `src/`. A folder named in a
/// row names its `mod.rs`.
pub(super) fn code_map(text: &str, tree: &Tree) -> Result<CodeMap, String> {
    let files: BTreeSet<&str> = tree.files.iter().map(|f| f.path.as_str()).collect();
    let folder_exists = |d: &str| files.iter().any(|f| f.starts_with(d));
    let start = text
        .lines()
        .position(|l| l.trim_end() == "## Code map")
        .ok_or("no \"## Code map\" section")?;
    let mut map = CodeMap {
        named: BTreeSet::new(),
        stale: Vec::new(),
    };
    let rows = text
        .lines()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| !l.starts_with("## "))
        .filter(|(_, l)| l.starts_with("| `"));
    for (n, row) in rows {
        let line = n + 1;
        let first_cell = row.trim_start_matches('|').split('|').next().unwrap_or("");
        let Some(first) = backticked(first_cell).into_iter().next() else {
            continue;
        };
        let mut bases: Vec<String> = Vec::new();
        if let Some(folder) = first.strip_suffix('/') {
            let folder = format!("src/{folder}/");
            if !folder_exists(&folder) {
                map.stale.push((line, format!("`{first}`")));
            }
            map.named.insert(format!("{folder}mod.rs"));
            bases.push(folder);
        } else {
            let file = format!("src/{first}");
            if !files.contains(file.as_str()) {
                map.stale.push((line, format!("`{first}`")));
            }
            bases.push(format!("{}/", file.trim_end_matches(".rs")));
            bases.push(
                file.rsplit_once('/')
                    .map(|(d, _)| format!("{d}/"))
                    .unwrap_or_default(),
            );
            map.named.insert(file);
        }
        let names = backticked(row);
        let subfolders: Vec<&String> = names.iter().filter(|n| n.ends_with('/')).collect();
        let mut roots = vec!["src/".to_string()];
        for base in &bases {
            roots.push(base.clone());
            roots.extend(subfolders.iter().map(|s| format!("{base}{s}")));
        }
        for name in names.iter().skip(1) {
            let is_file = name.ends_with(".rs");
            let is_folder = name.ends_with('/');
            if !(is_file || is_folder) || name.contains(' ') {
                continue;
            }
            let candidates: Vec<String> = roots
                .iter()
                .map(|r| {
                    if is_file {
                        format!("{r}{name}")
                    } else {
                        format!("{r}{name}mod.rs")
                    }
                })
                .filter(|c| files.contains(c.as_str()))
                .collect();
            if is_file && candidates.is_empty() {
                map.stale.push((line, format!("`{name}`")));
            }
            map.named.extend(candidates);
        }
    }
    Ok(map)
}
