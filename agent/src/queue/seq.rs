//! The persistent `seq` counter of the feed.
//!
//! Every queued message gets the next `seq`, and a `seq` must never be reused, across
//! restarts and power cuts. The counter lives in `<store>/seq` as two 16-byte slots written in
//! turn, each `seq (u64 LE) ++ crc32 (u32 LE) ++ 4 reserved bytes`: a write torn by a power
//! cut damages at most the slot being written, and the other slot still holds the previous
//! value, so the largest valid slot is always a value that was issued.
//!
//! Since the durable queue (issue 5) the log carries each `seq` with its record; this file
//! stays as a floor under the counter (written, not synced, after each log sync) and is read
//! once when a store from before the log is opened.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SLOT: u64 = 16;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// The last issued `seq`, persisted.
#[derive(Debug)]
pub struct SeqCounter {
    file: File,
    path: PathBuf,
    last: u64,
    next_slot: u64,
}

fn decode_slot(bytes: &[u8]) -> Option<u64> {
    let seq = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
    let crc = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    (CRC.checksum(&bytes[0..8]) == crc).then_some(seq)
}

impl SeqCounter {
    /// Opens (or creates) the counter in directory `dir`.
    pub fn open(dir: &Path) -> io::Result<SeqCounter> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("seq");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut buf = [0u8; 2 * SLOT as usize];
        let len = file.read_at(&mut buf, 0)?;
        let slots = [
            decode_slot(&buf[..len.min(SLOT as usize)]),
            if len >= 2 * SLOT as usize {
                decode_slot(&buf[SLOT as usize..])
            } else {
                None
            },
        ];
        let (last, next_slot) = match slots {
            [Some(a), Some(b)] if b > a => (b, 0),
            [Some(a), _] => (a, 1),
            [None, Some(b)] => (b, 0),
            [None, None] => {
                if len > 0 {
                    tracing::error!(path = %path.display(), "seq file unreadable; restarting seq at 0");
                }
                (0, 0)
            }
        };
        Ok(SeqCounter {
            file,
            path,
            last,
            next_slot,
        })
    }

    /// The last `seq` issued (0 = none yet; the first is 1).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Issues the next `seq` and makes it durable before returning it.
    pub fn issue(&mut self) -> io::Result<u64> {
        let seq = self.last + 1;
        let mut slot = [0u8; SLOT as usize];
        slot[0..8].copy_from_slice(&seq.to_le_bytes());
        slot[8..12].copy_from_slice(&CRC.checksum(&seq.to_le_bytes()).to_le_bytes());
        self.file.write_all_at(&slot, self.next_slot * SLOT)?;
        self.file.sync_data()?;
        self.last = seq;
        self.next_slot ^= 1;
        Ok(seq)
    }

    /// Records that `seq` was issued elsewhere (the queue's log) without syncing: a floor
    /// that survives damage to the log; the log itself is what a power cut must not lose.
    pub fn note(&mut self, seq: u64) -> io::Result<()> {
        if seq <= self.last {
            return Ok(());
        }
        let mut slot = [0u8; SLOT as usize];
        slot[0..8].copy_from_slice(&seq.to_le_bytes());
        slot[8..12].copy_from_slice(&CRC.checksum(&seq.to_le_bytes()).to_le_bytes());
        self.file.write_all_at(&slot, self.next_slot * SLOT)?;
        self.last = seq;
        self.next_slot ^= 1;
        Ok(())
    }

    /// Where the counter lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_survives_reopen_and_never_repeats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = SeqCounter::open(dir.path()).expect("open");
        assert_eq!(c.last(), 0);
        for want in 1..=5 {
            assert_eq!(c.issue().expect("next"), want);
        }
        drop(c);
        let mut c = SeqCounter::open(dir.path()).expect("reopen");
        assert_eq!(c.last(), 5);
        assert_eq!(c.issue().expect("next"), 6);
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = SeqCounter::open(dir.path()).expect("open");
        for _ in 0..7 {
            c.issue().expect("next");
        }
        // seq 7 went to slot 0 (1,3,5,7 -> slot 0). Tear it.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join("seq"))
            .expect("file");
        f.write_all_at(&[0xff, 0xff, 0xff], 0).expect("tear");
        let c = SeqCounter::open(dir.path()).expect("reopen");
        assert_eq!(c.last(), 6);
    }
}
