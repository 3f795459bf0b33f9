use super::*;

const ROOT: &str = "towerlink/v1";
/// 2026-12-01T11:01:10.000Z in Unix milliseconds.
const T: f64 = 1_796_122_870_000.0;

fn audit() -> Audit {
    Audit::new(ROOT, FeedSchemas::embedded().expect("schemas"))
}

fn window(gw: &str, seq: u64) -> (String, Vec<u8>) {
    (
        format!("{ROOT}/{gw}/data/panel-n1"),
        format!(
            r#"{{"v":1,"gw":"{gw}","dev":"panel-n1","seq":{seq},"start":"2026-12-01T11:01:05.000Z","end":"2026-12-01T11:01:10.000Z","ch":{{"strain":{{"u":"ustrain","n":3,"expected":3,"mean":1.0,"min":0.5,"max":1.5,"last":1.0,"std":0.4}}}}}}"#
        )
        .into_bytes(),
    )
}

fn event(gw: &str, seq: u64, state: &str, ch: Option<&str>) -> (String, Vec<u8>) {
    let ch = ch.map_or(String::new(), |c| {
        format!(r#","ch":"{c}","u":"deg","value":0.2,"limit":0.15"#)
    });
    (
        format!("{ROOT}/{gw}/event/panel-n1"),
        format!(
            r#"{{"v":1,"gw":"{gw}","dev":"panel-n1","seq":{seq},"ts":"2026-12-01T11:01:10.000Z","event":"threshold","severity":"minor","state":"{state}","since":"2026-12-01T11:01:09.000Z"{ch}}}"#
        )
        .into_bytes(),
    )
}

fn health(gw: &str, uptime: u64, evicted: u64) -> (String, Vec<u8>) {
    (
        format!("{ROOT}/{gw}/health"),
        format!(
            r#"{{"v":1,"gw":"{gw}","agent":"0.1.0","ts":"2026-12-01T11:01:10.000Z","uptime_s":{uptime},
            "commands":{{"accepted":0,"rate_limited":0,"refused":0}},
            "messages":{{"dropped":0,"evicted":{evicted},"published":1,"queued":1}},
            "mqtt":{{"commands":0,"connection_errors":0,"connects":1,"insecure":false}},
            "pipeline":{{"late_samples":0,"out_of_range":0,"spikes":0,"unknown_channel_samples":0}},
            "queue":{{"bytes":0,"corrupted":0,"depth":0,"disk_bytes":0,"error":null,"evicted":{evicted},"fsync":"100ms","last_seq":1,"memory_only":0,"oldest_age_s":null,"replay_rate":500,"segments":1,"store_errors":0,"torn":0}},
            "sources":{{}},"clock":{{"synced":true,"est_error_ms":0.5,"steps":0}}}}"#
        )
        .into_bytes(),
    )
}

fn feed(a: &mut Audit, m: (String, Vec<u8>)) -> Outcome {
    a.on_message(&m.0, &m.1, T + 250.0)
}

#[test]
fn seq_set_merges_ranges_and_finds_holes() {
    let mut s = SeqSet::default();
    for n in [5, 1, 2, 9, 3, 7, 8] {
        assert!(s.insert(n));
    }
    assert!(!s.insert(2));
    assert_eq!(s.ranges(), vec![(1, 3), (5, 5), (7, 9)]);
    assert_eq!(s.holes(), vec![(4, 4), (6, 6)]);
    assert!(s.insert(4) && s.insert(6));
    assert_eq!(s.ranges(), vec![(1, 9)]);
    assert!(s.holes().is_empty());
    assert_eq!(s.bounds(), Some((1, 9)));
    assert!(s.insert(u64::MAX) && s.contains(u64::MAX) && !s.contains(10));
}

#[test]
fn a_clean_feed_has_nothing_to_report() {
    let mut a = audit();
    for seq in 1..=20 {
        assert_eq!(feed(&mut a, window("gw-a", seq)), Outcome::Valid);
    }
    let g = &a.gateways()["gw-a"];
    assert_eq!((g.messages, g.invalid, g.duplicates), (20, 0, 0));
    assert_eq!(g.missing(), Missing::default());
    assert!(!a.has_gaps());
    let r = a.report(false);
    assert_eq!(r["gateways"]["gw-a"]["gaps"], json!([]));
    assert_eq!(
        r["gateways"]["gw-a"]["seq"],
        json!({"first": 1, "last": 20})
    );
    assert_eq!(r["gateways"]["gw-a"]["state"], Value::Null);
}

