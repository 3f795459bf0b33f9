//! Human-readable lines for feed messages: what an installer or a demo watcher reads.
//!
//! One line per message, time first, so a terminal scrolls like a log:
//!
//! ```text
//! 05:04:10.000  data    panel-n12  #18231  strain 112.4 ustrain (n=500 sd=6.1)  tilt_x 0.0123 deg (n=100 sd=0.0004)
//! 05:04:41.120  EVENT   panel-n12  #18242  threshold MAJOR active  tilt_x=0.52 deg (limit 0.5)
//! ```
//!
//! A compact batch (`{root}/{gw}/batch`, [`crate::feed::batch`]) reads the same:
//! [`render_lines`] decodes it and gives one line per item, each as the `data/{dev}` message
//! it stands for would read.

use serde_json::Value;

/// The lines of one received message: one for a single message ([`render`]), one per item
/// of a batch (each rendered as the `data/{dev}` message it stands for), or one saying why a
/// batch could not be decoded.
pub fn render_lines(topic: &str, payload: &[u8]) -> Vec<String> {
    let Some(base) = topic.strip_suffix("/batch") else {
        return vec![render(topic, payload)];
    };
    match crate::feed::batch::decode(payload) {
        Ok(items) => items
            .iter()
            .map(|item| {
                let dev = item["dev"].as_str().unwrap_or("?");
                render(&format!("{base}/data/{dev}"), item.to_string().as_bytes())
            })
            .collect(),
        Err(e) => vec![format!(
            "{:<12}  batch   (undecodable, {} bytes: {e})",
            "",
            payload.len()
        )],
    }
}

fn short_time(v: &Value) -> String {
    // "2026-11-28T05:04:10.000Z" -> "05:04:10.000"
    v.as_str()
        .and_then(|s| s.split_once('T'))
        .map(|(_, t)| t.trim_end_matches('Z').to_owned())
        .unwrap_or_else(|| "--:--:--.---".into())
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.abs() >= 1000.0 => format!("{x:.1}"),
        Some(x) if x.abs() >= 1.0 => format!("{x:.3}"),
        Some(x) => format!("{x:.5}"),
        None => v.to_string(),
    }
}

