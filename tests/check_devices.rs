//! `towerlink check` on lifts and I2C devices: a lift that answers, a unit that does not, a
//! simulated I2C chip, and an I2C bus that does not exist.

use std::process::Command;

use anyhow::ensure;
use towerlink_e2e::{binary, unique_gw, write_config};
use towerlink_sim::lift::{BusOptions, LiftBus, LiftSpec};

#[test]
fn check_reports_lifts_and_i2c_devices() -> anyhow::Result<()> {
    // One paced lift bus at a time on the machine (see `exclusive`).
    let _bus = towerlink_e2e::exclusive("lift-bus")?;
    let bin = binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let mut options = BusOptions::new(4)?;
    options.baud = 115_200;
    let spec = LiftSpec {
        id: "lift-1".into(),
        unit: 1,
        bottom_floor: 0,
        top_floor: 5,
        rated_speed_mm_s: 1000,
        auto_calls: false,
    };
    let bus = LiftBus::spawn(&dir.path().join("ports/rs485"), vec![spec], options)?;
    let lift = |id: &str, unit: u8| {
        format!(
            "[[lift]]\nid = \"{id}\"\nport = \"{}\"\nbaud = 115200\nunit = {unit}\ntop_floor = 5\nbottom_floor = 0\nrated_speed_mm_s = 1000\n\n",
            bus.path().display()
        )
    };
    let text = format!(
        "{}{}[[i2c]]\nid = \"tilt-sim\"\nbus = \"sim\"\nchip = \"adxl355\"\n\n[[i2c]]\nid = \"tilt-gone\"\nbus = \"/dev/i2c-99\"\nchip = \"adxl355\"\n",
        lift("lift-1", 1),
        lift("lift-9", 9)
    );
    let config = write_config(dir.path(), &unique_gw("e2e-check"), &text)?;
    let out = Command::new(&bin)
        .args(["check", "--config"])
        .arg(&config)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or("")
            .to_owned()
    };
    ensure!(
        !out.status.success(),
        "check passed with a silent lift and a missing bus:\n{text}"
    );
    ensure!(
        line("lift lift-1").starts_with("OK") && line("lift lift-1").contains("answers"),
        "{text}"
    );
    ensure!(
        line("lift lift-9").starts_with("FAIL")
            && line("lift lift-9").contains("unit 9 did not answer"),
        "{text}"
    );
    ensure!(
        line("i2c tilt-sim").starts_with("OK") && line("i2c tilt-sim").contains("simulated"),
        "{text}"
    );
    ensure!(
        line("i2c tilt-gone").starts_with("FAIL") && line("i2c tilt-gone").contains("/dev/i2c-99"),
        "{text}"
    );
    // The ids line names every device the feed will carry, by kind.
    ensure!(
        line("ids:").starts_with("OK  ids: gateway e2e-check")
            && line("ids:")
                .contains("; nodes [none]; i2c [tilt-sim, tilt-gone]; lifts [lift-1, lift-9]"),
        "{text}"
    );

    // A lift has nothing to zero: said as such, through the agent and --direct alike, before
    // any broker or port is tried (none runs here), and for a name the file lacks, the list.
    for direct in [false, true] {
        let mut zero = Command::new(&bin);
        zero.args(["zero", "lift-1", "floor", "--config"])
            .arg(&config);
        if direct {
            zero.arg("--direct");
        }
        let out = zero.output()?;
        let said = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.code() == Some(2),
            "zero lift-1 (direct {direct}): {said}"
        );
        ensure!(
            said.starts_with(
                "FAIL zero lift-1 floor: lift-1 is a lift: lifts have nothing to zero"
            ),
            "zero lift-1 (direct {direct}): {said}"
        );
    }
    let out = Command::new(&bin)
        .args(["zero", "lift-7", "floor", "--config"])
        .arg(&config)
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(2)
            && said.contains("no device \"lift-7\" in the configuration (devices that can be zeroed: tilt-sim, tilt-gone)"),
        "{said}"
    );
    bus.stop();
    Ok(())
}

#[test]
fn check_flags_a_password_file_others_can_read() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bin = binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret-not-for-logs\n")?;
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644))?;
    let config = write_config(dir.path(), &unique_gw("e2e-perm"), "")?;
    let text = std::fs::read_to_string(&config)?.replace(
        "keep_alive = \"5s\"",
        &format!(
            "keep_alive = \"5s\"\nusername = \"gw\"\npassword_file = \"{}\"",
            password.display()
        ),
    );
    std::fs::write(&config, text)?;
    let out = Command::new(&bin)
        .args(["check", "--config"])
        .arg(&config)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.status.success(),
        "a world-readable password file passed: {stdout}"
    );
    ensure!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL secret files") && l.contains("password_file")),
        "{stdout}"
    );
    ensure!(
        !stdout.contains("s3cret"),
        "the password leaked into check's output"
    );
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600))?;
    let out = Command::new(&bin)
        .args(["check", "--config"])
        .arg(&config)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout
            .lines()
            .any(|l| l.starts_with("OK") && l.contains("secret files")),
        "{stdout}"
    );
    Ok(())
}
