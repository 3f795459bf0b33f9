//! The feed's JSON Schemas (`config/schemas/`) against the contract's examples and the
//! agent's own serialisation: every example payload in `docs/mqtt-feed.md` passes its schema,
//! every payload kind and every event name has an example there, and the schemas reject what
//! the contract forbids (a data message without `seq` or with a string `seq`, an unknown
//! severity, ...). The end-to-end tests check every message they receive with the same
//! schemas (`towerlink_e2e::schemas`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};
use towerlink_agent::feed::{
    state_payload, ChannelWindow, Event, EventState, LiftDirection, LiftDoor, LiftMode, LiftStatus,
    Message, Reply, Severity, Trip, TripPhase,
};
use towerlink_e2e::schemas::{parse_topic, FeedSchemas, Kind};

fn schemas() -> &'static FeedSchemas {
    FeedSchemas::repository()
}

fn docs(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The examples of a markdown text, with the line each starts on: the fenced blocks whose
/// info string is `json <kind>` (one JSON value) or `jsonl <kind>` (one per line).
fn examples(markdown: &str) -> Vec<(usize, Kind, Value)> {
    let mut out = Vec::new();
    // (first line, kind, JSON Lines?, text)
    let mut open: Option<(usize, Kind, bool, String)> = None;
    let parse = |line: usize, text: &str| -> Value {
        serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("docs example at line {line}: not JSON: {e}\n{text}"))
    };
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim();
        match open.take() {
            Some((start, kind, false, text)) if trimmed == "```" => {
                out.push((start + 1, kind, parse(start + 1, &text)));
            }
            Some((_, _, true, _)) if trimmed == "```" => {}
            Some((start, kind, true, text)) => {
                if !trimmed.is_empty() {
                    out.push((i + 1, kind, parse(i + 1, trimmed)));
                }
                open = Some((start, kind, true, text));
            }
            Some((start, kind, false, mut text)) => {
                text.push_str(line);
                text.push('\n');
                open = Some((start, kind, false, text));
            }
            None => {
                let block = trimmed
                    .strip_prefix("```jsonl ")
                    .map(|info| (info, true))
                    .or_else(|| trimmed.strip_prefix("```json ").map(|info| (info, false)));
                if let Some((info, lines)) = block {
                    let kind = Kind::from_name(info.trim())
                        .unwrap_or_else(|| panic!("line {}: unknown payload kind {info:?}", i + 1));
                    open = Some((i, kind, lines, String::new()));
                }
            }
        }
    }
    assert!(open.is_none(), "an example block is not closed");
    out
}

