#!/usr/bin/env bash
# The ARM side of the batch_codecs bench (README, "Which codec"): the instructions an aarch64
# core executes to compress the nominal tower's batches, per codec, counted under qemu-aarch64
# (Debian's qemu-user: its dynamic qemu-aarch64 loads TCG plugins; the static one does not).
#
#   simulators/benches/qemu/arm_codecs.sh [BATCH_DIR]
#
# BATCH_DIR holds batches that feed_bytes wrote (FEED_BYTES_DUMP=BATCH_DIR); without it they
# are made first (one simulated hour). Needs gcc-aarch64-linux-gnu, qemu-user and the rustup
# target aarch64-unknown-linux-musl. Prints instructions per batch for each codec, the
# baseline (reading the files) subtracted.
set -euo pipefail
cd "$(dirname "$0")/../../.."
dir=${1:-}
if [ -z "$dir" ]; then
  dir=$(mktemp -d)
  FEED_BYTES_DUMP="$dir" FEED_BYTES_ONLY="CBOR + zstd 19" cargo bench -q -p towerlink-sim --bench feed_bytes >/dev/null
fi
n=$(ls "$dir"/batch-*.json | wc -l)
plugin=$(mktemp -d)/libinsncount.so
gcc -O2 -shared -fPIC -o "$plugin" simulators/benches/qemu/insncount.c -Wl,--unresolved-symbols=ignore-all
bin=$(cargo bench -q --no-run -p towerlink-sim --bench batch_codecs --target aarch64-unknown-linux-musl --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "batch_codecs" and m.get("executable"):
        print(m["executable"])')
count() {
  BATCH_CODECS_NO_CHECK=1 BATCH_CODECS_ONLY=$1 qemu-aarch64 -plugin "$plugin" "$bin" "$dir" 2>&1 >/dev/null |
    sed -n 's/^insncount: \([0-9]*\) guest instructions$/\1/p'
}
base=$(count none)
echo "aarch64 instructions per batch ($n batches in $dir; baseline $base)"
for codec in lz4 zstd1 zstd3 zstd9 zstd12 zstd15 zstd19 cbor-zstd3 cbor-zstd19; do
  total=$(count "$codec")
  awk -v c="$codec" -v t="$total" -v b="$base" -v n="$n" 'BEGIN { printf "%-12s %8.1f M\n", c, (t - b) / n / 1e6 }'
done
