//! A private Mosquitto for tests that stop and restart the broker: started on a free
//! loopback port with its own config and persistence directory, so sessions of persistent
//! subscribers survive a restart; plus a subscriber that keeps its session across restarts.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::MqttOptions;

use crate::{wait_until, Received, Subscriber};

/// A Mosquitto process of our own.
pub struct MosquittoProcess {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
}

/// Are the tests running as root (then Mosquitto needs `user root` to write our files)?
pub(crate) fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Ports handed out by [`free_port`]: below Linux's ephemeral range (32768..=60999 by
/// default), so neither a `bind` to port 0 nor an outgoing connection's source port is ever
/// given one of them by the kernel.
const RESERVED_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// The reservations of this process: an exclusive `flock` on
/// `/tmp/towerlink-e2e-ports/<port>.lock` per port, held until the process exits.
static RESERVATIONS: std::sync::Mutex<Vec<nix::fcntl::Flock<std::fs::File>>> =
    std::sync::Mutex::new(Vec::new());

/// A loopback port reserved for this test process until it exits: free now, outside the
/// kernel's ephemeral range, and locked against every other test process using this harness.
/// So a broker stopped and restarted on its port (see [`MosquittoProcess::restart`]) finds
/// it still free: no other test can have been given it meanwhile.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    use nix::fcntl::{Flock, FlockArg};
    let dir = std::env::temp_dir().join("towerlink-e2e-ports");
    std::fs::create_dir_all(&dir)?;
    let span = RESERVED_PORTS.end - RESERVED_PORTS.start;
    let offset = (std::process::id() % u32::from(span)) as u16;
    let mut held = RESERVATIONS
        .lock()
        .map_err(|_| anyhow::anyhow!("port reservations poisoned"))?;
    for i in 0..span {
        let port = RESERVED_PORTS.start + (offset + i) % span;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{port}.lock")))?;
        // Taken by another process (or an earlier call in this one): try the next.
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        // Something outside the harness (a service) may listen there.
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        held.push(lock);
        return Ok(port);
    }
    bail!("no free loopback port in {RESERVED_PORTS:?}")
}

impl MosquittoProcess {
    /// Starts a broker in `dir` on a free port (tries a few ports if one is taken meanwhile).
    pub fn start(dir: &Path) -> anyhow::Result<MosquittoProcess> {
        MosquittoProcess::start_with(dir, "")
    }

    /// Like [`MosquittoProcess::start`], with more configuration lines (e.g.
    /// `message_size_limit 262144`).
    pub fn start_with(dir: &Path, extra: &str) -> anyhow::Result<MosquittoProcess> {
        std::fs::create_dir_all(dir.join("data"))?;
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 0\n{}{extra}\n",
                    dir.join("data").display(),
                    // Started as root, Mosquitto drops to user `mosquitto`, which cannot write
                    // its database into our temporary directory (no effect when not root).
                    if running_as_root() { "user root\n" } else { "" }
                ),
            )?;
            let mut m = MosquittoProcess {
                child: None,
                port,
                conf,
                log: dir.join("mosquitto.log"),
            };
            match m.run() {
                Ok(()) => return Ok(m),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("mosquitto did not start")))
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning mosquitto (is it installed?)")?;
        let port = self.port;
        let up = wait_until(Duration::from_secs(5), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                || matches!(child.try_wait(), Ok(Some(_)))
        });
        if !up || !matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "mosquitto did not listen on {port}: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        self.child = Some(child);
        Ok(())
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id while it runs (to freeze it with SIGSTOP, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops it (SIGTERM: it saves its sessions) and waits, bounded.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mosquitto did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts it again on the same port with the same persistence. The port stays reserved
    /// for this test process (see [`free_port`]), so no other test can take it meanwhile.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        // The port may linger for a moment after the old process closed it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.run() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for MosquittoProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A subscriber with a persistent session (clean_session = false, QoS 1) that reconnects by
/// itself: it misses nothing published while it or the broker was away.
pub struct SessionSubscriber {
    inner: Subscriber,
}

impl SessionSubscriber {
    /// Connects to 127.0.0.1:`port` as `client_id` and subscribes to `filter` (returns once
    /// the broker acknowledged the subscription).
    pub fn connect(port: u16, client_id: &str, filter: &str) -> anyhow::Result<SessionSubscriber> {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(false);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_inflight(1000);
        Ok(SessionSubscriber {
            inner: Subscriber::connect_with(opts, filter, 1024)?,
        })
    }

    /// Everything received so far.
    pub fn all(&self) -> Vec<Received> {
        self.inner.all()
    }

    /// Publishes (QoS 1) without waiting for the network: fine while the broker is down.
    pub fn publish(&self, topic: &str, payload: &[u8]) {
        self.inner.publish_later(topic, payload);
    }

    /// The schema violations received so far.
    pub fn violations(&self) -> Vec<String> {
        self.inner.violations()
    }
}
