//! Footprint and timing of the board images, measured: `towerlink-sim mcu --footprint`.
//!
//! - Flash (`.vector_table` + `.text` + `.rodata`, plus `.data`'s initial values) and static
//!   RAM (`.data` + `.bss` + `.uninit`) from the ELF section headers of each image
//!   ([`elf_sections`], a small ELF32 reader: no tool chain binutils needed).
//! - The emulated node run for a while: all four channels set to 50 Hz with SetRate, Identify
//!   and Zero sent, then the UART's bytes/s against the 115200-baud line's capacity (8N1: 10
//!   bits a byte), the sampling jitter as a reader of the line sees it (arrival time of each
//!   Samples frame minus the node time of its last value, less the smallest such delay), the
//!   node clock's drift against the host clock, and the stack high-water mark the firmware
//!   painted and reports on its console.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use towerlink_firmware::protocol::{
    encode, Body, Command, Frame, Op, StreamDecoder, MAX_ENCODED_LEN, PROTOCOL_VERSION,
};

use crate::mcu::{EmulatedMcu, McuOptions};

/// One section of an ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Its name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why an image could not be read as ELF.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Not a little-endian ELF32 file, or truncated.
    #[error("not a little-endian 32-bit ELF file ({0})")]
    Format(&'static str),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(ElfError::Format("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(ElfError::Format("truncated"))
}

/// The sections of a little-endian ELF32 image (names from the section name table).
pub fn elf_sections(bytes: &[u8]) -> Result<Vec<Section>, ElfError> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err(ElfError::Format("no ELF magic"));
    }
    if bytes.get(4) != Some(&1) || bytes.get(5) != Some(&1) {
        return Err(ElfError::Format("not ELF32 little-endian"));
    }
    let shoff = u32_at(bytes, 0x20)? as usize;
    let shentsize = u16_at(bytes, 0x2E)? as usize;
    let shnum = u16_at(bytes, 0x30)? as usize;
    let shstrndx = u16_at(bytes, 0x32)? as usize;
    if shentsize < 40 || shstrndx >= shnum {
        return Err(ElfError::Format("bad section header table"));
    }
    let header = |i: usize| shoff + i * shentsize;
    let strtab_off = u32_at(bytes, header(shstrndx) + 0x10)? as usize;
    let mut out = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let h = header(i);
        let name_off = u32_at(bytes, h)? as usize;
        let size = u32_at(bytes, h + 0x14)?;
        let start = strtab_off + name_off;
        let name_bytes = bytes
            .get(start..)
            .ok_or(ElfError::Format("bad section name"))?;
        let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(0);
        out.push(Section {
            name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
            size: u64::from(size),
        });
    }
    Ok(out)
}

/// Flash and static RAM of an image, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    /// `.vector_table` + `.text` + `.rodata`.
    pub code: u64,
    /// `.data` (its initial values are in flash, its variables in RAM).
    pub data: u64,
    /// `.bss` + `.uninit`.
    pub bss: u64,
}

impl Footprint {
    /// From an image's sections.
    pub fn of(sections: &[Section]) -> Footprint {
        let size = |n: &str| {
            sections
                .iter()
                .filter(|s| s.name == n)
                .map(|s| s.size)
                .sum::<u64>()
        };
        Footprint {
            code: size(".vector_table") + size(".text") + size(".rodata"),
            data: size(".data"),
            bss: size(".bss") + size(".uninit"),
        }
    }

    /// Flash used: code, constants and `.data`'s initial values.
    pub fn flash(&self) -> u64 {
        self.code + self.data
    }

    /// Static RAM.
    pub fn ram(&self) -> u64 {
        self.data + self.bss
    }
}

/// The footprint of the image at `path`.
pub fn image_footprint(path: &Path) -> Result<Footprint, ElfError> {
    let bytes = std::fs::read(path)?;
    Ok(Footprint::of(&elf_sections(&bytes)?))
}

