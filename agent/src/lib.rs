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
//! ## Which module may import which
//!
//! Imports go one way; `tests/import_layers.rs` fails on any other edge and on any circle.
//!
//! ```text
//! bottom    values, feed, feed_view, secrets, backoff, shutdown, rate_limit, service, clock,
//!           log_ring, journal
//!           (import only each other)
//! sources   (with profile)       -> bottom
//! queue                          -> bottom
//! pipeline                       -> sources, queue, bottom
//! uplink                         -> queue, bottom
//! commands  (with command_auth)  -> pipeline, sources, queue, uplink, bottom
//! health                         -> the stages above, bottom
//! config                         -> the stages' config sections, health, bottom
//! app, cli                       -> everything above; main -> everything
//! ```
//!
//! Data flows sources -> pipeline -> queue -> uplink; the pipeline pushes into the queue
//! (so it imports it) and the uplink drains it. Each stage owns its config section in its
//! own `config` module (`sources::config`, `queue::config`, `uplink::config`,
//! `commands::config`; the pipeline's per-channel settings in `pipeline::settings`,
//! `[health]` in `health`), built from the checked values of `values`. `config` only
//! composes them: nothing but `app`, `cli` and `main` imports it. `service` (the watchdog's
//! heartbeats) sits at the bottom because every loop beats. Test modules may use any
//! module. No edge breaks the rule (the last, the pipeline filling the commands' channel
//! directory, went when the pipeline came to own `pipeline::ChannelDirectory`).
//!
//! ## Errors at the seams
//!
//! A module reports failure with its own `thiserror` type that a caller can match
//! (`values::ValueError`, `uplink::config::UrlError`, `secrets::PasswordFileError`,
//! `pipeline::settings::SettingsError`, `app::ApplyError`, ...); a module's error wraps the
//! lower one's where it passes it on (`uplink::session::SetupError::Password`). The
//! `Display` of each is the text the installer reads, and serde validators report it
//! through serde's message. `agent/tests/file_size.rs` keeps every file under 650 lines of
//! code (tests beside it in a `tests.rs`).
//!
//! ## Modules
//!
//! - [`config`]: loads the file, composes the stages' sections, checks the rules across them.
//! - [`values`]: ids, sizes, durations and ranges checked while the configuration is read.
//! - [`profile`]: lift controller register maps (Modbus input registers, read-only).
//! - [`clock`]: the system clock's synchronisation (adjtimex) and steps of the wall clock.
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
//! - [`log_ring`]: the recent log lines the `logs` command answers.
//! - [`feed_view`]: feed messages as readable lines (demo, `tail`).
//! - [`service`]: systemd readiness and the watchdog, fed by every loop's heartbeat.
//! - [`app`]: starts and stops everything.
//! - [`cli`]: the installer's commands (`check`, `tail`, `zero`).

pub mod app;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod command_auth;
pub mod commands;
pub mod config;
pub mod feed;
pub mod feed_view;
pub mod health;
pub mod journal;
pub mod log_ring;
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
