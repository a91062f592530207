"""Bad data counted right: in samples, each once per epoch, the same in training, evaluation and
`visage data inspect`; inspect checks what a task needs; content checksums catch flipped bytes.

Every broken shard here is a real file broken the way disks and copies break them: emptied, cut at
a member boundary, a gzip stream cut short, a header byte flipped. Member offsets come from Python's
tarfile module, not from Visage's reader.
"""
from __future__ import annotations

import csv
import gzip
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from datamodules import shard_stream
from datamodules.bad_samples import counts_to_dict
from datamodules.batchers import PlainBatcher
from datamodules.decoding import decode_rgb
from datamodules.epoch_loader import EpochLoader
from datamodules.faces import FaceIdentityDataModule
from datamodules.memory_split import MemorySplit
from datamodules.shard_stream import ShardStream
from datamodules.shards import encode_image, read_index
from datamodules.tar_reader import tar_records
from tests.conftest import identity_image, write_identity_split
from trainers.cli import main as visage
from trainers.data_inspect import inspect_split

PER_SHARD = 16


def member_offsets(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return [info for info in tar if info.isreg()]


def cut_after_samples(path: Path, kept: int) -> None:
    """Cut the tar right before the header of sample ``kept`` (each sample is 2 members: jpg + json)."""
    start = member_offsets(path)[2 * kept].offset
    path.write_bytes(path.read_bytes()[:start])


def broken_split(root: Path) -> tuple[Path, dict[str, int]]:
    """Six shards of 16 samples (one identity each): intact, emptied, cut after 6 samples, gzip cut
    short, a header broken at sample 5, two bad samples. Returns the split and the samples each kind
    of problem costs, worked out from how the files were broken."""
    split = write_identity_split(root, "train", range(6), PER_SHARD, shard_size=PER_SHARD)
    shard = [split / f"shard-{i:06d}.tar" for i in range(6)]
    assert all(read_index(split).shards[i][1] == PER_SHARD for i in range(6))
    shard[1].write_bytes(b"")
    cut_after_samples(shard[2], 6)
    gz = gzip.compress(shard[3].read_bytes())
    shard[3].write_bytes(gz[:len(gz) // 2])  # still named .tar: the reader goes by the first bytes
    header = member_offsets(shard[4])[2 * 5].offset
    data = bytearray(shard[4].read_bytes())
    data[header + 10] ^= 0x01  # a flipped bit in sample 5's first header: the checksum no longer matches
    shard[4].write_bytes(bytes(data))
    rewrite_members(shard[5], {"id00005_003.jpg": b"\xff\xd8\xff not really a jpeg",
                               "id00005_007.json": json.dumps({"box": [2, 2, 30, 30]}).encode()})
    gz_read = len(list(tar_records(str(shard[3]), lambda *problem: None)))
    assert gz_read < PER_SHARD
    expected = {"empty_shard": PER_SHARD, "truncated_shard": (PER_SHARD - 6) + (PER_SHARD - gz_read),
                "corrupt_shard": PER_SHARD - 5, "undecodable_image": 1, "missing_field": 1}
    return split, expected


def rewrite_members(path: Path, replace: dict[str, bytes]) -> None:
    with tarfile.open(path) as tar:
        members = [(info.name, tar.extractfile(info).read()) for info in tar if info.isreg()]
    with wds.TarWriter(str(path), mtime=0) as writer:
        records: dict[str, dict] = {}
        for name, data in members:
            key, field = name.split(".", 1)
            records.setdefault(key, {"__key__": key})[field] = replace.get(name, data)
        for record in records.values():
            writer.write(record)


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def test_evaluation_reader_counts_each_lost_sample_once(tmp_path):
    split, expected = broken_split(tmp_path)
    memory = MemorySplit(read_index(split).shards, lambda s: {"key": s.key}, ("identity",))
    assert nonzero(counts_to_dict(memory.bad_samples)) == expected
    assert len(memory) == 6 * PER_SHARD - sum(expected.values())  # every sample is used or counted


@pytest.mark.parametrize("workers", [0, 2])
def test_training_counts_samples_once_per_epoch_however_often_a_shard_is_read(tmp_path, monkeypatch, workers):
    """The stream resamples shards: in one epoch the emptied shard is read many times. It still costs
    16 samples, and so does every epoch (not 16 x reads, not one per read, not a running total)."""
    split, expected = broken_split(tmp_path)
    reads: dict[str, int] = {}
    real_read_shard = shard_stream.read_shard

    def counting_read_shard(url, counter, expected_count=None):
        reads[url] = reads.get(url, 0) + 1
        return real_read_shard(url, counter, expected_count)

    if workers == 0:  # read counts are visible in this process only
        monkeypatch.setattr(shard_stream, "read_shard", counting_read_shard)
    stream = ShardStream(read_index(split).shards, lambda s: {"key": s.key}, PlainBatcher(8), ("identity",), seed=4)
    loader = EpochLoader(stream, batches_per_epoch=40, num_workers=workers)
    for epoch in range(2):
        batches = list(loader)
        assert len(batches) == 40
        assert nonzero(counts_to_dict(loader.bad_samples)) == expected, f"epoch {epoch}"
    if workers == 0:
        assert reads[str(split / "shard-000001.tar")] >= 4 and reads[str(split / "shard-000002.tar")] >= 4, reads


def test_fit_logs_skipped_samples_per_epoch(tmp_path):
    """`visage fit` on the broken split: data/skipped_* in the CSV log, each epoch, are the samples
    the broken shards and samples cost, exactly."""
    root = tmp_path / "faces"
    split, expected = broken_split(root)
    write_identity_split(root, "val", range(100, 104), 4)
    code = visage(["fit", "configs/recognizer/arcface.yaml", "data.synthetic=null", f"data.root={root}",
                   "data.image_size=32", "data.num_workers=0", "data.val_pairs=20", "data.batch_size=8",
                   "data.batches_per_epoch=40", "model.embedding_size=16", "trainer.devices=1",
                   "trainer.strategy=auto", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
                   "logging.wandb=disabled", "logging.pictures=false", f"run.root={tmp_path / 'runs'}", "run.id=bad"])
    assert code == 0
    with open(tmp_path / "runs" / "recognizer-arcface" / "bad" / "csv" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("data/skipped_empty_shard")]
    assert len(rows) == 2  # one per epoch
    for row in rows:
        logged = {key.removeprefix("data/skipped_"): int(float(value)) for key, value in row.items()
                  if key.startswith("data/skipped_") and value}
        assert nonzero(logged) == expected, row


# -- visage data inspect --task ----------------------------------------------------------------------
def test_inspect_with_a_task_agrees_with_what_training_skips(tmp_path, capsys):
    split = tmp_path / "train"
    good = encode_image(identity_image(1, 0))
    records = [{"__key__": f"good{i}", "jpg": good, "json": json.dumps({"identity": 1}).encode()} for i in range(5)]
    records += [{"__key__": "no_identity", "jpg": good, "json": json.dumps({"box": [1, 1, 9, 9]}).encode()},
                {"__key__": "bad_unused_box", "jpg": good, "json": json.dumps({"identity": 2, "box": [1, 2]}).encode()}]
    split.mkdir()
    with wds.TarWriter(str(split / "shard-000000.tar")) as tar:
        for record in records:
            tar.write(record)
    (split / "index.json").write_text(json.dumps({"schema_version": 1, "num_samples": 7, "num_identities": 2,
                                                  "fields": ["box", "identity"],
                                                  "shards": [{"name": "shard-000000.tar", "samples": 7}]}))
    # what training skips: the reader with the task's required fields
    required = FaceIdentityDataModule.required_fields
    training = MemorySplit(read_index(split).shards, lambda s: {"key": s.key}, required)
    assert nonzero(counts_to_dict(training.bad_samples)) == {"missing_field": 1} and len(training) == 6

    assert inspect_split(split) == 1  # the whole schema: the malformed box; a missing identity is no error
    out = capsys.readouterr().out
    assert "bad: {'bad_shape': 1}" in out

    assert visage(["data", "inspect", str(split), "--task", "embedder"]) == 1
    out = capsys.readouterr().out
    assert "6 usable for embedder" in out and "requires: identity" in out
    assert "bad (skipped when training embedder): {'missing_field': 1}" in out
    assert "fields embedder does not read (samples used in training): {'bad_shape': 1}" in out


# -- checksums ---------------------------------------------------------------------------------------
def flip_inside_member(path: Path, member: str, where: float = 0.6) -> None:
    info = next(i for i in member_offsets(path) if i.name == member)
    data = bytearray(path.read_bytes())
    data[info.offset_data + int(info.size * where)] ^= 0x10
    path.write_bytes(bytes(data))


def test_verify_names_the_shard_and_sample_of_a_flipped_byte(tmp_path, capsys):
    split = write_identity_split(tmp_path, "train", range(3), 10, shard_size=10)
    index = json.loads((split / "index.json").read_text())
    assert index["checksums"] == "crc32"
    assert all(len(shard["crc32"]) == 8 * shard["samples"] for shard in index["shards"])
    assert visage(["data", "inspect", str(split), "--verify"]) == 0
    assert "checksums: 30 samples verified, 0 differ" in capsys.readouterr().out

    shard = split / "shard-000001.tar"
    flip_inside_member(shard, "id00001_004.jpg")  # inside the JPEG's compressed data
    with tarfile.open(shard) as tar:
        flipped = tar.extractfile("id00001_004.jpg").read()
    assert decode_rgb(flipped) is not None  # it still decodes: no reader can tell
    assert inspect_split(split, "embedder") == 0 and "bad (skipped when training embedder): none" in capsys.readouterr().out
    assert visage(["data", "inspect", str(split), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "checksums: 30 samples verified, 1 differ" in out
    lines = [line for line in out.splitlines() if "differs from the checksum" in line]
    assert len(lines) == 1 and str(shard) in lines[0] and "'id00001_004'" in lines[0], out

    flip_inside_member(split / "shard-000002.tar", "id00002_009.json", where=0.0)  # '{' -> 'k': bad JSON too
    assert visage(["data", "inspect", str(split), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "2 differ" in out and "'id00002_009'" in out


def test_an_index_without_checksums_stays_readable_and_verifies_nothing(tmp_path, capsys):
    split = write_identity_split(tmp_path, "train", range(2), 5, shard_size=5)
    index = json.loads((split / "index.json").read_text())
    del index["checksums"]
    for shard in index["shards"]:
        del shard["crc32"]
    (split / "index.json").write_text(json.dumps(index))
    assert read_index(split).num_samples == 10
    assert visage(["data", "inspect", str(split), "--verify"]) == 0
    assert "checksums: none in this index" in capsys.readouterr().out
