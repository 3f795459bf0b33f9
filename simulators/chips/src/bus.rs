//! Several simulated chips on one I2C bus.
//!
//! [`SimBus`] dispatches each transaction to the chip with the transaction's address; an
//! address nobody has is NACKed, as on a real bus. Clones are handles on the same bus, so two
//! drivers (each owning its `I2c`) can share it the way `embedded-hal-bus` devices share a real
//! one. It is `Send`: a virtual node can run on its own thread.

use std::sync::{Arc, Mutex, MutexGuard};

use embedded_hal::i2c::{ErrorType, I2c, Operation};

use crate::adxl355::{self, SimAdxl355};
use crate::clock::SimClock;
use crate::i2c::{SimDevice, SimI2cError};
use crate::nau7802::SimNau7802;
use crate::panel::PanelModel;

/// A shared simulated I2C bus.
#[derive(Clone, Default)]
pub struct SimBus {
    devices: Arc<Mutex<Vec<Box<dyn SimDevice>>>>,
}

impl std::fmt::Debug for SimBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addresses: Vec<u8> = self.lock().iter().map(|d| d.address()).collect();
        f.debug_struct("SimBus")
            .field("addresses", &addresses)
            .finish()
    }
}

/// Two chips cannot share an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressInUse(pub u8);

impl std::fmt::Display for AddressInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "I2C address {:#04x} is already in use on this bus",
            self.0
        )
    }
}

impl std::error::Error for AddressInUse {}

impl SimBus {
    /// An empty bus.
    pub fn new() -> Self {
        SimBus::default()
    }

    /// The bus of a panel node: a [`SimNau7802`] at 0x2A and a [`SimAdxl355`] at 0x1D, both
    /// reading `model` at `clock`'s time.
    pub fn panel_node(model: Arc<PanelModel>, clock: SimClock) -> Self {
        let bus = SimBus::new();
        bus.lock()
            .push(Box::new(SimNau7802::new(model.clone(), clock.clone())));
        bus.lock().push(Box::new(SimAdxl355::new(
            model,
            clock,
            adxl355::ADDRESS_LOW,
        )));
        bus
    }

    /// Put `device` on the bus.
    pub fn attach(&self, device: impl SimDevice + 'static) -> Result<(), AddressInUse> {
        let mut devices = self.lock();
        if devices.iter().any(|d| d.address() == device.address()) {
            return Err(AddressInUse(device.address()));
        }
        devices.push(Box::new(device));
        Ok(())
    }

    /// The bus, even if another thread panicked while holding it: the chips' state stays
    /// consistent between register accesses, so there is nothing to recover.
    fn lock(&self) -> MutexGuard<'_, Vec<Box<dyn SimDevice>>> {
        self.devices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ErrorType for SimBus {
    type Error = SimI2cError;
}

impl I2c for SimBus {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        let mut devices = self.lock();
        match devices.iter_mut().find(|d| d.address() == address) {
            Some(device) => device.transaction(operations),
            None => Err(SimI2cError::address_nack(address)),
        }
    }
}
