#!/usr/bin/env bash
# roomcast's one test command (the README's, and what .ci/run calls).
#
# On a fresh Debian 12 machine (as root, or with sudo) it installs what the
# tests need and is missing — Debian packages (ffmpeg, chromium, firefox-esr, libopus-dev,
# pkg-config, cmake, openssl, nginx), a Python venv at .venv with aiortc and marionette-driver (tests/py/requirements.txt,
# wheels only), playwright-core, matrix-widget-api and ovenplayer in tests/browser
# (npm ci; it drives Debian's Chromium, no browser download) — then runs
#     cargo clippy --all-targets -- -D warnings
#     cargo test            (unit tests and the end-to-end tests in tests/; on a
#                           whole run the test binaries run side by side,
#                           scripts/test_lanes.py)
#     scripts/fuzz.sh ci    (every fuzz target for a fixed time; whole runs only)
# Extra arguments go to `cargo test`, e.g. ./scripts/test.sh --test media_browser -- --nocapture
# A second run with everything installed goes straight to clippy and the tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }
die() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}
START=$SECONDS
elapsed() { printf '(%ss)' "$((SECONDS - START))"; }

# --- 1. Debian packages ------------------------------------------------------
has_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
# tests/firefox.rs: Debian's stock Firefox (no OpenH264), driven over Marionette.
command -v firefox-esr >/dev/null 2>&1 || missing+=(firefox-esr)
has_pkg libopus-dev || missing+=(libopus-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
# libFuzzer (fuzz/, through libfuzzer-sys) is C++.
command -v g++ >/dev/null 2>&1 || missing+=(g++)
# The TLS tests make certificates and read the served one with openssl.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# tests/hls_cdn.rs runs the documented nginx proxy_cache config (its own process).
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)
# tests/restream*.rs push to nginx's RTMP module as a stand-in platform.
has_pkg libnginx-mod-rtmp || missing+=(libnginx-mod-rtmp)
# The storage tests run a private PostgreSQL cluster (initdb + postgres).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
# tests/rtmp_clients.rs publishes with GStreamer's rtmp2sink (x264enc, voaacenc, flvmux).
command -v gst-launch-1.0 >/dev/null 2>&1 || missing+=(gstreamer1.0-tools)
for p in gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly; do
    has_pkg "$p" || missing+=("$p")
