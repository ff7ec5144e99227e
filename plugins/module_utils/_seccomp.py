# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Docker's default seccomp profile, as compact data, and its filtering.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

The data is moby's ``profiles/seccomp/default.json`` (moby/moby commit
00f3d189e420d485e42d15fe494f96d272284e0e) with its syscall name lists packed
into strings.  ``default_profile()`` turns it into the OCI ``linux.seccomp``
object the way moby's ``setupSeccomp`` does: a rule is kept only when its
``includes`` hold (every listed capability is in the bounding set, the arch
matches, the kernel is new enough) and none of its ``excludes`` do.
"""

from __future__ import annotations

import os
import platform
import re

ERRNO, ALLOW = "SCMP_ACT_ERRNO", "SCMP_ACT_ALLOW"
DEFAULT_ERRNO_RET = 1  # EPERM for everything not listed

# Native arch names as moby uses them (libseccomp spelling) per uname -m.
_MACHINE_TO_NATIVE = {
    "x86_64": "amd64", "amd64": "amd64", "i386": "x86", "i686": "x86",
    "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "armv6l": "arm",
    "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x", "s390": "s390",
    "riscv64": "riscv64", "mips64": "mips64", "mipsel": "mipsel",
}
_NATIVE_TO_SCMP = {
    "x86": "SCMP_ARCH_X86", "amd64": "SCMP_ARCH_X86_64", "arm": "SCMP_ARCH_ARM",
    "arm64": "SCMP_ARCH_AARCH64", "mips64": "SCMP_ARCH_MIPS64", "mipsel": "SCMP_ARCH_MIPSEL",
    "ppc64": "SCMP_ARCH_PPC64", "ppc64le": "SCMP_ARCH_PPC64LE", "s390": "SCMP_ARCH_S390",
    "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64",
}
# archMap: the native arch plus the sub-arches a process on it may switch to.
ARCH_MAP = {
    "SCMP_ARCH_X86_64": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "SCMP_ARCH_AARCH64": ["SCMP_ARCH_ARM"],
    "SCMP_ARCH_MIPS64": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"],
    "SCMP_ARCH_MIPS64N32": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"],
    "SCMP_ARCH_MIPSEL64": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"],
    "SCMP_ARCH_MIPSEL64N32": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"],
    "SCMP_ARCH_S390X": ["SCMP_ARCH_S390"],
    "SCMP_ARCH_RISCV64": [],
}

# The unconditional allow list (moby's first rule), in moby's order.
_ALLOWED = """
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2
dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64
fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs
fstatfs64 fsync ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat getcpu getcwd
getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32
getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname getsockopt
get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents
io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit io_uring_enter io_uring_register
io_uring_setup ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown
lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr
lstat lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat
mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv
msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open
openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect
poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv recvfrom
recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat renameat2
restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn
rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity
sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64
send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid
setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid
setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid
setsockopt set_thread_area set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget
shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat
stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill
time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime
utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
"""


def _arg(index, value, op="SCMP_CMP_EQ"):
    return {"index": index, "value": value, "op": op}


_CLONE_NS_FLAGS = 2114060288  # CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP

# The conditional rules, in moby's order:
# (names, action, args, includes, excludes, errnoRet)
# includes/excludes: {"caps": [...], "arches": [...], "minKernel": "x.y"}.
_RULES = (
    ("process_vm_readv process_vm_writev ptrace", ALLOW, None, {"minKernel": "4.8"}, None, None),
    # AF_VSOCK (40) sockets are refused: they reach the host across namespaces.
    ("socket", ALLOW, [_arg(0, 40, "SCMP_CMP_NE")], None, None, None),
    ("personality", ALLOW, [_arg(0, 0)], None, None, None),
    ("personality", ALLOW, [_arg(0, 8)], None, None, None),
    ("personality", ALLOW, [_arg(0, 131072)], None, None, None),
    ("personality", ALLOW, [_arg(0, 131080)], None, None, None),
    ("personality", ALLOW, [_arg(0, 4294967295)], None, None, None),
    ("sync_file_range2 swapcontext", ALLOW, None, {"arches": ["ppc64le"]}, None, None),
    ("arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
     ALLOW, None, {"arches": ["arm", "arm64"]}, None, None),
    ("arch_prctl", ALLOW, None, {"arches": ["amd64", "x32"]}, None, None),
    ("modify_ldt", ALLOW, None, {"arches": ["amd64", "x32", "x86"]}, None, None),
    ("s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr", ALLOW, None,
     {"arches": ["s390", "s390x"]}, None, None),
    ("riscv_flush_icache", ALLOW, None, {"arches": ["riscv64"]}, None, None),
    ("open_by_handle_at", ALLOW, None, {"caps": ["CAP_DAC_READ_SEARCH"]}, None, None),
    ("bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount "
     "mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname "
     "sethostname setns syslog umount umount2 unshare",
     ALLOW, None, {"caps": ["CAP_SYS_ADMIN"]}, None, None),
    # Without CAP_SYS_ADMIN, clone may not create namespaces (s390 swaps the args).
    ("clone", ALLOW, [_arg(0, _CLONE_NS_FLAGS, "SCMP_CMP_MASKED_EQ")], None,
     {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}, None),
    ("clone", ALLOW, [_arg(1, _CLONE_NS_FLAGS, "SCMP_CMP_MASKED_EQ")],
     {"arches": ["s390", "s390x"]}, {"caps": ["CAP_SYS_ADMIN"]}, None),
    # clone3's flags sit in a struct seccomp cannot read: ENOSYS makes libc fall back to clone.
    ("clone3", ERRNO, None, None, {"caps": ["CAP_SYS_ADMIN"]}, 38),
    ("reboot", ALLOW, None, {"caps": ["CAP_SYS_BOOT"]}, None, None),
    ("chroot", ALLOW, None, {"caps": ["CAP_SYS_CHROOT"]}, None, None),
    ("delete_module init_module finit_module", ALLOW, None, {"caps": ["CAP_SYS_MODULE"]}, None, None),
    ("acct", ALLOW, None, {"caps": ["CAP_SYS_PACCT"]}, None, None),
    ("kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace", ALLOW, None,
     {"caps": ["CAP_SYS_PTRACE"]}, None, None),
    ("iopl ioperm", ALLOW, None, {"caps": ["CAP_SYS_RAWIO"]}, None, None),
    ("settimeofday stime clock_settime clock_settime64", ALLOW, None, {"caps": ["CAP_SYS_TIME"]}, None, None),
    ("vhangup", ALLOW, None, {"caps": ["CAP_SYS_TTY_CONFIG"]}, None, None),
    ("get_mempolicy mbind set_mempolicy set_mempolicy_home_node", ALLOW, None,
     {"caps": ["CAP_SYS_NICE"]}, None, None),
    ("syslog", ALLOW, None, {"caps": ["CAP_SYSLOG"]}, None, None),
    ("bpf", ALLOW, None, {"caps": ["CAP_BPF"]}, None, None),
    ("perf_event_open", ALLOW, None, {"caps": ["CAP_PERFMON"]}, None, None),
)


def allowed_syscalls():
    """The unconditional allow list, as a list of names."""
    return _ALLOWED.split()


def native_arch(machine=None):
    """moby's native arch name for ``uname -m`` (None if unknown)."""
    return _MACHINE_TO_NATIVE.get(machine or platform.machine())


