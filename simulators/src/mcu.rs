//! The emulated panel-node MCU: `qemu-system-arm -M mps2-an386` running the firmware's
//! emulated-board image (`firmware/boards/mps2-an386`), its gateway UART on a
//! pseudo-terminal the agent opens like a real adapter.
//!
//! Nothing is built here: the image is built beforehand with
//! `cd firmware/boards/mps2-an386 && cargo build --release` (path [`default_image`], or
//! `TOWERLINK_MCU_IMAGE`), and a missing image or QEMU is a clear error.
//!
//! QEMU's wiring:
//! - UART0 (the gateway link) on `-serial pty`; QEMU names the terminal on its stdout and a
//!   stable symlink (`link`) is pointed at it, as udev does for `/dev/serial/by-id/...`.
//! - UART1 (the board's console: boot line, stack high-water mark) to a file, [`EmulatedMcu::console`].
//! - The monitor on a Unix socket, [`EmulatedMcu::monitor_path`]; [`EmulatedMcu::system_reset`]
//!   resets the board there (`system_reset`), as a watchdog or a power cut would.
//! - The node id in the board's settings block (0x203F_FF00: magic `TLNK`, id), written by
//!   QEMU's loader device at every reset.
//! - No `-icount` unless asked ([`DEFAULT_ICOUNT`] says why, with the measurements).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The image's path inside the board crate, relative to the board directory.
pub const IMAGE_IN_BOARD: &str = "target/thumbv7em-none-eabihf/release/towerlink-node-mps2-an386";
/// The real-board image's path inside its board crate (`firmware/boards/stm32f411-panel`).
pub const REAL_IMAGE_IN_BOARD: &str =
    "target/thumbv7em-none-eabihf/release/towerlink-node-stm32f411";
/// Overrides the image path.
pub const IMAGE_ENV: &str = "TOWERLINK_MCU_IMAGE";
/// Overrides the QEMU binary.
pub const QEMU_ENV: &str = "TOWERLINK_QEMU";
/// QEMU's instruction counting by default: off. Measured (`towerlink-sim mcu --footprint
/// --icount ... --load N`, README firmware section): without `-icount` QEMU's virtual clock is
/// the host clock and the board's time base (a free-running hardware timer, not a tick count)
/// stays within 0.06 % of it with every core busy; `shift=auto,sleep=on` oscillates by
/// ±0.4 s and drifts 0.1-0.4 %, and a fixed shift falls 4-20 % behind under load, because
/// virtual time then advances only with executed instructions and warps across WFI, so every
/// host stall is lost. `--icount SETTING` still passes any setting through.
pub const DEFAULT_ICOUNT: &str = "off";
/// Settings block the image reads its node id from.
const SETTINGS_ADDR: u32 = 0x203F_FF00;
const SETTINGS_MAGIC: u32 = u32::from_le_bytes(*b"TLNK");
/// How long QEMU may take to open its pseudo-terminal.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The board crate's directory in this repository.
pub fn board_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/boards/mps2-an386")
}

/// The image `towerlink-sim mcu` runs unless told otherwise: `TOWERLINK_MCU_IMAGE`, else the
/// board crate's release build.
pub fn default_image() -> PathBuf {
    match std::env::var_os(IMAGE_ENV) {
        Some(p) => PathBuf::from(p),
        None => board_dir().join(IMAGE_IN_BOARD),
    }
}

