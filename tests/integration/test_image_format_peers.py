"""_manifest and _platform against real peers: skopeo (containers/image) and a
real docker-registry (distribution 2.8) on 127.0.0.1.

What we build with build_config/build_manifest/build_index must be accepted
byte-for-byte by skopeo and the registry; what they produce (OCI and Docker
schema 2, zstd) must parse; and for a multi-arch index we must pick the same
manifest containers/image picks.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest
import requests

from ansible_collections.intermodal.containers.plugins.module_utils._manifest import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    ACCEPT_TYPES,
    Descriptor,
    build_config,
    build_index,
    build_manifest,
    chain_ids,
    check_manifest_matches_config,
    parse_config,
    parse_manifest,
    sha256_digest,
)
from ansible_collections.intermodal.containers.plugins.module_utils._platform import (
    Platform,
    check_config_platform,
    parse_platform,
    select_manifest,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed"),
]

PLATFORMS = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]


def _layer(text):
    """A one-file tar, gzipped deterministically: (tar bytes, gz bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return raw, gzip.compress(raw, mtime=0)


class Layout:
    """An OCI image layout directory written with our builders."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"))
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def put(self, data):
        digest = sha256_digest(data)
        with open(os.path.join(self.path, "blobs", "sha256", digest.split(":")[1]), "wb") as f:
            f.write(data)
        return digest

    def write_index(self, top):
        with open(os.path.join(self.path, "index.json"), "wb") as f:
            f.write(build_index([top]))


def _build_multiarch(layout):
    """One image per platform; returns (index bytes, {platform: (manifest digest, diff_id)})."""
    entries, members = [], {}
    for plat in PLATFORMS:
        p = parse_platform(plat)
        raw, gz = _layer("built for %s\n" % plat)
        diff_id = sha256_digest(raw)
        config = build_config([diff_id], os=p.os, architecture=p.architecture, variant=p.variant,
                              config={"Cmd": ["/hello"], "Env": ["PLATFORM=%s" % plat]},
                              created="2025-01-01T00:00:00Z")
        manifest = build_manifest(
            Descriptor(OCI_CONFIG, layout.put(config), len(config)),
            [Descriptor(OCI_LAYER_GZIP, layout.put(gz), len(gz))],
        )
        digest = layout.put(manifest)
        entries.append(Descriptor(OCI_MANIFEST, digest, len(manifest), platform=p))
        members[plat] = (digest, diff_id)
    index = build_index(entries)
    layout.put(index)
    layout.write_index(Descriptor(OCI_INDEX, sha256_digest(index), len(index),
                                  annotations={"org.opencontainers.image.ref.name": "v1"}))
    return index, members


def _skopeo(*args):
    env = dict(os.environ, NO_PROXY="*", no_proxy="*")
    proc = subprocess.run(["skopeo"] + list(args), capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _get_manifest(reg, repo, ref):
    s = requests.Session()
    s.trust_env = False
    r = s.get("%s/v2/%s/manifests/%s" % (reg.url, repo, ref),
              headers={"Accept": ", ".join(ACCEPT_TYPES)})
    assert r.status_code == 200, r.text
    return r.content, r.headers["Content-Type"], r.headers["Docker-Content-Digest"]


@pytest.fixture
def pushed(registry_open, tmp_path):
    layout = Layout(str(tmp_path / "layout"))
    index, members = _build_multiarch(layout)
    _skopeo("copy", "--all", "--dest-tls-verify=false", "oci:%s:v1" % layout.path,
            "docker://%s/format/multi:v1" % registry_open.host)
    return registry_open, index, members


def test_registry_keeps_our_bytes_and_we_parse_its_answer(pushed):
    reg, index_bytes, members = pushed
    body, content_type, digest = _get_manifest(reg, "format/multi", "v1")
    assert body == index_bytes and digest == sha256_digest(index_bytes)
    index = parse_manifest(body, content_type)
    assert index.media_type == OCI_INDEX
    assert [str(d.platform) for d in index.manifests] == PLATFORMS

    chosen = select_manifest(index, parse_platform("linux/aarch64"))
    assert chosen.digest == members["linux/arm64/v8"][0]
    body, content_type, digest = _get_manifest(reg, "format/multi", chosen.digest)
    manifest = parse_manifest(body, content_type)
    assert manifest.digest == chosen.digest and manifest.media_type == OCI_MANIFEST


@pytest.mark.parametrize("arch, variant, expected", [
    ("amd64", None, "linux/amd64"),
    ("arm64", None, "linux/arm64/v8"),
    ("arm", "v7", "linux/arm/v7"),
])
def test_same_choice_as_containers_image(pushed, tmp_path, arch, variant, expected):
    reg, index_bytes, members = pushed
    out = str(tmp_path / "out")
    args = ["copy", "--src-tls-verify=false", "--override-os", "linux", "--override-arch", arch]
    if variant:
        args += ["--override-variant", variant]
    _skopeo(*(args + ["docker://%s/format/multi:v1" % reg.host, "dir:" + out]))
    with open(os.path.join(out, "manifest.json"), "rb") as f:
        skopeo_choice = sha256_digest(f.read())
    ours = select_manifest(parse_manifest(index_bytes, OCI_INDEX), Platform("linux", arch, variant))
    assert ours.digest == skopeo_choice == members[expected][0]


def test_skopeo_converted_docker_schema2_parses(pushed, tmp_path):
    reg, _unused, members = pushed
    out = str(tmp_path / "v2s2")
    _skopeo("copy", "--src-tls-verify=false", "--override-arch", "arm", "--override-variant", "v7",
            "--format", "v2s2", "docker://%s/format/multi:v1" % reg.host, "dir:" + out)
    with open(os.path.join(out, "manifest.json"), "rb") as f:
        manifest = parse_manifest(f.read())
    assert manifest.media_type == DOCKER_MANIFEST
    assert manifest.config.media_type == DOCKER_CONFIG
    with open(os.path.join(out, manifest.config.digest.split(":")[1]), "rb") as f:
        config = parse_config(f.read())
    check_manifest_matches_config(manifest, config)
    check_config_platform(config, parse_platform("linux/arm/v7"))
    assert config.diff_ids == [members["linux/arm/v7"][1]]
    assert chain_ids(config.diff_ids) == config.diff_ids
    assert config.config["Env"] == ["PLATFORM=linux/arm/v7"]


def test_skopeo_zstd_recompression_parses(pushed, tmp_path):
    reg, _unused, members = pushed
    out = str(tmp_path / "zstd")
    _skopeo("copy", "--src-tls-verify=false", "--override-arch", "amd64",
            "--dest-compress", "--dest-compress-format", "zstd",
            "docker://%s/format/multi:v1" % reg.host, "oci:%s:z" % out)
    with open(os.path.join(out, "index.json"), "rb") as f:
        top = parse_manifest(f.read())
    desc = top.manifests[0]
    with open(os.path.join(out, "blobs", "sha256", desc.digest.split(":")[1]), "rb") as f:
        manifest = parse_manifest(f.read(), desc.media_type)
    assert [layer.media_type for layer in manifest.layers] == [OCI_LAYER_ZSTD]
    with open(os.path.join(out, "blobs", "sha256", manifest.config.digest.split(":")[1]), "rb") as f:
        config = parse_config(f.read())
    check_manifest_matches_config(manifest, config)
    assert config.diff_ids == [members["linux/amd64"][1]]
