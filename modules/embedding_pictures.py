"""The pictures of the face embedding tasks (embedder, recognizer), drawn after each validation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from modules.embedding_eval import held_out_pairs


class EmbeddingPictures(pl.Callback):
    """After each validation: a sample grid with ground truth, a retrieval panel, the ROC curve of
    every evaluation set, and per set the hardest false matches and non-matches, as PNG files in
    ``<run>/pictures`` (the trainer's root directory) and as dashboard images.

    The module provides ``last_evaluation`` (held-out identities) and, when it evaluates more sets
    (the recognizer's ``.bin`` files), ``last_pair_sets``; the datamodule's ``evaluation_image(set,
    index)`` gives their images."""

    def __init__(self, samples: int = 16, hardest_pairs: int = 8):
        self.samples, self.hardest_pairs = samples, hardest_pairs

    def on_validation_end(self, trainer, pl_module) -> None:
        evaluation = getattr(pl_module, "last_evaluation", None)
        split = getattr(trainer.datamodule, "val_split", None)
        if not trainer.is_global_zero or evaluation is None or split is None or trainer.sanity_checking:
            return
        from modules import pictures  # noqa: PLC0415 (drawing is only needed here)

        step = trainer.global_step
        folder = Path(trainer.default_root_dir) / "pictures"
        images = self._pictures(pictures, evaluation, pl_module.last_eval_labels.cpu().numpy(), split)
        pair_sets = getattr(pl_module, "last_pair_sets", None) or [held_out_pairs(evaluation)]
        images.update(self._pair_pictures(pictures, pair_sets, trainer.datamodule, split))
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in images.items():
            pictures.save_png(folder / f"{name}-step{step:06d}.png", image)
            pictures.save_png(folder / f"{name}-latest.png", image)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for name, image in images.items():  # one key each: the pictures differ in size
                    logger.log_image(key=f"pictures/{name}", images=[image], step=step)

    def _pictures(self, pictures, evaluation, labels: np.ndarray, split) -> dict[str, np.ndarray]:
        shown = [split.decoded(i) for i in range(min(self.samples, len(split)))]
        grid = pictures.sample_grid([s.image for s in shown], [s.annotation for s in shown])
        queries = _one_per_identity(labels, 6)
        neighbours, correct = evaluation.neighbours[queries, :5], evaluation.neighbour_correct[queries, :5]
        panel = pictures.retrieval_panel([split.decoded(int(q)).image for q in queries], _DecodedImages(split),
                                         neighbours, correct)
        return {"samples": grid, "retrieval": panel}

    def _pair_pictures(self, pictures, pair_sets, datamodule, split) -> dict[str, np.ndarray]:
        """The ROC curves of all sets on one chart, and a hardest-pairs panel per set."""
        from modules.metrics.verification import roc_curve  # noqa: PLC0415

        def image_of(set_index: int):
            if set_index == 0:
                return lambda i: split.decoded(i).image
            return lambda i: datamodule.evaluation_image(set_index, i)

        curves = {s.name: roc_curve(s.distances, s.is_same)[:2] for s in pair_sets}
        images = {"roc": pictures.roc_plot(curves)}
        for pair_set in pair_sets:
            images[f"hardest-pairs-{pair_set.name}"] = pictures.hardest_pairs_picture(
                pair_set, image_of(pair_set.set_index), self.hardest_pairs)
        return images


class _DecodedImages:
    """Images of a split decoded on access (the panel draws only the few it shows)."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.split.decoded(int(index)).image


def _one_per_identity(labels: np.ndarray, count: int) -> np.ndarray:
    _, first = np.unique(labels, return_index=True)
    return np.sort(first)[:count]
