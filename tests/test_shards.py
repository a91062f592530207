"""Shards: writing and reading back, the index, and every kind of bad data skipped and counted."""
from __future__ import annotations

import json
import multiprocessing
import random
import time

import numpy as np
import torch
import pytest
import webdataset as wds

from datamodules.bad_samples import BadSampleCounter, counts_to_dict
from datamodules.batchers import PlainBatcher
from datamodules.decoding import decode_sample
from datamodules.epoch_loader import EpochLoader
from datamodules.memory_split import MemorySplit
from datamodules.shard_stream import ShardStream, rank_shards, read_shard
from datamodules.schema import SampleError
from datamodules.shards import ShardIndexError, ShardWriter, encode_image, read_index
from datamodules.tar_reader import tar_records
from tests.conftest import identity_image, write_identity_split


def test_round_trip_keeps_images_and_annotations(tmp_path):
    split = write_identity_split(tmp_path, "train", range(5), 3, shard_size=4, image_ext="png")
    index = read_index(split)
    assert index.num_samples == 15 and index.num_identities == 5
    assert sum(n for _, n in index.shards) == 15
    counter = BadSampleCounter()
    seen = {}
    for url in index.urls:
        for raw in read_shard(url, counter):
            sample = decode_sample(raw, ("identity",), check_all=True)
            seen[sample.key] = sample
            assert set(decode_sample(raw, ("identity",)).annotation) == {"identity"}  # what the task needs
    assert len(seen) == 15 and not counter.counts
    sample = seen["id00003_002"]
    assert sample.annotation["identity"] == 3 and sample.annotation["width"] == 32
    np.testing.assert_array_equal(sample.image, identity_image(3, 2))  # PNG: lossless, RGB order kept


def test_identity_never_straddles_shards(tmp_path):
    split = write_identity_split(tmp_path, "train", range(7), lambda i: 2 + i % 3, shard_size=5)
    owner = {}
    for url in read_index(split).urls:
        for raw in read_shard(url, BadSampleCounter()):
            identity = json.loads(raw["json"])["identity"]
            assert owner.setdefault(identity, url) == url


def test_writer_rejects_keys_with_dots_and_bad_annotations(tmp_path):
    with ShardWriter(tmp_path, "train") as writer:
        with pytest.raises(SampleError, match="dots"):
            writer.write("img.001", identity_image(0, 0), {"identity": 0})
        with pytest.raises(SampleError, match="sample 'a'.*landmarks"):
            writer.write("a", identity_image(0, 0), {"identity": 0, "landmarks": [[0, 0]] * 7})
        with pytest.raises(SampleError, match="identity"):
            writer.write("b", identity_image(0, 0), {"identity": -3})


def test_missing_shard_listed_in_index_is_a_clear_error(tmp_path):
    split = write_identity_split(tmp_path, "train", range(6), 3, shard_size=5)
    (split / "shard-000001.tar").unlink()
    with pytest.raises(ShardIndexError, match="shard-000001.tar"):
        read_index(split)
    with pytest.raises(ShardIndexError, match="no index.json"):
        read_index(tmp_path / "nowhere")


