#!/usr/bin/env python3
"""Container benchmark: intermodal.containers against podman and the bare OCI runtime.

Run as root from the repository root:  python3 benchmarks/container_bench.py [--runs 10] [--count 100]

One invocation, side by side, with the same busybox rootfs (tests/lib/rootfs.build_busybox_rootfs):

1. start, spec to running process: ours in-process (ContainerTask(...).run() with
   state=started for a fresh container: create + overlay + spec + monitor start until
   the container's pid is known), ours through the module process, `podman run -d`,
   and `crun run --detach` / `runc run --detach` of a prepared bundle (the floor);
2. 100 containers: start them all, then stop+remove them all, ours vs podman;
3. the RSS of our monitors while the 100 run, against podman's conmon processes.

Nothing here asserts a time. Everything it starts (containers, monitors, podman's
storage and overlay mounts, cgroups) is removed in finally blocks.
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

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS_DIR = os.path.join(REPO_ROOT, ".build", "collections")
VENV_PYTHON = os.path.join(REPO_ROOT, ".venv", "bin", "python")
MODULE = os.path.join(REPO_ROOT, "plugins", "modules", "container.py")


def _reexec_in_venv():
    """Use the project's venv when there is one (same rule as pull_bench.py)."""
    if os.path.exists(VENV_PYTHON) and os.path.realpath(sys.prefix) != os.path.realpath(
            os.path.join(REPO_ROOT, ".venv")) and not os.environ.get("CONTAINER_BENCH_NO_REEXEC"):
        os.environ["CONTAINER_BENCH_NO_REEXEC"] = "1"
        os.execv(VENV_PYTHON, [VENV_PYTHON] + sys.argv)


def _ensure_collection_path():
    """As tests/conftest.py: .build/collections/ansible_collections/intermodal/containers -> repo."""
    ns_dir = os.path.join(COLLECTIONS_DIR, "ansible_collections", "intermodal")
    link = os.path.join(ns_dir, "containers")
    os.makedirs(ns_dir, exist_ok=True)
    if not os.path.islink(link):
        try:
            os.symlink(REPO_ROOT, link)
        except FileExistsError:
            pass
    for path in (COLLECTIONS_DIR, REPO_ROOT):
        if path not in sys.path:
            sys.path.insert(0, path)


_reexec_in_venv()
_ensure_collection_path()

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


def run(cmd, env=None, check=True, cwd=None):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s" % (" ".join(cmd), proc.returncode,
                                                    (proc.stdout + proc.stderr)[-3000:]))
    return proc


def stats(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ---- ours -------------------------------------------------------------------------


def module_params(**overrides):
    """Every module option at its default (as AnsibleModule fills them), then overrides."""
    sys.path.insert(0, os.path.dirname(MODULE))
    try:
        from ansible_collections.intermodal.containers.plugins.modules.container import argument_spec
    finally:
        sys.path.pop(0)

    def defaults(spec):
        return {k: v.get("default") for k, v in spec.items()}

    params = defaults(argument_spec())
    params.update(overrides)
    return params


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
                              stdin=subprocess.DEVNULL)
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


class PhaseTimer:
    """Wall time per phase of one in-process start, by wrapping the service's methods."""

    def __init__(self):
        self.totals = {}
        self._patched = []

    def wrap(self, owner, attr, label):
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - t0
        setattr(owner, attr, timed)
        self._patched.append((owner, attr, original))

    def restore(self):
        for owner, attr, original in reversed(self._patched):
            setattr(owner, attr, original)
        self._patched = []