#[test]
fn every_example_in_the_feed_contract_passes_its_schema() {
    let text = docs("mqtt-feed.md");
    let found = examples(&text);
    let mut failures = Vec::new();
    for (line, kind, value) in &found {
        if let Err(e) = schemas().validate(*kind, value) {
            failures.push(format!("line {line} ({}): {e}", kind.name()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let kinds: BTreeSet<&str> = found.iter().map(|(_, k, _)| k.name()).collect();
    for kind in Kind::ALL {
        assert!(
            kinds.contains(kind.name()),
            "docs/mqtt-feed.md has no example of {}",
            kind.name()
        );
    }
    // Both halves of data: a window and a lift status.
    assert!(found
        .iter()
        .any(|(_, k, v)| *k == Kind::Data && v.get("ch").is_some()));
    assert!(found
        .iter()
        .any(|(_, k, v)| *k == Kind::Data && v.get("lift").is_some()));
    // Both states.
    for state in ["online", "offline"] {
        assert!(
            found
                .iter()
                .any(|(_, k, v)| *k == Kind::State && v["state"] == state),
            "no {state} example"
        );
    }
    // Every event name the schema knows has an example, active and (but clock_step) cleared.
    let common: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/schemas/common.schema.json"),
        )
        .expect("common.schema.json"),
    )
    .expect("common schema is JSON");
    let names = common["$defs"]["event_name"]["enum"]
        .as_array()
        .expect("event_name enum");
    assert!(names.len() >= 20, "{names:?}");
    let seen: BTreeSet<(String, String)> = found
        .iter()
        .filter(|(_, k, _)| *k == Kind::Event)
        .map(|(_, _, v)| (v["event"].to_string(), v["state"].to_string()))
        .collect();
    for name in names {
        assert!(
            seen.contains(&(name.to_string(), "\"active\"".into())),
            "docs/mqtt-feed.md has no active {name} example"
        );
        if name != "clock_step" {
            assert!(
                seen.contains(&(name.to_string(), "\"cleared\"".into())),
                "docs/mqtt-feed.md has no cleared {name} example"
            );
        }
    }
}

fn window() -> Value {
    json!({"v":1,"gw":"sh-ja-0001","dev":"panel-n12","seq":18231,
        "start":"2026-11-28T05:04:00.000Z","end":"2026-11-28T05:04:10.000Z",
        "ch":{"tilt_x":{"u":"deg","n":100,"expected":100,"mean":0.0123,"min":0.0101,"max":0.015,"last":0.0124,"std":0.0004}}})
}

fn threshold() -> Value {
    json!({"v":1,"gw":"sh-ja-0001","dev":"panel-n12","seq":18242,"ts":"2026-11-28T05:04:41.120Z",
        "event":"threshold","severity":"major","state":"active","ch":"tilt_x","u":"deg","value":0.52,"limit":0.5})
}

fn rejected(kind: Kind, value: &Value, why: &str) {
    assert!(
        schemas().validate(kind, value).is_err(),
        "{} schema accepted {why}: {value}",
        kind.name()
    );
}

#[test]
fn cert_install_and_health_tls_follow_their_schemas() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let cmd = json!({"id":"c-30","op":"cert_install","cert":pem});
    schemas().validate(Kind::Cmd, &cmd).expect("cert_install");
    rejected(
        Kind::Cmd,
        &json!({"id":"c","op":"cert_install"}),
        "cert_install without cert",
    );
    rejected(
        Kind::Cmd,
        &json!({"id":"c","op":"ping","cert":pem}),
        "cert on ping",
    );
    rejected(
        Kind::Cmd,
        &json!({"id":"c","op":"cert_install","cert":"-----BEGIN PRIVATE KEY-----"}),
        "a private key as cert",
    );
    rejected(
        Kind::Cmd,
        &json!({"id":"c","op":"cert_install","cert":pem,"ts":1,"sig":"0".repeat(128)}),
        "a v1-signed cert_install",
    );
    let reply = json!({"v":1,"gw":"g","seq":3,"id":"c-30","ok":true,"result":{
        "installed":"/etc/towerlink/gw.pem.new","subject":"CN=g","not_after":"2027-03-01T20:41:07.000Z",
        "days_left":89,"renewal":"pending"}});
    schemas()
        .validate(Kind::Reply, &reply)
        .expect("cert_install reply");
    let mut short = reply.clone();
    short["result"]
        .as_object_mut()
        .map(|r| r.remove("days_left"));
    rejected(
        Kind::Reply,
        &short,
        "a cert_install result without days_left",
    );
    let health = |tls: Value| {
        let mut h: Value = serde_json::from_str(HEALTH).expect("health");
        h["tls"] = tls;
        h
    };
    for renewal in ["none", "pending", "refused: alert UnknownCA"] {
        schemas()
            .validate(
                Kind::Health,
                &health(json!({"cert_days_left": 12, "renewal": renewal})),
            )
            .expect(renewal);
    }
    rejected(
        Kind::Health,
        &health(json!({"cert_days_left": 12, "renewal": "refused"})),
        "a refusal without its cause",
    );
    rejected(
        Kind::Health,
        &health(json!({"renewal": "none"})),
        "tls without days",
    );
}

/// A full health report (the agent's own shape, trimmed).
const HEALTH: &str = r#"{"v":1,"gw":"g","ts":"2026-12-01T11:01:25.343Z","agent":"0.1.0","uptime_s":1,
 "queue":{"depth":0,"bytes":0,"oldest_age_s":null,"last_seq":0,"evicted":0,"corrupted":0,"memory_only":0,"store_errors":0,"error":null},
 "messages":{"queued":0,"published":0,"dropped":0,"evicted":0},
 "mqtt":{"connects":1,"connection_errors":0,"commands":0,"insecure":false},
 "commands":{"accepted":0,"refused":0,"rate_limited":0},
 "pipeline":{"late_samples":0,"unknown_channel_samples":0,"spikes":0,"out_of_range":0},
 "sources":{},"clock":{"synced":true,"est_error_ms":0.5,"steps":0}}"#;

