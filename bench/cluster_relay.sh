#!/usr/bin/env bash
# The latency a cluster relay hop adds, on loopback: two roomcast nodes on one
# PostgreSQL, ffmpeg publishing to A, one process watching the stream on A
# and, through B's WHEP pull from A, on B, matching video RTP packets by their
# bytes (tests/cluster.rs bench_relay_hop_latency). Prints p50/p95/p99/max.
#   RELAY_BENCH_SECS=20 bench/cluster_relay.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --test cluster -- --ignored --nocapture bench_relay_hop_latency 2>&1 | grep -E "relay hop|test result|panicked"
