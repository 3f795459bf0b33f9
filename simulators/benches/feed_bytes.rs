//! What the feed of a nominal tower costs per day, per topic class, payload and on the wire.
//!
//! The nominal tower of issue 18: 40 panels (strain 50 Hz, tilt X/Y 10 Hz, temperature 1 Hz
//! by deadband; 10 s windows), 8 lifts in normal service (the simulator's lift model with
//! automatic calls, polled every 250 ms), health every 60 s. Everything runs in-process in
//! simulated time: the simulator's panel and lift physics feed the agent's real pipeline,
//! its real [`Renderer`] makes the payloads and its real [`HealthReporter`] the health
//! reports (over counters advanced as the sources would advance them).
//!
//! The wire model, per message:
//! - MQTT 5 PUBLISH: fixed header (1 byte + remaining-length varint), topic (2 + its length),
//!   packet id (2, QoS 1), property length (1, no properties), payload;
//! - PUBACK for QoS 1: 4 bytes (MQTT 5 success without properties);
//! - PINGREQ + PINGRESP (2 bytes each) every keep-alive (30 s; an upper bound: a busy session
//!   needs fewer);
//! - TLS 1.3: each MQTT packet its own record, 5-byte header + 16-byte tag + 1 content-type
//!   byte (22 bytes per packet). TCP/IP headers are not counted.
//!
//! Options: `json` is today's feed (a status at every change of floor, door, direction or
//! mode; a full health report every minute); each further option is named in the table.
//!
//! Run: `cargo bench -p towerlink-sim --bench feed_bytes` (`FEED_BYTES_HOURS`, default 1:
//! hours simulated, scaled to a day).
//! Target (issue 18): the compact path >= 10x fewer bytes per day on the wire than `json`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use towerlink_agent::config::Config;
use towerlink_agent::feed::{batch, Message, MessageClass, Renderer, Topics};
use towerlink_agent::health::{HealthDiff, HealthReporter, SourceEntry};
use towerlink_agent::pipeline::{Pipeline, PipelineStats};
use towerlink_agent::queue::store::StoreOptions;
use towerlink_agent::queue::Queue;
use towerlink_agent::sources::{DeviceKey, SourceEvent, SourceStats};
use towerlink_agent::uplink::UplinkStats;
use towerlink_firmware::protocol::{ChannelInfo, Quantity};
use towerlink_sim::lift::{LiftModel, LiftSpec};
use towerlink_sim_chips::Scenario;

#[path = "common/cpu.rs"]
mod cpu;
use cpu::thread_cpu;

const GW: &str = "sh-ja-0001";
const ROOT: &str = "towerlink/v1";
const PANELS: u32 = 40;
const LIFTS: u8 = 8;
const POLL_MS: u64 = 250;
const HEALTH_S: u64 = 60;
const KEEP_ALIVE_S: u64 = 30;
/// Start of the run, Unix ms (2026-11-28T00:00:00Z).
const T0_MS: i64 = 1_795_824_000_000;
const DAY_S: f64 = 86_400.0;

const CHANNELS: [(u8, Quantity, u64); 4] = [
    (0, Quantity::Strain, 50),
    (1, Quantity::TiltX, 10),
    (2, Quantity::TiltY, 10),
    (3, Quantity::Temperature, 1),
];

/// The topic classes of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Data,
    Lift,
    Event,
    Health,
    State,
    KeepAlive,
}

impl Class {
    const ALL: [Class; 6] = [
        Class::Data,
        Class::Lift,
        Class::Event,
        Class::Health,
        Class::State,
        Class::KeepAlive,
    ];
    fn name(self) -> &'static str {
        match self {
            Class::Data => "data (panels)",
            Class::Lift => "lift status",
            Class::Event => "events",
            Class::Health => "health",
            Class::State => "state",
            Class::KeepAlive => "keep-alive",
        }
    }
}

/// Bytes of one MQTT 5 PUBLISH (and its PUBACK) as TLS records.
fn wire(topic: usize, payload: usize, qos1: bool) -> u64 {
    const TLS: u64 = 5 + 16 + 1;
    let rem = 2 + topic + if qos1 { 2 } else { 0 } + 1 + payload;
    let varint = match rem {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    let publish = (1 + varint + rem) as u64 + TLS;
    let puback = if qos1 { 4 + TLS } else { 0 };
    publish + puback
}

/// Bytes of the keep-alive exchange per day.
fn keep_alive_per_day() -> u64 {
    let per = 2 * (2 + 22);
    (DAY_S as u64 / KEEP_ALIVE_S) * per
}

/// Totals of one class: messages, payload bytes, wire bytes (over the simulated span).
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    messages: u64,
    payload: u64,
    wire: u64,
}

