"""Resident memory of N container monitors (budget: 12 MiB VmRSS each).

Starts N monitors through the real code path (Supervisor.start: libexec copy,
double fork, python3 -S _monitor.py), each running a stand-in container that
logs a line every 0.2 s (so the log path is exercised), lets them settle,
reads VmRSS (the budget figure), RssAnon and Pss from /proc, then stops them
all. With --runtime runc (or crun, on a host where crun works), the
containers are real busybox containers (spec from _spec.build_spec, cgroups
under a throwaway parent); by default the stand-in is `/bin/sh -c ...`. The
runtime's own foreground `run` process (the container's parent) is reported
separately: it is the runtime's memory, not the monitor's.

    python3 benchmarks/monitor_rss.py --count 10 [--runtime runc] [--python /usr/bin/python3]
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
# tests.conftest puts the collection on sys.path
import tests.conftest  # noqa: E402,F401  # pylint: disable=unused-import

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


def _runc_setup(store, count, runtime_name):
    """Busybox bundles with specs from _spec.build_spec, under one throwaway cgroup parent."""
    import tarfile
    import uuid
    from tests.lib.rootfs import build_busybox_rootfs
    from ansible_collections.intermodal.containers.plugins.module_utils._runtime import Runtime
    from ansible_collections.intermodal.containers.plugins.module_utils._spec import build_spec
    parent = "intermodal-bench-%s" % uuid.uuid4().hex[:8]
    tar = build_busybox_rootfs(os.path.join(store, "busybox.tar"))
    runtime = Runtime(runtime_name, state_root=os.path.join(store, "state"))
    for i in range(count):
        paths = ContainerPaths(store, "rss%d" % i)
        os.makedirs(paths.rootfs)
        with tarfile.open(tar) as t:
            t.extractall(paths.rootfs)
        spec = build_spec({}, {"command": ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.2; done"],
                               "cgroups_path": "/%s/%s" % (parent, paths.name)}, paths.rootfs)
        with open(paths.config, "w") as f:
            json.dump(spec, f)
    return runtime, parent


def _remove_cgroups(parent):
    import glob
    for path in glob.glob("/sys/fs/cgroup/*/%s" % parent) + glob.glob("/sys/fs/cgroup/%s" % parent):
        for sub in glob.glob(path + "/*/"):
            try:
                os.rmdir(sub)
            except OSError:
                pass
        try:
            os.rmdir(path)
        except OSError:
            pass


def measure(count, settle, python=None, runtime_name=None):
    store = tempfile.mkdtemp(prefix="monitor-rss-")
    sup = MonitorSupervisor(store, python=python)
    runtime, parent = (None, None)
    started = []
    try:
        if runtime_name:
            runtime, parent = _runc_setup(store, count, runtime_name)
        for i in range(count):
            paths = ContainerPaths(store, "rss%d" % i)
            st = sup.start(paths, runtime, {"restart_policy": "always", "log_max_size": 64 * 1024, "log_max_files": 2},
                           argv=None if runtime else STAND_IN)
            started.append((paths, st["monitor_pid"]))
        time.sleep(settle)
        rows = []
        for paths, pid in started:
            rec = sup.status(paths)
            with open(os.path.join(paths.dir, "monitor.json")) as f:
                runtime_pid = json.load(f).get("runtime_pid")
            rows.append({"container": paths.name, "monitor_pid": pid, "status": rec["status"],
                         "vmrss_kib": proc_kib(pid, "status", "VmRSS"),
                         "rss_anon_kib": proc_kib(pid, "status", "RssAnon"),
                         "pss_kib": proc_kib(pid, "smaps_rollup", "Pss"),
                         # the runtime's foreground `run` stays the container's parent
                         "runtime_vmrss_kib": proc_kib(runtime_pid, "status", "VmRSS") if runtime_pid else None})
        return rows
    finally:
        for paths, dummy in started:
            sup.stop(paths, runtime, stop_timeout=2)
        if parent:
            _remove_cgroups(parent)
        shutil.rmtree(store, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to let monitors log before measuring")
    ap.add_argument("--python", default=None, help="interpreter for the monitors (default: this one)")
    ap.add_argument("--runtime", choices=["runc", "crun"], default=None,
                    help="real busybox containers with this runtime instead of the stand-in command")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = measure(args.count, args.settle, args.python, args.runtime)
    rss = [r["vmrss_kib"] for r in rows if r["vmrss_kib"] is not None]
    runtime_rss = [r["runtime_vmrss_kib"] for r in rows if r["runtime_vmrss_kib"]]
    summary = {"count": len(rows), "python": args.python or sys.executable, "runtime": args.runtime or "stand-in sh",
               "runtime_vmrss_kib_mean": sum(runtime_rss) // len(runtime_rss) if runtime_rss else None,
               "vmrss_kib_max": max(rss), "vmrss_kib_mean": sum(rss) // len(rss),
               "pss_kib_mean": sum(r["pss_kib"] or 0 for r in rows) // len(rows),
               "rss_anon_kib_mean": sum(r["rss_anon_kib"] or 0 for r in rows) // len(rows),
               "budget_kib": 12 * 1024}
    if args.json:
        print(json.dumps({"summary": summary, "monitors": rows}, indent=2))
    else:
        for r in rows:
            print("%-8s %-8s monitor pid %-7s VmRSS %6s KiB  RssAnon %6s KiB  Pss %6s KiB  (runtime process %s KiB)"
                  % (r["container"], r["status"], r["monitor_pid"], r["vmrss_kib"], r["rss_anon_kib"], r["pss_kib"],
                     r["runtime_vmrss_kib"]))
        print("monitors: %(count)d  VmRSS max %(vmrss_kib_max)d KiB, mean %(vmrss_kib_mean)d KiB; "
              "RssAnon mean %(rss_anon_kib_mean)d KiB; Pss mean %(pss_kib_mean)d KiB; budget %(budget_kib)d KiB; "
              "runtime (%(runtime)s) foreground process mean %(runtime_vmrss_kib_mean)s KiB"
              % summary)
    return 0 if max(rss) <= 12 * 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
