#!/usr/bin/env python3
"""Debian's stock firefox-esr, headless, driven over Marionette (marionette-driver
from PyPI; no geckodriver is packaged): opens roomcast pages and checks that the
player plays. tests/firefox.rs drives it.

    firefox_page.py --base http://127.0.0.1:PORT --visit '{"name": "h264", ...}' ...

Each ``--visit`` is a JSON object: ``path`` (e.g. /watch/t1), ``mode`` the player
must play in ("hls" or "webrtc"), ``within_s`` from opening the page to playing,
``label`` (a regular expression the .rc-path label must match), optional
``width``/``height`` of the video, ``prefs`` set before the visit, and
``hold_s``: after playing, it must keep playing in ``mode`` that long, with a
viewer count that never changed from the first one shown; ``then``: after
that, ``then.prefs`` are set and the player must switch to ``then.mode``
within ``then.within_s`` and play there (frames rising), its label matching
``then.label``; ``ice_restart`` {within_s, trigger}: after playing, the page's
PeerConnection is marked and a line of type ``playing`` emitted (the test then
cuts the path); within ``within_s`` the player must start an ICE restart (a
``restart_started`` line, with the ``trigger`` it reports, which must match when
given; the test restores the path), finish it and decode 60 more frames on the
same PeerConnection, with one WHEP POST and one restart in all. With
``stall`` the test stops the publisher instead of cutting the path: the
restart must be done without media (a ``restart_done`` line; the page says
it waits for the stream) before the test lets the publisher go on. A visit with
``status`` (a regular expression) expects no picture: that sentence within
``within_s``, then for ``hold_s`` no ``never_status`` sentence, no playback and an
unchanged viewer count. Visits run one after the other in the same
Firefox. Every stdout line is a JSON object: ``start`` (browser version), one
``visit`` per visit, and last ``result`` {ok, reason, console_errors, visits}.
Console errors of the pages (script errors and console.error) fail the run.

Firefox quirks handled here:
- a fresh profile per run (a temporary directory, removed at exit);
- ``media.peerconnection.ice.loopback`` lets ICE use 127.0.0.1, and host
  candidates are only exposed to an origin with camera/microphone permission,
  granted through ``Services.perms`` from chrome context (which needs
  ``-remote-allow-system-access``);
- ``devtools.jsonview.enabled=false``: the JSON viewer would break fetch() of JSON;
- Firefox runs in its own process group, killed as a whole at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

from marionette_driver.marionette import Marionette

PREFS = {
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.autoplay.default": 0,  # allowed
    "media.autoplay.blocking_policy": 0,
    "devtools.jsonview.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "extensions.update.enabled": False,
    "media.gmp-manager.updateEnabled": False,  # stock: no OpenH264 download
}

# Page state, read in content (through wrappedJSObject: the page's own objects).
# Firefox counts no presented frames (getVideoPlaybackQuality) for a MediaStream:
# over WebRTC the decoded frames come from getStats().
STATS_JS = """
const done = arguments[arguments.length - 1];
const w = window.wrappedJSObject;
const p = w.roomcast && w.roomcast.player;
if (!p) return done({ missing: true, href: location.href, ready: document.readyState });
const q = p.video.getVideoPlaybackQuality();
const tag = document.querySelector('.rc-path');
const st = document.querySelector('.rc-status');
const out = {
  state: p.state, mode: p.mode,
  connectionState: p.pc ? p.pc.connectionState : null,
  presented: q.totalVideoFrames, framesDecoded: 0, time: p.video.currentTime,
  width: p.video.videoWidth, height: p.video.videoHeight,
  paused: p.video.paused, muted: p.video.muted,
  label: tag && !tag.hidden ? tag.textContent : null,
  status: st && !st.hidden ? st.textContent : null,
  viewers: (() => { const e = document.getElementById('viewers'); return e && !e.hidden ? e.textContent : null; })(),
  // The player's path watch (lib/pathwatch.js): packets, and STUN responses on
  // the selected pair when this Firefox reports them.
  path: p.path ? { packets: p.path.packets, responses: p.path.responses, pair: p.path.pair, reportsResponses: p.path.reportsResponses } : null,
  counts: { whepPosts: p.counts.whepPosts, iceRestarts: p.counts.iceRestarts, iceRestartsOk: p.counts.iceRestartsOk },
  // An ICE restart under way: what started it (lib/player.js).
  restart: p.restart ? { trigger: p.restart.trigger, applied: p.restart.applied } : null,
  // Still the PeerConnection marked by an ice_restart visit.
  samePc: Boolean(p.pc) && p.pc === w.__pc0,
};
if (!p.pc) return done(out);
// getStats() of a PeerConnection the page closes meanwhile (the WebRTC attempt
// before the LL-HLS fallback) may never settle: give it 1 s, not the script timeout.
const late = new Promise((resolve) => setTimeout(() => resolve(null), 1000));
Promise.race([p.pc.getStats(), late]).then((r) => {
  if (r) r.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') out.framesDecoded = s.framesDecoded || 0; });
  done(out);
}, () => done(out));
"""

GRANT_JS = """
const [origin] = arguments;
const principal = Services.scriptSecurityManager.createContentPrincipal(
  Services.io.newURI(origin), {});
