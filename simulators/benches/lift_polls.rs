//! Polls per second on one Modbus RTU bus, against the simulated lift controller on a
//! pseudo-terminal, at 9600 and 115200 baud, compared with the line-rate limit.
//!
//! The limit of one poll is the request (8 characters), the answer of the generic profile
//! (5 + 2 x 14 = 33 characters) and the 3.5-character silence after each (fixed 1.75 ms above
//! 19200 baud), with 10 bits per character at 8N1 (start, 8 data, stop).
//!
//! A pseudo-terminal has no baud rate: it moves bytes instantly. The simulator therefore
//! paces its answers at the configured baud (it answers when a real line would deliver the
//! answer's last byte), which is what makes this figure mean anything. The agent's bus
//! thread is used unchanged, with `poll = 0` (back to back).
//!
//! Run: `cargo bench -p towerlink-sim --bench lift_polls`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use towerlink_agent::config::Config;
use towerlink_agent::service::Heartbeat;
use towerlink_agent::sources::modbus_lift::{run_blocking, BusLift, BusStop, ModbusBusSource};
use towerlink_agent::sources::modbus_rtu::LineTiming;
use towerlink_agent::sources::SourceStats;
use towerlink_sim::lift::{BusOptions, LiftBus, LiftSpec};

const RUN: Duration = Duration::from_secs(4);
const WARM_UP: Duration = Duration::from_millis(500);

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    println!("lift_polls: one lift, generic profile (14 registers), 8N1, back-to-back polls");
    for baud in [9600u32, 115_200] {
        let mut options = BusOptions::new(1)?;
        options.baud = baud;
        let link = dir.path().join(format!("ttyRS485-{baud}"));
        let spec = LiftSpec {
            id: "lift-1".into(),
            unit: 1,
            bottom_floor: 0,
            top_floor: 10,
            rated_speed_mm_s: 1000,
            auto_calls: true,
        };
        let bus = LiftBus::spawn(&link, vec![spec], options)?;
        let text = format!(
            "[gateway]\nid = \"bench\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/tmp/unused\"\n[[lift]]\nid = \"lift-1\"\nport = \"{}\"\nbaud = {baud}\nunit = 1\ntop_floor = 10\nbottom_floor = 0\nrated_speed_mm_s = 1000\n",
            link.display()
        );
        let config = Config::parse(&text, "bench")?;
        let mut lift_config = config.lifts[0].clone();
        lift_config.poll = Duration::ZERO; // back to back (below what a config may say)
        let lift =
            BusLift::from_config(0, lift_config).ok_or_else(|| anyhow::anyhow!("no profile"))?;
        let stats = lift.stats.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
        let drain = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
        let stop = Arc::new(BusStop::new()?);
        let source = ModbusBusSource {
            port: link.clone(),
            lifts: vec![lift],
            events: tx,
            heartbeat: Heartbeat::detached(),
        };
        let thread_stop = stop.clone();
        let bus_thread = std::thread::spawn(move || run_blocking(source, &thread_stop));
        std::thread::sleep(WARM_UP);
        let (ok0, lost0) = (
            SourceStats::get(&stats.polls_ok),
            SourceStats::get(&stats.polls_lost),
        );
        let t0 = Instant::now();
        std::thread::sleep(RUN);
        let elapsed = t0.elapsed();
        let ok = SourceStats::get(&stats.polls_ok) - ok0;
        let failed = SourceStats::get(&stats.polls_lost) - lost0;
        stop.stop();
        let _ = bus_thread.join();
        let _ = drain.join();
        let timing = LineTiming::new(baud, false, 1);
        let limit = 1.0 / timing.poll_time(14).as_secs_f64();
        let rate = ok as f64 / elapsed.as_secs_f64();
        println!(
            "  {baud:>6} baud: {rate:7.1} polls/s  (line-rate limit {limit:6.1}/s: {:.1} ms per poll = 41 chars x {:.1} us + 2 x {:.2} ms)  {:.1} % of the limit, {failed} lost",
            timing.poll_time(14).as_secs_f64() * 1000.0,
            timing.char_time().as_secs_f64() * 1e6,
            timing.t3_5().as_secs_f64() * 1000.0,
            100.0 * rate / limit,
        );
        bus.stop();
    }
    Ok(())
}
