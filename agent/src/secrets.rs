//! Secrets: the MQTT password and the TLS private key.
//!
//! The password lives in its own file (`[mqtt] password_file`), never in the configuration,
//! so the configuration can be shown, copied and answered to a `config` command as it is.
//! In memory it is a [`Secret`], whose `Debug` and `Display` print `<redacted>`, so no log
//! line or error can carry it by accident. [`permission_problem`] tells `towerlink check`
//! (and the start-up log) when a key or password file can be read by group or others.

use std::fmt;
use std::path::Path;

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

/// Reads `[mqtt] password_file`: its content without one trailing newline (`\n` or `\r\n`).
/// Errors name the file, never its content.
pub fn read_password_file(path: &Path) -> Result<Secret, String> {
    let named = |problem: &str| format!("mqtt.password_file {}: {problem}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| named(&format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(named("is not a regular file"));
    }
    if meta.len() > MAX_PASSWORD_BYTES {
        return Err(named(&format!(
            "is larger than {MAX_PASSWORD_BYTES} bytes; it must hold only the password"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| named(&format!("cannot read it: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| named("is not UTF-8 text"))?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(named("is empty"));
    }
    if password.contains(['\n', '\r']) {
        return Err(named("holds more than one line"));
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
            let e = read_password_file(&p).expect_err("refused");
            assert!(e.contains(needle) && e.contains("password_file"), "{e}");
        }
        std::fs::write(&p, "x".repeat(5000)).expect("write");
        assert!(read_password_file(&p).expect_err("big").contains("larger"));
        std::fs::write(&p, [0xff, 0xfe, b's']).expect("write");
        assert!(read_password_file(&p).expect_err("utf8").contains("UTF-8"));
        let e = read_password_file(&dir.path().join("missing")).expect_err("missing");
        assert!(e.contains("missing") && e.contains("cannot read"), "{e}");
        assert!(read_password_file(dir.path())
            .expect_err("dir")
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
