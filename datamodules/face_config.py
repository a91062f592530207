"""The data section of the face identity tasks (embedder, recognizer): synthetic faces, the batch
sampler, augmentation and verification pairs. Torch-free: config checks import it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig

from configs.errors import ParameterError
from configs.schema import ConfigError, ShardDataConfig, at_least, one_of, positive, rule

SAMPLER_KINDS = ("pk", "plain")


@dataclass
class SyntheticFacesConfig:
    identities: int = 1000              # training identities
    val_identities: int = 200           # held-out identities for evaluation
    per_identity: int = 10
    size: int = 112
    difficulty: float = 0.5
    seed: int = 0
    shard_size: int = 1000


@dataclass
class SamplerConfig:
    kind: str = "pk"                    # pk | plain
    p: int = 16                         # identities per batch (pk)
    k: int = 4                          # images per identity (pk)
    pool_size: int = 1024               # samples waiting, grouped by identity (pk)


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    color: float = 0.8                  # probability of brightness/contrast/hue jitter
    affine: float = 0.5                 # probability of a small shift/scale/rotation
    blur: float = 0.1


@dataclass
class FaceDataConfig(ShardDataConfig):
    synthetic: Optional[SyntheticFacesConfig] = None
    val_pairs: int = 3000               # verification pairs drawn from the evaluation split
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def check_pk(p: int, k: int, batch_size: int | None = None) -> None:
    """P x K sampling (Hermans et al. 2017): at least 2 identities of at least 1 image per batch,
    and a batch of exactly P x K when a batch size is given."""
    if p < 2:
        raise ParameterError("p", f"P x K sampling needs at least 2 identities per batch, got {p}")
    if k < 1:
        raise ParameterError("k", f"P x K sampling needs at least 1 image per identity, got {k}")
    if batch_size is not None and p * k != batch_size:
        raise ValueError(f"{batch_size} is not P x K = data.sampler.p ({p}) x data.sampler.k ({k})")


def check_face_data(cfg: DictConfig) -> None:
    data = cfg.data
    one_of(data.sampler.kind, "data.sampler.kind", SAMPLER_KINDS)
    positive(cfg, "data.sampler.pool_size")
    if data.sampler.kind == "pk":
        rule("data.sampler", check_pk, data.sampler.p, data.sampler.k)
        rule("data.batch_size", check_pk, data.sampler.p, data.sampler.k, data.batch_size)
    at_least(data.val_pairs, "data.val_pairs", 0)
    if data.synthetic is not None:
        positive(cfg, "data.synthetic.identities", "data.synthetic.val_identities", "data.synthetic.per_identity",
                 "data.synthetic.size", "data.synthetic.shard_size")
        if not 0.0 <= data.synthetic.difficulty <= 1.0:
            raise ConfigError(f"data.synthetic.difficulty: must be in [0, 1], got {data.synthetic.difficulty}")
