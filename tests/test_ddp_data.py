"""Data under real 2-process DDP (gloo): disjoint ranks, equal batch counts, P x K batches."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules.faces import FaceIdentityDataModule
from tests.conftest import write_identity_split

pytestmark = pytest.mark.ddp


class Recorder(pl.LightningModule):
    """Trains nothing useful; writes which samples each rank saw, batch by batch."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        with open(Path(self.out_dir) / f"rank{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"keys": batch["key"], "labels": batch["label"].tolist(),
                                "epoch": self.current_epoch}) + "\n")
        return self.layer(batch["image"].mean(dim=(2, 3))).mean()

    def validation_step(self, batch, batch_idx):
        with open(Path(self.out_dir) / f"val{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"indices": batch["index"].tolist(), "epoch": self.current_epoch}) + "\n")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _data(root: Path, sampler: dict, batch_size: int) -> dict:
    return {"root": str(root), "synthetic": None, "train_split": "train", "val_split": "val", "image_size": 16,
            "batch_size": batch_size, "num_workers": 1, "shuffle_buffer": 8, "batches_per_epoch": None,
            "val_batch_size": 4, "sampler": sampler,
            "augment": {"hflip": 0.5, "color": 0.0, "affine": 0.0, "blur": 0.0}}


def _fit(tmp_path: Path, data: dict, epochs: int = 2, validate: bool = False) -> list[list[dict]]:
    out = tmp_path / "records"
    out.mkdir()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, limit_val_batches=None if validate else 0,
                         num_sanity_val_steps=0)
    trainer.fit(Recorder(str(out)), datamodule=FaceIdentityDataModule(data, seed=5))
    return [[json.loads(line) for line in (out / f"rank{r}.jsonl").read_text().splitlines()] for r in range(2)]


def test_ranks_get_disjoint_samples_and_equal_batch_counts_with_uneven_shards(tmp_path):
    root = tmp_path / "data"
    # identities of 1..7 images, shards of about 9 samples: shard sizes are uneven
    write_identity_split(root, "train", range(30), lambda i: 1 + i % 7, size=16, shard_size=9)
    write_identity_split(root, "val", range(100, 105), 3, size=16)  # 15 samples: not divisible by 2 ranks
    sizes = [s["samples"] for s in json.loads((root / "train" / "index.json").read_text())["shards"]]
    assert len(set(sizes)) > 1
    records = _fit(tmp_path, _data(root, {"kind": "plain", "p": 2, "k": 1, "pool_size": 16}, batch_size=6),
                   validate=True)
    counts = [Counter(r["epoch"] for r in rank) for rank in records]
    total = sum(sizes)
    expected_batches = -(-total // (6 * 2))  # ceil(samples / global batch)
    assert counts[0] == counts[1] == {0: expected_batches, 1: expected_batches}
    keys = [{k for r in rank for k in r["keys"]} for rank in records]
    assert keys[0] and keys[1] and keys[0].isdisjoint(keys[1])
    # validation: every rank runs the same number of batches (two of 4 each for 15 samples: the
    # sampler pads with a repeat) and together they cover the whole split
    val = [[json.loads(line) for line in (tmp_path / "records" / f"val{r}.jsonl").read_text().splitlines()]
           for r in range(2)]
    for epoch in (0, 1):
        batches = [[v["indices"] for v in rank if v["epoch"] == epoch] for rank in val]
        assert len(batches[0]) == len(batches[1]) == 2
        assert {i for rank in batches for b in rank for i in b} == set(range(15))


def test_pk_batches_have_p_identities_of_k_images_and_ranks_draw_different_identities(tmp_path):
    root = tmp_path / "data"
    write_identity_split(root, "train", range(40), lambda i: 2 + i % 5, size=16, shard_size=12)
    write_identity_split(root, "val", range(100, 104), 2, size=16)
    records = _fit(tmp_path, _data(root, {"kind": "pk", "p": 4, "k": 3, "pool_size": 24}, batch_size=12), epochs=3)
    identities = []
    for rank in records:
        seen = set()
        for r in rank:
            per_identity = Counter(r["labels"])
            assert len(per_identity) == 4 and set(per_identity.values()) == {3}
            seen.update(per_identity)
        identities.append(seen)
    assert identities[0].isdisjoint(identities[1])
    # identities with only 2 images still appear (sampled with replacement to K = 3)
    few = {i for i in range(40) if 2 + i % 5 < 3}
    assert few & (identities[0] | identities[1])
