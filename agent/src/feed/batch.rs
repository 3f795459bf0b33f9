//! The compact telemetry batch (`{root}/{gw}/batch`, contract v1.1, `docs/mqtt-feed.md`):
//! many telemetry records of one gateway in one zstd-compressed publish.
//!
//! The payload is one zstd frame (RFC 8878) holding one JSON object:
//! `{"v":1,"gw":"…","batch":[…]}`, where `batch` lists the records' own payloads exactly as
//! they would have gone out one by one on `data/{dev}` (each with its own `seq`, `dev`,
//! `start`, `end`, channel statistics, or lift status), in `seq` order. So a platform
//! decodes a batch with any zstd and any JSON library, and validates every item against the
//! same schema as a single message. Events, captures and replies are never batched.
//!
//! Pure: [`encode`] and [`decode`] do no I/O; [`decode`] bounds what it inflates
//! ([`MAX_DECODED`]) and says what is wrong with a bad payload ([`BatchError`]).

use std::io::Read;

use serde_json::Value;

use super::FEED_VERSION;

/// The zstd level the agent compresses with, chosen by measurement (README, "Which codec";
/// the `feed_bytes` and `batch_codecs` benches on the nominal tower's ~150 kB batches, one a
/// minute). LZ4 and zstd 1-3 leave the day's wire bytes 5.6-9.4x below per-message JSON,
/// levels 9 and 12 barely 10x; level 15 gives 11.5x (13.9 % of the batch JSON), and level 19
/// saves only 0.1 % of the JSON more for 5.3 times the instructions (aarch64: 114 M against
/// 600 M per batch, about 3 minutes of an ARM core a day against 14 at one instruction per
/// ns, and as much again for every day of backlog replayed).
pub const LEVEL: i32 = 15;
/// The most bytes a batch may inflate to (a decoder refuses more: a bomb stays bounded).
pub const MAX_DECODED: u64 = 16 << 20;

/// Why a batch could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Not a zstd frame, or a damaged one.
    #[error("not a zstd frame: {0}")]
    Zstd(std::io::Error),
    /// It inflates beyond [`MAX_DECODED`].
    #[error("batch inflates beyond {MAX_DECODED} bytes")]
    TooLarge,
    /// The inflated bytes are not JSON.
    #[error("batch is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not a batch of this version.
    #[error("not a v1 batch: {0}")]
    Shape(&'static str),
}

/// Encodes the records' payloads (each one JSON object, as rendered for the queue with its
/// `seq`) into one batch payload of gateway `gw`.
pub fn encode(gw: &str, payloads: &[Vec<u8>]) -> Vec<u8> {
    let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    encode_slices(gw, &payloads)
}

/// [`encode`] of borrowed payloads.
pub fn encode_slices(gw: &str, payloads: &[&[u8]]) -> Vec<u8> {
    compress(&batch_json(gw, payloads))
}

/// A batch's JSON ([`batch_json`]) as the zstd frame that goes out (at [`LEVEL`]). CPU-bound
/// (milliseconds per batch): the uplink calls it off the async worker threads.
pub fn compress(json: &[u8]) -> Vec<u8> {
    // Compressing a byte slice in memory cannot fail but for allocation.
    zstd::bulk::compress(json, LEVEL).unwrap_or_default()
}

/// Is this rendered telemetry payload a data window (batched), not a lift status (sent
/// alone)? Both are rendered by [`super::Renderer`] with the fields in a fixed order,
/// `…,"seq":N,` then `"start":` for a window and `"ts":` for a lift status.
pub fn is_window(payload: &[u8]) -> bool {
    const KEY: &[u8] = b"\"seq\":";
    let Some(at) = payload.windows(KEY.len()).position(|w| w == KEY) else {
        return false;
    };
    let rest = &payload[at + KEY.len()..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    rest[digits..].starts_with(b",\"start\":")
}

/// The uncompressed JSON of a batch (what [`encode`] compresses).
pub fn batch_json<P: AsRef<[u8]>>(gw: &str, payloads: &[P]) -> Vec<u8> {
    let head = serde_json::json!({ "v": FEED_VERSION, "gw": gw });
    let head = head.to_string();
    let mut out = Vec::with_capacity(payloads.iter().map(|p| p.as_ref().len()).sum::<usize>() + 64);
    // `{"gw":…,"v":1` then `,"batch":[` the payloads `]}`.
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"batch\":[");
    for (i, p) in payloads.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p.as_ref());
    }
    out.extend_from_slice(b"]}");
    out
}

