//! Scenario files: the shipped ones, determinism, and clear errors for bad ones.

use towerlink_sim_chips::scenario::FaultKind;
use towerlink_sim_chips::{Chip, Fault, Scenario, ScenarioError};

const TOWER: &str = include_str!("../../scenarios/tower.toml");
const FAULTS: &str = include_str!("../../scenarios/faults.toml");

fn error_of(text: &str) -> String {
    match Scenario::from_toml_str(text) {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &str = "seed = 1\n[[panels]]\nname = \"p\"\nnode = 1\n";

#[test]
fn shipped_tower_has_panels_and_a_late_slow_tilt() {
    let tower = Scenario::from_toml_str(TOWER).expect("tower.toml is valid");
    assert!(tower.panels.len() >= 4);
    assert!(tower.panels.iter().all(|p| p.name.starts_with("panel-")));
    let n12 = tower
        .panels
        .iter()
        .find(|p| p.name == "panel-n12")
        .expect("panel-n12");
    assert_eq!(n12.node, 12);
    let model = tower.panel_model(n12).expect("model");
    match model.faults() {
        [f] => {
            assert!(
                matches!(f.fault, Fault::SlowTilt { rate_deg_per_hour, .. } if rate_deg_per_hour > 0.0)
            );
            assert!(
                f.start_us >= 60_000_000,
                "the tilt starts later, not at boot"
            );
        }
        other => panic!("expected one slow tilt, got {other:?}"),
    }
    assert_eq!(model.params().base_strain_ue, 135.0);
}

#[test]
fn shipped_fault_scenario_covers_every_fault_kind() {
    let scenario = Scenario::from_toml_str(FAULTS).expect("faults.toml is valid");
    let kinds: Vec<FaultKind> = scenario
        .panels
        .iter()
        .flat_map(|p| p.faults.iter().map(|f| f.kind))
        .collect();
    for kind in [
        FaultKind::Spikes,
        FaultKind::Stuck,
        FaultKind::Offline,
        FaultKind::Noisy,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} missing");
    }
    let f03 = scenario
        .panels
        .iter()
        .find(|p| p.name == "panel-f03")
        .expect("panel-f03");
    let model = scenario.panel_model(f03).expect("model");
    assert!(model.is_offline(Chip::Adxl355, 45_000_000));
    assert!(!model.is_offline(Chip::Adxl355, 95_000_000));
}

#[test]
fn a_scenario_fully_determines_every_panel() {
    let a = Scenario::from_toml_str(TOWER).expect("valid");
    let b = Scenario::from_toml_str(TOWER).expect("valid");
    assert_eq!(a, b);
    let models_a: Vec<_> = a
        .panels
        .iter()
        .map(|p| a.panel_model(p).expect("model"))
        .collect();
    let models_b: Vec<_> = b
        .panels
        .iter()
        .map(|p| b.panel_model(p).expect("model"))
        .collect();
    for t in [0, 1_234_567, 3_600_000_000] {
        for (ma, mb) in models_a.iter().zip(&models_b) {
            assert_eq!(ma.sample(t), mb.sample(t));
        }
        assert_ne!(
            models_a[0].sample(t),
            models_a[1].sample(t),
            "panels differ"
        );
    }
    // A panel's model depends on the scenario seed and its node id, not on its neighbours.
    let alone = Scenario::from_toml_str(
        "seed = 20260301\nstart_hour = 10.0\n[[panels]]\nname = \"x\"\nnode = 13\nbase_strain_ue = 118.0\nbase_tilt_x_deg = -0.004\n",
    )
    .expect("valid");
    let alone_model = alone.panel_model(&alone.panels[0]).expect("model");
    assert_eq!(
        alone_model.sample(42_000_000),
        models_a[1].sample(42_000_000)
    );
}

#[test]
fn aliases_and_channel_targets_for_chip_faults() {
    let text = format!(
        "{MINIMAL}[[panels.faults]]\nkind = \"stuck\"\nat_s = 1.5\nchip = \"strain\"\n\
         [[panels.faults]]\nkind = \"offline\"\nat_s = 2\nuntil_s = 3\nchannel = \"tilt_y\"\n"
    );
    let scenario = Scenario::from_toml_str(&text).expect("valid");
    let model = scenario.panel_model(&scenario.panels[0]).expect("model");
    assert_eq!(
        model.faults()[0].fault,
        Fault::Stuck {
            chip: Chip::Nau7802
        }
    );
    assert_eq!(model.faults()[0].start_us, 1_500_000);
    assert_eq!(
        model.faults()[1].fault,
        Fault::Offline {
            chip: Chip::Adxl355
        }
    );
    assert_eq!(model.faults()[1].end_us, Some(3_000_000));
}

#[test]
fn bad_files_are_rejected_with_a_useful_message() {
    let fault = |body: &str| format!("{MINIMAL}[[panels.faults]]\n{body}\n");
    let cases: Vec<(String, &str)> = vec![
        ("seed = 1\ncolour = \"red\"\n[[panels]]\nname = \"p\"\nnode = 1\n".into(), "unknown field `colour`"),
        ("[[panels]]\nname = \"p\"\nnode = 1\n".into(), "missing field `seed`"),
        ("seed = \"one\"\n".into(), "seed"),
        ("seed = -1\n[[panels]]\nname = \"p\"\nnode = 1\n".into(), "seed"),
        ("seed = 1\npanels = []\n".into(), "at least one panel"),
        (format!("{MINIMAL}[[panels]]\nname = \"q\"\nnode = 1\n"), "node 1 is also used by p"),
        (format!("{MINIMAL}[[panels]]\nname = \"p\"\nnode = 2\n"), "name is also used"),
        (format!("{MINIMAL}speed = 3\n"), "unknown field `speed`"),
        (fault("kind = \"spikes\"\nat_s = 1.0\nchannel = \"strain\"\nmagnitude = 5.0"), "needs `rate_per_s`"),
        (fault("kind = \"spikes\"\nat_s = 1.0\nchannel = \"strain\"\nrate_per_s = 0\nmagnitude = 5.0"), "must be > 0"),
        (fault("kind = \"stuck\"\nat_s = 1.0\nchip = \"nau7802\"\nfactor = 2.0"), "`factor` does not apply to a stuck fault"),
        (fault("kind = \"noisy\"\nat_s = 5.0\nuntil_s = 4.0\nfactor = 2.0"), "until_s (4) must be after at_s (5)"),
        (fault("kind = \"noisy\"\nat_s = -1.0\nfactor = 2.0"), "at_s (-1)"),
        (fault("kind = \"melt\"\nat_s = 1.0"), "unknown variant `melt`"),
        (fault("kind = \"slow_tilt\"\nat_s = 1.0\naxis = \"z\"\nrate_deg_per_hour = 1.0"), "unknown variant `z`"),
        (fault("kind = \"offline\"\nat_s = 1.0"), "needs `chip`"),
        (fault("kind = \"offline\"\nat_s = 1.0\nchip = \"adxl355\"\nrate = 3"), "unknown field `rate`"),
        ("seed = 1\n[[panels]]\nname = p\n".into(), "line 3"),
    ];
    for (text, needle) in cases {
        let message = error_of(&text);
        assert!(
            message.contains(needle),
            "{text:?}\n  gave {message:?}\n  expected {needle:?}"
        );
    }
}

#[test]
fn errors_are_typed() {
    assert!(matches!(
        Scenario::from_toml_str("seed = ").expect_err("syntax"),
        ScenarioError::Parse(_)
    ));
    assert!(matches!(
        Scenario::from_toml_str("seed = 1\npanels = []").expect_err("empty"),
        ScenarioError::Invalid { .. }
    ));
}