#[test]
fn gaps_duplicates_and_late_arrivals() {
    let mut a = audit();
    for seq in [1, 2, 5, 6, 3, 9, 9, 2] {
        feed(&mut a, window("gw-a", seq));
    }
    let g = &a.gateways()["gw-a"];
    assert_eq!(g.duplicates, 2);
    assert_eq!(g.messages, 8);
    let m = g.missing();
    assert_eq!(m.gaps, vec![(4, 4), (7, 8)]);
    assert_eq!((m.missing, m.evicted), (3, 0));
    assert_eq!(
        a.report(false)["gateways"]["gw-a"]["gaps"],
        json!([[4, 4], [7, 8]])
    );
    // Another gateway's seq are its own.
    feed(&mut a, window("gw-b", 4));
    assert!(a.gateways()["gw-b"].missing().gaps.is_empty());
}

#[test]
fn holes_the_gateway_counts_as_evicted_are_not_gaps() {
    let mut a = audit();
    for seq in [1, 2, 6, 7, 9] {
        feed(&mut a, window("gw-a", seq));
    }
    // Evicted: 3 (the oldest telemetry, so the lowest hole 3..=5).
    assert_eq!(feed(&mut a, health("gw-a", 60, 3)), Outcome::Valid);
    let m = a.gateways()["gw-a"].missing();
    assert_eq!((m.evicted, m.gaps.clone(), m.missing), (3, vec![(8, 8)], 1));
    // A restart: the counter starts again, the earlier run's evictions still count.
    feed(&mut a, health("gw-a", 5, 1));
    let m = a.gateways()["gw-a"].missing();
    assert_eq!((m.evicted, m.missing), (4, 0));
    assert!(!a.has_gaps());
    // More evictions than holes: only the holes are reported evicted.
    feed(&mut a, health("gw-a", 65, 10));
    assert_eq!(a.gateways()["gw-a"].missing().evicted, 4);
    assert_eq!(a.gateways()["gw-a"].evicted_reported(), 13);
}

#[test]
fn open_events_follow_the_last_transition_by_seq() {
    let mut a = audit();
    feed(&mut a, event("gw-a", 1, "active", Some("tilt_x")));
    feed(&mut a, event("gw-a", 2, "active", Some("tilt_y")));
    feed(&mut a, event("gw-a", 4, "cleared", Some("tilt_y")));
    let open = a.gateways()["gw-a"].open_events();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].ch.as_deref(), open[0].seq), (Some("tilt_x"), 1));
    // An older `active` arriving late (a replay) does not reopen the cleared one.
    feed(&mut a, event("gw-a", 3, "active", Some("tilt_y")));
    assert_eq!(a.gateways()["gw-a"].open_events().len(), 1);
    let r = a.report(false);
    assert_eq!(
        r["gateways"]["gw-a"]["open_events"][0]["event"],
        "threshold"
    );
    assert_eq!(r["gateways"]["gw-a"]["open_events"][0]["ch"], "tilt_x");
    assert_eq!(r["gateways"]["gw-a"]["open_events"][0]["dev"], "panel-n1");
}

#[test]
fn invalid_messages_are_counted_with_their_reason() {
    let mut a = audit();
    let (topic, _) = window("gw-a", 1);
    assert!(matches!(
        a.on_message(&topic, b"{not json", T),
        Outcome::Invalid(r) if r.contains("not JSON")
    ));
    let no_seq = br#"{"v":1,"gw":"gw-a","dev":"panel-n1","start":"2026-12-01T11:01:05.000Z","end":"2026-12-01T11:01:10.000Z","ch":{}}"#;
    assert!(matches!(
        a.on_message(&topic, no_seq, T),
        Outcome::Invalid(_)
    ));
    let (_, other_gw) = window("gw-b", 2);
    assert!(matches!(
        a.on_message(&topic, &other_gw, T),
        Outcome::Invalid(r) if r.contains("gw")
    ));
    assert!(matches!(
        a.on_message(&format!("{ROOT}/gw-a/telemetry"), b"{}", T),
        Outcome::Invalid(r) if r.contains("unknown topic kind")
    ));
    for _ in 0..10 {
        a.on_message(&topic, b"[]", T);
    }
    let g = &a.gateways()["gw-a"];
    assert_eq!(g.invalid, 14);
    assert_eq!(g.reasons.len(), MAX_REASONS);
    assert!(g.reasons[0].starts_with(&topic), "{}", g.reasons[0]);
    // The wrong-gw message's seq was seen (it arrived), so it does not open a hole.
    assert_eq!(g.seqs.ranges(), vec![(2, 2)]);
    assert!(matches!(
        a.on_message("elsewhere/x", b"{}", T),
        Outcome::Outside(_)
    ));
    assert_eq!(a.outside(), 1);
    assert_eq!(a.on_message(&topic, b"", T), Outcome::Empty);
}

