//! Opening a serial port: the one place every caller (the serial node source, the Modbus bus,
//! the installer's commands) opens a port, with a fallback for systems without termios2.
//!
//! The serial crate (`serialport`, under `tokio-serial`) configures every Linux port with the
//! termios2 ioctls (`TCGETS2`/`TCSETS2`), which take any baud rate. Not every system has them:
//! qemu-user 7.2 (Debian's `qemu-user-static`, which the ARM CI runs the agent under) does not
//! implement `TCGETS2` (0x802c542a) and answers ENOSYS ("Function not implemented"), and some
//! kernels and emulated or vendor tty drivers answer ENOTTY. The gateway then could not open
//! any port at all. The classic termios calls (`tcgetattr`/`tcsetattr` with a `Bnnn` speed)
//! exist everywhere and cover the classic rates (every rate the configuration allows but
//! 14400, 128000 and 256000, which have no `Bnnn` constant and need termios2), so when the crate's open fails **and** a probe of the same port shows that termios2
//! is what is missing (classic `TCGETS` works, `TCGETS2` or `TCSETS2` fails with ENOSYS or
//! ENOTTY), the port is opened here with classic termios instead: exclusively (`TIOCEXCL` and
//! an exclusive `flock`, the crate's own lock, with its "Unable to acquire exclusive lock"
//! text), raw, 8 data bits, the requested parity and stop bits, no flow control, and the
//! settings read back. A non-standard rate without termios2 is refused with a clear error.
//! Every other failure (missing device, permissions, a busy port) is the crate's own error,
//! unchanged, so callers explain it as before.
//!
//! Why not a newer emulator or qemu-system instead: Debian's qemu-user 7.2 is what CI and
//! installers have, a full-system VM costs minutes per run, and the same fallback is what a
//! gateway on a kernel without termios2 needs anyway.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::termios::{self, BaudRate, ControlFlags, InputFlags, SetArg};
use serialport::TTYPort;
use tokio_serial::{Error, ErrorKind, Parity, SerialPort, StopBits};

/// Line settings of a port: 8 data bits and no flow control always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    /// Baud rate.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// Stop bits.
    pub stop_bits: StopBits,
}

impl LineSettings {
    /// 8N1 at `baud` (the sensor nodes' line).
    pub fn n81(baud: u32) -> LineSettings {
        LineSettings {
            baud,
            parity: Parity::None,
            stop_bits: StopBits::One,
        }
    }
}

/// Opens `path` exclusively with `line`, in blocking mode with a zero read timeout (what
/// `tokio_serial::new(..).open_native()` gives); wrap it in `tokio_serial::SerialStream` with
/// `try_from` for async use. Falls back to classic termios where termios2 is missing (see the
/// module documentation).
pub fn open(path: &str, line: LineSettings) -> tokio_serial::Result<TTYPort> {
    open_with(path, line, Termios2::Detect)
}

/// Whether to use the serial crate's termios2 path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Termios2 {
    /// Use it, and fall back when a probe shows it missing.
    Detect,
    /// Behave as on a system without it (tests force the fallback this way).
    #[cfg(test)]
    Missing,
}

