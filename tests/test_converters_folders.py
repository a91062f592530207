"""Folder-per-identity trees to shards: labels from sorted names, classes.json, skipped files counted."""
import json
import tarfile

import numpy as np
import pytest

from datamodules.converters import read_conversion_report
from datamodules.converters.folders import convert_folders, read_classes
from datamodules.shards import encode_image, read_index


def image_bytes(seed, ext="jpg"):
    rng = np.random.default_rng(seed)
    return encode_image(rng.integers(0, 256, size=(20, 18, 3), dtype=np.uint8), ext)


@pytest.fixture
def tree(tmp_path):
    """root/<name>/files; returns (root, {bytes of every good image: folder name})."""
    root = tmp_path / "faces"
    good = {}
    layout = {"alice": ["1.jpg", "2.png", "3.JPEG"], "Zoe Smith": ["a b.jpg"], "bob.jr": ["x.jpg", "y.jpg"],
              "carol": ["nested/deep.png"]}
    seed = 0
    for name, files in layout.items():
        for file in files:
            path = root / name / file
            path.parent.mkdir(parents=True, exist_ok=True)
            data = image_bytes(seed, "png" if file.endswith("png") else "jpg")
            path.write_bytes(data)
            good[data] = name
            seed += 1
    (root / "empty").mkdir()
    (root / "alice" / "broken.jpg").write_bytes(image_bytes(99)[:200])  # truncated JPEG
    (root / "bob.jr" / "notes.jpg").write_text("not an image at all")  # wrong content
    (root / "bob.jr" / "README.txt").write_text("hello")  # not an image file
    (root / "carol" / ".hidden.jpg").write_bytes(b"junk")  # hidden: ignored silently
    (root / "loose.jpg").write_bytes(image_bytes(5))  # a file at the root is no identity
    return root, good


def read_samples(split_dir):
    samples = {}
    for url in read_index(split_dir).urls:
        with tarfile.open(url) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_convert_tree(tree, tmp_path):
    root, good = tree
    with pytest.warns(UserWarning, match="skipped 3"):
        index_path = convert_folders(root, tmp_path / "shards", split="train", max_samples=3)
    split_dir = index_path.parent
    names = sorted(["alice", "Zoe Smith", "bob.jr", "carol", "empty"])  # Python string order
    assert read_classes(split_dir) == {name: label for label, name in enumerate(names)}
    assert json.loads((split_dir / "classes.json").read_text())["Zoe Smith"] == 0

    samples = read_samples(split_dir)
    assert len(samples) == len(good) == 7
    for key, fields in samples.items():
        image = fields.get("jpg", fields.get("png"))
        annotation = json.loads(fields["json"])
        assert image in good  # bytes passed through unchanged
        assert annotation["identity"] == names.index(good[image])
        assert "." not in key and " " not in key
    index = read_index(split_dir)
    assert index.num_samples == 7 and index.num_identities == 4  # "empty" has a label but no sample

    report = read_conversion_report(split_dir)
    assert report["written"] == 7
    assert report["skipped"] == {"undecodable_image": 2, "not_an_image": 1}
    assert any("broken.jpg" in m for m in report["examples"]) and any("notes.jpg" in m for m in report["examples"])


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert_folders(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(image_bytes(0))
    with pytest.raises(ValueError, match="no identity folders"):
        convert_folders(tmp_path / "flat", tmp_path / "out")
