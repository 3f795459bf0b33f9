//! Fuzz target: bytes from a serial sensor node into the agent's frame decoder, fed in
//! chunks split where the input says, as a serial port delivers them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use towerlink_firmware::protocol::{Frame, StreamDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let mut decoder = StreamDecoder::new();
    let mut frames = 0u64;
    for piece in bytes.chunks(chunk) {
        decoder.decode_all::<Frame, _>(piece, |_| frames += 1);
    }
    let stats = decoder.stats();
    assert_eq!(
        stats.frames_ok + stats.crc_errors + stats.oversize + stats.undecodable,
        frames,
        "every frame outcome is counted once"
    );
});
