//! The contract's batch decoder in another language (`docs/decoders/batch.py`, Python, written
//! from `docs/mqtt-feed.md` alone) decodes what the agent's `feed::batch` encodes: the same
//! items, every `seq` and every statistic bit for bit.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context};
use serde_json::Value;
use towerlink_agent::feed::{batch, ChannelWindow, Message, Renderer, Topics};

#[test]
fn the_python_decoder_reads_the_agent_s_batches_exactly() -> anyhow::Result<()> {
    let renderer = Renderer::new("sh-ja-0001", Topics::new("towerlink/v1", "sh-ja-0001"));
    let mut payloads = Vec::new();
    for i in 0..50u64 {
        let mut ch = std::collections::BTreeMap::new();
        let x = 118.67683_f32 + i as f32 * 0.001_953_125;
        ch.insert(
            "strain".to_owned(),
            ChannelWindow {
                u: "ustrain",
                n: 500,
                expected: 500,
                mean: x,
                min: x - 5.364_532,
                max: x + 7.053_58,
                last: x + 0.796_955,
                std: 1.870_337_5,
            },
        );
        let m = Message::Data {
            dev: format!("panel-n{:02}", i % 40),
            start: 1_795_824_000_000 + i as i64 * 10_000,
            end: 1_795_824_010_000 + i as i64 * 10_000,
            ch,
        };
        payloads.push(renderer.render(&m).payload(1000 + i));
    }
    let encoded = batch::encode("sh-ja-0001", &payloads);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/decoders/batch.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3 (with the zstandard package) runs the contract's decoder")?;
    child.stdin.take().context("stdin")?.write_all(&encoded)?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "decoder failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python: Vec<Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let originals: Vec<Value> = payloads
        .iter()
        .map(|p| serde_json::from_slice(p))
        .collect::<Result<_, _>>()?;
    ensure!(
        python == originals,
        "python's items differ from the records"
    );
    ensure!(batch::decode(&encoded)? == originals, "rust's items differ");
    for (i, item) in python.iter().enumerate() {
        ensure!(item["seq"] == 1000 + i as u64, "seq {i}: {item}");
        let mean = item["ch"]["strain"]["mean"].as_f64().context("mean")? as f32;
        ensure!(
            mean.to_bits() == (118.67683_f32 + i as f32 * 0.001_953_125).to_bits(),
            "mean {i} not bit-exact"
        );
    }
    // A damaged batch is refused, not half-read.
    let mut cut = encoded.clone();
    cut.truncate(cut.len() / 2);
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(&cut)?;
    ensure!(!child.wait()?.success(), "a cut batch must fail to decode");
    Ok(())
}
