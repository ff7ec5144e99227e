"""OCI spec generation: Docker-equal defaults, capabilities, privileged mode, rlimits, mounts, user."""

from __future__ import annotations

import os
import resource

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils import _seccomp, _spec
from ansible_collections.intermodal.containers.plugins.module_utils._spec import InvalidOption, build_spec

# What `docker run --rm busybox grep CapBnd /proc/self/status` prints: Docker's 14 default caps.
DOCKER_CAPBND = 0x00000000A80425FB

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    "app:x:1000:1000:App:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nwheel:x:10:app,daemon\naudio:x:29:app\napp:x:1000:\nnobody:x:65534:\n"


def make_rootfs(tmp_path, passwd=PASSWD, group=GROUP):
    """A fake image rootfs tree: only /etc/passwd and /etc/group are read by build_spec."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    if passwd is not None:
        (root / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (root / "etc" / "group").write_text(group)
    return str(root)


def cap_mask(caps):
    return sum(1 << _spec.ALL_CAPABILITIES.index(c) for c in caps)


def spec_for(tmp_path, image=None, **opts):
    return build_spec(image if image is not None else {"Cmd": ["sh"]}, opts, make_rootfs(tmp_path))


# -- Docker-equal defaults ---------------------------------------------------------

def test_default_capabilities_are_dockers(tmp_path):
    spec = spec_for(tmp_path)
    caps = spec["process"]["capabilities"]
    assert cap_mask(caps["bounding"]) == DOCKER_CAPBND
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == _spec.DEFAULT_CAPABILITIES
    assert "inheritable" not in caps and "ambient" not in caps  # empty, as Docker since CVE-2022-24769


def test_default_masked_and_readonly_paths_and_no_new_privs(tmp_path):
    spec = spec_for(tmp_path)
    linux = spec["linux"]
    for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/scsi",
                 "/sys/firmware", "/proc/acpi", "/proc/asound", "/proc/latency_stats", "/proc/timer_stats"):
        assert path in linux["maskedPaths"]
    assert linux["readonlyPaths"] == ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["root"]["readonly"] is False


def test_default_mounts_private_dev_and_ro_sys(tmp_path):
    mounts = {m["destination"]: m for m in spec_for(tmp_path)["mounts"]}
    assert set(mounts) == {"/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue", "/dev/shm"}
    assert mounts["/dev"]["type"] == "tmpfs"  # private /dev, not the host's
    assert "ro" in mounts["/sys"]["options"] and "ro" in mounts["/sys/fs/cgroup"]["options"]
    assert mounts["/dev/pts"]["type"] == "devpts" and "newinstance" in mounts["/dev/pts"]["options"]


def test_default_device_rules_deny_all_then_allow_docker_set(tmp_path):
    rules = spec_for(tmp_path)["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    allowed = {(r["major"], r["minor"]) for r in rules if r["allow"] and "major" in r and "minor" in r}
    assert {(1, 3), (1, 5), (1, 8), (1, 9), (5, 0), (5, 1)} <= allowed


def test_default_namespaces_are_private_and_network_none(tmp_path):
    spec = spec_for(tmp_path)
    kinds = {n["type"] for n in spec["linux"]["namespaces"]}
    assert {"mount", "pid", "ipc", "uts", "network"} <= kinds


def test_host_modes_drop_namespaces(tmp_path):
    spec = spec_for(tmp_path, network_mode="host", pid_mode="host", ipc_mode="host", uts_mode="host")
    kinds = {n["type"] for n in spec["linux"]["namespaces"]}
    assert not kinds & {"pid", "ipc", "uts", "network"}
    assert "mount" in kinds


@pytest.mark.parametrize("option, value", [
    ("network_mode", "bridge"), ("pid_mode", "container:x"), ("ipc_mode", "shareable")])
def test_unsupported_modes_name_the_option(tmp_path, option, value):
    with pytest.raises(InvalidOption, match=option):
        spec_for(tmp_path, **{option: value})


def test_hostname_with_host_uts_is_refused(tmp_path):
    with pytest.raises(InvalidOption, match="hostname"):
        spec_for(tmp_path, hostname="box", uts_mode="host")


def test_seccomp_is_dockers_default_for_default_caps(tmp_path):
    seccomp = spec_for(tmp_path)["linux"]["seccomp"]
    assert seccomp == _seccomp.default_profile(_spec.DEFAULT_CAPABILITIES)
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO" and seccomp["defaultErrnoRet"] == 1


# -- capabilities --------------------------------------------------------------------

def test_cap_add_and_drop_with_or_without_prefix(tmp_path):
    caps = spec_for(tmp_path, capabilities={"add": ["net_admin", "CAP_SYS_TIME"], "drop": ["chown", "CAP_KILL"]})
    bounding = caps["process"]["capabilities"]["bounding"]
    assert "CAP_NET_ADMIN" in bounding and "CAP_SYS_TIME" in bounding
    assert "CAP_CHOWN" not in bounding and "CAP_KILL" not in bounding
    assert "CAP_SETUID" in bounding


def test_drop_all_keeps_only_added(tmp_path):
    spec = spec_for(tmp_path, capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
    assert spec["process"]["capabilities"]["bounding"] == ["CAP_NET_BIND_SERVICE"]


def test_add_all_minus_drops(tmp_path):
    spec = spec_for(tmp_path, capabilities={"add": ["all"], "drop": ["SYS_ADMIN"]})
    bounding = spec["process"]["capabilities"]["bounding"]
    assert "CAP_SYS_ADMIN" not in bounding
    assert set(bounding) == set(_spec.host_capabilities()) - {"CAP_SYS_ADMIN"}


@pytest.mark.parametrize("key", ["add", "drop"])
def test_unknown_capability_names_the_option(tmp_path, key):
    with pytest.raises(InvalidOption) as err:
        spec_for(tmp_path, capabilities={key: ["CAP_FLY"]})
    assert "capabilities.%s" % key in str(err.value) and "CAP_FLY" in str(err.value)


def test_validate_capabilities_normalizes():
    assert _spec.validate_capabilities(["chown", " Cap_Kill ", "ALL"]) == ["CAP_CHOWN", "CAP_KILL", "ALL"]
    with pytest.raises(InvalidOption, match="capabilities"):
        _spec.validate_capabilities(["CAP_CHOWN", "NOPE"])


def test_sys_admin_changes_seccomp_like_moby(tmp_path):
    spec = spec_for(tmp_path, capabilities={"add": ["SYS_ADMIN"]})
    names = [n for rule in spec["linux"]["seccomp"]["syscalls"] for n in rule["names"]]
    assert "mount" in names and "unshare" in names
    assert not any(r["names"] == ["clone3"] and r["action"] == "SCMP_ACT_ERRNO"
                   for r in spec["linux"]["seccomp"]["syscalls"])


# -- privileged ------------------------------------------------------------------------

def test_privileged_grants_all_caps_and_disables_confinement(tmp_path):
    spec = spec_for(tmp_path, privileged=True, capabilities={"drop": ["ALL"]})
    caps = spec["process"]["capabilities"]
    assert caps["bounding"] == list(_spec.host_capabilities())
    assert "seccomp" not in spec["linux"]
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]
    assert spec["process"]["noNewPrivileges"] is False
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert "rw" in mounts["/sys"]["options"] and "ro" not in mounts["/sys"]["options"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]


def test_not_privileged_by_default(tmp_path):
    spec = spec_for(tmp_path)
    assert "seccomp" in spec["linux"] and spec["process"]["noNewPrivileges"] is True


# -- rlimits ---------------------------------------------------------------------------

def test_nofile_is_capped_at_host_hard_limit(tmp_path):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    rl = {r["type"]: r for r in spec_for(tmp_path)["process"]["rlimits"]}
    expected = _spec.NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(_spec.NOFILE_WANTED, hard)
    assert rl["RLIMIT_NOFILE"]["hard"] == rl["RLIMIT_NOFILE"]["soft"] == expected


def test_requested_rlimits_above_hard_are_capped_and_below_kept():
    _soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard NPROC limit on this host to cap at")
    out = {r["type"]: r for r in _spec.capped_rlimits({"RLIMIT_NPROC": hard + 1000, "RLIMIT_NOFILE": 64})}
    assert out["RLIMIT_NPROC"]["hard"] == hard
    assert out["RLIMIT_NOFILE"] == {"type": "RLIMIT_NOFILE", "hard": 64, "soft": 64}


def test_unknown_rlimit_names_the_option():
    with pytest.raises(InvalidOption, match="ulimits"):
        _spec.capped_rlimits({"RLIMIT_BOGUS": 1})


# -- process ------------------------------------------------------------------------------

def test_args_follow_docker_entrypoint_and_cmd_rules(tmp_path):
    image = {"Entrypoint": ["/entry"], "Cmd": ["--serve"]}
    assert spec_for(tmp_path, image)["process"]["args"] == ["/entry", "--serve"]
    assert spec_for(tmp_path, image, command=["--check"])["process"]["args"] == ["/entry", "--check"]
    # an explicit entrypoint drops the image's Cmd
    assert spec_for(tmp_path, image, entrypoint=["/bin/sh"])["process"]["args"] == ["/bin/sh"]
    with pytest.raises(InvalidOption, match="command"):
        spec_for(tmp_path, {})


def test_env_merges_image_then_options_and_adds_path_home_hostname(tmp_path):
    image = {"Cmd": ["sh"], "Env": ["A=1", "PATH=/img/bin"]}
    env = spec_for(tmp_path, image, env={"A": "2", "B": "x"}, user="app", hostname="box")["process"]["env"]
    assert env == ["A=2", "PATH=/img/bin", "B=x", "HOME=/home/app", "HOSTNAME=box"]
    env = spec_for(tmp_path, {"Cmd": ["sh"]})["process"]["env"]
    assert "PATH=%s" % _spec.DEFAULT_PATH in env


def test_cwd_labels_hostname_cgroup_path(tmp_path):
    spec = spec_for(tmp_path, {"Cmd": ["sh"], "WorkingDir": "/srv"}, labels={"a": 1}, hostname="h",
                    cgroups_path="/intermodal/web", resources={"pids": {"limit": 10}})
    assert spec["process"]["cwd"] == "/srv"
    assert spec["annotations"] == {"a": "1"}
    assert spec["hostname"] == "h"
    assert spec["linux"]["cgroupsPath"] == "/intermodal/web"
    assert spec["linux"]["resources"]["pids"] == {"limit": 10}
    assert spec_for(tmp_path, working_dir="/w")["process"]["cwd"] == "/w"
    with pytest.raises(InvalidOption, match="working_dir"):
        spec_for(tmp_path, working_dir="rel")


# -- mounts -------------------------------------------------------------------------------

def test_user_mounts(tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    spec = spec_for(tmp_path, mounts=[
        {"type": "bind", "source": str(src), "target": "/data", "read_only": True},
        {"type": "volume", "source": str(src), "target": "/vol"},
        {"type": "tmpfs", "target": "/dev/shm", "options": ["size=1m"]},
    ])
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/data"] == {"destination": "/data", "type": "bind", "source": str(src),
                               "options": ["rbind", "rprivate", "ro"]}
    assert mounts["/vol"]["type"] == "bind" and "ro" not in mounts["/vol"]["options"]
    # a user mount replaces the default at the same target
    assert mounts["/dev/shm"]["type"] == "tmpfs" and "size=1m" in mounts["/dev/shm"]["options"]
    assert [m["destination"] for m in spec["mounts"]].count("/dev/shm") == 1


@pytest.mark.parametrize("mount, text", [
    ({"type": "bind", "source": "/nonexistent/intermodal-src", "target": "/x"}, "does not exist"),
    ({"type": "bind", "source": "relative", "target": "/x"}, "absolute host path"),
    ({"type": "tmpfs", "target": "x"}, "absolute path"),
    ({"type": "tmpfs", "target": "/a/../b"}, "may not be"),
    ({"type": "nfs", "target": "/x"}, "unknown mount type"),
])
def test_bad_mounts_name_the_option(tmp_path, mount, text):
    with pytest.raises(InvalidOption) as err:
        spec_for(tmp_path, mounts=[mount])
    assert "mounts[0]" in str(err.value) and text in str(err.value)


def test_read_only_rootfs(tmp_path):
    assert spec_for(tmp_path, read_only=True)["root"]["readonly"] is True


# -- user resolution from the image ------------------------------------------------------------

@pytest.mark.parametrize("user, expected", [
    (None, {"uid": 0, "gid": 0}),
    ("root", {"uid": 0, "gid": 0}),
    ("nobody", {"uid": 65534, "gid": 65534}),
    ("app", {"uid": 1000, "gid": 1000, "additionalGids": [10, 29]}),
    ("1000", {"uid": 1000, "gid": 1000, "additionalGids": [10, 29]}),
    ("4242", {"uid": 4242, "gid": 0}),
    ("4242:77", {"uid": 4242, "gid": 77}),
    ("app:audio", {"uid": 1000, "gid": 29, "additionalGids": [10]}),
    ("daemon:0", {"uid": 1, "gid": 0, "additionalGids": [10]}),
])
def test_user_resolved_from_image_files(tmp_path, user, expected):
    assert spec_for(tmp_path, user=user)["process"]["user"] == expected


def test_image_user_is_default(tmp_path):
    assert spec_for(tmp_path, {"Cmd": ["sh"], "User": "nobody"})["process"]["user"] == {"uid": 65534, "gid": 65534}


@pytest.mark.parametrize("user, text", [("ghost", "no user 'ghost'"), ("app:ghosts", "no group 'ghosts'"),
                                        (":10", "no user part")])
def test_unknown_user_or_group_names_the_option(tmp_path, user, text):
    with pytest.raises(InvalidOption) as err:
        spec_for(tmp_path, user=user)
    assert str(err.value).startswith("user:") and text in str(err.value)


def test_image_without_passwd_allows_numeric_only(tmp_path):
    root = make_rootfs(tmp_path, passwd=None, group=None)
    assert build_spec({"Cmd": ["sh"]}, {"user": "123:456"}, root)["process"]["user"] == {"uid": 123, "gid": 456}
    with pytest.raises(InvalidOption, match="no user 'app'"):
        build_spec({"Cmd": ["sh"]}, {"user": "app"}, root)


def test_passwd_symlink_cannot_escape_the_rootfs(tmp_path):
    """A hostile image links /etc/passwd outside its root; the host file must not be read.

    Faked tree: a real image with such a link would be refused or rewritten by
    the unpacker, so only a hand-made tree produces it.
    """
    outside = tmp_path / "host-etc"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    depth = len(str(root).strip("/").split("/")) + 1
    os.symlink("../" * depth + str(outside).lstrip("/") + "/passwd", str(root / "etc" / "passwd"))
    assert os.path.exists(str(root / "etc" / "passwd"))  # on the host the link does lead out
    with pytest.raises(InvalidOption, match="no user 'evil'"):
        build_spec({"Cmd": ["sh"]}, {"user": "evil"}, str(root))
    # an absolute link is taken relative to the rootfs too
    os.unlink(str(root / "etc" / "passwd"))
    os.symlink(str(outside / "passwd"), str(root / "etc" / "passwd"))
    with pytest.raises(InvalidOption, match="no user 'evil'"):
        build_spec({"Cmd": ["sh"]}, {"user": "evil"}, str(root))


def test_passwd_symlink_inside_the_rootfs_is_followed(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "share").mkdir(parents=True)
    (root / "usr" / "share" / "passwd").write_text("svc:x:700:701::/srv:/bin/sh\n")
    os.symlink("/usr/share/passwd", str(root / "etc" / "passwd"))
    assert build_spec({"Cmd": ["sh"]}, {"user": "svc"}, str(root))["process"]["user"] == {"uid": 700, "gid": 701}


@pytest.mark.parametrize("kind", ["directory", "fifo", "loop"])
def test_unusable_passwd_counts_as_absent(tmp_path, kind):
    """Hand-made odd trees (a directory, a FIFO, a symlink loop at /etc/passwd): no hang, no host read."""
    root = make_rootfs(tmp_path, passwd=None)
    target = os.path.join(root, "etc", "passwd")
    if kind == "directory":
        os.mkdir(target)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        os.symlink("passwd", target)
    assert build_spec({"Cmd": ["sh"]}, {"user": "7:8"}, root)["process"]["user"] == {"uid": 7, "gid": 8}
    with pytest.raises(InvalidOption, match="no user 'app'"):
        build_spec({"Cmd": ["sh"]}, {"user": "app"}, root)


def test_invalid_option_is_the_shared_class():
    from ansible_collections.intermodal.containers.plugins.module_utils import _cgroups
    assert InvalidOption is _cgroups.InvalidOption
    with pytest.raises(_cgroups.InvalidOption):
        _spec.validate_capabilities(["CAP_NOPE"])