#[test]
fn the_schemas_reject_what_the_contract_forbids() {
    schemas()
        .validate(Kind::Data, &window())
        .expect("the reference window");
    schemas()
        .validate(Kind::Event, &threshold())
        .expect("the reference event");

    let edit = |base: Value, f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut v = base;
        if let Some(o) = v.as_object_mut() {
            f(o);
        }
        v
    };
    // The three of the issue.
    let no_seq = edit(window(), &|o| {
        o.remove("seq");
    });
    rejected(Kind::Data, &no_seq, "a data message without seq");
    let string_seq = edit(window(), &|o| {
        o.insert("seq".into(), json!("18231"));
    });
    rejected(Kind::Data, &string_seq, "a string seq");
    let unknown_severity = edit(threshold(), &|o| {
        o.insert("severity".into(), json!("warning"));
    });
    rejected(Kind::Event, &unknown_severity, "an unknown severity");

    // More of the contract's rules.
    rejected(
        Kind::Data,
        &edit(window(), &|o| {
            o.insert("v".into(), json!(2));
        }),
        "v = 2",
    );
    rejected(
        Kind::Data,
        &edit(window(), &|o| {
            o.insert("gw".into(), json!("SH/ja#1"));
        }),
        "a gateway id outside the pattern",
    );
    rejected(
        Kind::Data,
        &edit(window(), &|o| {
            o.insert("start".into(), json!("2026-11-28T05:04:00Z"));
        }),
        "a time without milliseconds",
    );
    rejected(
        Kind::Data,
        &edit(window(), &|o| {
            o.insert(
                "ch".into(),
                json!({"tilt_x": {"u":"degrees","n":1,"expected":1,"mean":0,"min":0,"max":0,"last":0,"std":0}}),
            );
        }),
        "an unknown unit",
    );
    rejected(
        Kind::Data,
        &edit(window(), &|o| {
            o.insert(
                "ch".into(),
                json!({"tilt_x": {"u":"deg","n":1,"expected":1,"mean":0,"min":0,"max":0,"last":0}}),
            );
        }),
        "a window without std",
    );
    rejected(
        Kind::Data,
        &edit(window(), &|o| {
            o.insert(
                "ch".into(),
                json!({"tilt_x": {"u":"deg","n":1,"mean":0,"min":0,"max":0,"last":0,"std":0}}),
            );
        }),
        "a window channel without expected (v1.1)",
    );
    rejected(
        Kind::Data,
        &edit(window(), &|o| {
            o.insert("clock".into(), json!("synced"));
        }),
        "a clock flag other than unsynced",
    );
    rejected(
        Kind::Event,
        &edit(threshold(), &|o| {
            o.insert("event".into(), json!("panel_fell_off"));
        }),
        "an unknown event",
    );
    rejected(
        Kind::Event,
        &edit(threshold(), &|o| {
            o.remove("limit");
        }),
        "a threshold event without its limit",
    );
    rejected(
        Kind::Event,
        &json!({"v":1,"gw":"g","dev":"lift-2","seq":3,"ts":"2026-11-28T05:04:41.000Z",
            "event":"trapped_passenger","severity":"minor","state":"active",
            "since":"2026-11-28T05:04:11.000Z","detail":{"floor":7}}),
        "a trapped passenger that is only minor",
    );
    rejected(
        Kind::State,
        &json!({"v":1,"gw":"g","state":"online","ts":"2026-11-28T05:04:41.000Z","agent":"0.1.0","seq":4}),
        "a state with a seq (state is not queued)",
    );
    rejected(
        Kind::State,
        &json!({"v":1,"gw":"g","state":"online","ts":"2026-11-28T05:04:41.000Z","agent":"0.1.0","clock":{"synced":true}}),
        "a birth without last_stop (v1.1)",
    );
    rejected(
        Kind::State,
        &json!({"v":1,"gw":"g","state":"online","ts":"2026-11-28T05:04:41.000Z","agent":"0.1.0","last_stop":"killed","clock":{"synced":true}}),
        "a last_stop other than clean or unclean",
    );
    rejected(
        Kind::Reply,
        &json!({"v":1,"gw":"g","seq":5,"id":"c-1","ok":false}),
        "a refusal without its error",
    );
    rejected(
        Kind::Cmd,
        &json!({"id":"c-1","op":"ping","sudo":true}),
        "a command with an unknown field",
    );
    rejected(
        Kind::Cmd,
        &json!({"id":"c-1","op":"zero","dev":"panel-n12"}),
        "zero without ch",
    );
    rejected(
        Kind::Data,
        &json!({"v":1,"gw":"g","dev":"lift-2","seq":18240,"ts":"2026-11-28T05:04:03.250Z",
            "lift":{"mode":"party","floor":7,"direction":"up","door":"closed","running":true,
                    "door_zone":false,"occupied":true,"speed_mm_s":1480,"load_pct":35,
                    "position_mm":21350,"fault_code":0,"run_count":10234,"door_cycles":20561}}),
        "an unknown lift mode",
    );
    // Open where the contract allows additions.
    let extended = edit(window(), &|o| {
        o.insert("site".into(), json!("jing'an"));
    });
    schemas()
        .validate(Kind::Data, &extended)
        .expect("an added field is allowed");
}

