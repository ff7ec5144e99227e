"""Manifest, index and config parsing, validation and canonical builders.

The documents are literal JSON in the shapes Docker Hub and buildx serve; the
hostile ones (ambiguous, oversized, schema 1, encrypted, bad digests) are
what a lying registry could send and a real one will not.
"""

import copy
import hashlib
import json

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    DigestMismatch,
    InvalidDigest,
    ManifestError,
)
from ansible_collections.intermodal.containers.plugins.module_utils._manifest import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_ZSTD,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDIST_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    ImageIndex,
    ImageManifest,
    build_config,
    build_index,
    build_manifest,
    canonical_json,
    chain_ids,
    check_manifest_matches_config,
    is_foreign_layer,
    layer_compression,
    parse_config,
    parse_manifest,
    sha256_digest,
)
from ansible_collections.intermodal.containers.plugins.module_utils._platform import Platform


def _d(label):
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


DOCKER_IMAGE = {
    "schemaVersion": 2,
    "mediaType": DOCKER_MANIFEST,
    "config": {"mediaType": DOCKER_CONFIG, "size": 1457, "digest": _d("config")},
    "layers": [{"mediaType": DOCKER_LAYER_GZIP, "size": 2152262, "digest": _d("layer0")}],
}

OCI_IMAGE = {
    "schemaVersion": 2,
    "mediaType": OCI_MANIFEST,
    "config": {"mediaType": OCI_CONFIG, "digest": _d("oci-config"), "size": 581},
    "layers": [
        {"mediaType": OCI_LAYER_GZIP, "digest": _d("l0"), "size": 3623807},
        {"mediaType": OCI_LAYER_ZSTD, "digest": _d("l1"), "size": 1200},
    ],
    "annotations": {"org.opencontainers.image.created": "2024-09-26T21:31:42Z"},
}

BUILDX_INDEX = {
    "schemaVersion": 2,
    "mediaType": OCI_INDEX,
    "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": _d("amd64"), "size": 1000,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": _d("arm64"), "size": 1000,
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        {"mediaType": OCI_MANIFEST, "digest": _d("att"), "size": 566,
         "annotations": {"vnd.docker.reference.digest": _d("amd64"),
                         "vnd.docker.reference.type": "attestation-manifest"},
         "platform": {"architecture": "unknown", "os": "unknown"}},
    ],
}

CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "created": "2024-09-26T21:31:42Z",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
               "Cmd": ["sh"], "WorkingDir": "/", "Labels": {"a": "b"}},
    "rootfs": {"type": "layers", "diff_ids": [_d("diff0")]},
    "history": [{"created": "2024-09-26T21:31:42Z", "created_by": "BusyBox 1.37.0 (glibc)"}],
}


def _b(doc):
    return json.dumps(doc).encode()


def test_docker_manifest():
    m = parse_manifest(_b(DOCKER_IMAGE), DOCKER_MANIFEST)
    assert isinstance(m, ImageManifest) and not m.is_index
    assert m.media_type == DOCKER_MANIFEST
    assert m.config.digest == _d("config") and m.config.size == 1457
    assert [layer.digest for layer in m.layers] == [_d("layer0")]
    assert m.raw == _b(DOCKER_IMAGE)
    assert m.digest == sha256_digest(_b(DOCKER_IMAGE))


def test_oci_manifest_and_content_type_parameters():
    m = parse_manifest(_b(OCI_IMAGE), OCI_MANIFEST + "; charset=utf-8")
    assert m.media_type == OCI_MANIFEST
    assert [layer_compression(x.media_type) for x in m.layers] == ["gzip", "zstd"]
    assert m.annotations == OCI_IMAGE["annotations"]


def test_index_with_attestations():
    idx = parse_manifest(_b(BUILDX_INDEX), OCI_INDEX)
    assert isinstance(idx, ImageIndex) and idx.is_index
    assert [str(d.platform) for d in idx.manifests] == [
        "linux/amd64", "linux/arm64/v8", "unknown/unknown"]
    assert idx.manifests[2].annotations["vnd.docker.reference.type"] == "attestation-manifest"


@pytest.mark.parametrize("content_type", [None, "", "application/json", "application/octet-stream"])
def test_generic_content_type_uses_document(content_type):
    assert parse_manifest(_b(DOCKER_IMAGE), content_type).media_type == DOCKER_MANIFEST
    assert parse_manifest(_b(BUILDX_INDEX), content_type).media_type == OCI_INDEX
    bare = {k: v for k, v in OCI_IMAGE.items() if k != "mediaType"}
    assert parse_manifest(_b(bare), content_type).media_type == OCI_MANIFEST
    bare = {k: v for k, v in BUILDX_INDEX.items() if k != "mediaType"}
    assert parse_manifest(_b(bare), content_type).media_type == OCI_INDEX


