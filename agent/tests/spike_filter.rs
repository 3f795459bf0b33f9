//! The default spike filter on fixed-seed synthetic data meets its targets: it keeps at least
//! 99.7 % of stationary Gaussian samples, rejects at least 99 % of isolated 8-sigma spikes,
//! accepts a genuine step within half its window and raises the step's alarm in time. The
//! figures for every setting are printed by `cargo bench -p towerlink-agent --bench
//! spike_filter`.

#[path = "../benches/common/spike_measure.rs"]
mod spike_measure;

use spike_measure::{measure, meets_targets};
use towerlink_agent::pipeline::settings::DEFAULT_HAMPEL;

#[test]
fn the_default_spike_filter_keeps_healthy_data_and_rejects_spikes() {
    for seed in [1, 2, 3] {
        let f = measure(DEFAULT_HAMPEL, 100_000, 100, seed);
        assert!(meets_targets(DEFAULT_HAMPEL, &f), "seed {seed}: {f:?}");
        // Slow drift is never cut into spikes.
        assert!(f.ramp_rejected[0] <= 5, "seed {seed}: {f:?}");
        // Keeping the tails keeps std honest (the classic filter gave about 0.9).
        assert!(f.std_ratio > 0.98, "seed {seed}: {f:?}");
    }
}
