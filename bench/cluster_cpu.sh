#!/usr/bin/env bash
# The origin's CPU with its viewers on two edges against the same viewers on
# the origin itself: three roomcast nodes on one PostgreSQL, ffmpeg publishing
# 640×360 H.264 + AAC (transcoded to Opus) to A; N light str0m viewers
# (examples/loadgen: ICE, DTLS, RTCP; RTP counted, not decrypted) on A, then
# N/2 on B and N/2 on C, which each pull the stream from A once. Each node's
# CPU from /proc over the same window (tests/cluster.rs bench_origin_cpu).
# Debug build (the tests' binary): compare the figures with each other, not
# with the release-build fan-out table.
#   CLUSTER_CPU_VIEWERS=100 CLUSTER_CPU_SECS=20 bench/cluster_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --example loadgen
cargo test --test cluster -- --ignored --nocapture bench_origin_cpu 2>&1 |
  grep -E "cluster CPU|viewers on A|on B \+|loadgen|origin CPU|test result|panicked"
