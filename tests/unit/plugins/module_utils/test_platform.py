"""Platform parsing, normalisation and manifest selection (containerd's rules)."""

import hashlib
import json

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils import _platform
from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    IntermodalError,
    PlatformMismatch,
)
from ansible_collections.intermodal.containers.plugins.module_utils._manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_config,
    parse_manifest,
)
from ansible_collections.intermodal.containers.plugins.module_utils._platform import (
    InvalidPlatform,
    Platform,
    check_config_platform,
    compatible_platforms,
    host_platform,
    normalize,
    parse_platform,
    select_manifest,
)


def _digest(label):
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


def _entry(plat, media_type=DOCKER_MANIFEST, annotations=None):
    parts = plat.split("/")
    d = {"mediaType": media_type, "digest": _digest(plat), "size": 528,
         "platform": {"os": parts[0], "architecture": parts[1]}}
    if len(parts) == 3:
        d["platform"]["variant"] = parts[2]
    if annotations:
        d["annotations"] = annotations
    return d


def _index(platforms, media_type=DOCKER_LIST, extra=()):
    entries = [_entry(p, DOCKER_MANIFEST if media_type == DOCKER_LIST else OCI_MANIFEST)
               for p in platforms]
    entries.extend(extra)
    body = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    return parse_manifest(body.encode(), media_type)


# The shape of docker.io/library/busybox:latest's manifest list.
BUSYBOX = ["linux/amd64", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8",
           "linux/386", "linux/ppc64le", "linux/riscv64", "linux/s390x"]


def _attestation(for_platform):
    return {
        "mediaType": OCI_MANIFEST, "digest": _digest("att-" + for_platform), "size": 839,
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {"vnd.docker.reference.digest": _digest(for_platform),
                        "vnd.docker.reference.type": "attestation-manifest"},
    }


@pytest.mark.parametrize("given, expected", [
    (("Linux", "x86_64", None), ("linux", "amd64", None)),
    (("linux", "x86-64", None), ("linux", "amd64", None)),
    (("linux", "amd64", "v1"), ("linux", "amd64", None)),
    (("linux", "amd64", "v3"), ("linux", "amd64", "v3")),
    (("linux", "aarch64", None), ("linux", "arm64", None)),
    (("linux", "arm64", "v8"), ("linux", "arm64", None)),
    (("linux", "arm64", "8"), ("linux", "arm64", None)),
    (("linux", "armhf", None), ("linux", "arm", "v7")),
    (("linux", "armel", None), ("linux", "arm", "v6")),
    (("linux", "arm", None), ("linux", "arm", "v7")),
    (("linux", "arm", "6"), ("linux", "arm", "v6")),
    (("linux", "armv7l", None), ("linux", "arm", "v7")),
    (("linux", "armv6l", None), ("linux", "arm", "v6")),
    (("linux", "i386", None), ("linux", "386", None)),
    (("linux", "i686", None), ("linux", "386", None)),
    (("macos", "arm64", None), ("darwin", "arm64", None)),
    (("linux", "riscv64", None), ("linux", "riscv64", None)),
])
def test_normalize_table(given, expected):
    assert normalize(*given) == expected