/// What the timing run measured.
#[derive(Debug, Clone, Default)]
pub struct LinkFigures {
    /// Seconds measured.
    pub seconds: f64,
    /// Bytes the node sent per second.
    pub bytes_per_s: f64,
    /// Samples per second received, all channels.
    pub samples_per_s: f64,
    /// Delay jitter of Samples frames, ms: median, 99th percentile, max.
    pub jitter_ms: (f64, f64, f64),
    /// Node clock rate against the host clock, parts per million (positive: node fast).
    pub drift_ppm: f64,
    /// Acks received (SetRate ×3, Identify, Zero).
    pub acks_ok: usize,
    /// Frames that failed to decode.
    pub bad_frames: u64,
    /// Stack high-water mark and stack size from the console, bytes.
    pub stack: Option<(u64, u64)>,
}

fn send_command(port: &mut File, node: u32, seq: u32, op: Op) -> io::Result<()> {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    let command = Command {
        version: PROTOCOL_VERSION,
        node,
        seq,
        op,
    };
    let n = encode(&command, &mut buf).map_err(|e| io::Error::other(format!("{e:?}")))?;
    port.write_all(&buf[..n])
}

/// The last "stack high-water N of M bytes" on the console.
pub fn stack_from_console(console: &str) -> Option<(u64, u64)> {
    console.lines().rev().find_map(|line| {
        let rest = line.split("stack high-water ").nth(1)?;
        let mut words = rest.split_whitespace();
        let used = words.next()?.parse().ok()?;
        let _of = words.next()?;
        let size = words.next()?.parse().ok()?;
        Some((used, size))
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the emulated node for `duration` at 4 × 50 Hz and measures its link.
pub fn measure_link(options: &McuOptions, duration: Duration) -> anyhow::Result<LinkFigures> {
    let mcu = EmulatedMcu::start(options)?;
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mcu.path())?;
    let mut termios = tcgetattr(port.as_fd())?;
    cfmakeraw(&mut termios);
    tcsetattr(port.as_fd(), SetArg::TCSANOW, &termios)?;
    // Reads return after 100 ms at the latest, so the loop keeps its deadline.
    termios.control_chars[nix::sys::termios::SpecialCharacterIndices::VMIN as usize] = 0;
    termios.control_chars[nix::sys::termios::SpecialCharacterIndices::VTIME as usize] = 1;
    tcsetattr(port.as_fd(), SetArg::TCSANOW, &termios)?;

    let node = options.node_id;
    let mut decoder = StreamDecoder::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    // Wait for the Hello (QEMU notices the terminal was opened within about a second).
    let mut hello = false;
    while !hello {
        if start.elapsed() > Duration::from_secs(15) {
            anyhow::bail!("no Hello from the emulated node within 15 s");
        }
        let n = port.read(&mut buf)?;
        decoder.decode_all::<Frame, _>(&buf[..n], |f| {
            if let Ok(f) = f {
                hello |= matches!(f.body, Body::Hello { .. });
            }
        });
    }
    for (seq, channel) in [(1u32, 1u8), (2, 2), (3, 3)] {
        send_command(
            &mut port,
            node,
            seq,
            Op::SetRate {
                channel,
                rate_hz: 50,
            },
        )?;
    }
    send_command(&mut port, node, 4, Op::Identify)?;
    send_command(&mut port, node, 5, Op::Zero { channel: 0 })?;

    // Let the new rates settle, then measure.
    let settle = Instant::now() + Duration::from_secs(1);
    let mut figures = LinkFigures::default();
    let mut measuring = false;
    let mut bytes = 0u64;
    let mut samples = 0u64;
    let mut delays: Vec<(f64, f64)> = Vec::new();
    let mut t0 = Instant::now();
    let mut first_node_ms: Option<u32> = None;
    loop {
        let now = Instant::now();
        if !measuring && now >= settle {
            measuring = true;
            t0 = now;
        }
        if measuring && now.duration_since(t0) >= duration {
            break;
        }
        let n = port.read(&mut buf)?;
        let arrival = Instant::now();
        if measuring {
            bytes += n as u64;
        }
        decoder.decode_all::<Frame, _>(&buf[..n], |f| match f {
            Ok(Frame {
                body: Body::Ack { result, .. },
                ..
            }) if result.0 == 0 => figures.acks_ok += 1,
            Ok(Frame {
                body:
                    Body::Samples {
                        t0_ms,
                        period_us,
                        values,
                        ..
                    },
                ..
            }) if measuring => {
                samples += values.len() as u64;
                let last_ms =
                    u64::from(t0_ms) + (values.len() as u64 - 1) * u64::from(period_us) / 1000;
                let base = *first_node_ms.get_or_insert(t0_ms);
                let node_ms = last_ms as f64 - f64::from(base);
                let host_ms = arrival.duration_since(t0).as_secs_f64() * 1000.0;
                delays.push((host_ms, host_ms - node_ms));
            }
            _ => {}
        });
    }
    let seconds = t0.elapsed().as_secs_f64();
    figures.seconds = seconds;
    figures.bytes_per_s = bytes as f64 / seconds;
    figures.samples_per_s = samples as f64 / seconds;
    figures.bad_frames =
        decoder.stats().crc_errors + decoder.stats().undecodable + decoder.stats().oversize;
    if delays.len() >= 2 {
        // Drift: least-squares slope of delay against host time.
        let n = delays.len() as f64;
        let mx = delays.iter().map(|d| d.0).sum::<f64>() / n;
        let my = delays.iter().map(|d| d.1).sum::<f64>() / n;
        let sxy: f64 = delays.iter().map(|d| (d.0 - mx) * (d.1 - my)).sum();
        let sxx: f64 = delays.iter().map(|d| (d.0 - mx).powi(2)).sum();
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        figures.drift_ppm = -slope * 1e6;
        // Jitter: the delay left after removing the drift, above its minimum.
        let mut residual: Vec<f64> = delays.iter().map(|d| d.1 - slope * d.0).collect();
        let min = residual.iter().copied().fold(f64::INFINITY, f64::min);
        for r in &mut residual {
            *r -= min;
        }
        residual.sort_by(f64::total_cmp);
        figures.jitter_ms = (
            percentile(&residual, 0.5),
            percentile(&residual, 0.99),
            residual.last().copied().unwrap_or(0.0),
        );
    }
    // The console reports every 10 s: wait (bounded) for a report after the measurement.
    let deadline = Instant::now() + Duration::from_secs(12);
    let reports_before = mcu.console().matches("stack high-water").count();
    while mcu.console().matches("stack high-water").count() == reports_before
        && Instant::now() < deadline
    {
        let _ = port.read(&mut buf)?;
    }
    figures.stack = stack_from_console(&mcu.console());
    mcu.stop();
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_minimal_elf32_section_table() {
        // Header (52 bytes), then a string table, then 3 section headers (null, .text, .shstrtab).
        let names = b"\0.text\0.shstrtab\0";
        let mut elf = vec![0u8; 52];
        elf[..6].copy_from_slice(b"\x7fELF\x01\x01");
        let strtab_off = elf.len();
        elf.extend_from_slice(names);
        while elf.len() % 4 != 0 {
            elf.push(0);
        }
        let shoff = elf.len();
        elf[0x20..0x24].copy_from_slice(&(shoff as u32).to_le_bytes());
        elf[0x2E..0x30].copy_from_slice(&40u16.to_le_bytes());
        elf[0x30..0x32].copy_from_slice(&3u16.to_le_bytes());
        elf[0x32..0x34].copy_from_slice(&2u16.to_le_bytes());
        let mut sh = |name: u32, offset: u32, size: u32| {
            let mut h = [0u8; 40];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x10..0x14].copy_from_slice(&offset.to_le_bytes());
            h[0x14..0x18].copy_from_slice(&size.to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, 0, 1234);
        sh(7, strtab_off as u32, names.len() as u32);
        let sections = elf_sections(&elf).unwrap();
        assert_eq!(sections[1].name, ".text");
        assert_eq!(Footprint::of(&sections).code, 1234);
        assert!(elf_sections(b"not an elf").is_err());
        assert!(elf_sections(&elf[..60]).is_err());
    }

    #[test]
    fn finds_the_latest_stack_report() {
        let console = "booting\nx: stack high-water 900 of 60000 bytes, rx lost 0\n\
                       x: stack high-water 1200 of 60000 bytes, rx lost 0\n";
        assert_eq!(stack_from_console(console), Some((1200, 60000)));
        assert_eq!(stack_from_console("booting\n"), None);
    }
}
