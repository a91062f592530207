"""Evaluating face embeddings of held-out identities: verification pairs and retrieval."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from modules.metrics.retrieval import retrieval_metrics
from modules.metrics.verification import make_verification_pairs, pair_distances, verification_report


@dataclass
class EmbeddingEvaluation:
    metrics: dict[str, float]
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]   # idx_a, idx_b, is_same
    distances: np.ndarray
    neighbours: np.ndarray                              # retrieval: gallery indices per query
    neighbour_correct: np.ndarray                       # whether each neighbour shares the identity


def positive_pairs(labels: np.ndarray) -> int:
    """How many distinct same-identity pairs the labels allow (caps the verification pairs)."""
    counts = np.unique(labels[labels >= 0], return_counts=True)[1]
    return int((counts * (counts - 1) // 2).sum())


def evaluate_embeddings(embeddings: torch.Tensor, labels: torch.Tensor, num_pairs: int, seed: int = 0,
                        fars: tuple[float, ...] = (1e-2, 1e-3)) -> EmbeddingEvaluation:
    """Verification (10-fold accuracy, TAR@FAR) on balanced pairs and leave-one-out retrieval."""
    emb = torch.nn.functional.normalize(embeddings.detach().float(), dim=1).cpu().numpy()
    lab = labels.detach().cpu().numpy()
    idx_a, idx_b, is_same = make_verification_pairs(lab, min(num_pairs, 2 * positive_pairs(lab)), seed)
    metrics = verification_report(emb[idx_a], emb[idx_b], is_same, fars=fars)
    retrieval = retrieval_metrics(emb, lab, emb, lab, exclude_self=True)
    neighbours, correct = retrieval["neighbours"], retrieval["neighbour_correct"]
    metrics.update({k: float(v) for k, v in retrieval.items() if k in ("rank1", "rank5", "mAP")})
    return EmbeddingEvaluation(metrics, (idx_a, idx_b, is_same), pair_distances(emb[idx_a], emb[idx_b]), neighbours,
                               correct)
