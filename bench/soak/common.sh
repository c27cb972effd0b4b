# Shared by the soak scripts (on top of bench/common.sh): where results go and a
# sampler that writes the server's RSS, open fds and threads every few seconds.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"

# results_dir NAME: bench/soak/results/NAME-<UTC time>, created; sets OUT.
results_dir() {
  OUT="${SOAK_OUT:-$ROOT/bench/soak/results/$1-$(date -u +%Y%m%dT%H%MZ)}"
  mkdir -p "$OUT"
}

# sample_server PID FILE [SECONDS]: "unix_time rss_kib fds threads" lines until
# PID exits; sets SAMPLER_PID.
sample_server() {
  local pid=$1 file=$2 every=${3:-5}
  (
    echo "# unix_time rss_kib fds threads" >"$file"
    while [[ -e /proc/$pid/status ]]; do
      rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || break
      thr=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || break
      fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
      echo "$(date +%s) $rss $fds $thr" >>"$file"
      sleep "$every"
    done
  ) &
  SAMPLER_PID=$!
  PUBLISHER_PIDS="${PUBLISHER_PIDS:-} $SAMPLER_PID"
}
