//! TLS test rig: certificates made at test time with rcgen, a Mosquitto with a TLS listener
//! that requires a client certificate, and a [`Rig`] that puts a broker, simulated panel
//! nodes and a platform-like subscriber together for the agent.
//!
//! ```no_run
//! use towerlink_e2e::tls::Rig;
//! use towerlink_e2e::AgentProcess;
//! # fn main() -> anyhow::Result<()> {
//! let rig = Rig::new("my-test", "server", None, 1)?; // broker certificate `server`
//! rig.pki.install_client("client")?;                // the gateway's gw.pem / gw.key
//! let mut agent = AgentProcess::start(&rig.config(&rig.client_cert_lines())?)?;
//! assert!(towerlink_e2e::wait_until(std::time::Duration::from_secs(20), || rig.online()));
//! # agent.stop()
//! # }
//! ```
//!
//! [`Pki::new`] writes, under its directory, `ca.pem` (the CA both the broker and the agent
//! trust) and these certificate/key pairs as `<name>.pem` / `<name>.key`:
//! `server` (127.0.0.1 and localhost), `server-other-name` (other.example),
//! `server-impostor` (127.0.0.1, signed by another CA), `client` (sh-ja-0001) and
//! `client-impostor` (signed by another CA). [`Pki::at`] is an empty directory for
//! certificates made otherwise (e.g. with the `openssl` CLI), under the same names.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

use crate::mosquitto::{free_port, running_as_root, SessionSubscriber};
use crate::{unique_gw, wait_until, AgentProcess};

pub use rcgen;

/// A CA that signs certificates (rcgen).
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl Ca {
    /// A self-signed CA with common name `name`.
    pub fn new(name: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    /// The parameters [`Ca::issue`] uses: the names as subjectAltNames (an IP literal
    /// becomes an IP SAN), the first one also as common name, `usage` as extended key usage.
    /// Change them (validity, names...) and sign with [`Ca::sign`].
    pub fn params(
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> anyhow::Result<CertificateParams> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("gw"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        Ok(params)
    }

    /// Signs `params` for a fresh key.
    pub fn sign(&self, params: CertificateParams) -> anyhow::Result<Issued> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for `names` (see [`Ca::params`]).
    pub fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> anyhow::Result<Issued> {
        self.sign(Ca::params(names, usage)?)
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }
}

/// A directory of certificates and keys: `ca.pem`, `<name>.pem`, `<name>.key`.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// The rcgen set described in the module documentation, written under `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<Pki> {
        Pki::with_ca(dir).map(|(pki, _)| pki)
    }

    /// [`Pki::new`], and the CA of `ca.pem` to issue more certificates with.
    pub fn with_ca(dir: &Path) -> anyhow::Result<(Pki, Ca)> {
        let pki = Pki::at(dir)?;
        let ca = Ca::new("towerlink test CA")?;
        let impostor = Ca::new("impostor CA")?;
        pki.write("ca.pem", &ca.pem())?;
        let pairs = [
            (
                "server",
                ca.issue(
                    &["127.0.0.1", "localhost"],
                    ExtendedKeyUsagePurpose::ServerAuth,
                )?,
            ),
            (
                "server-other-name",
                ca.issue(&["other.example"], ExtendedKeyUsagePurpose::ServerAuth)?,
            ),
            (
                "server-impostor",
                impostor.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth)?,
            ),
            (
                "client",
                ca.issue(&["sh-ja-0001"], ExtendedKeyUsagePurpose::ClientAuth)?,
            ),
            (
                "client-impostor",
                impostor.issue(&["sh-ja-0001"], ExtendedKeyUsagePurpose::ClientAuth)?,
            ),
        ];
        for (name, issued) in &pairs {
            pki.add(name, issued)?;
        }
        Ok((pki, ca))
    }

    /// An empty PKI directory (created if missing), to fill with [`Pki::write`] / [`Pki::add`]
    /// or with files made by other tools under the same names.
    pub fn at(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        Ok(Pki {
            dir: dir.to_owned(),
        })
    }

    /// Writes `text` to `name` in the directory, mode 600.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    /// Writes `issued` as `<name>.pem` and `<name>.key`.
    pub fn add(&self, name: &str, issued: &Issued) -> anyhow::Result<()> {
        self.write(&format!("{name}.pem"), &issued.cert_pem)?;
        self.write(&format!("{name}.key"), &issued.key_pem)
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Installs `<name>.pem` / `<name>.key` as the gateway's `gw.pem` / `gw.key` (by rename,
    /// so the agent never reads half a file).
    pub fn install_client(&self, name: &str) -> anyhow::Result<()> {
        for ext in ["pem", "key"] {
            let tmp = self.path(&format!("gw.{ext}.tmp"));
            std::fs::copy(self.path(&format!("{name}.{ext}")), &tmp)
                .with_context(|| format!("installing {name}.{ext}"))?;
            std::fs::rename(&tmp, self.path(&format!("gw.{ext}")))?;
        }
        Ok(())
    }
}