/// Renders one message of topic `topic` (anything under `{root}/{gw}/`) as a line.
pub fn render(topic: &str, payload: &[u8]) -> String {
    let kind = topic
        .rsplit('/')
        .nth(1)
        .filter(|k| matches!(*k, "data" | "event" | "capture"))
        .unwrap_or_else(|| topic.rsplit('/').next().unwrap_or(topic));
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return format!("{:<12}  {kind:<6}  (not JSON: {} bytes)", "", payload.len());
    };
    let dev = v["dev"].as_str().unwrap_or("");
    let seq = v["seq"]
        .as_u64()
        .map(|s| format!("#{s}"))
        .unwrap_or_default();
    match kind {
        "data" if v.get("lift").is_some() => {
            let l = &v["lift"];
            format!(
                "{}  lift    {dev:<10} {seq:>7}  {} floor {} {} door {}{}",
                short_time(&v["ts"]),
                l["mode"].as_str().unwrap_or("?"),
                l["floor"],
                l["direction"].as_str().unwrap_or("?"),
                l["door"].as_str().unwrap_or("?"),
                if l["occupied"].as_bool() == Some(true) {
                    " occupied"
                } else {
                    ""
                }
            )
        }
        "data" => {
            let mut parts = Vec::new();
            if let Some(ch) = v["ch"].as_object() {
                for (name, s) in ch {
                    parts.push(format!(
                        "{name} {} {} (n={} sd={})",
                        num(&s["mean"]),
                        s["u"].as_str().unwrap_or(""),
                        s["n"],
                        num(&s["std"])
                    ));
                }
            }
            format!(
                "{}  data    {dev:<10} {seq:>7}  {}",
                short_time(&v["end"]),
                parts.join("  ")
            )
        }
        "event" => {
            let mut line = format!(
                "{}  EVENT   {dev:<10} {seq:>7}  {} {} {}",
                short_time(&v["ts"]),
                v["event"].as_str().unwrap_or("?"),
                v["severity"].as_str().unwrap_or("?").to_uppercase(),
                v["state"].as_str().unwrap_or("?"),
            );
            if let Some(ch) = v["ch"].as_str() {
                line.push_str(&format!("  {ch}"));
                if let Some(value) = v.get("value") {
                    line.push_str(&format!(
                        "={} {}",
                        num(value),
                        v["u"].as_str().unwrap_or("")
                    ));
                }
                if let Some(limit) = v.get("limit") {
                    line.push_str(&format!(" (limit {})", num(limit)));
                }
            }
            if let Some(d) = v.get("detail") {
                line.push_str(&format!("  {d}"));
            }
            line
        }
        "capture" => {
            let values: Vec<f64> = v["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            let (lo, hi) = values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                    (lo.min(*x), hi.max(*x))
                });
            let t = &v["trigger"];
            format!(
                "{}  CAPTURE {dev:<10} {seq:>7}  {} part {}/{}: {} raw values every {} ms, {}..{} {}  (trigger {} {} #{})",
                short_time(&v["t0"]),
                v["ch"].as_str().unwrap_or("?"),
                v["part"],
                v["parts"],
                values.len(),
                v["period_us"].as_f64().map(|p| p / 1000.0).unwrap_or(f64::NAN),
                num(&Value::from(lo)),
                num(&Value::from(hi)),
                v["u"].as_str().unwrap_or(""),
                t["event"].as_str().unwrap_or("?"),
                t["severity"].as_str().unwrap_or("?").to_uppercase(),
                t["seq"],
            )
        }
        "state" => format!(
            "{}  state   gateway {} is {}",
            short_time(&v["ts"]),
            v["gw"].as_str().unwrap_or("?"),
            v["state"].as_str().unwrap_or("?")
        ),
        "health" => {
            let mut srcs = Vec::new();
            if let Some(s) = v["sources"].as_object() {
                for (dev, st) in s {
                    srcs.push(format!("{dev}:{}", st["status"].as_str().unwrap_or("?")));
                }
            }
            format!(
                "{}  health  queue {} msgs, published {}, evicted {}  {}",
                short_time(&v["ts"]),
                v["queue"]["depth"],
                v["messages"]["published"],
                v["messages"]["evicted"],
                srcs.join(" ")
            )
        }
        "reply" => format!(
            "{:<12}  reply   {seq:>7}  id={} ok={} {}",
            "",
            v["id"].as_str().unwrap_or(""),
            v["ok"],
            v["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v["result"].to_string())
        ),
        other => format!("{:<12}  {other:<7} {v}", ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_for_each_kind() {
        let data = br#"{"v":1,"gw":"g","dev":"panel-n12","seq":5,"start":"2026-11-28T05:04:00.000Z","end":"2026-11-28T05:04:10.000Z","ch":{"strain":{"u":"ustrain","n":500,"mean":112.4,"min":98.0,"max":131.9,"last":113.0,"std":6.1}}}"#;
        let line = render("towerlink/v1/g/data/panel-n12", data);
        assert!(
            line.starts_with("05:04:10.000  data    panel-n12"),
            "{line}"
        );
        assert!(
            line.contains("strain 112.400 ustrain (n=500 sd=6.100)"),
            "{line}"
        );
        let event = br#"{"v":1,"gw":"g","dev":"panel-n12","seq":6,"ts":"2026-11-28T05:04:41.120Z","event":"threshold","severity":"major","state":"active","ch":"tilt_x","u":"deg","value":0.52,"limit":0.5}"#;
        let line = render("towerlink/v1/g/event/panel-n12", event);
        assert!(
            line.contains("EVENT")
                && line.contains("threshold MAJOR active  tilt_x=0.52000 deg (limit 0.50000)"),
            "{line}"
        );
        let capture = br#"{"v":1,"gw":"g","dev":"panel-n12","seq":9,"ch":"tilt_x","u":"deg","trigger":{"event":"threshold","severity":"major","ts":"2026-11-28T05:04:41.120Z","seq":7},"t0":"2026-11-28T05:04:31.120Z","period_us":100000,"zero":0.0,"part":1,"parts":2,"values":[0.4012,0.402,0.3998]}"#;
        let line = render("towerlink/v1/g/capture/panel-n12", capture);
        assert!(
            line.starts_with("05:04:31.120  CAPTURE panel-n12       #9  tilt_x part 1/2: 3 raw values every 100 ms, 0.39980..0.40200 deg  (trigger threshold MAJOR #7)"),
            "{line}"
        );
        // A batch of that window reads as the window alone; a bad batch says so.
        let batch = crate::feed::batch::encode("g", &[data.to_vec(), data.to_vec()]);
        let lines = render_lines("towerlink/v1/g/batch", &batch);
        assert_eq!(
            lines,
            vec![render("towerlink/v1/g/data/panel-n12", data); 2],
            "each item as its own data line"
        );
        let bad = render_lines("towerlink/v1/g/batch", b"{}");
        assert!(bad.len() == 1 && bad[0].contains("undecodable"), "{bad:?}");
        assert_eq!(
            render_lines("towerlink/v1/g/data/panel-n12", data),
            vec![render("towerlink/v1/g/data/panel-n12", data)]
        );
        let state = br#"{"v":1,"gw":"g","state":"offline"}"#;
        assert!(render("towerlink/v1/g/state", state).contains("gateway g is offline"));
        assert!(render("towerlink/v1/g/state", b"\xff").contains("not JSON"));
    }
}
