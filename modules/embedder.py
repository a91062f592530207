"""The batch-hard triplet face embedder (Hermans, Beyer, Leibe 2017, "In Defense of the Triplet Loss").

Reads like the paper's method: a CNN maps a face to an embedding; P x K batches (P identities,
K images each) feed a triplet loss with online mining (batch hard by default); optionally the
mining runs over the global batch of all DDP ranks. Evaluation embeds held-out identities
(image + horizontal flip) and reports verification and retrieval.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from modules.distributed import all_gather_keep_local_grad, all_gather_no_grad, rank_and_world
from modules.embedding_eval import (EmbeddingEvaluation, EmbeddingEvaluationHooks, evaluate_embeddings,
                                    gather_in_dataset_order)
from modules.exportable import Exportable, face_exportable
from modules.guards import stop_if_not_finite
from modules.losses.triplet import TripletLoss
from modules.nets.backbones import build_backbone
from modules.optim import configure_optimizers
from modules.step_logging import loggers_write_this_step


class TripletEmbedder(EmbeddingEvaluationHooks, pl.LightningModule):
    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})  # a plain dict: checkpoints must not hold DictConfig
        self.config = config
        model = config["model"]
        self.net = build_backbone(model["backbone"], model["embedding_size"], config["data"]["image_size"],
                                  width=model["width"])
        self.loss_fn = TripletLoss(mining=model["mining"], margin=model["margin"], squared=model["squared"])
        self._val_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.last_evaluation: EmbeddingEvaluation | None = None
        self.last_eval_labels: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        emb = self.net(images)
        return F.normalize(emb, dim=1) if self.config["model"]["normalize"] else emb

    def exportable(self) -> Exportable:
        """The embedding network: what ``visage export`` writes and ``finetune.freeze=[net]`` freezes."""
        note = "; L2-normalise them as this run did (model.normalize)" if self.config["model"]["normalize"] else ""
        return face_exportable(self.config, "net", note)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        embeddings, labels = self(batch["image"]), batch["label"]
        scale = 1.0
        if self.config["model"]["cross_rank_mining"]:
            # every rank computes the loss of the global batch; x world size undoes DDP's averaging
            embeddings, labels = all_gather_keep_local_grad(embeddings), all_gather_no_grad(labels)
            scale = float(rank_and_world()[1])
        loss = self.loss_fn(embeddings, labels)
        stop_if_not_finite(self, loss)
        self.log("train/loss", loss, prog_bar=True)
        if loggers_write_this_step(self):  # mining statistics cost a few ms a call: only when written
            for name, value in self.loss_fn.last_stats.as_dict().items():
                self.log(f"train/{name}", float(value))
        return loss * scale

    # -- evaluation ----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._val_parts.append((batch["index"], self.embed_with_flip(batch["image"]), batch["label"]))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def _evaluate(self, prefix: str) -> None:
        if not self._val_parts:
            return
        emb, labels = gather_in_dataset_order(self._val_parts)
        self._val_parts.clear()
        evaluation = evaluate_embeddings(emb, labels, self.config["data"]["val_pairs"], seed=self.config["run"]["seed"])
        self.last_evaluation, self.last_eval_labels = evaluation, labels
        self.log_dict({f"{prefix}/{k}": float(v) for k, v in evaluation.metrics.items()}, sync_dist=False)

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        return configure_optimizers(self, self.parameters(), self.config["optim"])
