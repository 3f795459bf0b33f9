//! `towerlink cert request`: the gateway's next key, made on the gateway, and a certificate
//! signing request (PKCS#10) for the platform's CA. The private key never leaves the gateway:
//! the platform signs the CSR and sends back only the certificate (`cert_install` on `cmd`,
//! or an installer copies it to `<cert_file>.new`); the agent then renews by itself
//! ([`crate::uplink::tls::renewal`]).
//!
//! Writes `<key_file>.new` (ECDSA P-256, PKCS#8 PEM, mode 600, owned like the key in use,
//! written atomically) and the CSR to `<cert_file>.csr` (or `--out`), and prints the CSR on
//! stdout. A pending key is not replaced without `--force` (a certificate issued for its CSR
//! would no longer fit).

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::uplink::tls::renewal::{pending_path, write_atomic};

/// What `cert request` was asked for.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// The CSR's common name (default: the gateway id).
    pub cn: Option<String>,
    /// Replace a pending key.
    pub force: bool,
    /// Where the CSR goes (default `<cert_file>.csr`).
    pub out: Option<PathBuf>,
}

/// `<cert_file>.csr`.
pub fn csr_path(cert_file: &Path) -> PathBuf {
    let mut name = cert_file.as_os_str().to_owned();
    name.push(".csr");
    PathBuf::from(name)
}

fn fail(reason: &str, fix: &str) -> u8 {
    eprintln!("FAIL cert request: {reason} — {fix}");
    1
}

/// Makes the key and the CSR; the exit code.
pub fn request(config: &Config, options: &RequestOptions) -> u8 {
    let (Some(cert_file), Some(key_file)) = (&config.mqtt.cert_file, &config.mqtt.key_file) else {
        return fail(
            "this gateway uses no client certificate",
            "set [mqtt] cert_file and key_file (mqtts://) first",
        );
    };
    let key_new = pending_path(key_file);
    if key_new.exists() && !options.force {
        return fail(
            &format!("a pending key {} exists (a CSR was made for it)", key_new.display()),
            "install the certificate issued for that CSR, or run again with --force to make a new key (a certificate for the old CSR will then no longer fit)",
        );
    }
    let cn = options
        .cn
        .clone()
        .unwrap_or_else(|| config.gateway.id.to_string());
    let made = (|| -> Result<(String, String), rcgen::Error> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn.as_str());
        let csr = params.serialize_request(&key)?;
        Ok((key.serialize_pem(), csr.pem()?))
    })();
    let (key_pem, csr_pem) = match made {
        Ok(m) => m,
        Err(e) => {
            return fail(
                &format!("cannot make the key or the CSR: {e}"),
                "report this as a bug of the agent",
            )
        }
    };
    if let Err(e) = write_atomic(&key_new, key_pem.as_bytes(), 0o600) {
        return fail(
            &format!("cannot write {}: {e}", key_new.display()),
            "run as the agent's user or root, in a directory it may write",
        );
    }
    // Owned like the key in use, so the agent's user can read it when run as root.
    if let Ok(meta) = std::fs::metadata(key_file) {
        use std::os::unix::fs::MetadataExt;
        if let Err(e) = std::os::unix::fs::chown(&key_new, Some(meta.uid()), Some(meta.gid())) {
            eprintln!(
                "towerlink: cannot give {} the owner of {}: {e}; chown it to the agent's user",
                key_new.display(),
                key_file.display()
            );
        }
    }
    // A certificate waiting for the key just replaced can never fit it.
    let cert_new = pending_path(cert_file);
    if cert_new.exists() && std::fs::remove_file(&cert_new).is_ok() {
        eprintln!(
            "towerlink: removed {} (issued for the key just replaced)",
            cert_new.display()
        );
    }
    let out = options.out.clone().unwrap_or_else(|| csr_path(cert_file));
    if let Err(e) = write_atomic(&out, csr_pem.as_bytes(), 0o644) {
        return fail(
            &format!("cannot write {}: {e}", out.display()),
            "choose a writable --out",
        );
    }
    eprintln!(
        "OK  cert request: new key {} (ECDSA P-256, mode 600), CSR for CN={cn} in {}; have the platform's CA sign it and send the certificate with cert_install (or copy it to {})",
        key_new.display(),
        out.display(),
        cert_new.display()
    );
    print!("{csr_pem}");
    0
}