/// Why the emulated MCU could not be run.
#[derive(Debug, thiserror::Error)]
pub enum McuError {
    /// The image was not built.
    #[error(
        "no MCU image at {}: build it first with `cd firmware/boards/mps2-an386 && cargo build --release` \
         (needs `rustup target add thumbv7em-none-eabihf`), or pass --image / set {IMAGE_ENV}",
        .0.display()
    )]
    ImageMissing(PathBuf),
    /// QEMU is not installed.
    #[error("cannot run {}: {source}; install QEMU's Arm system emulator (Debian: apt-get install qemu-system-arm) or set {QEMU_ENV}", .qemu.display())]
    QemuMissing {
        /// The binary tried.
        qemu: PathBuf,
        /// Why it did not start.
        source: io::Error,
    },
    /// QEMU stopped or never named its terminal.
    #[error("qemu-system-arm did not start the board: {0}")]
    QemuFailed(String),
    /// The monitor did not answer.
    #[error("QEMU monitor at {}: {reason}", .path.display())]
    Monitor {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// File system or process trouble.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// How to run one emulated node.
#[derive(Debug, Clone)]
pub struct McuOptions {
    /// The ELF image.
    pub image: PathBuf,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Device id (the agent's `[[node]] id`).
    pub dev: String,
    /// Node id the firmware announces.
    pub node_id: u32,
    /// Stable link to the UART's terminal.
    pub link: PathBuf,
    /// `-icount` argument; `None` (the default, see [`DEFAULT_ICOUNT`]) runs without
    /// instruction counting.
    pub icount: Option<String>,
}

impl McuOptions {
    /// Defaults: [`default_image`], `qemu-system-arm` (or `TOWERLINK_QEMU`), no `-icount`.
    pub fn new(dev: &str, node_id: u32, link: &Path) -> Self {
        McuOptions {
            image: default_image(),
            qemu: std::env::var_os(QEMU_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("qemu-system-arm")),
            dev: dev.to_owned(),
            node_id,
            link: link.to_owned(),
            icount: None,
        }
    }
}

/// A running emulated MCU. Dropping it stops QEMU.
#[derive(Debug)]
pub struct EmulatedMcu {
    child: Child,
    dev: String,
    node_id: u32,
    link: PathBuf,
    tty: PathBuf,
    monitor: PathBuf,
    console: PathBuf,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

/// The terminal named in QEMU's "char device redirected to /dev/pts/N (label serial0)".
fn parse_pty_line(line: &str) -> Option<PathBuf> {
    let rest = line.split("char device redirected to ").nth(1)?;
    let (path, label) = rest.split_once(' ')?;
    label.contains("serial0").then(|| PathBuf::from(path))
}

fn point_link(link: &Path, target: &Path) -> io::Result<()> {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = link.with_extension("tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

impl EmulatedMcu {
    /// Starts QEMU and returns once the UART's terminal is behind `options.link`.
    pub fn start(options: &McuOptions) -> Result<EmulatedMcu, McuError> {
        if !options.image.is_file() {
            return Err(McuError::ImageMissing(options.image.clone()));
        }
        let dir = tempfile::Builder::new().prefix("towerlink-mcu").tempdir()?;
        let monitor = dir.path().join("monitor.sock");
        let console = dir.path().join("console.log");
        let mut cmd = Command::new(&options.qemu);
        cmd.args([
            "-M",
            "mps2-an386",
            "-display",
            "none",
            "-nodefaults",
            "-nic",
            "none",
        ])
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .args(["-serial", "pty", "-serial"])
        .arg(format!("file:{}", console.display()))
        .arg("-device")
        .arg(format!(
            "loader,addr={SETTINGS_ADDR:#x},data={SETTINGS_MAGIC:#x},data-len=4"
        ))
        .arg("-device")
        .arg(format!(
            "loader,addr={:#x},data={:#x},data-len=4",
            SETTINGS_ADDR + 4,
            options.node_id
        ));
        if let Some(icount) = &options.icount {
            cmd.arg("-icount").arg(icount);
        }
        cmd.arg("-kernel")
            .arg(&options.image)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| McuError::QemuMissing {
            qemu: options.qemu.clone(),
            source,
        })?;

        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let (found_tx, found_rx) = std::sync::mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                // Keep draining stdout for QEMU's whole life, so it never blocks on the pipe.
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(tty) = parse_pty_line(&line) {
                        let _ = found_tx.send(tty);
                    }
                }
            });
        }
        let fail = |child: &mut Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(50));
            let err = stderr
                .lock()
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            McuError::QemuFailed(if err.is_empty() {
                why
            } else {
                format!("{why}: {err}")
            })
        };
        let tty = match found_rx.recv_timeout(START_TIMEOUT) {
            Ok(tty) => tty,
            Err(_) => {
                let why = match child.try_wait() {
                    Ok(Some(status)) => format!("it exited ({status})"),
                    _ => format!("no pseudo-terminal named within {START_TIMEOUT:?}"),
                };
                return Err(fail(&mut child, why));
            }
        };
        if let Err(e) = point_link(&options.link, &tty) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.into());
        }
        Ok(EmulatedMcu {
            child,
            dev: options.dev.clone(),
            node_id: options.node_id,
            link: options.link.clone(),
            tty,
            monitor,
            console,
            stderr,
            _dir: dir,
        })
    }

    /// Device id.
    pub fn dev(&self) -> &str {
        &self.dev
    }

    /// Node id the firmware announces.
    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    /// The stable link the agent opens.
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// The pseudo-terminal QEMU opened.
    pub fn tty(&self) -> &Path {
        &self.tty
    }

    /// QEMU's monitor socket (`socat - UNIX-CONNECT:<path>`, then e.g. `system_reset`).
    pub fn monitor_path(&self) -> &Path {
        &self.monitor
    }

    /// What the board printed on its console UART so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// What QEMU printed on stderr so far.
    pub fn qemu_stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Runs one monitor command and returns its output (up to the next prompt).
    pub fn monitor_command(&self, command: &str) -> Result<String, McuError> {
        let err = |reason: String| McuError::Monitor {
            path: self.monitor.clone(),
            reason,
        };
        let mut stream =
            UnixStream::connect(&self.monitor).map_err(|e| err(format!("connect: {e}")))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| err(e.to_string()))?;
        let read_prompt = |stream: &mut UnixStream| -> Result<String, McuError> {
            let mut text = Vec::new();
            let mut buf = [0u8; 512];
            let deadline = Instant::now() + Duration::from_secs(5);
            while !text.ends_with(b"(qemu) ") {
                if Instant::now() > deadline {
                    return Err(err("no prompt within 5 s".into()));
                }
                let n = stream
                    .read(&mut buf)
                    .map_err(|e| err(format!("read: {e}")))?;
                if n == 0 {
                    return Err(err("closed".into()));
                }
                text.extend_from_slice(&buf[..n]);
            }
            Ok(String::from_utf8_lossy(&text).into_owned())
        };
        read_prompt(&mut stream)?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|e| err(format!("write: {e}")))?;
        read_prompt(&mut stream)
    }

    /// Resets the board (QEMU's `system_reset`): the firmware boots again from its reset
    /// vector, as after a watchdog reset or a power cut; the terminal stays.
    pub fn system_reset(&self) -> Result<(), McuError> {
        self.monitor_command("system_reset").map(|_| ())
    }

    /// Stops QEMU and removes the link.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::fs::read_link(&self.link).ok().as_deref() == Some(self.tty.as_path()) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

impl Drop for EmulatedMcu {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_uart_terminal_in_qemus_output() {
        assert_eq!(
            parse_pty_line("char device redirected to /dev/pts/7 (label serial0)"),
            Some(PathBuf::from("/dev/pts/7"))
        );
        assert_eq!(
            parse_pty_line("char device redirected to /dev/pts/8 (label serial1)"),
            None
        );
        assert_eq!(parse_pty_line("QEMU 7.2 monitor"), None);
    }

    #[test]
    fn a_missing_image_says_how_to_build_it() {
        let mut options = McuOptions::new("panel-x", 7, Path::new("/tmp/towerlink-none/x"));
        options.image = PathBuf::from("/nonexistent/image.elf");
        let e = EmulatedMcu::start(&options).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/nonexistent/image.elf"), "{text}");
        assert!(text.contains("cargo build --release"), "{text}");
    }
}
