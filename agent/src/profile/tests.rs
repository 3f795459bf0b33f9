//! Tests of the profile parser, the decoder and the encoder.

use super::*;

fn generic() -> Profile {
    Profile::built_in("generic").expect("generic profile")
}

#[test]
fn the_generic_profile_is_the_spec_map() {
    let p = generic();
    assert_eq!((p.start, p.count), (0, 14));
    assert_eq!(p.word_order, WordOrder::HighFirst);
    let r = &p.registers;
    assert_eq!(
        [
            r.mode,
            r.floor,
            r.direction,
            r.door,
            r.flags,
            r.speed,
            r.load,
            r.fault_code,
            r.position,
            r.run_count,
            r.door_cycles
        ],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12]
    );
}

#[test]
fn decodes_the_spec_example_from_raw_registers() {
    // The feed spec's example status, written by hand in the spec's register layout.
    let regs: [u16; 14] = [
        0,                          // normal
        7,                          // floor
        1,                          // up
        0,                          // closed
        0b0011_1101,                // running, occupied, power, safety, lock
        1480,                       // speed
        35,                         // load
        0,                          // fault
        0,                          // position high
        21350,                      // position low
        0,                          // run_count high
        10234,                      // run_count low
        (20561u32 >> 16) as u16,    // door_cycles high
        (20561u32 & 0xFFFF) as u16, // door_cycles low
    ];
    let r = generic().decode(&regs).expect("decode");
    let s = r.status;
    assert_eq!(s.mode, LiftMode::Normal);
    assert_eq!(s.floor, 7);
    assert_eq!(s.direction, LiftDirection::Up);
    assert_eq!(s.door, LiftDoor::Closed);
    assert!(s.running && !s.door_zone && s.occupied);
    assert_eq!((s.speed_mm_s, s.load_pct, s.position_mm), (1480, 35, 21350));
    assert_eq!((s.run_count, s.door_cycles), (10234, 20561));
    assert!(r.main_power_ok && r.safety_closed && r.door_lock_closed);
    assert!(!r.alarm_button && !r.overload);
}

#[test]
fn basements_and_32_bit_values_in_both_word_orders() {
    let mut regs = [0u16; 14];
    regs[1] = (-2i16) as u16;
    regs[8] = 0x0001;
    regs[9] = 0x2345;
    let r = generic().decode(&regs).expect("decode");
    assert_eq!(r.status.floor, -2);
    assert_eq!(r.status.position_mm, 0x0001_2345);

    let nice = Profile::built_in("nice-monitor").expect("nice profile");
    assert_eq!(nice.word_order, WordOrder::LowFirst);
    let mut regs = [0u16; 16];
    // position at 4104: low word first.
    regs[8] = 0x2345;
    regs[9] = 0x0001;
    regs[1] = 5; // floor at 4097
    let r = nice.decode(&regs).expect("decode");
    assert_eq!(r.status.position_mm, 0x0001_2345);
    assert_eq!(r.status.floor, 5);
    assert_eq!(nice.fault_name(41), Some("E41 safety circuit open"));
    assert_eq!(nice.fault_name(1), None);
}

#[test]
fn encode_then_decode_is_identity_in_both_profiles() {
    let reading = LiftReading {
        status: CarStatus {
            mode: LiftMode::FireService,
            floor: -1,
            direction: LiftDirection::Down,
            door: LiftDoor::Closing,
            running: true,
            door_zone: true,
            occupied: false,
            speed_mm_s: 900,
            load_pct: 12,
            position_mm: 123_456,
            fault_code: 42,
            run_count: 70_000,
            door_cycles: 140_001,
        },
        main_power_ok: true,
        safety_closed: false,
        door_lock_closed: true,
        alarm_button: true,
        overload: false,
    };
    for name in ["generic", "nice-monitor"] {
        let p = Profile::built_in(name).expect("profile");
        assert_eq!(p.decode(&p.encode(&reading)), Ok(reading), "{name}");
    }
}