impl Tally {
    fn add(&mut self, topic: usize, payload: usize, qos1: bool) {
        self.messages += 1;
        self.payload += payload as u64;
        self.wire += wire(topic, payload, qos1);
    }
}

/// One option's figures, scaled to a day.
struct Figures {
    name: String,
    classes: BTreeMap<Class, Tally>,
}

impl Figures {
    fn total_wire(&self) -> u64 {
        self.classes.values().map(|t| t.wire).sum()
    }
    fn total_payload(&self) -> u64 {
        self.classes.values().map(|t| t.payload).sum()
    }
}

/// What the simulated span produced.
struct Run {
    /// Every queued message with its simulated time.
    messages: Vec<(i64, Message)>,
    /// The full health report at each interval.
    health: Vec<serde_json::Value>,
}

fn config(lift_extra: &str) -> Config {
    let mut text = format!(
        "[gateway]\nid = \"{GW}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/tmp/towerlink-feed-bytes\"\n"
    );
    for p in 0..PANELS {
        text.push_str(&format!(
            "[[node]]\nid = \"panel-n{p:02}\"\nport = \"/dev/ttyPANEL{p}\"\nnode_id = {}\nwindow = \"10s\"\n[node.channels.tilt_x]\nalarm = {{ minor = 0.2, major = 0.5, critical = 0.8, hysteresis = 0.02, for = \"2s\" }}\n",
            p + 1
        ));
    }
    for l in 0..LIFTS {
        text.push_str(&format!(
            "[[lift]]\nid = \"lift-{}\"\nport = \"/dev/ttyRS485-0\"\nunit = {}\nprofile = \"generic\"\ntop_floor = 32\nbottom_floor = -2\nrated_speed_mm_s = 1750\n{lift_extra}\n",
            l + 1,
            l + 1
        ));
    }
    match Config::parse(&text, "feed_bytes") {
        Ok(c) => c,
        Err(e) => panic!("feed_bytes config: {e}"),
    }
}

fn scenario() -> Scenario {
    let mut text = String::from("seed = 20261128\nstart_hour = 0.0\n");
    for p in 0..PANELS {
        text.push_str(&format!(
            "[[panels]]\nname = \"panel-n{p:02}\"\nnode = {}\n",
            p + 1
        ));
    }
    match Scenario::from_toml_str(&text) {
        Ok(s) => s,
        Err(e) => panic!("feed_bytes scenario: {e}"),
    }
}

