#!/usr/bin/env bash
# Runs fuzz targets longer than CI does, growing their corpus in fuzz/work/.
#
#   bench/fuzz.sh TARGET SECONDS [libFuzzer args…]
#   bench/fuzz.sh all SECONDS [libFuzzer args…]     each target in turn
#
# e.g. `nice -n 10 bench/fuzz.sh rtmp_session 1200 -jobs=2 -workers=2`.
# Findings land in fuzz/artifacts/TARGET/; libFuzzer prints executions and
# coverage (cov:, ft:, corp:) as it goes and stat:: lines at the end.
# Minimise a grown corpus into the committed seeds with
#   $BIN fuzz/corpus/TARGET.min fuzz/work/TARGET -merge=1
# (see fuzz/README.md). See scripts/fuzz.sh for the build and the limits.
set -euo pipefail
[[ $# -ge 2 ]] || {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}
exec "$(dirname "${BASH_SOURCE[0]}")/../scripts/fuzz.sh" run "$@"
