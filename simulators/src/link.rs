//! A user-space emulated cellular link between two network namespaces: the replacement for
//! `tc qdisc ... netem`.
//!
//! Why not netem: the kernels this project is tested on do not all ship `sch_netem` (the CI
//! machine's 6.18 kernel has network namespaces, veth, TUN, TBF/HTB and nftables but no
//! netem: `tc qdisc add ... netem` says "Specified qdisc kind is unknown"), and loading a
//! module is not something a test may do. TUN is everywhere, so the link is built in user
//! space: one TUN device in each of two namespaces, with point-to-point addresses
//! (`10.77.<k>.1` in A, peer `10.77.<k>.2` in B), and this process forwards the IP packets
//! between them, each way through a [`Shaper`]:
//!
//! - **random loss** (a share of packets, drawn from a seeded ChaCha RNG, so a run is
//!   reproducible given the same packet sequence), decided when the packet arrives, as netem's
//!   `loss`;
//! - a **bounded queue** of `limit` packets, drop-tail (netem's `limit`: it counts every packet
//!   held, waiting for the line or in flight);
//! - a **bandwidth cap**: the line sends one packet at a time, a packet leaves when the line is
//!   free, after `len * 8 / rate` seconds (netem's `rate`);
//! - a one-way **delay** added after the packet has left the line (netem's `delay`);
//! - a **partition** switch: while on, every packet arriving is dropped and everything held is
//!   discarded (a cellular dead zone).
//!
//! Counters per direction: forwarded, lost, queue full, partitioned.
//!
//! [`Shaper`] is the protocol state with no I/O (one method per event, time passed in), so its
//! scheduling is unit-tested without TUN; [`Link`] moves the bytes: per direction a reader
//! thread (`poll` on the TUN fd with a 100 ms timeout, so a stop is seen) and a sender thread
//! that waits for the next departure. Creating a [`Link`] needs `CAP_NET_ADMIN` (root),
//! `/dev/net/tun` and the `ip` command (Debian `iproute2`); the namespaces are the caller's.
//!
//! [`in_netns`] runs a closure on a thread that has entered a named namespace
//! (`/var/run/netns/NAME`), so sockets it opens and processes it spawns live there.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Why a link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The namespace file could not be opened or entered.
    #[error("cannot enter network namespace {ns} (/var/run/netns/{ns}): {source}; create it with `ip netns add {ns}` (needs root)")]
    Netns {
        /// The namespace's name.
        ns: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `/dev/net/tun` could not be opened or the device not created.
    #[error("cannot create TUN device {dev}: {source} (needs root and /dev/net/tun)")]
    Tun {
        /// The device's name.
        dev: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {why} (is iproute2 installed?)")]
    Ip {
        /// The arguments.
        args: String,
        /// Its stderr or the spawn error.
        why: String,
    },
    /// A thread could not be started.
    #[error("cannot start a link thread: {0}")]
    Thread(std::io::Error),
    /// The parameters make no sense.
    #[error("invalid link parameters: {0}")]
    Params(String),
}

/// What the link does to every packet, the same each way.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkParams {
    /// One-way delay after a packet has left the line.
    pub delay: Duration,
    /// Share of packets lost at random, 0.0..=1.0.
    pub loss: f64,
    /// Line rate in bits per second (0: no cap).
    pub rate_bps: u64,
    /// Packets held at most per direction (waiting or in flight); more are dropped.
    pub limit: usize,
    /// Seed of the loss RNG (direction B->A uses `seed + 1`).
    pub seed: u64,
}

impl LinkParams {
    /// A cellular uplink as issue 13 has it: 400 ms each way, 5 % loss, 64 kbit/s, a
    /// 100-packet queue.
    pub fn cellular(seed: u64) -> LinkParams {
        LinkParams {
            delay: Duration::from_millis(400),
            loss: 0.05,
            rate_bps: 64_000,
            limit: 100,
            seed,
        }
    }

    /// A clean link: no delay, no loss, no cap.
    pub fn clean() -> LinkParams {
        LinkParams {
            delay: Duration::ZERO,
            loss: 0.0,
            rate_bps: 0,
            limit: 1000,
            seed: 0,
        }
    }

