//! Event latency: from the pipeline's push of an alarm to its arrival at a subscriber of the
//! broker, through the real queue (its writer thread, `fsync = "100ms"`, the event synced at
//! once) and the real uplink (QoS 1), while telemetry flows at 1000 messages/s.
//!
//! Run: `cargo bench -p towerlink-agent --bench event_latency` (Mosquitto on 127.0.0.1:1883,
//! or set `TOWERLINK_BENCH_BROKER=host:port`; skipped when no broker answers). Prints p50,
//! p99 and the maximum, twice: with the store on the disk (the temporary directory) and on
//! tmpfs (`/dev/shm`, where `fdatasync` costs nothing: what remains is the agent's own path).
//! Exits non-zero when p99 >= 10 ms (issue 13) on tmpfs, or on the disk when the disk's own
//! `fdatasync` p99 (measured and printed) is below 5 ms (a slower disk cannot show the target:
//! the event is synced before it is sent); `TOWERLINK_BENCH_PRINT_ONLY=1` prints only.
//!
//! What it covers of "frame in -> broker": the push is what the pipeline does right after
//! decoding a frame (decoding and the rules take microseconds, `decode_window` bench); the
//! subscriber's receipt is one broker hop later than the broker's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use towerlink_agent::config::{BrokerAddress, MqttProtocol};
use towerlink_agent::feed::{self, EventState, Message, Renderer, Severity, Topics};
use towerlink_agent::queue::store::{FsyncPolicy, StoreOptions};
use towerlink_agent::queue::Queue;
use towerlink_agent::uplink::{Uplink, UplinkConfig, UplinkStats};

const EVENTS: usize = 1000;
const TARGET_P99: Duration = Duration::from_millis(10);

/// The disk's own `fdatasync` latency (p99) where the store lives: 300 small appends.
fn fdatasync_p99(dir: &std::path::Path) -> Option<Duration> {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("probe")).ok()?;
    let mut times = Vec::with_capacity(300);
    for _ in 0..300 {
        f.write_all(&[b'x'; 200]).ok()?;
        let t = Instant::now();
        f.sync_data().ok()?;
        times.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(3));
    }
    times.sort();
    Some(percentile(&times, 0.99))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Latencies: (push -> subscriber, push -> push returned (append + sync)).
async fn measure(
    broker: BrokerAddress,
    host: String,
    port: u16,
    store: &std::path::Path,
    run: &str,
) -> Option<(Vec<Duration>, Vec<Duration>)> {
    let dir = tempfile::tempdir_in(store).ok()?;
    let queue = Queue::open(StoreOptions {
        fsync: FsyncPolicy::Every(Duration::from_millis(100)),
        ..StoreOptions::new(dir.path())
    })
    .ok()?;
    let gw = format!("bench-lat-{}-{run}", std::process::id());
    let topics = Topics::new("towerlink/v1", &gw);
    let renderer = Renderer::new(&gw, topics.clone());

    // The subscriber: seq of every event received, with the time it arrived.
    let mut options = MqttOptions::new(format!("{gw}-sub"), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    let (sub, mut sub_loop) = AsyncClient::new(options, 100);
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel::<()>();
    let event_filter = format!("towerlink/v1/{gw}/event/#");
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    let seq = serde_json::from_slice::<serde_json::Value>(&p.payload)
                        .ok()
                        .and_then(|v| v["seq"].as_u64());
                    if let Some(seq) = seq {
                        let _ = arrived_tx.send((seq, at));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("subscriber: {e}");
                    return;
                }
            }
        }
    });
    sub.subscribe(event_filter, QoS::AtLeastOnce).await.ok()?;
    if tokio::time::timeout(Duration::from_secs(5), subscribed)
        .await
        .is_err()
    {
        eprintln!("no broker answered: event latency skipped");
        return None;
    }

    let stats = Arc::new(UplinkStats::default());
    let (commands, _commands_rx) = tokio::sync::mpsc::channel(8);
    let uplink = Uplink::start(
        UplinkConfig {
            gw: gw.clone(),
            topics,
            broker,
            keep_alive: Duration::from_secs(30),
            data_qos: QoS::AtLeastOnce,
            max_inflight: 100,
            health_interval: Duration::from_secs(3600),
            replay_rate: 500,
            replay_bytes_rate: 0,
            batch: None,
            heartbeat: towerlink_agent::service::Heartbeat::detached(),
            tls: None,
            credentials: None,
            protocol: MqttProtocol::V5,
            max_packet: 256 * 1024,
            attempted_file: None,
            birth: Default::default(),
        },
        queue.clone(),
        stats.clone(),
        commands,
        Box::new(Vec::new),
    )
    .ok()?;
    let up = Instant::now();
    while !stats.connected.load(std::sync::atomic::Ordering::Relaxed) {
        if up.elapsed() > Duration::from_secs(5) {
            eprintln!("the uplink did not connect: event latency skipped");
            uplink.stop().await;
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Telemetry at 1000/s meanwhile (ten devices' windows and lift statuses, compressed).
    let load_queue = queue.clone();
    let load_renderer = renderer.clone();
    let load = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0u64.. {
            tick.tick().await;
            let m = Message::Data {
                dev: format!("panel-n{}", i % 10),
                start: i as i64 * 10_000,
                end: i as i64 * 10_000 + 10_000,
                ch: BTreeMap::new(),
            };
            load_queue.push(load_renderer.render(&m)).await;
        }
    });

    let mut latencies = Vec::with_capacity(EVENTS);
    let mut pushes = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let m = Message::Event {
            dev: format!("lift-{}", i % 4),
            event: feed::Event::new(
                feed::now_millis(),
                "door_open_while_moving",
                Severity::Critical,
                EventState::Active,
            ),
        };
        let rendered = renderer.render(&m);
        let t0 = Instant::now();
        let Some(seq) = queue.push(rendered).await else {
            eprintln!("push refused");
            break;
        };
        pushes.push(t0.elapsed());
        let deadline = t0 + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, arrived.recv()).await {
                Ok(Some((s, at))) if s == seq => {
                    latencies.push(at - t0);
                    break;
                }
                Ok(Some(_)) => {}
                _ => {
                    eprintln!("event seq {seq} did not arrive within 5 s");
                    latencies.push(Duration::from_secs(5));
                    break;
                }
            }
        }
        // Alarms come one by one, not in a burst.
        tokio::time::sleep(Duration::from_millis(3 + (i % 5) as u64)).await;
    }
    load.abort();
    uplink.stop().await;
    Some((latencies, pushes))
}

