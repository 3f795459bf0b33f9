//! Secrets: the MQTT password and the TLS private key.
//!
//! The password lives in its own file (`[mqtt] password_file`), never in the configuration,
//! so the configuration can be shown, copied and answered to a `config` command as it is.
//! In memory it is a [`Secret`], whose `Debug` and `Display` print `<redacted>`, so no log
//! line or error can carry it by accident. [`permission_problem`] tells `towerlink check`
//! (and the start-up log) when a key or password file can be read by group or others.

use std::fmt;
use std::path::{Path, PathBuf};

/// A secret string; formatting it never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself, for the one place that needs it (the MQTT CONNECT packet).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The largest password file read (a password, not a database).
const MAX_PASSWORD_BYTES: u64 = 4096;

/// What is wrong with `[mqtt] password_file`.
#[derive(Debug, thiserror::Error)]
pub enum PasswordProblem {
    /// It cannot be read (missing, no permission, ...).
    #[error("cannot read it: {0}")]
    Unreadable(std::io::Error),
    /// It is a directory or a device.
    #[error("is not a regular file")]
    NotAFile,
    /// It is longer than 4096 bytes.
    #[error("is larger than {MAX_PASSWORD_BYTES} bytes; it must hold only the password")]
    TooLarge,
    /// It is not UTF-8.
    #[error("is not UTF-8 text")]
    NotUtf8,
    /// It holds nothing (or only a newline).
    #[error("is empty")]
    Empty,
    /// It holds more than one line.
    #[error("holds more than one line")]
    MultiLine,
}

/// `[mqtt] password_file` could not give a password; names the file, never its content.
#[derive(Debug, thiserror::Error)]
#[error("mqtt.password_file {}: {problem}", path.display())]
pub struct PasswordFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: PasswordProblem,
}

/// Reads `[mqtt] password_file`: its content without one trailing newline (`\n` or `\r\n`).
/// Errors name the file, never its content.
pub fn read_password_file(path: &Path) -> Result<Secret, PasswordFileError> {
    let named = |problem: PasswordProblem| PasswordFileError {
        path: path.to_owned(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| named(PasswordProblem::Unreadable(e)))?;
    if !meta.is_file() {
        return Err(named(PasswordProblem::NotAFile));
    }
    if meta.len() > MAX_PASSWORD_BYTES {
        return Err(named(PasswordProblem::TooLarge));
    }
    let bytes = std::fs::read(path).map_err(|e| named(PasswordProblem::Unreadable(e)))?;
    let text = String::from_utf8(bytes).map_err(|_| named(PasswordProblem::NotUtf8))?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(named(PasswordProblem::Empty));
    }
    if password.contains(['\n', '\r']) {
        return Err(named(PasswordProblem::MultiLine));
    }
    Ok(Secret(password.to_owned()))
}

/// Why a secret file's permissions are too open (readable or writable by group or others),
/// or `None` when they are fine. `key` names the config key in the message.
pub fn permission_problem(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(path) {
        Ok(meta) => meta.permissions().mode(),
        Err(e) => return Some(format!("{key} {}: cannot check it: {e}", path.display())),
    };
    if mode & 0o077 == 0 {
        return None;
    }
    Some(format!(
        "{key} {} is accessible by group or others (mode {:03o}); run `chmod 600 {}`",
        path.display(),
        mode & 0o777,
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn formatting_a_secret_never_shows_it() {
        let s = Secret::new("hunter2".into());
        assert_eq!(
            format!("{s} {s:?} {:?}", Some(&s)),
            "<redacted> <redacted> Some(<redacted>)"
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn password_file_trailing_newline_and_refusals() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("password");
        for (content, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
        ] {
            std::fs::write(&p, content).expect("write");
            assert_eq!(read_password_file(&p).expect("ok").expose(), want);
        }
        for (content, needle) in [
            ("", "empty"),
            ("\n", "empty"),
            ("a\nb\n", "more than one line"),
        ] {
            std::fs::write(&p, content).expect("write");
            let e = read_password_file(&p).expect_err("refused").to_string();
            assert!(e.contains(needle) && e.contains("password_file"), "{e}");
        }
        let problem = |p: &Path| read_password_file(p).expect_err("refused").problem;
        std::fs::write(&p, "").expect("write");
        assert!(matches!(problem(&p), PasswordProblem::Empty));
        std::fs::write(&p, "a\nb").expect("write");
        assert!(matches!(problem(&p), PasswordProblem::MultiLine));
        std::fs::write(&p, "x".repeat(5000)).expect("write");
        assert!(matches!(problem(&p), PasswordProblem::TooLarge));
        let e = read_password_file(&p).expect_err("big").to_string();
        assert!(e.contains("larger than 4096 bytes"), "{e}");
        std::fs::write(&p, [0xff, 0xfe, b's']).expect("write");
        assert!(matches!(problem(&p), PasswordProblem::NotUtf8));
        assert!(read_password_file(&p)
            .expect_err("utf8")
            .to_string()
            .contains("UTF-8"));
        let missing = dir.path().join("missing");
        let e = read_password_file(&missing).expect_err("missing");
        assert_eq!(e.path, missing);
        assert!(
            matches!(&e.problem, PasswordProblem::Unreadable(io) if io.kind() == std::io::ErrorKind::NotFound)
        );
        let e = e.to_string();
        assert!(e.contains("missing") && e.contains("cannot read"), "{e}");
        assert!(matches!(problem(dir.path()), PasswordProblem::NotAFile));
        assert!(read_password_file(dir.path())
            .expect_err("dir")
            .to_string()
            .contains("regular file"));
    }

    #[test]
    fn group_or_other_access_is_flagged() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("gw.key");
        std::fs::write(&p, "k").expect("write");
        for (mode, flagged) in [
            (0o600, false),
            (0o400, false),
            (0o640, true),
            (0o604, true),
            (0o620, true),
            (0o644, true),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let problem = permission_problem("mqtt.key_file", &p);
            assert_eq!(problem.is_some(), flagged, "mode {mode:o}: {problem:?}");
            if let Some(m) = problem {
                assert!(
                    m.contains("mqtt.key_file") && m.contains("chmod 600"),
                    "{m}"
                );
            }
        }
        let missing = permission_problem("mqtt.password_file", &dir.path().join("nope"));
        assert!(missing.is_some_and(|m| m.contains("cannot check")));
    }
}
