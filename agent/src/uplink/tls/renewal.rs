//! Client certificates renewed without a visit (issue 15, item 4).
//!
//! The new pair waits beside the one in use: `<key_file>.new` (made on the gateway by
//! `towerlink cert request`, with a CSR for the platform's CA; a private key never travels
//! over MQTT) and `<cert_file>.new` (the certificate the CA issued, written by the
//! `cert_install` command through [`install_certificate`], or by an installer). While both
//! exist, the next connection attempt uses them ([`Renewal::candidate`]):
//!
//! - the broker accepts the session (CONNACK): the pair replaces the old one by rename
//!   ([`Renewal::accepted`]: key first, then certificate, then the directory is synced; a
//!   crash between the two renames is finished at the next start by [`Renewal::recover`]);
//! - the attempt fails before CONNACK: the connection loop tries the old pair at once, in the
//!   same back-off step. If the old pair gets the session, the new one was refused
//!   ([`Renewal::refused`]): it stays on disk, `health` says `tls.renewal: "refused: <cause>"`,
//!   and it is not tried again until one of its files changes (a SHA-256 of both). If the old
//!   pair fails too, nothing is learnt (the broker is down, say): the new pair is tried again
//!   at the next attempt.
//!
//! A pending pair that does not even load (a certificate that is not the key's, unreadable
//! files) is refused at once without an attempt. [`TlsState`] is what `health` reads: the
//! days left of the certificate in use and the renewal status.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::{x509, TlsFiles};

/// `<path>.new`: where the pending half of a pair waits.
pub fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// What `health` says about a renewal (`tls.renewal`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RenewalStatus {
    /// No new pair waits (or only its key: the certificate has not come yet).
    #[default]
    None,
    /// A new pair waits for its first session.
    Pending,
    /// The new pair was refused, for this reason; it is not tried again until it changes.
    Refused(String),
}

impl std::fmt::Display for RenewalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenewalStatus::None => f.write_str("none"),
            RenewalStatus::Pending => f.write_str("pending"),
            RenewalStatus::Refused(cause) => write!(f, "refused: {cause}"),
        }
    }
}

#[derive(Debug, Default)]
struct StateInner {
    /// notAfter of the client certificate in use, Unix seconds.
    not_after: Option<i64>,
    renewal: RenewalStatus,
}

/// The client certificate's state, shared by the connection loop, `health` and
/// `cert_install`.
#[derive(Debug, Default)]
pub struct TlsState {
    inner: Mutex<StateInner>,
    /// Certificates `cert_install` wrote so far.
    installs: std::sync::atomic::AtomicU64,
    /// Woken by each install: the uplink ends a session that started before it cleanly and
    /// reconnects, so the new pair is tried now rather than at the next outage.
    pub renew_now: tokio::sync::Notify,
}

impl TlsState {
    fn with<T>(&self, f: impl FnOnce(&mut StateInner) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }

    /// `cert_install` wrote `<cert_file>.new`: counts it and wakes the uplink.
    pub fn installed(&self) {
        self.installs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.set_renewal(RenewalStatus::Pending);
        self.renew_now.notify_one();
    }

