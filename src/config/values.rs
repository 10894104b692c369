//! From the file and the environment to one resolved value per key, all by [`KEYS`]:
//! a file value must have its key's type, an environment value is parsed as its kind says,
//! the environment wins over the file, then defaults fill in and ranges and checks apply.
//! What comes out ([`Values`]) is what `Config` is built from and `check-config` prints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::keys::{key, Key, Kind, NumberDefault, TextDefault, KEYS};
use super::storage::RawStorage;
use super::{bad, toml_string, ConfigError};

/// A key's value as given (file or environment) or resolved.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Value {
    Number(u64),
    Text(String),
    List(Vec<String>),
    Flag(bool),
    /// `[[storage]]`'s tables, as the file had them (`Config` reads them).
    Storage(Vec<RawStorage>),
    /// An optional key left unset.
    Unset,
}

/// What the file and the environment gave, by key, before defaults and checks.
#[derive(Default)]
pub(super) struct Given {
    values: BTreeMap<&'static str, Value>,
    /// Where each given key came from: `file` or `env REPLGATE_KEY`.
    pub sources: BTreeMap<String, String>,
}

impl Given {
    /// The keys of a parsed config file, each of its key's type.
    pub(super) fn file(text: &str) -> Result<Given, ConfigError> {
        let File(values) = basic_toml::from_str(text).map_err(|e| {
            let msg = e.to_string();
            bad(&toml_error_key(&msg), msg)
        })?;
        let sources = values
            .keys()
            .map(|k| (k.to_string(), "file".to_string()))
            .collect();
        Ok(Given { values, sources })
    }

    /// Applies `REPLGATE_<KEY>` overrides from `env` (an iterator so tests need no
    /// globals).
    pub(super) fn apply_env(
        &mut self,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (var, value) in env {
            let Some(name) = var.strip_prefix("REPLGATE_") else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            if not_a_setting(&name) {
                continue;
            }
            let key = key(&name)
                .filter(|k| !matches!(k.kind, Kind::Storage { .. }))
                .ok_or_else(|| bad(&name, format!("{var} is not a known setting")))?;
            let parsed = from_env(key, &var, &value)?;
            self.values.insert(key.name, parsed);
            self.sources.insert(name, format!("env {var}"));
        }
        Ok(())
    }

    /// Every key's value: given, else its default; each checked.
    pub(super) fn resolve(mut self) -> Result<Values, ConfigError> {
        let mut values = Values(Vec::with_capacity(KEYS.len()));
        for key in KEYS {
            let given = self.values.remove(key.name);
            let value = resolve(key, given, &values).map_err(|e| bad(key.name, e))?;
            values.0.push((key.name, value));
        }
        Ok(values)
    }
}

/// A config file: each key read as its kind says, through the TOML parser, so that a
/// value of the wrong type is refused with the parser's words, key and place ("invalid
/// type: floating point `5.5`, expected u64 for key `poll_interval` at line 1 column 17").
struct File(BTreeMap<&'static str, Value>);

impl<'de> Deserialize<'de> for File {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<File, D::Error> {
        deserializer.deserialize_map(FileVisitor)
    }
}

struct FileVisitor;

impl<'de> Visitor<'de> for FileVisitor {
    type Value = File;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a table of configuration keys")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<File, A::Error> {
        let mut values = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            let key = key(&name).ok_or_else(|| de::Error::custom(unknown_field(&name)))?;
            let value = match key.kind {
                Kind::Number { .. } => Value::Number(map.next_value()?),
                Kind::Text { .. } | Kind::Address { .. } | Kind::Choice { .. } => {
                    Value::Text(map.next_value()?)
                }
                Kind::List { .. } => Value::List(map.next_value()?),
                Kind::Flag { .. } => Value::Flag(map.next_value()?),
                Kind::Storage { .. } => Value::Storage(map.next_value()?),
            };
            values.insert(key.name, value);
        }
        Ok(File(values))
    }
}

/// serde's words for a key the file may not hold, with every key it may: "unknown field
/// `x`, expected one of `data_dir`, ...".
fn unknown_field(name: &str) -> String {
    let known: Vec<String> = KEYS.iter().map(|k| format!("`{}`", k.name)).collect();
    format!(
        "unknown field `{name}`, expected one of {}",
        known.join(", ")
    )
}

