//! Pseudo-terminal plumbing: a virtual serial port that the agent opens like a real
//! `/dev/ttyUSB*`.
//!
//! The simulator holds the master side; the agent opens the slave by path, with the same code
//! it uses on hardware. The simulator keeps no slave descriptor open, so the agent is the only
//! one reading the line, and a closed agent leaves the line like an unplugged cable: bytes
//! written meanwhile wait in the terminal's buffer until it fills, then are dropped (a UART
//! with nobody reading loses bytes too).
//!
//! An optional stable link path (a symlink, as udev makes for `/dev/serial/by-id/...`) points
//! to the current terminal, so a test can "unplug" the adapter (close the master: the agent's
//! reads fail) and "plug it back" (a new terminal behind the same link).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

/// The simulator's end of a virtual serial line.
#[derive(Debug)]
pub struct VirtualPort {
    master: File,
    tty: PathBuf,
    link: Option<PathBuf>,
}

fn to_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl VirtualPort {
    /// Opens a new pseudo-terminal in raw mode; if `link` is given, (re)points that symlink at
    /// it.
    pub fn open(link: Option<&Path>) -> io::Result<VirtualPort> {
        let pty = nix::pty::openpty(None, None).map_err(to_io)?;
        // Raw from the first byte: no echo, no line editing, no CR/LF translation.
        let mut termios = tcgetattr(&pty.slave).map_err(to_io)?;
        cfmakeraw(&mut termios);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).map_err(to_io)?;
        let tty = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))?;
        drop::<OwnedFd>(pty.slave);
        let flags = fcntl(pty.master.as_raw_fd(), FcntlArg::F_GETFL).map_err(to_io)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(pty.master.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(to_io)?;
        // openpty(3) does not set close-on-exec: without it every process spawned later (an
        // agent under test) would inherit the master and keep the line alive after "unplug".
        fcntl(
            pty.master.as_raw_fd(),
            FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC),
        )
        .map_err(to_io)?;
        let master = File::from(pty.master);
        if let Some(link) = link {
            let tmp = link.with_extension("tmp-link");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&tty, &tmp)?;
            std::fs::rename(&tmp, link)?;
        }
        Ok(VirtualPort {
            master,
            tty,
            link: link.map(Path::to_owned),
        })
    }

    /// The path the agent should open: the link if there is one, else the terminal itself.
    pub fn path(&self) -> &Path {
        self.link.as_deref().unwrap_or(&self.tty)
    }

    /// The terminal device (`/dev/pts/N`).
    pub fn tty(&self) -> &Path {
        &self.tty
    }

    /// Writes bytes to the line. Returns how many the line took: when nobody reads and the
    /// terminal's buffer is full, the rest is dropped, as on a real UART.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < bytes.len() {
            match self.master.write(&bytes[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EIO: no reader has the line open right now; the bytes are lost.
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Waits at most `timeout` for bytes from the agent (one `ppoll`, no spinning). Returns at
    /// once when something is there; with nobody on the line (the master reports a hang-up)
    /// it sleeps the whole `timeout` instead, so a caller's loop never spins.
    pub fn wait_readable(&self, timeout: Duration) {
        use nix::poll::{ppoll, PollFd, PollFlags};
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
        let ts = nix::sys::time::TimeSpec::from_duration(timeout);
        let readable = ppoll(&mut fds, Some(ts), None).is_ok()
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN));
        let hung_up = fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
        if hung_up && !readable {
            std::thread::sleep(timeout);
        }
    }

    /// Reads what the agent wrote, without waiting: `Ok(0)` when there is nothing (or nobody
    /// has the line open).
    pub fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.master.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl Drop for VirtualPort {
    fn drop(&mut self) {
        // The link dies with the terminal, as a /dev/serial/by-id link does with its adapter.
        if let Some(link) = &self.link {
            if std::fs::read_link(link).is_ok_and(|target| target == self.tty) {
                let _ = std::fs::remove_file(link);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn bytes_cross_the_line_both_ways_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("ttyUSB0");
        let mut port = VirtualPort::open(Some(&link)).expect("pty");
        assert_eq!(std::fs::read_link(&link).expect("link"), port.tty());
        let mut agent = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(port.path())
            .expect("open slave");
        // Every byte value, including CR, LF, 0x00, XON/XOFF and ^C, must pass untouched.
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(port.send(&all).expect("send"), 256);
        let mut got = vec![0u8; 256];
        agent.read_exact(&mut got).expect("read");
        assert_eq!(got, all);
        agent.write_all(b"\x00cmd\r\n\x00").expect("write");
        let mut buf = [0u8; 64];
        let mut n = 0;
        for _ in 0..100 {
            n += port.receive(&mut buf[n..]).expect("receive");
            if n >= 7 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(&buf[..n], b"\x00cmd\r\n\x00");
    }

    #[test]
    fn dropping_the_port_removes_its_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("ttyUSB1");
        let port = VirtualPort::open(Some(&link)).expect("pty");
        drop(port);
        assert!(std::fs::symlink_metadata(&link).is_err());
    }
}
