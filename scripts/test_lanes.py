#!/usr/bin/env python3
"""Runs roomcast's test binaries side by side (what `scripts/test.sh` does on
a whole run).

`cargo test` runs its test binaries one after another, and most of roomcast's
end-to-end tests spend their time waiting on a browser, Synapse, ffmpeg or a
timeout: the machine sat ~80 % idle through a whole run. This builds every
test binary once (`cargo test --no-run`), then runs them LANES at a time
(ROOMCAST_TEST_LANES, default 2), longest first by the last run's times
(kept in the target directory), each in its own process group; a binary
that overruns ROOMCAST_TEST_BINARY_TIMEOUT (default 1200 s) is killed with
that group and every process under it (a test may start a browser in a
group of its own). A binary's output is printed whole when it ends, so
lanes never interleave; failures are listed again at the end.

The test binaries already expect company: ports come from
`tests/common`'s per-process allocator and every server, Synapse and
browser profile lives in its own temporary directory.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_number(name, default):
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        sys.exit(f"error: {name}={raw!r} is not a whole number")
    if value < 1:
        sys.exit(f"error: {name} must be at least 1")
    return value


LANES = env_number("ROOMCAST_TEST_LANES", 2)
BINARY_TIMEOUT = env_number("ROOMCAST_TEST_BINARY_TIMEOUT", 1200)
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
TIMES_FILE = os.path.join(TARGET_DIR, "roomcast-test-times.json")


def build():
    """Builds every test binary; returns [(label, argv)] to run."""
    cmd = ["cargo", "test", "--no-run", "--message-format=json-render-diagnostics"]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit("error: cargo test --no-run failed (see above)")
    jobs = []
    has_lib = False
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact":
            continue
        target = msg["target"]
        if "lib" in target["kind"]:
            has_lib = True
        if not msg["profile"]["test"] or not msg.get("executable"):
            continue
        src = os.path.relpath(target["src_path"], ROOT)
        kind = target["kind"][0]
        label = f"unittests {src}" if kind in ("lib", "bin") else src
        jobs.append((label, [msg["executable"]]))
    if has_lib:
        jobs.append(("doc-tests", ["cargo", "test", "--doc"]))
    return jobs


def load_times():
    try:
        with open(TIMES_FILE) as f:
            return {k: float(v) for k, v in json.load(f).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def save_times(times):
    try:
        os.makedirs(TARGET_DIR, exist_ok=True)
        tmp = TIMES_FILE + ".tmp"
        with open(tmp, "w") as f:
            json.dump(times, f, indent=1, sort_keys=True)
        os.replace(tmp, TIMES_FILE)
    except OSError as e:
        print(f"note: could not keep test times in {TIMES_FILE}: {e}", file=sys.stderr)


def descendants(root):
    """Every process under `root` now (children, theirs, ...), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
            # The fields after the command name (which may hold spaces):
            # state, then the parent's pid.
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class Running:
    def __init__(self, label, argv):
        self.label = label
        self.out = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def elapsed(self):
        return time.monotonic() - self.started

    def kill(self):
        """Kills the binary, its process group and every process under it:
        some tests start a browser in a group of its own, which the group
        kill alone would leave running. The tree is read before any kill,
        while the parents that link it are still alive."""
        under = descendants(self.proc.pid)
        for kill in (os.killpg, os.kill):
            try:
                kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in under:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def output(self):
        self.out.seek(0)
        text = self.out.read()
        self.out.close()
        return text


def main():
    jobs = build()
    times = load_times()
    # Longest first (unknown ones count as long): the last lane to finish
    # then ends soon after the others.
    jobs.sort(key=lambda j: -times.get(j[0], float("inf")))
    print(
        f"\nrunning {len(jobs)} test binaries, {LANES} at a time "
        f"(ROOMCAST_TEST_LANES), each for at most {BINARY_TIMEOUT}s",
        flush=True,
    )

    pending = list(jobs)
    running = []
    failed = []
    started = time.monotonic()

    def stop_all(signum, _frame):
        for r in running:
            r.kill()
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)

    while pending or running:
        while pending and len(running) < LANES:
            label, argv = pending.pop(0)
            running.append(Running(label, argv))
        time.sleep(0.2)
        for r in list(running):
            timed_out = r.proc.poll() is None and r.elapsed() > BINARY_TIMEOUT
            if timed_out:
                r.kill()
                r.proc.wait()
            elif r.proc.poll() is None:
                continue
            running.remove(r)
            took = r.elapsed()
            ok = r.proc.returncode == 0
            if ok:
                times[r.label] = round(took, 1)
            else:
                failed.append(r.label)
            status = "ok" if ok else ("TIMED OUT" if timed_out else "FAILED")
            print(f"\n==> {r.label}: {status} in {took:.0f}s", flush=True)
            sys.stdout.write(r.output())
            if timed_out:
                print(f"(killed after {BINARY_TIMEOUT}s: ROOMCAST_TEST_BINARY_TIMEOUT)")
            sys.stdout.flush()

    save_times(times)
    total = time.monotonic() - started
    slowest = sorted(((times.get(j[0], 0), j[0]) for j in jobs), reverse=True)[:5]
    print(f"\n{len(jobs)} test binaries in {total:.0f}s; slowest: "
          + ", ".join(f"{label} {t:.0f}s" for t, label in slowest))
    if failed:
        print("failed: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
