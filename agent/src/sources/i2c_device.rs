//! Sensors on the gateway's own I2C bus (`[[i2c]]`): the firmware's NAU7802 and ADXL355
//! drivers, run by the agent itself, feeding the same pipeline as serial nodes.
//!
//! Linux I2C is blocking, so each device runs on its own thread (never on the async
//! runtime): it initialises its chip with the same driver code a node runs, samples at the
//! configured rate, batches values like a node does (32 values or half a second), and hands
//! them to the pipeline as [`SourceEvent`]s stamped with wall-clock time. A chip that fails is
//! reported with Fault events and retried with back-off; the agent keeps running.
//!
//! `bus = "sim"` runs the register-level simulated chips of `towerlink-sim-chips` instead of a
//! `/dev/i2c-*` device; it exists only in builds with the `sim` feature.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
use tokio::sync::mpsc;
use towerlink_firmware::drivers::{adxl355, nau7802};
use towerlink_firmware::protocol::{ChannelInfo, FaultCode, Quantity};

use super::{DeviceKey, SourceEvent, SourceStats};
use crate::backoff::Backoff;
use crate::feed::now_millis;
use crate::service::Heartbeat;
use crate::shutdown::Shutdown;

pub use super::config::{Calibration, Chip, I2cConfig};

impl<C: Clone> I2cConfig<C> {
    /// The channels this device delivers.
    pub fn channel_infos(&self) -> Vec<ChannelInfo> {
        let rate_hz = self.rate_hz;
        match self.chip {
            Chip::Nau7802 => vec![ChannelInfo {
                id: 0,
                quantity: Quantity::Strain,
                rate_hz,
            }],
            Chip::Adxl355 => vec![
                ChannelInfo {
                    id: 1,
                    quantity: Quantity::TiltX,
                    rate_hz,
                },
                ChannelInfo {
                    id: 2,
                    quantity: Quantity::TiltY,
                    rate_hz,
                },
                ChannelInfo {
                    id: 3,
                    quantity: Quantity::Temperature,
                    rate_hz,
                },
            ],
        }
    }
}

/// Everything one device's thread needs.
pub struct I2cSource {
    /// Device index in the pipeline.
    pub dev: DeviceKey,
    /// Its configuration.
    pub config: I2cConfig,
    /// Where events go.
    pub events: mpsc::Sender<SourceEvent>,
    /// Its counters.
    pub stats: Arc<SourceStats>,
    /// Proof of life for the service watchdog.
    pub heartbeat: Heartbeat,
}

/// Why an I2C device stopped sampling (it is retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum I2cDeviceError {
    /// The bus device did not open.
    #[error("cannot open {bus}: {error}")]
    Open {
        /// The bus (`/dev/i2c-N`).
        bus: String,
        /// The kernel's error.
        error: linux_embedded_hal::i2cdev::linux::LinuxI2CError,
    },
    /// `bus = "sim"` in a build without the simulated bus.
    #[error("bus = \"sim\" needs an agent built with the `sim` feature")]
    NoSimBus,
    /// The chip did not take its configuration.
    #[error("{chip} init: {detail}")]
    Init {
        /// `NAU7802` or `ADXL355`.
        chip: &'static str,
        /// The driver's error.
        detail: String,
    },
    /// A reading failed.
    #[error("{chip} read: {detail}")]
    Read {
        /// `NAU7802` or `ADXL355`.
        chip: &'static str,
        /// The driver's error.
        detail: String,
    },
}

fn init_error<E: std::fmt::Debug>(chip: &'static str) -> impl FnOnce(E) -> I2cDeviceError {
    move |e| I2cDeviceError::Init {
        chip,
        detail: format!("{e:?}"),
    }
}

fn read_error<E: std::fmt::Debug>(chip: &'static str) -> impl FnOnce(E) -> I2cDeviceError {
    move |e| I2cDeviceError::Read {
        chip,
        detail: format!("{e:?}"),
    }
}

/// The most values in one batch, and the longest a batch waits.
const BATCH_MAX: usize = 32;
const BATCH_AGE: Duration = Duration::from_millis(500);

/// Starts the device's thread; it ends at shutdown.
pub fn spawn(
    source: I2cSource,
    shutdown: Shutdown,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("i2c-{}", source.config.id))
        .spawn(move || run(source, shutdown))
}

