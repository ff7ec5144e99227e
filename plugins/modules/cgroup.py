#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cgroup
short_description: A named cgroup with resource limits, for workloads that are not containers
version_added: 0.1.0
description:
  - Creates, limits and removes a cgroup on the target, and optionally moves processes into it.
  - One vocabulary of limits, the same as the container module's, for cgroup v1, v2 and hybrid hosts.
    The module finds where each controller is mounted and writes the matching files
    (for example O(memory) is C(memory.limit_in_bytes) on v1 and C(memory.max) on v2).
  - Only the limits that are set are managed; a limit left out is not touched. Only values that differ from
    what the kernel reports are written, and limits change live, without touching the processes.
  - Every value is validated before anything is created, so bad input changes nothing.
author:
  - intermodal.containers contributors (@intermodal)
requirements:
  - Python 3.9 or newer on the target.
  - Root on the target, and cgroupfs mounted read-write (at C(/sys/fs/cgroup)).
extends_documentation_fragment:
  - intermodal.containers.attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode reads cgroupfs and reports exactly the limits a real run would write.
  diff_mode:
    support: full
  idempotent:
    support: full
    details:
      - Values are compared in the kernel's own units (page-rounded bytes, v2 weights), so a second run
        with the same options writes nothing and reports no change.
options:
  name:
    description: Name of the cgroup (1-63 of C([a-zA-Z0-9_.-])). It is created as O(parent)/O(name) in every hierarchy.
    type: str
    required: true
  parent:
    description:
      - The cgroup to create it under, relative to the cgroupfs root, such as C(intermodal) or C(apps/batch).
      - It is created when missing. Containers of this collection live under C(intermodal) too.
    type: str
    default: intermodal
  state:
    description:
      - V(present) creates the cgroup, sets its limits and moves O(pids) in.
      - V(absent) removes it. It refuses while processes remain in it, unless O(force=true).
    type: str
    choices: [present, absent]
    default: present
  memory:
    description:
      - Memory limit, as bytes or a size such as C(512m) or C(2g) (units b, k, m, g, t; binary).
      - V(-1) or C(unlimited) removes the limit. Rounded down to whole pages, as the kernel keeps it.
    type: raw
  memory_swap:
    description:
      - Memory plus swap limit, as docker's C(--memory-swap); it needs O(memory) and must be at least that.
      - V(-1) for unlimited swap. On cgroup v2 the module writes the difference to C(memory.swap.max).
    type: raw
  memory_reservation:
    description:
      - Soft memory limit (C(memory.soft_limit_in_bytes) on v1, C(memory.low) on v2). V(-1) removes it.
    type: raw
  cpus:
    description:
      - CPU quota in CPUs, for example V(1.5) for 150 ms per 100 ms period. V(0) removes the quota.
      - Must not be negative or more than the host's online CPUs.
    type: float
  cpu_shares:
    description:
      - Relative CPU weight, as docker's C(--cpu-shares) (2 to 262144, default 1024). V(0) means the default.
      - On cgroup v2 it is converted to C(cpu.weight) the way runc and crun do.
    type: int
  cpuset_cpus:
    description: CPUs the processes may run on, such as C(0-1,3).
    type: str
  cpuset_mems:
    description: Memory nodes the processes may use, such as C(0).
    type: str
  pids_limit:
    description: Maximum number of processes and threads. V(0) or less means unlimited.
    type: int
  blkio_weight:
    description:
      - Block I/O weight, 10 to 1000 (C(blkio.weight) or C(blkio.bfq.weight) on v1; C(io.bfq.weight), or
        C(io.weight) converted like runc does, on v2). V(0) means the default.
    type: int
  device_read_bps:
    description:
      - Read rate limits per block device. When set, the device rules become exactly these
        (an empty list removes them all).
    type: list
    elements: dict
    suboptions:
      path:
        description: Block device, such as C(/dev/vda).
        type: str
        required: true
      rate:
        description: Bytes per second, or a size such as C(10m).
        type: raw
        required: true
  device_write_bps:
    description: Write rate limits per block device, as O(device_read_bps).
    type: list
    elements: dict
    suboptions:
      path:
        description: Block device, such as C(/dev/vda).
        type: str
        required: true
      rate:
        description: Bytes per second, or a size such as C(10m).
        type: raw
        required: true
  pids:
    description:
      - Process IDs to move into the cgroup, with all their threads. Processes already in it are left alone,
        and processes not listed are not moved out. Children forked earlier stay where they are.
    type: list
    elements: int
  force:
    description: With O(state=absent), kill (SIGKILL) the processes still in the cgroup and then remove it.
    type: bool
    default: false
