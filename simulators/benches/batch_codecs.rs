//! What compressing the nominal tower's batches costs, per codec: CPU per batch and per day,
//! and the bytes it saves. The question of issue 18 item 2: which codec is worth its CPU on
//! an ARM gateway.
//!
//! Input: the batches `feed_bytes` writes with `FEED_BYTES_DUMP=<dir>` (one file per 60 s
//! batch of the 40-panel, 8-lift tower: `batch-NNNN.json` as the agent makes it, and
//! `batch-NNNN.cbor`, the same items as CBOR). Each codec compresses every batch; the output
//! is checked to decode back to the input (not timed). Prints per codec the CPU time per batch
//! (this thread's time on the CPU, `/proc/thread-self/schedstat`), the day's CPU (1,440
//! batches), MB/s and the compressed share.
//!
//! The same binary, cross-built for `aarch64-unknown-linux-musl`, runs under qemu-aarch64
//! with an instruction-counting plugin (`BATCH_CODECS_ONLY=<codec>`, and `none` for the
//! baseline of reading the files; `BATCH_CODECS_NO_CHECK=1` leaves out the decoding check):
//! the instructions an ARM core executes per codec. The
//! README ("Which codec") has the figures and how they were made.
//!
//! Run: `FEED_BYTES_DUMP=/tmp/batches FEED_BYTES_HOURS=1 cargo bench -p towerlink-sim --bench
//! feed_bytes`, then `cargo bench -p towerlink-sim --bench batch_codecs -- /tmp/batches`
//! (or `BATCH_CODECS_DIR`). Prints only: it judges no target (the choice is the README's).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[path = "common/cpu.rs"]
mod cpu;
use cpu::thread_cpu;

/// One way of compressing a batch.
#[derive(Debug, Clone, Copy)]
enum Codec {
    /// Reading the batches only: the baseline an instruction count subtracts.
    None,
    /// zstd at this level, over the JSON batch.
    Zstd(i32),
    /// LZ4 block with its size prepended, over the JSON batch.
    Lz4,
    /// zstd at this level, over the CBOR batch.
    CborZstd(i32),
}

impl Codec {
    fn name(self) -> String {
        match self {
            Codec::None => "none".into(),
            Codec::Zstd(l) => format!("zstd{l}"),
            Codec::Lz4 => "lz4".into(),
            Codec::CborZstd(l) => format!("cbor-zstd{l}"),
        }
    }

    fn input(self) -> &'static str {
        match self {
            Codec::CborZstd(_) => "cbor",
            _ => "json",
        }
    }

    fn compress(self, input: &[u8]) -> Vec<u8> {
        match self {
            Codec::None => input.to_vec(),
            Codec::Zstd(l) | Codec::CborZstd(l) => {
                zstd::bulk::compress(input, l).unwrap_or_default()
            }
            Codec::Lz4 => lz4_flex::compress_prepend_size(input),
        }
    }

    fn decompress(self, packed: &[u8]) -> Option<Vec<u8>> {
        match self {
            Codec::None => Some(packed.to_vec()),
            Codec::Zstd(_) | Codec::CborZstd(_) => zstd::decode_all(packed).ok(),
            Codec::Lz4 => lz4_flex::decompress_size_prepended(packed).ok(),
        }
    }
}

const CODECS: [Codec; 10] = [
    Codec::None,
    Codec::Lz4,
    Codec::Zstd(1),
    Codec::Zstd(3),
    Codec::Zstd(9),
    Codec::Zstd(12),
    Codec::Zstd(15),
    Codec::Zstd(19),
    Codec::CborZstd(3),
    Codec::CborZstd(19),
];

/// Batches per day at the agent's default `batch = "60s"`.
const BATCHES_PER_DAY: f64 = 1_440.0;

fn batches(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn main() -> ExitCode {
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .or_else(|| std::env::var("BATCH_CODECS_DIR").ok());
    let Some(dir) = dir.map(PathBuf::from) else {
        eprintln!("batch_codecs: give the directory feed_bytes wrote with FEED_BYTES_DUMP");
        return ExitCode::from(2);
    };
    let only = std::env::var("BATCH_CODECS_ONLY").ok();
    let json = batches(&dir, "json");
    let cbor = batches(&dir, "cbor");
    if json.is_empty() {
        eprintln!("batch_codecs: no batch-*.json in {}", dir.display());
        return ExitCode::from(2);
    }
    let json_mean = json.iter().map(Vec::len).sum::<usize>() as f64 / json.len() as f64;
    println!(
        "batch_codecs: {} batches ({:.1} kB of JSON each on average), {} as CBOR, {} build, {}",
        json.len(),
        json_mean / 1e3,
        cbor.len(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::env::consts::ARCH
    );
    let mut failed = false;
    for codec in CODECS {
        if only.as_deref().is_some_and(|o| o != codec.name()) {
            continue;
        }
        let inputs = if codec.input() == "cbor" {
            &cbor
        } else {
            &json
        };
        if inputs.is_empty() {
            println!("{:<12} no {} input", codec.name(), codec.input());
            continue;
        }
        let (mut cpu, mut packed_bytes, mut raw_bytes) = (Duration::ZERO, 0usize, 0usize);
        let mut outputs = Vec::with_capacity(inputs.len());
        for input in inputs {
            let t = thread_cpu();
            let packed = codec.compress(input);
            cpu += thread_cpu() - t;
            packed_bytes += packed.len();
            raw_bytes += input.len();
            outputs.push(packed);
        }
        // BATCH_CODECS_NO_CHECK=1 under an instruction counter: only the compression counts.
        let check = std::env::var("BATCH_CODECS_NO_CHECK").map_or(true, |v| v != "1");
        for (input, packed) in inputs.iter().zip(&outputs).filter(|_| check) {
            if codec.decompress(packed).as_deref() != Some(input.as_slice()) {
                println!("{:<12} FAILED: a batch does not decode back", codec.name());
                failed = true;
                break;
            }
        }
        let per_batch = cpu.as_secs_f64() / inputs.len() as f64;
        // Shares are of the JSON batch, so CBOR's own saving shows too.
        println!(
            "{:<12} {:>8.2} ms CPU per batch, {:>7.1} CPU s per day, {:>7.1} MB/s, {:>7.0} B per batch ({:.2} % of the JSON)",
            codec.name(),
            per_batch * 1e3,
            per_batch * BATCHES_PER_DAY,
            raw_bytes as f64 / 1e6 / cpu.as_secs_f64().max(1e-9),
            packed_bytes as f64 / inputs.len() as f64,
            100.0 * packed_bytes as f64 / inputs.len() as f64 / json_mean
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
