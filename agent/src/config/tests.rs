//! Unit tests of loading and composing the configuration.

use super::*;
use crate::queue::store::FsyncPolicy;
use crate::sources::config::Parity;
use crate::uplink::config::MqttProtocol;
use crate::values::parse_size;

const GOOD: &str = r#"
[gateway]
id = "sh-ja-0001"
[mqtt]
url = "mqtt://127.0.0.1:1883"
topic_root = "towerlink/v1"
[store]
path = "/var/lib/towerlink"
[[node]]
id = "panel-n12"
port = "/dev/ttyUSB0"
baud = 115200
window = "10s"
"#;

fn err(text: &str) -> String {
    match Config::parse(text, "t.toml") {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn store_sizes_and_fsync_policies_parse() {
    assert_eq!(parse_size("512MiB"), Ok(512 << 20));
    assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
    assert_eq!(parse_size("64kB"), Ok(64_000));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("12 parsecs").is_err());
    assert!(parse_size("MiB").is_err());
    let c = Config::parse(GOOD, "t.toml").expect("good config");
    assert_eq!(c.store.max_bytes, 512 << 20);
    assert_eq!(c.store.replay_rate, 500);
    assert_eq!(
        c.store.fsync,
        FsyncPolicy::Every(Duration::from_millis(100))
    );
    let text = GOOD.replace(
        "[store]\n",
        "[store]\nfsync = \"always\"\nmax_bytes = \"1GiB\"\nreplay_rate = 0\n",
    );
    let c = Config::parse(&text, "t.toml").expect("store keys");
    assert_eq!(c.store.fsync, FsyncPolicy::Always);
    assert_eq!(c.store.max_bytes, 1 << 30);
    let e = err(&GOOD.replace("[store]\n", "[store]\nfsync = \"sometimes\"\n"));
    assert!(e.contains("fsync"), "{e}");
    let e = err(&GOOD.replace("[store]\n", "[store]\nmax_bytes = \"1KiB\"\n"));
    assert!(e.contains("store.max_bytes"), "{e}");
}

#[test]
fn the_issue_sketch_parses_with_defaults() {
    let c = Config::parse(GOOD, "t.toml").expect("good config");
    assert_eq!(c.gateway.id, "sh-ja-0001");
    assert_eq!(c.nodes.len(), 1);
    assert_eq!(c.nodes[0].window, Duration::from_secs(10));
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(30));
    assert_eq!(c.health.interval, Duration::from_secs(60));
    assert_eq!(
        c.broker().expect("url"),
        BrokerAddress {
            tls: false,
            host: "127.0.0.1".into(),
            port: 1883
        }
    );
}

#[test]
fn mqtt_protocol_and_max_packet() {
    let c = Config::parse(GOOD, "t.toml").expect("good config");
    assert_eq!(
        (c.mqtt.protocol, c.mqtt.max_packet),
        (MqttProtocol::V5, 256 * 1024)
    );
    let with = |keys: &str| GOOD.replace("[mqtt]\n", &format!("[mqtt]\n{keys}\n"));
    let c =
        Config::parse(&with("protocol = \"3.1.1\"\nmax_packet = \"1MiB\""), "t").expect("3.1.1");
    assert_eq!(
        (c.mqtt.protocol, c.mqtt.max_packet),
        (MqttProtocol::V311, 1 << 20)
    );
    assert_eq!(c.mqtt.protocol.to_string(), "3.1.1");
    let e = err(&with("protocol = \"4\""));
    assert!(e.contains("protocol") && e.contains("3.1.1"), "{e}");
    for bad in ["\"1KiB\"", "\"300MiB\""] {
        let e = err(&with(&format!("max_packet = {bad}")));
        assert!(e.contains("mqtt.max_packet"), "{e}");
    }
    let c = Config::parse(&with("max_packet = 268435460"), "t").expect("the ceiling");
    assert_eq!(c.mqtt.max_packet, 268_435_460);
}

#[test]
fn unknown_keys_are_refused_with_their_name_and_line() {
    let e = err(&GOOD.replace("baud = 115200", "baud = 115200\nbaudrate = 9600"));
    assert!(e.contains("baudrate"), "{e}");
    assert!(e.contains("line 13"), "{e}");
}

