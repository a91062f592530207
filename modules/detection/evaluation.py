"""Evaluating a detector on held-out scenes under DDP: every rank's detections of its scenes, gathered
in dataset order (without the padding a DistributedSampler adds), then the WIDER protocol."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from modules.metrics.wider_face import SETTINGS, SettingResult, evaluate_wider


@dataclass
class SceneDetections:
    """One scene: its ground truth and a detector's output on it."""
    index: int
    key: str
    gt_boxes: np.ndarray     # (N, 4)
    gt_setting: np.ndarray   # (N,) WIDER setting codes
    boxes: np.ndarray        # (K, 4)
    scores: np.ndarray       # (K,)
    landmarks: np.ndarray | None = None  # (K, 5, 2)


def gather_in_order(parts: list[SceneDetections]) -> list[SceneDetections]:
    """Every rank's scenes, sorted by index, each once (a collective under DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        everyone: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, parts)
        parts = [scene for rank_parts in everyone for scene in rank_parts]
    unique = {scene.index: scene for scene in parts}
    return [unique[index] for index in sorted(unique)]


def wider_results(scenes: list[SceneDetections]) -> dict[str, SettingResult]:
    truth = [{"boxes": s.gt_boxes, "face_setting": s.gt_setting} for s in scenes]
    found = [{"boxes": s.boxes, "scores": s.scores} for s in scenes]
    return evaluate_wider(truth, found)


def wider_metrics(results: dict[str, SettingResult], prefix: str) -> dict[str, float]:
    """``{prefix}/ap_easy`` ... and recall at 0.1 and 1 false positive per image per setting."""
    metrics = {}
    for name in SETTINGS:
        result = results[name]
        metrics[f"{prefix}/ap_{name}"] = float(result.ap)
        for fppi, recall in result.recall_at_fppi.items():
            metrics[f"{prefix}/recall_{name}@fppi={fppi:g}"] = float(recall)
    return metrics
