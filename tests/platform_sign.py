#!/usr/bin/env python3
"""A platform's signer, written apart from the agent (Python's `cryptography`), following
docs/mqtt-feed.md "Signed commands" to the letter.

    platform_sign.py SEED_HEX GW < command.json > signed.json

Reads one command (JSON object without ts/sigv/sig), adds `ts` (now, Unix ms) unless given
and `"sigv": 2`, and signs `towerlink-cmd-v2\\n{gw}\\n` followed by the canonical JSON of the
command without `sig` (keys sorted, no whitespace, non-ASCII unescaped). Prints the signed
command as JSON on one line.
"""

import json
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def main() -> int:
    seed_hex, gw = sys.argv[1], sys.argv[2]
    cmd = json.load(sys.stdin)
    cmd.setdefault("ts", int(time.time() * 1000))
    cmd["sigv"] = 2
    cmd.pop("sig", None)
    canonical = json.dumps(cmd, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = f"towerlink-cmd-v2\n{gw}\n{canonical}".encode("utf-8")
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
    cmd["sig"] = key.sign(text).hex()
    print(json.dumps(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
