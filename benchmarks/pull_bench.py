"""Pull benchmark: intermodal.containers against podman, skopeo and the physical floors.

Run as root from the repository root (see benchmarks/README.md and docs/performance.md):

    python benchmarks/pull_bench.py [--runs N] [--json out.json] [--fs loop|disk|tmpfs] [--profile]

It starts its own docker-registry on 127.0.0.1, publishes the Debian test image
(minbase + a delta layer, 2 gzip layers) with the collection's own code, and
times, round after round and in fresh storage: our pull in-process and through
the module process, our pull=always check (one HEAD), podman pull cold and
warm, skopeo copy (no unpack), and the floors (plain GETs, gunzip + sha256,
GNU tar -x). The page cache cannot be dropped here, so "cold" means "not in
this tool's store". A script, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import bench_setup  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from bench_setup import COLLECTIONS_DIR, REPO_ROOT, run  # noqa: E402,F401

bench_setup.reexec_in_venv("PULL_BENCH_NO_REEXEC")
bench_setup.ensure_collection_path()

# pylint: disable=wrong-import-position
from ansible_collections.intermodal.containers.plugins.module_utils import _streams  # noqa: E402
from ansible_collections.intermodal.containers.plugins.module_utils._images import ImageService  # noqa: E402
from ansible_collections.intermodal.containers.plugins.module_utils._manifest import chain_ids  # noqa: E402
from ansible_collections.intermodal.containers.plugins.module_utils._reference import parse_reference  # noqa: E402
from tests.integration.fixtures_images import publish  # noqa: E402
from tests.lib.registry import Registry  # noqa: E402
from tests.lib.rootfs import _unmount_all_under as unmount_all_under  # noqa: E402
from tests.lib.rootfs import build_debian_delta_layer, build_debian_minbase  # noqa: E402

BASE_NAME = "debian/minbase:bookworm"
TOP_NAME = "debian/delta:1"
BASE_CONFIG = {"cmd": ["/bin/bash"], "env": {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}}
MODULE = os.path.join(REPO_ROOT, "plugins", "modules", "image.py")
ROWS = (("ours_cold", "ours cold (ImageService.pull, in-process)"),
        ("ours_module_cold", "ours cold (module process)"),
        ("ours_module_noop", "ours module no-op (start-up, present)"),
        ("ours_warm", "ours warm (pull=always: HEAD + compare)"),
        ("ours_module_warm", "ours warm (module process, pull=always)"),
        ("podman_cold", "podman pull cold"),
        ("podman_warm", "podman pull warm (second pull)"),
        ("skopeo_cold", "skopeo copy -> dir: (no unpack)"))


# ---- helpers ----------------------------------------------------------------

def log(msg):
    print("[pull-bench] " + msg, file=sys.stderr, flush=True)


def sync():
    # Twice: with --fs loop the first pushes the loop fs into its backing file, the
    # second that file to disk, so no writeback of a previous run lands on this one.
    os.sync()
    os.sync()


def _cpu_now():
    self_, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime


def timed(fn):
    """Wall seconds of fn() after a sync, and its result; CPU seconds in timed.cpu.

    CPU is user+sys of this process (all threads) and of the children that
    ended meanwhile (a tool's process), not of the registry, which keeps running.
    """
    sync()
    cpu = _cpu_now()
    start = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    timed.cpu = _cpu_now() - cpu
    return wall, result


timed.cpu = 0.0


def remove(path):
    """Unmount what is under path (podman's overlay mounts its graphroot on itself; loop, tmpfs) and delete."""
    if os.path.lexists(path):
        unmount_all_under(path)
        shutil.rmtree(path, ignore_errors=True)


def stats(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": [round(v, 4) for v in values]}


# ---- the image ----------------------------------------------------------------

def publish_image(work, registry):
    minbase = build_debian_minbase()
    delta = build_debian_delta_layer(os.path.join(work, "delta.tar"))
    publisher = os.path.join(work, "publisher")
    base = registry.host + "/" + BASE_NAME
    top = registry.host + "/" + TOP_NAME
    publish(publisher, base, minbase, config=BASE_CONFIG)
    publish(publisher, top, delta, base=base)
    return top


def describe_image(store_root, ref):
    """Sizes and file count of the pulled image, read from our own store."""
    service = ImageService(store_root)
    try:
        record = service.record(ref)
        manifest = service.manifest_of(record)
        config = service.config_of(record)
        layers = []
        for desc, chain in zip(manifest.layers, chain_ids(config.diff_ids)):
            info = service.layers.info(chain)
            layers.append({"digest": desc.digest, "size": desc.size, "media_type": desc.media_type,
                           "entries": info.get("entries"), "file_bytes": info.get("size")})
        return {"manifest_digest": record["manifest_digest"], "config": manifest.config.digest,
                "config_size": manifest.config.size, "layers": layers,
                "compressed": sum(layer["size"] for layer in layers),
                "entries": sum(layer["entries"] or 0 for layer in layers)}
    finally:
        service.close()


# ---- ours -----------------------------------------------------------------------

def ours_pull(store, ref_text):
    def go():
        service = ImageService(store)
        try:
            return service.pull(parse_reference(ref_text))
        finally:
            service.close()
    return timed(go)


def ours_warm(store, ref_text, registry):
    """pull=always on a present image: one HEAD, compare, nothing else."""
    ref = parse_reference(ref_text)
    registry.clear_log()

    def go():
        service = ImageService(store)
        try:
            record = service.record(ref)
            remote = service.remote_digest(ref)
            return remote == record["digest"] and service.is_complete(record)
        finally:
            service.close()
    seconds, up_to_date = timed(go)
    requests_seen = registry.requests_log()
    return seconds, up_to_date, requests_seen


def module_run(work, store, ref_text, pull="missing"):
    """The real module process: python plugins/modules/image.py args.json."""
    args = os.path.join(work, "module-args.json")
    with open(args, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": {"name": ref_text, "store_root": store, "pull": pull}}, handle)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS_DIR)

    def go():
        return subprocess.run([sys.executable, MODULE, args], env=env, capture_output=True, text=True, check=False)
    seconds, proc = timed(go)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError("module printed no JSON (rc %d):\n%s%s"
                           % (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
    if result.get("failed"):
        raise RuntimeError("module failed: %s" % result.get("msg"))
    return seconds, result


# ---- podman and skopeo ------------------------------------------------------------

class Podman:
    """podman with its own storage, config and registries in a temp dir (test-hosts.md)."""

    def __init__(self, work, registry_host):
        self.work = work
        self.conf_dir = os.path.join(work, "podman-conf")
        os.makedirs(self.conf_dir, exist_ok=True)
        self.registries = os.path.join(self.conf_dir, "registries.conf")
        with open(self.registries, "w") as handle:
            handle.write('unqualified-search-registries = []\n\n[[registry]]\nlocation = "%s"\ninsecure = true\n'
                         % registry_host)
        self.containers_conf = os.path.join(self.conf_dir, "containers.conf")
        with open(self.containers_conf, "w") as handle:
            handle.write('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                         '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')

    def env(self, root):
        storage_conf = os.path.join(root, "storage.conf")
        with open(storage_conf, "w") as handle:
            handle.write('[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n'
                         % (os.path.join(root, "graph"), os.path.join(root, "run")))
        auth_file = os.path.join(root, "auth.json")
        with open(auth_file, "w") as handle:
            handle.write('{"auths": {}}\n')
        return dict(os.environ, CONTAINERS_STORAGE_CONF=storage_conf, CONTAINERS_CONF=self.containers_conf,
                    CONTAINERS_REGISTRIES_CONF=self.registries, REGISTRY_AUTH_FILE=auth_file)

    def cmd(self, root, *args):
        return ["podman", "--root", os.path.join(root, "graph"), "--runroot", os.path.join(root, "run"),
                "--storage-driver", "overlay", "--cgroup-manager=cgroupfs", "--events-backend=file"] + list(args)

    def prepare(self, root):
        """Initialise the storage (overlay feature probes) untimed, as on a host that has used podman."""
        os.makedirs(root, exist_ok=True)
        env = self.env(root)
        run(self.cmd(root, "images"), env=env)
        return env

    def pull(self, root, env, ref_text):
        return timed(lambda: run(self.cmd(root, "pull", "--quiet", "--tls-verify=false", ref_text), env=env))[0]


def skopeo_copy(dest, ref_text, registries):
    env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=registries)
    return timed(lambda: run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                              "docker://" + ref_text, "dir:" + dest], env=env))[0]


# ---- physical floors ---------------------------------------------------------------

def floor_download(registry, image):
    """Sequential plain GETs of config + layer blobs over loopback; returns (seconds, blobs)."""
    import requests  # pylint: disable=import-outside-toplevel

    repo = TOP_NAME.split(":", 1)[0]
    digests = [image["config"]] + [layer["digest"] for layer in image["layers"]]
    blobs = {}

    def go():
        with requests.Session() as session:
            session.trust_env = False
            for digest in digests:
                parts = []
                with session.get("%s/v2/%s/blobs/%s" % (registry.url, repo, digest), stream=True) as resp:
                    resp.raise_for_status()
                    for chunk in resp.iter_content(1024 * 1024):
                        parts.append(chunk)
                blobs[digest] = b"".join(parts)
    seconds = timed(go)[0]
    return seconds, blobs


def floor_decompress(blobs, image, out_dir):
    """sha256 of each compressed layer, gunzip, sha256 of the output (the diff_id): one core, in memory."""
    zmod = _streams._zlib_module()[0]  # pylint: disable=protected-access
    parts = {"sha256_compressed": 0.0, "gunzip": 0.0, "sha256_uncompressed": 0.0}
    tars, uncompressed = [], 0

    def clock(key, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        parts[key] += time.perf_counter() - start
        return out

    def gunzip(data):
        obj, view, step = zmod.decompressobj(31), memoryview(data), 1024 * 1024
        return b"".join(obj.decompress(view[i:i + step]) for i in range(0, len(data), step))

    for i, layer in enumerate(image["layers"]):
        data = blobs[layer["digest"]]
        clock("sha256_compressed", lambda d: hashlib.sha256(d).hexdigest(), data)
        raw = clock("gunzip", gunzip, data)
        clock("sha256_uncompressed", lambda d: hashlib.sha256(d).hexdigest(), raw)
        uncompressed += len(raw)
        tars.append(os.path.join(out_dir, "layer%d.tar" % i))
        with open(tars[-1], "wb") as handle:
            handle.write(raw)
    parts["total"] = sum(parts.values())
    return parts, tars, uncompressed


def entry_kinds(tars):
    """How many files, directories, links... the layer tars hold (whiteouts count as files)."""
    names = {tarfile.REGTYPE: "files", tarfile.AREGTYPE: "files", tarfile.DIRTYPE: "dirs",
             tarfile.SYMTYPE: "symlinks", tarfile.LNKTYPE: "hardlinks"}
    kinds = {}
    for path in tars:
        with tarfile.open(path) as archive:
            for member in archive:
                kind = names.get(member.type, "other")
                kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def floor_tar_extract(tars, dest_root):
    """GNU tar -x of each uncompressed layer into its own dir, then one sync; returns (tar, sync) seconds."""
    os.makedirs(dest_root, exist_ok=True)

    def go():
        for i, tar in enumerate(tars):
            dest = os.path.join(dest_root, "l%d" % i)
            os.mkdir(dest)
            run(["tar", "-x", "--numeric-owner", "-p", "--xattrs", "-f", tar, "-C", dest])
    extract = timed(go)[0]
    start = time.perf_counter()
    sync()
    flushed = time.perf_counter() - start
    return extract, flushed


# ---- profile (py-spy) ------------------------------------------------------------

# The first frame, walking from the sampled one towards the thread's root, that
# names a function here decides the bucket; unpacker frames not listed fall back
# to their file (the unpacker is another helper's and its functions change).
PROFILE_BUCKETS = {
    "syncfs before the layer rename": ("syncfs",),
    "fsync + rename of the blob": ("BlobIngest.commit",),
    "gunzip": ("_GzipDecoder.decode",),
    "blob copy: write + sha256": ("BlobIngest.write",),
    "receive + sha256 (BlobReader)": ("BlobReader._next_chunk", "BlobReader.read"),
    "sha256 of the blob (HashingReader)": ("HashingReader.read",),
    "tar: take decoded chunks + sha256 (diff_id)": ("DecompressingReader.read",),
    "tar: header parsing": ("TarReader.next",),
    "files: write data": ("TarReader.copy_to",),
    "files: create inode": ("_Applier.create",),
    "files: resolve parent (openat2)": ("resolve_dir",),
    "files: chown/chmod/xattrs": ("_Applier.set_metadata", "_Applier.set_dir_metadata"),
    "files: mkdir": ("_Applier.make_dir",),
    "files: directory modes and times": ("_Applier.finish",),
    "implied directories": ("inherit_parent_metadata",),
    "HEAD, manifest, config, scheme probe": ("RegistryClient.resolve", "RegistryClient.get_manifest",
                                             "ImageService._fetch_small_blob"),
}
PROFILE_FILE_BUCKETS = {"_unpack_tar.py": "tar: other", "_unpack_paths.py": "files: other",
                        "_unpack.py": "files: other"}
_BUCKET_OF = {fn: bucket for bucket, fns in PROFILE_BUCKETS.items() for fn in fns}


def _bucket(frames):
    """frames: (function, file) from the thread's root to the sampled frame."""
    names = [fn for fn, _where in frames]
    if names and names[-1] in ("Condition.wait", "Event.wait", "Thread.join"):
        if "DecompressingReader.read" in names:
            return "wait for decompressed data"
        if "ImageService._layer_job" in names:
            return "wait for the parent layer"
        return "wait for the layer threads"
    for fn, _where in reversed(frames):
        if fn in _BUCKET_OF:
            return _BUCKET_OF[fn]
    for _fn, path in reversed(frames):
        if path in PROFILE_FILE_BUCKETS:
            return PROFILE_FILE_BUCKETS[path]
    return "other"


def profile_pull(base, ref_text, rate=250):
    """One more cold pull under ``py-spy record --threads --idle``; seconds per thread and bucket."""
    raw = os.path.join(base, "profile.raw")
    store = os.path.join(base, "ours-profiled")
    with open(raw + ".log", "wb") as spy_log:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "-o", raw, "--format", "raw",
                                "--threads", "--idle", "--nonblocking", "-r", str(rate)],
                               stdout=spy_log, stderr=subprocess.STDOUT)
        try:
            time.sleep(1.0)  # py-spy attaches asynchronously
            seconds, _result = ours_pull(store, ref_text)
            time.sleep(0.3)
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
    if not os.path.exists(raw):
        with open(raw + ".log") as handle:
            raise RuntimeError("py-spy wrote no profile:\n" + handle.read()[-2000:])
    threads = {}
    with open(raw) as handle:
        for line in handle:
            stack, _space, count = line.rstrip().rpartition(" ")
            frames = stack.partition(": ")[2].split(";")
            name = frames[0].rstrip("0123456789").rstrip("_") or frames[0]
            parsed = []
            for frame in frames[1:]:
                fn, _paren, where = frame.partition(" (")
                parsed.append((fn, os.path.basename(where.rsplit(":", 1)[0])))
            if name == "MainThread" and "ours_pull.<locals>.go" not in [fn for fn, _where in parsed]:
                continue  # the sleeps around the pull
            bucket = _bucket(parsed)
            per = threads.setdefault(name, {})
            per[bucket] = per.get(bucket, 0.0) + int(count) / float(rate)
    return {"seconds": seconds, "threads": threads}


def print_profile(prof):
    print()
    print("profile of one more cold pull (%.3f s wall; py-spy, seconds sampled per thread):" % prof["seconds"])
    for name, buckets in sorted(prof["threads"].items()):
        print("  thread %s (%.3f s sampled)" % (name, sum(buckets.values())))
        for bucket, secs in sorted(buckets.items(), key=lambda kv: -kv[1]):
            if secs >= 0.005:
                print("    %7.3f  %s" % (secs, bucket))


# ---- report ----------------------------------------------------------------------

def machine_facts(work):
    disk = run(["df", "--output=source,fstype", work], check=False).stdout.splitlines()[-1:]
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "gzip_backend": _streams.gzip_backend(), "workdir_fs": " ".join(disk[0].split()) if disk else "?",
            "loadavg_after": list(os.getloadavg()),
            "podman": run(["podman", "--version"], check=False).stdout.strip(),
            "skopeo": run(["skopeo", "--version"], check=False).stdout.strip(),
            "tar": run(["tar", "--version"], check=False).stdout.splitlines()[0]}


def fmt(entry, cpu):
    if entry is None:
        return "%8s %8s %8s" % ("-", "-", "-")
    return "%8.3f %8.3f %8.3f" % (entry["median"], entry["min"], cpu["median"] if cpu else float("nan"))


def print_report(res):
    m, img = res["machine"], res["image"]
    print()
    print("machine: %d CPUs, kernel %s, Python %s, gzip backend %s, stores on %s, load average after %s"
          % (m["cpus"], m["kernel"], m["python"], m["gzip_backend"], m["workdir_fs"],
             " ".join("%.2f" % x for x in m["loadavg_after"])))
    print("tools:   %s; %s; %s" % (m["podman"], m["skopeo"], m["tar"]))
    print("image:   %s, %d layers, %.1f MiB compressed, %.1f MiB uncompressed tar, %d tar entries (%s)"
          % (res["ref"], len(img["layers"]), img["compressed"] / 2 ** 20, img["uncompressed"] / 2 ** 20,
             img["entries"], ", ".join("%d %s" % (n, k) for k, n in sorted(img["kinds"].items()))))
    print("runs:    %d each (median / min wall seconds, median user+sys CPU seconds), stores on --fs %s;\n"
          "         page cache not dropped (not permitted here)"
          % (res["runs"], res["fs"]))
    print()
    print("%-42s %8s %8s %8s" % ("tool", "median", "min", "cpu"))
    for key, label in ROWS:
        print("%-42s %s" % (label, fmt(res["timings"].get(key), res["cpu"].get(key))))
    fl = res["floors"]
    print()
    print("physical floors (median of runs):")
    print("  (a) GET all blobs, requests, sequential  %7.3f s" % fl["download"]["median"])
    print("  (b) sha256 + gunzip + sha256 in-process  %7.3f s  (sha256 gz %.3f, gunzip %.3f, sha256 tar %.3f)"
          % (fl["decompress"]["median"], fl["decompress_parts"]["sha256_compressed"],
             fl["decompress_parts"]["gunzip"], fl["decompress_parts"]["sha256_uncompressed"]))
    print("  (c) GNU tar -x of the layer tars         %7.3f s  (+ sync %.3f s)"
          % (fl["tar_extract"]["median"], fl["tar_sync"]["median"]))
    print("  sum (a)+(b)+(c)+sync                     %7.3f s" % fl["sum"])
    per_inode = fl["tar_extract"]["median"] / max(1, img["entries"]) * 1e6
    print("  GNU tar: %.0f us per tar entry" % per_inode)
    if per_inode > 150:
        print("  WARNING: creating files is very slow on this filesystem (journal-less ext4 scans recently\n"
              "  deleted inodes for every new one); every tool below pays it; try --fs loop")
    print()
    for key, value in res["ratios"].items():
        print("%-40s %6.2f" % (key, value))
    print()
    for label, key in (("in-process", "warm_requests"), ("module process", "module_warm_requests")):
        warm = res[key]
        print("ours warm (%s) registry requests: %d (%s) -> %s"
              % (label, len(warm), ", ".join("%s %s" % (r["method"], r["path"]) for r in warm),
                 "OK: exactly one HEAD" if [r["method"] for r in warm] == ["HEAD"] else "UNEXPECTED"))
    print("podman warm registry requests: %d (%s)" % (len(res["podman_warm_requests"]), ", ".join(
        "%s %s %d" % (r["method"], r["path"], r["status"]) for r in res["podman_warm_requests"])))
    if res.get("profile"):
        print_profile(res["profile"])


def ratios(timings, floors):
    med = {key: entry["median"] for key, entry in timings.items() if entry}
    out = {}
    for label, ours, theirs in (("ours/podman cold (target <= 0.80)", "ours_cold", "podman_cold"),
                                ("ours module/podman cold", "ours_module_cold", "podman_cold"),
                                ("ours/skopeo cold", "ours_cold", "skopeo_cold"),
                                ("ours warm/podman warm", "ours_warm", "podman_warm"),
                                ("ours module warm/podman warm", "ours_module_warm", "podman_warm")):
        if med.get(ours) and med.get(theirs):
            out[label] = med[ours] / med[theirs]
    out["ours cold / sum of floors"] = med["ours_cold"] / floors["sum"]
    return out


# ---- main ------------------------------------------------------------------------

def bench(args, work, base):
    registry = Registry(os.path.join(base, "registry"))
    registry.start()
    try:
        log("registry on %s; publishing the Debian test image" % registry.host)
        ref_text = publish_image(base, registry)
        timings = {key: [] for key, _label in ROWS}
        floors = {"download": [], "decompress": [], "tar_extract": [], "tar_sync": []}
        cpu = {key: [] for key in timings}

        def record(key, seconds):
            timings[key].append(seconds)
            cpu[key].append(timed.cpu)
        warm_requests = module_warm_requests = podman_warm_requests = None
        image = None
        podman = Podman(work, registry.host)
        decompress_parts = None
        # Nothing is deleted before the end: on an ext4 without a journal (this machine's root fs)
        # every new inode scans the recently deleted ones, so deleting a tree slows the next run.
        for i in range(args.runs):
            log("run %d/%d: ours" % (i + 1, args.runs))
            store = os.path.join(base, "ours-%d" % i)
            seconds, _result = ours_pull(store, ref_text)
            record("ours_cold", seconds)
            if image is None:
                image = describe_image(store, parse_reference(ref_text))
            seconds, up_to_date, seen = ours_warm(store, ref_text, registry)
            if not up_to_date:
                raise RuntimeError("warm check says the stored image is out of date")
            record("ours_warm", seconds)
            warm_requests = seen

            store = os.path.join(base, "ours-module-%d" % i)
            record("ours_module_cold", module_run(work, store, ref_text)[0])
            record("ours_module_noop", module_run(work, store, ref_text)[0])
            registry.clear_log()
            seconds, result = module_run(work, store, ref_text, pull="always")
            module_warm_requests = registry.requests_log()
            if result.get("changed"):
                raise RuntimeError("pull=always on an unchanged image reported a change")
            record("ours_module_warm", seconds)

            log("run %d/%d: podman" % (i + 1, args.runs))
            root = os.path.join(base, "podman-%d" % i)
            env = podman.prepare(root)
            record("podman_cold", podman.pull(root, env, ref_text))
            registry.clear_log()
            record("podman_warm", podman.pull(root, env, ref_text))
            podman_warm_requests = registry.requests_log()

            log("run %d/%d: skopeo" % (i + 1, args.runs))
            dest = os.path.join(base, "skopeo-%d" % i)
            record("skopeo_cold", skopeo_copy(dest, ref_text, podman.registries))

            log("run %d/%d: physical floors" % (i + 1, args.runs))
            seconds, blobs = floor_download(registry, image)
            floors["download"].append(seconds)
            tar_dir = os.path.join(base, "floor-tars-%d" % i)
            os.makedirs(tar_dir, exist_ok=True)
            parts, tars, uncompressed = floor_decompress(blobs, image, tar_dir)
            del blobs
            floors["decompress"].append(parts["total"])
            if decompress_parts is None or parts["total"] < decompress_parts["total"]:
                decompress_parts = parts
            image["uncompressed"] = uncompressed
            image.setdefault("kinds", entry_kinds(tars))
            extract, flushed = floor_tar_extract(tars, os.path.join(base, "floor-x-%d" % i))
            floors["tar_extract"].append(extract)
            floors["tar_sync"].append(flushed)
        profile = profile_pull(base, ref_text) if args.profile else None
    finally:
        registry.stop()

    timings = {key: stats(values) for key, values in timings.items()}
    cpu = {key: stats(values) for key, values in cpu.items()}
    floor_stats = {key: stats(values) for key, values in floors.items()}
    floor_stats["decompress_parts"] = decompress_parts
    floor_stats["sum"] = sum(floor_stats[k]["median"] for k in ("download", "decompress", "tar_extract", "tar_sync"))
    return {"ref": ref_text, "runs": args.runs, "fs": args.fs, "machine": machine_facts(base), "image": image,
            "timings": timings, "cpu": cpu, "floors": floor_stats, "ratios": ratios(timings, floor_stats),
            "warm_requests": warm_requests, "module_warm_requests": module_warm_requests,
            "podman_warm_requests": podman_warm_requests, "profile": profile}


def make_base(work, kind, runs):
    """Where stores, storage and floors live: the workdir's own fs, a fresh ext4 loop image, or tmpfs."""
    if kind == "disk":
        return work
    base = os.path.join(work, "mnt")
    os.mkdir(base)
    if kind == "tmpfs":
        run(["mount", "-t", "tmpfs", "-o", "size=16g,mode=0700", "pull-bench", base])
        return base
    image = os.path.join(work, "ext4.img")
    with open(image, "wb") as handle:
        handle.truncate((2 + runs) * 1024 ** 3)  # about 0.8 GiB per run; sparse
    # A journal, as on real hosts (and unlike this machine's root fs, see docs/performance.md).
    run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image])
    run(["mount", "-o", "loop", image, base])
    return base


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per tool (default 3)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--workdir", default="/var/tmp",
                        help="parent of the temp dir for stores and storage (default /var/tmp, on disk)")
    parser.add_argument("--fs", choices=("loop", "disk", "tmpfs"), default="loop",
                        help="filesystem for registry, stores and storage: a fresh journaled ext4 on a loop "
                             "device in the workdir (loop, default), the workdir's own (disk), or tmpfs")
    parser.add_argument("--profile", action="store_true",
                        help="after the runs, profile one more cold pull of ours with py-spy and print "
                             "where the time goes")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (layers hold root-owned files and whiteout devices; podman needs it)")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for tool in ("podman", "skopeo", "tar") + (("py-spy",) if args.profile else ()) + (
            ("mkfs.ext4",) if args.fs == "loop" else ()):
        if shutil.which(tool) is None:
            parser.error("%s is not installed" % tool)
    work = tempfile.mkdtemp(prefix="pull-bench-", dir=args.workdir)
    try:
        base = make_base(work, args.fs, args.runs)
        res = bench(args, work, base)
    finally:
        remove(work)
    print_report(res)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(res, handle, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
