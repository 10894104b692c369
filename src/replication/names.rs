//! The one validator for replicated backup names, used by the scan, the API, the sender
//! and the receiver alike, always before any path is built. A backup name is exactly
//! `<client>/<file>`: two components, each a plain file name. Pure; no I/O.

use std::fmt;

/// Longest component. A target keeps a partial copy as `.<file>.<suffix>` next to the
/// final name; both must fit the usual 255-byte `NAME_MAX`.
pub const MAX_COMPONENT_BYTES: usize = 200;

/// Why a name is refused; the text names the rule so an admin can act on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameError {
    Empty,
    /// Starts with `/`.
    Absolute,
    /// Contains a NUL byte.
    Nul,
    /// Contains another control character (newline, tab, DEL...).
    Control,
    /// Not exactly `<client>/<file>`.
    Shape,
    /// A component is empty (`a//b`, trailing `/`).
    EmptyComponent,
    /// A component starts with `.` (hidden, in progress, `.` or `..`).
    DotComponent,
    /// A component is longer than [`MAX_COMPONENT_BYTES`].
    TooLong {
        bytes: usize,
    },
    /// Not UTF-8 (names travel in JSON).
    NotUtf8,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("backup name is empty"),
            NameError::Absolute => f.write_str("backup name must be relative, not start with /"),
            NameError::Nul => f.write_str("backup name contains a NUL byte"),
            NameError::Control => f.write_str("backup name contains a control character"),
            NameError::Shape => f.write_str("backup name must be exactly <client>/<file>"),
            NameError::EmptyComponent => f.write_str("backup name has an empty component"),
            NameError::DotComponent => {
                f.write_str("backup name has a component starting with . (hidden, in progress, . or ..)")
            }
            NameError::TooLong { bytes } => write!(
                f,
                "backup name component of {bytes} bytes is over the {MAX_COMPONENT_BYTES}-byte limit"
            ),
            NameError::NotUtf8 => f.write_str("backup name is not UTF-8"),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks one path component: a client directory, a file name, or a source's uuid
/// directory on the target.
pub fn check_component(c: &str) -> Result<(), NameError> {
    if c.is_empty() {
        return Err(NameError::EmptyComponent);
    }
    if c.len() > MAX_COMPONENT_BYTES {
        return Err(NameError::TooLong { bytes: c.len() });
    }
    if c.starts_with('.') {
        return Err(NameError::DotComponent);
    }
    if c.contains('\0') {
        return Err(NameError::Nul);
    }
    if c.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    if c.contains('/') {
        return Err(NameError::Shape);
    }
    Ok(())
}

/// A checked backup name `<client>/<file>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupName {
    path: String,
    /// Byte index of the `/`.
    split: usize,
}

impl BackupName {
    pub fn parse(s: &str) -> Result<BackupName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.starts_with('/') {
            return Err(NameError::Absolute);
        }
        if s.contains('\0') {
            return Err(NameError::Nul);
        }
        let split = s.find('/').ok_or(NameError::Shape)?;
        let (client, file) = (&s[..split], &s[split + 1..]);
        check_component(client)?;
        if file.is_empty() {
            return Err(NameError::EmptyComponent);
        }
        if file.contains('/') {
            // `a/b/c`, or `a/b/` and `a//b` which have empty components.
            return Err(if file.split('/').any(str::is_empty) {
                NameError::EmptyComponent
            } else if file.split('/').any(|c| c.starts_with('.')) {
                NameError::DotComponent
            } else {
                NameError::Shape
            });
        }
        check_component(file)?;
        Ok(BackupName {
            path: s.to_string(),
            split,
        })
    }

    /// Parses a name given as raw bytes (a file name from the disk, a peer's frame).
    pub fn parse_bytes(b: &[u8]) -> Result<BackupName, NameError> {
        std::str::from_utf8(b)
            .map_err(|_| NameError::NotUtf8)
            .and_then(BackupName::parse)
    }

    /// Builds a name from a client and a file component, each checked.
    pub fn from_parts(client: &str, file: &str) -> Result<BackupName, NameError> {
        check_component(client)?;
        check_component(file)?;
        Ok(BackupName {
            path: format!("{client}/{file}"),
            split: client.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.path
    }

    pub fn client(&self) -> &str {
        &self.path[..self.split]
    }

    pub fn file(&self) -> &str {
        &self.path[self.split + 1..]
    }
}

impl fmt::Display for BackupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_client_file_names_pass() {
        let n = BackupName::parse("web01/2024-05-01T02:00.vbk").unwrap();
        assert_eq!(n.client(), "web01");
        assert_eq!(n.file(), "2024-05-01T02:00.vbk");
        assert_eq!(n.as_str(), "web01/2024-05-01T02:00.vbk");
        assert_eq!(
            BackupName::from_parts("web01", "x").unwrap().as_str(),
            "web01/x"
        );
        // Unicode is fine; only control characters are not.
        assert!(BackupName::parse("büro/sicherung 1").is_ok());
    }

    #[test]
    fn every_class_of_bad_name_is_refused_with_its_reason() {
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("/etc/passwd", NameError::Absolute),
            ("../x", NameError::DotComponent),
            ("a/..", NameError::DotComponent),
            ("a/../../b", NameError::DotComponent),
            ("./a", NameError::DotComponent),
            ("a/.partial", NameError::DotComponent),
            (".hidden/a", NameError::DotComponent),
            ("a", NameError::Shape),
            ("a/b/c", NameError::Shape),
            ("a//b", NameError::EmptyComponent),
            ("a/", NameError::EmptyComponent),
            ("a/b/", NameError::EmptyComponent),
            ("a\0/b", NameError::Nul),
            ("a/b\0", NameError::Nul),
            ("a/b\nc", NameError::Control),
            ("a\t/b", NameError::Control),
        ];
        for (name, want) in cases {
            assert_eq!(BackupName::parse(name).as_ref(), Err(want), "{name:?}");
        }
        let long = format!("c/{}", "x".repeat(MAX_COMPONENT_BYTES + 1));
        assert_eq!(
            BackupName::parse(&long),
            Err(NameError::TooLong {
                bytes: MAX_COMPONENT_BYTES + 1
            })
        );
        assert!(BackupName::parse(&format!("c/{}", "x".repeat(MAX_COMPONENT_BYTES))).is_ok());
        assert_eq!(BackupName::parse_bytes(b"c/\xff"), Err(NameError::NotUtf8));
        assert_eq!(BackupName::from_parts("a", "b/c"), Err(NameError::Shape));
        assert_eq!(
            BackupName::from_parts("..", "b"),
            Err(NameError::DotComponent)
        );
    }
}
