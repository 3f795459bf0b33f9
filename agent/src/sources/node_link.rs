//! The one link to a sensor node's serial port: open it (exclusively), read and decode its
//! frames, encode and send commands.
//!
//! The serial source ([`super::serial_node`]) and the installer's commands (`check`, `scan`,
//! `tail`, `zero --direct`) all use [`NodePort`], so a real `/dev/ttyUSB*` and a test's
//! pseudo-terminal are opened by the same code. The port itself is opened in exactly one
//! function, [`open_serial`], so how a port is configured (termios) can change in one place.
//!
//! Opening takes an exclusive lock, so a running agent and an installer's tool never read the
//! same port and steal each other's bytes; a port that is held says so, and by which process
//! where `/proc` tells ([`OpenError::InUse`]). Every wait of the installer's helpers takes a
//! deadline, so a silent or absent node makes a command fail with a reason instead of hanging.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;
use tokio_serial::SerialStream;
use towerlink_firmware::protocol::{
    encode_after_delimiter, AckResult, Body, ChannelInfo, Command, Frame, FrameError, Op,
    StreamDecoder, MAX_ENCODED_LEN, PROTOCOL_VERSION,
};

/// How long [`NodePort::hello`] waits for a Hello before it sends Identify again (a command
/// can be lost on a noisy line like any frame; a node answers Identify within milliseconds).
pub const IDENTIFY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The fix for a port another program holds.
const IN_USE_FIX: &str = "stop the agent first (`systemctl stop towerlink`), or, while it runs, use `tail --from-broker` / `zero` without --direct / the command topic";

/// Opens `path` at `baud` 8N1, exclusively (TIOCEXCL and an exclusive `flock`), and discards
/// input buffered before we listened (bytes of unknown age). The only place a node's port is
/// opened; must run inside a tokio runtime.
pub fn open_serial(path: &Path, baud: u32) -> Result<SerialStream, tokio_serial::Error> {
    open_serial_with(path, baud, true)
}

/// [`open_serial`], discarding the input buffered before we listened only if `discard` (the
/// agent keeps it when it can map the node's time: see `serial_node`).
pub fn open_serial_with(
    path: &Path,
    baud: u32,
    discard: bool,
) -> Result<SerialStream, tokio_serial::Error> {
    // Through serial_open: classic termios where the kernel or emulator lacks termios2.
    let port = super::serial_open::open(
        &path.display().to_string(),
        super::serial_open::LineSettings::n81(baud),
    )
    .and_then(SerialStream::try_from)?;
    if discard {
        if let Err(e) = tokio_serial::SerialPort::clear(&port, tokio_serial::ClearBuffer::Input) {
            tracing::debug!(port = %path.display(), error = %e, "cannot discard stale input");
        }
    }
    Ok(port)
}

/// A process that has a port open (read from `/proc/<pid>/fd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    /// Its process id.
    pub pid: u32,
    /// Its command line (or its name), shortened.
    pub command: String,
}

/// Why a node's port could not be opened; [`OpenError::fix`] is the installer's next step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Nothing at that path.
    #[error("{path} does not exist")]
    Missing {
        /// The port.
        path: String,
    },
    /// Another program holds the port (the agent, usually).
    #[error("cannot open {path}: it is in use by {}", describe_holders(holders))]
    InUse {
        /// The port.
        path: String,
        /// Who holds it, where `/proc` tells (empty when it does not).
        holders: Vec<PortHolder>,
    },
    /// Not allowed to open it.
    #[error("cannot open {path}: {detail}")]
    Permission {
        /// The port.
        path: String,
        /// The OS's words.
        detail: String,
    },
    /// The path is not a serial port.
    #[error("cannot open {path}: {detail}")]
    NotSerial {
        /// The port.
        path: String,
        /// The OS's words.
        detail: String,
    },
    /// Anything else the OS refused.
    #[error("cannot open {path}: {detail}")]
    Other {
        /// The port.
        path: String,
        /// The OS's words.
        detail: String,
    },
}

