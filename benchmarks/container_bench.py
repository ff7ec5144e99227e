"""Container benchmark: intermodal.containers against podman and the bare OCI runtime.

Run as root from the repository root: python3 benchmarks/container_bench.py [--runs 10] [--count 100].
Side by side with one busybox rootfs: (1) start, spec to running process: ours in-process, ours as the
module process, `podman run -d`, `crun`/`runc run --detach` of a prepared bundle (the floor); (2) start,
then stop+remove 100 containers, ours vs podman; (3) our monitors' memory while they run, vs conmon.
Nothing here asserts a time. Everything it starts is removed in finally blocks (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import bench_setup  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from bench_setup import COLLECTIONS_DIR, REPO_ROOT, run  # noqa: E402,F401

MODULE = os.path.join(REPO_ROOT, "plugins", "modules", "container.py")

bench_setup.reexec_in_venv("CONTAINER_BENCH_NO_REEXEC")
bench_setup.ensure_collection_path()

# pylint: disable=wrong-import-position
from ansible_collections.intermodal.containers.plugins.module_utils import _containers  # noqa: E402
from ansible_collections.intermodal.containers.plugins.module_utils._container_state import ContainerTask  # noqa: E402
from ansible_collections.intermodal.containers.plugins.module_utils._containers import ContainerService  # noqa: E402
from ansible_collections.intermodal.containers.plugins.module_utils._image_import import (  # noqa: E402
    apply_import,
    plan_import,
)
from ansible_collections.intermodal.containers.plugins.module_utils._images import ImageService  # noqa: E402
from ansible_collections.intermodal.containers.plugins.module_utils._reference import parse_reference  # noqa: E402
from ansible_collections.intermodal.containers.plugins.module_utils._runtime import fix_hybrid_hugetlb  # noqa: E402
from tests.lib.rootfs import _unmount_all_under as unmount_all_under  # noqa: E402
from tests.lib.rootfs import build_busybox_rootfs  # noqa: E402

IMAGE = "local/busybox:1"
PODMAN_IMAGE = "localhost/bench-busybox:1"
IMAGE_CONFIG = {"cmd": ["sh"], "env": {"PATH": "/bin"}}
COMMAND = ["sleep", "100000"]
CGROUP_ROOT = "/sys/fs/cgroup"
BENCH_PREFIX = "cbench"


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def stats(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ---- ours -------------------------------------------------------------------------


def module_params(_cache={}, **overrides):  # pylint: disable=dangerous-default-value
    """Every module option at its default (as AnsibleModule fills them), then overrides."""
    if not _cache:
        from ansible_collections.intermodal.containers.plugins.modules.container import argument_spec
        _cache.update((k, v.get("default")) for k, v in argument_spec().items())
    return dict(_cache, **overrides)


class Ours:
    """Our containers in one store; names are tracked so cleanup removes them all."""

    def __init__(self, store):
        self.store = store
        self.images = ImageService(store)
        self.names = set()

    def params(self, name, runtime, **extra):
        return module_params(name=name, image=IMAGE, pull="never", store_root=self.store, runtime=runtime,
                             command=list(COMMAND), stop_timeout=0, **extra)

    def task(self, name, runtime, state="started"):
        params = self.params(name, runtime, state=state)
        return ContainerTask(self.images, ContainerService(self.store, self.images), params).run()

    def start(self, name, runtime):
        self.names.add(name)
        res = self.task(name, runtime)
        st = res["container"]["state"]
        if st.get("status") != "running" or not st.get("pid"):
            raise RuntimeError("container %s did not run: %s" % (name, st))
        return res

    def remove(self, name, runtime="crun"):
        self.task(name, runtime, state="absent")
        self.names.discard(name)

    def module_start(self, work, name, runtime):
        """The real module process, as Ansible runs it (args file, fresh interpreter)."""
        self.names.add(name)
        args = os.path.join(work, "args-%s.json" % name)
        with open(args, "w") as handle:
            json.dump({"ANSIBLE_MODULE_ARGS": self.params(name, runtime)}, handle)
        env = dict(os.environ, PYTHONPATH=COLLECTIONS_DIR)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, MODULE, args], env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, check=False)
        seconds = time.perf_counter() - t0
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            raise RuntimeError("module printed no JSON (%d): %s %s" % (proc.returncode, proc.stdout[-2000:],
                                                                       proc.stderr[-2000:]))
        if out.get("failed") or out["container"]["state"].get("status") != "running":
            raise RuntimeError("module run failed: %s" % json.dumps(out)[-2000:])
        return seconds

    def monitor_pids(self, name):
        """(monitor pid, pids of its runtime child processes): what ours keeps per container."""
        desc = ContainerService(self.store, self.images).describe(name)
        monitor = desc["state"].get("monitor_pid")
        return monitor, [p for p in children(monitor) if comm(p) in ("crun", "runc")] if monitor else []

    def cleanup(self):
        service = ContainerService(self.store, self.images)
        for name in sorted(set(self.names) | set(service.names())):
            try:
                service.remove(name)
            except Exception as exc:  # pylint: disable=broad-except
                log("cleanup: removing our container %s failed: %s" % (name, exc))
        self.images.close()


def wrap(patched, totals, owner, attr, label):
    """Replace owner.attr by a wrapper adding its wall time to totals[label]; undone by unwrap()."""
    original = getattr(owner, attr)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - t0
    setattr(owner, attr, timed)
    patched.append((owner, attr, original))


def unwrap(patched):
    for owner, attr, original in reversed(patched):
        setattr(owner, attr, original)


PHASES = (  # (owner, attribute, label); owners are resolved at call time
    ("ContainerService", "create", "create (dirs, overlay mount, spec, state.json)"),
    ("_containers", "build_spec", "  of which build_spec"),
    ("_containers", "mount_overlay", "  of which mount_overlay"),
    ("Runtime", "check", "  of which Runtime.check (x2: create+start)"),
    ("MonitorSupervisor", "start", "supervisor start (monitor up, container pid known)"),
    ("_supervise", "install_monitor", "  of which install_monitor"),
    ("_supervise", "spawn_detached", "  of which spawn_detached"),
    ("ContainerService", "describe", "describe (result)"),
)


def phase_breakdown(ours, runtime, runs):
    """Median seconds per phase of an in-process start, and a timeline of the monitor's side."""
    from ansible_collections.intermodal.containers.plugins.module_utils import _supervise
    owners = {"ContainerService": ContainerService, "_containers": _containers, "Runtime": _containers.Runtime,
              "MonitorSupervisor": _supervise.MonitorSupervisor, "_supervise": _supervise}
    per_run = []
    for i in range(runs):
        name, totals, patched, marks = "%s-ph-%s-%d" % (BENCH_PREFIX, runtime, i), {}, [], {}
        try:
            for owner, attr, label in PHASES:
                wrap(patched, totals, owners[owner], attr, label)
            spawn = _supervise.spawn_detached
            _supervise.spawn_detached = lambda *a, **kw: (marks.setdefault("spawn", time.time()), spawn(*a, **kw))[1]
            patched.append((_supervise, "spawn_detached", spawn))
            t0 = time.perf_counter()
            ours.start(name, runtime)
            totals["total"] = time.perf_counter() - t0
            marks["returned"] = time.time()
        finally:
            unwrap(patched)
        totals.update(timeline(ours.store, name, marks))
        per_run.append(totals)
        ours.remove(name, runtime)
    return {k: statistics.median(r.get(k, 0.0) for r in per_run) for k in per_run[0]}


