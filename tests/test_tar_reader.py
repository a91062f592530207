"""The tar shard reader against Python's tarfile module, and every way a shard can be broken."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import tarfile

import pytest
from webdataset.tariterators import base_plus_ext

from datamodules.bad_samples import BadSampleCounter
from datamodules.shard_stream import read_shard
from datamodules.shards import ShardWriter, read_index
from datamodules.tar_reader import checksum_ok, header_number, member_key, tar_records
from tests.conftest import identity_image


def reference_records(path) -> list[dict]:
    """The records of a tar file read with Python's tarfile: regular members grouped by key."""
    records = []
    with tarfile.open(path) as tar:
        for info in tar:
            if not info.isreg():
                continue
            parts = member_key(info.name)
            if parts is None:
                continue
            key, field = parts
            if not records or records[-1]["__key__"] != key:
                records.append({"__key__": key, "__url__": str(path)})
            records[-1][field] = tar.extractfile(info).read()
    return records


def read_all(path) -> tuple[list[dict], list[tuple[str, str]]]:
    problems = []
    records = list(tar_records(str(path), lambda kind, message, key=None: problems.append((kind, message))))
    return records, problems


def write_tar(path, members, fmt=tarfile.PAX_FORMAT, mtime=0) -> None:
    """``members``: (name, bytes) for files, (name, None) for directories, (name, "->target") for links."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:]
                info.size = 700  # a size in a link's header stands for no data (as tarfile reads it)
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def sample_members(count: int, key_prefix: str = "s") -> list[tuple[str, bytes]]:
    rng = random.Random(count)
    members = []
    for i in range(count):
        members.append((f"{key_prefix}{i:04d}.jpg", rng.randbytes(rng.randrange(1, 3000))))
        members.append((f"{key_prefix}{i:04d}.json", b'{"identity": %d}' % i))
    return members


def test_shards_of_the_writer_read_as_tarfile_reads_them(tmp_path):
    with ShardWriter(tmp_path, "train", max_samples=7, split_on="identity") as writer:
        for identity in range(4):
            for i in range(5):
                writer.write(f"id{identity:03d}_{i}", identity_image(identity, i), {"identity": identity})
        long_key = "a/" + "very_long_name_" * 10 + "x"  # > 100 characters: a PAX path header
        writer.write(long_key, identity_image(9, 0), {"identity": 9})
    shards = read_index(tmp_path / "train").urls
    everything = []
    for url in shards:
        records, problems = read_all(url)
        assert records == reference_records(url) and not problems
        everything.extend(records)
    assert len(everything) == 21 and everything[-1]["__key__"] == long_key
    assert set(everything[0]) == {"__key__", "__url__", "jpg", "json"}


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_links_directories_and_meta_members_in_every_header_format(tmp_path, fmt):
    long_dir = "d" * 120 if fmt != tarfile.USTAR_FORMAT else "d" * 90  # ustar: a name split into prefix
    members = [("folder", None), ("__meta__", b"skip"), ("no_dot", b"skip"), (".hidden", b"skip"),
               (f"{long_dir}/{'k' * 60}.JPG", b"upper-case field"), (f"{long_dir}/{'k' * 60}.cls.txt", b"7"),
               ("folder/link.jpg", "->elsewhere")] + sample_members(3)
    path = tmp_path / "shard.tar"
    write_tar(path, members, fmt=fmt, mtime=1.5 if fmt == tarfile.PAX_FORMAT else 0)  # float mtime: PAX headers
    records, problems = read_all(path)
    assert records == reference_records(path) and not problems
    assert records[0] == {"__key__": f"{long_dir}/{'k' * 60}", "__url__": str(path), "jpg": b"upper-case field",
                          "cls.txt": b"7"}
    assert [r["__key__"] for r in records[1:]] == ["s0000", "s0001", "s0002"]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_shards_read_like_plain_ones(tmp_path, compress):
    plain = tmp_path / "shard.tar"
    write_tar(plain, sample_members(4))
    packed = tmp_path / "shard.tar.z"
    packed.write_bytes(compress(plain.read_bytes()))
    records, problems = read_all(packed)
    assert not problems
    assert [{k: v for k, v in r.items() if k != "__url__"} for r in records] == \
           [{k: v for k, v in r.items() if k != "__url__"} for r in reference_records(plain)]


def test_member_key_splits_names_as_webdataset_does():
    names = ["a.jpg", "a.b.c", "dir/a.JSON", "x.y/z.png", "noext", ".hidden", "d/.hidden", "a.", "d.d/e",
             "__key__.txt", "dir/sub/k.seg.png"]
    for name in names:
        prefix, suffix = base_plus_ext(name)
        assert member_key(name) == (None if prefix is None else (prefix, suffix.lower())), name
    for meta in ("__meta__", "__index__/x.y", "__a.b__"):  # webdataset's metadata members
        assert member_key(meta) is None


def test_header_checksum_and_numbers():
    header = tarfile.TarInfo("some/name.jpg").tobuf(tarfile.USTAR_FORMAT)[:512]
    assert checksum_ok(header)
    rng = random.Random(0)
    for _ in range(300):  # any single changed byte outside the checksum field is caught
        i = rng.choice([j for j in range(512) if not 148 <= j < 156])
        changed = bytearray(header)
        changed[i] = (changed[i] + rng.randrange(1, 256)) % 256
        assert not checksum_ok(bytes(changed))
    signed = bytearray(header)
    signed[200] = 0xF0  # a high byte, checksum written as a signed sum (old tars)
    total = sum(b if b < 128 else b - 256 for b in signed[:148] + b" " * 8 + signed[156:])
    signed[148:156] = b"%06o\0 " % total
    assert checksum_ok(bytes(signed))
    # a stored sum off by exactly 65521 (what a modulo-65521 comparison would accept) is caught
    stored = sum(header[:148] + b" " * 8 + header[156:])
    off = bytearray(header)
    off[148:156] = b"%06o\0 " % (stored + 65521)
    assert not checksum_ok(bytes(off))
    assert header_number(b"0000644\0") == 0o644 and header_number(b"      \0\0") == 0
    assert header_number(b"\x80" + (2 ** 40).to_bytes(11, "big")) == 2 ** 40  # GNU base-256
    with pytest.raises(ValueError):
        header_number(b"12x4\0")


def test_cut_inside_a_member_yields_what_came_before_and_reports_the_file(tmp_path):
    path = tmp_path / "shard.tar"
    write_tar(path, sample_members(6))
    intact = reference_records(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 + 100])
    records, problems = read_all(path)
    assert 1 <= len(records) < 6 and records[:-1] == intact[:len(records) - 1]
    assert records[-1].items() <= intact[len(records) - 1].items()  # the last one may lack its cut member
    assert [kind for kind, _ in problems] == ["truncated_shard"] and str(path) in problems[0][1]
    counter = BadSampleCounter()
    assert len(list(read_shard(str(path), counter, expected=6))) == len(records)
    # counted in samples: those of the index's 6 that were not read (the half-read one is read, and
    # fails later as a sample)
    assert dict(counter.counts) == {"truncated_shard": 6 - len(records)}
    list(read_shard(str(path), counter, expected=6))
    assert dict(counter.counts) == {"truncated_shard": 6 - len(records)}  # read again: the same loss, once


def test_cut_at_a_member_boundary_is_caught_by_the_index_count(tmp_path):
    path = tmp_path / "shard.tar"
    write_tar(path, sample_members(6))
    intact = reference_records(path)
    first_three = sum(512 + -(-len(data) // 512) * 512 for _, data in sample_members(6)[:6])
    path.write_bytes(path.read_bytes()[:first_three])
    records, problems = read_all(path)
    assert records == intact[:3] and not problems  # a shorter valid archive
    counter = BadSampleCounter()
    assert len(list(read_shard(str(path), counter, expected=6))) == 3
    assert dict(counter.counts) == {"truncated_shard": 3} and "3 of the 6" in counter.examples["truncated_shard"]
    path.write_bytes(path.read_bytes() + bytes(300))  # a cut inside the end-of-archive zeros is no error
    assert read_all(path) == (intact[:3], [])


def test_bad_header_checksum_stops_the_shard_with_a_count(tmp_path):
    path = tmp_path / "shard.tar"
    write_tar(path, sample_members(5))
    intact = reference_records(path)
    data = bytearray(path.read_bytes())
    third = sum(512 + -(-len(d) // 512) * 512 for _, d in sample_members(5)[:4])  # sample 2's first header
    data[third + 3] ^= 0x20  # one byte of its name changes
    path.write_bytes(bytes(data))
    records, problems = read_all(path)
    assert records == intact[:2]
    assert problems == [("corrupt_shard", f"{path}: bad header checksum at byte {third}")]
    counter = BadSampleCounter()
    list(read_shard(str(path), counter, expected=5))
    assert dict(counter.counts) == {"corrupt_shard": 3}  # the 3 samples after the bad header


def test_malformed_pax_header_and_repeated_fields_are_reported(tmp_path):
    path = tmp_path / "pax.tar"
    write_tar(path, [("x" * 150 + ".jpg", b"data")] + sample_members(1))  # a PAX header first
    data = bytearray(path.read_bytes())
    start = data.index(b" path=")
    data[start - 3:start] = b"9zz"  # the record's length is no number (member data: no checksum)
    path.write_bytes(bytes(data))
    records, problems = read_all(path)
    assert records == [] and problems[0][0] == "corrupt_shard" and "malformed PAX header" in problems[0][1]

    path = tmp_path / "repeat.tar"
    write_tar(path, [("a.jpg", b"first"), ("a.json", b"{}"), ("a.jpg", b"second")] + sample_members(1))
    records, problems = read_all(path)
    assert records[0]["jpg"] == b"first" and [r["__key__"] for r in records] == ["a", "s0000"]
    assert problems == [("corrupt_shard", f"{path}: sample 'a' has a second 'jpg' member")]


def test_unreadable_empty_and_garbage_files(tmp_path):
    counter = BadSampleCounter()
    missing = tmp_path / "missing.tar"
    assert list(read_shard(str(missing), counter, expected=3)) == []
    assert dict(counter.counts) == {"corrupt_shard": 3} and str(missing) in counter.examples["corrupt_shard"]

    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    counter = BadSampleCounter()
    assert list(read_shard(str(empty), counter, expected=3)) == []
    assert dict(counter.counts) == {"empty_shard": 3}
    counter = BadSampleCounter()
    assert list(read_shard(str(empty), counter)) == [] and dict(counter.counts) == {"empty_shard": 1}  # no index

    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(random.Random(1).randbytes(5000))
    records, problems = read_all(garbage)
    assert records == [] and problems == [("corrupt_shard", f"{garbage}: bad header checksum at byte 0")]

    broken_gzip = tmp_path / "broken.tar.gz"
    plain = tmp_path / "plain.tar"
    write_tar(plain, sample_members(20))
    broken_gzip.write_bytes(gzip.compress(plain.read_bytes())[:400])
    records, problems = read_all(broken_gzip)
    assert len(problems) == 1 and problems[0][0] == "truncated_shard"  # cut short, not malformed
    assert str(broken_gzip) in problems[0][1]
