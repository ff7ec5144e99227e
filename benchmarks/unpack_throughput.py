# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unpack throughput: apply_layer vs GNU ``tar -x`` on the same tar, on tmpfs.

Usage: python3 benchmarks/unpack_throughput.py [TAR] [--dir /dev/shm] [--runs 3]
Without TAR, a tar of /usr/share is made first. Prints entries/s and MB/s
(best of the runs) for both. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), ".build", "collections"))

from ansible_collections.intermodal.containers.plugins.module_utils._unpack import (  # noqa: E402
    apply_layer,
    remove_tree,
)


def _count(tar_path):
    out = subprocess.run(["tar", "-tf", tar_path], check=True, stdout=subprocess.PIPE).stdout
    return out.count(b"\n")


def _time(func, runs, workdir):
    best = None
    for _run in range(runs):
        dest = tempfile.mkdtemp(dir=workdir)
        start = time.perf_counter()
        func(dest)
        elapsed = time.perf_counter() - start
        remove_tree(dest)
        best = elapsed if best is None else min(best, elapsed)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tar", nargs="?")
    parser.add_argument("--dir", default="/dev/shm")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="unpack-bench-", dir=args.dir)
    try:
        tar_path = args.tar
        if not tar_path:
            tar_path = os.path.join(workdir, "share.tar")
            subprocess.run(["tar", "-C", "/usr", "-cf", tar_path, "share"], check=True)
        entries = _count(tar_path)
        size = os.path.getsize(tar_path)

        def ours(dest):
            with open(tar_path, "rb") as stream:
                apply_layer(stream, dest)

        def gnu(dest):
            subprocess.run(["tar", "-C", dest, "--numeric-owner", "-xpf", tar_path], check=True)

        print("tar: %s, %d entries, %.0f MB" % (tar_path, entries, size / 1e6))
        for name, func in (("apply_layer", ours), ("tar -x", gnu)):
            elapsed = _time(func, args.runs, workdir)
            print("%-12s %6.2f s  %8.0f entries/s  %7.1f MB/s" % (name, elapsed, entries / elapsed, size / 1e6 / elapsed))
    finally:
        remove_tree(workdir)


if __name__ == "__main__":
    main()