def test_media_type_field_must_agree_with_content_type():
    with pytest.raises(ManifestError, match="ambiguous.*Content-Type"):
        parse_manifest(_b(DOCKER_IMAGE), OCI_MANIFEST)
    with pytest.raises(ManifestError, match="ambiguous"):
        parse_manifest(_b(BUILDX_INDEX), OCI_MANIFEST)


def test_manifests_and_layers_in_one_document():
    both = copy.deepcopy(OCI_IMAGE)
    both["manifests"] = BUILDX_INDEX["manifests"]
    for content_type in (OCI_MANIFEST, OCI_INDEX, None):
        with pytest.raises(ManifestError, match="ambiguous"):
            parse_manifest(_b(both), content_type)
    # an index carrying only a config is just as ambiguous
    odd = dict(BUILDX_INDEX, config=OCI_IMAGE["config"])
    with pytest.raises(ManifestError, match="ambiguous"):
        parse_manifest(_b(odd), OCI_INDEX)


def test_content_type_kind_must_match_shape():
    bare = {k: v for k, v in OCI_IMAGE.items() if k != "mediaType"}
    with pytest.raises(ManifestError, match="has 'config' or 'layers'"):
        parse_manifest(_b(bare), OCI_INDEX)


@pytest.mark.parametrize("doc, content_type", [
    ({"schemaVersion": 1, "name": "library/busybox", "tag": "latest", "fsLayers": []}, None),
    ({"schemaVersion": 1, "fsLayers": [], "signatures": []},
     "application/vnd.docker.distribution.manifest.v1+prettyjws"),
    ({"schemaVersion": 2}, "application/vnd.docker.distribution.manifest.v1+json"),
])
def test_schema1_is_refused(doc, content_type):
    with pytest.raises(ManifestError) as info:
        parse_manifest(_b(doc), content_type)
    assert str(info.value) == (
        "schema 1 manifests are not supported; re-push the image with a current client")


@pytest.mark.parametrize("schema", [None, 3, "2", True, 2.0])
def test_schema_version_must_be_2(schema):
    doc = dict(OCI_IMAGE, schemaVersion=schema)
    with pytest.raises(ManifestError, match="schemaVersion"):
        parse_manifest(_b(doc), OCI_MANIFEST)


def test_oversized_body_is_refused_before_parsing():
    body = b" " * (5 * 1024 * 1024) + _b(OCI_IMAGE)
    with pytest.raises(ManifestError, match="byte limit"):
        parse_manifest(body, OCI_MANIFEST)
    # the limit itself is inclusive
    padded = _b(OCI_IMAGE) + b" " * (MAX_MANIFEST_BYTES - len(_b(OCI_IMAGE)))
    assert parse_manifest(padded, OCI_MANIFEST).layers


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b"\xff\xfe", b'"x"',
                                  b'{"schemaVersion": NaN}', b"[" * 100000 + b"]" * 100000])
def test_not_a_json_object(body):
    with pytest.raises(ManifestError):
        parse_manifest(body, OCI_MANIFEST)


def test_duplicate_keys_are_refused():
    body = b'{"schemaVersion": 2, "mediaType": "%s", "mediaType": "%s", "manifests": []}' % (
        OCI_INDEX.encode(), OCI_MANIFEST.encode())
    with pytest.raises(ManifestError, match="duplicate key 'mediaType'"):
        parse_manifest(body, None)


def test_unknown_manifest_type():
    with pytest.raises(ManifestError, match="text/html"):
        parse_manifest(_b(OCI_IMAGE), "text/html")


def test_encrypted_layer_is_refused():
    doc = copy.deepcopy(OCI_IMAGE)
    doc["layers"][1]["mediaType"] = OCI_LAYER_GZIP + "+encrypted"
    with pytest.raises(ManifestError, match="encrypted"):
        parse_manifest(_b(doc), OCI_MANIFEST)


def test_unknown_layer_type_is_named():
    doc = copy.deepcopy(OCI_IMAGE)
    doc["layers"][0]["mediaType"] = "application/vnd.example.squashfs"
    with pytest.raises(ManifestError, match="application/vnd.example.squashfs"):
        parse_manifest(_b(doc), OCI_MANIFEST)


@pytest.mark.parametrize("config_type", [
    "application/vnd.cncf.helm.config.v1+json",
    "application/vnd.oci.empty.v1+json",
])
def test_artifact_is_not_an_image(config_type):
    doc = copy.deepcopy(OCI_IMAGE)
    doc["config"]["mediaType"] = config_type
    with pytest.raises(ManifestError) as info:
        parse_manifest(_b(doc), OCI_MANIFEST)
    assert "is not a container image (config type %s" % config_type in str(info.value)


