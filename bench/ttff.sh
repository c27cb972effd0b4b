#!/usr/bin/env bash
# Time to first frame: WHEP POST → first decoded frame in headless Chromium,
# on loopback, against a release build. Usage: bench/ttff.sh [runs]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
RUNS=${1:-30}
build_release
start_server
publish 2500
cd "$ROOT"
node bench/ttff.mjs --base "http://$HTTP" --stream "$STREAM" --runs "$RUNS"