#[test]
fn out_of_range_values_and_short_answers_are_errors() {
    let p = generic();
    let mut regs = [0u16; 14];
    regs[2] = 3;
    assert_eq!(
        p.decode(&regs),
        Err(DecodeError::Value {
            field: "direction",
            value: 3
        })
    );
    assert!(matches!(
        p.decode(&regs[..13]),
        Err(DecodeError::Short { got: 13, want: 14 })
    ));
}

const GENERIC: &str = include_str!("../../../config/profiles/generic.toml");

#[test]
fn profiles_that_could_write_or_do_not_fit_are_refused() {
    let cases = [
        ("start = 0", "function = 6\nstart = 0", "function = 6"),
        ("start = 0", "function = 16\nstart = 0", "never writes"),
        (
            "[fault_codes]",
            "[fault_codes]\n[write]\nregister = 6",
            "write",
        ),
        ("door = 3", "door = 3\nholding = 1", "holding"),
        ("count = 14", "count = 13", "registers.door_cycles"),
        ("count = 14", "count = 126", "count"),
        ("door = 3", "door = 2", "overlaps"),
        ("position = 8", "position = 13", "outside the block"),
        (
            "[fault_codes]",
            "[fault_codes]\nE41 = \"x\"",
            "fault_codes.E41",
        ),
        ("high_first", "middle_first", "word_order"),
    ];
    for (from, to, needle) in cases {
        let text = GENERIC.replace(from, to);
        assert_ne!(text, GENERIC, "{from}");
        match Profile::parse(&text, "t") {
            Ok(_) => panic!("accepted: {to}"),
            Err(e) => {
                assert!(
                    matches!(e, ProfileError::Rule { .. } | ProfileError::Syntax { .. }),
                    "{to}: {e:?}"
                );
                assert!(e.to_string().contains(needle), "{to}: {e}");
            }
        }
    }
    let stated = GENERIC.replace("start = 0", "function = 4\nstart = 0");
    assert!(Profile::parse(&stated, "t").is_ok());
}