@pytest.mark.parametrize("where", ["config", "layer", "index"])
@pytest.mark.parametrize("digest", ["sha256:../../x", "sha256:" + "A" * 64, "md5:" + "a" * 32,
                                    "sha256:" + "a" * 63, 42, None])
def test_descriptor_digest_is_validated(where, digest):
    if where == "index":
        doc = copy.deepcopy(BUILDX_INDEX)
        doc["manifests"][0]["digest"] = digest
    else:
        doc = copy.deepcopy(OCI_IMAGE)
        target = doc["config"] if where == "config" else doc["layers"][1]
        target["digest"] = digest
    with pytest.raises(ManifestError, match="digest"):
        parse_manifest(_b(doc))


@pytest.mark.parametrize("size", [-1, "12", 1.5, None, True])
def test_descriptor_size_is_validated(size):
    doc = copy.deepcopy(OCI_IMAGE)
    doc["layers"][0]["size"] = size
    with pytest.raises(ManifestError, match="invalid size"):
        parse_manifest(_b(doc), OCI_MANIFEST)


def test_descriptor_round_trip_and_checks():
    data = {"mediaType": DOCKER_FOREIGN_LAYER, "digest": _d("win"), "size": 10,
            "urls": ["https://mcr.microsoft.com/v2/x/blobs/" + _d("win")],
            "annotations": {"k": "v"}, "artifactType": "application/x"}
    assert Descriptor.from_dict(data).to_dict() == data
    plat = Descriptor.from_dict(BUILDX_INDEX["manifests"][1])
    assert plat.platform == Platform("linux", "arm64") and plat.to_dict() == BUILDX_INDEX["manifests"][1]
    with pytest.raises(ManifestError, match="urls"):
        Descriptor.from_dict(dict(data, urls="https://x"))
    with pytest.raises(ManifestError, match="annotations"):
        Descriptor.from_dict(dict(data, annotations={"k": 1}))
    with pytest.raises(ManifestError, match="architecture"):
        Descriptor.from_dict(dict(data, platform={"os": "linux"}))


def test_layer_types():
    assert layer_compression(OCI_LAYER_TAR) is None
    assert layer_compression(DOCKER_LAYER_GZIP) == "gzip"
    assert layer_compression(DOCKER_LAYER_ZSTD) == "zstd"
    assert layer_compression(OCI_LAYER_NONDIST_GZIP) == "gzip"
    assert is_foreign_layer(DOCKER_FOREIGN_LAYER) and is_foreign_layer(OCI_LAYER_NONDIST_GZIP)
    assert not is_foreign_layer(OCI_LAYER_GZIP)
    with pytest.raises(ManifestError, match="encrypted"):
        layer_compression(OCI_LAYER_ZSTD + "+encrypted")
    with pytest.raises(ManifestError):
        layer_compression("application/octet-stream")
    assert set(INDEX_TYPES) == {OCI_INDEX, DOCKER_LIST}
    assert set(MANIFEST_TYPES) == {OCI_MANIFEST, DOCKER_MANIFEST}


def test_parse_config():
    cfg = parse_config(_b(CONFIG))
    assert (cfg.os, cfg.architecture, cfg.variant) == ("linux", "amd64", None)
    assert cfg.config["Cmd"] == ["sh"] and cfg.diff_ids == [_d("diff0")]
    assert cfg.created == "2024-09-26T21:31:42Z" and len(cfg.history) == 1
    assert cfg.raw == _b(CONFIG) and str(cfg.platform) == "linux/amd64"
    bare = parse_config(b'{"architecture":"arm","os":"linux","variant":"v7",'
                        b'"rootfs":{"type":"layers","diff_ids":[]}}')
    assert bare.config == {} and bare.history == [] and bare.variant == "v7"


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.pop("rootfs"), "rootfs"),
    (lambda c: c["rootfs"].update(type="tarsum"), "rootfs.type"),
    (lambda c: c["rootfs"].update(diff_ids="x"), "diff_ids"),
    (lambda c: c["rootfs"]["diff_ids"].append("sha256:../../x"), "diff_id 1"),
    (lambda c: c["config"].update(Cmd="sh"), "Cmd"),
    (lambda c: c["config"].update(Env=[1]), "Env"),
    (lambda c: c["config"].update(User=0), "User"),
    (lambda c: c["config"].update(Labels={"a": 1}), "Labels"),
    (lambda c: c.update(history={}), "history"),
    (lambda c: c.update(os=1), "'os'"),
])
def test_parse_config_rejects(mutate, message):
    doc = copy.deepcopy(CONFIG)
    mutate(doc)
    with pytest.raises(ManifestError, match=message):
        parse_config(_b(doc))


def test_config_size_cap():
    with pytest.raises(ManifestError, match="byte limit"):
        parse_config(_b(CONFIG) + b" " * (4 * 1024 * 1024))


