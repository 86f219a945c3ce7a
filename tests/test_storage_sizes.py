"""Sizes and names of the storage section (pure units): the original's units B K M G T P (binary),
plain bytes as the manual's examples, clear errors otherwise; its short sizes; Ceph names."""

from __future__ import annotations

import pytest

from pvc.lib.ceph_records import MAX_SIZE, OSD_FLAGS, format_bytes_tohuman, parse_size, validate_device
from pvc.lib.errors import InvalidArgument
from pvc.lib.schema import validate_ceph_name, validate_osd_id

GIB = 1024**3


@pytest.mark.parametrize("text, size", [
    ("1073741824", GIB),  # the manual's plain bytes (the original: 500 KeyError)
    ("4096M", 4 * GIB), ("20G", 20 * GIB), ("1B", 1), ("1K", 1024), ("3T", 3 * 1024**4), ("2P", 2 * 1024**5),
    ("512", 512), (" 20G ", 20 * GIB), ("007G", 7 * GIB), (1073741824, GIB),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text, fragment", [
    ("10g", "units are upper case: 10G"),
    ("1.5G", "a whole number is needed"),
    ("20GiB", "one letter only: 20G"),
    ("20 GB", "one letter only: 20G"),
    ("G", "give a number of bytes"),
    ("", "give a number of bytes"),
    ("-1G", "give a number of bytes"),
    ("1X", "give a number of bytes"),
    ("１０G", "give a number of bytes"),  # full-width digits are not ASCII digits
    ("1_000", "give a number of bytes"),
    ("0", "more than 0 bytes"),
    ("0G", "more than 0 bytes"),
    ("9" * 41, "give a number of bytes"),  # longer than any number read
    ("8E", "give a number of bytes"),
    (f"{MAX_SIZE // 1024 + 1}K", "larger than Ceph can hold"),
    (True, "give a number of bytes"),
    (None, "give a number of bytes"),
    (1.5, "give a number of bytes"),
])
def test_bad_sizes(text: object, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_size(text)
    assert fragment in caught.value.message
    assert "B, K, M, G, T, P" in caught.value.message or "more than 0" in fragment or "larger" in fragment


@pytest.mark.parametrize("size, text", [
    # The original's observed values (its §4.9.4).
    (0, "0B"), (1023, "1023B"), (1024, "1024B"), (GIB, "1024M"), (10 * GIB, "10G"), (10**13, "9314G"),
    (9999, "9999B"), (10000, "10K"), (20 * GIB, "20G"), (4 * GIB, "4096M"), (GIB + 1, "1025M"),
])
def test_format_bytes_tohuman(size: int, text: str) -> None:
    assert format_bytes_tohuman(size) == text


def test_human_sizes_read_back_at_least_as_large() -> None:
    for size in (1, 1000, 4096, 10**6, GIB, 3 * GIB + 7, 10**13, 2**50 + 1):
        assert parse_size(format_bytes_tohuman(size)) >= size


@pytest.mark.parametrize("name", ["vms", "web1_disk0", "a.b+c:d=e~f-g", "A" * 128, "0", "x-"])
def test_ceph_names(name: str) -> None:
    assert validate_ceph_name("pool", name) == name


@pytest.mark.parametrize("name, fragment", [
    ("", "must not be empty"), ("a/b", "must not contain '/'"), ("a@b", "must not contain '@'"),
    ("a b", "must not contain ' '"), ("-rf", "must not start with '-'"), (".", "'.' and '..' are not names"),
    ("..", "'.' and '..' are not names"), ("A" * 129, "longer than 128"), ("é", "must not contain 'é'"),
    ("a,b", "must not contain ','"), ("a\nb", "must not contain"), (None, "must not be empty"),
])
def test_bad_ceph_names(name: object, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_ceph_name("volume", name)
    assert fragment in caught.value.message and "volume name" in caught.value.message


@pytest.mark.parametrize("value, text", [("0", "0"), ("12", "12"), (7, "7"), ("123456789", "123456789")])
def test_osd_ids(value: object, text: str) -> None:
    assert validate_osd_id(value) == text


@pytest.mark.parametrize("value", ["", "-1", "01", "1.0", "osd.1", "1 ", "1234567890", True, None, 1.0, "٣"])
def test_bad_osd_ids(value: object) -> None:
    with pytest.raises(InvalidArgument, match="Invalid OSD id"):
        validate_osd_id(value)


@pytest.mark.parametrize("device", ["/dev/sdb", "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", "/var/lib/pvc/osd0.img"])
def test_devices(device: str) -> None:
    assert validate_device(device) == device


@pytest.mark.parametrize("device", ["", "sdb", "dev/sdb", "/dev/sd b", "/dev/../etc/passwd", "/dev/sdb,1",
                                    "/dev/sdb\n", "/dev/./sdb", None])
def test_bad_devices(device: object) -> None:
    with pytest.raises(InvalidArgument, match="Invalid device"):
        validate_device(device)


def test_osd_flags_are_cephs_list() -> None:
    """The library offers the flags the agent accepts (tests/test_agent_ceph.py checks those
    against the installed Ceph's own grammar)."""
    from pvc.agent.ceph import OSD_SET_FLAGS

    assert OSD_FLAGS == OSD_SET_FLAGS == ("full", "pause", "noup", "nodown", "noout", "noin", "nobackfill",
                                          "norebalance", "norecover", "noscrub", "nodeep-scrub", "notieragent",
                                          "nosnaptrim", "pglog_hardlimit")