/// Simulates `seconds` of the tower through a fresh pipeline.
fn simulate(config: &Config, seconds: u64) -> Run {
    let scenario = scenario();
    let models: Vec<_> = scenario
        .panels
        .iter()
        .map(|p| match scenario.panel_model(p) {
            Ok(m) => m,
            Err(e) => panic!("panel model: {e}"),
        })
        .collect();
    let mut lifts: Vec<LiftModel> = (0..LIFTS)
        .map(|l| {
            LiftModel::new(
                LiftSpec {
                    id: format!("lift-{}", l + 1),
                    unit: l + 1,
                    bottom_floor: -2,
                    top_floor: 32,
                    rated_speed_mm_s: 1750,
                    auto_calls: true,
                },
                20261128 + u64::from(l),
            )
        })
        .collect();
    let pstats = Arc::new(PipelineStats::default());
    let mut pipeline = Pipeline::new(
        config.devices(),
        config.health.node_silent_after,
        T0_MS,
        pstats.clone(),
    );
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let queue = match Queue::open(StoreOptions::new(dir.path())) {
        Ok(q) => q,
        Err(e) => panic!("queue: {e}"),
    };
    let renderer = Renderer::new(GW, Topics::new(ROOT, GW));
    let sources: Vec<SourceEntry> = (0..PANELS)
        .map(|p| SourceEntry {
            dev: format!("panel-n{p:02}"),
            kind: "serial_node",
            port: format!("/dev/serial/by-id/usb-FTDI_FT232R_A5{p:04}-if00-port0"),
            stats: SourceStats::new(),
        })
        .chain((0..LIFTS).map(|l| SourceEntry {
            dev: format!("lift-{}", l + 1),
            kind: "modbus_lift",
            port: format!("/dev/ttyRS485-{}", l / 4),
            stats: SourceStats::new(),
        }))
        .collect();
    let uplink = Arc::new(UplinkStats::default());
    let reporter = HealthReporter::new(
        GW,
        config.health.node_silent_after.as_millis() as u64,
        queue.clone(),
        uplink.clone(),
        pstats,
        sources.clone(),
    )
    .with_replay_rate(500);
    for s in &sources {
        s.stats.link_up.store(true, Ordering::Relaxed);
        s.stats.opens.store(1, Ordering::Relaxed);
    }

    let mut out = Vec::new();
    let mut run = Run {
        messages: Vec::new(),
        health: Vec::new(),
    };
    for p in 0..PANELS as usize {
        pipeline.handle(
            SourceEvent::Hello {
                dev: DeviceKey::Node(p),
                fw: (1, 0, 0),
                channels: CHANNELS
                    .iter()
                    .map(|&(id, quantity, rate_hz)| ChannelInfo {
                        id,
                        quantity,
                        rate_hz: rate_hz as u16,
                    })
                    .collect(),
            },
            T0_MS,
            &mut out,
        );
    }
    let mut seq = 0u64;
    let mut take = |out: &mut Vec<Message>, now: i64, run: &mut Run| {
        for m in out.drain(..) {
            seq += 1;
            let r = renderer.render(&m);
            let _ = queue.push_blocking(r);
            if seq % 2 == 0 {
                // The broker acknowledges as the uplink would (the queue stays shallow).
                queue.ack(seq - 1);
                queue.ack(seq);
                uplink.published.fetch_add(2, Ordering::Relaxed);
            }
            run.messages.push((now, m));
        }
    };
    for s in 0..seconds {
        let sec_ms = T0_MS + (s * 1000) as i64;
        // Each panel sends one batch per channel per second.
        for (p, model) in models.iter().enumerate() {
            for &(channel, _, rate_hz) in &CHANNELS {
                let period_us = 1_000_000 / rate_hz;
                let values: Vec<f32> = (0..rate_hz)
                    .map(|i| {
                        let st = model.sample(s * 1_000_000 + i * period_us);
                        match channel {
                            0 => st.strain_ue,
                            1 => st.tilt_x_deg,
                            2 => st.tilt_y_deg,
                            _ => st.temperature_c,
                        }
                    })
                    .collect();
                pipeline.handle(
                    SourceEvent::Alive {
                        dev: DeviceKey::Node(p),
                        ts: sec_ms,
                    },
                    sec_ms,
                    &mut out,
                );
                pipeline.handle(
                    SourceEvent::Samples {
                        dev: DeviceKey::Node(p),
                        channel,
                        t0: sec_ms as f64,
                        period_ms: period_us as f64 / 1000.0,
                        values,
                    },
                    sec_ms,
                    &mut out,
                );
            }
            let st = &sources[p].stats;
            st.frames_ok.fetch_add(4, Ordering::Relaxed);
            st.bytes.fetch_add(4 * 12 + 4 * 71, Ordering::Relaxed);
            st.last_frame_ms.store(
                towerlink_agent::feed::now_millis() as u64,
                Ordering::Relaxed,
            );
        }
        for tick in 0..(1000 / POLL_MS) {
            let t_ms = s * 1000 + tick * POLL_MS;
            let now = T0_MS + t_ms as i64;
            for (l, lift) in lifts.iter_mut().enumerate() {
                lift.advance_to(t_ms);
                pipeline.handle(
                    SourceEvent::LiftReading {
                        lift: l,
                        ts: now,
                        reading: lift.reading(),
                    },
                    now,
                    &mut out,
                );
                let st = &sources[PANELS as usize + l].stats;
                st.polls_ok.fetch_add(1, Ordering::Relaxed);
                st.frames_ok.fetch_add(1, Ordering::Relaxed);
                st.bytes.fetch_add(5 + 2 * 20, Ordering::Relaxed);
                st.max_poll_gap_ms
                    .fetch_max(POLL_MS + (t_ms * 7 + l as u64 * 13) % 40, Ordering::Relaxed);
                st.last_frame_ms.store(
                    towerlink_agent::feed::now_millis() as u64,
                    Ordering::Relaxed,
                );
            }
            take(&mut out, now, &mut run);
        }
        pipeline.tick(sec_ms + 999, &mut out);
        take(&mut out, sec_ms + 999, &mut run);
        if (s + 1) % HEALTH_S == 0 {
            run.health.push(reporter.report());
        }
    }
    run
}