#[test]
fn invalid_ids_are_refused_with_the_key() {
    let e = err(&GOOD.replace("panel-n12", "Panel/N12"));
    assert!(e.contains("node[0].id"), "{e}");
    let e = err(&GOOD.replace("sh-ja-0001", "sh+ja"));
    assert!(e.contains("gateway.id"), "{e}");
    let long = "a".repeat(65);
    let e = err(&GOOD.replace("panel-n12", &long));
    assert!(e.contains("node[0].id"), "{e}");
}

#[test]
fn plain_mqtt_to_a_remote_host_needs_allow_insecure() {
    let remote = GOOD.replace("mqtt://127.0.0.1:1883", "mqtt://platform.example:1883");
    let e = err(&remote);
    assert!(
        e.contains("mqtt.url") && e.contains("allow_insecure"),
        "{e}"
    );
    let allowed = remote.replace("topic_root", "allow_insecure = true\ntopic_root");
    assert!(Config::parse(&allowed, "t").is_ok());
    let tls = GOOD.replace(
        "mqtt://127.0.0.1:1883\"",
        "mqtts://platform.example\"\nca_file = \"/etc/towerlink/ca.pem\"",
    );
    let c = Config::parse(&tls, "t").expect("tls config");
    assert_eq!(c.broker().expect("url").port, 8883);
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("baud = 115200", "baud = 115201", "node[0].baud"),
        ("window = \"10s\"", "window = \"ten seconds\"", "window"),
        ("window = \"10s\"", "window = \"2h\"", "node[0].window"),
        (
            "topic_root = \"towerlink/v1\"",
            "topic_root = \"a/+/b\"",
            "mqtt.topic_root",
        ),
        (
            "topic_root = \"towerlink/v1\"",
            "topic_root = \"a//b\"",
            "mqtt.topic_root",
        ),
        (
            "topic_root = \"towerlink/v1\"",
            "data_qos = 2",
            "mqtt.data_qos",
        ),
    ];
    for (from, to, key) in cases {
        let e = err(&GOOD.replace(from, to));
        assert!(e.contains(key), "{to}: {e}");
    }
}

#[test]
fn duplicate_devices_and_ports_are_refused() {
    let two = format!("{GOOD}\n[[node]]\nid = \"panel-n12\"\nport = \"/dev/ttyUSB1\"\n");
    assert!(err(&two).contains("node[1].id"));
    let two = format!("{GOOD}\n[[node]]\nid = \"panel-n13\"\nport = \"/dev/ttyUSB0\"\n");
    assert!(err(&two).contains("node[1].port"));
}

const LIFT: &str = r#"
[[lift]]
id = "lift-2"
port = "/dev/ttyRS485-0"
baud = 9600
parity = "none"            # none | even | odd
unit = 2
profile = "generic"        # a file in config/profiles/, or a path
poll = "250ms"
top_floor = 32
bottom_floor = -2
rated_speed_mm_s = 1750
trapped_after = "30s"
outside_zone_after = "5s"
"#;

#[test]
fn the_lift_sketch_parses_with_its_profile() {
    let c = Config::parse(&format!("{GOOD}{LIFT}"), "t.toml").expect("lift config");
    let lift = &c.lifts[0];
    assert_eq!(lift.unit, 2);
    assert_eq!(lift.parity, Parity::None);
    assert_eq!(lift.poll, Duration::from_millis(250));
    assert_eq!(lift.timeout, Duration::from_millis(200));
    assert_eq!(lift.late_guard(), Duration::from_millis(800));
    assert_eq!((lift.top_floor, lift.bottom_floor), (32, -2));
    assert_eq!(lift.trapped_after, Duration::from_secs(30));
    assert_eq!(lift.status_interval, Duration::from_secs(60));
    let map = lift.register_map.as_ref().expect("resolved profile");
    assert_eq!((map.name.as_str(), map.count), ("generic", 14));
}

