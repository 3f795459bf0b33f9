//! Tests of [`Pipeline`] driven by source events, as the sources deliver them.

use super::*;
use towerlink_firmware::protocol::{ChannelInfo, Quantity};

const T0: UnixMillis = 1_700_000_000_000;

/// A pipeline over one serial node (`panel-0`) and one I2C device (`strain-roof`).
fn pipeline() -> Pipeline {
    let config = Config::parse(
        "[gateway]\nid = \"gw\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/tmp/x\"\n\
         [[node]]\nid = \"panel-0\"\nport = \"/dev/null\"\nwindow = \"1s\"\n\
         [[i2c]]\nid = \"strain-roof\"\nbus = \"sim\"\nchip = \"nau7802\"\nwindow = \"1s\"\n",
        "t",
    )
    .expect("test config");
    Pipeline::new(&config, T0, Arc::new(PipelineStats::default()))
}

fn strain() -> Vec<ChannelInfo> {
    vec![ChannelInfo {
        id: 0,
        quantity: Quantity::Strain,
        rate_hz: 10,
    }]
}

fn samples(dev: DeviceKey, t0: f64, values: &[f32]) -> SourceEvent {
    SourceEvent::Samples {
        dev,
        channel: 0,
        t0,
        period_ms: 100.0,
        values: values.to_vec(),
    }
}

/// Closed windows as (device, mean of channel `strain`).
fn windows(out: &[Message]) -> Vec<(String, f32)> {
    out.iter()
        .filter_map(|m| match m {
            Message::Data { dev, ch, .. } => Some((dev.clone(), ch.get("strain")?.mean)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_node_and_an_i2c_device_with_the_same_index_stay_apart() {
    let mut p = pipeline();
    let mut out = Vec::new();
    let t = T0 as f64;
    for key in [DeviceKey::Node(0), DeviceKey::I2c(0)] {
        p.handle(
            SourceEvent::Hello {
                dev: key,
                fw: (1, 0, 0),
                channels: strain(),
            },
            T0,
            &mut out,
        );
    }
    p.handle(samples(DeviceKey::Node(0), t, &[1.0, 1.0]), T0, &mut out);
    p.handle(samples(DeviceKey::I2c(0), t, &[5.0, 5.0]), T0, &mut out);
    // An index no source was given is ignored, not someone else's.
    p.handle(samples(DeviceKey::I2c(1), t, &[9.0]), T0, &mut out);
    p.tick(T0 + 5_000, &mut out);
    let mut got = windows(&out);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![("panel-0".to_owned(), 1.0), ("strain-roof".to_owned(), 5.0)]
    );
    let dir = p.directory();
    assert!(dir.channels("panel-0").is_some() && dir.channels("strain-roof").is_some());
}