@pytest.mark.parametrize("text, expected", [
    ("linux/amd64", "linux/amd64"),
    ("linux/arm/v7", "linux/arm/v7"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm64/v8", "linux/arm64/v8"),
    ("linux/aarch64", "linux/arm64"),
    ("arm64", "linux/arm64"),
    ("x86_64", "linux/amd64"),
    ("linux/amd64/v2", "linux/amd64/v2"),
])
def test_parse_platform(text, expected):
    assert str(parse_platform(text)) == expected


def test_parse_bare_os_uses_host_architecture():
    assert parse_platform("linux") == host_platform()


@pytest.mark.parametrize("text", ["", "linux/", "/amd64", "linux/amd64/v8/x", "linux/am d64",
                                  "frobnix", "linux/../x", None])
def test_parse_platform_rejects(text):
    with pytest.raises(InvalidPlatform) as info:
        parse_platform(text)
    assert isinstance(info.value, IntermodalError) and isinstance(info.value, ValueError)
    assert "platform" in str(info.value)


def test_equality_is_normalised():
    assert Platform("linux", "arm64", "v8") == Platform("linux", "aarch64")
    assert Platform("linux", "arm") == Platform("linux", "arm", "v7")
    assert Platform("linux", "arm", "v6") != Platform("linux", "arm", "v7")
    assert len({Platform("linux", "x86_64"), Platform("linux", "amd64", "v1")}) == 1
    assert str(Platform("linux", "arm64", "v8")) == "linux/arm64/v8"


def test_dict_round_trip():
    d = {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1",
         "os.features": ["win32k"]}
    assert Platform.from_dict(d).to_dict() == d
    assert Platform.from_dict({"os": "linux", "architecture": "arm", "variant": "v6"}).to_dict() == {
        "os": "linux", "architecture": "arm", "variant": "v6"}
    with pytest.raises(InvalidPlatform):
        Platform.from_dict({"os": "linux"})
    with pytest.raises(InvalidPlatform):
        Platform.from_dict({"os": "linux", "architecture": 64})


def test_host_platform_follows_machine(monkeypatch):
    """platform.machine() is faked: the test host has only one architecture."""
    for machine, expected in [("x86_64", "linux/amd64"), ("aarch64", "linux/arm64/v8"),
                              ("armv7l", "linux/arm/v7"), ("i686", "linux/386")]:
        monkeypatch.setattr(_platform._stdlib_platform, "machine", lambda m=machine: m)
        assert str(host_platform()) == expected


def test_compatible_order():
    assert compatible_platforms(parse_platform("linux/amd64/v3")) == [
        ("linux", "amd64", "v3"), ("linux", "amd64", "v2"), ("linux", "amd64", None),
        ("linux", "386", None)]
    assert compatible_platforms(parse_platform("linux/arm/v7")) == [
        ("linux", "arm", "v7"), ("linux", "arm", "v6"), ("linux", "arm", "v5")]
    assert compatible_platforms(parse_platform("linux/arm64")) == [
        ("linux", "arm64", None), ("linux", "arm", "v8"), ("linux", "arm", "v7"),
        ("linux", "arm", "v6"), ("linux", "arm", "v5")]


@pytest.mark.parametrize("wanted, chosen", [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/arm64", "linux/arm64/v8"),
    ("linux/aarch64", "linux/arm64/v8"),
    ("linux/arm/v7", "linux/arm/v7"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/arm/v6", "linux/arm/v6"),
    ("linux/386", "linux/386"),
    ("linux/riscv64", "linux/riscv64"),
])
def test_select_from_busybox_list(wanted, chosen):
    index = _index(BUSYBOX)
    desc = select_manifest(index, parse_platform(wanted))
    assert str(desc.platform) == chosen
    assert desc.digest == _digest(chosen)


def test_wanted_may_be_a_string():
    index = _index(BUSYBOX)
    assert select_manifest(index, "linux/armhf").digest == _digest("linux/arm/v7")
    check_config_platform(_config("linux", "arm64", "v8"), "arm64")
    with pytest.raises(InvalidPlatform):
        select_manifest(index, "linux/")


def test_amd64_v2_takes_v1_over_v3():
    index = _index(["linux/amd64/v3", "linux/amd64", "linux/386"], OCI_INDEX)
    assert str(select_manifest(index, parse_platform("linux/amd64/v2")).platform) == "linux/amd64"
    assert str(select_manifest(index, parse_platform("linux/amd64/v3")).platform) == "linux/amd64/v3"


def test_amd64_falls_back_to_386_last():
    index = _index(["linux/386", "linux/arm64"])
    assert str(select_manifest(index, parse_platform("linux/amd64/v2")).platform) == "linux/386"
    # a plain amd64 host cannot run v2 code
    index = _index(["linux/amd64/v2"])
    with pytest.raises(PlatformMismatch):
        select_manifest(index, parse_platform("linux/amd64"))


def test_arm_v7_falls_back_to_v6_then_v5():
    index = _index(["linux/arm/v5", "linux/arm/v6"])
    assert str(select_manifest(index, parse_platform("linux/arm/v7")).platform) == "linux/arm/v6"
    index = _index(["linux/arm/v5", "linux/arm/v8"])
    assert str(select_manifest(index, parse_platform("linux/arm/v7")).platform) == "linux/arm/v5"


def test_arm64_falls_back_to_32bit_arm():
    index = _index(["linux/amd64", "linux/arm/v6", "linux/arm/v7"])
    assert str(select_manifest(index, parse_platform("linux/arm64")).platform) == "linux/arm/v7"


def test_ties_go_to_first_in_index_order():
    entries = [_entry("linux/amd64"), _entry("linux/amd64")]
    entries[1]["digest"] = _digest("second")
    body = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries})
    index = parse_manifest(body.encode(), DOCKER_LIST)
    assert select_manifest(index, parse_platform("linux/amd64")).digest == _digest("linux/amd64")


