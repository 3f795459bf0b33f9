//! The resend lane: acknowledged records read back by a `resend` wait here, marked replay,
//! to go out after everything queued, bounded by [`resend::RESEND_BYTES`]
//! (each costs its payload plus [`resend::LANE_OVERHEAD`]).

use std::sync::Arc;

use super::State;
use crate::queue::{resend, Record};

impl State {
    /// Puts a resent record in the resend lane (at its front if `front`: it was handed out
    /// and refused); `false` when the lane is full. One given back always fits.
    pub(in crate::queue) fn push_resend(&mut self, record: Arc<Record>, front: bool) -> bool {
        let need = record.payload.len() as u64 + resend::LANE_OVERHEAD;
        if !front && self.resend_bytes + need > resend::RESEND_BYTES {
            return false;
        }
        self.resend_bytes += need;
        if front {
            self.resend.push_front(record);
        } else {
            self.resend.push_back(record);
        }
        true
    }

    /// The next resent record to go out.
    pub(in crate::queue) fn pop_resend(&mut self) -> Option<Arc<Record>> {
        let record = self.resend.pop_front()?;
        let need = record.payload.len() as u64 + resend::LANE_OVERHEAD;
        self.resend_bytes = self.resend_bytes.saturating_sub(need);
        Some(record)
    }

    /// Is a resent record waiting?
    pub(in crate::queue) fn resend_waiting(&self) -> bool {
        !self.resend.is_empty()
    }
}