def _kernel_tuple(release):
    nums = re.findall(r"\d+", release or "")[:2]
    return tuple(int(n) for n in nums) + (0,) * (2 - len(nums))


def _kernel_at_least(minimum, release):
    return _kernel_tuple(release) >= _kernel_tuple(minimum)


def _rule_applies(rule, caps, arch, release):
    _names, _action, _args, includes, excludes, _errno = rule
    excludes = excludes or {}
    includes = includes or {}
    if arch in excludes.get("arches", ()):
        return False
    if any(c in caps for c in excludes.get("caps", ())):
        return False
    if excludes.get("minKernel") and _kernel_at_least(excludes["minKernel"], release):
        return False
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if not all(c in caps for c in includes.get("caps", ())):
        return False
    if includes.get("minKernel") and not _kernel_at_least(includes["minKernel"], release):
        return False
    return True


def default_profile(bounding_caps, machine=None, kernel_release=None):
    """OCI ``linux.seccomp`` for a container whose bounding set is ``bounding_caps``.

    ``machine`` (uname -m) and ``kernel_release`` (uname -r) default to this host.
    """
    caps = set(bounding_caps)
    arch = native_arch(machine)
    release = kernel_release if kernel_release is not None else os.uname().release
    profile = {"defaultAction": ERRNO, "defaultErrnoRet": DEFAULT_ERRNO_RET, "architectures": [], "syscalls": []}
    scmp = _NATIVE_TO_SCMP.get(arch)
    if scmp in ARCH_MAP:
        profile["architectures"] = [scmp] + ARCH_MAP[scmp]
    elif scmp:
        profile["architectures"] = [scmp]
    profile["syscalls"].append({"names": allowed_syscalls(), "action": ALLOW})
    for rule in _RULES:
        if not _rule_applies(rule, caps, arch, release):
            continue
        names, action, args, _inc, _exc, errno_ret = rule
        entry = {"names": names.split(), "action": action}
        if args:
            entry["args"] = [dict(a) for a in args]
        if errno_ret is not None:
            entry["errnoRet"] = errno_ret
        profile["syscalls"].append(entry)
    return profile
