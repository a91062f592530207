"""The pictures of the face detector, drawn after each validation: the precision-recall curves of
easy / medium / hard (the Haar baseline's beside them) and held-out scenes with the ground truth, the
detections and the missed faces drawn, as PNG files in ``<run>/pictures`` and as dashboard images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from modules import pictures
from modules.detection.pictures import detection_picture, pr_plot

SCENE_HEIGHT = 360  # each drawn scene is scaled to this height in the panel


def scene_panel(drawn: list[np.ndarray], columns: int = 2) -> np.ndarray:
    """Drawn scenes tiled in rows of ``columns`` at a common height, white between them."""
    import cv2  # noqa: PLC0415

    tiles = [cv2.resize(d, (round(d.shape[1] * SCENE_HEIGHT / d.shape[0]), SCENE_HEIGHT)) for d in drawn]
    width = max(t.shape[1] for t in tiles)
    rows = []
    for start in range(0, len(tiles), columns):
        row = tiles[start:start + columns]
        row = [np.pad(t, ((0, 0), (0, width - t.shape[1] + 4), (0, 0)), constant_values=255) for t in row]
        rows.append(np.concatenate(row + [np.full((SCENE_HEIGHT, (width + 4) * (columns - len(row)), 3), 255,
                                                  np.uint8)], axis=1))
    return np.concatenate([np.pad(r, ((0, 4), (0, 0), (0, 0)), constant_values=255) for r in rows])


class DetectionPictures(pl.Callback):
    """``scenes`` held-out scenes are drawn (the same ones each time, so the pictures show progress)."""

    def __init__(self, scenes: int = 4):
        self.scenes = max(1, min(scenes, 8))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or not pl_module.last_results:
            return
        curves = {name: result for name, result in pl_module.last_results.items()}
        curves.update({f"Haar {name}": result for name, result in pl_module.last_haar_results.items()})
        split = trainer.datamodule.val_split
        drawn = [detection_picture(split.decoded(scene.index).image, scene.gt_boxes, scene.boxes, scene.scores,
                                   scene.gt_setting, score_threshold=0.5)
                 for scene in pl_module.last_scenes[:self.scenes]]
        images = {"precision-recall": pr_plot(curves), "detections": scene_panel(drawn)}
        folder = Path(trainer.default_root_dir) / "pictures"
        folder.mkdir(parents=True, exist_ok=True)
        step = trainer.global_step
        for name, image in images.items():
            pictures.save_png(folder / f"{name}-step{step:06d}.png", image)
            pictures.save_png(folder / f"{name}-latest.png", image)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for name, image in images.items():
                    logger.log_image(key=f"pictures/{name}", images=[image], step=step)