impl OpenError {
    /// What the installer should do about it.
    pub fn fix(&self) -> String {
        match self {
            OpenError::Missing { .. } => "plug the adapter in, or correct the port (prefer a stable /dev/serial/by-id/ or udev name; `ls /dev/serial/by-id/` lists what is attached)".into(),
            OpenError::InUse { .. } => IN_USE_FIX.into(),
            OpenError::Permission { .. } => {
                "run as a user in the `dialout` group (the packaged service's user is)".into()
            }
            OpenError::NotSerial { path, .. } => {
                format!("{path} is not a serial port; correct the port")
            }
            OpenError::Other { .. } => {
                "check the adapter (dmesg shows why the kernel refused it)".into()
            }
        }
    }

    /// Sorts the serial crate's error into a cause (`holders` is asked only for a busy port).
    fn classify(
        path: &Path,
        e: &tokio_serial::Error,
        holders: impl FnOnce() -> Vec<PortHolder>,
    ) -> OpenError {
        let detail = e.to_string();
        let lower = detail.to_lowercase();
        let shown = path.display().to_string();
        // EBUSY (TIOCEXCL) and a failed exclusive flock both come as `NoDevice`.
        if e.kind == tokio_serial::ErrorKind::NoDevice
            || lower.contains("busy")
            || lower.contains("lock")
        {
            OpenError::InUse {
                path: shown,
                holders: holders(),
            }
        } else if lower.contains("permission") {
            OpenError::Permission {
                path: shown,
                detail,
            }
        } else if lower.contains("not a typewriter") || lower.contains("inappropriate ioctl") {
            OpenError::NotSerial {
                path: shown,
                detail,
            }
        } else {
            OpenError::Other {
                path: shown,
                detail,
            }
        }
    }
}

fn describe_holders(holders: &[PortHolder]) -> String {
    if holders.is_empty() {
        return "another program (the OS does not tell which)".into();
    }
    let each: Vec<String> = holders
        .iter()
        .map(|h| format!("process {} ({})", h.pid, h.command))
        .collect();
    each.join(", ")
}

/// The processes (other than this one) with `path` open, from `/proc/*/fd`. Only processes
/// this user may inspect are seen (all of them as root).
pub fn port_holders(path: &Path) -> Vec<PortHolder> {
    let Ok(target) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let same_file = |m: &std::fs::Metadata| {
        if target.file_type().is_char_device() {
            m.file_type().is_char_device() && m.rdev() == target.rdev()
        } else {
            m.dev() == target.dev() && m.ino() == target.ino()
        }
    };
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| same_file(&m)));
        if holds {
            out.push(PortHolder {
                pid,
                command: process_command(&entry.path()),
            });
        }
    }
    out.sort_by_key(|h| h.pid);
    out
}

/// `towerlink run --config /etc/...` from `/proc/<pid>/cmdline` (program by its file name,
/// at most ~80 characters), or the process name.
fn process_command(proc_dir: &Path) -> String {
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let mut parts: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    if let Some(first) = parts.first_mut() {
        if let Some(name) = Path::new(first.as_str()).file_name() {
            *first = name.to_string_lossy().into_owned();
        }
    }
    let mut text = parts.join(" ");
    if text.is_empty() {
        text = std::fs::read_to_string(proc_dir.join("comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
    }
    if text.chars().count() > 80 {
        text = text.chars().take(77).collect::<String>() + "...";
    }
    text
}

/// What a node said about itself (its Hello).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHello {
    /// The node id.
    pub node: u32,
    /// Firmware version.
    pub fw: (u8, u8, u8),
    /// Its channels.
    pub channels: Vec<ChannelInfo>,
}

/// Why a node did not introduce itself; the `Display` is the reason, [`ProbeFailure::fix`]
/// the installer's fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    /// Not a byte arrived.
    #[error("the port opens but no byte arrived")]
    Silent,
    /// Bytes arrived, but not one valid frame.
    #[error("{bytes} bytes arrived but no valid frame ({bad_frames} dropped)")]
    Garbage {
        /// Bytes read.
        bytes: u64,
        /// Frames dropped (CRC, size, decoding).
        bad_frames: u64,
    },
    /// Only frames of another node than the configured one.
    #[error("node {heard} answers on this port")]
    Foreign {
        /// The node that did answer.
        heard: u32,
    },
    /// Valid frames, but no Hello even after an Identify.
    #[error("node {node} sends frames but answered none of the Identify commands sent to it")]
    NoHello {
        /// The node heard.
        node: u32,
    },
    /// The port failed while reading or writing.
    #[error("the port failed: {0}")]
    Io(String),
}

