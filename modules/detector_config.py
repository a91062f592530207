"""The typed config of the MTCNN cascade face detector (``task: detector``) and its checks.

``model.stage`` chooses what a run trains: ``cascade`` (P-Net, then R-Net on crops mined with the
trained P-Net, then O-Net on crops mined with both: one run, resumable in any step) or one stage
alone (``pnet``, ``rnet``, ``onet``: the earlier stages come from ``model.weights`` or
``model.pretrained``). Torch-free: config checks import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig

from configs.schema import ConfigError, ExperimentConfig, ShardDataConfig, at_least, one_of, positive
from datamodules.codecs.crop_kinds import KIND_NAMES
from modules.detection.cascade_config import CascadeConfig
from modules.nets.mtcnn_stages import INPUT_SIZE, LOSS_WEIGHTS, OHEM_RATIO, STAGES

STAGE_CHOICES = ("cascade", *STAGES)


@dataclass
class SyntheticScenesConfig:
    """Scenes of the synthetic engine (datamodules/synth/scenes.py, SceneSpec: pairs are low, high)."""
    train_scenes: int = 600
    val_scenes: int = 120
    width: list[int] = field(default_factory=lambda: [320, 480])
    height: list[int] = field(default_factory=lambda: [240, 360])
    max_faces: int = 8
    face_height: list[float] = field(default_factory=lambda: [12.0, 160.0])
    empty_rate: float = 0.05
    distractors: int = 6
    clutter: float = 0.7
    occlusion_rate: float = 0.25
    blur_rate: float = 0.3
    seed: int = 0
    shard_size: int = 200


@dataclass
class CropConfig:
    """Training crops cut from scenes (P-Net) or from the earlier stages' windows (R-Net, O-Net)."""
    per_face: int = 4                   # positive crops per usable face (the other kinds follow the mix)
    mix: dict[str, int] = field(default_factory=lambda: {"negative": 3, "positive": 1, "part": 1, "landmark": 2})
    chunk_scenes: int = 64              # scenes per resumable chunk
    max_windows: int = 48               # mined windows kept per scene (highest scores first)


@dataclass
class DetectionDataConfig(ShardDataConfig):
    synthetic: Optional[SyntheticScenesConfig] = None
    crops: CropConfig = field(default_factory=CropConfig)
    train_crops: Optional[str] = None   # a crop split folder for the stage (default: made from the scenes)
    predict_on: str = "val"             # val (WIDER prediction files) | mining (the train scenes, in chunks)
    batch_size: int = 256               # crops per batch (per rank)
    val_batch_size: int = 8             # scenes per evaluation batch
    shuffle_buffer: int = 2048


@dataclass
class DetectorModelConfig:
    stage: str = "cascade"              # cascade | pnet | rnet | onet
    # earlier stages' weights for a single-stage run: a Visage checkpoint of each (the cascade fills them)
    weights: dict[str, Optional[str]] = field(default_factory=lambda: dict.fromkeys(STAGES))
    pretrained: Optional[str] = None    # a folder with facenet-pytorch's pnet.pt, rnet.pt, onet.pt
    ohem_ratio: float = OHEM_RATIO      # online hard sample mining: the share of face losses kept
    loss_weights: dict[str, list[float]] = field(default_factory=lambda: {s: list(w) for s, w in LOSS_WEIGHTS.items()})
    stage_epochs: dict[str, Optional[int]] = field(default_factory=lambda: dict.fromkeys(STAGES))
    # crops per batch and process of each stage in the cascade (null: data.batch_size). R-Net and O-Net
    # learn per step more than per sample: O-Net alone, 3 epochs of the same crops, AP medium 0.737 at
    # batch 128, 0.851 at 64, 0.887 at 32, in about the same time on CPU; the whole cascade reached the
    # same AP with O-Net at 16 for 2 epochs as at 32 for 3, in two thirds of O-Net's time
    stage_batch_size: dict[str, Optional[int]] = field(default_factory=lambda: dict.fromkeys(STAGES))
    cascade: CascadeConfig = field(default_factory=CascadeConfig)  # inference: thresholds, pyramid, NMS
    haar_baseline: bool = True          # OpenCV's Haar cascade on the same scenes, once per run (the cascade: beside O-Net)


