//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use towerlink_sim_chips::{PanelModel, PanelParams, ScheduledFault};

/// A panel without wind, vibration, thermal cycle or noise: every reading is the base value,
/// so register encodings can be checked exactly.
pub fn quiet_params() -> PanelParams {
    PanelParams {
        wind_strain_ue: 0.0,
        wind_tilt_deg: 0.0,
        vibration_ms2: 0.0,
        temp_amplitude_c: 0.0,
        thermal_strain_ue_per_c: 0.0,
        thermal_tilt_urad_pp: 0.0,
        strain_noise_ue: 0.0,
        tilt_noise_deg: 0.0,
        accel_noise_ms2: 0.0,
        temp_noise_c: 0.0,
        ..PanelParams::default()
    }
}

pub fn model(seed: u64, params: PanelParams, faults: Vec<ScheduledFault>) -> Arc<PanelModel> {
    Arc::new(PanelModel::new(seed, params, faults))
}

pub fn default_model(seed: u64) -> Arc<PanelModel> {
    model(seed, PanelParams::default(), Vec::new())
}

/// Sign-extend a 24-bit two's complement value (datasheet decoding).
pub fn sign_extend_24(raw: u32) -> i32 {
    ((raw << 8) as i32) >> 8
}

/// Decode an ADXL355 axis from XDATA3..1: bits 23:4 are the 20-bit two's complement value.
pub fn axis_value(b: [u8; 3]) -> i32 {
    let raw24 = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
    ((raw24 << 8) as i32) >> 12
}
