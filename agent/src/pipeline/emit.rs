//! What the pipeline builds for a device's channels (filter chains, deadbands, capture
//! recorders) and how its results become feed messages (windows, deadband reports, events,
//! captures).

use std::collections::BTreeMap;

use super::alarm::Transition;
use super::capture::Recorder;
use super::chain::{ChannelChain, Deadband, DeadbandReport};
use super::zero::ZeroTable;
use super::{settings, window, Channel, Device};
use crate::feed::{CapturePart, Event, Message};

/// Builds each channel's filter chain and report mode from the configuration.
pub(super) fn build_chains(device: &mut Device, channels: &[Channel], zeros: &ZeroTable) {
    for name in device.config.channels.keys() {
        if !channels.iter().any(|c| &c.name == name) {
            tracing::warn!(dev = %device.id, channel = %name, "configured channel is not announced by the node");
        }
    }
    let default = settings::ChannelSettings::default();
    // Each channel's effective settings, resolved once for its chain, deadband and capture.
    let effective: Vec<_> = channels
        .iter()
        .map(|c| {
            device
                .config
                .channels
                .get(&c.name)
                .unwrap_or(&default)
                .effective(c.quantity)
        })
        .collect();
    device.chains = channels
        .iter()
        .zip(&effective)
        .map(|(c, eff)| {
            let temp_slot = eff.temp_comp.as_ref().and_then(|tc| {
                let slot = channels.iter().position(|o| o.name == tc.channel);
                if slot.is_none() {
                    tracing::warn!(dev = %device.id, channel = %c.name, temp = %tc.channel, "temperature channel for compensation not found");
                }
                slot
            });
            ChannelChain::new(eff, temp_slot, zeros.get(&device.id, &c.name))
        })
        .collect();
    device.deadbands = effective
        .iter()
        .map(|eff| {
            let min_interval = eff.min_interval.unwrap_or(device.config.window);
            eff.deadband.map(|(band, hb)| {
                Deadband::new(
                    band,
                    hb.as_secs_f64() * 1000.0,
                    min_interval.as_secs_f64() * 1000.0,
                )
            })
        })
        .collect();
    device.captures = channels
        .iter()
        .zip(effective)
        .map(|(c, eff)| eff.capture.map(|s| Recorder::new(s, c.rate_hz)))
        .collect();
}

/// Sends every running capture of `device` with what it has (layout change, clean stop).
pub(super) fn finish_captures(device: &mut Device, out: &mut Vec<Message>) {
    for (slot, recorder) in device.captures.iter_mut().enumerate() {
        let (Some(recorder), Some(channel)) = (recorder, device.channels.get(slot)) else {
            continue;
        };
        let parts = recorder.finish(&channel.name, channel.quantity.unit());
        emit_capture(&device.id, parts, out);
    }
}

/// A capture's parts as messages.
pub(super) fn emit_capture(dev: &str, parts: Vec<CapturePart>, out: &mut Vec<Message>) {
    out.extend(parts.into_iter().map(|part| Message::Capture {
        dev: dev.to_owned(),
        part: Box::new(part),
    }));
}

/// A deadband channel's report as a data message.
pub(super) fn emit_deadband(
    device: &Device,
    slot: usize,
    report: DeadbandReport,
    out: &mut Vec<Message>,
) {
    let Some(channel) = device.channels.get(slot) else {
        return;
    };
    let (start, end, stats) = report;
    let mut ch = BTreeMap::new();
    ch.insert(
        channel.name.clone(),
        stats.to_window(
            channel.quantity.unit(),
            window::expected_samples(channel.rate_hz, start as i64, end as i64),
        ),
    );
    out.push(Message::Data {
        dev: device.id.clone(),
        start: start as i64,
        end: end as i64,
        ch,
    });
}

/// A chain transition, decided on the sample of time `at`, as a feed event.
pub(super) fn to_event(t: Transition, channel: &Channel, at: f64) -> Event {
    let mut e = Event::new(at as i64, t.event, t.severity, t.state);
    e.since = Some(t.since as i64);
    e.ch = Some(channel.name.clone());
    e.u = Some(channel.quantity.unit());
    e.value = Some(t.value as f32);
    e.limit = t.limit.map(|l| l as f32);
    if let Some(previous) = t.previous {
        e.detail = Some(serde_json::json!({ "previous": previous }));
    }
    e
}

pub(super) fn emit_windows(
    device: &Device,
    closed: Vec<window::ClosedWindow>,
    out: &mut Vec<Message>,
) {
    for w in closed {
        if w.channels.is_empty() {
            continue;
        }
        let ch = w
            .channels
            .iter()
            .filter_map(|(slot, stats)| {
                let channel = device.channels.get(*slot)?;
                let expected = window::expected_samples(channel.rate_hz, w.start, w.end);
                Some((
                    channel.name.clone(),
                    stats.to_window(channel.quantity.unit(), expected),
                ))
            })
            .collect();
        out.push(Message::Data {
            dev: device.id.clone(),
            start: w.start,
            end: w.end,
            ch,
        });
    }
}