#[test]
fn state_unsynced_and_latency() {
    let mut a = audit();
    let state = format!("{ROOT}/gw-a/state");
    feed(
        &mut a,
        (
            state.clone(),
            br#"{"agent":"0.1.0","clock":{"synced":true},"gw":"gw-a","last_stop":"clean","state":"online","ts":"2020-01-01T00:00:00.000Z","v":1}"#.to_vec(),
        ),
    );
    assert_eq!(a.gateways()["gw-a"].state.as_deref(), Some("online"));
    // The retained state is not a latency.
    assert_eq!(a.gateways()["gw-a"].latency.count(), 0);
    feed(
        &mut a,
        (state, br#"{"gw":"gw-a","state":"offline","v":1}"#.to_vec()),
    );
    assert_eq!(a.gateways()["gw-a"].state.as_deref(), Some("offline"));
    // Windows: receipt - end. 99 at 250 ms, 1 at 5 s.
    for seq in 1..=99 {
        let (t, p) = window("gw-a", seq);
        a.on_message(&t, &p, T + 250.0);
    }
    let (t, p) = window("gw-a", 100);
    a.on_message(&t, &p, T + 5_000.0);
    let mut unsynced = String::from_utf8(window("gw-a", 101).1).expect("utf8");
    unsynced.insert_str(1, r#""clock":"unsynced","#);
    a.on_message(&t, unsynced.as_bytes(), T + 250.0);
    let g = &a.gateways()["gw-a"];
    assert_eq!(g.unsynced, 1);
    let p50 = g.latency.quantile(0.5).expect("p50");
    assert!((p50 - 250.0).abs() < 250.0 * 0.04, "p50 {p50}");
    let p99 = g.latency.quantile(0.99).expect("p99");
    assert!((p99 - 250.0).abs() < 250.0 * 0.04, "p99 {p99}");
    assert_eq!(g.latency.max(), Some(5_000.0));
    // A sender clock ahead of ours: counted, as zero.
    a.on_message(&t, &window("gw-a", 102).1, T - 100.0);
    assert_eq!(a.gateways()["gw-a"].latency.negative(), 1);
    let r = a.report(false);
    assert_eq!(r["gateways"]["gw-a"]["latency_ms"]["n"], 102);
}

#[test]
fn latency_quantiles_follow_the_distribution() {
    let mut l = Latency::default();
    for ms in 1..=1000 {
        l.record(f64::from(ms));
    }
    for (p, want) in [(0.5, 500.0), (0.99, 990.0), (0.01, 10.0)] {
        let got = l.quantile(p).expect("q");
        assert!((got - want).abs() <= want * 0.04, "p{p}: {got} vs {want}");
    }
    assert_eq!(Latency::default().quantile(0.5), None);
}

#[test]
fn after_freeze_only_holes_are_filled() {
    let mut a = audit();
    for seq in [1, 2, 4] {
        feed(&mut a, window("gw-a", seq));
    }
    a.freeze();
    assert!(a.has_gaps());
    assert_eq!(feed(&mut a, window("gw-a", 5)), Outcome::Ignored);
    assert_eq!(feed(&mut a, health("gw-a", 1, 0)), Outcome::Ignored);
    assert_eq!(feed(&mut a, window("gw-new", 1)), Outcome::Ignored);
    assert_eq!(feed(&mut a, window("gw-a", 3)), Outcome::Valid);
    assert!(!a.has_gaps());
    let g = &a.gateways()["gw-a"];
    assert_eq!((g.messages, g.ignored), (4, 2));
    assert!(!a.gateways().contains_key("gw-new"));
}

#[test]
fn a_shared_audit_leaves_gaps_to_the_merge() {
    let mut a = audit();
    for seq in [1, 3, 5] {
        feed(&mut a, window("gw-a", seq));
    }
    let r = a.report(true);
    assert_eq!(r["gateways"]["gw-a"]["gaps"], json!([]));
    assert_eq!(
        r["gateways"]["gw-a"]["seen"],
        json!([[1, 1], [3, 3], [5, 5]])
    );
    assert_eq!(r["shared"], true);
}

#[test]
fn topics_parse_by_kind() {
    assert_eq!(
        parse_topic(ROOT, "towerlink/v1/gw/data/d"),
        Ok(FeedTopic {
            gw: "gw",
            kind: Kind::Data,
            dev: Some("d")
        })
    );
    assert_eq!(
        parse_topic(ROOT, "towerlink/v1/gw/health"),
        Ok(FeedTopic {
            gw: "gw",
            kind: Kind::Health,
            dev: None
        })
    );
    assert!(parse_topic(ROOT, "towerlink/v1/gw/health/x").is_err());
    assert!(parse_topic(ROOT, "towerlink/v1/gw/data").is_err());
    assert_eq!(
        parse_topic(ROOT, "towerlink/v1/gw")
            .err()
            .and_then(|b| b.gw),
        Some("gw")
    );
    assert_eq!(
        parse_topic(ROOT, "towerlink/v10/gw/state")
            .err()
            .and_then(|b| b.gw),
        None
    );
}

#[test]
fn a_batch_is_audited_window_by_window() {
    let mut a = audit();
    assert_eq!(feed(&mut a, window("gw-b", 4)), Outcome::Valid);
    let items: Vec<Vec<u8>> = [5, 6].iter().map(|&s| window("gw-b", s).1).collect();
    let batch = crate::feed::batch::encode("gw-b", &items);
    let topic = format!("{ROOT}/gw-b/batch");
    assert_eq!(a.on_message(&topic, &batch, T + 250.0), Outcome::Valid);
    assert_eq!(feed(&mut a, window("gw-b", 7)), Outcome::Valid);
    let g = &a.gateways()["gw-b"];
    assert_eq!((g.messages, g.invalid, g.duplicates), (4, 0, 0));
    assert!(g.missing().gaps.is_empty(), "{:?}", g.missing());
    // The same batch again: its windows are duplicates.
    assert_eq!(a.on_message(&topic, &batch, T + 250.0), Outcome::Duplicate);
    assert_eq!(a.gateways()["gw-b"].duplicates, 2);
    // A batch that does not decode is one invalid message of its gateway.
    assert!(matches!(
        a.on_message(&topic, b"not zstd", T),
        Outcome::Invalid(_)
    ));
    assert_eq!(a.gateways()["gw-b"].invalid, 1);
}

#[test]
fn a_merged_window_accounts_for_the_seqs_it_lists() {
    let mut a = audit();
    let merged = |gw: &str, seqs: &[u64]| -> (String, Vec<u8>) {
        let (topic, body) = window(gw, seqs[0]);
        let mut v: Value = serde_json::from_slice(&body).expect("json");
        v["merged"] = json!(seqs.len());
        v["merged_seqs"] = json!(seqs);
        (topic, serde_json::to_vec(&v).expect("json"))
    };
    feed(&mut a, window("gw-a", 1));
    // Seqs 2, 4 and 6 of one device merged into one window (3 and 5: another topic's).
    assert_eq!(feed(&mut a, merged("gw-a", &[2, 4, 6])), Outcome::Valid);
    feed(&mut a, window("gw-a", 3));
    feed(&mut a, window("gw-a", 7));
    let g = &a.gateways()["gw-a"];
    assert_eq!(
        g.missing().gaps,
        vec![(5, 5)],
        "5 was neither sent nor merged"
    );
    assert_eq!(g.merged, 2);
    assert_eq!(a.report(false)["gateways"]["gw-a"]["merged"], json!(2));
    // A merged window that is not valid accounts for nothing.
    let mut b = audit();
    let (topic, body) = merged("gw-b", &[1, 3]);
    let mut v: Value = serde_json::from_slice(&body).expect("json");
    v["merged"] = json!(1);
    b.on_message(&topic, &serde_json::to_vec(&v).expect("json"), T);
    feed(&mut b, window("gw-b", 4));
    assert_eq!(b.gateways()["gw-b"].missing().gaps, vec![(2, 3)]);
}