for (const type of ['camera', 'microphone']) {
  Services.perms.addFromPrincipal(principal, type, Services.perms.ALLOW_ACTION);
}
return true;
"""

# Errors of content pages from origin: script errors (nsIConsoleService) and
# console.error calls (the console API storage).
ERRORS_JS = """
const [origin] = arguments;
const out = [];
for (const m of Services.console.getMessageArray() || []) {
  if (!(m instanceof Ci.nsIScriptError)) continue;
  if (m.flags & (Ci.nsIScriptError.warningFlag | Ci.nsIScriptError.infoFlag)) continue;
  if (!m.innerWindowID && !(m.sourceName || '').startsWith(origin)) continue;
  if (/favicon/i.test(m.errorMessage + m.sourceName)) continue;
  out.push(`${m.category}: ${m.errorMessage} (${m.sourceName}:${m.lineNumber})`);
}
const storage = Cc['@mozilla.org/consoleAPI-storage;1'].getService(Ci.nsIConsoleAPIStorage);
for (const e of storage.getEvents()) {
  if (e.level !== 'error' || !(e.filename || '').startsWith(origin)) continue;
  const args = (e.arguments || []).map((a) => { try { return String(a); } catch { return '?'; } });
  out.push(`console.error: ${args.join(' ')} (${e.filename}:${e.lineNumber})`);
}
return out;
"""


def emit(o: dict) -> None:
    sys.stdout.write(json.dumps(o) + "\n")
    sys.stdout.flush()


_ports_taken = 0


def free_port() -> int:
    """A free port below the kernel's ephemeral range (see free_port in
    tests/common/synapse.rs): a port from bind(0) could be taken by any
    outgoing connection before Firefox binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first, last = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        first, last = 32768, 60999
    low, high = (first - 10000, first) if first >= 12000 else (last + 1, 65535)
    global _ports_taken
    span = high - low
    start = (os.getpid() * 7919 + 5003) % span
    for i in range(span):
        _ports_taken += 1
        port = low + (start + _ports_taken) % span
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high}")


def wait_for(what: str, fn, timeout: float):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 (reported on timeout)
            last = f"error: {e}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {json.dumps(last, default=str)})")
        time.sleep(0.1)