/// A Mosquitto on free loopback ports: a TLS listener (client certificates required, signed
/// by the PKI's `ca.pem`) and a plain one for the test's subscriber. Killed on drop.
pub struct TlsBroker {
    child: Child,
    /// The TLS listener's port on 127.0.0.1.
    pub tls_port: u16,
    /// The plain listener's port on 127.0.0.1 (anonymous).
    pub plain_port: u16,
    /// Mosquitto's log file.
    pub log: PathBuf,
}

impl TlsBroker {
    /// Starts a broker in `dir` with `<server>.pem` / `<server>.key` of `pki` as its
    /// certificate; `passwords`, if given, is a Mosquitto password file required on the TLS
    /// listener (see [`mosquitto_password_file`]).
    pub fn start(
        dir: &Path,
        pki: &Pki,
        server: &str,
        passwords: Option<&Path>,
    ) -> anyhow::Result<TlsBroker> {
        std::fs::create_dir_all(dir)?;
        let mut last = None;
        for _ in 0..5 {
            let (tls_port, plain_port) = (free_port()?, free_port()?);
            if tls_port == plain_port {
                continue;
            }
            let conf = dir.join("mosquitto.conf");
            let auth = match passwords {
                Some(p) => format!("allow_anonymous false\npassword_file {}\n", p.display()),
                None => "allow_anonymous true\n".to_owned(),
            };
            std::fs::write(
                &conf,
                format!(
                    "per_listener_settings true\n{}\
                     listener {plain_port} 127.0.0.1\nallow_anonymous true\n\n\
                     listener {tls_port} 127.0.0.1\n{auth}cafile {}\ncertfile {}\nkeyfile {}\n\
                     require_certificate true\n",
                    if running_as_root() { "user root\n" } else { "" },
                    pki.path("ca.pem").display(),
                    pki.path(&format!("{server}.pem")).display(),
                    pki.path(&format!("{server}.key")).display(),
                ),
            )?;
            let log = dir.join("mosquitto.log");
            let out = std::fs::File::create(&log)?;
            let mut child = Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .context("spawning mosquitto")?;
            let up = wait_until(Duration::from_secs(5), || {
                (TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", plain_port)).is_ok())
                    || matches!(child.try_wait(), Ok(Some(_)))
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                return Ok(TlsBroker {
                    child,
                    tls_port,
                    plain_port,
                    log,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
            last = Some(std::fs::read_to_string(&log).unwrap_or_default());
        }
        bail!(
            "mosquitto with TLS did not start: {}",
            last.unwrap_or_default()
        )
    }

    /// Mosquitto's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Mosquitto password file with one user, made by `mosquitto_passwd` in `dir`.
pub fn mosquitto_password_file(dir: &Path, user: &str, password: &str) -> anyhow::Result<PathBuf> {
    let passwd = dir.join("mosquitto.passwd");
    let status = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args([user, password])
        .stdout(Stdio::null())
        .status()
        .context("mosquitto_passwd")?;
    ensure!(status.success(), "mosquitto_passwd failed");
    Ok(passwd)
}

/// A TLS broker, simulated panel nodes and a subscriber (on the broker's plain listener) on
/// the gateway's feed `towerlink/v1/{gw}/#`.
pub struct Rig {
    /// The test's directory (PKI under `pki/`, broker under `broker/`, the agent's store).
    pub dir: tempfile::TempDir,
    /// The certificates.
    pub pki: Pki,
    /// The broker.
    pub broker: TlsBroker,
    /// The simulated panel nodes (`panel-0`... on node ids 100...; none is fine for a test
    /// of the connection alone).
    pub nodes: Vec<VirtualNode>,
    /// The gateway id (unique to the run).
    pub gw: String,
    /// The platform-like subscriber.
    pub sub: SessionSubscriber,
}

impl Rig {
    /// A rig with the rcgen [`Pki::new`] set and `<server>` as the broker's certificate.
    pub fn new(
        name: &str,
        server: &str,
        passwords: Option<&Path>,
        panels: usize,
    ) -> anyhow::Result<Rig> {
        Rig::with_pki(name, Pki::new, server, passwords, panels)
    }

    /// A rig whose PKI `make_pki` writes into the directory it is given (it must hold
    /// `ca.pem` and `<server>.pem` / `<server>.key`).
    pub fn with_pki(
        name: &str,
        make_pki: impl FnOnce(&Path) -> anyhow::Result<Pki>,
        server: &str,
        passwords: Option<&Path>,
        panels: usize,
    ) -> anyhow::Result<Rig> {
        let dir = tempfile::tempdir()?;
        let pki = make_pki(&dir.path().join("pki"))?;
        let broker = TlsBroker::start(&dir.path().join("broker"), &pki, server, passwords)?;
        let mut scenario = "seed = 7\n".to_owned();
        for i in 0..panels {
            scenario.push_str(&format!(
                "\n[[panels]]\nname = \"panel-{i}\"\nnode = {}\n",
                100 + i
            ));
        }
        let nodes = if panels == 0 {
            Vec::new()
        } else {
            let scenario = Scenario::from_toml_str(&scenario).context("scenario")?;
            spawn_tower(&scenario, &dir.path().join("ports"), false)?
        };
        let gw = unique_gw(name);
        let sub = SessionSubscriber::connect(
            broker.plain_port,
            &unique_gw("tls-sub"),
            &format!("towerlink/v1/{gw}/#"),
        )?;
        Ok(Rig {
            dir,
            pki,
            broker,
            nodes,
            gw,
            sub,
        })
    }

    /// Writes the agent's configuration (`mqtts://` to the broker, `ca_file` = the PKI's
    /// `ca.pem`, 1 s health, the rig's nodes) with these extra `[mqtt]` lines; returns its
    /// path.
    pub fn config(&self, mqtt: &str) -> anyhow::Result<PathBuf> {
        let mut text = format!(
            "[gateway]\nid = \"{}\"\n\n[mqtt]\nbatch = \"0s\"\nurl = \"mqtts://127.0.0.1:{}\"\nca_file = \"{}\"\nkeep_alive = \"5s\"\n{mqtt}\n\n\
             [store]\npath = \"{}\"\nfsync = \"50ms\"\n\n[health]\ninterval = \"1s\"\n\n",
            self.gw,
            self.broker.tls_port,
            self.pki.path("ca.pem").display(),
            self.dir.path().join("store").display()
        );
        for n in &self.nodes {
            text.push_str(&format!(
                "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"200ms\"\nwindow_grace = \"300ms\"\nnode_id = {}\n\n",
                n.dev(),
                n.path().display(),
                n.node_id()
            ));
        }
        let path = self.dir.path().join("towerlink.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// `[mqtt]` lines for the client certificate plus `username` and a `password_file` in the
    /// rig's directory (which the caller writes); returns the file and the lines.
    pub fn credential_lines(&self, user: &str) -> (PathBuf, String) {
        let password_file = self.dir.path().join("password");
        let lines = format!(
            "{}username = \"{user}\"\npassword_file = \"{}\"\n",
            self.client_cert_lines(),
            password_file.display()
        );
        (password_file, lines)
    }

    /// `[mqtt]` lines `cert_file` / `key_file` for the installed `gw.pem` / `gw.key`.
    pub fn client_cert_lines(&self) -> String {
        format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.pki.path("gw.pem").display(),
            self.pki.path("gw.key").display()
        )
    }

    /// Has the subscriber seen the gateway's `online` state?
    pub fn online(&self) -> bool {
        self.sub
            .all()
            .iter()
            .any(|m| m.topic.ends_with("/state") && m.json["state"].as_str() == Some("online"))
    }

    /// Waits (20 s at most) for `n` failed connection attempts of `agent`, checks that each
    /// says why (`needle`, case-insensitive) and when it retries, that the agent still runs
    /// and that the broker never let it in. Returns the failure lines.
    pub fn expect_refused(
        &self,
        agent: &mut AgentProcess,
        n: usize,
        needle: &str,
    ) -> anyhow::Result<Vec<String>> {
        let refused = wait_until(Duration::from_secs(20), || {
            failures(&agent.log()).len() >= n
        });
        let log = agent.log();
        ensure!(
            refused,
            "fewer than {n} failed attempts in 20 s; log:\n{log}"
        );
        let lines: Vec<String> = failures(&log).into_iter().map(str::to_owned).collect();
        for line in &lines {
            ensure!(
                line.to_ascii_lowercase()
                    .contains(&needle.to_ascii_lowercase())
                    && line.contains("retry_in_ms="),
                "an attempt failed without {needle:?} or a retry delay: {line}"
            );
        }
        ensure!(
            agent.is_running(),
            "the agent exited after TLS failures; log:\n{log}"
        );
        ensure!(
            !self.online(),
            "the broker let the agent in; broker log:\n{}",
            self.broker.log_text()
        );
        Ok(lines)
    }
}

/// Lines of an agent log that report a failed connection attempt.
pub fn failures(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("MQTT connection failed"))
        .collect()
}

/// A CA made and used with the `openssl` CLI, following Mosquitto's recipe in
/// `mosquitto-tls(7)` literally (RSA 2048, `openssl x509 -req ... -CAcreateserial`), with
/// `-subj` instead of prompts and no passphrase: the certificates an installer gets, X.509 v1
/// unless an extension file is given.
pub struct OpensslCa {
    dir: PathBuf,
    name: String,
}

/// Runs `openssl` with `args` in `dir`; fails with its stderr.
pub fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running openssl (is it installed?)")?;
    ensure!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl OpensslCa {
    /// `openssl genrsa -out <name>.key 2048` and `openssl req -new -x509 -days 1826 -key
    /// <name>.key -out <name>.pem -subj /CN=<cn>` in the PKI's directory (name `ca` makes the
    /// PKI's `ca.pem`, the CA broker and agent trust).
    pub fn create(pki: &Pki, name: &str, cn: &str) -> anyhow::Result<OpensslCa> {
        let dir = pki.path("");
        let (key, crt) = (format!("{name}.key"), format!("{name}.pem"));
        openssl(&dir, &["genrsa", "-out", &key, "2048"])?;
        let subj = format!("/CN={cn}");
        openssl(
            &dir,
            &[
                "req", "-new", "-x509", "-days", "1826", "-key", &key, "-out", &crt, "-subj", &subj,
            ],
        )?;
        Ok(OpensslCa {
            dir,
            name: name.to_owned(),
        })
    }

    /// A key and a signing request for `cn`: `openssl genrsa -out <out>.key 2048`,
    /// `openssl req -new -out <out>.csr -key <out>.key -subj /CN=<cn>`.
    fn request(&self, out: &str, cn: &str) -> anyhow::Result<()> {
        let (key, csr) = (format!("{out}.key"), format!("{out}.csr"));
        openssl(&self.dir, &["genrsa", "-out", &key, "2048"])?;
        // As an installer would (and `towerlink check` demands) for the gateway's key.
        std::fs::set_permissions(
            self.dir.join(&key),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        let subj = format!("/CN={cn}");
        openssl(
            &self.dir,
            &["req", "-new", "-out", &csr, "-key", &key, "-subj", &subj],
        )
    }

    /// Writes `text` as an extension file `<out>.cnf`; returns its name.
    fn extfile(&self, out: &str, text: &str) -> anyhow::Result<String> {
        let name = format!("{out}.cnf");
        std::fs::write(self.dir.join(&name), text)?;
        Ok(name)
    }

    /// Issues `<out>.pem` / `<out>.key` for `cn`: `openssl x509 -req -in <out>.csr -CA
    /// <ca>.pem -CAkey <ca>.key -CAcreateserial -out <out>.pem -days 360`, plus `-extfile
    /// <out>.cnf -extensions v3` when `v3` (the `[v3]` section's lines, e.g.
    /// `subjectAltName = IP:127.0.0.1`) is given. Without it the certificate is X.509 v1.
    pub fn issue(&self, out: &str, cn: &str, v3: Option<&str>) -> anyhow::Result<()> {
        self.request(out, cn)?;
        let (csr, crt) = (format!("{out}.csr"), format!("{out}.pem"));
        let (ca, ca_key) = (format!("{}.pem", self.name), format!("{}.key", self.name));
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "360",
        ];
        let ext;
        if let Some(lines) = v3 {
            ext = self.extfile(out, &format!("[v3]\n{lines}\n"))?;
            args.extend(["-extfile", ext.as_str(), "-extensions", "v3"]);
        }
        openssl(&self.dir, &args)
    }

    /// Like [`OpensslCa::issue`], valid from `start` to `end` (`YYYYMMDDHHMMSSZ`), which
    /// `openssl x509 -req` of OpenSSL 3.0 cannot set: signed with `openssl ca -startdate
    /// -enddate` instead (X.509 v1 too without `v3`).
    pub fn issue_dated(
        &self,
        out: &str,
        cn: &str,
        v3: Option<&str>,
        start: &str,
        end: &str,
    ) -> anyhow::Result<()> {
        self.request(out, cn)?;
        let db = self.dir.join(format!("{}.db", self.name));
        std::fs::create_dir_all(&db)?;
        let index = db.join("index.txt");
        if !index.exists() {
            std::fs::write(&index, "")?;
        }
        let conf = format!(
            "[ca]\ndefault_ca = tl\n[tl]\ndatabase = {index}\nnew_certs_dir = {db}\n\
             certificate = {ca}.pem\nprivate_key = {ca}.key\nrand_serial = yes\n\
             default_md = sha256\npolicy = any\nunique_subject = no\ncopy_extensions = none\n\
             [any]\ncommonName = supplied\n[v3]\n{lines}\n",
            index = index.display(),
            db = db.display(),
            ca = self.dir.join(&self.name).display(),
            lines = v3.unwrap_or(""),
        );
        let conf_name = self.extfile(&format!("{out}-ca"), &conf)?;
        let (csr, crt) = (format!("{out}.csr"), format!("{out}.pem"));
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            &conf_name,
            "-in",
            &csr,
            "-out",
            &crt,
            "-startdate",
            start,
            "-enddate",
            end,
        ];
        if v3.is_some() {
            args.extend(["-extensions", "v3"]);
        }
        openssl(&self.dir, &args)
    }
}

/// The X.509 version `openssl x509 -text` reports for the PEM certificate `path` (1 or 3).
pub fn x509_version(path: &Path) -> anyhow::Result<u8> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(path)
        .output()
        .context("openssl x509 -text")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version: "))
        .with_context(|| format!("no Version in {}", path.display()))?;
    line.split(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("version {line:?}"))
}
