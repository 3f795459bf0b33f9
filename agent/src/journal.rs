//! `logs` from the systemd journal (issue 15, item 5): under systemd (systemd sets
//! `INVOCATION_ID` and `JOURNAL_STREAM` for a service), the agent's stderr lines are in the
//! journal, older than the in-memory ring and across restarts. [`query`] runs
//! `journalctl -u <unit> --since @<s> -o json -n <N> --no-pager -q` as a child process (no
//! async thread waits on it) with a timeout, reads at most [`MAX_OUTPUT_BYTES`] of it, and
//! [`parse`] turns its JSON lines into the `logs` reply's lines, redacted as the ring's are
//! ([`crate::log_ring::redact`]). Any failure is an `Err` the caller answers from the ring
//! instead.
//!
//! The level filter is ours, not `journalctl -p`: journald stores every stderr line of the
//! service at priority 6 (info), so the level is read from the line itself (`<time> LEVEL
//! message`, the agent's log format), and `PRIORITY` only for lines without one.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tracing::Level;

use crate::log_ring::{redact, MAX_LINE_BYTES};

/// Most bytes of `journalctl` output read.
pub const MAX_OUTPUT_BYTES: u64 = 8 << 20;
/// Most journal entries asked for (before the level filter).
pub const MAX_ENTRIES: usize = 5000;
/// How long `journalctl` may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Does the agent run as a systemd service (by the variables systemd sets)?
pub fn under_systemd(var: impl Fn(&str) -> Option<String>) -> bool {
    ["INVOCATION_ID", "JOURNAL_STREAM"]
        .iter()
        .any(|k| var(k).is_some_and(|v| !v.is_empty()))
}

