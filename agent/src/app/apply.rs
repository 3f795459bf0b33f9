//! `config_apply`: the new text checked, staged beside the running file, the tasks started
//! again on it in this process and verified, or the previous configuration started again
//! (see [`apply`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::sync::mpsc;

use super::{Agent, ConfigFile, Shared};
use crate::commands::{refusal, ApplyRequest, ConfigOpError};
use crate::config::{Config, ConfigError};
use crate::feed::Reply;

/// Why a `config_apply` was refused with nothing changed (the reply's `error` is its text).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The new text does not pass `towerlink check`'s offline checks.
    #[error("refused: the configuration does not pass the checks of `towerlink check`: {0}")]
    Invalid(ConfigError),
    /// The new text names another gateway.
    #[error(
        "refused: config_apply cannot change gateway.id ({running} to {new}): the topics would change"
    )]
    GatewayId {
        /// The running id.
        running: String,
        /// The id in the new text.
        new: String,
    },
    /// The new text moves the store.
    #[error(
        "refused: config_apply cannot change store.path ({} to {}): the queue stays where it is",
        running.display(),
        new.display()
    )]
    StorePath {
        /// The running store.
        running: PathBuf,
        /// The store in the new text.
        new: PathBuf,
    },
    /// A critical event stayed active for all of `[commands] defer_max`.
    #[error(
        "refused: deferred {} while a critical event was active ({}), which still is; nothing changed (commands.defer_max); send it again once it has cleared",
        humantime::format_duration(*waited),
        critical.join(", ")
    )]
    Deferred {
        /// How long it waited (whole seconds).
        waited: Duration,
        /// The critical events still active.
        critical: Vec<String>,
    },
    /// The agent is stopping.
    #[error("refused: the agent is stopping; nothing changed")]
    Stopping,
    /// The new text could not be staged beside the running file.
    #[error("refused: cannot write {}: {error}; nothing changed", path.display())]
    Stage {
        /// The staged file.
        path: PathBuf,
        /// The write's error.
        error: std::io::Error,
    },
}

/// Why the new configuration was rolled back (the reply says `rolled back: <cause>`).
#[derive(Debug, thiserror::Error)]
pub enum RollbackCause {
    /// Its tasks did not start.
    #[error("the new configuration did not start: {0}")]
    NotStarted(String),
    /// Its session or sources were not up in time.
    #[error(
        "not up within {} (commands.verify_timeout): {}",
        humantime::format_duration(*timeout),
        down.join(", ")
    )]
    NotUp {
        /// `[commands] verify_timeout`.
        timeout: Duration,
        /// What was not up.
        down: Vec<String>,
    },
    /// The agent was asked to stop while verifying.
    #[error("the agent was stopped during verification")]
    Stopped,
    /// The staged file could not be renamed over the running one.
    #[error("cannot keep the new file: {0}")]
    Keep(std::io::Error),
}

/// The state an apply starts from and ends with.
pub(super) struct Applying {
    pub(super) agent: Agent,
    pub(super) config: Config,
    pub(super) file: ConfigFile,
}

/// How an apply ended: what runs now, and whether `stop` fired meanwhile.
pub(super) struct Applied {
    pub(super) agent: Agent,
    pub(super) config: Config,
    pub(super) file: ConfigFile,
    pub(super) stopped: bool,
}

/// How often the supervisor looks at the critical events and the verification.
const APPLY_POLL: Duration = Duration::from_millis(100);