def start_firefox(binary: str, profile: str, port: int) -> subprocess.Popen:
    with open(os.path.join(profile, "user.js"), "w") as f:
        for k, v in {**PREFS, "marionette.port": port}.items():
            f.write(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n")
    env = {**os.environ, "MOZ_HEADLESS": "1", "MOZ_CRASHREPORTER_DISABLE": "1"}
    return subprocess.Popen(
        [binary, "--headless", "--marionette", "-remote-allow-system-access",
         "--no-remote", "--profile", profile, "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sys.stderr,
        env=env, start_new_session=True,  # its own process group, killed as one
    )


def stats(m: Marionette) -> dict:
    s = m.execute_async_script(STATS_JS, new_sandbox=False, script_timeout=5000)
    if s and not s.get("missing"):
        s["frames"] = max(s["presented"], s["framesDecoded"])
    return s


SET_PREFS_JS = """
const [prefs] = arguments;
for (const [k, v] of Object.entries(prefs)) {
  if (typeof v === 'boolean') Services.prefs.setBoolPref(k, v);
  else if (typeof v === 'number') Services.prefs.setIntPref(k, v);
  else Services.prefs.setStringPref(k, v);
}
return true;
"""


def no_picture(m: Marionette, v: dict, t0: float) -> dict:
    """A visit where no picture is possible: the status must match v["status"]
    within v["within_s"], then for v["hold_s"] never match v["never_status"] nor
    play, and the viewer count must not change."""
    within = float(v.get("within_s", 12))

    def shown():
        s = stats(m)
        if s and not s.get("missing") and re.search(v["status"], s["status"] or ""):
            return s
        raise RuntimeError(f"not yet: {s}")

    s = wait_for(f"the status {v['status']!r}", shown, within + 20)
    after = time.monotonic() - t0
    problems = [] if after <= within else [f"status after {after:.1f} s (limit {within} s)"]
    seen_status, seen_viewers = [s["status"]], [s["viewers"]]
    end = time.monotonic() + float(v.get("hold_s", 10))
    while time.monotonic() < end:
        x = stats(m)
        if x["status"] != seen_status[-1]:
            seen_status.append(x["status"])
        if x["viewers"] != seen_viewers[-1]:
            seen_viewers.append(x["viewers"])
        if x["state"] == "playing":
            problems.append(f"plays: {x}")
            break
        time.sleep(0.2)
    bad = [t for t in seen_status if t and v.get("never_status") and re.search(v["never_status"], t)]
    if bad:
        problems.append(f"status said {bad[0]!r}")
    if len(seen_viewers) > 1:
        problems.append(f"the viewer count changed: {seen_viewers}")
    out = {"type": "visit", "name": v.get("name", v["path"]), "after_ms": round(after * 1000),
           "statuses": seen_status, "viewers": seen_viewers, "ok": not problems, "problems": problems}
    emit(out)
    m.navigate("about:blank")
    return out


def ice_restart(m: Marionette, want: dict, problems: list) -> dict:
    """A visit's ``ice_restart``: the test cuts the path after the ``playing``
    step and restores it after ``restart_started``; the player must restart
    ICE on the same PeerConnection and play on."""
    m.execute_script("const w = window.wrappedJSObject; w.__pc0 = w.roomcast.player.pc; return true;")
    before = stats(m)
    emit({"type": "playing", "stats": before})
    t0 = time.monotonic()
    started = wait_for("the player to start an ICE restart",
                       lambda: (lambda x: x if x["counts"]["iceRestarts"] >= 1 else None)(stats(m)),
                       float(want.get("within_s", 15)))
    started_ms = round((time.monotonic() - t0) * 1000)
    trigger = (started.get("restart") or {}).get("trigger")
    emit({"type": "restart_started", "after_ms": started_ms, "trigger": trigger,
          "connectionState": started["connectionState"]})
    done_ms = None
    if want.get("stall"):
        # The publisher stalls, the path is clear: the restart must be done
        # without media, the page waiting for the stream; the test lets the
        # publisher go on after the "restart_done" line.
        samples = []  # what the player saw on the way: why a restart was slow

        def restart_ended():
            x = stats(m)
            samples.append([round((time.monotonic() - t0) * 1000), x["connectionState"], x["path"], x["restart"]])
            return x if x["counts"]["iceRestartsOk"] >= 1 or x["counts"]["whepPosts"] > 1 else None

        done = wait_for("the restart done without media", restart_ended, 10)
        done["samples"] = samples
        done_ms = round((time.monotonic() - t0) * 1000)
        if done["counts"] != {"whepPosts": 1, "iceRestarts": 1, "iceRestartsOk": 1}:
            problems.append(f"the restart during the stall did not end well: {done['counts']}")
        if not re.search("Waiting for the stream", done["status"] or ""):
            problems.append(f"the page during the stall: {done['state']} {done['status']!r}")
        emit({"type": "restart_done", "after_ms": done_ms, "stats": done})

    def played_on():
        x = stats(m)
        if not x["samePc"]:
            raise TimeoutError(f"the PeerConnection was replaced: {x}")
        return x if x["counts"]["iceRestartsOk"] >= 1 and x["framesDecoded"] >= started["framesDecoded"] + 60 else None

    after = wait_for("60 more frames on the same PeerConnection", played_on, 40 if want.get("stall") else 25)
    # Live frames, not only a replay's burst: they go on coming.
    wait_for("frames still coming", lambda: (lambda x: x if x["framesDecoded"] >= after["framesDecoded"] + 15 else None)(stats(m)), 5)
    resumed_ms = round((time.monotonic() - t0) * 1000)
    counts = after["counts"]
    if counts != {"whepPosts": 1, "iceRestarts": 1, "iceRestartsOk": 1}:
        problems.append(f"one POST and one restart expected: {counts}")
    if want.get("trigger") and trigger != want["trigger"]:
        problems.append(f"the restart's trigger was {trigger!r}, not {want['trigger']!r}")
    return {"started_after_ms": started_ms, "trigger": trigger, "done_after_ms": done_ms, "resumed_after_ms": resumed_ms,
            "counts": counts, "path": after["path"]}


def visit(m: Marionette, base: str, v: dict) -> dict:
    url = base + v["path"]
    within = float(v.get("within_s", 5))
    if v.get("prefs"):
        m.set_context(m.CONTEXT_CHROME)
        m.execute_script(SET_PREFS_JS, script_args=[v["prefs"]])
    m.set_context(m.CONTEXT_CONTENT)
    t0 = time.monotonic()
    m.navigate(url)
    if v.get("status"):
        return no_picture(m, v, t0)

    trace = []  # (ms, state, mode, status) each time one changes: why a visit was slow
    viewers = []  # every viewer count shown, in order, from the first

    def seen(x):
        if x and not x.get("missing") and x["viewers"] is not None and (not viewers or viewers[-1] != x["viewers"]):
            viewers.append(x["viewers"])
        return x

    def playing():
        try:
            s = seen(stats(m))
        except Exception as e:  # noqa: BLE001 (kept in the trace: why a visit was slow)
            trace.append([round((time.monotonic() - t0) * 1000), "error", type(e).__name__, str(e)[:200]])
            raise
        if s and not s.get("missing"):
            key = [s["state"], s["mode"], s["status"]]
            if not trace or trace[-1][1:] != key:
                trace.append([round((time.monotonic() - t0) * 1000), *key])
        if s and s.get("missing"):
            raise RuntimeError(f"no player on the page: {s}")
        if s and s["state"] == "playing" and s["mode"] == v["mode"] and s["frames"] >= 5:
            return s
        raise RuntimeError(f"not yet: {s}")  # shown on timeout

    s = wait_for(f"{v['path']} to play over {v['mode']}", playing, within + 20)
    after = time.monotonic() - t0
    t1 = s["time"]
    s2 = wait_for("the video to advance", lambda: (lambda x: x if x["time"] > t1 + 1 and x["frames"] >= s["frames"] + 10 else None)(
        seen(stats(m))), 15)
    problems = []
    end = time.monotonic() + float(v.get("hold_s", 0))
    while time.monotonic() < end:
        x = seen(stats(m))
        if x["mode"] != v["mode"] or x["state"] != "playing":
            problems.append(f"stopped playing over {v['mode']}: {x}")
            break
        time.sleep(0.2)
    if v.get("hold_s"):
        last = seen(stats(m))
        if last["time"] < s2["time"] + float(v["hold_s"]) / 2:
            problems.append(f"the video stalled: {s2['time']:.1f} s → {last['time']:.1f} s in {v['hold_s']} s")
        if len(viewers) > 1:
            problems.append(f"the viewer count changed: {viewers}")
    if after > within:
        problems.append(f"played after {after:.1f} s (limit {within} s)")
    if v.get("width") and (s2["width"], s2["height"]) != (v["width"], v["height"]):
        problems.append(f"video {s2['width']}x{s2['height']}, expected {v['width']}x{v['height']}")
    if v.get("label") and not re.search(v["label"], s2["label"] or ""):
        problems.append(f"label {s2['label']!r} does not match {v['label']!r}")
    if s2["mode"] != v["mode"] or s2["state"] != "playing":
        problems.append(f"not playing over {v['mode']} any more: {s2}")
    then = v.get("then")
    switched = None
    if then and not problems:
        m.set_context(m.CONTEXT_CHROME)
        m.execute_script(SET_PREFS_JS, script_args=[then.get("prefs", {})])
        m.set_context(m.CONTEXT_CONTENT)
        t1 = time.monotonic()

        def moved():
            x = seen(stats(m))
            if x["mode"] == then["mode"] and x["state"] == "playing" and x["frames"] >= 5:
                return x
            raise RuntimeError(f"not yet: {x}")

        try:
            x = wait_for(f"a switch to {then['mode']}", moved, float(then.get("within_s", 60)))
            took = time.monotonic() - t1
            x2 = wait_for("frames to rise after the switch",
                          lambda: (lambda y: y if y["frames"] >= x["frames"] + 10 else None)(seen(stats(m))), 15)
            switched = {"after_ms": round(took * 1000), "stats": x2}
            if then.get("label") and not re.search(then["label"], x2["label"] or ""):
                problems.append(f"label after the switch {x2['label']!r} does not match {then['label']!r}")
        except TimeoutError as e:
            problems.append(str(e))
    restart = None
    if v.get("ice_restart") and not problems:
        try:
            restart = ice_restart(m, v["ice_restart"], problems)
        except TimeoutError as e:
            problems.append(str(e))
    out = {"type": "visit", "name": v.get("name", v["path"]), "after_ms": round(after * 1000),
           "stats": s2, "trace": trace, "viewers": viewers, "switched": switched,
           "restart": restart, "ok": not problems, "problems": problems}
    emit(out)
    # Leave the page (closing its session) before the next visit.
    m.navigate("about:blank")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--visit", action="append", default=[], type=json.loads)
    ap.add_argument("--firefox", default=os.environ.get("ROOMCAST_TEST_FIREFOX", "firefox-esr"))
    a = ap.parse_args()
    base = a.base.rstrip("/")
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
    binary = shutil.which(a.firefox) or a.firefox
    profile = tempfile.mkdtemp(prefix="roomcast-firefox-")
    port = free_port()
    proc = None
    result = {"type": "result", "ok": False, "reason": None, "console_errors": [], "visits": []}
    m = None
    try:
        proc = start_firefox(binary, profile, port)
        m = Marionette(host="127.0.0.1", port=port, socket_timeout=60)
        m.start_session(timeout=60)  # waits for the port
        emit({"type": "start", "browser_version": m.session_capabilities.get("browserVersion")})
        m.set_context(m.CONTEXT_CHROME)
        m.execute_script(GRANT_JS, script_args=[origin])
        for v in a.visit:
            result["visits"].append(visit(m, base, v))
        m.set_context(m.CONTEXT_CHROME)
        result["console_errors"] = m.execute_script(ERRORS_JS, script_args=[origin])
        bad = [f"{x['name']}: {'; '.join(x['problems'])}" for x in result["visits"] if not x["ok"]]
        if result["console_errors"]:
            bad.append(f"console errors: {result['console_errors']}")
        result["ok"] = not bad
        result["reason"] = "; ".join(bad) or None
    except Exception as e:  # noqa: BLE001 (the result line says what failed)
        result["reason"] = f"{type(e).__name__}: {e}"
        try:
            if m is not None and m.session:
                m.set_context(m.CONTEXT_CHROME)
                result["console_errors"] = m.execute_script(ERRORS_JS, script_args=[origin])
        except Exception:  # noqa: BLE001
            pass
    finally:
        if m is not None:
            try:
                m.delete_session()
            except Exception:  # noqa: BLE001
                pass
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    emit(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
