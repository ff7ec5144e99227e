import pytest

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    InvalidDigest,
    InvalidReference,
)
from ansible_collections.intermodal.containers.plugins.module_utils._reference import (
    parse_reference,
    validate_digest,
)

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "text, expected",
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("user/app", "docker.io/user/app:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000/a/b/c:v1"),
        ("quay.io/org/app@" + D, "quay.io/org/app@" + D),
        ("quay.io/org/app:1.0@" + D, "quay.io/org/app:1.0@" + D),
        ("[::1]:5000/app", "[::1]:5000/app:latest"),
        ("a__b/c-d.e", "docker.io/a__b/c-d.e:latest"),
    ],
)
def test_normalises_like_docker(text, expected):
    assert str(parse_reference(text)) == expected


def test_parts():
    ref = parse_reference("localhost:5000/team/app:v2@" + D)
    assert ref.registry == "localhost:5000"
    assert ref.repository == "team/app"
    assert ref.tag == "v2"
    assert ref.digest == D
    assert ref.lookup == D
    assert parse_reference("busybox").api_host == "registry-1.docker.io"
    assert parse_reference("busybox").familiar() == "busybox:latest"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "upper/Case",
        "busybox:",
        "busybox:-bad",
        "busybox:" + "t" * 129,
        "a//b",
        "a/b/",
        "busybox@sha256:abc",
        "busybox@sha256:" + "g" * 64,
        "busybox@md5:" + "a" * 32,
        "bad name",
        "-leading/dash",
        "a" * 300,
        "host:port:x/app",
    ],
)
def test_rejects_bad_names(text):
    with pytest.raises(InvalidReference):
        parse_reference(text)


@pytest.mark.parametrize("digest", ["sha256:../../x", "sha256:" + "A" * 64, "sha1:" + "a" * 40, None, "sha256:"])
def test_validate_digest_rejects(digest):
    with pytest.raises(InvalidDigest):
        validate_digest(digest)


def test_validate_digest_accepts():
    assert validate_digest(D) == D
    assert validate_digest("sha512:" + "0" * 128)
