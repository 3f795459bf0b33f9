//! The README's alarm-accuracy claim for the simulated tower day ("threshold events vs the
//! scenario's truth: exact, 6 of 6, none spurious") as a test: the day's tilt channel (a
//! loosening bracket that creeps up 1.0 deg and back, rare 1.5 deg spikes) through the full
//! filter chain must raise exactly the scenario's six threshold events, in order, and nothing
//! spurious. The `tower_day` bench runs the same day with every channel for its figures.

#[path = "../benches/common/tower_day.rs"]
mod day;

#[test]
fn the_tower_day_raises_exactly_the_scenarios_threshold_events() {
    // Only the tilt channel carries an alarm; the other channels cannot raise a threshold
    // event, and leaving them out keeps the debug build quick.
    let tilt_x = [1u8];
    let (events, samples) = day::day_of_samples(&tilt_x);
    assert_eq!(samples, day::DAY_S * 10, "a day of 10 Hz tilt");
    let messages = day::run_day(&day::config(), &day::hello(&tilt_x), &events);
    let thresholds = day::thresholds(&messages);
    assert_eq!(
        thresholds,
        day::truth(),
        "threshold events of the tower day (left) vs the scenario's truth (right)"
    );
}
