#!/usr/bin/env bash
# The time from an origin's death to frames flowing again on an edge, RUNS
# times (tests/cluster.rs an_edge_re_pulls_when_the_origin_dies_and_the_publisher_moves):
# three nodes, ffmpeg publishing to A, viewers on C (aiortc and a str0m
# probe) through C's pull; A is SIGKILLed, ffmpeg starts again on B, and
# the probe's first video packet from B's publisher is timed from the kill
# (ffmpeg's restart included, and printed apart). Debug build.
#   RUNS=5 bench/cluster_failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for _ in $(seq 1 "${RUNS:-5}"); do
  cargo test --test cluster -- --nocapture an_edge_re_pulls_when_the_origin_dies 2>&1 |
    grep -E "origin SIGKILLed|test result: F|panicked" || true
done