/// One publish per queued message; health full every interval, or by difference with a full
/// report every `health_full` (the agent's [`HealthDiff`]).
fn per_message(name: &str, run: &Run, scale: f64, health_full: Option<Duration>) -> Figures {
    let topics = Topics::new(ROOT, GW);
    let renderer = Renderer::new(GW, topics.clone());
    let mut classes: BTreeMap<Class, Tally> = BTreeMap::new();
    for (i, (_, m)) in run.messages.iter().enumerate() {
        let r = renderer.render(m);
        let payload = r.payload(i as u64 + 1).len();
        let class = match m {
            Message::Data { .. } => Class::Data,
            Message::LiftStatus { .. } => Class::Lift,
            _ => Class::Event,
        };
        debug_assert!(class != Class::Event || m.class() == MessageClass::Event);
        classes
            .entry(class)
            .or_default()
            .add(r.topic.len(), payload, true);
    }
    let mut diff = health_full.map(HealthDiff::new);
    for (i, h) in run.health.iter().enumerate() {
        let now_ms = (i as u64 + 1) * HEALTH_S * 1000;
        let sent = match diff.as_mut() {
            Some(d) => d.next(h.clone(), now_ms),
            None => h.clone(),
        };
        classes.entry(Class::Health).or_default().add(
            topics.health().len(),
            sent.to_string().len(),
            false,
        );
    }
    scaled(name, classes, scale)
}

/// How a batch is compressed.
#[derive(Debug, Clone, Copy)]
enum Codec {
    /// The agent's [`batch::encode`] (zstd at [`batch::LEVEL`]).
    Agent,
    /// zstd at another level.
    Zstd(i32),
    /// LZ4 block (size prepended), the same JSON.
    Lz4,
    /// The same batch as CBOR (each item's JSON as a CBOR map; floats in their shortest
    /// exact form), then zstd at this level.
    CborZstd(i32),
}

/// The batch as CBOR: `{"v":1,"gw":…,"batch":[…]}` with every item a CBOR map.
fn batch_cbor(pending: &[Vec<u8>]) -> Vec<u8> {
    let items: Vec<serde_json::Value> = pending
        .iter()
        .filter_map(|p| serde_json::from_slice(p).ok())
        .collect();
    let batch = serde_json::json!({"v": 1, "gw": GW, "batch": items});
    let mut out = Vec::new();
    // Writing to a Vec fails only on allocation.
    let _ = ciborium::into_writer(&batch, &mut out);
    out
}

/// `FEED_BYTES_DUMP=<dir>`: each batch as the agent makes it (`batch-NNNN.json`) and as CBOR
/// (`batch-NNNN.cbor`) written there, the input of the `batch_codecs` bench (which also runs
/// cross-built under qemu-aarch64: what the codecs cost on an ARM gateway).
fn dump(codec: Codec, input: &[u8]) {
    use std::sync::atomic::AtomicU32;
    static JSON: AtomicU32 = AtomicU32::new(0);
    static CBOR: AtomicU32 = AtomicU32::new(0);
    let Some(dir) = std::env::var_os("FEED_BYTES_DUMP") else {
        return;
    };
    let (counter, ext) = match codec {
        Codec::Agent => (&JSON, "json"),
        Codec::CborZstd(19) => (&CBOR, "cbor"),
        _ => return,
    };
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let path = std::path::Path::new(&dir).join(format!("batch-{n:04}.{ext}"));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)) {
        eprintln!("feed_bytes: cannot write {}: {e}", path.display());
    }
}

