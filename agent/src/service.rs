//! Running under systemd: readiness, stopping and the watchdog (`Type=notify`,
//! `WatchdogSec=`), spoken directly over `$NOTIFY_SOCKET` (a unix datagram socket), without
//! libsystemd.
//!
//! The watchdog is only fed while the agent really works: every long-running loop (each
//! source, the pipeline, the MQTT publisher) owns a [`Heartbeat`] and beats it on every turn
//! of its loop, including its periodic ticks, so a loop that is merely idle still beats. The
//! pinger sends `WATCHDOG=1` only when every heartbeat moved since its last look; a stuck
//! loop stops the pings, and systemd restarts the agent.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::shutdown::Shutdown;

/// Sends one notification (`READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=...`) to systemd.
/// Returns `false` when not running under systemd (no `$NOTIFY_SOCKET`) or on error.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        send_abstract(&socket, abstract_name, state)
    } else {
        socket
            .send_to(state.as_bytes(), std::path::Path::new(&path))
            .is_ok()
    };
    if !sent {
        tracing::debug!(state, "sd_notify failed");
    }
    sent
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], state: &str) -> bool {
    use std::os::linux::net::SocketAddrExt;
    match std::os::unix::net::SocketAddr::from_abstract_name(name) {
        Ok(addr) => socket.send_to_addr(state.as_bytes(), &addr).is_ok(),
        Err(_) => false,
    }
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_socket: &UnixDatagram, _name: &[u8], _state: &str) -> bool {
    false
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`), if it is meant for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// One loop's proof of life.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    /// A heartbeat nobody watches (tests, tools).
    pub fn detached() -> Heartbeat {
        Heartbeat(Arc::new(AtomicU64::new(0)))
    }

    /// The loop made progress.
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// A back-off wait that still counts as progress: sleeps `delay` (less if shutdown fires),
    /// beating every second, so a loop that is waiting on purpose is not taken for stuck.
    pub async fn sleep(&self, delay: Duration, shutdown: &mut Shutdown) {
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            self.beat();
            let now = tokio::time::Instant::now();
            if now >= deadline || shutdown.is_shutdown() {
                return;
            }
            shutdown
                .sleep((deadline - now).min(Duration::from_secs(1)))
                .await;
        }
    }
}

/// A registered loop: its name and beat counter.
type Registered = (String, Arc<AtomicU64>);

/// Every loop's heartbeat, by name.
#[derive(Debug, Default, Clone)]
pub struct Heartbeats {
    loops: Arc<Mutex<Vec<Registered>>>,
    /// Where new counters start: above every count of the loops cleared before them, so a
    /// loop started again under an old name never shows the count the watchdog last saw.
    floor: Arc<AtomicU64>,
}

impl Heartbeats {
    /// A new registry.
    pub fn new() -> Heartbeats {
        Heartbeats::default()
    }

    /// Registers a loop and returns its heartbeat.
    pub fn register(&self, name: &str) -> Heartbeat {
        let counter = Arc::new(AtomicU64::new(self.floor.load(Ordering::Relaxed)));
        if let Ok(mut loops) = self.loops.lock() {
            loops.push((name.to_owned(), counter.clone()));
        }
        Heartbeat(counter)
    }

    /// Forgets every loop (their tasks were stopped: a `config_apply` starts new ones).
    pub fn clear(&self) {
        if let Ok(mut loops) = self.loops.lock() {
            let top = loops
                .iter()
                .map(|(_, c)| c.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            self.floor.fetch_max(top + 1, Ordering::Relaxed);
            loops.clear();
        }
    }

    /// The counters now.
    fn snapshot(&self) -> Vec<(String, u64)> {
        self.loops
            .lock()
            .map(|l| {
                l.iter()
                    .map(|(n, c)| (n.clone(), c.load(Ordering::Relaxed)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The loops that did not beat between two snapshots.
    pub fn stalled(before: &[(String, u64)], now: &[(String, u64)]) -> Vec<String> {
        now.iter()
            .filter(|(name, count)| before.iter().any(|(n, c)| n == name && c == count))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Pings the systemd watchdog every `interval / 2` while every loop beats; stops at shutdown.
pub async fn watchdog(heartbeats: Heartbeats, interval: Duration, shutdown: Shutdown) {
    watchdog_with(heartbeats, interval, shutdown, || {
        notify("WATCHDOG=1");
    })
    .await
}

/// [`watchdog`] with the ping as a function (the tests count them).
async fn watchdog_with(
    heartbeats: Heartbeats,
    interval: Duration,
    mut shutdown: Shutdown,
    mut ping: impl FnMut(),
) {
    let period = interval / 2;
    let mut last = heartbeats.snapshot();
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.recv() => return,
        }
        let now = heartbeats.snapshot();
        let stalled = Heartbeats::stalled(&last, &now);
        if stalled.is_empty() {
            ping();
            warned = false;
        } else if !warned {
            tracing::error!(loops = ?stalled, "a loop made no progress; withholding the watchdog ping so systemd restarts the agent");
            warned = true;
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_does_not_beat_is_named() {
        let hb = Heartbeats::new();
        let a = hb.register("source panel-1");
        let _b = hb.register("pipeline");
        let before = hb.snapshot();
        a.beat();
        let now = hb.snapshot();
        assert_eq!(
            Heartbeats::stalled(&before, &now),
            vec!["pipeline".to_owned()]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_ping_while_a_loop_is_stalled_and_pings_again_once_it_beats() {
        use std::sync::atomic::AtomicBool;
        let hb = Heartbeats::new();
        let source = hb.register("source panel-1");
        let pipeline = hb.register("pipeline");
        let source_runs = Arc::new(AtomicBool::new(true));
        let runs = source_runs.clone();
        // Both loops beat every 100 ms; the source only while `source_runs`.
        tokio::spawn(async move {
            loop {
                pipeline.beat();
                if runs.load(Ordering::Relaxed) {
                    source.beat();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let pings = Arc::new(Mutex::new(Vec::new()));
        let seen = pings.clone();
        let start = tokio::time::Instant::now();
        let (stop, shutdown) = crate::shutdown::channel();
        // WATCHDOG_USEC = 1 s: a look every 500 ms.
        tokio::spawn(watchdog_with(
            hb,
            Duration::from_secs(1),
            shutdown,
            move || {
                if let Ok(mut p) = seen.lock() {
                    p.push(start.elapsed());
                }
            },
        ));
        let at = |p: &Arc<Mutex<Vec<Duration>>>| p.lock().map(|v| v.clone()).unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(2_750)).await;
        let before_stall = at(&pings).len();
        assert!(
            before_stall >= 5,
            "pinged while every loop beats: {:?}",
            at(&pings)
        );
        // The source stalls at 2.75 s: from the look after next (3.5 s) on, no ping.
        source_runs.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let during = at(&pings);
        assert!(
            during.iter().all(|t| *t <= Duration::from_millis(3_000)),
            "pinged while the source was stalled: {during:?}"
        );
        // It beats again: the pings come back.
        source_runs.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            at(&pings).len() >= during.len() + 2,
            "no ping after the source recovered: {:?}",
            at(&pings)
        );
        stop.fire();
    }

    #[test]
    fn notify_reaches_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        // The environment is process-wide; this test is the only one that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1"));
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        assert!(!notify("READY=1"), "without NOTIFY_SOCKET nothing is sent");
    }
}