#[test]
fn profiles_resolve_from_the_config_dir_then_built_ins() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("profiles")).expect("mkdir");
    let custom = GENERIC.replace("name = \"generic\"", "name = \"site\"");
    std::fs::write(dir.path().join("profiles/site.toml"), &custom).expect("write");
    std::fs::write(dir.path().join("mine.toml"), &custom).expect("write");
    assert_eq!(
        Profile::resolve("site", Some(dir.path()))
            .expect("site")
            .name,
        "site"
    );
    assert_eq!(
        Profile::resolve("mine.toml", Some(dir.path()))
            .expect("path")
            .name,
        "site"
    );
    assert_eq!(
        Profile::resolve("generic", Some(dir.path()))
            .expect("built-in")
            .name,
        "generic"
    );
    let e = Profile::resolve("nope", Some(dir.path())).expect_err("missing");
    assert!(
        matches!(e, ProfileError::NotFound { by_name: true, .. }),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains("not found") && e.contains("profiles/nope.toml") && e.contains("built-in"),
        "{e}"
    );
    let e = Profile::resolve("../x", None).expect_err("missing path");
    assert!(
        matches!(e, ProfileError::NotFound { by_name: false, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("not found"), "{e}");
    let e = Profile::resolve("bad name!", None).expect_err("bad name");
    assert!(matches!(e, ProfileError::BadReference(_)), "{e:?}");
}

#[test]
fn every_flag_bit_decodes_to_its_own_field() {
    // Register 4 of the spec, one bit at a time, written by hand: bit0 running, bit1 door
    // zone, bit2 occupied, bit3 main power ok, bit4 safety closed, bit5 door lock closed,
    // bit6 alarm button, bit7 overload.
    let cases: [(u16, [bool; 8]); 10] = [
        (
            0x0000,
            [false, false, false, false, false, false, false, false],
        ),
        (
            0x0001,
            [true, false, false, false, false, false, false, false],
        ),
        (
            0x0002,
            [false, true, false, false, false, false, false, false],
        ),
        (
            0x0004,
            [false, false, true, false, false, false, false, false],
        ),
        (
            0x0008,
            [false, false, false, true, false, false, false, false],
        ),
        (
            0x0010,
            [false, false, false, false, true, false, false, false],
        ),
        (
            0x0020,
            [false, false, false, false, false, true, false, false],
        ),
        (
            0x0040,
            [false, false, false, false, false, false, true, false],
        ),
        (
            0x0080,
            [false, false, false, false, false, false, false, true],
        ),
        // Bits above 7 are not in the spec: ignored.
        (
            0xFF00,
            [false, false, false, false, false, false, false, false],
        ),
    ];
    for (flags, want) in cases {
        let regs: [u16; 14] = [0, 0, 0, 0, flags, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let r = generic().decode(&regs).expect("decode");
        assert_eq!(flags_of(&r), want, "flags register {flags:#06x}");
    }
}

#[test]
fn every_multi_register_field_and_enumeration_decodes_from_hand_written_registers() {
    // Registers 8..=13, high word first, with distinct high and low words per field so a
    // swapped word, a swapped field or an off-by-one address shows.
    let regs: [u16; 14] = [
        2,      // mode: fire service
        0xFFFE, // floor -2
        2,      // down
        1,      // opening
        0x00FF, // every flag
        2500,   // speed
        110,    // load
        0x0123, // fault code
        0x0001, // position high
        0x2345, // position low
        0x0006, // run_count high
        0x789A, // run_count low
        0x00BC, // door_cycles high
        0xDEF0, // door_cycles low
    ];
    let r = generic().decode(&regs).expect("decode");
    let s = r.status;
    assert_eq!(s.mode, LiftMode::FireService);
    assert_eq!(
        (s.floor, s.direction, s.door),
        (-2, LiftDirection::Down, LiftDoor::Opening)
    );
    assert_eq!(flags_of(&r), [true; 8]);
    assert_eq!(
        (s.speed_mm_s, s.load_pct, s.fault_code),
        (2500, 110, 0x0123)
    );
    assert_eq!(s.position_mm, 0x0001_2345);
    assert_eq!(s.run_count, 0x0006_789A);
    assert_eq!(s.door_cycles, 0x00BC_DEF0);

    // Every value of the enumerated registers, by its number in the spec.
    let modes = [
        LiftMode::Normal,
        LiftMode::Inspection,
        LiftMode::FireService,
        LiftMode::OutOfService,
        LiftMode::Independent,
        LiftMode::EmergencyPower,
    ];
    for (n, mode) in modes.into_iter().enumerate() {
        let mut regs = [0u16; 14];
        regs[0] = n as u16;
        assert_eq!(generic().decode(&regs).expect("mode").status.mode, mode);
    }
    let directions = [
        LiftDirection::Stopped,
        LiftDirection::Up,
        LiftDirection::Down,
    ];
    for (n, direction) in directions.into_iter().enumerate() {
        let mut regs = [0u16; 14];
        regs[2] = n as u16;
        let got = generic().decode(&regs).expect("direction").status.direction;
        assert_eq!(got, direction);
    }
    let doors = [
        LiftDoor::Closed,
        LiftDoor::Opening,
        LiftDoor::Open,
        LiftDoor::Closing,
    ];
    for (n, door) in doors.into_iter().enumerate() {
        let mut regs = [0u16; 14];
        regs[3] = n as u16;
        assert_eq!(generic().decode(&regs).expect("door").status.door, door);
    }
}

/// Which flags of a decoded reading are set, in the spec's bit order (bit 0 first).
fn flags_of(r: &LiftReading) -> [bool; 8] {
    [
        r.status.running,
        r.status.door_zone,
        r.status.occupied,
        r.main_power_ok,
        r.safety_closed,
        r.door_lock_closed,
        r.alarm_button,
        r.overload,
    ]
}