/// Decodes a batch payload into its records (each the JSON object a single message on
/// `data/{dev}` would have carried), in order.
pub fn decode(payload: &[u8]) -> Result<Vec<Value>, BatchError> {
    let mut decoder = zstd::stream::read::Decoder::new(payload).map_err(BatchError::Zstd)?;
    let mut json = Vec::new();
    (&mut decoder)
        .take(MAX_DECODED + 1)
        .read_to_end(&mut json)
        .map_err(BatchError::Zstd)?;
    if json.len() as u64 > MAX_DECODED {
        return Err(BatchError::TooLarge);
    }
    let value: Value = serde_json::from_slice(&json)?;
    if value.get("v") != Some(&Value::from(FEED_VERSION)) {
        return Err(BatchError::Shape("\"v\" is not 1"));
    }
    match value {
        Value::Object(mut obj) => match obj.remove("batch") {
            Some(Value::Array(items)) => {
                if items.iter().all(Value::is_object) {
                    Ok(items)
                } else {
                    Err(BatchError::Shape("an item of \"batch\" is not an object"))
                }
            }
            _ => Err(BatchError::Shape("no \"batch\" array")),
        },
        _ => Err(BatchError::Shape("not an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_batch_decodes_to_the_records_exactly() {
        let items = [
            json!({"v":1,"gw":"gw-1","dev":"panel-n12","seq":41,"start":"2026-11-28T05:04:00.000Z",
                "end":"2026-11-28T05:04:10.000Z","ch":{"tilt_x":{"u":"deg","n":100,"mean":0.0123,
                "min":0.0101,"max":0.015,"last":0.0124,"std":0.0004}}}),
            json!({"v":1,"gw":"gw-1","dev":"lift-2","seq":42,"ts":"2026-11-28T05:04:03.250Z",
                "lift":{"floor":7}}),
        ];
        let payloads: Vec<Vec<u8>> = items.iter().map(|v| v.to_string().into_bytes()).collect();
        let batch = encode("gw-1", &payloads);
        assert_eq!(&batch[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
        let decoded = decode(&batch).expect("decodes");
        assert_eq!(decoded, items);
        // f32 statistics survive bit for bit (shortest round-trip text both ways).
        let x = 118.67683_f32;
        let p = vec![json!({"seq": 1, "mean": x}).to_string().into_bytes()];
        let back = decode(&encode("g", &p)).expect("decodes");
        assert_eq!(back[0]["mean"].as_f64().map(|v| v as f32), Some(x));
    }

    #[test]
    fn windows_are_told_from_lift_statuses() {
        use crate::feed::{LiftDirection, LiftDoor, LiftMode, LiftStatus, Message};
        let window = Message::Data {
            dev: "panel-1".into(),
            start: 1_700_000_000_000,
            end: 1_700_000_010_000,
            ch: Default::default(),
        };
        assert!(is_window(&window.render("gw-1", 123)));
        let lift = Message::LiftStatus {
            dev: "lift-1".into(),
            ts: 1_700_000_000_000,
            lift: LiftStatus {
                mode: LiftMode::Normal,
                floor: 7,
                direction: LiftDirection::Up,
                door: LiftDoor::Closed,
                running: true,
                door_zone: false,
                occupied: true,
                speed_mm_s: 1480,
                load_pct: 35,
                position_mm: 21350,
                fault_code: 0,
                run_count: 10234,
                door_cycles: 20561,
            },
            trip: None,
        };
        assert!(!is_window(&lift.render("gw-1", 124)));
        assert!(!is_window(b"{\"seq\":1}"));
        assert!(!is_window(b"garbage"));
    }

    #[test]
    fn bad_batches_are_refused_with_a_reason() {
        assert!(matches!(decode(b"{\"v\":1}"), Err(BatchError::Zstd(_))));
        let z = |s: &str| zstd::bulk::compress(s.as_bytes(), 1).expect("compress");
        assert!(matches!(decode(&z("nope")), Err(BatchError::Json(_))));
        assert!(matches!(
            decode(&z("{\"v\":2,\"batch\":[]}")),
            Err(BatchError::Shape(_))
        ));
        assert!(matches!(
            decode(&z("{\"v\":1,\"batch\":[1]}")),
            Err(BatchError::Shape(_))
        ));
        let bomb = vec![b' '; (MAX_DECODED + 10) as usize];
        let bomb = zstd::bulk::compress(&bomb, 1).expect("compress");
        assert!(matches!(decode(&bomb), Err(BatchError::TooLarge)));
        let mut cut = encode("g", &[b"{\"seq\":1}".to_vec()]);
        cut.truncate(cut.len() - 3);
        assert!(decode(&cut).is_err());
    }
}