fn run(source: I2cSource, shutdown: Shutdown) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    while !shutdown.is_shutdown() {
        let outcome = if source.config.bus == "sim" {
            run_sim(&source, &shutdown)
        } else {
            match linux_embedded_hal::I2cdev::new(&source.config.bus) {
                Ok(bus) => sample(&source, bus, linux_embedded_hal::Delay, &shutdown, || {}),
                Err(error) => Err(I2cDeviceError::Open {
                    bus: source.config.bus.clone(),
                    error,
                }),
            }
        };
        if shutdown.is_shutdown() {
            // A clean stop leaves the link as it was: the last health says the chip was live.
            break;
        }
        source.stats.link_up.store(false, Ordering::Relaxed);
        if let Err(why) = outcome {
            SourceStats::add(&source.stats.io_errors, 1);
            tracing::warn!(dev = %source.config.id, bus = %source.config.bus, error = %why, "I2C device failed; retrying with back-off");
            emit_faults(&source, FaultCode::NotResponding);
            let until = Instant::now() + backoff.next_delay();
            while Instant::now() < until && !shutdown.is_shutdown() {
                source.heartbeat.beat();
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(feature = "sim")]
fn run_sim(source: &I2cSource, shutdown: &Shutdown) -> Result<(), I2cDeviceError> {
    use towerlink_sim_chips::{PanelModel, PanelParams, SimBus, SimClock, SimDelay};
    let clock = SimClock::new();
    let seed = source
        .config
        .id
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let model = Arc::new(PanelModel::new(seed, PanelParams::default(), Vec::new()));
    let bus = SimBus::panel_node(model, clock.clone());
    let start = Instant::now();
    let tick_clock = clock.clone();
    sample(source, bus, SimDelay::new(clock), shutdown, move || {
        // The simulated chips live in simulated time; keep it on the wall clock.
        tick_clock.advance_to_us(start.elapsed().as_micros() as u64);
    })
}

#[cfg(not(feature = "sim"))]
fn run_sim(_source: &I2cSource, _shutdown: &Shutdown) -> Result<(), I2cDeviceError> {
    Err(I2cDeviceError::NoSimBus)
}

fn emit_faults(source: &I2cSource, code: FaultCode) {
    for ch in source.config.channel_infos() {
        let _ = source.events.try_send(SourceEvent::Fault {
            dev: source.dev,
            channel: ch.id,
            code,
            ts: now_millis(),
        });
    }
}

/// Initialises the chip and samples until shutdown or a bus failure.
fn sample<I: I2c, D: DelayNs>(
    source: &I2cSource,
    bus: I,
    mut delay: D,
    shutdown: &Shutdown,
    mut before_read: impl FnMut(),
) -> Result<(), I2cDeviceError> {
    let cfg = &source.config;
    let channels = cfg.channel_infos();
    enum Driver<I: I2c> {
        Adc(nau7802::Nau7802<I>),
        Accel(adxl355::Adxl355<I>),
    }
    before_read();
    let mut driver = match cfg.chip {
        Chip::Nau7802 => {
            let mut d = nau7802::Nau7802::new(bus);
            d.init(&mut delay, nau7802::Config::default())
                .map_err(init_error("NAU7802"))?;
            Driver::Adc(d)
        }
        Chip::Adxl355 => {
            let address = match cfg.address {
                Some(0x53) => adxl355::Address::AselHigh,
                _ => adxl355::Address::AselLow,
            };
            let mut d = adxl355::Adxl355::new(bus, address);
            d.init(&mut delay, adxl355::Config::default())
                .map_err(init_error("ADXL355"))?;
            Driver::Accel(d)
        }
    };
    source.stats.link_up.store(true, Ordering::Relaxed);
    SourceStats::add(&source.stats.opens, 1);
    tracing::info!(dev = %cfg.id, bus = %cfg.bus, chip = ?cfg.chip, "I2C device ready");
    let _ = source.events.try_send(SourceEvent::Hello {
        dev: source.dev,
        fw: (0, 0, 0),
        channels: channels.clone(),
    });

    let period = Duration::from_secs_f64(1.0 / f64::from(cfg.rate_hz.max(1)));
    let cal = cfg.calibration;
    let apply = |v: f32| (cal.gain * f64::from(v) + cal.offset) as f32;
    let mut batches: Vec<(f64, Vec<f32>)> = channels.iter().map(|_| (0.0, Vec::new())).collect();
    let mut batch_started = Instant::now();
    let mut next = Instant::now();
    while !shutdown.is_shutdown() {
        source.heartbeat.beat();
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += period;
        before_read();
        let t = now_millis() as f64;
        let values: Vec<f32> = match &mut driver {
            Driver::Adc(d) => vec![d.read_microstrain().map_err(read_error("NAU7802"))?],
            Driver::Accel(d) => {
                let (x, y) = d.read_tilt_deg().map_err(read_error("ADXL355"))?;
                let temp = d.read_temperature_c().map_err(read_error("ADXL355"))?;
                vec![x, y, temp]
            }
        };
        SourceStats::add(&source.stats.frames_ok, 1);
        source
            .stats
            .last_frame_ms
            .store(t as u64, Ordering::Relaxed);
        for ((t0, batch), v) in batches.iter_mut().zip(values) {
            if batch.is_empty() {
                *t0 = t;
            }
            batch.push(apply(v));
        }
        if batches.iter().any(|(_, b)| b.len() >= BATCH_MAX) || batch_started.elapsed() >= BATCH_AGE
        {
            let _ = source.events.try_send(SourceEvent::Alive {
                dev: source.dev,
                ts: t as i64,
            });
            for ((t0, batch), ch) in batches.iter_mut().zip(&channels) {
                if batch.is_empty() {
                    continue;
                }
                let ev = SourceEvent::Samples {
                    dev: source.dev,
                    channel: ch.id,
                    t0: *t0,
                    period_ms: period.as_secs_f64() * 1000.0,
                    values: std::mem::take(batch),
                };
                if source.events.try_send(ev).is_err() {
                    SourceStats::add(&source.stats.dropped_events, 1);
                }
            }
            batch_started = Instant::now();
        }
    }
    Ok(())
}
