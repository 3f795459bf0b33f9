//! Why a command was not carried out: [`CommandError`] (the reply's `error`) and the
//! errors of the ops it wraps (a device, `logs`, the configuration ops).

use super::request::{ParseError, TargetError, OPS};
use crate::command_auth::AuthError;
use crate::pipeline::ZeroError;
use crate::sources::NodeRequestError;

/// A device that cannot do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// No such device.
    #[error("unknown device {0:?}")]
    Unknown(String),
    /// No Hello yet.
    #[error("device {0:?} has not announced its channels yet")]
    NotAnnounced(String),
    /// No such channel.
    #[error("unknown channel {ch:?} on {dev:?}; channels: {known}")]
    UnknownChannel {
        /// Device.
        dev: String,
        /// Channel asked for.
        ch: String,
        /// The channels it has, comma separated.
        known: String,
    },
    /// Its request queue is full or closed.
    #[error("device {0:?} is busy or its port is closed")]
    Busy(String),
    /// The request was dropped unanswered.
    #[error("device {0:?} did not answer (port closed or ack timed out)")]
    NoAnswer(String),
    /// No answer in time.
    #[error("device {dev:?} did not answer within {secs}s")]
    Timeout {
        /// Device.
        dev: String,
        /// Seconds waited.
        secs: u64,
    },
    /// The source could not send it.
    #[error(transparent)]
    Request(#[from] NodeRequestError),
    /// The node answered with a refusal.
    #[error("the node refused: {0}")]
    Refused(&'static str),
    /// The pipeline is going down.
    #[error("the pipeline is stopping")]
    PipelineStopping,
    /// The gateway zero was not taken.
    #[error(transparent)]
    Zero(#[from] ZeroError),
}

/// A `logs` command with a bad argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogsError {
    /// `since` is not a duration.
    #[error("logs: since {0:?} is not a duration like \"10m\"")]
    Since(String),
    /// `level` is not a level.
    #[error("logs: level {0:?} is not one of error, warn, info, debug, trace")]
    Level(String),
    /// `max_lines` out of range.
    #[error("logs: max_lines {0} is not within 1..=1000")]
    MaxLines(u32),
}

/// A configuration command that cannot go ahead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigOpError {
    /// `expect` is not the running configuration's hash.
    #[error("refused: stale expect {expect:?}: the running configuration's hash is {running} (it changed since you read it; config_get and try again)")]
    Stale {
        /// What the command expected.
        expect: String,
        /// The running hash.
        running: String,
    },
    /// No file to replace (the agent was not started from one).
    #[error("refused: this agent runs no configuration file it could replace")]
    NoFile,
    /// One apply at a time.
    #[error("refused: another config_apply is in progress")]
    Busy,
}

/// Why a command was not carried out (the reply's `error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The payload was not read.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The signature check refused it.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Over `[commands] rate`.
    #[error("rate limited: too many commands; send it again later")]
    RateLimited,
    /// Not an op of [`OPS`].
    #[error("unknown op {0:?}; known ops: {ops}", ops = OPS.join(", "))]
    UnknownOp(String),
    /// An op that would write to a device.
    #[error(
        "refused: {0:?} would write to a device; towerlink never writes to an elevator controller"
    )]
    WriteOp(String),
    /// Fields that do not fit the op.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The device could not do it.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A configuration op refused.
    #[error(transparent)]
    Config(#[from] ConfigOpError),
    /// A `logs` argument refused.
    #[error(transparent)]
    Logs(#[from] LogsError),
    /// A `cert_install` refused.
    #[error(transparent)]
    Cert(#[from] crate::uplink::tls::renewal::InstallError),
    /// A `resend` refused.
    #[error(transparent)]
    Resend(#[from] crate::queue::ResendError),
}
