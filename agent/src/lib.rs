//! # towerlink-agent
//!
//! The gateway daemon of a towerlink tower. Data flows one way through the modules:
//!
//! ```text
//! sources/ (serial nodes)  ->  pipeline/ (windows, sensor health)  ->  queue/ (seq, priority)  ->  uplink/ (MQTT)
//!                                                                        ^
//!                                       commands/ (cmd -> node, replies) +
//! ```
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`profile`]: lift controller register maps (Modbus input registers, read-only).
//! - [`feed`]: the MQTT feed contract (topics and payloads), decided in one place.
//! - [`sources`]: tasks that own devices and produce [`sources::SourceEvent`]s.
//! - [`pipeline`]: windows and health rules that turn events into [`feed::Message`]s.
//! - [`queue`]: `seq` assignment, priority and acknowledgement tracking.
//! - [`uplink`]: the MQTT session.
//! - [`commands`]: platform commands and their replies.
//! - [`health`]: the gateway's own health report.
//! - [`command_auth`]: optional Ed25519-signed commands with replay protection.
//! - [`rate_limit`]: the token bucket that limits commands.
//! - [`secrets`]: the MQTT password and key files, kept out of logs and replies.
//! - [`feed_view`]: feed messages as readable lines (demo, `tail`).
//! - [`service`]: systemd readiness and the watchdog, fed by every loop's heartbeat.
//! - [`app`]: starts and stops everything.
//! - [`cli`]: the installer's commands (`check`, `tail`, `zero`).

pub mod app;
pub mod backoff;
pub mod cli;
pub mod command_auth;
pub mod commands;
pub mod config;
pub mod feed;
pub mod feed_view;
pub mod health;
pub mod pipeline;
pub mod profile;
pub mod queue;
pub mod rate_limit;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod sources;
pub mod uplink;
pub mod values;