@dataclass
class DetectorExperiment(ExperimentConfig):
    task: str = "detector"
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    model: DetectorModelConfig = field(default_factory=DetectorModelConfig)

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        super().check(cfg)
        model, data = cfg.model, cfg.data
        one_of(model.stage, "model.stage", STAGE_CHOICES)
        one_of(data.predict_on, "data.predict_on", ("val", "mining"))
        if model.stage in STAGES:  # a stage trains on crops of its own input size
            data.image_size = INPUT_SIZE[model.stage]
        if not 0.0 < model.ohem_ratio <= 1.0:
            raise ConfigError(f"model.ohem_ratio: must be in (0, 1], got {model.ohem_ratio}")
        for key in ("weights", "loss_weights", "stage_epochs", "stage_batch_size"):
            unknown = sorted(set(model[key]) - set(STAGES))
            if unknown:
                raise ConfigError(f"model.{key}.{unknown[0]}: not a stage; the stages are {', '.join(STAGES)}")
        for stage, weights in model.loss_weights.items():
            if len(weights) != 3 or any(w < 0 for w in weights):
                raise ConfigError(f"model.loss_weights.{stage}: expected three weights >= 0 (det, box, landmark), "
                                  f"got {list(weights)}")
        for key in ("stage_epochs", "stage_batch_size"):
            for stage, count in model[key].items():
                at_least(count, f"model.{key}.{stage}", 1)
        cascade = model.cascade
        if not all(0.0 <= t <= 1.0 for t in cascade.thresholds):
            raise ConfigError(f"model.cascade.thresholds: expected three probabilities (P-Net, R-Net, O-Net), "
                              f"got {list(cascade.thresholds)}")
        for key in ("nms_per_scale", "nms_across_scales", "nms_rnet", "nms_onet"):
            if not 0.0 < cascade[key] <= 1.0:
                raise ConfigError(f"model.cascade.{key}: an overlap in (0, 1], got {cascade[key]}")
        if not 0.0 < cascade.factor < 1.0:
            raise ConfigError(f"model.cascade.factor: the pyramid's scale step must be in (0, 1), got {cascade.factor}")
        at_least(cascade.min_face, "model.cascade.min_face", 12.0)
        if model.stage in ("rnet", "onet") and model.pretrained is None:
            needed = STAGES[:STAGES.index(model.stage)]
            missing = [s for s in needed if not model.weights[s]]
            if missing:
                raise ConfigError(f"model.weights.{missing[0]}: training {model.stage} alone needs the earlier "
                                  f"stages' weights ({', '.join(needed)}): give their checkpoints, model.pretrained, "
                                  "or train the whole cascade (model.stage=cascade)")
        mix = data.crops.mix
        unknown = sorted(set(mix) - set(KIND_NAMES))
        if unknown:
            raise ConfigError(f"data.crops.mix.{unknown[0]}: not a crop kind; the kinds are {', '.join(KIND_NAMES)}")
        if any(v < 0 for v in mix.values()) or not sum(mix.values()):
            raise ConfigError(f"data.crops.mix: counts must be >= 0 and not all 0, got {dict(mix)}")
        positive(cfg, "data.crops.per_face", "data.crops.chunk_scenes", "data.crops.max_windows")
        if data.synthetic is not None:
            positive(cfg, "data.synthetic.train_scenes", "data.synthetic.val_scenes", "data.synthetic.max_faces",
                     "data.synthetic.shard_size")
            for key in ("width", "height", "face_height"):
                low_high = list(data.synthetic[key])
                if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
                    raise ConfigError(f"data.synthetic.{key}: expected [low, high] with 0 < low <= high, got {low_high}")