def phase_breakdown(ours, runtime, runs):
    """Median seconds per phase: create (layer dirs, overlay, spec, state), supervisor start, the rest."""
    from ansible_collections.intermodal.containers.plugins.module_utils import _supervise
    per_run = []
    for i in range(runs):
        timer = PhaseTimer()
        timer.wrap(ContainerService, "create", "create (dirs, overlay mount, spec, state.json)")
        timer.wrap(_containers, "build_spec", "  of which build_spec")
        timer.wrap(_containers, "mount_overlay", "  of which mount_overlay")
        timer.wrap(_containers.Runtime, "check", "  of which Runtime.check (x2: create+start)")
        timer.wrap(_supervise.MonitorSupervisor, "start", "supervisor start (monitor up, container pid known)")
        timer.wrap(_supervise, "install_monitor", "  of which install_monitor")
        timer.wrap(_supervise, "spawn_detached", "  of which spawn_detached")
        timer.wrap(ContainerService, "describe", "describe (result)")
        name = "%s-ph-%s-%d" % (BENCH_PREFIX, runtime, i)
        marks = {}
        spawn = _supervise.spawn_detached

        def marked_spawn(*a, **kw):
            marks["spawn"] = time.time()
            return spawn(*a, **kw)
        _supervise.spawn_detached = marked_spawn
        try:
            t0 = time.perf_counter()
            ours.start(name, runtime)
            total = time.perf_counter() - t0
            marks["returned"] = time.time()
        finally:
            _supervise.spawn_detached = spawn
            timer.restore()
        totals = dict(timer.totals)
        totals.update(timeline(ours.store, name, marks))
        totals["total"] = total
        per_run.append(totals)
        ours.remove(name, runtime)
    keys = per_run[0].keys()
    return {k: statistics.median(r.get(k, 0.0) for r in per_run) for k in keys}


def timeline(store, name, marks):
    """Where the supervisor start goes, from the files each step writes (mtimes: kernel coarse clock, ~4 ms)."""
    paths = ContainerService(store, None).paths(name)

    def mtime(path):
        try:
            return os.stat(path).st_mtime_ns / 1e9
        except OSError:
            return None
    monitor_up = mtime(paths.monitor_pid_file)     # python started, monitor imported, before the runtime
    pid_file = mtime(paths.pid_file)                # the runtime created the container
    recorded = mtime(os.path.join(paths.dir, "monitor.json"))  # the monitor saw the pid file and saved it
    out = {}
    if None not in (monitor_up, pid_file, recorded):
        out["  spawn -> monitor up (python start-up, imports)"] = monitor_up - marks["spawn"]
        out["  monitor up -> runtime wrote the pid file"] = pid_file - monitor_up
        out["  pid file -> monitor recorded it (its 50 ms poll, fsync)"] = recorded - pid_file
        out["  recorded -> supervisor returned (10 ms poll, status, describe)"] = marks["returned"] - recorded
    return out


def profile_start(ours, runtime, top=30):
    name = "%s-prof-%s" % (BENCH_PREFIX, runtime)
    prof = cProfile.Profile()
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
        self.names = set()

    def cmd(self, *args):
        return ["podman", "--root", os.path.join(self.root, "graph"), "--runroot", os.path.join(self.root, "run"),
                "--storage-driver", "overlay", "--cgroup-manager=cgroupfs", "--events-backend=file",
                "--tmpdir", self.tmp] + list(args)

    def load(self, tar):
        run(self.cmd("import", "--quiet", "--change", "CMD [\"sh\"]", "--change", "ENV PATH=/bin",
                     tar, PODMAN_IMAGE), env=self.env)

    def start(self, name):
        # --network none: ours has no network by default, and podman's bridge would rewrite the host's iptables.
        self.names.add(name)
        t0 = time.perf_counter()
        run(self.cmd("run", "-d", "--name", name, "--network", "none", PODMAN_IMAGE, *COMMAND), env=self.env)
        return time.perf_counter() - t0

    def remove(self, name):
        t0 = time.perf_counter()
        run(self.cmd("rm", "-f", "-t", "0", name), env=self.env)
        self.names.discard(name)
        return time.perf_counter() - t0

    def conmon_pids(self):
        out = []
        for pid in all_pids():
            if comm(pid) == "conmon" and self.root in cmdline(pid):
                out.append(pid)
        return out

    def cleanup(self):
        if os.path.isdir(os.path.join(self.root, "graph")):
            proc = run(self.cmd("rm", "-a", "-f", "-t", "0"), env=self.env, check=False)
            if proc.returncode != 0:
                log("cleanup: podman rm -a failed: %s" % proc.stderr[-500:])
        for pid in self.conmon_pids():
            try:
                os.kill(pid, 9)
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
        config = os.path.join(self.bundle, "config.json")
        with open(config) as handle:
            spec = json.load(handle)
        spec["process"]["terminal"] = False
        spec["process"]["args"] = list(COMMAND)
        spec["process"]["env"] = ["PATH=/bin"]
        self.spec = spec
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
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


