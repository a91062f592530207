"""`visage data ...` commands on small files written in the official formats."""
from __future__ import annotations

from datamodules.converters.recordio import insightface_layout, write_recordio
from datamodules.converters.verification_bin import read_verification_bin
from datamodules.shards import encode_image, read_index
from tests.conftest import identity_image
from trainers.cli import main as visage


def test_convert_folders_and_write_pairs(tmp_path):
    tree = tmp_path / "tree"
    for person in ("alice", "bob", "carol"):
        (tree / person).mkdir(parents=True)
        for i in range(3):
            (tree / person / f"{i}.jpg").write_bytes(encode_image(identity_image(len(person), i)))
    assert visage(["data", "convert", "folders", str(tree), "--out", str(tmp_path / "ds")]) == 0
    index = read_index(tmp_path / "ds" / "train")
    assert index.num_samples == 9 and index.num_identities == 3
    assert visage(["data", "pairs", str(tmp_path / "ds" / "train"), "--out", str(tmp_path / "v.bin"),
                   "--pairs", "6"]) == 0
    images, is_same = read_verification_bin(tmp_path / "v.bin")
    assert len(images) == 12 and is_same.sum() == 3


def test_convert_recordio(tmp_path):
    samples = [(label, encode_image(identity_image(label, i))) for label in range(4) for i in range(2)]
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    write_recordio(rec, idx, insightface_layout(samples))
    assert visage(["data", "convert", "recordio", str(tmp_path), "--out", str(tmp_path / "ds")]) == 0
    index = read_index(tmp_path / "ds" / "train")
    assert index.num_samples == 8 and index.num_identities == 4


def test_synth_and_inspect(tmp_path, capsys):
    assert visage(["data", "synth", "faces", "--out", str(tmp_path / "faces"), "--identities", "3",
                   "--val-identities", "2", "--per-identity", "2", "--size", "32"]) == 0
    assert read_index(tmp_path / "faces" / "train").num_samples == 6
    assert visage(["data", "inspect", str(tmp_path / "faces" / "val")]) == 0
    assert "bad: none" in capsys.readouterr().out


def test_synthetic_data_is_made_once_and_a_folder_made_for_other_parameters_is_refused(tmp_path, capsys):
    """Same parameters: the folder is reused as it is (not rendered again). Other parameters: an error
    naming the folder and what differs, not the old faces passed off as the new ones."""
    out = tmp_path / "faces"
    args = ["data", "synth", "faces", "--out", str(out), "--identities", "3", "--val-identities", "2",
            "--per-identity", "2", "--size", "32"]
    assert visage(args) == 0
    index = out / "train" / "index.json"
    written = index.stat().st_mtime_ns
    assert visage(args) == 0 and index.stat().st_mtime_ns == written
    capsys.readouterr()
    assert visage(args[:-1] + ["48"]) == 1
    err = capsys.readouterr().err
    assert f"{out} holds synthetic faces made with size=32 (the config asks for 48)" in err
    assert "Traceback" not in err and index.stat().st_mtime_ns == written


def test_two_processes_asking_for_the_same_synthetic_data_render_it_once(tmp_path):
    """Two runs starting together (two ranks, two jobs): one renders under the file lock, the other
    waits for it and reads the same folder; nothing is rendered twice and no half dataset is seen."""
    import multiprocessing
    import time

    import dataclasses

    from datamodules import synthetic
    from datamodules.synthetic_faces import SYNTHETIC_FACES
    renders, real_write = tmp_path / "renders", SYNTHETIC_FACES.write

    def counted_write(root, spec, bar):
        with open(renders, "a") as f:
            f.write("render\n")
        time.sleep(1.0)  # hold the lock long enough for the other process to queue on it
        real_write(root, spec, bar)

    counted = dataclasses.replace(SYNTHETIC_FACES, write=counted_write)
    spec = {"identities": 3, "val_identities": 2, "per_identity": 2, "size": 32, "difficulty": 0.5, "seed": 0,
            "shard_size": 4}
    context = multiprocessing.get_context("fork")  # the children inherit the counting writer
    workers = [context.Process(target=synthetic.ensure_synthetic, args=(counted, tmp_path / "faces", spec),
                               kwargs={"progress": False}) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert renders.read_text() == "render\n"
    assert read_index(tmp_path / "faces" / "train").num_samples == 6
    assert read_index(tmp_path / "faces" / "val").num_samples == 4
    assert not list(tmp_path.glob(".faces.partial"))