/// Telemetry (windows, lift status) in one publish per `batch_s` on `batch`, compressed by
/// `codec`; events one by one; health by difference. Also the CPU time compression took.
fn batched(name: &str, run: &Run, scale: f64, batch_s: i64, codec: Codec) -> (Figures, f64, u64) {
    let topics = Topics::new(ROOT, GW);
    let renderer = Renderer::new(GW, topics.clone());
    let mut base = per_message(name, run, scale, Some(Duration::from_secs(3600)));
    let mut classes: BTreeMap<Class, Tally> = BTreeMap::new();
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut lift_share = (0u64, 0u64); // bytes of lift status and of windows in the JSON
    let mut cpu = 0.0f64;
    let mut json_bytes = 0u64;
    let mut flush = |pending: &mut Vec<Vec<u8>>,
                     classes: &mut BTreeMap<Class, Tally>,
                     share: &mut (u64, u64)| {
        if pending.is_empty() {
            return;
        }
        // Only the compression is timed (a CBOR batch's encoding is not: the agent would
        // render CBOR instead of JSON).
        let input = match codec {
            Codec::CborZstd(_) => batch_cbor(pending),
            _ => batch::batch_json(GW, pending),
        };
        let t = thread_cpu();
        let payload = match codec {
            Codec::Agent => batch::compress(&input),
            Codec::Zstd(level) | Codec::CborZstd(level) => {
                zstd::bulk::compress(&input, level).unwrap_or_default()
            }
            Codec::Lz4 => lz4_flex::compress_prepend_size(&input),
        };
        cpu += (thread_cpu() - t).as_secs_f64();
        json_bytes += input.len() as u64;
        dump(codec, &input);
        // Split the batch's cost between the classes by their share of its JSON.
        let total = (share.0 + share.1).max(1) as f64;
        let lift = share.0 as f64 / total;
        let wire = wire(topics.batch().len(), payload.len(), true) as f64;
        for (class, part) in [(Class::Lift, lift), (Class::Data, 1.0 - lift)] {
            let t = classes.entry(class).or_default();
            t.messages += 1;
            t.payload += (payload.len() as f64 * part) as u64;
            t.wire += (wire * part) as u64;
        }
        pending.clear();
        *share = (0, 0);
    };
    let mut window_end = run.messages.first().map(|(t, _)| *t).unwrap_or(T0_MS) + batch_s * 1000;
    for (i, (t, m)) in run.messages.iter().enumerate() {
        if *t >= window_end {
            flush(&mut pending, &mut classes, &mut lift_share);
            window_end = *t + batch_s * 1000;
        }
        let r = renderer.render(m);
        let payload = r.payload(i as u64 + 1);
        match m {
            Message::Data { .. } => {
                lift_share.1 += payload.len() as u64;
                pending.push(payload);
            }
            Message::LiftStatus { .. } => {
                lift_share.0 += payload.len() as u64;
                pending.push(payload);
            }
            _ => classes
                .entry(Class::Event)
                .or_default()
                .add(r.topic.len(), payload.len(), true),
        }
    }
    flush(&mut pending, &mut classes, &mut lift_share);
    let classes: BTreeMap<Class, Tally> = classes
        .into_iter()
        .map(|(c, t)| {
            (
                c,
                Tally {
                    messages: (t.messages as f64 * scale) as u64,
                    payload: (t.payload as f64 * scale) as u64,
                    wire: (t.wire as f64 * scale) as u64,
                },
            )
        })
        .collect();
    for class in [Class::Data, Class::Lift, Class::Event] {
        base.classes
            .insert(class, classes.get(&class).copied().unwrap_or_default());
    }
    (base, cpu, json_bytes)
}

/// Scales the simulated span's tallies to a day and adds what is per day, not per message.
fn scaled(name: &str, classes: BTreeMap<Class, Tally>, scale: f64) -> Figures {
    let topics = Topics::new(ROOT, GW);
    let mut classes: BTreeMap<Class, Tally> = classes
        .into_iter()
        .map(|(c, t)| {
            (
                c,
                Tally {
                    messages: (t.messages as f64 * scale) as u64,
                    payload: (t.payload as f64 * scale) as u64,
                    wire: (t.wire as f64 * scale) as u64,
                },
            )
        })
        .collect();
    // One birth per day (one connect), retained, QoS 1.
    let birth = towerlink_agent::feed::state_payload(
        GW,
        true,
        Some((T0_MS, &towerlink_agent::feed::BirthInfo::default())),
    );
    classes
        .entry(Class::State)
        .or_default()
        .add(topics.state().len(), birth.len(), true);
    classes.insert(
        Class::KeepAlive,
        Tally {
            messages: (DAY_S as u64 / KEEP_ALIVE_S) * 2,
            payload: 0,
            wire: keep_alive_per_day(),
        },
    );
    Figures {
        name: name.to_owned(),
        classes,
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1e6)
}