    fn check(&self) -> Result<(), LinkError> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(LinkError::Params(format!(
                "loss {} is not between 0 and 1",
                self.loss
            )));
        }
        if self.limit == 0 {
            return Err(LinkError::Params("limit must be at least 1 packet".into()));
        }
        Ok(())
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets delivered to the far end.
    pub forwarded: AtomicU64,
    /// Packets lost at random.
    pub lost: AtomicU64,
    /// Packets dropped because the queue was full.
    pub queue_full: AtomicU64,
    /// Packets dropped by the partition.
    pub partitioned: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Packets delivered to the far end.
    pub forwarded: u64,
    /// Packets lost at random.
    pub lost: u64,
    /// Packets dropped because the queue was full.
    pub queue_full: u64,
    /// Packets dropped by the partition.
    pub partitioned: u64,
}

impl Counters {
    /// The current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            queue_full: self.queue_full.load(Ordering::Relaxed),
            partitioned: self.partitioned.load(Ordering::Relaxed),
        }
    }
}

/// What became of an offered packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Held; delivered at this instant.
    Scheduled(Instant),
    /// Lost at random.
    Lost,
    /// The queue was full.
    QueueFull,
    /// The link is partitioned.
    Partitioned,
}

/// One direction of the link: loss, queue, line rate and delay, with no I/O.
#[derive(Debug)]
pub struct Shaper<P> {
    params: LinkParams,
    rng: ChaCha8Rng,
    /// When the line finishes sending what it has.
    line_free_at: Option<Instant>,
    held: VecDeque<(Instant, P)>,
    partitioned: bool,
    counters: Arc<Counters>,
}

impl<P> Shaper<P> {
    /// A shaper with these parameters, seeded with `seed`.
    pub fn new(params: LinkParams, seed: u64, counters: Arc<Counters>) -> Shaper<P> {
        Shaper {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            line_free_at: None,
            held: VecDeque::new(),
            partitioned: false,
            counters,
        }
    }

    /// How long the line takes to send `len` bytes.
    pub fn transmit_time(&self, len: usize) -> Duration {
        if self.params.rate_bps == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos((len as u64 * 8).saturating_mul(1_000_000_000) / self.params.rate_bps)
    }

    /// A packet of `len` bytes arrives at `now`.
    pub fn offer(&mut self, now: Instant, packet: P, len: usize) -> Verdict {
        if self.partitioned {
            self.counters.partitioned.fetch_add(1, Ordering::Relaxed);
            return Verdict::Partitioned;
        }
        if self.params.loss > 0.0 && self.rng.gen::<f64>() < self.params.loss {
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            return Verdict::Lost;
        }
        if self.held.len() >= self.params.limit {
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            return Verdict::QueueFull;
        }
        let start = self.line_free_at.map_or(now, |free| free.max(now));
        let sent = start + self.transmit_time(len);
        self.line_free_at = Some(sent);
        let deliver_at = sent + self.params.delay;
        self.held.push_back((deliver_at, packet));
        Verdict::Scheduled(deliver_at)
    }

    /// When the next held packet is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|(at, _)| *at)
    }

    /// The next packet due at `now`, counted as forwarded.
    pub fn pop_due(&mut self, now: Instant) -> Option<P> {
        if self.held.front().is_some_and(|(at, _)| *at <= now) {
            self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
            return self.held.pop_front().map(|(_, p)| p);
        }
        None
    }

    /// Packets held (waiting for the line or in flight).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Switches the partition on (everything held is discarded) or off.
    pub fn set_partition(&mut self, on: bool) {
        if on && !self.partitioned {
            let n = self.held.len() as u64;
            self.held.clear();
            self.line_free_at = None;
            self.counters.partitioned.fetch_add(n, Ordering::Relaxed);
        }
        self.partitioned = on;
    }
}

/// One direction shared between its reader and sender threads.
struct Direction {
    shaper: Mutex<Shaper<Vec<u8>>>,
    wake: Condvar,
    counters: Arc<Counters>,
}

