//! The pipeline's handler of each kind of source event (see [`Pipeline::handle`]).

use std::sync::atomic::Ordering;

use towerlink_firmware::protocol::ChannelInfo;

use super::window::DeviceWindows;
use super::{
    build_chains, channel_names, emit_capture, emit_deadband, emit_windows, finish_captures,
    is_capture_trigger, to_event, Device, Pipeline, PipelineStats, MAX_EVENTS_BEFORE_HELLO,
};
use crate::feed::{Message, UnixMillis};
use crate::sources::{DeviceKey, LiftReading, SourceEvent};

impl Pipeline {
    /// A lift controller's reading: its status and the lift rules.
    pub(super) fn on_lift_reading(
        &mut self,
        lift: usize,
        ts: UnixMillis,
        reading: LiftReading,
        out: &mut Vec<Message>,
    ) {
        if let Some(monitor) = self.lifts.get_mut(lift) {
            monitor.on_reading(ts, reading, out);
        }
    }

    /// A lift poll without a reading (towards `comm_lost`).
    pub(super) fn on_lift_poll_failed(
        &mut self,
        lift: usize,
        ts: UnixMillis,
        out: &mut Vec<Message>,
    ) {
        if let Some(monitor) = self.lifts.get_mut(lift) {
            monitor.on_poll_failed(ts, out);
        }
    }