    /// How many certificates `cert_install` wrote so far.
    pub fn installs(&self) -> u64 {
        self.installs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The renewal status now.
    pub fn renewal(&self) -> RenewalStatus {
        self.with(|s| s.renewal.clone())
    }

    fn set_renewal(&self, status: RenewalStatus) {
        self.with(|s| s.renewal = status);
    }

    /// Records notAfter of the certificate in use (Unix seconds).
    pub fn set_not_after(&self, not_after: Option<i64>) {
        self.with(|s| s.not_after = not_after);
    }

    /// Whole days until the certificate in use expires, at `now_s` (negative once expired).
    pub fn days_left(&self, now_s: i64) -> Option<i64> {
        self.with(|s| s.not_after).map(|t| days_left(t, now_s))
    }

    /// `health`'s `tls` object: `{"cert_days_left": n|null, "renewal": "..."}`.
    pub fn health_json(&self, now_s: i64) -> Value {
        json!({
            "cert_days_left": self.days_left(now_s),
            "renewal": self.renewal().to_string(),
        })
    }
}

/// Whole days from `now_s` to `not_after` (Unix seconds), rounded down.
pub fn days_left(not_after: i64, now_s: i64) -> i64 {
    (not_after - now_s).div_euclid(86_400)
}

/// notAfter (Unix seconds) of the first certificate of the PEM file `path`.
pub fn not_after_of(path: &Path) -> Option<i64> {
    let pem = std::fs::read(path).ok()?;
    let first = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    x509::parse(first.as_ref()).ok().map(|c| c.not_after)
}

/// SHA-256 of both files of a pair (a missing file hashes as empty).
fn fingerprint(cert: &Path, key: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in [cert, key] {
        let bytes = std::fs::read(p).unwrap_or_default();
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    h.finalize().into()
}

/// Syncs the directory holding `path` (so a rename in it survives a power cut).
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (created with `mode`),
/// fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The connection loop's renewal: which pair an attempt uses, and what its outcome means.
#[derive(Debug)]
pub struct Renewal {
    files: TlsFiles,
    cert_file: PathBuf,
    key_file: PathBuf,
    state: Arc<TlsState>,
    /// The pair the last candidate was built from (its fingerprint).
    tried: Option<[u8; 32]>,
    /// A pair refused before, not tried again while its files are unchanged.
    refused: Option<[u8; 32]>,
}

impl Renewal {
    /// The renewal of `files`' client certificate; `None` without one (no mTLS).
    pub fn new(files: &TlsFiles, state: Arc<TlsState>) -> Option<Renewal> {
        let (cert_file, key_file) = files.client_cert.clone()?;
        state.set_not_after(not_after_of(&cert_file));
        Some(Renewal {
            files: files.clone(),
            cert_file,
            key_file,
            state,
            tried: None,
            refused: None,
        })
    }

    fn pending(&self) -> (PathBuf, PathBuf) {
        (pending_path(&self.cert_file), pending_path(&self.key_file))
    }

    /// Finishes a promotion a crash interrupted: the key was renamed over the old one, the
    /// certificate was not (`<cert_file>.new` is there, `<key_file>.new` is not, and the new
    /// certificate is the installed key's while the old one is not). Returns whether it did.
    pub fn recover(&self) -> bool {
        let (cert_new, key_new) = self.pending();
        if !cert_new.exists() || key_new.exists() {
            return false;
        }
        let fits = |cert: &Path| {
            certificate_fits_key(&std::fs::read(cert).unwrap_or_default(), &self.key_file).is_ok()
        };
        if fits(&cert_new) && !fits(&self.cert_file) {
            let done = std::fs::rename(&cert_new, &self.cert_file)
                .and_then(|()| sync_dir(&self.cert_file));
            match done {
                Ok(()) => {
                    tracing::warn!(cert_file = %self.cert_file.display(), "finished a certificate renewal that a crash interrupted");
                    self.state.set_not_after(not_after_of(&self.cert_file));
                    return true;
                }
                Err(e) => {
                    tracing::error!(cert_file = %self.cert_file.display(), error = %e, "cannot finish an interrupted certificate renewal")
                }
            }
        }
        false
    }

    /// Before an attempt: the client configuration of the pending pair, if one waits and was
    /// not refused as it is. A pair that does not load is refused here, with its cause.
    pub fn candidate(&mut self) -> Option<Arc<rustls::ClientConfig>> {
        self.tried = None;
        let (cert_new, key_new) = self.pending();
        if !(cert_new.exists() && key_new.exists()) {
            self.refused = None;
            self.state.set_renewal(RenewalStatus::None);
            return None;
        }
        let print = fingerprint(&cert_new, &key_new);
        if self.refused == Some(print) {
            return None;
        }
        self.refused = None;
        let files = TlsFiles {
            ca_file: self.files.ca_file.clone(),
            client_cert: Some((cert_new, key_new)),
        };
        match super::build(&files) {
            Ok(config) => {
                self.tried = Some(print);
                self.state.set_renewal(RenewalStatus::Pending);
                Some(config)
            }
            Err(problem) => {
                let cause = problem.to_string();
                tracing::error!(cause = %cause, "the renewed certificate pair does not load; keeping the current pair");
                self.refused = Some(print);
                self.state.set_renewal(RenewalStatus::Refused(cause));
                None
            }
        }
    }

    /// The broker accepted a session on the pending pair: it replaces the old one (rename,
    /// key first, then the certificate; the directories synced).
    pub fn accepted(&mut self) -> std::io::Result<()> {
        let (cert_new, key_new) = self.pending();
        std::fs::rename(&key_new, &self.key_file)?;
        sync_dir(&self.key_file)?;
        std::fs::rename(&cert_new, &self.cert_file)?;
        sync_dir(&self.cert_file)?;
        self.tried = None;
        self.state.set_not_after(not_after_of(&self.cert_file));
        self.state.set_renewal(RenewalStatus::None);
        tracing::info!(cert_file = %self.cert_file.display(), days_left = self.state.days_left(crate::feed::now_millis() / 1000), "the renewed client certificate is in use; the old pair is replaced");
        Ok(())
    }

    /// The pending pair failed where the old one got a session: refused, for `cause`; not
    /// tried again until its files change.
    pub fn refused(&mut self, cause: &str) {
        if let Some(print) = self.tried.take() {
            tracing::error!(cause = %cause, "the broker refused the renewed certificate pair; the current pair stays in use");
            self.refused = Some(print);
            self.state
                .set_renewal(RenewalStatus::Refused(cause.to_owned()));
        }
    }

    /// The current pair was (re)loaded: its notAfter is the one `health` reports.
    pub fn reloaded(&self) {
        self.state.set_not_after(not_after_of(&self.cert_file));
    }

    /// The state shared with `health`.
    pub fn state(&self) -> &Arc<TlsState> {
        &self.state
    }
}

/// Why `cert_install` refused a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// No client certificate is configured.
    #[error("refused: this gateway uses no client certificate ([mqtt] cert_file and key_file)")]
    NoClientCert,
    /// `<key_file>.new` is missing.
    #[error("refused: no pending key {0}: run `towerlink cert request` on the gateway first and have its CSR signed")]
    NoPendingKey(String),
    /// The payload holds no PEM certificate.
    #[error("refused: cert holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NotPem,
    /// The certificate's DER is not X.509.
    #[error("refused: the certificate is not valid X.509 ({0})")]
    BadCert(String),
    /// The pending key cannot be read or used.
    #[error("refused: the pending key {path} is unusable ({reason})")]
    BadKey {
        /// The key file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The certificate is not the pending key's.
    #[error("refused: the certificate ({subject}) is not for the pending key {key}: their public keys differ (was it issued for this gateway's latest CSR?)")]
    KeyMismatch {
        /// The certificate's subject.
        subject: String,
        /// The pending key file.
        key: String,
    },
    /// Expired, or not valid yet.
    #[error("refused: the certificate is not valid now (valid {from} to {until})")]
    NotValidNow {
        /// notBefore, RFC 3339.
        from: String,
        /// notAfter, RFC 3339.
        until: String,
    },
    /// Writing `<cert_file>.new` failed.
    #[error("refused: cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Does the PEM certificate `cert_pem` (its first certificate) belong to the key in
/// `key_file`? Returns its X.509 summary (subject, notBefore, notAfter).
fn certificate_fits_key(
    cert_pem: &[u8],
    key_file: &Path,
) -> Result<(String, i64, i64), InstallError> {
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(cert_pem) {
        certs.push(cert.map_err(|_| InstallError::NotPem)?);
    }
    let first = certs.first().ok_or(InstallError::NotPem)?;
    let info = x509::parse(first.as_ref()).map_err(|e| InstallError::BadCert(e.to_string()))?;
    let bad_key = |reason: String| InstallError::BadKey {
        path: key_file.display().to_string(),
        reason,
    };
    let key = super::private_key(key_file).map_err(|e| bad_key(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad_key(e.to_string()))?;
    match super::key_fits(first, key.as_ref()) {
        Ok(Some(true)) => Ok((info.subject(), info.not_before, info.not_after)),
        Ok(None) => Err(bad_key("it cannot tell its public key".into())),
        Ok(Some(false)) => Err(InstallError::KeyMismatch {
            subject: info.subject(),
            key: key_file.display().to_string(),
        }),
        Err(e) => Err(InstallError::BadCert(e.to_string())),
    }
}

/// What `cert_install` installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// `<cert_file>.new`.
    pub path: PathBuf,
    /// `CN=...`.
    pub subject: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

/// `cert_install`: checks that `cert_pem` parses, is valid at `now_s` and is the pending
/// key's (`<key_file>.new`, SubjectPublicKeyInfo compared), and writes it atomically as
/// `<cert_file>.new` (mode 644).
pub fn install_certificate(
    cert_file: &Path,
    key_file: &Path,
    cert_pem: &str,
    now_s: i64,
) -> Result<Installed, InstallError> {
    let key_new = pending_path(key_file);
    if !key_new.exists() {
        return Err(InstallError::NoPendingKey(key_new.display().to_string()));
    }
    let (subject, not_before, not_after) = certificate_fits_key(cert_pem.as_bytes(), &key_new)?;
    if now_s < not_before || now_s >= not_after {
        return Err(InstallError::NotValidNow {
            from: crate::feed::rfc3339(not_before.saturating_mul(1000)),
            until: crate::feed::rfc3339(not_after.saturating_mul(1000)),
        });
    }
    let path = pending_path(cert_file);
    write_atomic(&path, cert_pem.as_bytes(), 0o644).map_err(|e| InstallError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Installed {
        path,
        subject,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(ca: &(rcgen::Certificate, rcgen::KeyPair), cn: &str, key: &rcgen::KeyPair) -> String {
        let mut p = rcgen::CertificateParams::new(vec![cn.to_owned()]).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.signed_by(key, &ca.0, &ca.1).expect("sign").pem()
    }

    fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (p.self_signed(&key).expect("ca"), key)
    }

    struct Files {
        dir: tempfile::TempDir,
        ca: (rcgen::Certificate, rcgen::KeyPair),
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().expect("dir");
            let ca = ca();
            std::fs::write(dir.path().join("ca.pem"), ca.0.pem()).expect("ca");
            let key = rcgen::KeyPair::generate().expect("key");
            std::fs::write(dir.path().join("gw.pem"), issue(&ca, "old", &key)).expect("w");
            std::fs::write(dir.path().join("gw.key"), key.serialize_pem()).expect("w");
            Files { dir, ca }
        }
        fn p(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn tls(&self) -> TlsFiles {
            TlsFiles {
                ca_file: self.p("ca.pem"),
                client_cert: Some((self.p("gw.pem"), self.p("gw.key"))),
            }
        }
        /// A pending key and a certificate for it (returned, not installed).
        fn pending(&self, cn: &str) -> String {
            let key = rcgen::KeyPair::generate().expect("key");
            std::fs::write(self.p("gw.key.new"), key.serialize_pem()).expect("w");
            issue(&self.ca, cn, &key)
        }
    }

    fn now_s() -> i64 {
        crate::feed::now_millis() / 1000
    }

    #[test]
    fn install_checks_the_pending_key_and_writes_cert_new() {
        let f = Files::new();
        let (cert, key) = (f.p("gw.pem"), f.p("gw.key"));
        let other = f.pending("stale");
        assert!(matches!(
            install_certificate(&cert, &key, "not pem", now_s()),
            Err(InstallError::NotPem)
        ));
        let fresh = f.pending("fresh");
        let e = install_certificate(&cert, &key, &other, now_s()).expect_err("mismatch");
        assert!(matches!(e, InstallError::KeyMismatch { .. }), "{e}");
        assert!(!pending_path(&cert).exists());
        let done = install_certificate(&cert, &key, &fresh, now_s()).expect("installed");
        assert_eq!(done.path, f.p("gw.pem.new"));
        assert_eq!(done.subject, "CN=fresh");
        assert_eq!(std::fs::read_to_string(&done.path).expect("r"), fresh);
        // rcgen's certificates are valid from 1975: 1970 is before that.
        assert!(matches!(
            install_certificate(&cert, &key, &fresh, 0),
            Err(InstallError::NotValidNow { .. })
        ));
        std::fs::remove_file(f.p("gw.key.new")).expect("rm");
        assert!(matches!(
            install_certificate(&cert, &key, &fresh, now_s()),
            Err(InstallError::NoPendingKey(_))
        ));
    }

    #[test]
    fn a_pending_pair_is_tried_promoted_or_refused_until_it_changes() {
        let f = Files::new();
        let state = Arc::new(TlsState::default());
        let mut r = Renewal::new(&f.tls(), state.clone()).expect("mtls");
        assert!(r.candidate().is_none());
        assert_eq!(state.renewal(), RenewalStatus::None);
        assert!(state.days_left(now_s()).is_some_and(|d| d > 300));

        // A refused pair is not tried again while unchanged; a changed one is.
        let cert = f.pending("first");
        std::fs::write(f.p("gw.pem.new"), &cert).expect("w");
        assert!(r.candidate().is_some());
        assert_eq!(state.renewal(), RenewalStatus::Pending);
        r.refused("alert UnknownCA");
        assert_eq!(
            state.health_json(now_s())["renewal"],
            "refused: alert UnknownCA"
        );
        assert!(r.candidate().is_none(), "retried unchanged");
        let cert = f.pending("second");
        std::fs::write(f.p("gw.pem.new"), &cert).expect("w");
        assert!(r.candidate().is_some(), "a changed pair is tried");
        r.accepted().expect("promote");
        assert!(!f.p("gw.pem.new").exists() && !f.p("gw.key.new").exists());
        assert_eq!(std::fs::read_to_string(f.p("gw.pem")).expect("r"), cert);
        assert_eq!(state.renewal(), RenewalStatus::None);
        assert!(super::super::client_config(&f.tls()).is_ok());

        // A pair that does not load is refused without an attempt.
        f.pending("third");
        std::fs::write(f.p("gw.pem.new"), &cert).expect("w");
        assert!(r.candidate().is_none());
        assert!(
            matches!(state.renewal(), RenewalStatus::Refused(c) if c.contains("public keys differ"))
        );
    }

    #[test]
    fn a_promotion_interrupted_between_the_renames_is_finished() {
        let f = Files::new();
        let cert = f.pending("new");
        std::fs::write(f.p("gw.pem.new"), &cert).expect("w");
        // The crash: the key was renamed, the certificate not.
        std::fs::rename(f.p("gw.key.new"), f.p("gw.key")).expect("mv");
        assert!(super::super::client_config(&f.tls()).is_err());
        let r = Renewal::new(&f.tls(), Arc::default()).expect("mtls");
        assert!(r.recover());
        assert!(super::super::client_config(&f.tls()).is_ok());
        assert!(!r.recover(), "nothing left to do");
    }

    #[test]
    fn days_left_rounds_down() {
        assert_eq!(days_left(86_400 * 30, 0), 30);
        assert_eq!(days_left(86_400 * 30 - 1, 0), 29);
        assert_eq!(days_left(0, 1), -1);
    }
}
