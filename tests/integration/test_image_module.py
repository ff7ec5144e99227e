"""intermodal.containers.image and image_info through real ansible-playbook runs.

Real peers only: Debian's docker-registry on 127.0.0.1 (open, htpasswd and
token auth), the module running on localhost, a store in a temp dir. Each
lifecycle walks check -> apply -> check (no change) -> apply (no change) ->
change one thing.
"""

from __future__ import annotations

import base64
import json
import os
import shutil

import pytest

from tests.integration.image_helpers import image_playbook, info_playbook, result_of, store_report
from tests.lib.registry import free_port
from tests.lib.rootfs import build_arch_variant_rootfs, build_busybox_rootfs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory):
    return build_busybox_rootfs(str(tmp_path_factory.mktemp("busybox") / "busybox.tar"))


@pytest.fixture
def store(scratch_dir):
    return os.path.join(scratch_dir, "store")


def _walk(run_playbook, playbook, expect, after_first_check=None):
    """check, apply, check, apply: ``expect`` is the changed flag of each step."""
    results = []
    for check, want in zip((True, False, True, False), expect):
        run = run_playbook(playbook, check=check, diff=True)
        res = result_of(run)
        assert res["changed"] is want, (check, res["result"])
        results.append(res["result"])
        if len(results) == 1 and after_first_check is not None:
            after_first_check()
    return results


def test_import_push_lifecycle(run_playbook, registry_open, busybox_tar, store):
    name = registry_open.host + "/lifecycle/busybox:1"
    args = dict(name=name, source="import", import_path=busybox_tar, push=True, store_root=store,
                import_config={"cmd": ["/bin/sh"], "env": {"PATH": "/bin"}})

    def nothing_written():
        assert store_report(store).get("absent"), "check mode must not create the store"

    check1, apply1, check2, apply2 = _walk(run_playbook, image_playbook(**args), (True, True, False, False),
                                           after_first_check=nothing_written)

    assert any("Imported" in a for a in check1["actions"]) and any("Pushed" in a for a in check1["actions"])
    image = apply1["image"]
    assert image["name"] == name
    assert image["config"] == {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}
    assert len(image["layers"]) == 1 and image["layers"][0]["unpacked"]
    assert apply2["image"]["id"] == image["id"], "same tar and config must give the same image ID"
    assert apply1["diff"]["before"][name]["present"] is False
    assert apply1["diff"]["after"][name]["present"] is True
    report = store_report(store)
    assert report["ok"] and report["images"] == 1, report

    # Change one thing: the config. New image ID, pushed again, blobs reused.
    args["import_config"]["env"] = {"PATH": "/bin", "MODE": "two"}
    changed = result_of(run_playbook(image_playbook(**args), diff=True))
    assert changed["changed"] is True
    assert changed["result"]["image"]["id"] != image["id"]
    assert changed["result"]["image"]["layers"][0]["digest"] == image["layers"][0]["digest"]
    assert any("skipped 1" in a for a in changed["result"]["actions"]), changed["result"]["actions"]