#[test]
fn bad_lift_values_name_their_key() {
    let cases = [
        ("unit = 2", "unit = 0", "lift[0].unit"),
        ("unit = 2", "unit = 248", "unit"),
        ("parity = \"none\"", "parity = \"mark\"", "parity"),
        ("baud = 9600", "baud = 230400", "lift[0].baud"),
        ("top_floor = 32", "top_floor = -3", "lift[0].top_floor"),
        ("poll = \"250ms\"", "poll = \"1ms\"", "lift[0].poll"),
        (
            "poll = \"250ms\"",
            "poll = \"250ms\"\nlate_guard = \"100ms\"",
            "lift[0].late_guard",
        ),
        (
            "poll = \"250ms\"",
            "poll = \"250ms\"\nlate_guard = \"61s\"",
            "lift[0].late_guard",
        ),
        (
            "profile = \"generic\"",
            "profile = \"acme\"",
            "lift[0].profile",
        ),
        (
            "unit = 2",
            "unit = 2\nwrite_registers = true",
            "write_registers",
        ),
        (
            "rated_speed_mm_s = 1750",
            "rated_speed_mm_s = 0",
            "rated_speed_mm_s",
        ),
        ("id = \"lift-2\"", "id = \"panel-n12\"", "lift[0].id"),
        (
            "port = \"/dev/ttyRS485-0\"",
            "port = \"/dev/ttyUSB0\"",
            "lift[0].port",
        ),
    ];
    for (from, to, key) in cases {
        let text = format!("{GOOD}{}", LIFT.replace(from, to));
        let e = err(&text);
        assert!(e.contains(key), "{to}: {e}");
    }
}

#[test]
fn lifts_on_one_bus_need_distinct_units_and_one_line_setting() {
    let second = LIFT.replace("lift-2", "lift-3");
    let e = err(&format!("{GOOD}{LIFT}{second}"));
    assert!(e.contains("lift[1].unit"), "{e}");
    let second = second.replace("unit = 2", "unit = 3");
    assert!(Config::parse(&format!("{GOOD}{LIFT}{second}"), "t").is_ok());
    let e = err(&format!(
        "{GOOD}{LIFT}{}",
        second.replace("baud = 9600", "baud = 19200")
    ));
    assert!(e.contains("lift[1].baud") && e.contains("same bus"), "{e}");
    let e = err(&format!(
        "{GOOD}{LIFT}{}",
        second.replace("parity = \"none\"", "parity = \"even\"")
    ));
    assert!(e.contains("lift[1].parity"), "{e}");
}

#[test]
fn missing_sections_are_named() {
    let e = err("[gateway]\nid = \"a\"\n");
    assert!(e.contains("mqtt"), "{e}");
}

fn problems(text: &str) -> Vec<Problem> {
    match Config::parse(text, "t.toml") {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.problems().to_vec(),
    }
}

fn placed(problems: &[Problem]) -> Vec<(Option<usize>, &str)> {
    problems.iter().map(|p| (p.line, p.key.as_str())).collect()
}

#[test]
fn every_problem_of_a_file_is_reported_at_once_with_line_and_key() {
    let text = r#"[gateway]
id = "GW"
[mqtt]
url = "mqtt://127.0.0.1"
data_qos = 2
keep_alive = "1s"
[store]
path = "/tmp/s"
max_bytes = "1KiB"
[[node]]
id = "n1"
port = "/dev/ttyUSB0"
baud = 115201
window = "ten"
[node.channels.strain]
spike = { window = 7, k = -1.0 }
[[node]]
id = "n2"
port = "/dev/ttyUSB1"
bogus = 1
[[lift]]
id = "l1"
port = "/dev/ttyRS485-0"
unit = 0
top_floor = 1
bottom_floor = 3
rated_speed_mm_s = 1000
"#;
    let found = problems(text);
    assert_eq!(
        placed(&found),
        [
            (Some(2), "gateway.id"),
            (Some(5), "mqtt.data_qos"),
            (Some(6), "mqtt.keep_alive"),
            (Some(9), "store.max_bytes"),
            (Some(13), "node[0].baud"),
            (Some(14), "node[0].window"),
            // node[0] is read without its two bad keys, so its channel's rules run too.
            (Some(16), "node[0].channels.strain.spike.k"),
            (Some(20), "node[1].bogus"),
            (Some(24), "lift[0].unit"),
        ],
        "{found:#?}"
    );
    // With the values right, the lift is read as written and its rules between keys run.
    let fixed = text
        .replace("\"GW\"", "\"gw\"")
        .replace("data_qos = 2", "data_qos = 0")
        .replace("keep_alive = \"1s\"", "")
        .replace("max_bytes = \"1KiB\"", "")
        .replace("baud = 115201", "")
        .replace("window = \"ten\"", "")
        .replace("bogus = 1", "")
        .replace("unit = 0", "unit = 1");
    let found = problems(&fixed);
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["node[0].channels.strain.spike.k", "lift[0].top_floor"],
        "{found:#?}"
    );
    assert_eq!(found[0].line, Some(16));
    let shown = Config::parse(&fixed, "t.toml")
        .expect_err("bad")
        .to_string();
    assert!(
        shown.starts_with("t.toml: 2 problems:\n  line 16, column 23: node[0].channels.strain.spike.k: must be > 0"),
        "{shown}"
    );
}

