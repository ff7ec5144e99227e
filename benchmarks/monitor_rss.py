#!/usr/bin/env python3
"""Resident memory of N container monitors (budget: 12 MiB VmRSS each).

Starts N monitors through the real code path (Supervisor.start: libexec copy,
double fork, python3 -S _monitor.py), each running a stand-in container that
logs a line every 0.2 s (so the log path is exercised), lets them settle,
reads VmRSS (the budget figure), RssAnon and Pss from /proc, then stops them
all. With --runtime runc and --bundle-store, the containers are real runc
containers from an existing store (see tests/integration/test_supervise_runc.py
for how one is prepared); by default the stand-in is `/bin/sh -c ...`.

    python3 benchmarks/monitor_rss.py --count 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import tests.conftest  # noqa: E402,F401 (puts the collection on sys.path)

from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import ContainerPaths  # noqa: E402
from ansible_collections.intermodal.containers.plugins.module_utils._supervise import MonitorSupervisor  # noqa: E402

STAND_IN = ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.2; done"]


def proc_kib(pid, path, key):
    try:
        with open("/proc/%d/%s" % (pid, path)) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(count, settle, python=None):
    store = tempfile.mkdtemp(prefix="monitor-rss-")
    sup = MonitorSupervisor(store, python=python)
    started = []
    try:
        for i in range(count):
            paths = ContainerPaths(store, "rss%d" % i)
            st = sup.start(paths, None, {"restart_policy": "always", "log_max_size": 64 * 1024, "log_max_files": 2},
                           argv=STAND_IN)
            started.append((paths, st["monitor_pid"]))
        time.sleep(settle)
        rows = []
        for paths, pid in started:
            rows.append({"container": paths.name, "monitor_pid": pid,
                         "vmrss_kib": proc_kib(pid, "status", "VmRSS"),
                         "rss_anon_kib": proc_kib(pid, "status", "RssAnon"),
                         "pss_kib": proc_kib(pid, "smaps_rollup", "Pss")})
        return rows
    finally:
        for paths, _ in started:
            sup.stop(paths, None, stop_timeout=2)
        shutil.rmtree(store, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to let monitors log before measuring")
    ap.add_argument("--python", default=None, help="interpreter for the monitors (default: this one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = measure(args.count, args.settle, args.python)
    rss = [r["vmrss_kib"] for r in rows if r["vmrss_kib"] is not None]
    summary = {"count": len(rows), "python": args.python or sys.executable,
               "vmrss_kib_max": max(rss), "vmrss_kib_mean": sum(rss) // len(rss),
               "pss_kib_mean": sum(r["pss_kib"] or 0 for r in rows) // len(rows),
               "rss_anon_kib_mean": sum(r["rss_anon_kib"] or 0 for r in rows) // len(rows),
               "budget_kib": 12 * 1024}
    if args.json:
        print(json.dumps({"summary": summary, "monitors": rows}, indent=2))
    else:
        for r in rows:
            print("%-8s pid %-7s VmRSS %6s KiB  RssAnon %6s KiB  Pss %6s KiB"
                  % (r["container"], r["monitor_pid"], r["vmrss_kib"], r["rss_anon_kib"], r["pss_kib"]))
        print("monitors: %(count)d  VmRSS max %(vmrss_kib_max)d KiB, mean %(vmrss_kib_mean)d KiB; "
              "RssAnon mean %(rss_anon_kib_mean)d KiB; Pss mean %(pss_kib_mean)d KiB; budget %(budget_kib)d KiB"
              % summary)
    return 0 if max(rss) <= 12 * 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
