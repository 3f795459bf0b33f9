#!/usr/bin/env bash
# The gateway agent on ARM, tested, not just built: builds the static aarch64 agent
# (aarch64-unknown-linux-musl, cross compiler from .cargo/config.toml) and runs a real part of
# the end-to-end suite against it under qemu-user (Debian qemu-user-static):
#   tower       a simulated tower's panel feed: birth, windows checked against what the nodes
#               sent, garbage on the line, seq continuity across a restart, the last will
#   lifts       a Modbus RTU lift bus: statuses following trips floor by floor
#   tls         mTLS: refused without a client certificate, then the backlog delivered with one
#   mtls_tools  `tail --from-broker` and `zero` (the ARM binary's CLI) against an mTLS-only broker
# The simulators, brokers and the tests run natively; only the agent is the ARM binary
# (tests/harness: TOWERLINK_AGENT_BIN, TOWERLINK_AGENT_WRAPPER, TOWERLINK_TEST_TIME_FACTOR).
#
# Needs: rustup target aarch64-unknown-linux-musl, Debian gcc-aarch64-linux-gnu and
# qemu-user-static, and the test broker (Mosquitto on 127.0.0.1:1883 or TOWERLINK_TEST_BROKER).
#
#   packaging/arm-e2e.sh            build + the e2e tests
#   packaging/arm-e2e.sh --rss      also: the agent's memory on the nominal tower (60 s)
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-musl
qemu=${TOWERLINK_QEMU:-qemu-aarch64-static}
factor=${TOWERLINK_TEST_TIME_FACTOR:-3}

command -v "$qemu" >/dev/null || {
  echo "arm-e2e: $qemu not found (apt-get install qemu-user-static)" >&2
  exit 1
}

echo "arm-e2e: building the agent for $target"
cargo build --release --locked -p towerlink-agent --bin towerlink --target "$target"
bin="$PWD/target/$target/release/towerlink"

# It must really be a static aarch64 ELF (e_machine 0xb7 = EM_AARCH64, no interpreter).
machine=$(od -An -tx1 -j18 -N2 "$bin" | tr -d ' \n')
[ "$machine" = "b700" ] || {
  echo "arm-e2e: $bin is not an aarch64 ELF (e_machine $machine)" >&2
  exit 1
}
if LC_ALL=C grep -q "/lib/ld-linux" "$bin"; then
  echo "arm-e2e: $bin asks for a dynamic loader; expected a static binary" >&2
  exit 1
fi
echo "arm-e2e: $("$qemu" "$bin" --version) ($(stat -c %s "$bin") bytes) under $("$qemu" --version | head -n 1)"

export TOWERLINK_AGENT_BIN="$bin"
export TOWERLINK_AGENT_WRAPPER="$qemu"
export TOWERLINK_TEST_TIME_FACTOR="$factor"
# One test at a time: the emulated agent is CPU-bound, and timing-bound tests must not starve.
cargo test --locked -p towerlink-e2e \
  --test tower --test lifts --test tls --test mtls_tools -- --exact --test-threads=1 \
  a_simulated_tower_reaches_the_platform \
  the_lift_status_follows_trips_floor_by_floor \
  no_client_certificate_is_refused_and_a_restart_with_one_delivers_the_backlog \
  tail_from_the_broker_and_zero_work_against_an_mtls_only_broker

[ "${1:-}" = --rss ] || exit 0

# The agent's memory on the nominal tower: the built-in scenario's five panel nodes
# (simulators/scenarios/tower.toml) and the demo's two lifts on one RS-485 bus, publishing to the
# test broker for 60 s. Under qemu-user the process holds the emulator and its translated code
# too; the translation buffer is reported apart.
broker=${TOWERLINK_TEST_BROKER:-127.0.0.1:1883}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --locked -q -p towerlink-sim --bin towerlink-sim
sim=target/debug/towerlink-sim
"$sim" nodes --scenario simulators/scenarios/tower.toml --dir "$work" --duration 120s >"$work/nodes.txt" &
pids+=($!)
"$sim" lifts --dir "$work" --duration 120s >"$work/lifts.txt" &
pids+=($!)
for _ in $(seq 1 100); do
  [ "$(wc -l <"$work/nodes.txt")" -ge 5 ] && [ "$(wc -l <"$work/lifts.txt")" -ge 3 ] && break
  sleep 0.1
done
{
  printf '[gateway]\nid = "arm-rss"\n\n[mqtt]\nurl = "mqtt://%s"\n\n[store]\npath = "%s/store"\n\n[health]\ninterval = "10s"\n' "$broker" "$work"
  # `towerlink-sim nodes` prints `node <dev> node id <id> on <path>` per node.
  while read -r tag dev _ _ node _ port; do
    [ "$tag" = node ] || continue
    printf '\n[[node]]\nid = "%s"\nport = "%s"\nnode_id = %s\n' "$dev" "$port" "$node"
  done <"$work/nodes.txt"
  bus=$(awk '/^bus /{print $2}' "$work/lifts.txt")
  awk -v bus="$bus" '/^lift /{split($6, f, /\.\.=/); printf "\n[[lift]]\nid = \"%s\"\nport = \"%s\"\nbaud = 9600\nunit = %s\nprofile = \"generic\"\nbottom_floor = %s\ntop_floor = %s\nrated_speed_mm_s = %s\n", $2, bus, $4, f[1], f[2], $8}' "$work/lifts.txt"
} >"$work/towerlink.toml"
TOWERLINK_LOG=info "$qemu" "$bin" run --config "$work/towerlink.toml" 2>"$work/agent.log" &
agent=$!
pids+=("$agent")
sleep 60
kill -0 "$agent" 2>/dev/null || {
  cat "$work/agent.log" >&2
  echo "arm-e2e: the agent stopped on the nominal tower" >&2
  exit 1
}
grep -q "RS-485 bus open" "$work/agent.log" || {
  cat "$work/agent.log" >&2
  echo "arm-e2e: the lift bus did not open" >&2
  exit 1
}
rss=$(awk '/^VmRSS/{print $2}' "/proc/$agent/status")
hwm=$(awk '/^VmHWM/{print $2}' "/proc/$agent/status")
# qemu-user's translation buffer: its one large rwx (or split r-x + rw-) anonymous mapping.
tcg=$(awk '/^[0-9a-f]+-[0-9a-f]+ /{big=0; if ($2 ~ /x/ && $6 == "") big=1} big && /^Rss:/{s+=$2} END{print s+0}' "/proc/$agent/smaps")
echo "arm-e2e: nominal tower (5 panel nodes, 2 lifts) under qemu-user, after 60 s: VmRSS ${rss} KiB, VmHWM ${hwm} KiB, of which translated code ${tcg} KiB (agent + emulator without it: $((rss - tcg)) KiB)"
kill -TERM "$agent"
wait "$agent" || true
