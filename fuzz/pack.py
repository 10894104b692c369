#!/usr/bin/env python3
"""Packs a libFuzzer corpus directory into one file, or unpacks it again.

fuzz/minimized/<target>.corpus holds the minimized corpus of the last long run (see
docs/testing.md, "Coverage-guided fuzzing"): one record per input, a 4-byte big-endian
length and the bytes, in file-name order. `cargo test` replays every record
(tests/it/fuzz_checks/mod.rs); .ci/fuzz.sh unpacks it as a read-only corpus.

  pack.py pack DIR FILE      every regular file directly in DIR, into FILE
  pack.py unpack FILE DIR    each record into DIR/min-<index>
"""
import os
import struct
import sys


def pack(src, out):
    names = sorted(n for n in os.listdir(src) if os.path.isfile(os.path.join(src, n)))
    with open(out + ".tmp", "wb") as f:
        for n in names:
            data = open(os.path.join(src, n), "rb").read()
            f.write(struct.pack(">I", len(data)))
            f.write(data)
    os.replace(out + ".tmp", out)
    print(f"{out}: {len(names)} inputs")


def unpack(src, out):
    os.makedirs(out, exist_ok=True)
    data = open(src, "rb").read()
    at, i = 0, 0
    while at < len(data):
        if at + 4 > len(data):
            sys.exit(f"{src}: truncated record header at byte {at}")
        (n,) = struct.unpack(">I", data[at : at + 4])
        if at + 4 + n > len(data):
            sys.exit(f"{src}: record {i} runs past the end")
        with open(os.path.join(out, f"min-{i:05}"), "wb") as f:
            f.write(data[at + 4 : at + 4 + n])
        at += 4 + n
        i += 1


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(sys.argv[2], sys.argv[3])
