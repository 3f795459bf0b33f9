//! The real firmware drivers (towerlink-firmware `drivers::{nau7802, adxl355}`) running their
//! init and reads over the simulated chips on one simulated bus.

mod common;

use std::sync::Arc;

use common::{model, quiet_params};
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{Error as _, ErrorKind, I2c, NoAcknowledgeSource};
use towerlink_firmware::drivers::adxl355::{self, Adxl355};
use towerlink_firmware::drivers::nau7802::{self, Nau7802};
use towerlink_sim_chips::bus::AddressInUse;
use towerlink_sim_chips::{
    Channel, Chip, Fault, PanelModel, PanelParams, ScheduledFault, SimAdxl355, SimBus, SimClock,
    SimDelay,
};

struct Node {
    clock: SimClock,
    delay: SimDelay,
    strain: Nau7802<SimBus>,
    tilt: Adxl355<SimBus>,
}

fn node(model: Arc<PanelModel>) -> Node {
    let clock = SimClock::new();
    let bus = SimBus::panel_node(model, clock.clone());
    Node {
        delay: SimDelay::new(clock.clone()),
        clock,
        strain: Nau7802::new(bus.clone()),
        tilt: Adxl355::new(bus, adxl355::Address::AselLow),
    }
}

impl Node {
    fn init(&mut self) {
        self.strain
            .init(&mut self.delay, nau7802::Config::default())
            .expect("NAU7802 init on the simulator");
        self.tilt
            .init(&mut self.delay, adxl355::Config::default())
            .expect("ADXL355 init on the simulator");
    }

    /// Poll the strain chip every millisecond until a conversion is ready, then read it.
    fn next_strain(&mut self) -> f32 {
        for _ in 0..200 {
            if self.strain.data_ready().expect("poll") {
                return self.strain.read_microstrain().expect("read");
            }
            self.delay.delay_ms(1);
        }
        panic!("no conversion within 200 ms");
    }

    fn next_tilt(&mut self) -> (f32, f32) {
        for _ in 0..200 {
            if self.tilt.data_ready().expect("poll") {
                return self.tilt.read_tilt_deg().expect("read");
            }
            self.delay.delay_ms(1);
        }
        panic!("no sample within 200 ms");
    }
}

#[test]
fn drivers_initialise_and_read_the_panel() {
    let params = PanelParams {
        base_strain_ue: 137.5,
        base_tilt_x_deg: 0.25,
        base_tilt_y_deg: -0.125,
        temp_mean_c: 28.0,
        ..quiet_params()
    };
    let mut node = node(model(1, params, vec![]));
    node.init();
    let after_init = node.clock.now_us();
    assert!(
        after_init >= 610_000,
        "init waited in simulated time: {after_init} µs"
    );

    let lsb_ue = 4.0 / 2.0 / (8_388_608.0 * 128.0) * 1e6;
    for _ in 0..5 {
        let strain = node.next_strain();
        assert!(
            (f64::from(strain) - 137.5).abs() <= 2.0 * lsb_ue,
            "{strain} µε"
        );
    }
    let (tx, ty) = node.next_tilt();
    assert!(
        (tx - 0.25).abs() < 3e-4 && (ty + 0.125).abs() < 3e-4,
        "tilt {tx}, {ty}"
    );
    let temp = node.tilt.read_temperature_c().expect("temperature");
    assert!((temp - 28.0).abs() <= 0.06, "{temp} °C");
}

#[test]
fn the_driver_sees_every_scripted_spike_once() {
    let spikes = ScheduledFault {
        start_us: 2_000_000,
        end_us: None,
        fault: Fault::Spikes {
            channel: Channel::Strain,
            rate_per_s: 1.0,
            magnitude: 300.0,
        },
    };
    let run = |faults: Vec<ScheduledFault>| -> Vec<f32> {
        let mut node = node(model(2, PanelParams::default(), faults));
        node.init();
        (0..1000).map(|_| node.next_strain()).collect()
    };
    let clean = run(vec![]);
    let faulty = run(vec![spikes]);
    let hits: Vec<usize> = (0..clean.len())
        .filter(|&i| (faulty[i] - clean[i]).abs() > 1.0)
        .collect();
    // 1000 conversions at 80 SPS = 12.5 s, the spikes start at 2 s: about 10 spikes.
    assert!((9..=11).contains(&hits.len()), "spikes at {hits:?}");
    for &i in &hits {
        assert!(((faulty[i] - clean[i]).abs() - 300.0).abs() < 0.01);
    }
    assert!(
        hits.windows(2).all(|w| w[1] - w[0] > 1),
        "isolated: {hits:?}"
    );
}

#[test]
fn an_offline_chip_fails_its_driver_and_leaves_the_other_alone() {
    let offline = ScheduledFault {
        start_us: 0,
        end_us: None,
        fault: Fault::Offline {
            chip: Chip::Adxl355,
        },
    };
    let mut node = node(model(3, quiet_params(), vec![offline]));
    match node.tilt.init(&mut node.delay, adxl355::Config::default()) {
        Err(adxl355::Error::I2c(e)) => {
            assert_eq!(
                e.kind(),
                ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
            )
        }
        other => panic!("expected a bus error, got {other:?}"),
    }
    node.strain
        .init(&mut node.delay, nau7802::Config::default())
        .expect("the strain chip still answers");
}

#[test]
fn a_stuck_chip_gives_the_driver_one_value() {
    let stuck = ScheduledFault {
        start_us: 0,
        end_us: None,
        fault: Fault::Stuck {
            chip: Chip::Nau7802,
        },
    };
    let mut node = node(model(4, PanelParams::default(), vec![stuck]));
    node.init();
    let first = node.next_strain();
    for _ in 0..100 {
        assert_eq!(node.next_strain(), first);
    }
}

#[test]
fn bus_dispatches_by_address() {
    let clock = SimClock::new();
    let model = model(5, quiet_params(), vec![]);
    let mut bus = SimBus::panel_node(model.clone(), clock.clone());
    let mut buf = [0u8; 1];
    bus.write_read(0x1D, &[0x00], &mut buf).expect("ADXL355");
    assert_eq!(buf, [0xAD]);
    bus.write_read(0x2A, &[0x1F], &mut buf).expect("NAU7802");
    assert_eq!(buf, [0x0F]);
    let err = bus
        .write_read(0x53, &[0x00], &mut buf)
        .expect_err("empty address");
    assert_eq!(
        err.kind(),
        ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
    );

    bus.attach(SimAdxl355::new(model.clone(), clock.clone(), 0x53))
        .expect("second accelerometer");
    bus.write_read(0x53, &[0x02], &mut buf)
        .expect("second ADXL355");
    assert_eq!(buf, [0xED]);
    assert_eq!(
        bus.attach(SimAdxl355::new(model, clock, 0x1D)),
        Err(AddressInUse(0x1D))
    );
}

#[test]
fn a_node_runs_on_its_own_thread() {
    let model = model(6, quiet_params(), vec![]);
    let handle = std::thread::spawn(move || {
        let mut node = node(model);
        node.init();
        node.next_strain()
    });
    let strain = handle.join().expect("node thread");
    assert!((f64::from(strain) - 120.0).abs() < 0.01);
}