fn open_with(path: &str, line: LineSettings, termios2: Termios2) -> tokio_serial::Result<TTYPort> {
    match termios2 {
        Termios2::Detect => {}
        #[cfg(test)]
        Termios2::Missing => return open_classic(path, line),
    }
    let crate_error = match tokio_serial::new(path, line.baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(line.parity)
        .stop_bits(line.stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native()
    {
        Ok(port) => return Ok(port),
        Err(e) => e,
    };
    if termios2_missing(path) {
        tracing::debug!(port = path, error = %crate_error, "termios2 (TCGETS2) is missing here; opening the port with classic termios");
        open_classic(path, line)
    } else {
        Err(crate_error)
    }
}

/// Is termios2 what this port lacks? True when classic `TCGETS` works on it but `TCGETS2`, or
/// `TCSETS2` with the same settings, fails with ENOSYS or ENOTTY. Anything else (the port does
/// not open, is no terminal at all) is not a termios2 problem.
fn termios2_missing(path: &str) -> bool {
    let Ok(file) = open_nonblocking(path) else {
        return false;
    };
    if termios::tcgetattr(&file).is_err() {
        return false;
    }
    let fd = file.as_raw_fd();
    let mut t2 = std::mem::MaybeUninit::<libc::termios2>::zeroed();
    // SAFETY: TCGETS2 writes one `termios2` into the buffer, which is large enough.
    let got = Errno::result(unsafe { libc::ioctl(fd, libc::TCGETS2 as _, t2.as_mut_ptr()) });
    if let Err(e) = got {
        return is_missing_ioctl(e);
    }
    // SAFETY: TCGETS2 succeeded, so the struct is initialised; TCSETS2 only reads it.
    let t2 = unsafe { t2.assume_init() };
    match Errno::result(unsafe { libc::ioctl(fd, libc::TCSETS2 as _, &t2) }) {
        Ok(_) => false,
        Err(e) => is_missing_ioctl(e),
    }
}

/// The errnos with which a system says it has no such ioctl.
fn is_missing_ioctl(e: Errno) -> bool {
    matches!(e, Errno::ENOSYS | Errno::ENOTTY)
}

fn open_nonblocking(path: &str) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
}

/// The classic termios speed for `baud`, if it is a standard rate.
fn classic_speed(baud: u32) -> Option<BaudRate> {
    Some(match baud {
        50 => BaudRate::B50,
        75 => BaudRate::B75,
        110 => BaudRate::B110,
        134 => BaudRate::B134,
        150 => BaudRate::B150,
        200 => BaudRate::B200,
        300 => BaudRate::B300,
        600 => BaudRate::B600,
        1200 => BaudRate::B1200,
        1800 => BaudRate::B1800,
        2400 => BaudRate::B2400,
        4800 => BaudRate::B4800,
        9600 => BaudRate::B9600,
        19200 => BaudRate::B19200,
        38400 => BaudRate::B38400,
        57600 => BaudRate::B57600,
        115200 => BaudRate::B115200,
        230400 => BaudRate::B230400,
        460800 => BaudRate::B460800,
        500000 => BaudRate::B500000,
        576000 => BaudRate::B576000,
        921600 => BaudRate::B921600,
        1000000 => BaudRate::B1000000,
        _ => return None,
    })
}

fn errno(e: Errno) -> Error {
    Error::from(std::io::Error::from(e))
}

/// Opens and configures the port with classic termios only (no termios2 ioctl).
fn open_classic(path: &str, line: LineSettings) -> tokio_serial::Result<TTYPort> {
    let speed = classic_speed(line.baud).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{} baud is not a standard rate, and this system lacks termios2 (TCGETS2) to set it; use a standard rate (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)",
                line.baud
            ),
        )
    })?;
    let file = open_nonblocking(path)?;
    let fd = file.as_raw_fd();
    // Exclusive, like the serial crate: TIOCEXCL keeps other openers out, the flock tells
    // another towerlink (or anything else that locks) that the port is taken.
    // SAFETY: plain ioctl/flock on an fd we own.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCEXCL as _) }).map_err(errno)?;
    if let Err(e) = Errno::result(unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }) {
        return Err(if e == Errno::EWOULDBLOCK {
            Error::new(
                ErrorKind::NoDevice,
                "Unable to acquire exclusive lock on serial port",
            )
        } else {
            errno(e)
        });
    }
    let mut t = termios::tcgetattr(&file).map_err(errno)?;
    termios::cfmakeraw(&mut t);
    t.control_flags |= ControlFlags::CREAD | ControlFlags::CLOCAL;
    t.control_flags &= !(ControlFlags::CSIZE | ControlFlags::CRTSCTS);
    t.control_flags |= ControlFlags::CS8;
    t.input_flags &= !(InputFlags::IXON | InputFlags::IXOFF | InputFlags::IXANY);
    match line.parity {
        Parity::None => {
            t.control_flags &= !(ControlFlags::PARENB | ControlFlags::PARODD);
            t.input_flags &= !InputFlags::INPCK;
            t.input_flags |= InputFlags::IGNPAR;
        }
        Parity::Odd => {
            t.control_flags |= ControlFlags::PARENB | ControlFlags::PARODD;
            t.input_flags |= InputFlags::INPCK;
            t.input_flags &= !InputFlags::IGNPAR;
        }
        Parity::Even => {
            t.control_flags &= !ControlFlags::PARODD;
            t.control_flags |= ControlFlags::PARENB;
            t.input_flags |= InputFlags::INPCK;
            t.input_flags &= !InputFlags::IGNPAR;
        }
    }
    match line.stop_bits {
        StopBits::One => t.control_flags &= !ControlFlags::CSTOPB,
        StopBits::Two => t.control_flags |= ControlFlags::CSTOPB,
    }
    termios::cfsetspeed(&mut t, speed).map_err(errno)?;
    termios::tcsetattr(&file, SetArg::TCSANOW, &t).map_err(errno)?;
    // tcsetattr succeeds if any one setting took: read back what the line needs (raw mode,
    // 8 data bits, the rate). Parity and stop bits are not compared, like the crate's own path
    // (which checks nothing after TCSETS2): a pseudo-terminal has no parity and its driver
    // drops PARENB.
    let back = termios::tcgetattr(&file).map_err(errno)?;
    let raw_lflags =
        termios::LocalFlags::ICANON | termios::LocalFlags::ECHO | termios::LocalFlags::ISIG;
    if back.control_flags & ControlFlags::CSIZE != ControlFlags::CS8
        || back.local_flags.intersects(raw_lflags)
        || back.output_flags != t.output_flags
        || termios::cfgetospeed(&back) != speed
        || termios::cfgetispeed(&back) != speed
    {
        return Err(Error::new(
            ErrorKind::Unknown,
            format!(
                "the port did not take the line settings ({} baud, 8 data bits, raw)",
                line.baud
            ),
        ));
    }
    // Blocking from here on, as the serial crate leaves its ports (SerialStream::try_from sets
    // O_NONBLOCK again for async use).
    // SAFETY: fcntl on an fd we own.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFL, 0) }).map_err(errno)?;
    // SAFETY: the fd is open and ours; TTYPort takes it over (and re-takes the same locks).
    let mut port = unsafe { TTYPort::from_raw_fd(file.into_raw_fd()) };
    port.set_timeout(Duration::ZERO)?;
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::path::PathBuf;

    /// A pseudo-terminal: the master end and the slave's path (the "device").
    fn pty() -> (File, PathBuf) {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
            .expect("the slave's path");
        // Keep the slave open in this process so the line never hangs up between opens.
        std::mem::forget(pty.slave);
        (File::from(pty.master), path)
    }

    fn read_some(port: &mut TTYPort, want: usize) -> Vec<u8> {
        port.set_timeout(Duration::from_secs(5)).expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < want {
            let n = port.read(&mut buf).expect("read");
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn the_classic_path_configures_a_raw_8n1_line_at_the_rate() {
        let (mut master, path) = pty();
        let mut port = open_with(
            path.to_str().expect("utf-8 path"),
            LineSettings::n81(115200),
            Termios2::Missing,
        )
        .expect("classic open");
        let t = termios::tcgetattr(port.as_fd_for_test()).expect("tcgetattr");
        assert_eq!(termios::cfgetospeed(&t), BaudRate::B115200);
        assert_eq!(termios::cfgetispeed(&t), BaudRate::B115200);
        assert!(t
            .control_flags
            .contains(ControlFlags::CS8 | ControlFlags::CREAD | ControlFlags::CLOCAL));
        assert!(!t
            .control_flags
            .intersects(ControlFlags::PARENB | ControlFlags::CSTOPB | ControlFlags::CRTSCTS));
        assert!(!t.local_flags.intersects(
            termios::LocalFlags::ICANON | termios::LocalFlags::ECHO | termios::LocalFlags::ISIG
        ));
        assert!(!t
            .input_flags
            .intersects(InputFlags::IXON | InputFlags::ICRNL));
        // Raw both ways: 0x00, CR, ^C, ^S pass untouched.
        let bytes = [0x00, b'\r', 0x03, 0x13, 0xff, b'\n'];
        master.write_all(&bytes).expect("write to the port");
        assert_eq!(read_some(&mut port, bytes.len()), bytes);
        port.write_all(&bytes).expect("write from the port");
        let mut back = [0u8; 6];
        master.read_exact(&mut back).expect("read at the master");
        assert_eq!(back, bytes);
    }

    #[test]
    fn the_classic_path_sets_parity_and_stop_bits() {
        let (_master, path) = pty();
        let line = LineSettings {
            baud: 9600,
            parity: Parity::Even,
            stop_bits: StopBits::Two,
        };
        let port = open_with(path.to_str().expect("utf-8"), line, Termios2::Missing).expect("open");
        let t = termios::tcgetattr(port.as_fd_for_test()).expect("tcgetattr");
        assert_eq!(termios::cfgetospeed(&t), BaudRate::B9600);
        // A pseudo-terminal's driver drops PARENB (it has no parity); what it keeps shows
        // that the settings were asked for.
        assert!(t.control_flags.contains(ControlFlags::CSTOPB));
        assert!(!t.control_flags.contains(ControlFlags::PARODD));
        assert!(t.input_flags.contains(InputFlags::INPCK));
        assert!(!t.input_flags.contains(InputFlags::IGNPAR));
    }

    #[test]
    fn the_classic_path_opens_exclusively_with_the_crates_lock_text() {
        let (_master, path) = pty();
        let path = path.to_str().expect("utf-8");
        let _held = open_with(path, LineSettings::n81(115200), Termios2::Missing).expect("first");
        let second = open_with(path, LineSettings::n81(115200), Termios2::Missing)
            .expect_err("a second open of a held port must fail");
        // Root passes TIOCEXCL, so the flock is what refuses it here.
        assert!(
            second.to_string().contains("exclusive lock") || second.to_string().contains("busy"),
            "{second}"
        );
        // The crate's own path sees the classic path's lock too.
        let third = open(path, LineSettings::n81(115200)).expect_err("held by the classic open");
        assert!(
            third.to_string().contains("exclusive lock") || third.to_string().contains("busy"),
            "{third}"
        );
    }

    #[test]
    fn a_non_standard_rate_without_termios2_is_refused_clearly() {
        let (_master, path) = pty();
        let e = open_with(
            path.to_str().expect("utf-8"),
            LineSettings::n81(250_000),
            Termios2::Missing,
        )
        .expect_err("250000 has no Bnnn constant");
        assert!(
            e.to_string().contains("250000 baud is not a standard rate"),
            "{e}"
        );
        assert!(e.to_string().contains("termios2"), "{e}");
    }

    #[test]
    fn where_termios2_works_the_crates_path_is_used_and_not_the_fallback() {
        let (_master, path) = pty();
        let path = path.to_str().expect("utf-8");
        // The probe finds termios2 on this (x86_64 Linux) kernel, so a failed open keeps the
        // crate's error: a missing device is never retried through the fallback.
        assert!(!termios2_missing(path));
        assert!(!termios2_missing("/nonexistent/ttyUSB9"));
        assert!(
            !termios2_missing("/dev/null"),
            "not a terminal is not a termios2 problem"
        );
        let e = open("/nonexistent/ttyUSB9", LineSettings::n81(9600)).expect_err("no device");
        assert!(e.to_string().to_lowercase().contains("no such file"), "{e}");
        // A port opened by the crate's path at a non-standard rate works here (termios2).
        open(path, LineSettings::n81(250_000)).expect("termios2 takes any rate");
    }

    #[test]
    fn only_enosys_and_enotty_mean_the_ioctl_is_missing() {
        assert!(is_missing_ioctl(Errno::ENOSYS));
        assert!(is_missing_ioctl(Errno::ENOTTY));
        assert!(!is_missing_ioctl(Errno::EIO));
        assert!(!is_missing_ioctl(Errno::EBUSY));
        assert!(!is_missing_ioctl(Errno::EINVAL));
    }

    #[test]
    fn every_configurable_rate_but_three_has_a_classic_speed() {
        for baud in crate::config::STANDARD_BAUDS {
            let classic = !matches!(baud, 14400 | 128000 | 256000);
            assert_eq!(classic_speed(baud).is_some(), classic, "{baud}");
        }
        assert!(classic_speed(250_000).is_none());
    }

    trait AsFdForTest {
        fn as_fd_for_test(&self) -> std::os::fd::BorrowedFd<'_>;
    }
    impl AsFdForTest for TTYPort {
        fn as_fd_for_test(&self) -> std::os::fd::BorrowedFd<'_> {
            // SAFETY: the port outlives the borrow.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(self.as_raw_fd()) }
        }
    }
}
