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

STAGES = ("pnet", "rnet", "onet")
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
    batch_size: int = 256               # crops per batch (per rank)
    val_batch_size: int = 8             # scenes per evaluation batch
    shuffle_buffer: int = 2048


@dataclass
class DetectorModelConfig:
    stage: str = "cascade"              # cascade | pnet | rnet | onet
    # earlier stages' weights for a single-stage run: a Visage checkpoint of each (the cascade fills them)
    weights: dict[str, Optional[str]] = field(default_factory=lambda: dict.fromkeys(STAGES))
    pretrained: Optional[str] = None    # a folder with facenet-pytorch's pnet.pt, rnet.pt, onet.pt
    ohem_ratio: float = 0.7             # online hard sample mining: the share of face losses kept
    # det / box / landmark loss weights (Zhang et al. 2016: 1 / 0.5 / 0.5 for P and R, 1 / 0.5 / 1 for O)
    loss_weights: dict[str, list[float]] = field(default_factory=lambda: {
        "pnet": [1.0, 0.5, 0.5], "rnet": [1.0, 0.5, 0.5], "onet": [1.0, 0.5, 1.0]})
    stage_epochs: dict[str, Optional[int]] = field(default_factory=lambda: dict.fromkeys(STAGES))
    # inference: thresholds per stage, image pyramid, NMS overlaps
    thresholds: list[float] = field(default_factory=lambda: [0.6, 0.7, 0.7])
    min_face: float = 20.0
    factor: float = 0.709
    nms: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.7, 0.7])  # per scale, across scales, R, O (min)
    haar_baseline: bool = True          # evaluate OpenCV's Haar cascade on the same scenes once per run


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
        if not 0.0 < model.ohem_ratio <= 1.0:
            raise ConfigError(f"model.ohem_ratio: must be in (0, 1], got {model.ohem_ratio}")
        for key in ("weights", "loss_weights", "stage_epochs"):
            unknown = sorted(set(model[key]) - set(STAGES))
            if unknown:
                raise ConfigError(f"model.{key}.{unknown[0]}: not a stage; the stages are {', '.join(STAGES)}")
        for stage, weights in model.loss_weights.items():
            if len(weights) != 3 or any(w < 0 for w in weights):
                raise ConfigError(f"model.loss_weights.{stage}: expected three weights >= 0 (det, box, landmark), "
                                  f"got {list(weights)}")
        for stage, epochs in model.stage_epochs.items():
            at_least(epochs, f"model.stage_epochs.{stage}", 1)
        if len(model.thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in model.thresholds):
            raise ConfigError(f"model.thresholds: expected three probabilities (P-Net, R-Net, O-Net), "
                              f"got {list(model.thresholds)}")
        if len(model.nms) != 4 or not all(0.0 < t <= 1.0 for t in model.nms):
            raise ConfigError(f"model.nms: expected four overlaps in (0, 1] (per scale, across scales, R-Net, "
                              f"O-Net), got {list(model.nms)}")
        if not 0.0 < model.factor < 1.0:
            raise ConfigError(f"model.factor: the pyramid's scale step must be in (0, 1), got {model.factor}")
        at_least(model.min_face, "model.min_face", 12.0)
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