impl ProbeFailure {
    /// The installer's fix, for a port configured at `baud`.
    pub fn fix(&self, baud: u32) -> String {
        match self {
            ProbeFailure::Silent => format!("check the node's power and the wiring (TX/RX crossed, RS-485 A/B); the node must send at {baud} baud 8N1"),
            ProbeFailure::Garbage { .. } => format!("the baud rate is probably wrong (configured {baud}); check the node's setting, or noise on the line"),
            ProbeFailure::Foreign { .. } => "set node_id to the node that is really wired here, or move the cable".into(),
            ProbeFailure::NoHello { .. } => "the node is heard but does not hear the gateway: check the gateway-to-node wire (TX to the node's RX; on RS-485 the A/B pair and the adapter's direction control), else update the node's firmware to wire protocol v1 (Identify -> Hello)".into(),
            ProbeFailure::Io(_) => "the adapter was unplugged or is faulty; replug it and run check again".into(),
        }
    }
}

/// Why a command could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The command does not fit a frame (never for the protocol's ops).
    #[error("cannot encode command: {0}")]
    Encode(String),
    /// The port failed while writing.
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
}

/// Why a command got no Ack.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It could not be sent.
    #[error(transparent)]
    Send(#[from] SendError),
    /// No Ack before the deadline.
    #[error("node {0} did not acknowledge in time")]
    NoAck(u32),
    /// The port failed while waiting.
    #[error("{0}")]
    Io(io::Error),
}

/// Byte and frame counters of one port session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounts {
    /// Bytes read.
    pub bytes: u64,
    /// Valid frames.
    pub frames: u64,
    /// Frames dropped by the decoder.
    pub bad_frames: u64,
}

/// What one [`NodePort::recv`] brought.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A valid frame.
    Frame(Frame),
    /// A frame the decoder dropped, and why.
    Dropped(FrameError),
}

/// An open serial port with a node on the other end.
pub struct NodePort {
    reader: ReadHalf<SerialStream>,
    writer: WriteHalf<SerialStream>,
    decoder: StreamDecoder,
    buf: Vec<u8>,
    filled: usize,
    used: usize,
    next_command_seq: u32,
    /// Counters since the port was opened.
    pub counts: PortCounts,
}

impl NodePort {
    /// Opens `path` at `baud` (see [`open_serial`]), explaining a failure.
    pub fn open(path: &Path, baud: u32) -> Result<NodePort, OpenError> {
        NodePort::open_with(path, baud, true)
    }

    /// [`NodePort::open`], keeping the input the kernel buffered before the open unless
    /// `discard`.
    pub fn open_with(path: &Path, baud: u32, discard: bool) -> Result<NodePort, OpenError> {
        if std::fs::symlink_metadata(path).is_err() {
            return Err(OpenError::Missing {
                path: path.display().to_string(),
            });
        }
        let port = open_serial_with(path, baud, discard)
            .map_err(|e| OpenError::classify(path, &e, || port_holders(path)))?;
        let (reader, writer) = tokio::io::split(port);
        Ok(NodePort {
            reader,
            writer,
            decoder: StreamDecoder::new(),
            buf: vec![0; 4096],
            filled: 0,
            used: 0,
            next_command_seq: 1,
            counts: PortCounts::default(),
        })
    }