/// An environment value as `key`'s kind reads it: lists comma-separated, flags also `1`
/// and `0`.
fn from_env(key: &Key, var: &str, value: &str) -> Result<Value, ConfigError> {
    Ok(match key.kind {
        Kind::Number { .. } => Value::Number(value.trim().parse().map_err(|_| {
            bad(
                key.name,
                format!("{var}={value:?} is not a non-negative integer"),
            )
        })?),
        Kind::Flag { .. } => Value::Flag(match value.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(bad(
                    key.name,
                    format!("{var}={value:?} is not true, false, 1 or 0"),
                ))
            }
        }),
        Kind::List { .. } => Value::List(comma_list(value)),
        Kind::Text { .. } | Kind::Address { .. } | Kind::Choice { .. } | Kind::Storage { .. } => {
            Value::Text(value.to_string())
        }
    })
}

/// `key`'s value: `given`, else its default (which may read the keys before it in
/// `resolved`), within its range and through its check.
fn resolve(key: &Key, given: Option<Value>, resolved: &Values) -> Result<Value, String> {
    match &key.kind {
        Kind::Number { default, range, .. } => {
            let n = match given {
                Some(Value::Number(n)) => n,
                Some(other) => return Err(mistyped(other)),
                None => match default {
                    NumberDefault::Value(n) => *n,
                    NumberDefault::SameAs(other) => {
                        resolved.number(other).map_err(|e| e.problem)?
                    }
                    NumberDefault::Unset(_) => return Ok(Value::Unset),
                },
            };
            if !range.contains(&n) {
                let (min, max) = (range.start(), range.end());
                return Err(format!("{n} is outside the allowed range {min}..={max}"));
            }
            Ok(Value::Number(n))
        }
        Kind::Text { default, check } => {
            let text = match given {
                Some(given) => text(given)?,
                None => match default {
                    TextDefault::Value(t) => t.to_string(),
                    TextDefault::FromList { key, compute, .. } => {
                        compute(&resolved.list(key).map_err(|e| e.problem)?)
                    }
                },
            };
            check(&text)?;
            Ok(Value::Text(text))
        }
        Kind::Address { default } => {
            let text = given.map_or_else(|| Ok(default.to_string()), text)?;
            let addr: SocketAddr = text
                .parse()
                .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:8443"))?;
            Ok(Value::Text(addr.to_string()))
        }
        Kind::List { default, item } => {
            let list = match given {
                Some(Value::List(l)) => l,
                Some(other) => return Err(mistyped(other)),
                None => default.iter().map(|s| s.to_string()).collect(),
            };
            let checked = list.iter().map(|s| item(s)).collect::<Result<_, _>>()?;
            Ok(Value::List(checked))
        }
        Kind::Flag { default } => match given {
            Some(Value::Flag(f)) => Ok(Value::Flag(f)),
            Some(other) => Err(mistyped(other)),
            None => Ok(Value::Flag(*default)),
        },
        Kind::Choice { default, words } => {
            let word = given.map_or_else(|| Ok(default.to_string()), text)?;
            if !words.contains(&word.as_str()) {
                return Err(format!("{word:?} is not one of {}", words.join(", ")));
            }
            Ok(Value::Text(word))
        }
        Kind::Storage { .. } => match given {
            Some(tables @ Value::Storage(_)) => Ok(tables),
            Some(other) => Err(mistyped(other)),
            None => Ok(Value::Unset),
        },
    }
}

fn text(given: Value) -> Result<String, String> {
    match given {
        Value::Text(t) => Ok(t),
        other => Err(mistyped(other)),
    }
}

/// A value of the wrong variant for its kind: `from_file` and `from_env` never make one.
fn mistyped(v: Value) -> String {
    format!("internal: a value of the wrong kind ({v:?})")
}

