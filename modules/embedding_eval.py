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


def evaluate_embeddings(embeddings: torch.Tensor, labels: torch.Tensor, num_pairs: int, seed: int = 0,
                        fars: tuple[float, ...] = (1e-2, 1e-3)) -> EmbeddingEvaluation:
    """Verification (10-fold accuracy, TAR@FAR) on balanced pairs and leave-one-out retrieval."""
    emb = torch.nn.functional.normalize(embeddings.detach().float(), dim=1).cpu().numpy()
    lab = labels.detach().cpu().numpy()
    idx_a, idx_b, is_same = make_verification_pairs(lab, num_pairs, seed)
    metrics = verification_report(emb[idx_a], emb[idx_b], is_same, fars=fars)
    retrieval = retrieval_metrics(emb, lab, emb, lab, exclude_self=True)
    neighbours = retrieval["neighbours"]
    metrics.update({k: float(v) for k, v in retrieval.items() if k in ("rank1", "rank5", "mAP")})
    return EmbeddingEvaluation(metrics, (idx_a, idx_b, is_same), pair_distances(emb[idx_a], emb[idx_b]), neighbours)