def timeline(store, name, marks):
    """The supervisor's start from the mtimes of the files each step writes (good to one kernel tick)."""
    paths = ContainerService(store, None).paths(name)
    steps = [("spawn", marks["spawn"])]
    for label, path in (("  spawn -> monitor up (python start-up, imports)", paths.monitor_pid_file),
                        ("  monitor up -> runtime wrote the pid file", paths.pid_file),
                        ("  pid file -> monitor recorded it (its 50 ms poll, fsync)",
                         os.path.join(paths.dir, "monitor.json"))):
        try:
            steps.append((label, os.stat(path).st_mtime_ns / 1e9))
        except OSError:
            return {}
    steps.append(("  recorded -> supervisor returned (10 ms poll, status, describe)", marks["returned"]))
    return {label: when - steps[i - 1][1] for i, (label, when) in enumerate(steps) if i}


def profile_start(ours, runtime, top=30):
    name, prof = "%s-prof-%s" % (BENCH_PREFIX, runtime), cProfile.Profile()
    prof.enable()
    try:
        ours.start(name, runtime)
    finally:
        prof.disable()
    ours.remove(name, runtime)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ---- podman -----------------------------------------------------------------------


class Podman:
    """podman with its own storage, config and tmp dir under the work dir (test-hosts.md)."""

    def __init__(self, work):
        self.root = os.path.join(work, "podman")
        os.makedirs(self.root, exist_ok=True)
        self.tmp = os.path.join(self.root, "tmp")
        self.conf = os.path.join(self.root, "containers.conf")
        with open(self.conf, "w") as handle:
            # tmp_dir keeps its exit files and locks out of /run/libpod, shared with other podman users.
            handle.write('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                         '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\ntmp_dir = "%s"\n'
                         % self.tmp)
        storage = os.path.join(self.root, "storage.conf")
        with open(storage, "w") as handle:
            handle.write('[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n'
                         % (os.path.join(self.root, "graph"), os.path.join(self.root, "run")))
        self.env = dict(os.environ, CONTAINERS_CONF=self.conf, CONTAINERS_STORAGE_CONF=storage)

    def cmd(self, *args):
        return ["podman", "--root", os.path.join(self.root, "graph"), "--runroot", os.path.join(self.root, "run"),
                "--storage-driver", "overlay", "--cgroup-manager=cgroupfs", "--events-backend=file",
                "--tmpdir", self.tmp] + list(args)

    def load(self, tar):
        run(self.cmd("import", "--quiet", "--change", "CMD [\"sh\"]", "--change", "ENV PATH=/bin",
                     tar, PODMAN_IMAGE), env=self.env)

    def start(self, name):
        # --network none: ours has no network by default, and podman's bridge would rewrite the host's iptables.
        t0 = time.perf_counter()
        run(self.cmd("run", "-d", "--name", name, "--network", "none", PODMAN_IMAGE, *COMMAND), env=self.env)
        return time.perf_counter() - t0

    def remove(self, name):
        t0 = time.perf_counter()
        run(self.cmd("rm", "-f", "-t", "0", name), env=self.env)
        return time.perf_counter() - t0

    def pids(self, only=None):
        """Processes working on this podman root: conmon, and `podman container cleanup` conmon starts on exit."""
        return [pid for pid in (int(p) for p in os.listdir("/proc") if p.isdigit())
                if (only is None or comm(pid) == only) and pid != os.getpid()
                and self.root.encode() in read_proc(pid, "cmdline", binary=True)]

    def conmon_pids(self):
        return self.pids("conmon")

    def cleanup(self):
        if os.path.isdir(os.path.join(self.root, "graph")):
            proc = run(self.cmd("rm", "-a", "-f", "-t", "0"), env=self.env, check=False)
            if proc.returncode != 0:
                log("cleanup: podman rm -a failed: %s" % proc.stderr[-500:])
        # conmon's exit commands run `podman container cleanup` after the containers die, and that mounts
        # the storage again: wait for them, or unmounting and deleting the temp dir would race with them.
        deadline = time.monotonic() + 20
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.pids():
            log("cleanup: killing %d (%s), still working on podman's storage" % (pid, comm(pid)))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---- the floor: the OCI runtime alone with a prepared bundle ------------------------


