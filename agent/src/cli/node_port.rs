//! An installer's direct line to one sensor node: open its serial port, read frames, send a
//! command and wait for its Ack, ask it who it is.
//!
//! `check`, `scan`, `tail` (without the broker) and `zero --direct` use this while the agent
//! is not running. Every wait takes a deadline, so a silent or absent node makes a command
//! fail with a reason instead of hanging the installer's terminal.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;
use tokio_serial::SerialStream;
use towerlink_firmware::protocol::{
    encode, AckResult, Body, ChannelInfo, Command, Frame, Op, StreamDecoder, MAX_ENCODED_LEN,
    PROTOCOL_VERSION,
};

use crate::pipeline::channel_names;
use crate::sources::serial_open::{self, LineSettings};

/// Why a port could not be opened, with the installer's next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFailure {
    /// What went wrong.
    pub reason: String,
    /// What to do about it.
    pub fix: String,
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

impl NodeHello {
    /// `node 101, firmware 1.0.0, 4 channels: strain 50 Hz, tilt_x 10 Hz, ...` with the
    /// channels under their feed names (`names` from the configuration, if any).
    pub fn describe(&self, names: &BTreeMap<u8, String>) -> String {
        let channels: Vec<String> = channel_names(&self.channels, names)
            .iter()
            .map(|c| format!("{} {} Hz", c.name, c.rate_hz))
            .collect();
        format!(
            "node {}, firmware {}.{}.{}, {} channel(s): {}",
            self.node,
            self.fw.0,
            self.fw.1,
            self.fw.2,
            channels.len(),
            channels.join(", ")
        )
    }
}

/// Why a node did not introduce itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// Not a byte arrived.
    Silent,
    /// Bytes arrived, but not one valid frame.
    Garbage {
        /// Bytes read.
        bytes: u64,
        /// Frames dropped (CRC, size, decoding).
        bad_frames: u64,
    },
    /// Only frames of another node than the configured one.
    Foreign {
        /// The node that did answer.
        heard: u32,
    },
    /// Valid frames, but no Hello even after an Identify.
    NoHello {
        /// The node heard.
        node: u32,
    },
    /// The port failed while reading or writing.
    Io(String),
}

impl ProbeFailure {
    /// The reason and the installer's fix, at `baud`.
    pub fn explain(&self, baud: u32) -> (String, String) {
        match self {
            ProbeFailure::Silent => (
                "the port opens but no byte arrived".into(),
                format!("check the node's power and the wiring (TX/RX crossed, RS-485 A/B); the node must send at {baud} baud 8N1"),
            ),
            ProbeFailure::Garbage { bytes, bad_frames } => (
                format!("{bytes} bytes arrived but no valid frame ({bad_frames} dropped)"),
                format!("the baud rate is probably wrong (configured {baud}); check the node's setting, or noise on the line"),
            ),
            ProbeFailure::Foreign { heard } => (
                format!("node {heard} answers on this port"),
                "set node_id to the node that is really wired here, or move the cable".into(),
            ),
            ProbeFailure::NoHello { node } => (
                format!("node {node} sends frames but did not answer Identify with a Hello"),
                "update the node's firmware to wire protocol v1 (Identify -> Hello)".into(),
            ),
            ProbeFailure::Io(e) => (
                format!("the port failed: {e}"),
                "the adapter was unplugged or is faulty; replug it and run check again".into(),
            ),
        }
    }
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

/// Opens `path` at `baud` 8N1, exclusively (so a running agent and an installer's tool never
/// read the same port and steal each other's bytes). Must run inside a tokio runtime.
pub fn open(path: &Path, baud: u32) -> Result<NodePort, OpenFailure> {
    if std::fs::symlink_metadata(path).is_err() {
        return Err(OpenFailure {
            reason: format!("{} does not exist", path.display()),
            fix: "plug the adapter in, or correct the port (prefer a stable /dev/serial/by-id/ or udev name; `ls /dev/serial/by-id/` lists what is attached)".into(),
        });
    }
    let port = serial_open::open(&path.display().to_string(), LineSettings::n81(baud))
        .and_then(tokio_serial::SerialStream::try_from)
        .map_err(|e| explain_open_error(path, &e))?;
    // Bytes buffered before we listened are of unknown age; start from what arrives now.
    let _ = tokio_serial::SerialPort::clear(&port, tokio_serial::ClearBuffer::Input);
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

fn explain_open_error(path: &Path, e: &tokio_serial::Error) -> OpenFailure {
    let text = e.to_string();
    let lower = text.to_lowercase();
    let fix = if lower.contains("busy") {
        "another program holds the port (is the agent running? `systemctl stop towerlink` first, or use --from-broker / the command topic)".to_owned()
    } else if lower.contains("permission") {
        "run as a user in the `dialout` group (the packaged service's user is)".to_owned()
    } else if lower.contains("not a typewriter") || lower.contains("inappropriate ioctl") {
        format!("{} is not a serial port; correct the port", path.display())
    } else {
        "check the adapter (dmesg shows why the kernel refused it)".to_owned()
    };
    OpenFailure {
        reason: format!("cannot open {}: {text}", path.display()),
        fix,
    }
}

impl NodePort {
    /// The next valid frame, or `Ok(None)` at `deadline`. A hang-up is an error.
    pub async fn next_frame(&mut self, deadline: Instant) -> io::Result<Option<Frame>> {
        loop {
            while self.used < self.filled {
                let (used, outcome) = self
                    .decoder
                    .feed::<Frame>(&self.buf[self.used..self.filled]);
                self.used += used;
                match outcome {
                    Some(Ok(frame)) => {
                        self.counts.frames += 1;
                        return Ok(Some(frame));
                    }
                    Some(Err(_)) => self.counts.bad_frames += 1,
                    None => {}
                }
                if used == 0 {
                    self.used = self.filled;
                }
            }
            let read = tokio::time::timeout_at(deadline, self.reader.read(&mut self.buf)).await;
            match read {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the port hung up (device unplugged?)",
                    ))
                }
                Ok(Ok(n)) => {
                    self.counts.bytes += n as u64;
                    self.filled = n;
                    self.used = 0;
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// Sends `op` to `node`; returns the command's seq (echoed in the node's Ack).
    pub async fn send(&mut self, node: u32, op: Op) -> io::Result<u32> {
        let seq = self.next_command_seq;
        self.next_command_seq = self.next_command_seq.wrapping_add(1);
        let command = Command {
            version: PROTOCOL_VERSION,
            node,
            seq,
            op,
        };
        let mut out = [0u8; MAX_ENCODED_LEN];
        let len = encode(&command, &mut out).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("cannot encode: {e:?}"))
        })?;
        self.writer.write_all(&out[..len]).await?;
        self.writer.flush().await?;
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
        let mut identified = false;
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
            if !identified {
                identified = true;
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
    ) -> Result<AckResult, String> {
        let seq = self.send(node, op).await.map_err(|e| e.to_string())?;
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
                Ok(None) => return Err(format!("node {node} did not acknowledge in time")),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}