/// Every key's resolved value, in [`KEYS`] order.
#[derive(Clone, Debug)]
pub(super) struct Values(Vec<(&'static str, Value)>);

impl Values {
    /// Each key with its value, in [`KEYS`] order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&'static Key, &Value)> {
        KEYS.iter().zip(self.0.iter().map(|(_, v)| v))
    }

    fn get(&self, name: &str) -> Result<&Value, ConfigError> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| bad(name, "internal: not resolved before it is read"))
    }

    fn wrong(&self, name: &str, wanted: &str) -> ConfigError {
        bad(name, format!("internal: read as {wanted}, which it is not"))
    }

    pub(super) fn number(&self, name: &str) -> Result<u64, ConfigError> {
        match self.get(name)? {
            Value::Number(n) => Ok(*n),
            _ => Err(self.wrong(name, "a number")),
        }
    }

    /// A number key that may be unset.
    pub(super) fn optional(&self, name: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(name)? {
            Value::Unset => Ok(None),
            _ => self.number(name).map(Some),
        }
    }

    /// A number key in seconds.
    pub(super) fn seconds(&self, name: &str) -> Result<Duration, ConfigError> {
        self.number(name).map(Duration::from_secs)
    }

    /// A number key as the type its field has (its range fits it).
    pub(super) fn count<T: TryFrom<u64>>(&self, name: &str) -> Result<T, ConfigError> {
        let n = self.number(name)?;
        T::try_from(n).map_err(|_| bad(name, format!("{n} is too large on this machine")))
    }

    pub(super) fn text(&self, name: &str) -> Result<String, ConfigError> {
        match self.get(name)? {
            Value::Text(t) => Ok(t.clone()),
            _ => Err(self.wrong(name, "a text")),
        }
    }

    pub(super) fn address(&self, name: &str) -> Result<SocketAddr, ConfigError> {
        self.text(name)?
            .parse()
            .map_err(|_| self.wrong(name, "an address"))
    }

    pub(super) fn list(&self, name: &str) -> Result<Vec<String>, ConfigError> {
        match self.get(name)? {
            Value::List(l) => Ok(l.clone()),
            _ => Err(self.wrong(name, "a list")),
        }
    }

    pub(super) fn flag(&self, name: &str) -> Result<bool, ConfigError> {
        match self.get(name)? {
            Value::Flag(f) => Ok(*f),
            _ => Err(self.wrong(name, "a flag")),
        }
    }

    /// `[[storage]]` tables as the file had them; None when there were none.
    pub(super) fn storage(&self) -> Result<Option<Vec<RawStorage>>, ConfigError> {
        let name = "storage";
        match self.get(name)? {
            Value::Storage(tables) => Ok(Some(tables.clone())),
            Value::Unset => Ok(None),
            _ => Err(self.wrong(name, "tables")),
        }
    }
}

/// A list key given in one environment variable: comma-separated, blanks dropped.
fn comma_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The key a TOML error is about. basic-toml says `... for key `poll_interval` ...` for a
/// wrong type and "unknown field `x`" for an unknown key; the first backticked word of a
/// type error is the value (`5.5`), never the key.
fn toml_error_key(msg: &str) -> String {
    let after = |marker: &str| {
        msg.split_once(marker)
            .and_then(|(_, rest)| rest.split('`').next())
            .filter(|k| !k.is_empty())
            .map(String::from)
    };
    after("for key `")
        .or_else(|| after("unknown field `"))
        .unwrap_or_default()
}

/// `value` as TOML, for `check-config`; None for an unset key and for tables (`Config`
/// prints those).
pub(super) fn toml_value(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::Text(t) => Some(toml_string(t)),
        Value::List(items) => {
            let quoted: Vec<String> = items.iter().map(|i| toml_string(i)).collect();
            Some(format!("[{}]", quoted.join(", ")))
        }
        Value::Flag(f) => Some(f.to_string()),
        Value::Storage(_) | Value::Unset => None,
    }
}

/// `REPLGATE_<KEY>` variables that are not settings, so neither set one nor stop the daemon:
/// `admin_password` and `config` are read by the daemon itself (the first at database
/// creation only); `password` and `ctl_*` are `replgate ctl`'s, often exported in an
/// admin's shell; `commit` is the build's (build.rs), which `cargo run` passes to the
/// binary it runs and packagers export for their builds.
fn not_a_setting(key: &str) -> bool {
    matches!(key, "admin_password" | "config" | "password" | "commit") || key.starts_with("ctl_")
}