fn print(all: &[Figures]) {
    println!();
    println!("| topic class | option | messages/day | payload MB/day | wire MB/day |");
    println!("|---|---|---:|---:|---:|");
    for class in Class::ALL {
        for f in all {
            let t = f.classes.get(&class).copied().unwrap_or_default();
            println!(
                "| {} | {} | {} | {} | {} |",
                class.name(),
                f.name,
                t.messages,
                mb(t.payload),
                mb(t.wire)
            );
        }
    }
    let base = all.first().map(Figures::total_wire).unwrap_or(1);
    for f in all {
        println!(
            "| **total** | {} | {} | {} | {} ({:.1}x fewer) |",
            f.name,
            f.classes.values().map(|t| t.messages).sum::<u64>(),
            mb(f.total_payload()),
            mb(f.total_wire()),
            base as f64 / f.total_wire().max(1) as f64
        );
    }
    println!();
}

fn main() -> ExitCode {
    let hours: f64 = std::env::var("FEED_BYTES_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .filter(|h: &f64| *h > 0.0)
        .unwrap_or(1.0);
    let seconds = (hours * 3600.0) as u64;
    let scale = DAY_S / seconds as f64;
    let t = Instant::now();
    let floor = simulate(&config("status = \"floor\""), seconds);
    let trip = simulate(&config("status = \"trip\""), seconds);
    println!(
        "feed_bytes: {PANELS} panels, {LIFTS} lifts, {hours} h simulated twice (status by floor, by trip) in {:.1} s ({} / {} queued messages, {} health reports), scaled x{scale:.0} to a day",
        t.elapsed().as_secs_f64(),
        floor.messages.len(),
        trip.messages.len(),
        floor.health.len()
    );
    let hour = Some(Duration::from_secs(3600));
    let figures = vec![
        per_message("json", &floor, scale, None),
        per_message("json, lifts by trip", &trip, scale, None),
        per_message("json, lifts by trip, health delta", &trip, scale, hour),
    ];
    let mut figures = figures;
    let mut target = 0.0;
    for (name, codec) in [
        ("batch 60s, zstd (agent's level)", Codec::Agent),
        ("batch 60s, zstd 1", Codec::Zstd(1)),
        ("batch 60s, zstd 3", Codec::Zstd(3)),
        ("batch 60s, zstd 9", Codec::Zstd(9)),
        ("batch 60s, zstd 12", Codec::Zstd(12)),
        ("batch 60s, zstd 15", Codec::Zstd(15)),
        ("batch 60s, zstd 19", Codec::Zstd(19)),
        ("batch 60s, lz4", Codec::Lz4),
        ("batch 60s, CBOR + zstd 3", Codec::CborZstd(3)),
        ("batch 60s, CBOR + zstd 19", Codec::CborZstd(19)),
    ] {
        // FEED_BYTES_ONLY=<part of a name>: only those batched options (e.g. one codec under
        // callgrind); the agent's level always runs (the target).
        if let Ok(only) = std::env::var("FEED_BYTES_ONLY") {
            if !name.contains(only.as_str()) && !matches!(codec, Codec::Agent) {
                continue;
            }
        }
        let (f, cpu, json) = batched(name, &trip, scale, 60, codec);
        let wire = f.total_wire();
        println!(
            "feed_bytes: {name}: compressing took {:.1} ms of CPU for {:.1} MB of batch JSON ({:.0} MB/s on this core, {} build; the day: {:.2} CPU s, {} wire MB)",
            cpu * 1e3,
            json as f64 / 1e6,
            json as f64 / 1e6 / cpu.max(1e-9),
            if cfg!(debug_assertions) { "debug" } else { "release" },
            cpu * scale,
            mb(wire)
        );
        if matches!(codec, Codec::Agent) {
            target = figures[0].total_wire() as f64 / f.total_wire().max(1) as f64;
        }
        figures.push(f);
    }
    print(&figures);
    // Deterministic: the same seeds give the same bytes.
    if target >= 10.0 {
        println!("feed_bytes: target (compact path >= 10x fewer wire bytes/day than json): met, {target:.1}x");
        ExitCode::SUCCESS
    } else {
        eprintln!("feed_bytes: target NOT met: the compact path is {target:.1}x < 10x fewer wire bytes/day than json");
        ExitCode::FAILURE
    }
}