def _write_bad_split(root):
    """A split with one good shard and one sample (or shard) of every kind of bad data."""
    split = root / "train"
    split.mkdir(parents=True)
    good = encode_image(identity_image(1, 0))
    shards = []

    def shard(name, records):
        with wds.TarWriter(str(split / name)) as tar:
            for r in records:
                tar.write(r)
        shards.append({"name": name, "samples": len(records)})

    ok = json.dumps({"identity": 1}).encode()
    shard("shard-000000.tar", [{"__key__": f"good{i}", "jpg": good, "json": ok} for i in range(4)] + [
        {"__key__": "truncated_jpeg", "jpg": good[: len(good) // 3], "json": ok},
        {"__key__": "not_an_image", "jpg": b"hello", "json": ok},
        {"__key__": "empty_image", "jpg": b"", "json": ok},
        {"__key__": "bad_json", "jpg": good, "json": b"{identity: "},
        {"__key__": "no_identity", "jpg": good, "json": json.dumps({"box": [0, 0, 5, 5]}).encode()},
        {"__key__": "wrong_shape", "jpg": good, "json": json.dumps({"identity": [1, 2]}).encode()},
        {"__key__": "unused_field_wrong", "jpg": good, "json": json.dumps({"identity": 1, "box": [1, 2]}).encode()},
        {"__key__": "no_image", "json": ok},
    ])
    shard("shard-000001.tar", [])
    (split / "shard-000001.tar").write_bytes(b"")  # a shard emptied to 0 bytes: the index says it held 5
    shards[-1]["samples"] = 5
    for name in ("shard-000002.tar", "shard-000003.tar"):
        shard(name, [{"__key__": f"cut{i}", "jpg": good, "json": ok} for i in range(6)])
    data = (split / "shard-000002.tar").read_bytes()
    (split / "shard-000002.tar").write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    data = (split / "shard-000003.tar").read_bytes()
    (split / "shard-000003.tar").write_bytes(data[:5 * 1024 * 3])  # cut at a member boundary
    (split / "index.json").write_text(json.dumps({"schema_version": 1, "split": "train", "num_samples": 26,
                                                  "shards": shards}))
    return split


def test_every_kind_of_bad_data_is_skipped_and_counted(tmp_path):
    split = _write_bad_split(tmp_path)
    memory = MemorySplit(read_index(split).shards, lambda s: {"key": s.key}, ("identity",))
    counts = counts_to_dict(memory.bad_samples)
    keys = [memory[i]["key"] for i in range(len(memory))]
    # a task reading identities uses a sample whose unused box is malformed; `data inspect` flags it
    assert keys[:5] == [f"good{i}" for i in range(4)] + ["unused_field_wrong"]
    assert all(k.startswith("cut") for k in keys[5:]) and len(keys) >= 6  # the readable part of the cut tar
    assert counts["undecodable_image"] == 3          # truncated JPEG, not an image, no bytes at all
    assert counts["bad_json"] == 1
    assert counts["missing_field"] == 2              # no identity + no image
    assert counts["bad_shape"] == 1
    # a broken shard counts the samples it lost, as the index tells them
    assert counts["empty_shard"] == 5
    read_of_cut = len(list(tar_records(str(split / "shard-000002.tar"), lambda *problem: None)))
    assert counts["truncated_shard"] == (6 - read_of_cut) + 3   # cut inside a member; cut after 3 samples


def test_training_stream_survives_bad_data_and_reports_it(tmp_path):
    split = _write_bad_split(tmp_path)
    stream = ShardStream(read_index(split).shards, lambda s: {"key": s.key}, PlainBatcher(4), ("identity",), seed=1)
    loader = EpochLoader(stream, batches_per_epoch=6, num_workers=0)
    batches = list(loader)
    assert len(batches) == 6
    assert all(k.startswith(("good", "cut", "unused")) for b in batches for k in b["key"])
    counts = counts_to_dict(loader.bad_samples)
    # the stream resamples shards (and stops inside one when the epoch is done), so a kind is counted
    # once per pass over its sample: every kind the split holds shows, and no other
    assert {k for k, v in counts.items() if v} == {"undecodable_image", "bad_json", "missing_field", "bad_shape",
                                                   "empty_shard", "truncated_shard"}, counts


def test_inspect_command_counts_bad_samples(tmp_path, capsys):
    from trainers.data_inspect import inspect_split
    split = _write_bad_split(tmp_path)
    assert inspect_split(split) == 1
    out = capsys.readouterr().out
    assert "bad_json" in out and "empty_shard" in out and "'bad_shape': 2" in out


def test_rank_shards_are_disjoint_and_cover_everything():
    urls = [f"s{i}" for i in range(7)]
    parts = [rank_shards(urls, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(urls)
    assert all(set(a).isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1:])


def test_stream_is_deterministic_given_seed_and_epoch(identity_dataset):
    urls = read_index(identity_dataset / "train").shards

    def keys(seed, epoch):
        stream = ShardStream(urls, lambda s: {"key": s.key}, PlainBatcher(8), ("identity",), seed=seed,
                             shuffle_buffer=16)
        stream.epoch = epoch
        it = iter(stream)
        return [k for _ in range(5) for k in next(it)["key"]]

    assert keys(0, 0) == keys(0, 0)
    assert keys(0, 0) != keys(1, 0)
    assert keys(0, 0) != keys(0, 1)


def test_epoch_loader_resume_skips_consumed_batches(identity_dataset):
    urls = read_index(identity_dataset / "train").shards

    def loader():
        stream = ShardStream(urls, lambda s: {"key": s.key}, PlainBatcher(4), ("identity",), seed=3)
        return EpochLoader(stream, batches_per_epoch=5, num_workers=0)

    full = [b["key"] for b in loader()]
    resumed = loader()
    resumed.load_state_dict({"epoch": 0, "batches_done": 2})
    assert [b["key"] for b in resumed] == full[2:]
    random.seed(0)


def test_persistent_workers_give_each_epoch_its_own_reproducible_stream(identity_dataset):
    shards = read_index(identity_dataset / "train").shards

    def epochs(workers, count):
        stream = ShardStream(shards, lambda s: {"key": s.key}, PlainBatcher(4), ("identity",), seed=9)
        loader = EpochLoader(stream, batches_per_epoch=3, num_workers=workers)
        return [[k for b in loader for k in b["key"]] for _ in range(count)]

    two = epochs(2, 3)
    assert two[0] != two[1] != two[2]
    assert epochs(2, 3) == two                      # reproducible with persistent workers
    fresh = ShardStream(shards, lambda s: {"key": s.key}, PlainBatcher(4), ("identity",), seed=9)
    later = EpochLoader(fresh, batches_per_epoch=3, num_workers=2)
    later.load_state_dict({"epoch": 2, "batches_done": 0})
    assert [k for b in later for k in b["key"]] == two[2]   # epoch 2 alone equals epoch 2 in sequence


def test_loader_workers_of_a_rank_read_disjoint_shards(identity_dataset):
    """Batch i of an epoch comes from worker i mod 2: the even and the odd batches must come from
    disjoint halves of the rank's shards (and the rank's other half-world shards never appear)."""
    shards = read_index(identity_dataset / "train").shards
    shard_of = {raw["__key__"]: url for url, n in shards for raw in read_shard(url, BadSampleCounter(), n)}
    stream = ShardStream(shards, lambda s: {"key": s.key}, PlainBatcher(4), ("identity",), seed=1)
    stream.rank, stream.world = 1, 2
    batches = [b["key"] for b in EpochLoader(stream, batches_per_epoch=12, num_workers=2)]
    by_worker = [{shard_of[k] for keys in batches[w::2] for k in keys} for w in (0, 1)]
    rank_part = [url for url, _ in shards][1::2]
    assert len(rank_part) >= 4 and by_worker[0] and by_worker[1]
    assert by_worker[0] <= set(rank_part[0::2]) and by_worker[1] <= set(rank_part[1::2])


def test_augmented_stream_is_reproducible(identity_dataset):
    from datamodules.faces import IdentityTransform
    shards = read_index(identity_dataset / "train").shards
    augment = {"hflip": 0.5, "color": 1.0, "affine": 1.0, "blur": 0.5}

    def images():
        stream = ShardStream(shards, IdentityTransform(16, augment), PlainBatcher(4), ("identity",), seed=2)
        return [b["image"] for b in EpochLoader(stream, batches_per_epoch=2, num_workers=0)]

    first, second = images(), images()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


class CountingTransform:
    """Counts its calls in shared memory, visible from forked loader workers too."""

    def __init__(self):
        self.calls = multiprocessing.get_context("fork").Value("q", 0)

    def __call__(self, sample):
        with self.calls.get_lock():
            self.calls.value += 1
        return {"key": sample.key, "label": sample.annotation["identity"]}


def test_an_epoch_decodes_only_the_samples_its_batches_use(identity_dataset):
    from datamodules.batchers import PKBatcher
    shards = read_index(identity_dataset / "train").shards
    transform = CountingTransform()
    for workers in (0, 2):  # the shuffle buffer holds undecoded records; workers stop after their share
        plain = ShardStream(shards, transform, PlainBatcher(4), ("identity",), seed=5, shuffle_buffer=16)
        loader = EpochLoader(plain, batches_per_epoch=5, num_workers=workers)
        for _ in range(2):
            transform.calls.value = 0
            assert sum(len(b["key"]) for b in loader) == 20
            time.sleep(0.5 * workers)  # time for workers to prefetch past the epoch, were they to
            assert transform.calls.value == 20

    pk = ShardStream(shards, transform, PKBatcher(4, 4, pool_size=128), ("identity",), seed=5)
    transform.calls.value = 0
    batches = list(EpochLoader(pk, batches_per_epoch=5, num_workers=0))
    assert len(batches) == 5 and all(len(set(b["label"].tolist())) == 4 for b in batches)
    # a pool refilled to 128 for every batch would leave at least 112 decoded samples unused at the end
    assert transform.calls.value < 5 * 16 + 32, transform.calls.value


def test_face_batches_travel_as_uint8_and_are_normalised_on_the_device(identity_dataset):
    """A worker's batch is uint8 N x 3 x H x W; the datamodule's after-transfer hook turns it into
    (x - 127.5) / 128 of the shard's JPEG, the insightface input, computed here by hand in float64."""
    import cv2
    from datamodules.faces import FaceIdentityDataModule, IdentityTransform
    shards = read_index(identity_dataset / "train").shards
    stream = ShardStream(shards, IdentityTransform(32), PlainBatcher(4), ("identity",), seed=3)
    batch = next(iter(EpochLoader(stream, batches_per_epoch=1, num_workers=1)))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, 32, 32)
    records = {raw["__key__"]: raw for url, n in shards for raw in read_shard(url, BadSampleCounter(), n)}
    expected = []
    for key in batch["key"]:
        bgr = cv2.imdecode(np.frombuffer(records[key]["jpg"], np.uint8), cv2.IMREAD_COLOR)
        assert bgr.shape == (32, 32, 3)  # stored at the training size: the resize keeps every pixel
        expected.append((bgr[:, :, ::-1].transpose(2, 0, 1).astype(np.float64) - 127.5) / 128)
    module = FaceIdentityDataModule({"image_size": 32})
    normalised = module.on_after_batch_transfer(dict(batch), 0)["image"]
    assert normalised.dtype == torch.float32
    # float32 holds (x - 127.5) / 128 exactly for every uint8 x: a wrong scale or offset shows here
    assert np.abs(normalised.numpy() - np.stack(expected)).max() <= 1e-7
    with pytest.raises(TypeError, match="uint8"):
        module.on_after_batch_transfer({"image": normalised}, 0)


def encoded_test_images() -> dict[str, bytes]:
    """The image kinds a shard may hold, encoded by OpenCV (which stores BGR order)."""
    import cv2
    rng = np.random.default_rng(1)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8), (5, 5), 2)
    wide = (smooth.astype(np.uint16) * 257 + rng.integers(0, 257, smooth.shape)).astype(np.uint16)
    alpha = np.dstack([smooth, rng.integers(0, 256, smooth.shape[:2], dtype=np.uint8)])
    return {"colour jpeg": cv2.imencode(".jpg", smooth)[1].tobytes(),
            "grey jpeg": cv2.imencode(".jpg", smooth[:, :, 0])[1].tobytes(),
            "colour png": cv2.imencode(".png", smooth)[1].tobytes(),
            "png with alpha": cv2.imencode(".png", alpha)[1].tobytes(),
            "16-bit png": cv2.imencode(".png", wide)[1].tobytes()}


