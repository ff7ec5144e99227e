"""intermodal.containers.volume through real ansible-playbook runs on localhost."""

from __future__ import annotations

import os
import stat

import pytest

from tests.integration.image_helpers import result_of, task_playbook

pytestmark = pytest.mark.integration


def volume_playbook(**args):
    return task_playbook("intermodal.containers.volume", args)


def walk(run_playbook, playbook, expect):
    out = []
    for check, want in zip((True, False, True, False), expect):
        res = result_of(run_playbook(playbook, check=check, diff=True))
        assert res["changed"] is want, (check, res["result"])
        out.append(res["result"])
    return out


def test_volume_lifecycle(run_playbook, scratch_dir):
    store = os.path.join(scratch_dir, "store")
    args = dict(name="data", store_root=store, owner="1000", group="1000", mode="0750", labels={"app": "db"})
    check, created, _unused, again = walk(run_playbook, volume_playbook(**args), (True, True, False, False))
    assert check["diff"]["before"] == {} and check["diff"]["after"]["mode"] == "0750"
    path = created["volume"]["path"]
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o750)
    assert again["volume"]["labels"] == {"app": "db"}

    args["labels"] = {"app": "db", "tier": "gold"}
    changed = result_of(run_playbook(volume_playbook(**args), diff=True))
    assert changed["changed"] is True
    assert changed["result"]["diff"]["before"]["labels"] == {"app": "db"}

    walk(run_playbook, volume_playbook(name="data", store_root=store, state="absent"), (True, True, False, False))
    assert not os.path.exists(path)


def test_export_and_import_round_trip(run_playbook, scratch_dir):
    store = os.path.join(scratch_dir, "store")
    backup = os.path.join(scratch_dir, "data.tar")
    created = result_of(run_playbook(volume_playbook(name="src", store_root=store)))["result"]["volume"]
    os.makedirs(os.path.join(created["path"], "sub"))
    with open(os.path.join(created["path"], "sub", "file"), "w") as handle:
        handle.write("payload\n")
    os.chmod(os.path.join(created["path"], "sub", "file"), 0o640)
    os.symlink("sub/file", os.path.join(created["path"], "link"))

    export = volume_playbook(name="src", store_root=store, export_to=backup)
    walk(run_playbook, export, (True, True, False, False))
    with open(os.path.join(created["path"], "sub", "file"), "a") as handle:
        handle.write("more\n")
    assert result_of(run_playbook(export))["changed"] is True, "changed data must be exported again"

    restore = volume_playbook(name="copy", store_root=store, import_from=backup)
    _unused, imported, _unused, _unused = walk(run_playbook, restore, (True, True, False, False))
    copy = imported["volume"]["path"]
    with open(os.path.join(copy, "sub", "file")) as handle:
        assert handle.read() == "payload\nmore\n"
    assert os.readlink(os.path.join(copy, "link")) == "sub/file"
    assert stat.S_IMODE(os.stat(os.path.join(copy, "sub", "file")).st_mode) == 0o640


def test_bad_input_fails_cleanly(run_playbook, scratch_dir):
    store = os.path.join(scratch_dir, "store")
    for args in (dict(name="../escape"), dict(name="ok", mode="999"), dict(name="ok", owner="no-such-user-xyz"),
                 dict(name="ok", import_from=os.path.join(scratch_dir, "missing.tar"))):
        res = result_of(run_playbook(volume_playbook(store_root=store, **args), expect_failure=True))
        assert res["failed"] and res["result"]["msg"]
    assert not os.path.exists(os.path.join(store, "volumes")), "invalid input must not create anything"