# ---- /proc ------------------------------------------------------------------------


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as handle:
                out.extend(int(c) for c in handle.read().split())
    except OSError:
        pass
    return out


def memory_kib(pid):
    """(VmRSS, Pss) in KiB; Pss shares the interpreter's pages among the processes mapping them."""
    rss = pss = 0
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        with open("/proc/%d/smaps_rollup" % pid) as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


# ---- cgroups we (or podman for us) made ----------------------------------------------


def controller_dirs():
    try:
        return [os.path.join(CGROUP_ROOT, c) for c in os.listdir(CGROUP_ROOT)
                if os.path.isdir(os.path.join(CGROUP_ROOT, c)) and not os.path.islink(os.path.join(CGROUP_ROOT, c))]
    except OSError:
        return []


def remove_cgroup_tree(path):
    """Remove empty cgroup dirs bottom-up (a cgroup with processes stays and is reported).

    Only ever called on cgroups this benchmark named (cbench-*), never on a parent others share.
    """
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda e: -e[0].count("/")):
        try:
            os.rmdir(dirpath)
        except OSError as exc:
            log("cleanup: cannot remove cgroup %s: %s" % (dirpath, exc))


def rmdir_if_empty(path):
    """One rmdir: succeeds only when the cgroup has no children and no processes."""
    try:
        os.rmdir(path)
    except OSError:
        pass


def cleanup_cgroups(before):
    """intermodal/cbench-* leftovers; the shared parents only when this run created them and they are empty.

    Other users' cgroups under intermodal/ or libpod_parent/ are never walked into.
    """
    for ctrl in controller_dirs():
        base = os.path.join(ctrl, "intermodal")
        if os.path.isdir(base):
            for entry in os.listdir(base):
                if entry.startswith(BENCH_PREFIX) and os.path.isdir(os.path.join(base, entry)):
                    remove_cgroup_tree(os.path.join(base, entry))
            if base not in before:
                rmdir_if_empty(base)
        libpod = os.path.join(ctrl, "libpod_parent")
        if os.path.isdir(libpod) and libpod not in before:
            rmdir_if_empty(os.path.join(libpod, "conmon"))  # podman's cgroupfs manager leaves this one
            rmdir_if_empty(libpod)


def existing_cgroups():
    out = set()
    for ctrl in controller_dirs():
        for name in ("intermodal", "libpod_parent"):
            if os.path.isdir(os.path.join(ctrl, name)):
                out.add(os.path.join(ctrl, name))
    return out


# ---- the benchmark ----------------------------------------------------------------


def bench_start(args, work, ours, podman, bare, res):
    runtimes = args.runtimes
    timings = {}

    def record(key, seconds):
        timings.setdefault(key, []).append(seconds)

    # Warm-ups, untimed: our monitor's first install (compiles its pyc), podman's first run
    # (storage and lock set-up), page cache for every binary.
    for rt in runtimes:
        ours.start("%s-warm-%s" % (BENCH_PREFIX, rt), rt)
        ours.remove("%s-warm-%s" % (BENCH_PREFIX, rt), rt)
    podman.start("%s-warm" % BENCH_PREFIX)
    podman.remove("%s-warm" % BENCH_PREFIX)
    for rt in runtimes:
        bare.start(rt, "%s-warm-bare-%s" % (BENCH_PREFIX, rt))
        bare.remove(rt, "%s-warm-bare-%s" % (BENCH_PREFIX, rt))

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