/// The service unit of this process, from its cgroup (`0::/system.slice/towerlink.service`);
/// `towerlink.service` when it cannot be read.
pub fn unit_name(cgroup: Option<&str>) -> String {
    cgroup
        .and_then(|text| {
            text.lines()
                .filter_map(|l| l.rsplit('/').next())
                .find(|u| u.ends_with(".service"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "towerlink.service".to_owned())
}

/// `journalctl`'s arguments for `unit` since Unix second `since_s`.
pub fn args(unit: &str, since_s: i64) -> Vec<String> {
    [
        "-u",
        unit,
        "--since",
        &format!("@{since_s}"),
        "-o",
        "json",
        "-n",
        &MAX_ENTRIES.to_string(),
        "--no-pager",
        "-q",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn level_word(word: &str) -> Option<Level> {
    Some(match word {
        "ERROR" => Level::ERROR,
        "WARN" => Level::WARN,
        "INFO" => Level::INFO,
        "DEBUG" => Level::DEBUG,
        "TRACE" => Level::TRACE,
        _ => return None,
    })
}

fn priority_level(p: &str) -> Level {
    match p.trim().parse::<u8>() {
        Ok(0..=3) => Level::ERROR,
        Ok(4) => Level::WARN,
        Ok(7) => Level::DEBUG,
        _ => Level::INFO,
    }
}

/// A journal field as text: a string, or (journald's form for bytes that are not UTF-8) an
/// array of byte values.
fn field_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(bytes) => {
            let raw: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            Some(String::from_utf8_lossy(&raw).into_owned())
        }
        _ => None,
    }
}

/// One `journalctl -o json` line as `(unix ms, level, "LEVEL message ...")`; `None` for a
/// line that is not a journal entry with a message.
pub fn parse_entry(line: &str) -> Option<(i64, Level, String)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let message = field_text(v.get("MESSAGE")?)?;
    let us: i64 = v.get("__REALTIME_TIMESTAMP")?.as_str()?.parse().ok()?;
    // The agent's own format: "<RFC 3339 time>  LEVEL message": the journal has the time.
    let mut words = message.split_whitespace();
    let first = words.next().unwrap_or("");
    let (level, text) = match level_word(first) {
        Some(l) => (l, message.trim_start().to_owned()),
        None => match words.next().and_then(level_word) {
            Some(l) => {
                let rest = message.trim_start()[first.len()..].trim_start();
                (l, rest.to_owned())
            }
            None => {
                let l = v
                    .get("PRIORITY")
                    .and_then(Value::as_str)
                    .map_or(Level::INFO, priority_level);
                (l, format!("{} {}", l, message.trim()))
            }
        },
    };
    let mut text = redact(&text);
    if text.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    Some((us / 1000, level, text))
}

/// The entries of `journalctl -o json` output at `level` or more severe, the newest `max`,
/// oldest first, as `(unix ms, text)`.
pub fn parse(output: &str, level: Level, max: usize) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = output
        .lines()
        .filter_map(parse_entry)
        .filter(|(_, l, _)| *l <= level)
        .map(|(ts, _, text)| (ts, text))
        .collect();
    let skip = out.len().saturating_sub(max);
    out.drain(..skip);
    out
}

/// Runs `journalctl` (the first on `PATH`) for this service since `since_s` and parses its
/// output; `Err` says why the journal did not answer.
pub async fn query(since_s: i64, level: Level, max: usize) -> Result<Vec<(i64, String)>, String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok();
    let unit = unit_name(cgroup.as_deref());
    let mut child = tokio::process::Command::new("journalctl")
        .args(args(&unit, since_s))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run journalctl: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("journalctl has no stdout")?;
    let run = async {
        let mut bytes = Vec::new();
        (&mut stdout)
            .take(MAX_OUTPUT_BYTES)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("reading journalctl: {e}"))?;
        drop(stdout);
        let status = child.wait().await.map_err(|e| format!("journalctl: {e}"))?;
        if !status.success() {
            return Err(format!("journalctl failed ({status})"));
        }
        Ok(bytes)
    };
    let bytes = tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| format!("journalctl did not answer within {} s", TIMEOUT.as_secs()))??;
    Ok(parse(&String::from_utf8_lossy(&bytes), level, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    // In the form `journalctl -o json` (systemd 252) prints for a service's stderr lines:
    // every field a string, MESSAGE as an array of bytes when it is not UTF-8. (This machine
    // has no running journald to record from; the fields and their order are journalctl's.)
    const OUTPUT: &str = concat!(
        r#"{"__CURSOR":"s=8a1c;i=1f2;b=3e4;m=5a1;t=62b;x=9d1","__REALTIME_TIMESTAMP":"1764619200123456","__MONOTONIC_TIMESTAMP":"5123456","_BOOT_ID":"3e4","PRIORITY":"6","SYSLOG_FACILITY":"3","_UID":"998","_GID":"998","_COMM":"towerlink","_EXE":"/usr/bin/towerlink","_SYSTEMD_UNIT":"towerlink.service","SYSLOG_IDENTIFIER":"towerlink","_TRANSPORT":"stdout","_STREAM_ID":"9f3","MESSAGE":"2026-12-01T20:00:00.123456Z  INFO towerlink agent starting gw=sh-ja-0001"}"#,
        "\n",
        r#"{"__CURSOR":"s=8a1c;i=1f3","__REALTIME_TIMESTAMP":"1764619201000000","PRIORITY":"6","_SYSTEMD_UNIT":"towerlink.service","_TRANSPORT":"stdout","MESSAGE":"2026-12-01T20:00:01.000000Z  WARN MQTT connection failed broker=mqtts://10.0.0.5:8883 error=\"I/O: connection refused\" password=hunter2 retry_in_ms=1032"}"#,
        "\n",
        r#"{"__CURSOR":"s=8a1c;i=1f4","__REALTIME_TIMESTAMP":"1764619202000000","PRIORITY":"6","_SYSTEMD_UNIT":"towerlink.service","_TRANSPORT":"stdout","MESSAGE":[50,48,50,54,32,32,69,82,82,79,82,32,98,97,100,32,255,32,98,121,116,101]}"#,
        "\n",
        r#"{"__CURSOR":"s=8a1c;i=1f5","__REALTIME_TIMESTAMP":"1764619203000000","PRIORITY":"4","_SYSTEMD_UNIT":"towerlink.service","_TRANSPORT":"journal","MESSAGE":"Watchdog timeout (limit 30s)!"}"#,
        "\n",
        "not json\n",
        r#"{"__REALTIME_TIMESTAMP":"1764619204000000","MESSAGE":"-----BEGIN PRIVATE KEY----- MIIB"}"#,
        "\n",
    );

    #[test]
    fn journal_lines_are_parsed_filtered_and_redacted() {
        let all = parse(OUTPUT, Level::TRACE, 100);
        let texts: Vec<&str> = all.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(all.len(), 5, "{texts:?}");
        assert_eq!(all[0].0, 1_764_619_200_123);
        assert_eq!(texts[0], "INFO towerlink agent starting gw=sh-ja-0001");
        assert!(texts[1].starts_with("WARN MQTT connection failed"));
        assert!(texts[1].contains("password=<redacted>") && !texts[1].contains("hunter2"));
        assert!(texts[2].starts_with("ERROR bad ") && texts[2].ends_with(" byte"));
        assert_eq!(texts[3], "WARN Watchdog timeout (limit 30s)!");
        assert!(texts[4].contains("withheld"));
        let warn = parse(OUTPUT, Level::WARN, 100);
        assert_eq!(warn.len(), 3, "{warn:?}");
        let newest = parse(OUTPUT, Level::WARN, 1);
        assert_eq!(newest[0].1, "WARN Watchdog timeout (limit 30s)!");
    }

    #[test]
    fn systemd_unit_and_arguments() {
        let env = |k: &str| (k == "JOURNAL_STREAM").then(|| "8:12345".to_owned());
        assert!(under_systemd(env));
        assert!(!under_systemd(|_| None));
        assert_eq!(
            unit_name(Some("0::/system.slice/towerlink-b.service\n")),
            "towerlink-b.service"
        );
        assert_eq!(unit_name(Some("0::/user.slice\n")), "towerlink.service");
        let a = args("towerlink.service", 1_764_619_200);
        assert_eq!(
            a[..4],
            ["-u", "towerlink.service", "--since", "@1764619200"]
        );
        assert!(a.windows(2).any(|w| w == ["-o", "json"]));
    }
}