def test_attestations_are_skipped():
    index = _index(["linux/amd64", "linux/arm64"], OCI_INDEX,
                   extra=[_attestation("linux/amd64"), _attestation("linux/arm64")])
    assert select_manifest(index, parse_platform("linux/arm64")).digest == _digest("linux/arm64")
    # An attestation listed first, and one annotated but with a real-looking platform.
    odd = _attestation("x")
    odd["platform"] = {"os": "linux", "architecture": "amd64"}
    index = _index(["linux/amd64"], OCI_INDEX)
    index.manifests.insert(0, parse_manifest(json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [odd]}).encode()).manifests[0])
    assert select_manifest(index, parse_platform("linux/amd64")).digest == _digest("linux/amd64")


def test_only_attestations_is_a_mismatch():
    index = _index([], OCI_INDEX, extra=[_attestation("linux/amd64")])
    with pytest.raises(PlatformMismatch, match="only attestations"):
        select_manifest(index, parse_platform("linux/amd64"))


def test_mismatch_lists_available_platforms():
    index = _index(["linux/amd64", "linux/arm64/v8"], OCI_INDEX,
                   extra=[_attestation("linux/amd64")])
    with pytest.raises(PlatformMismatch) as info:
        select_manifest(index, parse_platform("linux/riscv64"), name="docker.io/library/app:1")
    assert str(info.value) == (
        "no manifest for platform linux/riscv64 in docker.io/library/app:1; "
        "available: linux/amd64, linux/arm64/v8")
    assert info.value.details["available"] == ["linux/amd64", "linux/arm64/v8"]
    with pytest.raises(PlatformMismatch, match=index.digest):
        select_manifest(index, parse_platform("linux/s390x"))


def test_entries_without_platform():
    plain = {"mediaType": OCI_MANIFEST, "digest": _digest("plain"), "size": 10}
    body = json.dumps({"schemaVersion": 2, "manifests": [plain]}).encode()
    index = parse_manifest(body, OCI_INDEX)
    assert select_manifest(index, parse_platform("linux/s390x")).digest == _digest("plain")
    # ...but not when other entries declare platforms and none fits
    index = _index(["linux/amd64"], OCI_INDEX, extra=[plain])
    with pytest.raises(PlatformMismatch):
        select_manifest(index, parse_platform("linux/s390x"))


def test_os_features_must_be_subset():
    entry = _entry("windows/amd64")
    entry["platform"]["os.features"] = ["win32k"]
    index = parse_manifest(json.dumps(
        {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [entry]}).encode())
    with pytest.raises(PlatformMismatch):
        select_manifest(index, Platform("windows", "amd64"))
    assert select_manifest(index, Platform("windows", "amd64", os_features=["win32k"])) is \
        index.manifests[0]


def _config(os_name, arch, variant=None):
    doc = {"os": os_name, "architecture": arch, "rootfs": {"type": "layers", "diff_ids": []}}
    if variant:
        doc["variant"] = variant
    return parse_config(json.dumps(doc).encode())


def test_check_config_platform_accepts_compatible():
    check_config_platform(_config("linux", "amd64"), parse_platform("linux/amd64"))
    check_config_platform(_config("linux", "arm64", "v8"), parse_platform("linux/aarch64"))
    check_config_platform(_config("linux", "arm", "v6"), parse_platform("linux/arm/v7"))
    check_config_platform(_config("linux", "386"), parse_platform("linux/amd64"))
    # variant omitted in the config: not invented as v7
    check_config_platform(_config("linux", "arm"), parse_platform("linux/arm/v6"))


def test_check_config_platform_mismatch():
    with pytest.raises(PlatformMismatch) as info:
        check_config_platform(_config("linux", "arm64"), parse_platform("linux/amd64"),
                              name="busybox:latest")
    assert str(info.value) == ("image busybox:latest is for platform linux/arm64, which cannot "
                               "run on the requested platform linux/amd64")
    with pytest.raises(PlatformMismatch, match="windows/amd64"):
        check_config_platform(_config("windows", "amd64"), parse_platform("linux/amd64"))
    with pytest.raises(PlatformMismatch):
        check_config_platform(_config("linux", "arm", "v7"), parse_platform("linux/arm/v6"))
