//! The example configuration shipped in `config/` must always load: installers copy it.

use std::path::Path;

use towerlink_agent::config::Config;

#[test]
fn the_shipped_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/towerlink.example.toml");
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(config.gateway.id, "sh-ja-0001");
    assert_eq!(config.nodes.len(), 2);
    assert_eq!(config.lifts.len(), 2);
    assert!(config.nodes[1].channels.contains_key("tilt_x"));
}
