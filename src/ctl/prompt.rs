//! Passwords for `replgate ctl`: one line of standard input, `REPLGATE_PASSWORD`, or a
//! terminal prompt with echo off. Never prints a password.

use std::io::{self, BufRead, IsTerminal, Read, Write};

use super::args::PasswordFrom;
use super::settings::env_nonempty;
use super::CtlError;
use crate::model::Secret;

/// A password line is at most this long (the daemon caps passwords lower).
const MAX_PASSWORD_LINE_BYTES: u64 = 4096;

fn strip_newline(mut line: String) -> String {
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    line
}

fn read_stdin_line() -> Result<String, CtlError> {
    let mut line = String::new();
    io::stdin()
        .lock()
        .take(MAX_PASSWORD_LINE_BYTES)
        .read_line(&mut line)
        .map_err(|e| CtlError::Usage(format!("read the password from standard input: {e}")))?;
    Ok(strip_newline(line))
}

/// Reads a line from the terminal on standard input with echo off (the newline is echoed).
fn prompt_hidden(prompt: &str) -> io::Result<String> {
    let mut err = io::stderr();
    err.write_all(prompt.as_bytes())?;
    err.flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: `termios` is plain data, fully written by a successful `tcgetattr`.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open (standard input) and `term` is a valid, writable termios.
    if unsafe { libc::tcgetattr(fd, &mut term) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let saved = term;
    term.c_lflag &= !libc::ECHO;
    term.c_lflag |= libc::ECHONL;
    // SAFETY: as above; `term` came from `tcgetattr` with two local-mode bits changed.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut line = String::new();
    let read = io::stdin()
        .lock()
        .take(MAX_PASSWORD_LINE_BYTES)
        .read_line(&mut line);
    // SAFETY: restores the settings read above on the same descriptor.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    read?;
    Ok(strip_newline(line))
}

/// A password from `from`. `confirm` asks twice at a prompt (for a new password).
pub(super) fn password(
    from: PasswordFrom,
    prompt: &str,
    confirm: bool,
) -> Result<Secret<String>, CtlError> {
    let p = match from {
        PasswordFrom::Stdin => read_stdin_line()?,
        PasswordFrom::EnvOrPrompt => match env_nonempty("REPLGATE_PASSWORD") {
            Some(p) => p,
            None if io::stdin().is_terminal() => {
                let prompt_err = |e: io::Error| CtlError::Usage(format!("read the password: {e}"));
                let first = prompt_hidden(prompt).map_err(prompt_err)?;
                if confirm && prompt_hidden("again: ").map_err(prompt_err)? != first {
                    return Err(CtlError::Usage("the two passwords differ".into()));
                }
                first
            }
            None => return Err(CtlError::Usage(
                "no password: give --password-stdin, set REPLGATE_PASSWORD, or run on a terminal"
                    .into(),
            )),
        },
    };
    if p.is_empty() {
        return Err(CtlError::Usage("the password is empty".into()));
    }
    Ok(Secret::new(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_line_loses_its_line_ending_only() {
        assert_eq!(strip_newline("pw\n".into()), "pw");
        assert_eq!(strip_newline("pw\r\n".into()), "pw");
        assert_eq!(strip_newline(" pw ".into()), " pw ");
    }
}