done
# tests/obs_profile.rs runs OBS Studio 29 headless (Xvfb) and unpacks its zip with unzip.
command -v obs >/dev/null 2>&1 || missing+=(obs-studio)
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if ((${#missing[@]})); then
    step "installing Debian packages: ${missing[*]}"
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 ||
            die "missing ${missing[*]}; run this script as root, or: apt-get install ${missing[*]}"
        SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
        die "apt-get install ${missing[*]} failed"
fi

# --- 2. Python venv with aiortc (the independent WebRTC viewer) --------------
VENV="$ROOT/.venv"
REQ="$ROOT/tests/py/requirements.txt"
STAMP="$VENV/.roomcast-requirements"
if ! [[ -x "$VENV/bin/python" && -f "$STAMP" ]] || ! cmp -s "$REQ" "$STAMP" ||
    ! "$VENV/bin/python" -c "import aiortc, av, synapse, marionette_driver" >/dev/null 2>&1; then
    step "Python venv at .venv with aiortc ($(grep -m1 '^aiortc==' "$REQ")) $(elapsed)"
    # --clear empties the venv's directory: never one that belongs elsewhere.
    [[ ! -L "$VENV" ]] || die ".venv is a symlink to $(readlink -f "$VENV") and needs rebuilding; remove the link (another checkout's venv is not ours to clear)"
    python3 -m venv --clear "$VENV" || die "python3 -m venv failed (is python3-venv installed?)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: --no-binary=mozprofile -r "$REQ" ||
        die "pip install -r tests/py/requirements.txt failed"
    cp "$REQ" "$STAMP"
fi
# Keep the venv out of git without touching the repository's .gitignore.
[[ -f "$VENV/.gitignore" ]] || echo '*' >"$VENV/.gitignore"

# --- 3. playwright-core, matrix-widget-api and ovenplayer for the browser tests
# (widget/'s own npm packages are installed by build.rs when cargo builds.)
BROWSER_DIR="$ROOT/tests/browser"
if ! cmp -s "$BROWSER_DIR/package-lock.json" "$BROWSER_DIR/node_modules/.roomcast-lock" 2>/dev/null; then
    step "npm ci in tests/browser (playwright-core, matrix-widget-api, ovenplayer) $(elapsed)"
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/browser failed"
    cp "$BROWSER_DIR/package-lock.json" "$BROWSER_DIR/node_modules/.roomcast-lock"
fi

# --- 4. Lint and test ---------------------------------------------------------
export ROOMCAST_TEST_PYTHON="${ROOMCAST_TEST_PYTHON:-$VENV/bin/python}"
export ROOMCAST_TEST_NODE_DIR="${ROOMCAST_TEST_NODE_DIR:-$BROWSER_DIR}"

# The fuzz targets' build (step 5; about 11 min of CPU from cold, every
# dependency again with coverage instrumentation) starts now in the
# background, as SCHED_IDLE: it takes only CPU that clippy, the tests' build
# and the tests leave idle, and the tests spend most of their time waiting.
FUZZ_SECONDS="${ROOMCAST_FUZZ_SECONDS:-12}"
FUZZ_BUILD_PID=
if [[ $# -eq 0 && $FUZZ_SECONDS != 0 ]]; then
    FUZZ_BUILD_LOG="$(mktemp)"
    idle=(nice -n 19)
    chrt --idle 0 true 2>/dev/null && idle=(chrt --idle 0)
    step "building the fuzz targets in the background on idle CPU (${idle[*]}) $(elapsed)"
    # Its own session, so an early exit stops cargo and every rustc with it.
    # A new session is also a new autogroup, which the kernel weighs against
    # the others as nice 0 whatever its tasks' policy: set it to nice 19
    # (measured: at 0 it doubled clippy's and the tests' cold builds).
    setsid bash -c 'echo 19 >/proc/self/autogroup 2>/dev/null; exec "$@"' fuzz-build \
        "${idle[@]}" ./scripts/fuzz.sh build >"$FUZZ_BUILD_LOG" 2>&1 &
    FUZZ_BUILD_PID=$!
    trap '[[ -z $FUZZ_BUILD_PID ]] || kill -- "-$FUZZ_BUILD_PID" 2>/dev/null || true' EXIT
fi

step "cargo clippy --all-targets -- -D warnings $(elapsed)"
cargo clippy --all-targets -- -D warnings || die "clippy found problems (see above)"

if [[ $# -eq 0 ]]; then
    # A whole run: every test binary, ROOMCAST_TEST_LANES (default 2) at a
    # time (scripts/test_lanes.py; most tests wait on browsers and timeouts).
    step "cargo test, test binaries side by side (scripts/test_lanes.py) $(elapsed)"
    python3 ./scripts/test_lanes.py ||
        die "tests failed (see above; a failing end-to-end test prints the server's log tail)"
else
    step "cargo test $* $(elapsed)"
    cargo test "$@" || die "tests failed (see above; a failing end-to-end test prints the server's log tail)"
fi

# --- 5. Fuzz targets -----------------------------------------------------------
# Every parser's fuzz target (fuzz/), each for a fixed time on its seed corpus;
# a crash, timeout or OOM fails the run. Only on a whole run (no arguments);
# ROOMCAST_FUZZ_SECONDS sets the time per target (0 skips).
if [[ -n $FUZZ_BUILD_PID ]]; then
    step "waiting for the fuzz targets' background build $(elapsed)"
    if ! wait "$FUZZ_BUILD_PID"; then
        FUZZ_BUILD_PID=
        tail -n 80 "$FUZZ_BUILD_LOG" >&2
        die "building the fuzz targets failed (see above; scripts/fuzz.sh build)"
    fi
    FUZZ_BUILD_PID=
    rm -f "$FUZZ_BUILD_LOG"
    step "fuzz targets, ${FUZZ_SECONDS}s each (scripts/fuzz.sh ci) $(elapsed)"
    ./scripts/fuzz.sh ci "$FUZZ_SECONDS" ||
        die "a fuzz target failed (see above; the input is in fuzz/artifacts/, see fuzz/README.md)"
fi

step "all checks passed $(elapsed)"