@pytest.mark.parametrize("direct", [True, False], ids=["decoded as RGB", "decoded as BGR then swapped"])
def test_decode_rgb_gives_the_rgb_pixels_of_every_image_kind(monkeypatch, direct):
    """Both ways decode_rgb can work (OpenCV >= 4.11 decodes straight to RGB; older ones swap after)
    give what imdecode's BGR reversed by hand gives: 8-bit, 3 channels, RGB order."""
    import cv2
    from datamodules import decoding
    if direct and decoding.DECODE_RGB is None:
        pytest.skip("this OpenCV has no IMREAD_COLOR_RGB")
    if not direct:
        monkeypatch.setattr(decoding, "DECODE_RGB", None)
    for kind, data in encoded_test_images().items():
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        image = decoding.decode_rgb(data)
        assert image.dtype == np.uint8 and image.shape == (24, 20, 3), kind
        np.testing.assert_array_equal(image, expected, err_msg=kind)
    for bad in (b"", b"\xff\xd8\xff" + bytes(40), b"not an image"):
        assert decoding.decode_rgb(bad) is None


def test_identity_transform_without_augmentation_resizes_with_inter_area_only_when_needed():
    import cv2
    from datamodules.faces import IdentityTransform
    from datamodules.decoding import DecodedSample
    rng = np.random.default_rng(2)
    for shape in ((40, 40, 3), (24, 30, 3), (30, 24, 3)):  # one side at the size is not enough
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        out = IdentityTransform(24)(DecodedSample("a", image, {"identity": 5}))
        assert out["label"] == 5 and out["key"] == "a"
        np.testing.assert_array_equal(out["image"].numpy().transpose(1, 2, 0),
                                      cv2.resize(image, (24, 24), interpolation=cv2.INTER_AREA))
    at_size = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    same = IdentityTransform(24)(DecodedSample("b", at_size, {"identity": 0}))["image"]
    np.testing.assert_array_equal(same.numpy().transpose(1, 2, 0), at_size)  # what a resize to 24 px gives


