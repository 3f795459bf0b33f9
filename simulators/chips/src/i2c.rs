//! The I2C side shared by the simulated chips: the bus error type, the register-pointer
//! protocol both chips speak, and the [`SimDevice`] trait [`crate::SimBus`] dispatches to.

use embedded_hal::i2c::{Error, ErrorKind, NoAcknowledgeSource, Operation};

/// A failed simulated I2C transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimI2cError {
    /// The 7-bit address the transfer was for.
    pub address: u8,
    /// What went wrong, in `embedded_hal` terms.
    pub kind: ErrorKind,
}

impl SimI2cError {
    /// Nobody acknowledged `address`: no chip there, or the chip is offline.
    pub fn address_nack(address: u8) -> Self {
        SimI2cError {
            address,
            kind: ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address),
        }
    }
}

impl Error for SimI2cError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl std::fmt::Display for SimI2cError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "I2C error at address {:#04x}: {}",
            self.address, self.kind
        )
    }
}

impl std::error::Error for SimI2cError {}

/// A simulated chip that can sit on a [`crate::SimBus`].
pub trait SimDevice: Send {
    /// The chip's 7-bit address.
    fn address(&self) -> u8;

    /// Carry out one I2C transaction addressed to this chip (the bus has already matched the
    /// address). Same contract as `embedded_hal::i2c::I2c::transaction`.
    fn transaction(&mut self, operations: &mut [Operation<'_>]) -> Result<(), SimI2cError>;
}

/// A chip with 8-bit registers behind an auto-incrementing register pointer.
///
/// The protocol both simulated chips speak: the first byte of a write sets the pointer, later
/// bytes are written to the pointed register and advance the pointer; a read returns the
/// pointed register and advances the pointer. The pointer survives between transactions, as
/// on the real chips. Consecutive write operations without a repeated start in between are
/// one write (embedded-hal merges adjacent operations of the same kind).
pub(crate) trait RegisterChip {
    /// Whether the chip acknowledges its address now (false = offline).
    fn acknowledges(&mut self) -> bool;
    /// The register pointer.
    fn pointer_mut(&mut self) -> &mut u8;
    /// Read register `reg` (reads may have side effects, e.g. clearing a ready flag).
    fn read_register(&mut self, reg: u8) -> u8;
    /// Write `value` to register `reg`.
    fn write_register(&mut self, reg: u8, value: u8);
}

/// Run `operations` against `chip` at `address` with the register-pointer protocol.
pub(crate) fn register_transaction<C: RegisterChip>(
    chip: &mut C,
    address: u8,
    operations: &mut [Operation<'_>],
) -> Result<(), SimI2cError> {
    if !chip.acknowledges() {
        return Err(SimI2cError::address_nack(address));
    }
    let mut previous_was_write = false;
    for operation in operations {
        match operation {
            Operation::Write(bytes) => {
                let mut expecting_pointer = !previous_was_write;
                for &byte in bytes.iter() {
                    if expecting_pointer {
                        *chip.pointer_mut() = byte;
                        expecting_pointer = false;
                    } else {
                        let reg = *chip.pointer_mut();
                        chip.write_register(reg, byte);
                        *chip.pointer_mut() = reg.wrapping_add(1);
                    }
                }
                // An empty first write (an address probe) leaves the next write still
                // expecting the pointer byte.
                previous_was_write = previous_was_write || !bytes.is_empty();
            }
            Operation::Read(buffer) => {
                for byte in buffer.iter_mut() {
                    let reg = *chip.pointer_mut();
                    *byte = chip.read_register(reg);
                    *chip.pointer_mut() = reg.wrapping_add(1);
                }
                previous_was_write = false;
            }
        }
    }
    Ok(())
}