class Bare:
    """A plain-directory rootfs bundle from `crun spec`, run detached by crun or runc directly."""

    def __init__(self, work, tar):
        self.bundle = os.path.join(work, "bundle")
        rootfs = os.path.join(self.bundle, "rootfs")
        os.makedirs(rootfs)
        run(["tar", "-xf", tar, "-C", rootfs])
        run(["crun", "spec"], cwd=self.bundle)
        with open(os.path.join(self.bundle, "config.json")) as handle:
            self.spec = json.load(handle)
        self.spec["process"].update(terminal=False, args=list(COMMAND), env=["PATH=/bin"])
        self.live = []  # (runtime, id)

    def start(self, runtime, ident):
        # Each container its own cgroup under intermodal/, removed by `delete`.
        self.spec["linux"]["cgroupsPath"] = "/intermodal/%s" % ident
        with open(os.path.join(self.bundle, "config.json"), "w") as handle:
            json.dump(self.spec, handle)
        self.live.append((runtime, ident))
        t0 = time.perf_counter()
        # stdio to /dev/null: the container inherits it, and a pipe would stay open as long as it runs.
        proc = subprocess.run([runtime, "run", "--detach", "--bundle", self.bundle, ident], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError("%s run --detach %s failed (%d)" % (runtime, ident, proc.returncode))
        return seconds

    def remove(self, runtime, ident):
        run([runtime, "delete", "--force", ident], check=False)
        self.live.remove((runtime, ident))

    def cleanup(self):
        for runtime, ident in list(self.live):
            self.remove(runtime, ident)


# ---- /proc and cgroupfs -----------------------------------------------------------


def read_proc(pid, name, binary=False):
    try:
        with open("/proc/%d/%s" % (pid, name), "rb" if binary else "r") as handle:
            return handle.read()
    except OSError:
        return b"" if binary else ""


def comm(pid):
    return read_proc(pid, "comm").strip()


def children(pid):
    tasks = os.listdir("/proc/%d/task" % pid) if os.path.isdir("/proc/%d/task" % pid) else []
    return [int(c) for tid in tasks for c in read_proc(pid, "task/%s/children" % tid).split()]


def memory_kib(pid):
    """(VmRSS, Pss) in KiB; Pss shares the interpreter's pages among the processes mapping them."""
    def field(name, key):
        return next((int(line.split()[1]) for line in read_proc(pid, name).splitlines()
                     if line.startswith(key)), 0)
    return field("status", "VmRSS:"), field("smaps_rollup", "Pss:")


def controller_dirs():
    entries = os.listdir(CGROUP_ROOT) if os.path.isdir(CGROUP_ROOT) else []
    return [os.path.join(CGROUP_ROOT, c) for c in entries
            if os.path.isdir(os.path.join(CGROUP_ROOT, c)) and not os.path.islink(os.path.join(CGROUP_ROOT, c))]


def rmdir_cgroup(path, report=True):
    """One rmdir: the kernel refuses it while the cgroup has children or processes."""
    try:
        os.rmdir(path)
    except OSError as exc:
        if report:
            log("cleanup: cannot remove cgroup %s: %s" % (path, exc))


def cleanup_cgroups(before):
    """intermodal/cbench-* leftovers; the shared parents only if this run created them and they are empty.

    Nothing else under intermodal/ or libpod_parent/ is walked into: other users' cgroups live there.
    """
    for ctrl in controller_dirs():
        base = os.path.join(ctrl, "intermodal")
        for entry in os.listdir(base) if os.path.isdir(base) else []:
            if entry.startswith(BENCH_PREFIX) and os.path.isdir(os.path.join(base, entry)):
                for dirpath, _dirs, _files in sorted(os.walk(os.path.join(base, entry)),
                                                     key=lambda e: -e[0].count("/")):
                    rmdir_cgroup(dirpath)
        if base not in before:
            rmdir_cgroup(base, report=False)
        libpod = os.path.join(ctrl, "libpod_parent")
        if os.path.isdir(libpod) and libpod not in before:
            rmdir_cgroup(os.path.join(libpod, "conmon"), report=False)  # podman's cgroupfs manager leaves it
            rmdir_cgroup(libpod, report=False)


def existing_cgroups():
    return {os.path.join(ctrl, name) for ctrl in controller_dirs() for name in ("intermodal", "libpod_parent")
            if os.path.isdir(os.path.join(ctrl, name))}


# ---- the benchmark ----------------------------------------------------------------


def bench_start(args, work, ours, podman, bare, res):
    runtimes = args.runtimes
    timings = {}

    def record(key, seconds):
        timings.setdefault(key, []).append(seconds)

    # Warm-ups, untimed: our monitor's first install (compiles its pyc), podman's first run
    # (storage and lock set-up), page cache for every binary.
    for rt in runtimes:
        warm = "%s-warm-%s" % (BENCH_PREFIX, rt)
        ours.start(warm, rt)
        ours.remove(warm, rt)
        bare.start(rt, warm)
        bare.remove(rt, warm)
    podman.start("%s-warm" % BENCH_PREFIX)
    podman.remove("%s-warm" % BENCH_PREFIX)

    for i in range(args.runs):
        log("start run %d/%d" % (i + 1, args.runs))
        for rt in runtimes:
            name = "%s-in-%s-%d" % (BENCH_PREFIX, rt, i)
            t0 = time.perf_counter()
            ours.start(name, rt)
            record("ours_%s" % rt, time.perf_counter() - t0)
            ours.remove(name, rt)
        for rt in runtimes if args.module_runtimes == "all" else runtimes[:1]:
            name = "%s-mod-%s-%d" % (BENCH_PREFIX, rt, i)
            record("module_%s" % rt, ours.module_start(work, name, rt))
            ours.remove(name, rt)
        name = "%s-pod-%d" % (BENCH_PREFIX, i)
        record("podman", podman.start(name))
        podman.remove(name)
        for rt in runtimes:
            ident = "%s-bare-%s-%d" % (BENCH_PREFIX, rt, i)
            record("bare_%s" % rt, bare.start(rt, ident))
            bare.remove(rt, ident)
    res["start"] = {k: stats(v) for k, v in timings.items()}
    res["start_runs"] = timings
    log("phase breakdown (crun)")
    res["phases"] = {rt: phase_breakdown(ours, rt, min(args.runs, 5)) for rt in runtimes}


def memory_summary(pairs):
    """pairs of (VmRSS, Pss) KiB -> per-process stats and totals."""
    rss = [pair[0] for pair in pairs]
    pss = [pair[1] for pair in pairs]
    return {"n": len(pairs), "rss": stats(rss), "pss": stats(pss), "rss_total": sum(rss), "pss_total": sum(pss)}


def timed_loop(func, names):
    t0 = time.perf_counter()
    for name in names:
        func(name)
    return time.perf_counter() - t0


def bench_many(args, ours, podman, res):
    count, rt = args.count, args.runtimes[0]
    out = {"count": count, "runtime": rt}
    names = ["%s-many-%03d" % (BENCH_PREFIX, i) for i in range(count)]
    log("ours: starting %d containers (%s)" % (count, rt))
    out["ours_start"] = timed_loop(lambda n: ours.start(n, rt), names)
    time.sleep(1.0)  # let the monitors settle before sampling
    monitors, runtimes, combined = [], [], []
    for name in names:
        monitor, rt_children = ours.monitor_pids(name)
        if monitor is not None:
            monitors.append(memory_kib(monitor))
            runtimes.extend(memory_kib(p) for p in rt_children)
            combined.append((monitors[-1][0] + sum(memory_kib(p)[0] for p in rt_children),
                             monitors[-1][1] + sum(memory_kib(p)[1] for p in rt_children)))
    out["memory"] = {"our monitor": memory_summary(monitors),
                     "the runtime process each monitor keeps": memory_summary(runtimes),
                     "ours per container (monitor + runtime)": memory_summary(combined)}
    log("ours: removing %d containers" % count)
    out["ours_remove"] = timed_loop(lambda n: ours.remove(n, rt), names)
    names = ["%s-pmany-%03d" % (BENCH_PREFIX, i) for i in range(count)]
    log("podman: starting %d containers" % count)
    out["podman_start"] = timed_loop(podman.start, names)
    time.sleep(1.0)
    out["memory"]["podman conmon"] = memory_summary([memory_kib(p) for p in podman.conmon_pids()])
    log("podman: removing %d containers" % count)
    out["podman_remove"] = timed_loop(podman.remove, names)
    res["many"] = out


# ---- report -----------------------------------------------------------------------


def ms(value):
    return "%8.1f" % (value * 1000.0)


def print_start(res, args):
    start, rts = res["start"], args.runtimes
    labels = ([("ours_%s" % rt, "ours in-process, ContainerTask.run (%s)" % rt) for rt in rts]
              + [("module_%s" % rt, "ours, module process (%s)" % rt) for rt in rts]
              + [("podman", "podman run -d (crun)")]
              + [("bare_%s" % rt, "%s run --detach, prepared bundle (floor)" % rt) for rt in rts])
    labels = [(k, label) for k, label in labels if start.get(k)]
    print("1. start, spec to running process (ms, %d runs)" % args.runs)
    print("   %-52s %8s %8s %8s" % ("", "median", "min", "max"))
    for key, label in labels:
        print("   %-52s %s %s %s" % (label, ms(start[key]["median"]), ms(start[key]["min"]), ms(start[key]["max"])))
    print("\n   ratios (median / median; min / min):")
    pod = start["podman"]
    for key, label in labels:
        if key.startswith(("ours", "module")):
            s, rt = start[key], key.split("_", 1)[1]
            line = "   %-52s ours/podman %5.2f (%5.2f)" % (label, s["median"] / pod["median"], s["min"] / pod["min"])
            floor = start.get("bare_%s" % rt)
            if floor:
                line += "   ours/bare-%s %5.2f (%5.2f)" % (rt, s["median"] / floor["median"], s["min"] / floor["min"])
            print(line)
    if start.get("bare_crun"):
        print("   %-52s podman/bare-crun %5.2f" % ("podman run -d", pod["median"] / start["bare_crun"]["median"]))
    print("   target: ours in-process / podman <= 1.0\n")
    for rt, phases in res.get("phases", {}).items():
        print("   where ours spends a start (%s, medians, ms):" % rt)
        for key in [k for k in phases if k != "total"] + ["total"]:
            print("     %-62s %s" % (key, ms(phases[key])))


def print_many(many):
    n = many["count"]
    print("\n2. %d containers (%s), total s and per container ms" % (n, many["runtime"]))
    print("   %-32s %9s %9s %9s %9s" % ("", "start s", "per ms", "rm s", "per ms"))
    for who, label in (("ours", "ours (ContainerTask, in-process)"), ("podman", "podman")):
        start, remove = many[who + "_start"], many[who + "_remove"]
        print("   %-32s %9.2f %9.1f %9.2f %9.1f" % (label, start, start / n * 1000, remove, remove / n * 1000))
    print("   ratios ours/podman: start %.2f, stop+remove %.2f" % (
        many["ours_start"] / many["podman_start"], many["ours_remove"] / many["podman_remove"]))
    print("   (ours stop_timeout=0, podman rm -f -t 0: both kill at once; sleep as pid 1 ignores SIGTERM)")
    print("\n3. memory while %d run (KiB; Pss counts shared pages once)" % n)
    print("   %-42s %5s %12s %9s %11s %11s" % ("", "procs", "VmRSS median", "max", "RSS total", "Pss total"))
    for label, m in many["memory"].items():
        if m["n"]:
            print("   %-42s %5d %12d %9d %11d %11d"
                  % (label, m["n"], m["rss"]["median"], m["rss"]["max"], m["rss_total"], m["pss_total"]))
    worst = many["memory"]["our monitor"]["rss"]
    if worst:
        print("   monitor budget 12 MiB (12288 KiB) VmRSS each: %s (max %d)"
              % ("within" if worst["max"] <= 12288 else "OVER", worst["max"]))


def print_report(res, args):
    m = res["machine"]
    print("\nmachine: %s, %s CPUs, load %s" % (m["kernel"], m["cpus"], m["load"]))
    print("tools:   %s; %s; %s; python %s" % (m["podman"], m["crun"], m["runc"], m["python"]))
    print("image:   busybox static rootfs (%d KiB tar), command %s\n" % (m["tar_kib"], " ".join(COMMAND)))
    if res.get("start"):
        print_start(res, args)
    if res.get("many"):
        print_many(res["many"])
    if res.get("profile"):
        print("\ncProfile of one in-process start (%s), by cumulative time:" % args.runtimes[0])
        print(res["profile"])


def machine_facts(tar):
    return {
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "load": " ".join("%.2f" % v for v in os.getloadavg()),
        "podman": run(["podman", "--version"], check=False).stdout.strip(),
        "crun": run(["crun", "--version"], check=False).stdout.splitlines()[0],
        "runc": run(["runc", "--version"], check=False).stdout.splitlines()[0],
        "python": sys.version.split()[0],
        "tar_kib": os.path.getsize(tar) // 1024,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per start measurement (default 10)")
    parser.add_argument("--count", type=int, default=100, help="containers in the many-containers round")
    parser.add_argument("--runtimes", default="crun,runc", help="our runtimes, first is used for the 100 (crun,runc)")
    parser.add_argument("--module-runtimes", choices=("first", "all"), default="all")
    parser.add_argument("--no-many", action="store_true", help="skip the many-containers round")
    parser.add_argument("--profile", action="store_true", help="also cProfile one in-process start")
    parser.add_argument("--workdir", default="/var/tmp")
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args(argv)
    args.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if os.geteuid() != 0:
        parser.error("run as root (overlay mounts, cgroups, OCI runtimes)")
    for tool in ["podman", "tar"] + args.runtimes + ["crun"]:
        if shutil.which(tool) is None:
            parser.error("%s is not installed (apt install %s)" % (tool, tool))

    # crun refuses hybrid hosts with hugetlb alone on cgroup2; the documented host fix (docs/runtime.md).
    if fix_hybrid_hugetlb():
        log("mounted hugetlb as a v1 hierarchy (docs/runtime.md)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds through the finally blocks too
    try:
        return bench(args)
    except KeyboardInterrupt:
        log("interrupted; everything it started is removed")
        return 130


def bench(args):
    before = existing_cgroups()
    work = tempfile.mkdtemp(prefix="container-bench-", dir=args.workdir)
    res = {}
    ours = podman = bare = None
    try:
        tar = build_busybox_rootfs(os.path.join(work, "busybox.tar"))
        res["machine"] = machine_facts(tar)
        store = os.path.join(work, "store")
        images = ImageService(store)
        try:
            apply_import(images, parse_reference(IMAGE), plan_import(tar, IMAGE_CONFIG))
        finally:
            images.close()
        ours = Ours(store)
        podman = Podman(work)
        podman.load(tar)
        bare = Bare(work, tar)
        bench_start(args, work, ours, podman, bare, res)
        if args.profile:
            res["profile"] = profile_start(ours, args.runtimes[0])
        if not args.no_many:
            bench_many(args, ours, podman, res)
    finally:
        log("cleaning up")
        for part in (ours, podman, bare):
            if part is not None:
                try:
                    part.cleanup()
                except Exception as exc:  # pylint: disable=broad-except
                    log("cleanup of %s failed: %s" % (type(part).__name__, exc))
        cleanup_cgroups(before)
        unmount_all_under(work)
        shutil.rmtree(work, ignore_errors=True)
        if os.path.exists(work):
            log("cleanup: %s could not be removed entirely; look for mounts under it" % work)
    print_report(res, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(res, handle, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
