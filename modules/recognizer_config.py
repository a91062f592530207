"""The typed config of the margin-softmax face recognizer (``task: recognizer``) and its checks.

The sections extend the shared ones of ``configs.schema``: ``model`` is the recognizer's own,
``optim`` adds the large-batch recipe of insightface arcface_torch (lr scaled with the global batch,
warm-up then polynomial decay per step, backbone-only gradient clipping), ``data`` adds the
insightface verification sets (``.bin`` files) evaluated beside the held-out identities.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from configs.schema import ConfigError, ExperimentConfig, OptimConfig, at_least, one_of, rule
from datamodules.face_config import AugmentConfig, FaceDataConfig, SamplerConfig, check_face_data
from modules.embedder_config import check_face_backbone
from modules.losses.kinds import margins

LR_SCALING_RULES = ("none", "linear", "sqrt")


@dataclass
class MarginConfig:
    kind: str = "arcface"               # arcface | cosface | sphereface | combined
    s: float = 64.0                     # logit scale
    # target logit s * (cos(m1 * theta + m2) - m3); null = the kind's default (modules.losses.kinds):
    # arcface m2 = 0.5, cosface m3 = 0.35, combined (1, 0.3, 0.2)
    m1: Optional[float] = None
    m2: Optional[float] = None
    m3: Optional[float] = None
    straight_through: bool = False      # margin in the value only, plain gradient (current insightface)
    # SphereFace (A-softmax): integer m, lambda = max(lambda_min, base * (1 + gamma * it) ** -power)
    sphere_m: int = 4
    lambda_base: float = 1000.0
    lambda_gamma: float = 0.12
    lambda_power: float = 1.0
    lambda_min: float = 5.0


@dataclass
class PartialFCConfig:
    sample_rate: float = 1.0            # fraction of each rank's classes per step (PartialFC 0.1 ... 1)
    init_std: float = 0.01              # class centres start as N(0, init_std^2)


@dataclass
class CenterLossConfig:
    weight: float = 0.0                 # lambda of Wen et al. 2016; 0 = off


@dataclass
class RecognizerModelConfig:
    backbone: str = "iresnet50"         # iresnet_tiny | iresnet18/34/50/100 | mobilefacenet | tiny (the embedder's)
    width: int = 32                     # channels of the first stage (tiny)
    embedding_size: int = 512
    dropout: float = 0.0                # before the embedding layer (iresnet)
    channels_last: bool = False         # backbone weights and inputs NHWC (faster convolutions on recent GPUs)
    num_classes: Optional[int] = None   # null = num_identities of the training split's index
    margin: MarginConfig = field(default_factory=MarginConfig)
    partial_fc: PartialFCConfig = field(default_factory=PartialFCConfig)
    center_loss: CenterLossConfig = field(default_factory=CenterLossConfig)


@dataclass
class RecognizerOptimConfig(OptimConfig):
    # the arcface_torch ms1mv3_r50 recipe: SGD 0.9, lr 0.1 for a global batch of 1024, wd 5e-4
    name: str = "sgd"
    lr: float = 0.1                     # the lr at a global batch of base_batch (see lr_scaling)
    weight_decay: float = 5e-4
    momentum: float = 0.9
    scheduler: str = "warmup_poly"      # warmup_poly | cosine | none, stepped every optimizer step
    power: float = 1.0                  # polynomial decay power
    warmup_epochs: float = 0.0          # > 0 overrides warmup_steps (world-size independent)
    base_batch: int = 1024
    lr_scaling: str = "linear"          # used lr = lr * (global batch / base_batch) (linear) or its sqrt
    no_decay_bn_bias: bool = False      # True: no weight decay on biases and normalisation layers
    backbone_clip_norm: Optional[float] = 5.0  # clip the backbone's gradient norm (not the classifier's)


@dataclass
class RecognitionDataConfig(FaceDataConfig):
    # plain random batches and a horizontal flip, as arcface_torch trains
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(kind="plain"))
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(hflip=0.5, color=0.0, affine=0.0, blur=0.0))
    # insightface verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...) evaluated besides the
    # held-out split; each is reported under its file name: val/lfw/accuracy, ...
    verification: list[str] = field(default_factory=list)


@dataclass
class RecognizerExperiment(ExperimentConfig):
    task: str = "recognizer"
    data: RecognitionDataConfig = field(default_factory=RecognitionDataConfig)
    optim: RecognizerOptimConfig = field(default_factory=RecognizerOptimConfig)
    model: RecognizerModelConfig = field(default_factory=RecognizerModelConfig)

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        super().check(cfg)
        check_face_data(cfg)
        validate_recognizer(cfg)


def validate_recognizer(cfg: DictConfig | dict) -> None:
    """Recognizer-specific checks (choices, ranges, combinations, paths); ConfigError names the key."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    model, optim, data = cfg.model, cfg.optim, cfg.data
    check_face_backbone(cfg)
    at_least(model.embedding_size, "model.embedding_size", 1)
    at_least(model.width, "model.width", 1)
    if not 0.0 <= model.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {model.dropout}")
    at_least(model.num_classes, "model.num_classes", 1)
    margin = model.margin
    rule("model.margin", margins, margin.kind, margin.m1, margin.m2, margin.m3, margin.straight_through,
         margin.sphere_m)
    at_least(margin.s, "model.margin.s", 0.0, inclusive=False)
    if margin.kind == "sphereface":
        at_least(margin.lambda_min, "model.margin.lambda_min", 0.0)
    rate = model.partial_fc.sample_rate
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"model.partial_fc.sample_rate: must be in (0, 1], got {rate}")
    at_least(model.partial_fc.init_std, "model.partial_fc.init_std", 0.0, inclusive=False)
    at_least(model.center_loss.weight, "model.center_loss.weight", 0.0)

    one_of(optim.lr_scaling, "optim.lr_scaling", LR_SCALING_RULES)
    at_least(optim.base_batch, "optim.base_batch", 1)
    at_least(optim.power, "optim.power", 0.0, inclusive=False)
    at_least(optim.warmup_epochs, "optim.warmup_epochs", 0.0)
    at_least(optim.warmup_steps, "optim.warmup_steps", 0)
    at_least(optim.backbone_clip_norm, "optim.backbone_clip_norm", 0.0, inclusive=False)

    if data.sampler.kind != "plain":
        raise ConfigError(f"data.sampler.kind: the recognizer trains on plain random batches, got "
                          f"{data.sampler.kind!r}; set data.sampler.kind=plain")
    for i, path in enumerate(data.verification):
        if not Path(str(path)).expanduser().is_file():
            raise ConfigError(f"data.verification[{i}]: verification set {path} does not exist")