fn main() {
    let spec = std::env::var("TOWERLINK_BENCH_BROKER").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let broker = match BrokerAddress::parse(&format!("mqtt://{spec}")) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bad TOWERLINK_BENCH_BROKER: {e}");
            std::process::exit(2);
        }
    };
    let (host, port) = match spec
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse().ok()?)))
    {
        Some(hp) => hp,
        None => {
            eprintln!("TOWERLINK_BENCH_BROKER must be host:port");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("no runtime: {e}");
            std::process::exit(2);
        }
    };
    let disk_dir = std::env::temp_dir();
    let mut runs = vec![("disk", disk_dir.clone())];
    // tmpfs: its fdatasync is free, so what remains is the agent's own path (queue writer,
    // uplink, client, broker): what the agent adds to the disk's sync.
    let shm = std::path::PathBuf::from("/dev/shm");
    if shm.is_dir() {
        runs.push(("tmpfs", shm));
    }
    let print_only = std::env::var("TOWERLINK_BENCH_PRINT_ONLY").is_ok_and(|v| v == "1");
    let mut failed = false;
    for (run, dir) in runs {
        let Some((mut latencies, mut pushes)) =
            runtime.block_on(measure(broker.clone(), host.to_owned(), port, &dir, run))
        else {
            println!("event latency ({run}): skipped (no broker)");
            return;
        };
        if latencies.is_empty() {
            println!("event latency ({run}): no samples");
            std::process::exit(1);
        }
        latencies.sort();
        let (p50, p99, max) = (
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1],
        );
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "event push -> subscriber, store on {run} ({}; fsync 100ms, event synced at once, 1000 telemetry/s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events)",
            dir.display(),
            ms(p50),
            ms(p99),
            ms(max),
            latencies.len()
        );
        pushes.sort();
        if !pushes.is_empty() {
            println!(
                "  of which the push (append + fdatasync on the writer): p50 {:.2} ms, p99 {:.2} ms",
                ms(percentile(&pushes, 0.50)),
                ms(percentile(&pushes, 0.99))
            );
        }
        let enforced = if run == "disk" {
            // A disk whose own fdatasync p99 is above half the target cannot show it.
            let disk = tempfile::tempdir_in(&dir)
                .ok()
                .and_then(|d| fdatasync_p99(d.path()));
            if let Some(d) = disk {
                println!("  the disk's own fdatasync here: p99 {:.2} ms", ms(d));
            }
            let fast = disk.is_some_and(|d| d < TARGET_P99 / 2);
            if !fast {
                println!("  (the disk cannot show the target here: not enforced on it)");
            }
            fast
        } else {
            true
        };
        if p99 >= TARGET_P99 {
            println!("MISSED ({run}): p99 >= {} ms", TARGET_P99.as_millis());
            failed |= enforced;
        }
    }
    if failed && !print_only {
        std::process::exit(1);
    }
}
