"""The MTCNN cascade face detector (Zhang, Zhang, Li, Qiao 2016, "Joint Face Detection and Alignment
using Multi-task Cascaded Convolutional Networks").

Reads like the paper's method: three nets of growing size (P-Net on 12x12 windows, fully
convolutional over an image pyramid; R-Net on 24x24; O-Net on 48x48 with the 5 landmarks), each
trained on crops of its input size with the multi-task loss (face cross-entropy with online hard
sample mining, box regression, landmark regression; eq. 1-5); R-Net and O-Net on crops mined by the
trained earlier stages. One module trains one stage (``model.stage``); the earlier stages are frozen
and the later ones unused. ``visage fit`` runs the whole cascade (``model.stage=cascade``) as steps:
P-Net, mining, R-Net, mining, O-Net (``steps``).

Evaluation: the cascade up to the trained stage on held-out scenes, WIDER protocol AP per easy /
medium / hard, beside OpenCV's Haar cascade on the same scenes (once per run), with images per second.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from configs.errors import VisageError
from configs.steps import Step
from datamodules.stage_crops import CHUNK_PATTERN, chunks_dir, merge_crop_chunks, write_crop_chunk
from datamodules.shards import INDEX_NAME
from modules.detection.cascade import MTCNNDetector
from modules.detection.cascade_config import CascadeConfig
from modules.detection.evaluation import SceneDetections, gather_in_order, wider_metrics, wider_results
from modules.detection.mining import mined_crops
from modules.detection.wider_files import write_wider_predictions
from modules.guards import stop_if_not_finite
from modules.losses.mtcnn_loss import stage_loss
from modules.nets.mtcnn import build_stage_net
from modules.nets.mtcnn_pretrained import load_facenet_mtcnn
from modules.nets.mtcnn_stages import STAGES
from modules.nets.state_dicts import read_lightning_checkpoint, under_prefix
from modules.optim import configure_optimizers
from modules.step_logging import loggers_write_this_step


class StageChoiceError(VisageError, ValueError):
    exit_code = 2


class FaceDetector(pl.LightningModule):
    monitor = ("val/ap_medium", "max")  # the checkpoint metric: WIDER AP of the medium setting

    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})  # a plain dict: checkpoints must not hold DictConfig
        self.config = config
        model = config["model"]
        if model["stage"] not in STAGES:
            raise StageChoiceError(f"model.stage: a detector module trains one stage ({', '.join(STAGES)}); "
                                   f"{model['stage']!r} runs as steps under `visage fit`")
        self.stage = model["stage"]
        self.pnet, self.rnet, self.onet = (build_stage_net(s) for s in STAGES)
        for name in STAGES:  # the stage trains; the earlier ones are frozen, the later ones unused
            self.net(name).requires_grad_(name == self.stage)
        self.cascade = CascadeConfig(**{**model["cascade"], "thresholds": tuple(model["cascade"]["thresholds"])})
        self._parts: list[SceneDetections] = []
        self._haar: dict[int, SceneDetections] = {}
        self._seconds = {"cascade": 0.0, "haar": 0.0}
        self.last_scenes: list[SceneDetections] = []
        self.last_results: dict = {}
        self.last_haar_results: dict = {}

    def net(self, stage: str) -> torch.nn.Module:
        return {"pnet": self.pnet, "rnet": self.rnet, "onet": self.onet}[stage]

    @classmethod
    def steps(cls, config: dict) -> list[Step]:
        """The whole cascade as steps of one run (``model.stage=cascade``); one stage runs as it is.
        ``{name}`` in a step's overrides is that earlier step's folder, ``{name_ckpt}`` its checkpoint."""
        if config["model"]["stage"] != "cascade":
            return []
        epochs, batch = config["model"]["stage_epochs"], config["model"]["stage_batch_size"]

        def fit(stage: str, *overrides: str) -> Step:
            budget = (f"trainer.max_epochs={epochs[stage]}",) if epochs.get(stage) else ()
            budget += (f"data.batch_size={batch[stage]}",) if batch.get(stage) else ()
            # the Haar baseline is compared with the whole cascade's faces: it runs beside O-Net's validation only
            baseline = () if stage == "onet" else ("model.haar_baseline=false",)
            return Step(stage, "fit", (f"model.stage={stage}", *overrides, *budget, *baseline))

        def mine(stage: str, *weights: str) -> Step:
            return Step(f"{stage}_crops", "predict", (f"model.stage={stage}", "data.predict_on=mining",
                                                      f"data.train_crops={{{stage}_crops}}/crops", *weights))

        pnet, rnet = "model.weights.pnet={pnet_ckpt}", "model.weights.rnet={rnet_ckpt}"
        return [fit("pnet"), mine("rnet", pnet), fit("rnet", pnet, "data.train_crops={rnet_crops}/crops"),
                mine("onet", pnet, rnet), fit("onet", pnet, rnet, "data.train_crops={onet_crops}/crops")]

    # -- nets ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Start weights: facenet-pytorch's nets (``model.pretrained``), then the earlier stages' own
        checkpoints (``model.weights``). A checkpoint being resumed or evaluated overrides them."""
        model = self.config["model"]
        if model["pretrained"]:
            for name, net in load_facenet_mtcnn(model["pretrained"]).nets.items():
                self.net(name).load_state_dict(net.state_dict())
        for name in STAGES[:STAGES.index(self.stage)]:
            if model["weights"].get(name):
                self.net(name).load_state_dict(stage_weights(model["weights"][name], name))

    def detector(self) -> MTCNNDetector:
        return MTCNNDetector(self.pnet, self.rnet, self.onet, self.cascade)

    def detect_through_stage(self, images: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        """The cascade up to the trained stage: P-Net's or R-Net's windows, or O-Net's faces."""
        detector = self.detector()
        if self.stage == "onet":
            return detector.detect(images)
        return detector.propose(images, through=self.stage)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.net(self.stage)(batch["image"])
        weights = tuple(self.config["model"]["loss_weights"][self.stage])
        loss = stage_loss(out.face_logits, out.box_offsets, out.landmarks, batch["kind"], batch["offsets"],
                          batch["landmarks"], weights, self.config["model"]["ohem_ratio"])
        stop_if_not_finite(self, loss.total)
        self.log("train/loss", loss.total, prog_bar=True)
        if loggers_write_this_step(self):  # the parts only for the dashboards: skip Lightning's per-call cost
            self.log_dict({"train/face_loss": loss.face, "train/box_loss": loss.box,
                           "train/landmark_loss": loss.landmark})
        return loss.total

    def configure_optimizers(self):
        return configure_optimizers(self, self.net(self.stage).parameters(), self.config["optim"])

    # -- evaluation ----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        started = time.perf_counter()
        found = self.detect_through_stage(batch["image"])
        self._seconds["cascade"] += time.perf_counter() - started
        self._parts += scene_detections(batch, found)
        if self.config["model"]["haar_baseline"]:
            self._haar_of(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def _haar_of(self, batch: dict) -> None:
        """OpenCV's Haar cascade on the same scenes, once per run (its output never changes)."""
        todo = [i for i, index in enumerate(batch["index"].tolist()) if index not in self._haar]
        if not todo:
            return
        from modules.detection.haar import HaarFaceDetector  # noqa: PLC0415 (the baseline only when asked)

        haar = HaarFaceDetector(min_face=int(self.cascade.min_face))
        started = time.perf_counter()
        found = [haar.detect(batch["image"][i]) for i in todo]
        self._seconds["haar"] += time.perf_counter() - started
        subset = {name: [values[i] for i in todo] for name, values in batch.items() if name != "index"}
        subset["index"] = batch["index"][todo]
        for scene in scene_detections(subset, [{k: torch.as_tensor(v) for k, v in f.items()} for f in found]):
            self._haar[scene.index] = scene

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    def _evaluate(self, prefix: str) -> None:
        scenes, self._parts = gather_in_order(self._parts), []
        if not scenes:
            return
        self.last_scenes, self.last_results = scenes, wider_results(scenes)
        metrics = wider_metrics(self.last_results, prefix)
        seconds = self._reduced_seconds()
        metrics[f"{prefix}/images_per_s"] = len(scenes) / max(seconds["cascade"], 1e-9)
        self._seconds["cascade"] = 0.0
        if self._haar:
            haar = gather_in_order(list(self._haar.values()))
            self.last_haar_results = wider_results(haar)
            metrics.update(wider_metrics(self.last_haar_results, f"{prefix}/haar"))
            if seconds["haar"] > 0:
                metrics[f"{prefix}/haar/images_per_s"] = len(haar) / seconds["haar"]
        self.log_dict(metrics, sync_dist=False)  # computed from gathered detections: equal on every rank

    def _reduced_seconds(self) -> dict[str, float]:
        """Detection time summed over ranks (each rank timed its own scenes)."""
        values = torch.tensor([self._seconds["cascade"], self._seconds["haar"]], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
        self._seconds["haar"] = 0.0  # the Haar baseline runs once; its time is reported once
        return {"cascade": float(values[0]), "haar": float(values[1])}

    def configure_callbacks(self) -> list:
        logging = self.config.get("logging", {})
        if not logging.get("pictures", True):
            return []
        from modules.detector_pictures import DetectionPictures  # noqa: PLC0415 (drawing only when asked)

        return [DetectionPictures(logging.get("picture_samples", 16))]

    def summary(self, metrics: dict) -> str:
        """AP per setting of the cascade and of the Haar baseline, and their speed."""
        stage = {"pnet": "P-Net windows", "rnet": "P-Net + R-Net windows", "onet": "MTCNN cascade"}[self.stage]
        rows = [f"  {'':<10}{stage:>22}{'Haar cascade':>16}"]
        for setting in ("easy", "medium", "hard"):
            ours, haar = metrics.get(f"val/ap_{setting}"), metrics.get(f"val/haar/ap_{setting}")
            rows.append(f"  {'AP ' + setting:<10}{_number(ours):>22}{_number(haar):>16}")
        rows.append(f"  {'images/s':<10}{_number(metrics.get('val/images_per_s'), 1):>22}"
                    f"{_number(metrics.get('val/haar/images_per_s'), 1):>16}")
        return "face detection on held-out scenes (WIDER protocol, IoU >= 0.5):\n" + "\n".join(rows)

    # -- mining and predictions ----------------------------------------------------------------
    def on_predict_epoch_start(self) -> None:
        self._parts = []

    def predict_step(self, batch, batch_idx: int):
        if self.config["data"]["predict_on"] == "mining":
            return self._mine_chunk(int(batch))
        self._parts += scene_detections(batch, self.detect_through_stage(batch["image"]))
        return None

    def _mine_chunk(self, chunk: int) -> None:
        """The training crops of one chunk of scenes for this stage (a chunk already done is skipped)."""
        datamodule = self.trainer.datamodule
        folder = chunks_dir(datamodule.crops_root(), "train") / CHUNK_PATTERN.format(chunk)
        if (folder / INDEX_NAME).is_file():
            return
        crops = self.config["data"]["crops"]
        start, stop = datamodule.mining_chunks()[chunk]
        crops_of = mined_crops(self.detector(), self.stage, crops["max_windows"], self.config["run"]["seed"],
                               **datamodule.crop_settings())
        write_crop_chunk(datamodule.scene_split_dir(), folder, start, stop, crops_of)

    def on_predict_epoch_end(self) -> None:
        if self.config["data"]["predict_on"] == "mining":
            strategy = self.trainer.strategy
            strategy.barrier("visage-mining")  # every rank's chunks are written
            root = self.trainer.datamodule.crops_root()
            if self.trainer.is_global_zero and not (root / "train" / INDEX_NAME).is_file():
                merge_crop_chunks(root, "train", {"stage": self.stage, "mined_with": STAGES[:STAGES.index(self.stage)]})
            strategy.barrier("visage-mining-merged")
            return
        self.last_scenes, self._parts = gather_in_order(self._parts), []

    def save_predictions(self, path) -> str:
        """WIDER FACE prediction files of the evaluated scenes (one text file per image)."""
        if self.config["data"]["predict_on"] == "mining":
            return f"mined crops: {self.trainer.datamodule.crops_root() / 'train'}"
        folder = Path(path).with_suffix("") if Path(path).suffix else Path(path)
        write_wider_predictions(folder, self.trainer.datamodule.data["val_split"], self.last_scenes)
        return f"predictions: {folder} ({len(self.last_scenes)} WIDER FACE prediction files: name, count, x y w h score)"


def stage_weights(path: str, stage: str) -> dict[str, torch.Tensor]:
    """One stage's weights from a detector checkpoint (keys ``<stage>.*``), for another run to start from."""
    weights = under_prefix(read_lightning_checkpoint(path, f"model.weights.{stage}", StageChoiceError)["state_dict"],
                           f"{stage}.")
    if not weights:
        raise StageChoiceError(f"model.weights.{stage}: {path} holds no {stage} weights (keys {stage}.*)")
    return weights


def scene_detections(batch: dict, found: list[dict[str, torch.Tensor]]) -> list[SceneDetections]:
    """A batch of scenes and a detector's output on each, as plain arrays on the CPU."""
    scenes = []
    for i, result in enumerate(found):
        landmarks = result.get("landmarks")
        scenes.append(SceneDetections(int(batch["index"][i]), batch["key"][i], np.asarray(batch["boxes"][i]),
                                      np.asarray(batch["setting"][i]), result["boxes"].cpu().numpy(),
                                      result["scores"].cpu().numpy(),
                                      None if landmarks is None else landmarks.cpu().numpy()))
    return scenes


def _number(value, decimals: int = 3) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"