/// Carries out one `config_apply` (its `expect` was checked by the command handler).
///
/// The new text is validated as `towerlink check` validates a file offline (parse, every
/// rule, lift profiles resolved next to the running file); the gateway id and the store
/// path cannot change this way (the topics and the queue would). While a critical event is
/// active it waits, at most `[commands] defer_max`. Then the text is written next to the
/// running file (`<file>.new`: write, fsync), the running tasks are stopped (windows
/// flushed, queue drained, `offline`) and started again in this process on the new
/// configuration over the same queue, so seq continues. Verified when the MQTT session is
/// up and every configured source's port is open within `[commands] verify_timeout`: only
/// then is `<file>.new` renamed over the file (and the directory synced). Otherwise the
/// previous configuration (still the file on disk) is started again and the reply, `ok:
/// false` with the reason, is queued once its session is back. A crash meanwhile leaves
/// the previous file in place.
pub(super) async fn apply<F: std::future::Future<Output = ()>>(
    request: ApplyRequest,
    state: Applying,
    shared: &Shared,
    others: &mut mpsc::Receiver<ApplyRequest>,
    mut stop: std::pin::Pin<&mut F>,
) -> anyhow::Result<Applied> {
    let Applying {
        agent,
        config,
        file,
    } = state;
    let id = request.id.clone();
    let unchanged = |agent: Agent, stopped: bool| Applied {
        agent,
        config: config.clone(),
        file: file.clone(),
        stopped,
    };
    let new = match validate(&request.toml, &file.path, &config) {
        Ok(new) => new,
        Err(refused) => {
            agent.reply(shared, refusal(id, refused.to_string())).await;
            return Ok(unchanged(agent, false));
        }
    };
    let settings = config.commands.clone();

    // Deferred while a critical event is active.
    let received = Instant::now();
    let mut deferred = false;
    loop {
        let critical = agent.pipeline_stats.critical_active();
        if critical.is_empty() {
            break;
        }
        if !deferred {
            tracing::warn!(id = %id, critical = ?critical, defer_max_ms = settings.defer_max.as_millis() as u64, "config_apply deferred: a critical event is active");
            deferred = true;
        }
        if received.elapsed() >= settings.defer_max {
            let refused = ApplyError::Deferred {
                waited: Duration::from_secs(received.elapsed().as_secs()),
                critical,
            };
            agent.reply(shared, refusal(id, refused.to_string())).await;
            return Ok(unchanged(agent, false));
        }
        tokio::select! {
            _ = tokio::time::sleep(APPLY_POLL) => {}
            _ = stop.as_mut() => {
                agent.reply(shared, refusal(id, ApplyError::Stopping.to_string())).await;
                return Ok(unchanged(agent, true));
            }
            Some(other) = others.recv() => busy(&agent, shared, other).await,
        }
    }
    let deferred_ms = if deferred {
        Some(received.elapsed().as_millis() as u64)
    } else {
        None
    };

    let staged = staged_path(&file.path);
    let text = request.toml.clone();
    let target = staged.clone();
    let written = tokio::task::spawn_blocking(move || write_synced(&target, &text)).await;
    if let Err(e) = written
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
    {
        let refused = ApplyError::Stage {
            path: staged,
            error: e,
        };
        agent.reply(shared, refusal(id, refused.to_string())).await;
        return Ok(unchanged(agent, false));
    }
    let old_hash = crate::commands::config_hash(&file.text);
    let new_file = ConfigFile {
        path: file.path.clone(),
        text: request.toml.clone(),
    };
    tracing::info!(id = %id, file = %file.path.display(), "config_apply: restarting the tasks on the new configuration");
    agent.stop().await;

    // Started and verified, or the reason it was not.
    let mut stopped = false;
    let verdict = match Agent::start(&new, Some(&new_file), shared, None) {
        Err(e) => Err((None, RollbackCause::NotStarted(format!("{e:#}")))),
        Ok(candidate) => {
            let deadline = Instant::now() + settings.verify_timeout;
            loop {
                let down = candidate.not_up();
                if down.is_empty() {
                    break Ok(candidate);
                }
                if Instant::now() >= deadline {
                    let cause = RollbackCause::NotUp {
                        timeout: settings.verify_timeout,
                        down,
                    };
                    break Err((Some(candidate), cause));
                }
                tokio::select! {
                    _ = tokio::time::sleep(APPLY_POLL) => {}
                    _ = stop.as_mut(), if !stopped => {
                        stopped = true;
                        break Err((Some(candidate), RollbackCause::Stopped));
                    }
                    Some(other) = others.recv() => busy(&candidate, shared, other).await,
                }
            }
        }
    };
    match verdict {
        Ok(candidate) => {
            let path = file.path.clone();
            let kept = tokio::task::spawn_blocking(move || keep_staged(&staged, &path)).await;
            match kept
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r)
            {
                Ok(()) => {
                    let hash = crate::commands::config_hash(&new_file.text);
                    tracing::info!(id = %id, hash = %hash, "config_apply: verified and kept");
                    let mut result = json!({
                        "hash": hash,
                        "previous": old_hash,
                        "applied": "restart",
                        "deferred": deferred,
                    });
                    if let Some(ms) = deferred_ms {
                        result["deferred_ms"] = json!(ms);
                    }
                    let reply = Reply {
                        id,
                        ok: true,
                        error: None,
                        result: Some(result),
                    };
                    candidate.reply(shared, reply).await;
                    Ok(Applied {
                        agent: candidate,
                        config: new,
                        file: new_file,
                        stopped,
                    })
                }
                Err(e) => {
                    let cause = RollbackCause::Keep(e);
                    roll_back(candidate, (id, cause), &config, &file, shared, stopped).await
                }
            }
        }
        Err((candidate, cause)) => {
            let _ = std::fs::remove_file(&staged);
            match candidate {
                Some(candidate) => {
                    roll_back(candidate, (id, cause), &config, &file, shared, stopped).await
                }
                None => start_previous((id, cause), &config, &file, shared, stopped).await,
            }
        }
    }
}

