//! The agent's recent log lines in memory, for the `logs` command: a `tracing` layer that
//! keeps the last [`MAX_LINES`] lines (each at most [`MAX_LINE_BYTES`]) in a ring, so the
//! platform can ask a gateway what it knows without a visit.
//!
//! Secrets never reach a log line by construction (a password or key is a
//! [`crate::secrets::Secret`], printed `<redacted>`); [`redact`] also masks anything that
//! looks like key material or a `password=` pair, as a second fence. The ring is bounded:
//! memory is at most [`MAX_LINES`] x [`MAX_LINE_BYTES`].

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines kept.
pub const MAX_LINES: usize = 2000;
/// Longest line kept (longer ones are cut, marked `…`).
pub const MAX_LINE_BYTES: usize = 512;

/// One kept line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Unix milliseconds.
    pub ts: i64,
    /// Its level.
    pub level: Level,
    /// `LEVEL message key=value ...`, redacted.
    pub text: String,
}

/// The ring.
#[derive(Debug, Default)]
pub struct LogRing {
    lines: Mutex<VecDeque<LogLine>>,
}

static GLOBAL: OnceLock<LogRing> = OnceLock::new();

/// The process's ring (created on first use; filled once [`layer`] is installed).
pub fn global() -> &'static LogRing {
    GLOBAL.get_or_init(LogRing::default)
}

/// A `tracing` layer that fills [`global`].
pub fn layer() -> RingLayer {
    RingLayer { ring: global() }
}

/// The layer.
#[derive(Debug)]
pub struct RingLayer {
    ring: &'static LogRing,
}

impl LogRing {
    /// Keeps one line (the oldest goes when full).
    pub fn push(&self, line: LogLine) {
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() >= MAX_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    /// The lines at `level` or more severe since `since_ms`, the newest `max` of them, oldest
    /// first.
    pub fn query(&self, since_ms: i64, level: Level, max: usize) -> Vec<LogLine> {
        let Ok(lines) = self.lines.lock() else {
            return Vec::new();
        };
        let mut out: Vec<LogLine> = lines
            .iter()
            .rev()
            .filter(|l| l.ts >= since_ms && l.level <= level)
            .take(max)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

/// Masks key material and `password`/`secret`/`token` values in a line.
pub fn redact(text: &str) -> String {
    if text.contains("-----BEGIN") {
        return "<line withheld: key material>".to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut words = text.split(' ').peekable();
    while let Some(word) = words.next() {
        let lower = word.to_ascii_lowercase();
        let secret = ["password=", "secret=", "token=", "passwd="]
            .iter()
            .find(|k| lower.starts_with(*k));
        match secret {
            Some(k) => {
                out.push_str(&word[..k.len()]);
                out.push_str("<redacted>");
            }
            None => out.push_str(word),
        }
        if words.peek().is_some() {
            out.push(' ');
        }
    }
    out
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let mut fields = Fields(level.to_string());
        event.record(&mut fields);
        let mut text = redact(&fields.0);
        if text.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        self.ring.push(LogLine {
            ts: crate::feed::now_millis(),
            level,
            text,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: i64, level: Level, text: &str) -> LogLine {
        LogLine {
            ts,
            level,
            text: text.into(),
        }
    }

    #[test]
    fn query_by_time_level_and_count_and_the_ring_is_bounded() {
        let ring = LogRing::default();
        ring.push(line(1, Level::INFO, "a"));
        ring.push(line(2, Level::WARN, "b"));
        ring.push(line(3, Level::ERROR, "c"));
        ring.push(line(4, Level::DEBUG, "d"));
        let texts = |v: Vec<LogLine>| v.into_iter().map(|l| l.text).collect::<Vec<_>>();
        assert_eq!(texts(ring.query(0, Level::WARN, 10)), ["b", "c"]);
        assert_eq!(texts(ring.query(0, Level::TRACE, 2)), ["c", "d"]);
        assert_eq!(texts(ring.query(3, Level::INFO, 10)), ["c"]);
        for i in 0..(MAX_LINES + 10) {
            ring.push(line(10 + i as i64, Level::INFO, "x"));
        }
        assert_eq!(ring.query(0, Level::TRACE, usize::MAX).len(), MAX_LINES);
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            redact("WARN login password=hunter2 user=a"),
            "WARN login password=<redacted> user=a"
        );
        assert!(redact("x -----BEGIN PRIVATE KEY----- y").contains("withheld"));
    }
}
