//! A pairing request's fields as a source sends them, and the checks of their shape
//! before anything is parsed or stored; the message an admin gives a rejection. Plain
//! functions over text: no store, no clock.

use crate::pairing::error::PairingError;
use crate::wire::protocol::is_system_uuid;
use crate::wire::token::PairingToken;

/// A request as it arrives, fields already checked for shape.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub system_uuid: String,
    pub name: String,
    pub host: String,
    pub asset_tag: Option<String>,
    pub version: String,
    pub csr_pem: String,
    pub remote_addr: String,
    /// The storage the source asks for (`storage_id` in its request); checked at accept.
    pub requested_storage_id: Option<u64>,
    /// The pairing token it came with: then it is accepted at once, or refused.
    pub token: Option<PairingToken>,
}

fn check_text(
    field: &'static str,
    value: &str,
    max: usize,
    allow: impl Fn(char) -> bool,
) -> Result<(), PairingError> {
    if value.is_empty() || value.chars().count() > max || !value.chars().all(allow) {
        return Err(PairingError::InvalidField {
            field,
            problem: format!("must be 1 to {max} characters of the allowed set"),
        });
    }
    Ok(())
}

fn printable(c: char) -> bool {
    !c.is_control()
}

/// A `system_uuid` as sources send it (lowercased): a UUID, since received backups are
/// stored under a directory of that name (`wire::protocol::is_system_uuid`).
pub(crate) fn check_system_uuid(value: &str) -> Result<(), PairingError> {
    if is_system_uuid(value) {
        return Ok(());
    }
    Err(PairingError::InvalidField {
        field: "system_uuid",
        problem: "must be a UUID: 32 hexadecimal digits in groups of 8-4-4-4-12 joined by `-`"
            .into(),
    })
}

/// A `host` as sources send it: a name or an address, 1 to 255 characters.
pub(crate) fn check_host(value: &str) -> Result<(), PairingError> {
    check_text("host", value, 255, |c| {
        c.is_ascii_alphanumeric() || "-.:[]".contains(c)
    })
}

impl NewRequest {
    /// Shape checks before anything is parsed or stored.
    pub fn validate(&self) -> Result<(), PairingError> {
        check_system_uuid(&self.system_uuid)?;
        check_text("name", &self.name, 255, printable)?;
        check_host(&self.host)?;

        check_text("version", &self.version, 64, printable)?;
        check_asset_tag(self.asset_tag.as_deref())
    }
}

/// An asset tag may be empty (none), else at most 255 printable characters.
fn check_asset_tag(tag: Option<&str>) -> Result<(), PairingError> {
    match tag {
        Some(tag) if tag.chars().count() > 255 || !tag.chars().all(printable) => {
            Err(PairingError::InvalidField {
                field: "asset_tag",
                problem: "must be at most 255 printable characters".into(),
            })
        }
        _ => Ok(()),
    }
}

/// A managed system's fields as an admin registers them (`system_uuid` and `asset_tag`
/// optional).
pub(crate) fn check_managed(
    name: &str,
    host: &str,
    system_uuid: Option<&str>,
    asset_tag: Option<&str>,
) -> Result<(), PairingError> {
    check_text("name", name, 255, printable)?;
    check_asset_tag(asset_tag)?;
    check_text("host", host, 255, |c| {
        c.is_ascii_alphanumeric() || "-.:[]".contains(c)
    })?;
    if let Some(u) = system_uuid {
        check_text("system_uuid", u, 64, |c| {
            c.is_ascii_alphanumeric() || c == '-'
        })?;
    }
    Ok(())
}

/// The longest message an admin may give a decision, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1_024;

/// A rejection's message as stored: at most [`MAX_MESSAGE_CHARS`], trimmed of spaces,
/// tabs and line breaks, not empty.
pub fn rejection_message(message: &str) -> Result<String, PairingError> {
    if message.chars().count() > MAX_MESSAGE_CHARS {
        return Err(PairingError::InvalidField {
            field: "message",
            problem: format!("must be at most {MAX_MESSAGE_CHARS} characters"),
        });
    }
    let trimmed = message.trim_matches([' ', '\t', '\r', '\n']);
    if trimmed.is_empty() {
        return Err(PairingError::MessageRequired);
    }
    Ok(trimmed.to_string())
}
