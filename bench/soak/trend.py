#!/usr/bin/env python3
"""Trend of a soak's samples ("unix_time rss_kib fds threads" lines, written by
bench/soak/common.sh): for RSS, fds and threads the least-squares slope per
hour (over the whole run and after a warm-up), the means of the first and last
WINDOW minutes, and min/max. Usage: trend.py samples.txt [window_minutes=10]"""
import sys


def slope_per_hour(pts):
    n = len(pts)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in pts) / n
    my = sum(v for _, v in pts) / n
    den = sum((t - mx) ** 2 for t, _ in pts)
    return 0.0 if den == 0 else sum((t - mx) * (v - my) for t, v in pts) / den * 3600


def main():
    path = sys.argv[1]
    window = float(sys.argv[2]) * 60 if len(sys.argv) > 2 else 600.0
    rows = []
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        t, rss, fds, thr = (int(x) for x in line.split()[:4])
        rows.append((t, rss / 1024.0, fds, thr))
    if not rows:
        sys.exit("no samples")
    t0, t1 = rows[0][0], rows[-1][0]
    print(f"samples: {len(rows)} over {(t1 - t0) / 60:.1f} min")
    for i, name, unit in ((1, "rss", "MiB"), (2, "fds", ""), (3, "threads", "")):
        pts = [(r[0], r[i]) for r in rows]
        first = [v for t, v in pts if t - t0 < window]
        last = [v for t, v in pts if t1 - t < window]
        warm = [(t, v) for t, v in pts if t - t0 >= window]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
        print(
            f"{name}: first {window / 60:.0f} min mean {mean(first):.1f}{unit}, "
            f"last {window / 60:.0f} min mean {mean(last):.1f}{unit} "
            f"({(mean(last) / mean(first) - 1) * 100:+.1f} %), "
            f"min {min(v for _, v in pts):.1f}, max {max(v for _, v in pts):.1f}, "
            f"slope {slope_per_hour(pts):+.2f}{unit}/h (after the first "
            f"{window / 60:.0f} min: {slope_per_hour(warm):+.2f}{unit}/h)"
        )


main()
