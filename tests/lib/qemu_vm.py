"""A qemu (TCG) test host running a stock Debian kernel with pure cgroup v2.

This machine's cgroups are hybrid, and its /dev/kvm only boots PVM kernels,
so the few tests that must see cgroup v2 boot a Debian bookworm VM under
software emulation (see docs/test-hosts.md).

- build_vm_image(cache_dir=None) -> VMImage(kernel, initrd, disk): a
  debootstrap bookworm root with systemd, openssh-server, python3, crun,
  runc and Debian's kernel (installed INSIDE the root, so the host's /boot is
  never touched and the guest has its own /lib/modules), turned into an ext4
  qcow2.  Built once and cached under /var/cache/intermodal-tests (a lock
  serialises concurrent builders).
- V2Host(workdir): one VM.  .start() makes a network namespace of its own
  (intermodal-v2-<id>) holding a bridge, a tap and the qemu process, boots
  the VM on a per-run qcow2 overlay and waits for SSH; .stop() kills qemu and
  deletes the namespace (with the bridge and tap in it).  Nothing outside
  that namespace can be reached from the VM, and ssh/ansible reach the VM
  only through `ip netns exec`.

The root's SSH key is made per run and handed to the guest on the kernel
command line (it is a public key), where a oneshot unit installs it before
sshd starts; so the cached image holds no key.
"""

from __future__ import annotations

import base64
import collections
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

from tests.lib.rootfs import _file_lock, _safe_rmtree, _unmount_all_under, apt_mirror

DEFAULT_CACHE_DIR = "/var/cache/intermodal-tests"
SUITE = "bookworm"
# Bump when anything below that ends up in the image changes: the cache key.
IMAGE_VERSION = "1"
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "udev", "kmod", "openssh-server",
    "python3", "python3-requests", "crun", "runc", "iproute2", "procps",
]
DISK_SIZE = "4G"  # sparse; room for container layers written by tests

SUBNET_PREFIX = "10.213.88."
BRIDGE_ADDR = SUBNET_PREFIX + "1"
NETMASK = "255.255.255.0"
BRIDGE = "br-v2"
TAP = "tap-v2"

VMImage = collections.namedtuple("VMImage", "kernel initrd disk")

# ---- guest configuration baked into the image --------------------------------

_SSH_KEY_SCRIPT = r"""#!/bin/sh
# Install the per-run root key passed as intermodal.ssh_key=<base64> on the
# kernel command line (the test harness makes a new key for every boot).
set -e
for word in $(cat /proc/cmdline); do
    case "$word" in
        intermodal.ssh_key=*)
            mkdir -p -m 700 /root/.ssh
            echo "${word#intermodal.ssh_key=}" | base64 -d > /root/.ssh/authorized_keys
            chmod 600 /root/.ssh/authorized_keys
            ;;
    esac
done
"""

_SSH_KEY_UNIT = """[Unit]
Description=Install the test harness's SSH key for root
Before=ssh.service
DefaultDependencies=no
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/intermodal-ssh-key

[Install]
WantedBy=multi-user.target
"""

_GUEST_FILES = {
    # The VM is disposable: no fsync-heavy journal, quick shutdown.
    "etc/systemd/journald.conf.d/intermodal-vm.conf": "[Journal]\nStorage=volatile\n",
    "etc/systemd/system.conf.d/intermodal-vm.conf": "[Manager]\nDefaultTimeoutStopSec=10s\n",
    "etc/fstab": "/dev/vda / ext4 rw,noatime 0 1\n",
    "etc/hostname": "v2vm\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    # Speed: no DNS lookups of the client (there is no DNS).
    "etc/ssh/sshd_config.d/intermodal-vm.conf": "UseDNS no\nPermitRootLogin prohibit-password\n",
    "usr/local/sbin/intermodal-ssh-key": _SSH_KEY_SCRIPT,
    "etc/systemd/system/intermodal-ssh-key.service": _SSH_KEY_UNIT,
    # Small initrd: only what finds the root disk (boot time under TCG).
    "etc/initramfs-tools/conf.d/intermodal-vm.conf": "MODULES=list\nBUSYBOX=n\nCOMPRESS=gzip\n",
    "usr/share/initramfs-tools/modules.d/intermodal-vm": "virtio_pci\nvirtio_blk\next4\n",
}