    /// A Hello: the device's channels. A new or changed layout closes what was open under the
    /// old one, rebuilds the chains and windows and publishes the channels in the directory;
    /// then the events held until the channels were known are handled.
    pub(super) fn on_hello(
        &mut self,
        dev: DeviceKey,
        channels: &[ChannelInfo],
        now: UnixMillis,
        out: &mut Vec<Message>,
    ) {
        let Some(device) = device_of(&mut self.nodes, &mut self.i2c, dev) else {
            return;
        };
        let named = channel_names(channels, &device.config.names);
        let changed = named.len() != device.channels.len()
            || named
                .iter()
                .zip(&device.channels)
                .any(|(a, b)| a.id != b.id || a.name != b.name || a.quantity != b.quantity);
        if changed {
            let closed = device.windows.close_all();
            emit_windows(device, closed, out);
            finish_captures(device, out);
            for slot in 0..device.deadbands.len() {
                if let Some(report) = device.deadbands[slot].as_mut().and_then(|d| d.flush()) {
                    emit_deadband(device, slot, report, out);
                }
            }
            device.slot_of = [None; 256];
            for (slot, ch) in named.iter().enumerate() {
                device.slot_of[usize::from(ch.id)] = Some(slot as u8);
            }
            device.windows = DeviceWindows::new(
                device.config.window.as_millis() as i64,
                device.config.window_grace.as_millis() as i64,
                named.len(),
            );
            device.health.set_channels(&named, now);
            build_chains(device, &named, &self.zeros);
            self.directory.publish(&device.id, named.clone());
            device.channels = named;
            tracing::info!(dev = %device.id, channels = ?device.channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), "node channels known");
        }
        let held = std::mem::take(&mut device.held);
        for ev in held {
            self.handle(ev, now, out);
        }
    }

    /// Samples of one channel: held until the channels are known, then filtered, alarmed on
    /// and windowed (or reported by deadband), with the sensor-health rules told.
    pub(super) fn on_samples(
        &mut self,
        dev: DeviceKey,
        event: SourceEvent,
        now: UnixMillis,
        out: &mut Vec<Message>,
    ) {
        let SourceEvent::Samples {
            channel,
            t0,
            period_ms,
            ref values,
            ..
        } = event
        else {
            return;
        };
        let Some(device) = device_of(&mut self.nodes, &mut self.i2c, dev) else {
            return;
        };
        if !device.known() {
            if device.held.len() < MAX_EVENTS_BEFORE_HELLO {
                device.held.push(event);
            } else {
                self.stats
                    .unknown_channel_samples
                    .fetch_add(values.len() as u64, Ordering::Relaxed);
            }
            return;
        }
        let Some(slot) = device.slot_of[usize::from(channel)] else {
            self.stats
                .unknown_channel_samples
                .fetch_add(values.len() as u64, Ordering::Relaxed);
            return;
        };
        let slot = usize::from(slot);
        let temperature = device.chains[slot]
            .temp_slot()
            .and_then(|s| device.chains.get(s))
            .and_then(|c| c.last_output);
        let counted = device.chains[slot].counters;
        let mut accepted = Vec::with_capacity(values.len());
        let mut started = Vec::new();
        for (i, &raw) in values.iter().enumerate() {
            let t = t0 + i as f64 * period_ms;
            if let Some(recorder) = device.captures[slot].as_mut() {
                recorder.sample(t, raw, period_ms);
            }
            let before = self.transitions.len();
            let out_value =
                device.chains[slot].process(t, f64::from(raw), temperature, &mut self.transitions);
            let mut alarm = false;
            for tr in self.transitions.drain(before..) {
                let event = to_event(tr, &device.channels[slot], t);
                alarm |= matches!(event.event, "threshold" | "rate_of_change");
                if is_capture_trigger(event.event, event.state) {
                    let zero = device.chains[slot].zero;
                    if let Some(recorder) = device.captures[slot].as_mut() {
                        if let Some(trigger) =
                            recorder.trigger(t, event.ts, event.event, event.severity, zero)
                        {
                            self.stats.captures.fetch_add(1, Ordering::Relaxed);
                            started.push(trigger.ts);
                        }
                    }
                }
                out.push(Message::Event {
                    dev: device.id.clone(),
                    event,
                });
            }
            if let Some(v) = out_value {
                accepted.push((t, v, alarm));
            }
        }
        let last_t = t0 + values.len().saturating_sub(1) as f64 * period_ms;
        if let Some(recorder) = device.captures[slot].as_mut() {
            let channel = &device.channels[slot];
            let parts = recorder.due(last_t, &channel.name, channel.quantity.unit());
            emit_capture(&device.id, parts, out);
        }
        let counters = device.chains[slot].counters;
        self.stats
            .spikes
            .fetch_add(counters.spikes - counted.spikes, Ordering::Relaxed);
        self.stats.out_of_range.fetch_add(
            counters.out_of_range - counted.out_of_range,
            Ordering::Relaxed,
        );
        if device.deadbands[slot].is_some() {
            for (t, v, alarm) in accepted {
                let report = device.deadbands[slot]
                    .as_mut()
                    .and_then(|d| d.add(t, v, alarm));
                if let Some(report) = report {
                    emit_deadband(device, slot, report, out);
                }
            }
        } else {
            for (t, v, _) in accepted {
                device.windows.add_one(slot, t, v as f32);
            }
        }
        let span = period_ms * values.len() as f64;
        device
            .health
            .on_samples(slot, now, span, &device.channels, out, &device.id);
        count_late(device, &self.stats);
        let ch = device.channels[slot].name.clone();
        let dev_id = device.id.clone();
        for ts in started {
            self.await_trigger(&dev_id, &ch, ts);
        }
    }

    /// A channel's sensor fault (held until the channels are known).
    pub(super) fn on_fault(&mut self, dev: DeviceKey, event: SourceEvent, out: &mut Vec<Message>) {
        let SourceEvent::Fault {
            channel, code, ts, ..
        } = event
        else {
            return;
        };
        let Some(device) = device_of(&mut self.nodes, &mut self.i2c, dev) else {
            return;
        };
        if !device.known() {
            if device.held.len() < MAX_EVENTS_BEFORE_HELLO {
                device.held.push(event);
            }
            return;
        }
        let slot = device.slot_of[usize::from(channel)].map(usize::from);
        device
            .health
            .on_fault(slot, channel, code, ts, &device.channels, out, &device.id);
    }
}

/// The device a key names, in its kind's list.
pub(super) fn device_of<'a>(
    nodes: &'a mut [Device],
    i2c: &'a mut [Device],
    key: DeviceKey,
) -> Option<&'a mut Device> {
    match key {
        DeviceKey::Node(i) => nodes.get_mut(i),
        DeviceKey::I2c(i) => i2c.get_mut(i),
    }
}

/// Adds the device's newly late samples to the pipeline's counter.
pub(super) fn count_late(device: &mut Device, stats: &PipelineStats) {
    let late = device.windows.late_samples();
    if late > device.late_reported {
        stats
            .late_samples
            .fetch_add(late - device.late_reported, Ordering::Relaxed);
        device.late_reported = late;
    }
}
