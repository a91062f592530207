"""The typed config of the batch-hard triplet face embedder (``task: embedder``) and its checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig

from configs.errors import ParameterError
from configs.schema import ConfigError, ExperimentConfig, positive, rule
from datamodules.face_config import FaceDataConfig, check_face_data
from modules.losses.kinds import check_triplet
from modules.nets.backbones import FACE_BACKBONES, TINY, check_backbone


def check_face_backbone(cfg: DictConfig, choices: tuple[str, ...] = (TINY, *FACE_BACKBONES)) -> None:
    """``model.backbone`` is one of ``choices`` and takes ``data.image_size`` inputs."""
    try:
        check_backbone(cfg.model.backbone, cfg.data.image_size, choices)
    except ParameterError as err:
        key = "data.image_size" if err.parameter == "image_size" else "model.backbone"
        raise ConfigError(f"{key}: {err}") from None


@dataclass
class EmbedderModelConfig:
    backbone: str = "tiny"              # tiny | one of modules.nets.backbones.FACE_BACKBONES
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