# systemd-network-generator turns the kernel's ip= argument into a .network
# file for systemd-networkd, so the address is chosen per run, not baked in.
_ENABLE = ["systemd-networkd", "systemd-network-generator", "intermodal-ssh-key", "ssh"]
_MASK = ["systemd-networkd-wait-online", "apt-daily.timer", "apt-daily-upgrade.timer",
         "e2scrub_all.timer", "fstrim.timer", "getty@tty1", "serial-getty@ttyS0"]


def _run(argv, what, timeout=1800, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kwargs, check=False)
    if proc.returncode != 0:
        raise RuntimeError("%s failed (rc=%d): %s\n%s" % (
            what, proc.returncode, " ".join(argv), (proc.stdout + proc.stderr)[-4000:]))
    return proc


def _write(root, rel, text, mode=0o644):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _configure_guest(root):
    for rel, text in _GUEST_FILES.items():
        _write(root, rel, text, 0o755 if rel.startswith("usr/local/sbin/") else 0o644)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    _run(["chroot", root, "apt-get", "install", "-y", "-q", "--no-install-recommends",
          "linux-image-amd64"], "installing the guest kernel", env=env)
    _run(["chroot", root, "systemctl", "enable"] + _ENABLE, "enabling guest units")
    _run(["chroot", root, "systemctl", "mask"] + _MASK, "masking guest units")
    _slim(root)


# Kernel modules no VM test loads (half of the image's size), docs, and the
# downloaded .debs and apt lists.
_SLIM_TREES = ["usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"]
_SLIM_MODULE_TREES = ["drivers/gpu", "drivers/media", "drivers/net/wireless", "drivers/infiniband",
                      "drivers/staging", "drivers/bluetooth", "drivers/iio", "drivers/hid",
                      "drivers/usb", "drivers/input", "drivers/scsi", "drivers/net/ethernet",
                      "sound", "net/wireless", "net/mac80211", "net/bluetooth"]


def _slim(root):
    for rel in _SLIM_TREES:
        shutil.rmtree(os.path.join(root, rel), ignore_errors=True)
    modules = os.path.join(root, "lib", "modules")
    for version in os.listdir(modules):
        for rel in _SLIM_MODULE_TREES:
            shutil.rmtree(os.path.join(modules, version, "kernel", rel), ignore_errors=True)
        _run(["chroot", root, "depmod", "-a", version], "depmod")
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        base = os.path.join(root, sub)
        for name in os.listdir(base):
            path = os.path.join(base, name)
            if os.path.isfile(path):
                os.unlink(path)


def _boot_files(root):
    boot = os.path.join(root, "boot")
    kernels = sorted(n for n in os.listdir(boot) if n.startswith("vmlinuz-"))
    if not kernels:
        raise RuntimeError("no kernel was installed in %s" % boot)
    version = kernels[-1][len("vmlinuz-"):]
    return os.path.join(boot, "vmlinuz-" + version), os.path.join(boot, "initrd.img-" + version)


