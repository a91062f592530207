"""Evaluating face embeddings of held-out identities: verification pairs and retrieval."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from modules.distributed import all_gather_no_grad
from modules.metrics.retrieval import retrieval_metrics
from datamodules.pairs import balanced_pairs
from modules.metrics.verification import pair_distances, verification_report


@dataclass
class EmbeddingEvaluation:
    metrics: dict[str, float]
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]   # idx_a, idx_b, is_same
    distances: np.ndarray
    neighbours: np.ndarray                              # retrieval: gallery indices per query
    neighbour_correct: np.ndarray                       # whether each neighbour shares the identity


@dataclass
class PairSet:
    """The verification pairs of one evaluation set and their distances (for pictures); ``set_index``
    is the set's position among the evaluation loaders."""
    name: str
    set_index: int
    idx_a: np.ndarray
    idx_b: np.ndarray
    is_same: np.ndarray
    distances: np.ndarray


def held_out_pairs(evaluation: EmbeddingEvaluation, name: str = "val") -> PairSet:
    """The pairs an ``evaluate_embeddings`` run drew from held-out identities (evaluation set 0)."""
    idx_a, idx_b, is_same = evaluation.pairs
    return PairSet(name, 0, idx_a, idx_b, is_same, evaluation.distances)


def gather_in_dataset_order(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, targets) of every rank's ``(index, embedding, target)`` evaluation batches, in
    dataset order, without the duplicates a padding DistributedSampler adds (a collective)."""
    index = all_gather_no_grad(torch.cat([p[0] for p in parts]))
    emb = all_gather_no_grad(torch.cat([p[1] for p in parts]).float())
    target = all_gather_no_grad(torch.cat([p[2] for p in parts]))
    order = torch.argsort(index, stable=True)
    index, emb, target = index[order], emb[order], target[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    return emb[first], target[first]


def positive_pairs(labels: np.ndarray) -> int:
    """How many distinct same-identity pairs the labels allow (caps the verification pairs)."""
    counts = np.unique(labels[labels >= 0], return_counts=True)[1]
    return int((counts * (counts - 1) // 2).sum())


def evaluate_embeddings(embeddings: torch.Tensor, labels: torch.Tensor, num_pairs: int, seed: int = 0,
                        fars: tuple[float, ...] = (1e-2, 1e-3)) -> EmbeddingEvaluation:
    """Verification (10-fold accuracy, TAR@FAR) on balanced pairs and leave-one-out retrieval."""
    emb = torch.nn.functional.normalize(embeddings.detach().float(), dim=1).cpu().numpy()
    lab = labels.detach().cpu().numpy()
    idx_a, idx_b, is_same = balanced_pairs(lab, min(num_pairs, 2 * positive_pairs(lab)), seed)
    metrics = verification_report(emb[idx_a], emb[idx_b], is_same, fars=fars)
    retrieval = retrieval_metrics(emb, lab, emb, lab, exclude_self=True)
    neighbours, correct = retrieval["neighbours"], retrieval["neighbour_correct"]
    metrics.update({k: float(v) for k, v in retrieval.items() if k in ("rank1", "rank5", "mAP")})
    return EmbeddingEvaluation(metrics, (idx_a, idx_b, is_same), pair_distances(emb[idx_a], emb[idx_b]), neighbours,
                               correct)


def verification_table(metrics: dict) -> str:
    """One line per evaluated set (``val``, ``val/lfw``, ...): 10-fold accuracy +- std and the TARs."""
    sets = sorted(key[:-len("/accuracy")] for key in metrics if key.endswith("/accuracy"))
    fars = sorted({key.split("@far=")[1] for key in metrics if "/tar@far=" in key}, key=float, reverse=True)
    width = max([len(name) for name in sets] + [3])
    lines = [f"  {'set':<{width}}  accuracy (10-fold)  " + "  ".join(f"TAR@FAR={far}" for far in fars)]
    for name in sets:
        accuracy = f"{metrics[name + '/accuracy']:.4f} +- {metrics.get(name + '/accuracy_std', float('nan')):.4f}"
        tars = "  ".join(f"{metrics.get(f'{name}/tar@far={far}', float('nan')):<{len('TAR@FAR=') + len(far)}.4f}"
                         for far in fars)
        lines.append(f"  {name:<{width}}  {accuracy:<18}  {tars}".rstrip())
    others = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.split("/")[-1] in ("rank1", "rank5", "mAP"))
    return "\n".join(lines + ([f"  {others}"] if others else []))


class EmbeddingEvaluationHooks:
    """The Lightning hooks the face embedding modules (embedder, recognizer) share: embeddings of an
    image plus its mirror (the insightface protocol), reported by the module's ``_evaluate(prefix)``
    after each validation and test, and the task hooks of the run (checkpoint metric, pictures,
    end-of-run summary, predictions). Mixed in before ``pl.LightningModule``."""

    # the checkpoint metric and its direction: the held-out identities' 10-fold verification accuracy
    monitor = ("val/accuracy", "max")

    def configure_callbacks(self) -> list:
        logging = self.config.get("logging", {})
        if not logging.get("pictures", True):
            return []
        from modules.embedding_pictures import EmbeddingPictures  # noqa: PLC0415 (drawing only when asked)

        return [EmbeddingPictures(logging.get("picture_samples", 16), seed=self.config["run"]["seed"])]

    def summary(self, metrics: dict) -> str:
        """What the end of fit / validate / test prints."""
        return f"verification on unseen identities (image + mirror embeddings):\n{verification_table(metrics)}"

    def save_predictions(self, path) -> str:
        """Write what ``predict`` gathered (call on global rank 0 after ``trainer.predict``); returns a
        line that says what was written."""
        split = self.trainer.datamodule.val_split
        split_name = self.trainer.datamodule.data["val_split"]
        predictions = {**self.predictions, "key": [record["__key__"] for record in split.records], "split": split_name}
        torch.save(predictions, path)
        return (f"predictions: {path} ({len(predictions['key'])} embeddings of split {split_name!r}, "
                "in the split's order: embedding, label, key)")

    def embed_with_flip(self, images: torch.Tensor) -> torch.Tensor:
        """Sum of the embeddings of the image and its mirror."""
        return (self(images) + self(torch.flip(images, dims=[3]))).float()

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    def on_predict_epoch_start(self) -> None:
        self._predict_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.predictions: dict[str, torch.Tensor] | None = None

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        embedding = self.embed_with_flip(batch["image"])
        self._predict_parts.append((batch["index"], embedding, batch["label"]))
        return {"index": batch["index"], "embedding": embedding, "label": batch["label"]}

    def on_predict_epoch_end(self) -> None:
        """``predictions``: every rank's embeddings and labels in dataset order, on the CPU."""
        embeddings, labels = gather_in_dataset_order(self._predict_parts)
        self._predict_parts = []
        self.predictions = {"embedding": embeddings.cpu(), "label": labels.cpu()}