/// The emulated link: two TUN devices and four threads.
pub struct Link {
    a_to_b: Arc<Direction>,
    b_to_a: Arc<Direction>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    addr_a: String,
    addr_b: String,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("addr_a", &self.addr_a)
            .field("addr_b", &self.addr_b)
            .finish_non_exhaustive()
    }
}

/// Runs `f` on a new thread that has entered network namespace `ns` (`/var/run/netns/ns`,
/// as `ip netns add` makes it): sockets it opens, TUN devices it creates and processes it
/// spawns (and threads those threads start) belong to `ns`. Returns what `f` returned.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T, LinkError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = format!("/var/run/netns/{ns}");
    let name = ns.to_owned();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || -> Result<T, LinkError> {
            let file = File::open(&path).map_err(|source| LinkError::Netns {
                ns: name.clone(),
                source,
            })?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                LinkError::Netns {
                    ns: name.clone(),
                    source: e.into(),
                }
            })?;
            Ok(f())
        })
        .map_err(LinkError::Thread)?;
    handle.join().map_err(|_| {
        LinkError::Thread(std::io::Error::other(format!(
            "the thread in namespace {ns} panicked"
        )))
    })?
}

const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags (the union's first member).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

nix::ioctl_write_ptr_bad!(tun_set_iff, 0x4004_54ca, IfReq);

/// Creates TUN device `dev` (IP packets, no packet info) in the calling thread's namespace.
fn create_tun(dev: &str) -> Result<File, LinkError> {
    let err = |source: std::io::Error| LinkError::Tun {
        dev: dev.to_owned(),
        source,
    };
    if dev.is_empty() || dev.len() > 15 {
        return Err(err(std::io::Error::other(
            "device names have 1 to 15 bytes",
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(err)?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: `req` is a valid, fully initialised `struct ifreq` prefix of the size the kernel
    // reads (40 bytes on Linux), and the fd is an open /dev/net/tun.
    unsafe { tun_set_iff(std::os::fd::AsRawFd::as_raw_fd(&file), &req) }
        .map_err(|e| err(e.into()))?;
    Ok(file)
}

fn ip(args: &[&str]) -> Result<(), LinkError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| LinkError::Ip {
            args: joined.clone(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LinkError::Ip {
            args: joined,
            why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Creates `dev` in `ns`, gives it `local` with peer `peer` and brings it (and `lo`) up.
fn tun_in(ns: &str, dev: &str, local: &str, peer: &str) -> Result<File, LinkError> {
    let name = dev.to_owned();
    let file = in_netns(ns, move || create_tun(&name))??;
    ip(&["-n", ns, "addr", "add", local, "peer", peer, "dev", dev])?;
    ip(&["-n", ns, "link", "set", dev, "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    Ok(file)
}

impl Link {
    /// Creates `tl<k>a` in namespace `ns_a` (`10.77.<k>.1`) and `tl<k>b` in `ns_b`
    /// (`10.77.<k>.2`) and forwards between them with `params`.
    pub fn spawn(ns_a: &str, ns_b: &str, k: u8, params: LinkParams) -> Result<Link, LinkError> {
        params.check()?;
        let addr_a = format!("10.77.{k}.1");
        let addr_b = format!("10.77.{k}.2");
        let tun_a = tun_in(ns_a, &format!("tl{k}a"), &addr_a, &addr_b)?;
        let tun_b = tun_in(ns_b, &format!("tl{k}b"), &addr_b, &addr_a)?;
        let direction = |seed| {
            let counters = Arc::new(Counters::default());
            Arc::new(Direction {
                shaper: Mutex::new(Shaper::new(params.clone(), seed, counters.clone())),
                wake: Condvar::new(),
                counters,
            })
        };
        let a_to_b = direction(params.seed);
        let b_to_a = direction(params.seed.wrapping_add(1));
        let stop = Arc::new(AtomicBool::new(false));
        let mut link = Link {
            a_to_b: a_to_b.clone(),
            b_to_a: b_to_a.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
            addr_a,
            addr_b,
        };
        let clone = |f: &File| {
            f.try_clone().map_err(|source| LinkError::Tun {
                dev: format!("tl{k}"),
                source,
            })
        };
        let (a_in, a_out) = (clone(&tun_a)?, tun_a);
        let (b_in, b_out) = (clone(&tun_b)?, tun_b);
        for (name, input, output, dir) in [("ab", a_in, b_out, a_to_b), ("ba", b_in, a_out, b_to_a)]
        {
            let (d, s) = (dir.clone(), stop.clone());
            link.threads.push(
                std::thread::Builder::new()
                    .name(format!("link-read-{name}"))
                    .spawn(move || read_loop(input, &d, &s))
                    .map_err(LinkError::Thread)?,
            );
            let s = stop.clone();
            link.threads.push(
                std::thread::Builder::new()
                    .name(format!("link-send-{name}"))
                    .spawn(move || send_loop(output, &dir, &s))
                    .map_err(LinkError::Thread)?,
            );
        }
        Ok(link)
    }

    /// A's address (`10.77.<k>.1`).
    pub fn addr_a(&self) -> &str {
        &self.addr_a
    }

    /// B's address (`10.77.<k>.2`).
    pub fn addr_b(&self) -> &str {
        &self.addr_b
    }

    /// Switches the partition on or off, both ways.
    pub fn set_partition(&self, on: bool) {
        for d in [&self.a_to_b, &self.b_to_a] {
            if let Ok(mut s) = d.shaper.lock() {
                s.set_partition(on);
            }
            d.wake.notify_all();
        }
    }

    /// Counters (A to B, B to A).
    pub fn counters(&self) -> (CounterSnapshot, CounterSnapshot) {
        (
            self.a_to_b.counters.snapshot(),
            self.b_to_a.counters.snapshot(),
        )
    }

    /// Stops the threads and closes the devices (they disappear with the last fd).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for d in [&self.a_to_b, &self.b_to_a] {
            d.wake.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn read_loop(mut tun: File, dir: &Direction, stop: &AtomicBool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let ready = {
            let mut fds = [PollFd::new(tun.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(100u8))
        };
        match ready {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "link: poll on a TUN device failed; this direction stops");
                return;
            }
        }
        match tun.read(&mut buf) {
            Ok(0) => continue,
            Ok(n) => {
                if let Ok(mut s) = dir.shaper.lock() {
                    let verdict = s.offer(Instant::now(), buf[..n].to_vec(), n);
                    if matches!(verdict, Verdict::Scheduled(_)) {
                        dir.wake.notify_all();
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "link: reading a TUN device failed; this direction stops");
                return;
            }
        }
    }
}

fn send_loop(mut tun: File, dir: &Direction, stop: &AtomicBool) {
    let Ok(mut shaper) = dir.shaper.lock() else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if let Some(packet) = shaper.pop_due(now) {
            drop(shaper);
            // A write fails only if the far device is gone or refuses the packet (e.g. while
            // it is down): like a lost packet.
            if let Err(e) = tun.write(&packet) {
                tracing::debug!(error = %e, "link: writing a TUN device failed");
            }
            shaper = match dir.shaper.lock() {
                Ok(s) => s,
                Err(_) => return,
            };
            continue;
        }
        let wait = shaper
            .next_due()
            .map_or(Duration::from_millis(100), |at| {
                at.saturating_duration_since(now)
            })
            .min(Duration::from_millis(100));
        shaper = match dir.wake.wait_timeout(shaper, wait) {
            Ok((s, _)) => s,
            Err(_) => return,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaper(params: LinkParams) -> (Shaper<u32>, Arc<Counters>) {
        let c = Arc::new(Counters::default());
        (Shaper::new(params.clone(), params.seed, c.clone()), c)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_lone_packet_arrives_after_its_transmit_time_plus_the_delay() {
        let (mut s, c) = shaper(LinkParams {
            loss: 0.0,
            ..LinkParams::cellular(1)
        });
        let t0 = Instant::now();
        // 100 bytes at 64 kbit/s: 12.5 ms on the line, then 400 ms.
        assert_eq!(
            s.offer(t0, 7, 100),
            Verdict::Scheduled(t0 + ms(400) + Duration::from_micros(12_500))
        );
        assert_eq!(s.pop_due(t0 + ms(412)), None);
        assert_eq!(s.pop_due(t0 + ms(413)), Some(7));
        assert_eq!(c.snapshot().forwarded, 1);
    }

    #[test]
    fn back_to_back_packets_leave_at_the_line_rate_in_order() {
        let (mut s, _) = shaper(LinkParams {
            loss: 0.0,
            ..LinkParams::cellular(1)
        });
        let t0 = Instant::now();
        // Ten 1000-byte packets at once: one every 125 ms.
        let due: Vec<Instant> = (0..10)
            .map(|i| match s.offer(t0, i, 1000) {
                Verdict::Scheduled(at) => at,
                v => panic!("{v:?}"),
            })
            .collect();
        for (i, at) in due.iter().enumerate() {
            assert_eq!(*at, t0 + ms(400) + ms(125) * (i as u32 + 1));
        }
        // A packet after the line went idle starts at once.
        let later = t0 + ms(5000);
        assert_eq!(
            s.offer(later, 99, 1000),
            Verdict::Scheduled(later + ms(525))
        );
        let mut out = Vec::new();
        while let Some(p) = s.pop_due(t0 + ms(10_000)) {
            out.push(p);
        }
        assert_eq!(out, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 99]);
    }

    #[test]
    fn loss_share_matches_and_the_seed_reproduces_it() {
        let run = |seed| {
            let (mut s, c) = shaper(LinkParams {
                rate_bps: 0,
                delay: Duration::ZERO,
                limit: usize::MAX,
                ..LinkParams::cellular(seed)
            });
            let t0 = Instant::now();
            let verdicts: Vec<bool> = (0..20_000)
                .map(|i| s.offer(t0, i, 100) == Verdict::Lost)
                .collect();
            (verdicts, c.snapshot().lost)
        };
        let (a, lost) = run(42);
        let share = lost as f64 / 20_000.0;
        assert!((0.045..0.055).contains(&share), "loss share {share}");
        assert_eq!(run(42).0, a, "same seed, same losses");
        assert_ne!(run(43).0, a, "another seed, other losses");
    }

    #[test]
    fn a_full_queue_drops_the_tail() {
        let (mut s, c) = shaper(LinkParams {
            loss: 0.0,
            limit: 3,
            ..LinkParams::cellular(1)
        });
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(matches!(s.offer(t0, i, 1000), Verdict::Scheduled(_)));
        }
        assert_eq!(s.offer(t0, 3, 1000), Verdict::QueueFull);
        assert_eq!(c.snapshot().queue_full, 1);
        // Once one is delivered there is room again.
        assert_eq!(s.pop_due(t0 + ms(525)), Some(0));
        assert!(matches!(
            s.offer(t0 + ms(525), 4, 1000),
            Verdict::Scheduled(_)
        ));
        assert_eq!(s.held(), 3);
    }

    #[test]
    fn a_partition_drops_everything_until_it_ends() {
        let (mut s, c) = shaper(LinkParams {
            loss: 0.0,
            ..LinkParams::cellular(1)
        });
        let t0 = Instant::now();
        s.offer(t0, 1, 100);
        s.offer(t0, 2, 100);
        s.set_partition(true);
        assert_eq!(s.held(), 0, "what was in flight is gone");
        assert_eq!(s.offer(t0 + ms(1), 3, 100), Verdict::Partitioned);
        assert_eq!(s.pop_due(t0 + ms(10_000)), None);
        assert_eq!(c.snapshot().partitioned, 3);
        s.set_partition(false);
        let t1 = t0 + ms(20_000);
        assert!(matches!(s.offer(t1, 4, 100), Verdict::Scheduled(_)));
        assert_eq!(s.pop_due(t1 + ms(413)), Some(4));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let mut p = LinkParams::cellular(1);
        p.loss = 1.5;
        assert!(p.check().is_err());
        let mut p = LinkParams::cellular(1);
        p.limit = 0;
        assert!(p.check().is_err());
    }
}