def bench_many(args, ours, podman, res):
    count, rt = args.count, args.runtimes[0]
    names = ["%s-many-%03d" % (BENCH_PREFIX, i) for i in range(count)]
    out = {"count": count, "runtime": rt}
    log("ours: starting %d containers (%s)" % (count, rt))
    t0 = time.perf_counter()
    for name in names:
        ours.start(name, rt)
    out["ours_start"] = time.perf_counter() - t0
    time.sleep(1.0)  # let the monitors settle before sampling
    monitors, runtimes_rss, combined = [], [], []
    for name in names:
        monitor, rt_children = ours.monitor_pids(name)
        if monitor is None:
            continue
        m_rss, m_pss = memory_kib(monitor)
        c = [memory_kib(p) for p in rt_children]
        monitors.append((m_rss, m_pss))
        runtimes_rss.extend(c)
        combined.append(m_rss + sum(r for r, _ in c))
    out["monitor_rss_kib"] = stats([r for r, _ in monitors])
    out["monitor_pss_kib"] = stats([p for _, p in monitors])
    out["monitor_rss_total_kib"] = sum(r for r, _ in monitors)
    out["monitor_pss_total_kib"] = sum(p for _, p in monitors)
    out["runtime_child_rss_kib"] = stats([r for r, _ in runtimes_rss])
    out["runtime_child_pss_total_kib"] = sum(p for _, p in runtimes_rss)
    out["ours_per_container_rss_kib"] = stats(combined)
    log("ours: removing %d containers" % count)
    t0 = time.perf_counter()
    for name in names:
        ours.remove(name, rt)
    out["ours_remove"] = time.perf_counter() - t0

    pnames = ["%s-pmany-%03d" % (BENCH_PREFIX, i) for i in range(count)]
    log("podman: starting %d containers" % count)
    t0 = time.perf_counter()
    for name in pnames:
        podman.start(name)
    out["podman_start"] = time.perf_counter() - t0
    time.sleep(1.0)
    conmons = [memory_kib(p) for p in podman.conmon_pids()]
    out["conmon_count"] = len(conmons)
    out["conmon_rss_kib"] = stats([r for r, _ in conmons])
    out["conmon_rss_total_kib"] = sum(r for r, _ in conmons)
    out["conmon_pss_total_kib"] = sum(p for _, p in conmons)
    log("podman: removing %d containers" % count)
    t0 = time.perf_counter()
    for name in pnames:
        podman.remove(name)
    out["podman_remove"] = time.perf_counter() - t0
    res["many"] = out


# ---- report -----------------------------------------------------------------------


def ms(value):
    return "%8.1f" % (value * 1000.0)