    /// Are bytes of the last read still waiting to be decoded?
    pub fn has_buffered(&self) -> bool {
        self.used < self.filled
    }

    /// The next frame (valid or dropped), reading as needed. Cancel-safe: a `select!` may drop
    /// the future while it waits for bytes without losing any. A hang-up is an error.
    pub async fn recv(&mut self) -> io::Result<Received> {
        loop {
            while self.used < self.filled {
                let (used, outcome) = self
                    .decoder
                    .feed::<Frame>(&self.buf[self.used..self.filled]);
                self.used += used;
                if used == 0 {
                    self.used = self.filled;
                }
                match outcome {
                    Some(Ok(frame)) => {
                        self.counts.frames += 1;
                        return Ok(Received::Frame(frame));
                    }
                    Some(Err(e)) => {
                        self.counts.bad_frames += 1;
                        return Ok(Received::Dropped(e));
                    }
                    None => {}
                }
            }
            let n = self.reader.read(&mut self.buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the port hung up (device unplugged?)",
                ));
            }
            self.counts.bytes += n as u64;
            self.filled = n;
            self.used = 0;
        }
    }

    /// The next valid frame, or `Ok(None)` at `deadline`. A hang-up is an error.
    pub async fn next_frame(&mut self, deadline: Instant) -> io::Result<Option<Frame>> {
        loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Err(_) => return Ok(None),
                Ok(Ok(Received::Frame(frame))) => return Ok(Some(frame)),
                Ok(Ok(Received::Dropped(_))) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// Sends `op` to `node` under the command seq `seq` (echoed in the node's Ack).
    pub async fn send_command(&mut self, node: u32, seq: u32, op: Op) -> Result<(), SendError> {
        let command = Command {
            version: PROTOCOL_VERSION,
            node,
            seq,
            op,
        };
        // After a 0x00, so that bytes left in the node's decoder (line noise, another
        // protocol's bytes) are not glued to the command and lose it.
        let mut out = [0u8; MAX_ENCODED_LEN + 1];
        let len = encode_after_delimiter(&command, &mut out)
            .map_err(|e| SendError::Encode(format!("{e:?}")))?;
        self.writer.write_all(&out[..len]).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Sends `op` to `node` under the port's next command seq, which it returns.
    pub async fn send(&mut self, node: u32, op: Op) -> Result<u32, SendError> {
        let seq = self.next_command_seq;
        self.next_command_seq = self.next_command_seq.wrapping_add(1);
        self.send_command(node, seq, op).await?;
        Ok(seq)
    }

    /// Listens until the node introduces itself: learns its id from the first valid frame,
    /// sends Identify, and returns its Hello. Frames of a node other than `expected` are
    /// ignored. `on_frame` sees every valid frame read meanwhile.
    pub async fn hello(
        &mut self,
        expected: Option<u32>,
        deadline: Instant,
        mut on_frame: impl FnMut(&Frame),
    ) -> Result<NodeHello, ProbeFailure> {
        // When Identify was last sent: sent again if no Hello followed within
        // IDENTIFY_RETRY (a command can be lost on a noisy line like any frame).
        let mut identified: Option<Instant> = None;
        let mut heard_other = None;
        let mut node = None;
        loop {
            let frame = match self.next_frame(deadline).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(ProbeFailure::Io(e.to_string())),
            };
            on_frame(&frame);
            if expected.is_some_and(|n| n != frame.node) {
                heard_other = Some(frame.node);
                continue;
            }
            node = Some(frame.node);
            if let Body::Hello { fw, channels, .. } = frame.body {
                return Ok(NodeHello {
                    node: frame.node,
                    fw,
                    channels: channels.into_iter().collect(),
                });
            }
            if identified.is_none_or(|at| at.elapsed() >= IDENTIFY_RETRY) {
                identified = Some(Instant::now());
                self.send(frame.node, Op::Identify)
                    .await
                    .map_err(|e| ProbeFailure::Io(e.to_string()))?;
            }
        }
        Err(match (node, heard_other) {
            (Some(node), _) => ProbeFailure::NoHello { node },
            (None, Some(heard)) => ProbeFailure::Foreign { heard },
            (None, None) if self.counts.bytes == 0 => ProbeFailure::Silent,
            (None, None) => ProbeFailure::Garbage {
                bytes: self.counts.bytes,
                bad_frames: self.counts.bad_frames,
            },
        })
    }

    /// Sends `op` to `node` and waits (until `deadline`) for its Ack.
    pub async fn command(
        &mut self,
        node: u32,
        op: Op,
        deadline: Instant,
    ) -> Result<AckResult, CommandError> {
        let seq = self.send(node, op).await?;
        loop {
            match self.next_frame(deadline).await {
                Ok(Some(Frame {
                    node: from,
                    body:
                        Body::Ack {
                            command_seq,
                            result,
                        },
                    ..
                })) if from == node && command_seq == seq => return Ok(result),
                Ok(Some(_)) => {}
                Ok(None) => return Err(CommandError::NoAck(node)),
                Err(e) => return Err(CommandError::Io(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(text: &str) -> tokio_serial::Error {
        tokio_serial::Error::new(tokio_serial::ErrorKind::NoDevice, text)
    }

    #[test]
    fn a_held_port_names_its_holder_and_the_fix() {
        let holder = PortHolder {
            pid: 4242,
            command: "towerlink run --config /etc/towerlink/towerlink.toml".into(),
        };
        let e = OpenError::classify(
            Path::new("/dev/ttyUSB0"),
            &busy("Unable to acquire exclusive lock on serial port"),
            || vec![holder.clone()],
        );
        assert_eq!(
            e.to_string(),
            "cannot open /dev/ttyUSB0: it is in use by process 4242 (towerlink run --config /etc/towerlink/towerlink.toml)"
        );
        assert!(e.fix().contains("systemctl stop towerlink"), "{}", e.fix());
        let unknown = OpenError::classify(
            Path::new("/dev/ttyUSB0"),
            &busy("Device or resource busy"),
            Vec::new,
        );
        assert!(unknown.to_string().contains("another program"), "{unknown}");
    }

    #[test]
    fn other_open_errors_keep_their_fixes() {
        let denied = OpenError::classify(
            Path::new("/dev/ttyS0"),
            &tokio_serial::Error::new(
                tokio_serial::ErrorKind::Io(io::ErrorKind::PermissionDenied),
                "Permission denied",
            ),
            || panic!("holders asked for a permission error"),
        );
        assert!(matches!(denied, OpenError::Permission { .. }));
        assert!(denied.fix().contains("dialout"));
        let not_tty = OpenError::classify(
            Path::new("/dev/null"),
            &tokio_serial::Error::new(
                tokio_serial::ErrorKind::Unknown,
                "Inappropriate ioctl for device",
            ),
            Vec::new,
        );
        assert_eq!(
            not_tty.fix(),
            "/dev/null is not a serial port; correct the port"
        );
    }

    #[test]
    fn the_holders_of_an_open_file_are_found_in_proc() {
        // A child process holding a file open is found by its pid and command line.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("held");
        std::fs::write(&file, b"x").unwrap();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3<'{}'; sleep 30", file.display()))
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let holders = port_holders(&file);
            if holders.iter().any(|h| h.pid == pid) || std::time::Instant::now() > deadline {
                break holders;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let _ = child.kill();
        let _ = child.wait();
        let me = found.iter().find(|h| h.pid == pid);
        assert!(
            me.is_some_and(|h| h.command.starts_with("sh ")),
            "{found:?}"
        );
        assert!(port_holders(&dir.path().join("nothing")).is_empty());
    }
}
