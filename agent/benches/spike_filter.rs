//! Spike rejection on honest data: for the default and for each documented setting, the share
//! of stationary Gaussian samples kept (and the kept std against sigma), the share of isolated
//! 8-sigma spikes rejected, the worst rejection run after a genuine step (and whether its
//! alarm went active within half a window), and what ramps lose. Exits non-zero when the
//! default misses a target.
//!
//! `cargo bench -p towerlink-agent --bench spike_filter`

#[path = "common/spike_measure.rs"]
mod spike_measure;

use spike_measure::{measure, meets_targets, Figures};
use towerlink_agent::pipeline::settings::{Hampel, DEFAULT_HAMPEL};

const SAMPLES: usize = 200_000;
const STEPS: usize = 300;
const SEED: u64 = 0x5eed_2026;

fn row(label: &str, setting: Hampel, f: &Figures) {
    println!(
        "{label:<9} window {:>2} k {:<4} kept {:>7.3} %  std {:.3}  8-sigma spikes rejected {:>7.3} %  step: {} rejected, alarm {}  ramps 0.01/1/3 per sample: {}/{}/{} rejected",
        setting.window,
        setting.k,
        100.0 * f.kept,
        f.std_ratio,
        100.0 * f.spikes_rejected,
        f.step_rejected_max,
        if f.step_alarm_in_time { "in time" } else { "LATE" },
        f.ramp_rejected[0],
        f.ramp_rejected[1],
        f.ramp_rejected[2],
    );
}

fn main() -> std::process::ExitCode {
    // `cargo bench` passes `--bench`; nothing else is taken.
    println!("spike filter on {SAMPLES} samples per signal, {STEPS} steps, seed {SEED:#x}");
    let default = measure(DEFAULT_HAMPEL, SAMPLES, STEPS, SEED);
    row("default", DEFAULT_HAMPEL, &default);
    for window in [5, 7, 9, 11, 15] {
        for k in [3.0, 3.5, 4.0, 4.5, 5.0] {
            let setting = Hampel { window, k };
            if setting == DEFAULT_HAMPEL {
                continue;
            }
            row("setting", setting, &measure(setting, SAMPLES, STEPS, SEED));
        }
    }
    let met = meets_targets(DEFAULT_HAMPEL, &default);
    println!(
        "targets for the default (kept >= 99.7 %, 8-sigma spikes rejected >= 99 %, a step accepted within {} samples with its alarm): {}",
        DEFAULT_HAMPEL.window / 2,
        if met { "met" } else { "NOT met" }
    );
    if met {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