notes:
  - On a hybrid host (v1 controllers plus a cgroup2 mount), limits go to the v1 hierarchies, where the controllers are.
  - Removing the cgroup leaves O(parent) in place, since other cgroups may live there.
  - A new v1 cpuset cgroup gets its parent's CPUs and memory nodes, so processes can join it at once.
seealso:
  - module: intermodal.containers.container
"""

EXAMPLES = r"""
---
- name: A cgroup for nightly batch jobs, with memory and CPU limits
  intermodal.containers.cgroup:
    name: batch
    memory: 2g
    memory_swap: 2g        # no swap on top of the 2g
    cpus: 1.5
    pids_limit: 512

- name: Put an already running process into it
  intermodal.containers.cgroup:
    name: batch
    pids:
      - "{{ backup_pid | int }}"

- name: Throttle reads from the data disk and pin to CPU 1
  intermodal.containers.cgroup:
    name: batch
    cpuset_cpus: "1"
    device_read_bps:
      - path: /dev/vdb
        rate: 20m

- name: Lift the memory limit, live
  intermodal.containers.cgroup:
    name: batch
    memory: unlimited
    memory_swap: -1

- name: Remove it, killing what still runs there
  intermodal.containers.cgroup:
    name: batch
    state: absent
    force: true
"""

RETURN = r"""
cgroup:
  description: The cgroup after the task (as predicted in check mode).
  returned: always
  type: dict
  contains:
    name:
      description: The O(name).
      type: str
    path:
      description: The cgroup's path below each hierarchy root.
      type: str
      sample: intermodal/batch
    mode:
      description: The host's cgroup layout, V(v1), V(v2) or V(hybrid).
      type: str
    paths:
      description: The cgroupfs directory for each controller.
      type: dict
      sample: {"memory": "/sys/fs/cgroup/memory/intermodal/batch", "cpu": "/sys/fs/cgroup/cpu/intermodal/batch"}
    exists:
      description: Whether the cgroup exists.
      type: bool
    limits:
      description:
        - Every limit of the vocabulary as the kernel has it; V(null) is unlimited or the default.
        - Sizes are bytes, C(cpus) a float, device rules lists of C(path), C(major), C(minor), C(rate).
      type: dict
      sample: {"memory": 2147483648, "memory_swap": 2147483648, "cpus": 1.5, "pids_limit": 512, "cpu_shares": null}
    pids:
      description: Processes in the cgroup.
      type: list
      elements: int
    stats:
      description: Live usage; empty when the cgroup does not exist.
      type: dict
      contains:
        memory_usage:
          description: Bytes of memory in use.
          type: int
        memory_limit:
          description: The memory limit in bytes, or V(null) when unlimited.
          type: int
        memory_max_usage:
          description: Peak memory use in bytes, where the kernel reports it.
          type: int
        cpu_usage_ns:
          description: CPU time used, in nanoseconds.
          type: int
        pids_current:
          description: Processes and threads in the cgroup.
          type: int
        oom_kills:
          description: Processes killed by the OOM killer for this cgroup's limit.
          type: int
changed_limits:
  description: The limits that were (or in check mode would be) written.
  returned: always
  type: list
  elements: str
  sample: ["memory", "cpus"]
actions:
  description: What was done, or would be done in check mode.
  returned: always
  type: list
  elements: str
  sample: ["Created cgroup intermodal/batch", "Set memory, cpus on cgroup intermodal/batch"]
diff:
  description: Before and after (C(exists), C(limits), C(pids)).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.intermodal.containers.plugins.module_utils._cgroup_task import CgroupTask
from ansible_collections.intermodal.containers.plugins.module_utils._module import run


def _device_spec():
    return dict(type="list", elements="dict", options=dict(
        path=dict(type="str", required=True),
        rate=dict(type="raw", required=True),
    ))


def argument_spec():
    return dict(
        name=dict(type="str", required=True),
        parent=dict(type="str", default="intermodal"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        memory=dict(type="raw"),
        memory_swap=dict(type="raw"),
        memory_reservation=dict(type="raw"),
        cpus=dict(type="float"),
        cpu_shares=dict(type="int"),
        cpuset_cpus=dict(type="str"),
        cpuset_mems=dict(type="str"),
        pids_limit=dict(type="int"),
        blkio_weight=dict(type="int"),
        device_read_bps=_device_spec(),
        device_write_bps=_device_spec(),
        pids=dict(type="list", elements="int"),
        force=dict(type="bool", default=False),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    run(module, lambda: CgroupTask(module.params, check_mode=module.check_mode).run())


if __name__ == "__main__":
    main()
