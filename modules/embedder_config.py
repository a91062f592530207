"""The typed config of the batch-hard triplet face embedder (``task: embedder``) and its checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig

from configs.errors import ParameterError
from configs.schema import ConfigError, ExperimentConfig, positive, rule
from datamodules.face_config import FaceDataConfig, check_face_data
from modules.losses.kinds import check_triplet
from modules.nets.backbones import BACKBONES, check_backbone, shape_parameters


def _backbone_key(parameter: str) -> str:
    """The config key of a ``build_backbone`` parameter: the image size is data's, the rest the model's."""
    return "data.image_size" if parameter == "image_size" else f"model.{parameter}"


def check_face_backbone(cfg: DictConfig, choices: tuple[str, ...] = BACKBONES) -> None:
    """``model.backbone`` is one of ``choices`` and takes ``data.image_size`` inputs."""
    try:
        check_backbone(cfg.model.backbone, cfg.data.image_size, choices)
    except ParameterError as err:
        raise ConfigError(f"{_backbone_key(err.parameter)}: {err}") from None


def face_backbone_overrides(config: dict) -> tuple[str, ...]:
    """The ``key=value`` overrides that build a face backbone whose weights have this config's shapes
    (``model.backbone``, ``model.embedding_size``, ``data.image_size``, TinyNet's ``model.width``)."""
    model = config["model"]
    overrides = [f"model.backbone={model['backbone']}"]
    for parameter in shape_parameters(model["backbone"]):
        section, _, key = _backbone_key(parameter).partition(".")
        overrides.append(f"{section}.{key}={config[section][key]}")
    return tuple(overrides)


@dataclass
class EmbedderModelConfig:
    backbone: str = "tiny"              # one of modules.nets.backbones.BACKBONES
    width: int = 32                     # channels of the first stage (tiny)
    embedding_size: int = 128
    normalize: bool = False             # L2-normalise embeddings (FaceNet); batch hard uses raw ones
    mining: str = "batch_hard"          # batch_hard | batch_all | semi_hard
    margin: Optional[float] = None      # None = soft margin (softplus)
    squared: bool = False
    cross_rank_mining: bool = False     # mine over the global batch (all-gather)


@dataclass
class EmbedderExperiment(ExperimentConfig):
    task: str = "embedder"
    data: FaceDataConfig = field(default_factory=FaceDataConfig)
    model: EmbedderModelConfig = field(default_factory=EmbedderModelConfig)

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        super().check(cfg)
        check_face_data(cfg)
        model = cfg.model
        rule("model", check_triplet, model.mining, model.margin)
        positive(cfg, "model.width", "model.embedding_size")
        check_face_backbone(cfg)
        if model.cross_rank_mining and cfg.data.sampler.kind != "pk":
            raise ConfigError("model.cross_rank_mining: needs data.sampler.kind=pk")