def build_vm_image(cache_dir=None, mirror=None, timings=None):
    """VMImage(kernel, initrd, disk) of the cached cgroup v2 test VM.

    Builds it on first use (root, the apt mirror, about 2 minutes); later
    calls return the cached files.  `timings` (a dict) gets the build's
    step durations when a build happens.
    """
    cache_dir = cache_dir or os.environ.get("INTERMODAL_TEST_CACHE", DEFAULT_CACHE_DIR)
    os.makedirs(cache_dir, exist_ok=True)
    dest = os.path.join(cache_dir, "qemu-v2-%s-amd64-v%s" % (SUITE, IMAGE_VERSION))
    image = VMImage(os.path.join(dest, "vmlinuz"), os.path.join(dest, "initrd.img"),
                    os.path.join(dest, "disk.qcow2"))
    if os.path.exists(image.disk):
        return image
    with _file_lock(dest + ".lock"):
        if os.path.exists(image.disk):
            return image
        for tool in ("debootstrap", "mkfs.ext4", "qemu-img"):
            if not shutil.which(tool):
                raise RuntimeError("%s is missing (apt install debootstrap e2fsprogs qemu-utils)" % tool)
        work = tempfile.mkdtemp(prefix="qemu-v2-build-", dir=cache_dir)
        root = os.path.join(work, "rootfs")
        out = os.path.join(work, "out")
        os.makedirs(out)
        timings = timings if timings is not None else {}
        try:
            started = time.monotonic()
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                 SUITE, root, mirror or apt_mirror(SUITE)],
                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800, check=False)
            _unmount_all_under(root)
            if proc.returncode != 0:
                raise RuntimeError("debootstrap failed (%d):\n%s"
                                   % (proc.returncode, (proc.stdout + proc.stderr)[-4000:]))
            timings["debootstrap"] = time.monotonic() - started
            started = time.monotonic()
            _configure_guest(root)
            _unmount_all_under(root)
            timings["configure"] = time.monotonic() - started
            kernel, initrd = _boot_files(root)
            shutil.copy2(kernel, os.path.join(out, "vmlinuz"))
            shutil.copy2(initrd, os.path.join(out, "initrd.img"))
            started = time.monotonic()
            raw = os.path.join(work, "disk.raw")
            _run(["mkfs.ext4", "-q", "-L", "intermodal-v2", "-d", root, raw, DISK_SIZE],
                 "mkfs.ext4 -d")
            _run(["qemu-img", "convert", "-O", "qcow2", raw, os.path.join(out, "disk.qcow2")],
                 "qemu-img convert")
            timings["disk"] = time.monotonic() - started
            os.rename(out, dest)
        finally:
            _safe_rmtree(work)
    return image


# ---- one VM -----------------------------------------------------------------------