#[test]
fn ids_are_unique_across_nodes_i2c_devices_and_lifts() {
    let i2c = "\n[[i2c]]\nid = \"lift-2\"\nbus = \"sim\"\nchip = \"nau7802\"\n";
    // An I2C device and a lift with the same id: the later section's device is refused.
    let found = problems(&format!("{GOOD}{i2c}{LIFT}"));
    assert_eq!(placed(&found), [(Some(21), "lift[0].id")], "{found:#?}");
    assert!(found[0].message.contains("used by another device"));
    let found = problems(&format!("{GOOD}{}", i2c.replace("lift-2", "panel-n12")));
    assert_eq!(placed(&found), [(Some(16), "i2c[0].id")], "{found:#?}");
    assert!(Config::parse(&format!("{GOOD}{i2c}"), "t").is_ok());
}

#[test]
fn two_chips_on_one_i2c_bus_need_two_addresses() {
    let dev = |id: &str, chip: &str, extra: &str| {
        format!("\n[[i2c]]\nid = \"{id}\"\nbus = \"/dev/i2c-1\"\nchip = \"{chip}\"\n{extra}")
    };
    let two = format!(
        "{GOOD}{}{}",
        dev("a", "adxl355", ""),
        dev("b", "adxl355", "")
    );
    let found = problems(&two);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, "i2c[1].address");
    let apart = format!(
        "{GOOD}{}{}{}",
        dev("a", "adxl355", ""),
        dev("b", "adxl355", "address = 0x53"),
        dev("c", "nau7802", "")
    );
    assert!(Config::parse(&apart, "t").is_ok());
}

#[test]
fn channel_names_by_id_parse() {
    let text = GOOD.replace(
        "window = \"10s\"",
        "window = \"10s\"\nnames = { 0 = \"strain_top\", 3 = \"temp\" }",
    );
    let c = Config::parse(&text, "t").expect("names");
    assert_eq!(
        c.nodes[0].names.get(&0).map(String::as_str),
        Some("strain_top")
    );
    assert_eq!(c.nodes[0].names.get(&3).map(String::as_str), Some("temp"));
    let e = err(&text.replace("3 = ", "x = "));
    assert!(
        e.contains("node[0].names") && e.contains("not a channel id"),
        "{e}"
    );
    let e = err(&text.replace("\"temp\"", "\"Temp!\""));
    assert!(e.contains("node[0].names.3"), "{e}");
}

#[test]
fn unknown_sections_and_syntax_errors_have_their_line() {
    let found = problems(&format!("{GOOD}[mqtt2]\nurl = \"x\"\n"));
    assert_eq!(placed(&found), [(Some(14), "mqtt2")]);
    assert_eq!(found[0].kind, ProblemKind::UnknownKey);
    let found = problems(&format!("{GOOD}[[node]\n"));
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].line, found[0].kind),
        (Some(14), ProblemKind::Syntax)
    );
}

#[test]
fn the_redacted_config_holds_no_secret() {
    let text = GOOD.replace(
        "topic_root = \"towerlink/v1\"",
        "username = \"u\"\npassword_file = \"/etc/towerlink/password\"",
    );
    let c = Config::parse(&text, "t").expect("config");
    let json = c.redacted().to_string();
    assert!(
        json.contains("\"password_file\":\"/etc/towerlink/password\""),
        "{json}"
    );
    assert!(json.contains("\"id\":\"sh-ja-0001\""), "{json}");
}
