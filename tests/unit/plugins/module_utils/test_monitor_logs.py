"""Log framing and size-based rotation (_logs), on real files in tmp_path."""

from __future__ import annotations

import os
import re

from ansible_collections.intermodal.containers.plugins.module_utils._logs import (
    LineFramer, RotatingLog, parse_line, read_lines, rfc3339_now, rotated_names,
)

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def test_rfc3339_has_nanoseconds_and_utc():
    assert rfc3339_now(1704067200 * 10**9 + 5) == "2024-01-01T00:00:00.000000005Z"
    assert TS.match(rfc3339_now())


def test_framer_splits_lines_and_keeps_partial_until_newline(tmp_path):
    log = RotatingLog(str(tmp_path / "c.log"))
    out = LineFramer("stdout", log)
    out.feed(b"one\ntw")
    out.feed(b"o\nthree")
    out.flush()
    log.close()
    recs = read_lines(str(tmp_path / "c.log"), 1)
    assert [(r[1], r[2], r[3]) for r in recs] == [
        ("stdout", False, "one"), ("stdout", False, "two"), ("stdout", True, "three")]
    assert all(TS.match(r[0]) for r in recs)


def test_framer_cuts_overlong_lines_into_partials(tmp_path):
    log = RotatingLog(str(tmp_path / "c.log"))
    err = LineFramer("stderr", log, max_line=4)
    err.feed(b"abcdefghij\n")
    log.close()
    recs = read_lines(str(tmp_path / "c.log"), 1)
    assert [(r[2], r[3]) for r in recs] == [(True, "abcd"), (True, "efgh"), (False, "ij")]
    assert "".join(r[3] for r in recs) == "abcdefghij"


def test_rotation_by_size_keeps_max_files(tmp_path):
    path = str(tmp_path / "container.log")
    log = RotatingLog(path, max_size=100, max_files=3)
    for i in range(50):
        log.write(b"%02d" % i + b"x" * 28 + b"\n")  # 31 bytes: 3 records per file
    log.close()
    names = sorted(os.listdir(str(tmp_path)))
    assert names == ["container.log", "container.log.1", "container.log.2"]
    for name in names:
        assert os.path.getsize(str(tmp_path / name)) <= 100
    # Newest records in the current file, older ones in .1, .2; nothing older kept.
    with open(path, "rb") as f:
        current = f.read().splitlines()
    with open(path + ".2", "rb") as f:
        oldest = f.read().splitlines()
    assert current[-1].startswith(b"49")
    assert int(oldest[0][:2]) < int(current[0][:2])
    assert int(oldest[0][:2]) >= 50 - 9


def test_rotation_with_one_file_truncates(tmp_path):
    path = str(tmp_path / "container.log")
    log = RotatingLog(path, max_size=10, max_files=1)
    log.write(b"123456789\n")
    log.write(b"abcdefghi\n")
    log.close()
    assert os.listdir(str(tmp_path)) == ["container.log"]
    with open(path, "rb") as f:
        assert f.read() == b"abcdefghi\n"


def test_record_bigger_than_max_size_is_written_whole(tmp_path):
    path = str(tmp_path / "container.log")
    log = RotatingLog(path, max_size=10, max_files=2)
    log.write(b"small\n")
    log.write(b"x" * 50 + b"\n")
    log.close()
    with open(path, "rb") as f:
        assert f.read() == b"x" * 50 + b"\n"
    with open(path + ".1", "rb") as f:
        assert f.read() == b"small\n"


def test_no_rotation_without_max_size(tmp_path):
    path = str(tmp_path / "container.log")
    log = RotatingLog(path, max_size=None, max_files=3)
    for dummy in range(100):
        log.write(b"y" * 100 + b"\n")
    log.close()
    assert os.listdir(str(tmp_path)) == ["container.log"]
    assert os.path.getsize(path) == 101 * 100


def test_lowering_max_files_live_drops_extra_files(tmp_path):
    path = str(tmp_path / "container.log")
    log = RotatingLog(path, max_size=10, max_files=4)
    for i in range(6):
        log.write(b"%d23456789\n" % i)
    assert len(os.listdir(str(tmp_path))) == 4
    log.configure(10, 2)
    log.write(b"last45678\n")
    log.close()
    assert sorted(os.listdir(str(tmp_path))) == ["container.log", "container.log.1"]


def test_reopens_appending_and_counts_existing_size(tmp_path):
    path = str(tmp_path / "container.log")
    with open(path, "wb") as f:
        f.write(b"z" * 95)
    log = RotatingLog(path, max_size=100, max_files=2)
    log.write(b"0123456789")
    log.close()
    assert os.path.getsize(path + ".1") == 95


def test_read_lines_orders_oldest_first_and_tails(tmp_path):
    path = str(tmp_path / "container.log")
    log = RotatingLog(path, max_size=120, max_files=3)
    out = LineFramer("stdout", log)
    for i in range(6):
        out.feed(b"line %d\n" % i)
    log.close()
    assert len(os.listdir(str(tmp_path))) > 1
    texts = [r[3] for r in read_lines(path, 3)]
    assert texts == ["line %d" % i for i in range(6 - len(texts), 6)]
    assert [r[3] for r in read_lines(path, 3, tail=2)] == ["line 4", "line 5"]


def test_parse_line_rejects_foreign_text():
    assert parse_line(b"hello world\n") is None
    assert parse_line("2024-01-01T00:00:00.000000000Z stdout F a b c\n") == (
        "2024-01-01T00:00:00.000000000Z", "stdout", False, "a b c")


def test_rotated_names():
    assert rotated_names("/l/c.log", 3) == ["/l/c.log", "/l/c.log.1", "/l/c.log.2"]
    assert rotated_names("/l/c.log", 0) == ["/l/c.log"]
