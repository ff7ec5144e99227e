"""Docker's default seccomp profile: data and moby's includes/excludes filtering."""

from __future__ import annotations

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils import _seccomp, _spec

DEFAULT = _spec.DEFAULT_CAPABILITIES


def rules(profile, name):
    return [r for r in profile["syscalls"] if name in r["names"]]


def all_names(profile):
    return {n for r in profile["syscalls"] for n in r["names"]}


def test_allow_list_is_mobys_shape():
    names = _seccomp.allowed_syscalls()
    assert len(names) == len(set(names))  # no typo duplicates
    for must in ("read", "write", "execve", "openat", "futex", "exit_group",
                 "io_uring_setup", "landlock_create_ruleset", "name_to_handle_at", "rseq"):
        assert must in names
    for never in ("mount", "umount2", "init_module", "finit_module", "kexec_load", "reboot", "bpf",
                  "ptrace", "socket", "personality", "clone", "clone3", "unshare", "setns", "keyctl", "add_key"):
        assert never not in names


def test_default_caps_amd64():
    p = _seccomp.default_profile(DEFAULT, machine="x86_64", kernel_release="6.1.0")
    assert p["defaultAction"] == "SCMP_ACT_ERRNO" and p["defaultErrnoRet"] == 1
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = all_names(p)
    assert {"arch_prctl", "modify_ldt", "chroot", "ptrace"} <= names  # chroot: CAP_SYS_CHROOT is default
    assert not names & {"mount", "init_module", "reboot", "acct", "settimeofday", "syslog", "bpf", "arm_fadvise64_64"}
    # clone only without namespace flags, clone3 answers ENOSYS
    (clone,) = rules(p, "clone")
    assert clone["args"] == [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]
    (clone3,) = rules(p, "clone3")
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    # AF_VSOCK refused, personality only for the five allowed personas
    (sock,) = rules(p, "socket")
    assert sock["args"] == [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]
    assert sorted(r["args"][0]["value"] for r in rules(p, "personality")) == [0, 8, 131072, 131080, 4294967295]


def test_sys_admin_allows_mount_and_plain_clone():
    p = _seccomp.default_profile(DEFAULT + ["CAP_SYS_ADMIN"], machine="x86_64", kernel_release="6.1.0")
    assert {"mount", "umount2", "unshare", "setns", "clone3"} <= all_names(p)
    assert all("args" not in r for r in rules(p, "clone"))
    assert not any(r["action"] == "SCMP_ACT_ERRNO" for r in rules(p, "clone3"))


@pytest.mark.parametrize("cap, syscall", [
    ("CAP_SYS_MODULE", "finit_module"), ("CAP_SYS_BOOT", "reboot"), ("CAP_SYS_PACCT", "acct"),
    ("CAP_SYS_RAWIO", "iopl"), ("CAP_SYS_TIME", "settimeofday"), ("CAP_SYS_TTY_CONFIG", "vhangup"),
    ("CAP_SYS_NICE", "mbind"), ("CAP_SYSLOG", "syslog"), ("CAP_BPF", "bpf"), ("CAP_PERFMON", "perf_event_open"),
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"), ("CAP_SYS_PTRACE", "kcmp"),
])
def test_capability_includes(cap, syscall):
    without = _seccomp.default_profile(DEFAULT, machine="x86_64", kernel_release="6.1.0")
    with_cap = _seccomp.default_profile(DEFAULT + [cap], machine="x86_64", kernel_release="6.1.0")
    assert syscall not in all_names(without)
    assert syscall in all_names(with_cap)


def test_arch_includes_and_excludes():
    arm = _seccomp.default_profile(DEFAULT, machine="aarch64", kernel_release="6.1.0")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "arm_fadvise64_64" in all_names(arm) and "arch_prctl" not in all_names(arm)
    s390 = _seccomp.default_profile(DEFAULT, machine="s390x", kernel_release="6.1.0")
    (clone,) = rules(s390, "clone")
    assert clone["args"][0]["index"] == 1  # s390 swaps clone's first two arguments
    assert "s390_runtime_instr" in all_names(s390)


def test_min_kernel_include():
    old = _seccomp.default_profile(DEFAULT, machine="x86_64", kernel_release="4.4.0-210-generic")
    new = _seccomp.default_profile(DEFAULT, machine="x86_64", kernel_release="4.8.0")
    assert "ptrace" not in all_names(old)
    assert "ptrace" in all_names(new)


def test_unknown_arch_leaves_architectures_to_the_runtime():
    p = _seccomp.default_profile(DEFAULT, machine="vax", kernel_release="6.1.0")
    assert p["architectures"] == []
    assert "read" in all_names(p)