def test_pull_always_follows_a_moving_tag(run_playbook, registry_open, busybox_tar, scratch_dir):
    """check mode reports a moved tag truthfully, by a HEAD request only."""
    name = registry_open.host + "/moving/app:stable"
    publisher = os.path.join(scratch_dir, "publisher")
    puller = os.path.join(scratch_dir, "puller")
    run_playbook(image_playbook(name=name, source="import", import_path=busybox_tar, push=True,
                                store_root=publisher, import_config={"cmd": ["echo", "one"]}))
    pull = image_playbook(name=name, pull="always", store_root=puller)
    _unused, first, _unused, _unused = _walk(run_playbook, pull, (True, True, False, False))

    # A warm pull with pull=always is one HEAD request and nothing else.
    registry_open.clear_log()
    assert result_of(run_playbook(pull))["changed"] is False
    requests = [(r["method"], r["path"]) for r in registry_open.requests_log()]
    assert requests == [("HEAD", "/v2/moving/app/manifests/stable")], requests

    # Move the tag: publish a different image under the same name.
    run_playbook(image_playbook(name=name, source="import", import_path=busybox_tar, push=True,
                                store_root=publisher, import_config={"cmd": ["echo", "two"]}))
    registry_open.clear_log()
    moved_check = result_of(run_playbook(pull, check=True, diff=True))
    assert moved_check["changed"] is True
    assert any("moved" in a for a in moved_check["result"]["actions"]), moved_check["result"]["actions"]
    assert {r["method"] for r in registry_open.requests_log()} == {"HEAD"}
    moved = result_of(run_playbook(pull, diff=True))
    assert moved["changed"] is True
    assert moved["result"]["image"]["digest"] != first["image"]["digest"]
    assert moved["result"]["image"]["config"]["Cmd"] == ["echo", "two"]
    # The shared layer was not fetched again: only the new config blob was.
    fetched = registry_open.blob_fetches()
    assert list(fetched) == [moved["result"]["image"]["id"]], fetched
    assert result_of(run_playbook(pull))["changed"] is False


def test_pull_missing_does_not_touch_the_network(run_playbook, registry_open, busybox_tar, scratch_dir):
    name = registry_open.host + "/quiet/app:1"
    run_playbook(image_playbook(name=name, source="import", import_path=busybox_tar, push=True,
                                store_root=os.path.join(scratch_dir, "pub")))
    store = os.path.join(scratch_dir, "store")
    assert result_of(run_playbook(image_playbook(name=name, store_root=store)))["changed"] is True
    registry_open.clear_log()
    assert result_of(run_playbook(image_playbook(name=name, store_root=store)))["changed"] is False
    assert registry_open.requests_log() == []
    never = result_of(run_playbook(image_playbook(name=name + "x", pull="never", store_root=store),
                                   expect_failure=True))
    assert "pull=never" in never["result"]["msg"]


def test_auth_failure_is_clear_and_leaves_nothing(run_playbook, registry_htpasswd, store):
    name = registry_htpasswd.host + "/private/app:1"
    run = run_playbook(image_playbook(name=name, store_root=store, username=registry_htpasswd.username,
                                      password="wrong-password-123"), expect_failure=True)
    res = result_of(run)
    assert res["failed"]
    msg = res["result"]["msg"]
    assert registry_htpasswd.host in msg and "auth" in msg.lower(), msg
    assert "wrong-password-123" not in run.stdout + run.stderr + json.dumps(run.tasks)
    report = store_report(store)
    assert report["ok"] and report["images"] == 0 and report["blobs"] == 0 and report["layers"] == 0, report


def test_missing_image_is_clear_and_leaves_nothing(run_playbook, registry_open, store):
    name = registry_open.host + "/nothing/here:1"
    res = result_of(run_playbook(image_playbook(name=name, store_root=store), expect_failure=True))
    assert "not found" in res["result"]["msg"] and "nothing/here" in res["result"]["msg"], res["result"]["msg"]
    report = store_report(store)
    assert report["ok"] and report["images"] == 0 and report["blobs"] == 0, report


def test_unreachable_registry_is_clear_and_leaves_nothing(run_playbook, store):
    name = "127.0.0.1:%d/gone/app:1" % free_port()
    res = result_of(run_playbook(image_playbook(name=name, store_root=store, retries=1, timeout=5),
                                 expect_failure=True))
    msg = res["result"]["msg"]
    assert "127.0.0.1" in msg and ("reach" in msg or "refused" in msg), msg
    report = store_report(store)
    assert report["ok"] and report["images"] == 0 and report["blobs"] == 0, report


def test_invalid_options_fail_before_anything_is_touched(run_playbook, store):
    for args in (dict(name="Bad//Name"), dict(name="busybox", platform="linux/"),
                 dict(name="busybox", tag_as=["UPPER/x:y:z"])):
        res = result_of(run_playbook(image_playbook(store_root=store, **args), expect_failure=True))
        assert res["failed"] and res["result"]["msg"], res
        assert store_report(store).get("absent"), "nothing may be created for invalid input"


