"""ShardDataModule: the LightningDataModule every task's datamodule builds on.

A task datamodule says which annotation fields it needs, how a decoded sample becomes tensors
(for training and for evaluation), how samples are batched and what its synthetic default data is;
this base does the rest: rendering the synthetic default once, index checks, rank-disjoint
resampled training streams with a fixed number of batches per rank, evaluation splits that give
every rank the same number of batches, and uint8 images normalised on the device.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.batchers import PlainBatcher
from datamodules.collate import collate, normalize_images
from datamodules.epoch_loader import EpochLoader
from datamodules.loader_workers import WorkerInit, WorkerLoader
from datamodules.memory_split import MemorySplit
from datamodules.shard_stream import ShardStream
from datamodules.shards import SplitIndex, read_index
from datamodules.synthetic import SyntheticData, ensure_synthetic


class ShardDataModule(pl.LightningDataModule):
    required_fields: tuple[str, ...] = ()       # what every sample must hold (evaluation and training)
    train_fields: tuple[str, ...] | None = None  # what training samples hold, when they differ

    def __init__(self, data: dict, seed: int = 0):
        super().__init__()
        self.data = data
        self.seed = seed
        self.root: Path | None = None
        self.train_index: SplitIndex | None = None
        self.val_split: MemorySplit | None = None
        self.rank, self.world = 0, 1

    # -- what a task provides ------------------------------------------------------------------
    def train_transform(self) -> Callable:
        """A picklable callable: DecodedSample -> dict of tensors (loader workers may be spawned)."""
        raise NotImplementedError

    def eval_transform(self) -> Callable:
        raise NotImplementedError

    def batcher(self) -> Callable:
        return PlainBatcher(self.data["batch_size"])

    def train_split_dir(self) -> Path:
        """The folder of the training split (a task may train on derived samples, e.g. detector crops)."""
        return self.root / self.data["train_split"]

    def synthetic_default(self) -> SyntheticData:
        """The kind of synthetic data ``data.synthetic`` describes for this task (faces, scenes ...)."""
        raise NotImplementedError(f"{type(self).__name__} has no synthetic default data: set data.root")

    # -- data location -------------------------------------------------------------------------
    def dataset_root(self) -> Path:
        if self.data.get("synthetic") is not None:
            return ensure_synthetic(self.synthetic_default(), self.data.get("root"), self.data["synthetic"])
        return Path(os.path.expanduser(self.data["root"]))

    def prepare_data(self) -> None:
        self.dataset_root()  # renders the synthetic default once, on local rank 0

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.rank, self.world = self.trainer.global_rank, self.trainer.world_size
        self.root = self.dataset_root()
        self.train_index = read_index(self.train_split_dir())
        if self.val_split is None:
            val_index = read_index(self.root / self.data["val_split"])
            self.val_split = MemorySplit(val_index.shards, self.eval_transform(), self.required_fields)

    # -- loaders -------------------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        if self.data.get("batches_per_epoch"):
            return int(self.data["batches_per_epoch"])
        return max(1, math.ceil(self.train_index.num_samples / (self.data["batch_size"] * self.world)))

    def _trainer_epoch(self) -> tuple[int, int] | None:
        """The trainer's epoch and the batches it has completed in it (None without a trainer)."""
        if self.trainer is None:
            return None
        return self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.completed

    def train_dataloader(self) -> EpochLoader:
        fields = self.required_fields if self.train_fields is None else self.train_fields
        stream = ShardStream(list(self.train_index.shards), self.train_transform(), self.batcher(), fields,
                             seed=self.seed, shuffle_buffer=self.data["shuffle_buffer"])
        stream.rank, stream.world = self.rank, self.world
        return EpochLoader(stream, self.batches_per_epoch(), self.data["num_workers"], trainer_epoch=self._trainer_epoch)

    def evaluation_loader(self, dataset: Dataset) -> DataLoader:
        """A loader over an evaluation dataset, split across ranks when there are several."""
        sampler = None
        if self.world > 1:  # pads by repeating samples: equal batch counts; duplicates share an index
            sampler = DistributedSampler(dataset, self.world, self.rank, shuffle=False)
        return WorkerLoader(dataset, batch_size=self.data["val_batch_size"], sampler=sampler,
                            num_workers=min(self.data["num_workers"], 2), collate_fn=collate,
                            worker_init_fn=WorkerInit(self.rank, seeded=True))

    def val_dataloader(self) -> DataLoader:
        return self.evaluation_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    # -- on the device -------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """A batch's uint8 ``image`` becomes the network's float input once it is on the device, in
        every loop (fit, validate, test, predict): modules see float images only."""
        image = batch.get("image") if isinstance(batch, dict) else None
        if isinstance(image, torch.Tensor):  # a float image here would be normalised twice: an error
            batch["image"] = normalize_images(image)
        return batch  # images of different sizes travel as a list of arrays, left to the module