class CollateInWorker(torch.utils.data.IterableDataset):
    """Yields, from inside a loader worker, a batch of ``collate`` and whether its images were
    stacked in shared memory."""

    def __iter__(self):
        from datamodules.collate import collate, image_tensor
        batch = collate([{"image": image_tensor(image), "label": i} for i, image in enumerate(hwc_images())])
        yield {"shared": batch["image"].is_shared(), "image": batch["image"], "label": batch["label"]}


def hwc_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(3)]


def test_collate_stacks_images_channels_last_into_shared_memory_inside_a_loader_worker():
    """A batch leaves a worker through shared memory, and stacking it there directly saves a copy.
    Images are stacked in their H x W x C memory: the batch is N x C x H x W, channels-last."""
    from datamodules.collate import batch_as_is, collate, image_tensor
    out = next(iter(torch.utils.data.DataLoader(CollateInWorker(), batch_size=None, num_workers=1,
                                                collate_fn=batch_as_is)))
    expected = torch.from_numpy(np.stack(hwc_images()).transpose(0, 3, 1, 2).copy())  # N x C x H x W by hand
    assert out["shared"] is True and out["label"].tolist() == [0, 1, 2]
    assert out["image"].shape == (3, 3, 5, 7) and torch.equal(out["image"], expected)
    assert out["image"].is_contiguous(memory_format=torch.channels_last)
    in_main = collate([{"image": image_tensor(image)} for image in hwc_images()])["image"]
    assert torch.equal(in_main, expected) and in_main.is_contiguous(memory_format=torch.channels_last)
    assert not in_main.is_shared()  # no shared memory outside workers
    plain = collate([{"x": torch.arange(6.0).view(1, 2, 3)}, {"x": torch.zeros(1, 2, 3)}])["x"]
    assert plain.is_contiguous() and plain[0].tolist() == [[[0, 1, 2], [3, 4, 5]]]  # others: torch's stack
