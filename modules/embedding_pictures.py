"""The pictures of the face embedding tasks (embedder, recognizer), drawn after each validation."""
from __future__ import annotations

import numpy as np
import pytorch_lightning as pl

from modules.embedding_eval import held_out_pairs
from modules.picture_log import log_line_chart, save_pictures

ROC_CHART_POINTS = 100


class EmbeddingPictures(pl.Callback):
    """After each validation: the predictions beside the ground truth (each sample of some randomly
    drawn identities, next to its nearest neighbour among the other held-out images, framed green
    when that is the same person and red when not; other identities each validation), a retrieval
    panel, the ROC curve of every evaluation set with its AUC (a PNG and an interactive dashboard
    chart), and per set the hardest false matches and non-matches; PNG files in ``<run>/pictures``
    and dashboard images.

    The module provides ``last_evaluation`` (held-out identities) and, when it evaluates more sets
    (the recognizer's ``.bin`` files), ``last_pair_sets``; the datamodule's ``evaluation_image(set,
    index)`` gives their images."""

    def __init__(self, samples: int = 16, hardest_pairs: int = 8, seed: int = 0):
        self.samples, self.hardest_pairs, self.seed = samples, hardest_pairs, seed
        self.drawn = 0  # validations drawn so far: with the step, what varies the samples shown

    def on_validation_end(self, trainer, pl_module) -> None:
        evaluation = getattr(pl_module, "last_evaluation", None)
        split = getattr(trainer.datamodule, "val_split", None)
        if not trainer.is_global_zero or evaluation is None or split is None or trainer.sanity_checking:
            return
        from modules import pictures  # noqa: PLC0415 (drawing is only needed here)

        rng = np.random.default_rng([self.seed, trainer.global_step, self.drawn])
        self.drawn += 1
        labels = pl_module.last_eval_labels.cpu().numpy()
        images = {"samples": self._predictions(pictures, evaluation, labels, split, rng),
                  "retrieval": self._retrieval(pictures, evaluation, labels, split)}
        pair_sets = getattr(pl_module, "last_pair_sets", None) or [held_out_pairs(evaluation)]
        roc_images, curves = self._pair_pictures(pictures, pair_sets, trainer.datamodule, split)
        images.update(roc_images)
        save_pictures(trainer, images)
        log_line_chart(trainer, "pictures/roc_curve", curves, "ROC (TAR against log10 FAR)", "log10(false accept rate)")

    def _predictions(self, pictures, evaluation, labels: np.ndarray, split, rng) -> np.ndarray:
        """Pairs of tiles: a sample with its ground truth, then its nearest neighbour and that one's
        identity, framed right (green) or wrong (red)."""
        queries = _one_per_random_identity(labels, max(1, self.samples // 2), rng)
        tiles, annotations, captions, frames = [], [], [], []
        for query in queries:
            shown = split.decoded(int(query))
            tiles.append(shown.image)
            annotations.append(shown.annotation)
            captions.append(f"id {labels[query]}")
            frames.append(None)
            nearest = int(evaluation.neighbours[query, 0])
            if nearest < 0:
                continue
            right = bool(evaluation.neighbour_correct[query, 0])
            tiles.append(split.decoded(nearest).image)
            annotations.append({})
            captions.append(f"nearest: id {labels[nearest]}")
            frames.append(pictures.RIGHT_COLOUR if right else pictures.WRONG_COLOUR)
        return pictures.sample_grid(tiles, annotations, captions=captions, frames=frames)

    def _retrieval(self, pictures, evaluation, labels: np.ndarray, split) -> np.ndarray:
        queries = _one_per_identity(labels, 6)
        neighbours, correct = evaluation.neighbours[queries, :5], evaluation.neighbour_correct[queries, :5]
        return pictures.retrieval_panel([split.decoded(int(q)).image for q in queries], _DecodedImages(split),
                                        neighbours, correct)

    def _pair_pictures(self, pictures, pair_sets, datamodule, split):
        """The ROC curves of all sets on one chart (AUC in the legend) with the same curves on a log
        FAR grid for the dashboard's chart, and a hardest-pairs panel per set."""
        from modules.metrics.verification import auc, roc_curve  # noqa: PLC0415

        def image_of(set_index: int):
            if set_index == 0:
                return lambda i: split.decoded(i).image
            return lambda i: datamodule.evaluation_image(set_index, i)

        curves, chart = {}, {}
        for pair_set in pair_sets:
            fpr, tpr, _ = roc_curve(pair_set.distances, pair_set.is_same)
            name = f"{pair_set.name} (AUC {auc(fpr, tpr):.4f})"
            curves[name] = (fpr, tpr)
            chart[name] = roc_on_log_grid(fpr, tpr, int((~pair_set.is_same.astype(bool)).sum()))
        images = {"roc": pictures.roc_plot(curves)}
        for pair_set in pair_sets:
            images[f"hardest-pairs-{pair_set.name}"] = pictures.hardest_pairs_picture(
                pair_set, image_of(pair_set.set_index), self.hardest_pairs)
        return images, chart


def roc_on_log_grid(fpr: np.ndarray, tpr: np.ndarray, negatives: int, points: int = ROC_CHART_POINTS
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(log10 FAR, TAR) at ``points`` FARs spaced evenly in log from the smallest measurable (one
    false accept) to 1; the TAR at a FAR is the highest the curve reaches without exceeding it.
    A chart of a million-pair curve stays a hundred points."""
    low = np.log10(1.0 / max(negatives, 1))
    grid = np.logspace(low, 0.0, points) if low < 0 else np.ones(1)
    index = np.searchsorted(np.asarray(fpr), grid * (1 + 1e-9), side="right") - 1
    return np.log10(grid), np.asarray(tpr)[np.clip(index, 0, len(tpr) - 1)]


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


def _one_per_random_identity(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """One random sample of each of ``count`` randomly drawn identities (fewer if there are fewer)."""
    identities = rng.permutation(np.unique(labels))[:count]
    return np.array([rng.choice(np.flatnonzero(labels == identity)) for identity in identities], dtype=np.int64)