#[test]
fn the_agents_own_serialisation_passes() {
    let gw = "sh-ja-0001";
    let t = 1_795_842_240_000;
    let mut ch = BTreeMap::new();
    ch.insert(
        "strain".to_owned(),
        ChannelWindow {
            u: "ustrain",
            n: 500,
            expected: 500,
            mean: 112.4,
            min: 98.0,
            max: 131.9,
            last: 113.0,
            std: 6.1,
        },
    );
    let mut e = Event::new(t, "sensor_fault", Severity::Major, EventState::Active);
    e.since = Some(t);
    e.ch = Some("tilt_x".into());
    e.detail = Some(json!({"code": "saturated"}));
    let cases = [
        (
            Kind::Data,
            Message::Data {
                dev: "panel-n12".into(),
                start: t,
                end: t + 10_000,
                ch,
            },
        ),
        (
            Kind::Data,
            Message::LiftStatus {
                dev: "lift-2".into(),
                ts: t,
                lift: LiftStatus {
                    mode: LiftMode::EmergencyPower,
                    floor: -2,
                    direction: LiftDirection::Down,
                    door: LiftDoor::Closing,
                    running: false,
                    door_zone: true,
                    occupied: false,
                    speed_mm_s: 0,
                    load_pct: 0,
                    position_mm: 0,
                    fault_code: 0,
                    run_count: u32::MAX,
                    door_cycles: 0,
                },
                trip: None,
            },
        ),
        (
            Kind::Data,
            Message::LiftStatus {
                dev: "lift-2".into(),
                ts: t,
                lift: LiftStatus {
                    mode: LiftMode::Normal,
                    floor: 12,
                    direction: LiftDirection::Stopped,
                    door: LiftDoor::Closed,
                    running: false,
                    door_zone: true,
                    occupied: true,
                    speed_mm_s: 0,
                    load_pct: 40,
                    position_mm: 42_000,
                    fault_code: 0,
                    run_count: 7,
                    door_cycles: 9,
                },
                trip: Some(Trip {
                    phase: TripPhase::End,
                    from: -2,
                    to: Some(12),
                    started: t - 12_000,
                    duration_ms: Some(12_000),
                    peak_speed_mm_s: Some(1750),
                    door_cycles: None,
                    doors_closed: Some(true),
                }),
            },
        ),
        (
            Kind::Event,
            Message::Event {
                dev: "panel-n12".into(),
                event: e,
            },
        ),
        (
            Kind::Reply,
            Message::Reply(Reply {
                id: String::new(),
                ok: false,
                error: Some("malformed command".into()),
                result: None,
            }),
        ),
    ];
    for (kind, message) in cases {
        let payload: Value = serde_json::from_slice(&message.render(gw, 7)).expect("json");
        schemas()
            .validate(kind, &payload)
            .unwrap_or_else(|e| panic!("{payload}: {e}"));
    }
    let birth = towerlink_agent::feed::BirthInfo {
        last_stop: towerlink_agent::feed::LastStop::Unclean,
        clock: None,
    };
    for (online, ts) in [(true, Some((t, &birth))), (false, None)] {
        let payload: Value = serde_json::from_slice(&state_payload(gw, online, ts)).expect("json");
        schemas()
            .validate(Kind::State, &payload)
            .unwrap_or_else(|e| panic!("{payload}: {e}"));
    }
}

#[test]
fn received_messages_are_checked_by_topic() {
    assert_eq!(
        parse_topic("towerlink/v1/gw-1/data/panel-n12").map(|t| (t.kind, t.gw, t.dev)),
        Some((Kind::Data, "gw-1", Some("panel-n12")))
    );
    assert_eq!(
        parse_topic("towerlink/v1/gw-1/health").map(|t| (t.kind, t.gw, t.dev)),
        Some((Kind::Health, "gw-1", None))
    );
    assert!(parse_topic("towerlink/v1/gw-1/telemetry").is_none());
    let payload = window().to_string();
    schemas()
        .check_message("towerlink/v1/sh-ja-0001/data/panel-n12", payload.as_bytes())
        .expect("a window on its topic");
    assert!(schemas()
        .check_message("towerlink/v1/sh-ja-0001/data/panel-n13", payload.as_bytes())
        .is_err_and(|e| e.contains("dev")));
    assert!(schemas()
        .check_message("towerlink/v1/other-gw/data/panel-n12", payload.as_bytes())
        .is_err_and(|e| e.contains("gw")));
    assert!(schemas()
        .check_message(
            "towerlink/v1/sh-ja-0001/event/panel-n12",
            payload.as_bytes()
        )
        .is_err());
    assert!(schemas()
        .check_message("towerlink/v1/sh-ja-0001/data/panel-n12", b"not json")
        .is_err());
    // A retained message being cleared.
    schemas()
        .check_message("towerlink/v1/sh-ja-0001/state", b"")
        .expect("an empty payload");
}