def test_htpasswd_credentials_from_docker_config(run_playbook, registry_htpasswd, busybox_tar, scratch_dir):
    """Credentials come from the files users already have (~/.docker/config.json)."""
    name = registry_htpasswd.host + "/private/app:1"
    run_playbook(image_playbook(name=name, source="import", import_path=busybox_tar, push=True,
                                store_root=os.path.join(scratch_dir, "pub"),
                                username=registry_htpasswd.username, password=registry_htpasswd.password))
    token = base64.b64encode(("%s:%s" % (registry_htpasswd.username, registry_htpasswd.password)).encode()).decode()
    auth_file = os.path.join(scratch_dir, "config.json")
    with open(auth_file, "w") as handle:
        json.dump({"auths": {registry_htpasswd.host: {"auth": token}}}, handle)
    store = os.path.join(scratch_dir, "store")
    res = result_of(run_playbook(image_playbook(name=name, store_root=store, auth_file=auth_file)))
    assert res["changed"] is True and res["result"]["image"]["name"] == name


def test_token_auth_push_and_pull(run_playbook, registry_token, busybox_tar, scratch_dir):
    """Bearer flow for real: distribution's token auth and our token issuer."""
    name = registry_token.host + "/team/app:1"
    creds = dict(username=registry_token.username, password=registry_token.password)
    pushed = result_of(run_playbook(image_playbook(
        name=name, source="import", import_path=busybox_tar, push=True,
        store_root=os.path.join(scratch_dir, "pub"), **creds)))
    assert pushed["changed"] is True
    assert any(r.get("user") == registry_token.username for r in registry_token.issuer.requests)
    # An anonymous pull gets a pull-only token.
    anon = result_of(run_playbook(image_playbook(name=name, store_root=os.path.join(scratch_dir, "anon"))))
    assert anon["changed"] is True
    assert anon["result"]["image"]["digest"] == pushed["result"]["image"]["digest"]


def test_tag_info_and_remove_frees_only_unshared(run_playbook, registry_open, busybox_tar, scratch_dir, store):
    base = registry_open.host + "/shared/base:1"
    extra_tar = build_arch_variant_rootfs(os.path.join(scratch_dir, "extra.tar"), "extra")
    run_playbook(image_playbook(name=base, source="import", import_path=busybox_tar, store_root=store,
                                tag_as=[base.replace(":1", ":latest")]))
    top = registry_open.host + "/shared/top:1"
    stacked = result_of(run_playbook(image_playbook(name=top, source="import", import_path=extra_tar,
                                                    import_base=base, store_root=store)))
    assert len(stacked["result"]["image"]["layers"]) == 2

    info = result_of(run_playbook(info_playbook(store_root=store)))["result"]
    assert [i["name"] for i in info["images"]] == sorted([base, base.replace(":1", ":latest"), top])
    one = result_of(run_playbook(info_playbook(store_root=store, name=[base, "nope:1"])))["result"]
    assert [i["name"] for i in one["images"]] == [base]
    assert one["missing"] == ["docker.io/library/nope:1"]
    assert sorted(one["images"][0]["names"]) == sorted([base, base.replace(":1", ":latest")])

    removed = _walk(run_playbook, image_playbook(name=top, state="absent", store_root=store),
                    (True, True, False, False))
    assert any("Freed" in a for a in removed[1]["actions"])
    report = store_report(store)
    assert report["ok"] and report["layers"] == 1 and report["images"] == 2, report
    # The base is untouched and still complete.
    info = result_of(run_playbook(info_playbook(store_root=store, name=[base])))["result"]
    assert info["images"][0]["layers"][0]["unpacked"]
    run_playbook(image_playbook(name=base, state="absent", store_root=store,
                                tag_as=[base.replace(":1", ":latest")]))
    report = store_report(store)
    assert report["ok"] and report["blobs"] == 0 and report["layers"] == 0 and report["images"] == 0, report
    shutil.rmtree(store)
