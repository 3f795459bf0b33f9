//! Running as a systemd service: the unit file verifies, and the agent speaks the notify
//! protocol (READY, WATCHDOG while its loops run, STOPPING) over a real `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use towerlink_e2e::{binary, skip_or_fail, unique_gw, write_config, AgentProcess};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::Scenario;

#[test]
fn the_unit_file_verifies() -> anyhow::Result<()> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip_or_fail(
            "TOWERLINK_TEST_SKIP_SYSTEMD_ANALYZE",
            "systemd-analyze is not installed here (Debian package systemd)",
        );
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/towerlink.service");
    let text = std::fs::read_to_string(&unit)?;
    // Point the unit at the binary just built (the package installs it as /usr/bin/towerlink).
    let bin = binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("towerlink.service");
    std::fs::write(
        &local,
        text.replace("/usr/bin/towerlink", &bin.display().to_string()),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    ensure!(
        text.contains("Type=notify") && text.contains("WatchdogSec="),
        "the unit must use notify and the watchdog"
    );
    Ok(())
}

/// Receives notify datagrams until `pred` holds on what arrived, or the timeout.
fn receive_until(
    socket: &UnixDatagram,
    got: &mut Vec<String>,
    timeout: Duration,
    pred: impl Fn(&[String]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    while !pred(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if socket.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => return pred(got),
        }
    }
    true
}

#[test]
fn the_agent_notifies_ready_feeds_the_watchdog_and_says_stopping() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let scenario = Scenario::from_toml_str("seed = 9\n[[panels]]\nname = \"p\"\nnode = 1\n")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let n = &nodes[0];
    let text = format!(
        "[[node]]\nid = \"{}\"\nport = \"{}\"\nnode_id = {}\n",
        n.dev(),
        n.path().display(),
        n.node_id()
    );
    let config = write_config(dir.path(), &unique_gw("e2e-systemd"), &text)?;
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;
    let socket_str = socket_path.display().to_string();
    let mut agent = AgentProcess::start_with_env(
        &config,
        &[
            ("NOTIFY_SOCKET", socket_str.as_str()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    )?;
    let mut got = Vec::new();
    ensure!(
        receive_until(&socket, &mut got, Duration::from_secs(20), |g| g
            .iter()
            .any(|m| m == "READY=1")),
        "no READY=1: {got:?}\n{}",
        agent.log()
    );
    // WATCHDOG_USEC = 1 s: pings every half second while every loop beats.
    ensure!(
        receive_until(&socket, &mut got, Duration::from_secs(10), |g| g
            .iter()
            .filter(|m| *m == "WATCHDOG=1")
            .count()
            >= 4),
        "the watchdog was not fed: {got:?}"
    );
    agent.stop()?;
    ensure!(
        receive_until(&socket, &mut got, Duration::from_secs(5), |g| g
            .iter()
            .any(|m| m == "STOPPING=1")),
        "no STOPPING=1: {got:?}"
    );
    let ready = got.iter().position(|m| m == "READY=1").context("ready")?;
    let first_ping = got.iter().position(|m| m == "WATCHDOG=1").context("ping")?;
    ensure!(
        ready < first_ping,
        "the watchdog was fed before READY: {got:?}"
    );
    Ok(())
}

/// The thread of the agent named `name` (`/proc/<pid>/task/<tid>/comm`).
fn thread_named(pid: u32, name: &str) -> anyhow::Result<i32> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            return task
                .file_name()
                .to_string_lossy()
                .parse()
                .context("a task id that is not a number");
        }
    }
    anyhow::bail!("the agent has no thread named {name:?}")
}

/// README: the watchdog is fed "only while every loop beats". One source loop of a running
/// agent is stopped for real, as a driver stuck in the kernel would stop it: the test
/// ptrace-stops that one thread (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`), leaving every other
/// thread of the agent running. Then no `WATCHDOG=1` may arrive (systemd would restart the
/// agent) and the log names the loop; once the thread runs again, the pings come back.
#[test]
fn a_stalled_source_loop_withholds_the_watchdog_ping() -> anyhow::Result<()> {
    use nix::sys::ptrace;
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;

    let dir = tempfile::tempdir()?;
    // An I2C device on the simulated bus: its loop is a thread of its own, `i2c-<id>`.
    let text = "[[i2c]]\nid = \"stall\"\nbus = \"sim\"\nchip = \"nau7802\"\nrate_hz = 20\nwindow = \"2s\"\n";
    let config = write_config(dir.path(), &unique_gw("e2e-stall"), text)?;
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;
    let socket_str = socket_path.display().to_string();
    let mut agent = AgentProcess::start_with_env(
        &config,
        &[
            ("NOTIFY_SOCKET", socket_str.as_str()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    )?;
    let mut got = Vec::new();
    let pings = |g: &[String]| g.iter().filter(|m| *m == "WATCHDOG=1").count();
    ensure!(
        receive_until(&socket, &mut got, Duration::from_secs(20), |g| pings(g)
            >= 3),
        "the watchdog was not fed before the stall: {got:?}\n{}",
        agent.log()
    );
    let pid = agent.pid().context("the agent is not running")?;
    let tid = Pid::from_raw(thread_named(pid, "i2c-stall")?);

    ptrace::seize(tid, ptrace::Options::empty()).context("PTRACE_SEIZE of the I2C thread")?;
    ptrace::interrupt(tid).context("PTRACE_INTERRUPT")?;
    waitpid(tid, Some(WaitPidFlag::__WALL)).context("waiting for the thread to stop")?;

    // The watchdog looks every 500 ms and says once that it withholds the ping, naming
    // the loop; from then on no ping may come for as long as the stall lasts (4 s, 8 looks).
    let log_before = agent.log().len();
    let named = towerlink_e2e::wait_until(Duration::from_secs(5), || {
        agent
            .log()
            .get(log_before..)
            .is_some_and(|l| l.contains("withholding the watchdog ping") && l.contains("i2c stall"))
    });
    let before = got.len();
    receive_until(&socket, &mut got, Duration::from_secs(4), |_| false);
    let during: Vec<&String> = got[before..].iter().collect();
    let stalled_log = agent.log();

    ptrace::detach(tid, None).context("PTRACE_DETACH")?;
    ensure!(
        !during.iter().any(|m| *m == "WATCHDOG=1"),
        "the watchdog was fed while the I2C loop was stopped: {during:?}"
    );
    ensure!(
        named,
        "the log does not name the stalled loop `i2c stall`:\n{stalled_log}"
    );
    // Running again: the pings come back.
    let after = got.len();
    ensure!(
        receive_until(&socket, &mut got, Duration::from_secs(5), |g| pings(
            &g[after..]
        ) >= 2),
        "the watchdog pings did not come back after the loop ran again: {:?}",
        &got[after..]
    );
    ensure!(agent.is_running(), "the agent died: {}", agent.log());
    agent.stop()?;
    Ok(())
}
