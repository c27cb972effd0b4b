#!/usr/bin/env bash
# roomcast's fuzz targets (fuzz/, libFuzzer through libfuzzer-sys).
#
#   scripts/fuzz.sh build                 build every target
#   scripts/fuzz.sh ci [SECONDS]          build, then run each target SECONDS
#                                         (default 24) on its seed corpus, one
#                                         per core (ROOMCAST_FUZZ_JOBS); fails
#                                         on any crash, timeout or OOM
#   scripts/fuzz.sh run TARGET|all SECONDS [libFuzzer args…]
#                                         run longer (what bench/fuzz.sh does),
#                                         growing fuzz/work/TARGET
#
# Built with plain cargo and the flags `cargo fuzz build -s none` passes
# (sancov instrumentation, --cfg fuzzing, debug assertions), so a fresh
# machine needs no cargo-fuzz install (5 min of build of its own here);
# `cargo fuzz run -s none TARGET` works as well for a developer who has it.
# The build goes to $FUZZ_TARGET_DIR (default: fuzz under the main target
# directory) and uses fuzz/Cargo.toml's release profile (opt-level 1, many
# codegen units: fast cold builds, debug assertions and overflow checks on).
#
# Limits, the same in CI and long runs: an input running over 10 s is a
# finding (-timeout), so is growing past 2 GiB RSS (-rss_limit_mb) or one
# allocation over 512 MiB (-malloc_limit_mb). Findings land in
# fuzz/artifacts/TARGET/ (crash-…, timeout-…, oom-…).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/fuzz}"
BIN_DIR="$TARGET_DIR/$TRIPLE/release"
LIMITS=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512)

die() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

targets() {
    local f
    for f in fuzz/fuzz_targets/*.rs; do
        basename "$f" .rs
    done
}

build() {
    # A target is its file in fuzz/fuzz_targets/; cargo builds it only
    # with its [[bin]] in fuzz/Cargo.toml.
    local t
    for t in $(targets); do
        grep -qF "path = \"fuzz_targets/$t.rs\"" fuzz/Cargo.toml ||
            die "fuzz/fuzz_targets/$t.rs has no [[bin]] in fuzz/Cargo.toml (name = \"$t\")"
    done
    local flags=(
        -Cpasses=sancov-module
        -Cllvm-args=-sanitizer-coverage-level=4
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
        -Cllvm-args=-sanitizer-coverage-pc-table
        -Cllvm-args=-sanitizer-coverage-trace-compares
        -Cllvm-args=-sanitizer-coverage-stack-depth
        -Cllvm-args=-simplifycfg-branch-fold-threshold=0
        --cfg fuzzing
        -Cdebug-assertions
    )
    # The targets fuzz parsers, never the web pages: an empty page table
    # (build.rs's ROOMCAST_WIDGET_DIST) spares this build npm and esbuild, and
    # a fresh checkout an `npm ci` in widget/ racing the main build's (CI
    # builds these beside clippy and the tests).
    local no_pages="$TARGET_DIR/no-pages"
    mkdir -p "$no_pages"
    # --target keeps the flags off build scripts and proc macros.
    ROOMCAST_WIDGET_DIST="$no_pages" RUSTFLAGS="${flags[*]}" cargo build --manifest-path fuzz/Cargo.toml --release \
        --target "$TRIPLE" --target-dir "$TARGET_DIR" --bins
}

# run TARGET SECONDS WORK_DIR [args…]: new inputs go to WORK_DIR, the seed
# corpus is only read.
run_one() {
    local t=$1 secs=$2 work=$3
    shift 3
    mkdir -p "$work" "fuzz/artifacts/$t"
    "$BIN_DIR/$t" "$work" "fuzz/corpus/$t" "${LIMITS[@]}" -max_total_time="$secs" \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" "$@"
}

case "${1:-}" in
build)
    build
    ;;
ci)
    secs="${2:-24}"
    build
    # libFuzzer runs one process per target: as many side by side as there
    # are cores (ROOMCAST_FUZZ_JOBS), each target still gets its SECONDS.
    jobs="${ROOMCAST_FUZZ_JOBS:-$(nproc)}"
    results="$(mktemp -d)"
    ci_one() {
        local t=$1 work
        work="$(mktemp -d)"
        if run_one "$t" "$secs" "$work" -close_fd_mask=1 >"$results/$t.log" 2>&1; then
            echo ok >"$results/$t.status"
        fi
        rm -rf "$work"
    }
    running=0
    for t in $(targets); do
        if ((running >= jobs)); then
            wait -n
            running=$((running - 1))
        fi
        ci_one "$t" &
        running=$((running + 1))
    done
    wait
    failed=()
    for t in $(targets); do
        printf '\n==> fuzz %s for %ss\n' "$t" "$secs" >&2
        if [[ -f "$results/$t.status" ]]; then
            grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$results/$t.log" >&2 || true
        else
            tail -n 60 "$results/$t.log" >&2
            failed+=("$t")
        fi
    done
    rm -rf "$results"
    ((${#failed[@]} == 0)) || die "fuzz targets found problems: ${failed[*]} (inputs in fuzz/artifacts/)"
    ;;
run)
    [[ $# -ge 3 ]] || die "usage: scripts/fuzz.sh run TARGET|all SECONDS [libFuzzer args…]"
    t=$2 secs=$3
    shift 3
    [[ -x "$BIN_DIR/${t/all/config}" ]] || build
    if [[ $t == all ]]; then
        for x in $(targets); do
            run_one "$x" "$secs" "fuzz/work/$x" "$@"
        done
    else
        [[ -f fuzz/fuzz_targets/$t.rs ]] || die "no target $t; targets: $(targets | tr '\n' ' ')"
        run_one "$t" "$secs" "fuzz/work/$t" "$@"
    fi
    ;;
*)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