def _die_with_parent():
    """Child side: qemu gets SIGKILL if the test process dies without
    cleaning up, so no VM outlives its test run."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class V2Host:
    """One cgroup v2 VM in a network namespace of its own.

    Attributes once started: .netns, .address, .key_path, .inventory_path,
    .boot_seconds, .console_log.  Use as a context manager, or call
    .start() and .stop() (stop is safe to call more than once, and after a
    failed start).
    """

    def __init__(self, workdir, image=None, name="v2vm", memory_mb=1024, cpus=2,
                 host_index=10, boot_timeout=600):
        self.workdir = os.path.abspath(workdir)
        self.image = image
        self.name = name
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.address = SUBNET_PREFIX + str(host_index)
        self.boot_timeout = boot_timeout
        self.netns = "intermodal-v2-" + secrets.token_hex(4)
        self.key_path = os.path.join(self.workdir, "id_ed25519")
        self.inventory_path = os.path.join(self.workdir, "inventory.ini")
        self.console_log = os.path.join(self.workdir, "console.log")
        self.overlay = os.path.join(self.workdir, "overlay.qcow2")
        self.boot_seconds = None
        self._proc = None
        self._netns_made = False

    # -- lifecycle --

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        if not shutil.which("qemu-system-x86_64"):
            raise RuntimeError("qemu-system-x86_64 is missing (apt install qemu-system-x86 qemu-utils)")
        image = self.image or build_vm_image()
        self.image = image
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "intermodal-v2-test",
              "-f", self.key_path], "ssh-keygen")
        with open(self.key_path + ".pub") as f:
            pubkey = f.read().strip()
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.disk,
              self.overlay], "qemu-img create overlay")
        self._make_network()
        self._write_inventory()
        append = " ".join([
            "console=ttyS0", "root=/dev/vda", "rw", "net.ifnames=0", "quiet",
            "ip=%s:::%s:%s:eth0:off" % (self.address, NETMASK, self.name),
            "systemd.hostname=" + self.name,
            "intermodal.ssh_key=" + base64.b64encode(pubkey.encode()).decode(),
        ])
        mac = "52:54:00:%02x:%02x:%02x" % tuple(secrets.token_bytes(3))
        argv = [
            "ip", "netns", "exec", self.netns,
            "qemu-system-x86_64", "-name", self.name,
            "-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max",
            "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", "file:" + self.console_log,
            "-kernel", image.kernel, "-initrd", image.initrd, "-append", append,
            # The overlay is thrown away after the run: no need to flush.
            "-drive", "file=%s,if=virtio,format=qcow2,cache=unsafe" % self.overlay,
            "-netdev", "tap,id=n0,ifname=%s,script=no,downscript=no" % TAP,
            "-device", "virtio-net-pci,netdev=n0,mac=" + mac,
            "-device", "virtio-rng-pci",
        ]
        started = time.monotonic()
        self._qemu_log = open(os.path.join(self.workdir, "qemu.log"), "w")
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._qemu_log,
                                      stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self._wait_for_ssh(started)
        self.boot_seconds = time.monotonic() - started

    def _make_network(self):
        ns = self.netns
        _run(["ip", "netns", "add", ns], "ip netns add")
        self._netns_made = True
        for argv in (
            ["link", "set", "lo", "up"],
            ["link", "add", BRIDGE, "type", "bridge"],
            ["addr", "add", BRIDGE_ADDR + "/24", "dev", BRIDGE],
            ["link", "set", BRIDGE, "up"],
            ["tuntap", "add", "dev", TAP, "mode", "tap"],
            ["link", "set", TAP, "master", BRIDGE],
            ["link", "set", TAP, "up"],
        ):
            _run(["ip", "-n", ns] + argv, "network setup in " + ns)

    def _write_inventory(self):
        ssh_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        with open(self.inventory_path, "w") as f:
            f.write("[v2]\n%s ansible_host=%s ansible_user=root ansible_ssh_private_key_file=%s "
                    "ansible_python_interpreter=/usr/bin/python3 ansible_ssh_common_args='%s'\n"
                    % (self.name, self.address, self.key_path, ssh_args))

    def _wait_for_ssh(self, started):
        deadline = started + self.boot_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError("qemu exited (rc=%s) before SSH answered:\n%s"
                                   % (self._proc.returncode, self._tails()))
            try:
                if self.run("true", timeout=20, check=False, connect_timeout=5).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("VM %s did not answer SSH within %d s:\n%s"
                                   % (self.name, self.boot_timeout, self._tails()))
            time.sleep(2)

    def _tails(self):
        parts = []
        for path in (os.path.join(self.workdir, "qemu.log"), self.console_log):
            try:
                with open(path, errors="replace") as f:
                    parts.append("--- %s ---\n%s" % (path, f.read()[-3000:]))
            except OSError:
                pass
        return "\n".join(parts)

    def stop(self):
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if getattr(self, "_qemu_log", None):
            self._qemu_log.close()
            self._qemu_log = None
        if self._netns_made:
            # Deleting the namespace deletes the bridge and the tap in it.
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
            self._netns_made = False
        if os.path.exists(self.overlay):
            os.unlink(self.overlay)

    # -- using it --

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    @property
    def qemu_pid(self):
        return self._proc.pid if self._proc else None

    def netns_argv(self, argv):
        """`argv` run inside the VM's network namespace (for ssh, ansible)."""
        return ["ip", "netns", "exec", self.netns] + list(argv)

    def ssh_argv(self, connect_timeout=10):
        return self.netns_argv([
            "ssh", "-i", self.key_path, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=%d" % connect_timeout, "root@" + self.address])

    def run(self, cmd, check=True, timeout=300, input=None, connect_timeout=10):
        """Run a shell command line on the VM as root; CompletedProcess (text)."""
        proc = subprocess.run(self.ssh_argv(connect_timeout) + ["--", cmd], capture_output=True,
                              text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError("on %s: %r failed (rc=%d):\n%s%s" % (
                self.name, cmd, proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
        return proc

    def put(self, local_path, remote_path):
        """Copy one local file to the VM (through ssh, no scp/sftp needed)."""
        with open(local_path, "rb") as f:
            data = f.read()
        proc = subprocess.run(self.ssh_argv() + ["--", "cat > '%s'" % remote_path], input=data,
                              capture_output=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise RuntimeError("copying %s to %s:%s failed: %s"
                               % (local_path, self.name, remote_path, proc.stderr.decode()[-2000:]))

    def qemu_rss_bytes(self):
        """Resident memory of the qemu process (VmRSS), or None if not running."""
        if not self.running:
            return None
        with open("/proc/%d/status" % self._proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return None