/// Stops the candidate and starts the previous configuration again.
async fn roll_back(
    candidate: Agent,
    why: (String, RollbackCause),
    config: &Config,
    file: &ConfigFile,
    shared: &Shared,
    stopped: bool,
) -> anyhow::Result<Applied> {
    candidate.stop().await;
    start_previous(why, config, file, shared, stopped).await
}

/// Starts the previous configuration again and replies `ok: false` once its session is back
/// (or after its own `verify_timeout`, then the reply waits in the queue).
async fn start_previous(
    (id, cause): (String, RollbackCause),
    config: &Config,
    file: &ConfigFile,
    shared: &Shared,
    stopped: bool,
) -> anyhow::Result<Applied> {
    let _ = std::fs::remove_file(staged_path(&file.path));
    tracing::warn!(id = %id, reason = %cause, "config_apply rolled back to the previous configuration");
    let agent = Agent::start(config, Some(file), shared, None)
        .context("config_apply: the previous configuration did not start again")?;
    let deadline = Instant::now() + config.commands.verify_timeout;
    while !agent.uplink_stats.connected.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(APPLY_POLL).await;
    }
    let reason = format!("rolled back: {cause}; the previous configuration runs again");
    agent.reply(shared, refusal(id, reason)).await;
    Ok(Applied {
        agent,
        config: config.clone(),
        file: file.clone(),
        stopped,
    })
}

/// Refuses a second `config_apply` while one is in progress.
async fn busy(agent: &Agent, shared: &Shared, other: ApplyRequest) {
    let reply = crate::commands::refuse(other.id, ConfigOpError::Busy.into());
    agent.reply(shared, reply).await;
}

/// The new configuration, checked as `towerlink check` checks a file offline, or why not.
fn validate(text: &str, path: &Path, running: &Config) -> Result<Config, ApplyError> {
    let new =
        Config::parse_in(text, "config_apply toml", path.parent()).map_err(ApplyError::Invalid)?;
    if new.gateway.id != running.gateway.id {
        return Err(ApplyError::GatewayId {
            running: running.gateway.id.to_string(),
            new: new.gateway.id.to_string(),
        });
    }
    if new.store.path != running.store.path {
        return Err(ApplyError::StorePath {
            running: running.store.path.clone(),
            new: new.store.path.clone(),
        });
    }
    Ok(new)
}

/// Where a `config_apply` stages the new file: next to the running one, `<file>.new`.
pub fn staged_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// Writes `text` to `path` and syncs it.
fn write_synced(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Renames the staged file over the running one and syncs the directory.
fn keep_staged(staged: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(staged, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = "[gateway]\nid = \"gw-1\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/var/lib/towerlink\"\n";

    #[test]
    fn a_refused_apply_is_a_variant_with_the_replys_text() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("towerlink.toml");
        let running = Config::parse(RUNNING, "running").expect("running config");
        let e = validate(&RUNNING.replace("gw-1", "gw-2"), &path, &running).expect_err("id");
        assert!(
            matches!(&e, ApplyError::GatewayId { running, new } if running == "gw-1" && new == "gw-2")
        );
        assert_eq!(
            e.to_string(),
            "refused: config_apply cannot change gateway.id (gw-1 to gw-2): the topics would change"
        );
        let e = validate(
            &RUNNING.replace("/var/lib/towerlink", "/tmp/q"),
            &path,
            &running,
        )
        .expect_err("store");
        assert!(matches!(e, ApplyError::StorePath { .. }), "{e}");
        let e = validate("[gateway]\nid = \"GW\"\n", &path, &running).expect_err("invalid");
        assert!(matches!(e, ApplyError::Invalid(_)), "{e}");
        assert!(e.to_string().starts_with(
            "refused: the configuration does not pass the checks of `towerlink check`: "
        ));
        assert!(validate(RUNNING, &path, &running).is_ok());
        let deferred = ApplyError::Deferred {
            waited: Duration::from_secs(30),
            critical: vec!["n1/strain_1 alarm_high".into()],
        };
        assert!(deferred.to_string().starts_with(
            "refused: deferred 30s while a critical event was active (n1/strain_1 alarm_high)"
        ));
        let cause = RollbackCause::NotUp {
            timeout: Duration::from_secs(20),
            down: vec!["mqtt".into(), "node n1".into()],
        };
        assert_eq!(
            cause.to_string(),
            "not up within 20s (commands.verify_timeout): mqtt, node n1"
        );
    }
}
