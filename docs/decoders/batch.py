#!/usr/bin/env python3
"""Decodes a towerlink telemetry batch ({root}/{gw}/batch, docs/mqtt-feed.md), written from
the contract alone: a zstd frame (RFC 8878) holding {"v":1,"gw":...,"batch":[...]}, each item
the payload a single data/{dev} message would have carried.

    python3 batch.py < payload.bin      # prints one JSON item per line

Needs the `zstandard` package (pip install zstandard).
"""
import json
import sys

import zstandard

MAX_DECODED = 16 << 20  # a batch never inflates beyond 16 MiB


def decode(payload: bytes) -> list:
    """The batch's items, in seq order; ValueError for anything that is not a v1 batch."""
    reader = zstandard.ZstdDecompressor().stream_reader(payload)
    raw = reader.read(MAX_DECODED + 1)
    if len(raw) > MAX_DECODED:
        raise ValueError("batch inflates beyond 16 MiB")
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise ValueError("not a v1 batch")
    items = doc.get("batch")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError("no batch array of objects")
    return items


if __name__ == "__main__":
    for item in decode(sys.stdin.buffer.read()):
        print(json.dumps(item, separators=(",", ":")))
