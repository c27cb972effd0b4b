#!/usr/bin/env bash
# Builds and runs roomcast on a fresh Debian machine (Rust, gcc, pkg-config present).
# Usage: ./scripts/run.sh [serve options], e.g. ./scripts/run.sh --config config/roomcast.toml
set -euo pipefail
cd "$(dirname "$0")/.."
if ! pkg-config --exists opus 2>/dev/null; then
  echo "run.sh: installing libopus-dev (AAC→Opus transcoding links the system libopus)" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq libopus-dev pkg-config >/dev/null
fi
exec cargo run --release --quiet -- serve "$@"