def test_manifest_config_cross_check():
    config_bytes = _b(CONFIG)
    doc = copy.deepcopy(DOCKER_IMAGE)
    doc["config"].update(digest=sha256_digest(config_bytes), size=len(config_bytes))
    manifest = parse_manifest(_b(doc), DOCKER_MANIFEST)
    check_manifest_matches_config(manifest, parse_config(config_bytes))
    two = copy.deepcopy(CONFIG)
    two["rootfs"]["diff_ids"].append(_d("diff1"))
    two_bytes = _b(two)
    doc["config"].update(digest=sha256_digest(two_bytes), size=len(two_bytes))
    with pytest.raises(ManifestError, match="1 layers but its config lists 2 diff_ids"):
        check_manifest_matches_config(parse_manifest(_b(doc)), parse_config(two_bytes))
    with pytest.raises(DigestMismatch, match="config"):
        check_manifest_matches_config(parse_manifest(_b(doc)), parse_config(config_bytes))


def test_chain_ids_known_vector():
    diff_ids = [_d("a"), _d("b"), _d("c")]
    c1 = "sha256:" + hashlib.sha256((diff_ids[0] + " " + diff_ids[1]).encode()).hexdigest()
    c2 = "sha256:" + hashlib.sha256((c1 + " " + diff_ids[2]).encode()).hexdigest()
    assert chain_ids(diff_ids) == [diff_ids[0], c1, c2]
    assert chain_ids([diff_ids[1]]) == [diff_ids[1]]
    assert chain_ids([]) == []
    with pytest.raises(InvalidDigest):
        chain_ids([diff_ids[0], "sha256:../../x"])


def test_canonical_json_is_deterministic():
    a = {"b": [1, {"z": "é", "a": None}], "a": "x"}
    b = {"a": "x", "b": [1, {"a": None, "z": "é"}]}
    assert canonical_json(a) == canonical_json(b) == '{"a":"x","b":[1,{"a":null,"z":"é"}]}'.encode()


def test_build_round_trip():
    diff_ids = [_d("d0"), _d("d1")]
    config_bytes = build_config(diff_ids, os="linux", architecture="arm", variant="v7",
                                config={"Cmd": ["sh"], "Env": ["A=1"]},
                                created="2025-01-01T00:00:00Z",
                                history=[{"created_by": "test"}])
    assert config_bytes == build_config(diff_ids, os="linux", architecture="arm", variant="v7",
                                        config={"Env": ["A=1"], "Cmd": ["sh"]},
                                        created="2025-01-01T00:00:00Z",
                                        history=[{"created_by": "test"}])
    cfg = parse_config(config_bytes)
    assert (cfg.os, cfg.architecture, cfg.variant) == ("linux", "arm", "v7")
    assert cfg.diff_ids == diff_ids and cfg.config == {"Cmd": ["sh"], "Env": ["A=1"]}

    config_desc = Descriptor(OCI_CONFIG, sha256_digest(config_bytes), len(config_bytes))
    layers = [{"mediaType": OCI_LAYER_GZIP, "digest": _d("b0"), "size": 100},
              Descriptor(OCI_LAYER_ZSTD, _d("b1"), 200)]
    manifest_bytes = build_manifest(config_desc, layers, annotations={"k": "v"})
    manifest = parse_manifest(manifest_bytes, OCI_MANIFEST)
    assert manifest.media_type == OCI_MANIFEST and manifest.raw == manifest_bytes
    assert manifest.config == config_desc
    assert [x.digest for x in manifest.layers] == [_d("b0"), _d("b1")]
    assert manifest.annotations == {"k": "v"}
    check_manifest_matches_config(manifest, cfg)

    entry = Descriptor(OCI_MANIFEST, sha256_digest(manifest_bytes), len(manifest_bytes),
                       platform=Platform("linux", "arm", "v7"))
    index_bytes = build_index([entry])
    index = parse_manifest(index_bytes, OCI_INDEX)
    assert index.manifests == [entry]
    assert index.manifests[0].platform.to_dict() == {"os": "linux", "architecture": "arm",
                                                     "variant": "v7"}
    assert json.loads(index_bytes)["schemaVersion"] == 2
    assert build_index([entry]) == index_bytes


def test_build_config_defaults_to_host_architecture():
    cfg = parse_config(build_config([]))
    assert cfg.os == "linux" and cfg.architecture and cfg.diff_ids == []


def test_build_manifest_refuses_bad_layer_type():
    config_desc = Descriptor(OCI_CONFIG, _d("c"), 1)
    with pytest.raises(ManifestError, match="encrypted"):
        build_manifest(config_desc, [Descriptor(OCI_LAYER_GZIP + "+encrypted", _d("x"), 1)])
