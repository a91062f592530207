"""insightface verification .bin files: Python 2 layout, round trip, errors, pairs from a shard split."""
import pickle
import struct

import numpy as np
import pytest

from datamodules.converters.verification_bin import (VerificationBinError, pair_indices,
                                                     read_verification_bin, verification_pairs_from_split,
                                                     write_verification_bin)
from datamodules.shards import encode_image, write_split


def python2_pickle(images, is_same):
    """The bytes Python 2's cPickle (protocol 2) writes for (list of str, list of bool), by hand."""
    out = bytearray(b"\x80\x02")  # PROTO 2
    out += b"](" # EMPTY_LIST, MARK
    for image in images:
        out += (b"U" + bytes([len(image)]) if len(image) < 256 else b"T" + struct.pack("<I", len(image))) + image
    out += b"e](" # APPENDS, EMPTY_LIST, MARK
    out += b"".join(b"\x88" if value else b"\x89" for value in is_same)  # NEWTRUE / NEWFALSE
    out += b"e\x86."  # APPENDS, TUPLE2, STOP
    return bytes(out)


def fake_images(count, seed=0):
    rng = np.random.default_rng(seed)
    return [encode_image(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)) for _ in range(count)]


def test_reads_python2_layout(tmp_path):
    images = fake_images(4) + [b"\xff\xd8\xff" + b"x" * 10, b"\xff\xd8\xffy"]  # BINSTRING and SHORT_BINSTRING
    assert all(len(image) >= 256 for image in images[:4])
    path = tmp_path / "lfw.bin"
    path.write_bytes(python2_pickle(images, [True, False, True]))
    got_images, is_same = read_verification_bin(path)
    assert got_images == images
    assert is_same.dtype == bool and is_same.tolist() == [True, False, True]


def test_round_trip(tmp_path):
    images = fake_images(8)
    path = write_verification_bin(tmp_path / "sub" / "agedb_30.bin", images, [False, True, True, False])
    got_images, is_same = read_verification_bin(path)
    assert got_images == images and is_same.tolist() == [False, True, True, False]
    with open(path, "rb") as f:  # what insightface's loader does
        raw_images, raw_same = pickle.load(f, encoding="bytes")
    assert raw_images == images and raw_same == [False, True, True, False]


def test_numpy_buffers_are_accepted(tmp_path):
    images = fake_images(2)
    path = tmp_path / "np.bin"
    with open(path, "wb") as f:
        pickle.dump(([np.frombuffer(i, dtype=np.uint8) for i in images], np.array([True])), f)
    got_images, is_same = read_verification_bin(path)
    assert got_images == images and is_same.tolist() == [True]


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("content, message", [
    (b"\x80\x02](U\x03abc", "not a readable verification pickle"),  # truncated
    (b"garbage", "not a readable verification pickle"),
    (pickle.dumps(([b"a", b"b", b"c"], [True])), "3 images for 1 pairs"),
    (pickle.dumps(([b"a", b"b"],)), r"\(images, is_same\) pair"),
    (pickle.dumps((Exploit(), [True])), "refusing to load builtins.print"),
    (pickle.dumps(([b"a", 5], [True])), "image 1 is a int"),
])
def test_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(content)
    with pytest.raises(VerificationBinError, match=message) as info:
        read_verification_bin(path)
    assert str(path) in str(info.value)


def test_writer_refuses_length_mismatch(tmp_path):
    with pytest.raises(ValueError, match="two per pair"):
        write_verification_bin(tmp_path / "x.bin", fake_images(3), [True])


def make_split(root, sizes, seed=0):
    """A shard split with ``sizes[i]`` distinct images of identity i; returns {image bytes: identity}."""
    samples, owner, n = [], {}, 0
    for identity, size in enumerate(sizes):
        for image in fake_images(size, seed=1000 * seed + identity):
            samples.append((f"s{n:05d}", image, {"identity": identity}))
            owner[image] = identity
            n += 1
    write_split(root, "val", samples, max_samples=7)
    return owner


@pytest.mark.parametrize("sizes", [[4] * 8, [5] * 40])  # few candidates (enumerated) / many (rejection)
def test_pairs_from_split_are_balanced_correct_and_unique(tmp_path, sizes):
    owner = make_split(tmp_path, sizes)
    out = tmp_path / "pairs.bin"
    images, is_same = verification_pairs_from_split(tmp_path / "val", num_pairs=20, seed=3, out_path=out)
    assert len(images) == 40 and is_same.tolist() == [True, False] * 10  # alternating: balanced folds
    pairs = set()
    for i, same in enumerate(is_same):
        a, b = images[2 * i], images[2 * i + 1]
        assert a != b
        assert (owner[a] == owner[b]) == same
        pairs.add(frozenset((a, b)))
    assert len(pairs) == 20  # no pair repeated
    read_images, read_same = read_verification_bin(out)
    assert read_images == images and read_same.tolist() == is_same.tolist()
    again, _ = verification_pairs_from_split(tmp_path / "val", num_pairs=20, seed=3)
    other, _ = verification_pairs_from_split(tmp_path / "val", num_pairs=20, seed=4)
    assert again == images and other != images


def test_pair_sampler_errors():
    with pytest.raises(ValueError, match="even"):
        pair_indices([0, 0, 1, 1], 3)
    with pytest.raises(ValueError, match="2 same-identity"):
        pair_indices([0, 0, 1, 1], 6)  # only two same pairs exist


def test_same_pairs_are_uniform_over_pairs_not_identities():
    # identity 0 has 20 images (190 pairs), identities 1..10 have 2 (1 pair each): 95% of pairs
    identities = [0] * 20 + [i for i in range(1, 11) for _ in range(2)]
    big = 0
    for seed in range(300):
        pairs = pair_indices(identities, 4, seed)
        big += sum(identities[a] == 0 for a, _, same in pairs if same)
    assert 0.92 < big / 600 < 0.98


@pytest.mark.parametrize("bad_image", [b"", b"\xff\xd8\xff not a jpeg"])
def test_an_undecodable_image_fails_at_setup_naming_the_file_and_the_pair(tmp_path, bad_image):
    from datamodules.recognition import VerificationBinSet
    images = fake_images(4)
    images[3] = bad_image
    path = write_verification_bin(tmp_path / "lfw.bin", images, [True, False])
    with pytest.raises(VerificationBinError, match=r"lfw.bin: image 3 \(pair 1\) cannot be decoded"):
        VerificationBinSet(path, image_size=16)
