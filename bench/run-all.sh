#!/usr/bin/env bash
# Runs every benchmark in turn: footprint, accept, pending list, polling, token pairing,
# replication.
#
# usage: bench/run-all.sh [--quick] [--no-record|--record]
#   --quick  a smoke run of a few seconds per benchmark; records nothing unless --record
set -euo pipefail
dir=$(dirname "$0")
# Build once, before anything is timed.
(cd "$dir/.." && cargo build --release --locked --quiet --bin replgate --example bench_client)
for bench in footprint accept pending polling token-pairing replicate; do
  echo "==== bench/$bench.sh $*" >&2
  BENCH_BIN=${BENCH_BIN:-$dir/../target/release/replgate} \
    BENCH_CLIENT=${BENCH_CLIENT:-$dir/../target/release/examples/bench_client} \
    bash "$dir/$bench.sh" "$@"
done