def print_report(res, args):
    m = res["machine"]
    print()
    print("machine: %s, %s CPUs, load %s" % (m["kernel"], m["cpus"], m["load"]))
    print("tools:   %s; %s; %s; python %s" % (m["podman"], m["crun"], m["runc"], m["python"]))
    print("image:   busybox static rootfs (%d KiB tar), command %s" % (m["tar_kib"], " ".join(COMMAND)))
    print()
    print("1. start, spec to running process (ms, %d runs)" % args.runs)
    print("   %-52s %8s %8s %8s" % ("", "median", "min", "max"))
    labels = []
    for rt in args.runtimes:
        labels.append(("ours_%s" % rt, "ours in-process, ContainerTask.run (%s)" % rt))
    for rt in args.runtimes:
        labels.append(("module_%s" % rt, "ours, module process (%s)" % rt))
    labels.append(("podman", "podman run -d (crun)"))
    for rt in args.runtimes:
        labels.append(("bare_%s" % rt, "%s run --detach, prepared bundle (floor)" % rt))
    start = res["start"]
    for key, label in labels:
        if start.get(key):
            s = start[key]
            print("   %-52s %s %s %s" % (label, ms(s["median"]), ms(s["min"]), ms(s["max"])))
    print()
    print("   ratios (median / median; min / min):")
    pod = start["podman"]
    for key, label in labels:
        if key == "podman" or not start.get(key) or key.startswith("bare"):
            continue
        s = start[key]
        rt = key.split("_", 1)[1]
        floor = start.get("bare_%s" % rt)
        line = "   %-52s ours/podman %5.2f (%5.2f)" % (label, s["median"] / pod["median"], s["min"] / pod["min"])
        if floor:
            line += "   ours/bare-%s %5.2f (%5.2f)" % (rt, s["median"] / floor["median"], s["min"] / floor["min"])
        print(line)
    if start.get("bare_crun"):
        print("   %-52s podman/bare-crun %5.2f" % ("podman run -d", pod["median"] / start["bare_crun"]["median"]))
    print("   target: ours in-process / podman <= 1.0")
    print()
    for rt, phases in res.get("phases", {}).items():
        print("   where ours spends a start (%s, medians, ms):" % rt)
        for key, value in phases.items():
            if key != "total":
                print("     %-62s %s" % (key, ms(value)))
        print("     %-62s %s" % ("total", ms(phases["total"])))
    many = res.get("many")
    if many:
        n = many["count"]
        print()
        print("2. %d containers (%s), total s and per container ms" % (n, many["runtime"]))
        print("   %-30s %9s %9s %9s %9s" % ("", "start s", "per ms", "rm s", "per ms"))
        for who in ("ours", "podman"):
            print("   %-30s %9.2f %9.1f %9.2f %9.1f" % (
                who if who == "podman" else "ours (ContainerTask, in-process)",
                many[who + "_start"], many[who + "_start"] / n * 1000,
                many[who + "_remove"], many[who + "_remove"] / n * 1000))
        print("   ratios ours/podman: start %.2f, stop+remove %.2f" % (
            many["ours_start"] / many["podman_start"], many["ours_remove"] / many["podman_remove"]))
        print("   (ours stop_timeout=0, podman rm -f -t 0: both kill at once; sleep as pid 1 ignores SIGTERM)")
        print()
        print("3. memory while %d run (KiB)" % n)
        r, p = many["monitor_rss_kib"], many["monitor_pss_kib"]
        print("   our monitor VmRSS: median %d, max %d (budget 12 MiB = 12288)  -> %s" % (
            r["median"], r["max"], "within" if r["max"] <= 12288 else "OVER"))
        print("   our monitor Pss:   median %d, max %d; totals: RSS %d, Pss %d for %d monitors" % (
            p["median"], p["max"], many["monitor_rss_total_kib"], many["monitor_pss_total_kib"], r["n"]))
        if many.get("runtime_child_rss_kib"):
            c = many["runtime_child_rss_kib"]
            print("   + the foreground runtime process each monitor keeps: VmRSS median %d, max %d; Pss total %d" % (
                c["median"], c["max"], many["runtime_child_pss_total_kib"]))
            o = many["ours_per_container_rss_kib"]
            print("   ours per container (monitor + runtime) VmRSS median %d, max %d" % (o["median"], o["max"]))
        if many.get("conmon_rss_kib"):
            c = many["conmon_rss_kib"]
            print("   podman conmon (%d): VmRSS median %d, max %d; totals: RSS %d, Pss %d" % (
                many["conmon_count"], c["median"], c["max"], many["conmon_rss_total_kib"],
                many["conmon_pss_total_kib"]))
    if res.get("profile"):
        print()
        print("cProfile of one in-process start (%s), by cumulative time:" % args.runtimes[0])
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    def interrupted(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)  # unwinds through the finally blocks below
    signal.signal(signal.SIGTERM, interrupted)
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
    print_report(res, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(res, handle, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
