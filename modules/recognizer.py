"""The margin-softmax face recognizer (ArcFace / CosFace / SphereFace / combined margins).

Reads like insightface arcface_torch, the method of Deng et al. (ArcFace, CVPR 2019):

- a CNN backbone (iresnet or MobileFaceNet) maps an aligned face to a D-dimensional embedding;
- a classifier over all training identities scores cos(theta_j) between the normalised embedding and
  each normalised class centre W_j; the target logit gets a margin, s * (cos(m1 theta + m2) - m3)
  (eq. 4), the others s * cos(theta_j); softmax cross-entropy (optionally + lambda * center loss);
- the classifier is PartialFC (An et al. 2021): sharded by class over the DDP ranks, each rank scoring
  the gathered global batch against its classes (optionally a sample of them); its weights are kept
  out of DDP's broadcast and gradient averaging, and logits and loss are fp32 under mixed precision.

Recipe: SGD with momentum, lr scaled with the global batch (``optim.lr`` is the lr at a global batch
of ``optim.base_batch``; linear rule of Goyal et al. 2017, or sqrt), linear warm-up and polynomial
decay per step, gradient norm clipping of the backbone only (5 in arcface_torch).

Evaluation (insightface protocol): embeddings of the image and its mirror are summed; 10-fold
accuracy +- std and TAR@FAR 1e-3 / 1e-4 on the held-out identities (``val/...``) and on each
verification .bin set (``val/<name>/...``).

Checkpoints reload at any world size: the classifier's state_dict holds the full C x D matrix (see
partial_fc.py), its optimizer state (momentum) is gathered into the checkpoint here and resharded on
load, and a run resumed with another global batch rescales its lr and continues its schedule by
samples seen.
"""
from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch

from modules.embedding_eval import (EmbeddingEvaluation, EmbeddingEvaluationHooks, PairSet,
                                    evaluate_embeddings, gather_in_dataset_order, held_out_pairs)
from modules.exportable import Exportable, face_exportable
from modules.guards import stop_if_not_finite
from modules.losses.center_loss import CenterLoss
from modules.losses.margins import MarginHead
from modules.losses.partial_fc import LabelError, PartialFC, exclude_partial_fc_from_ddp
from modules.metrics.verification import pair_distances, verification_report
from modules.nets.backbones import build_backbone
from modules.optim import build_optimizer
from modules.schedules import SampleSchedule, param_groups, scaled_lr

FARS = (1e-3, 1e-4)
CLASSIFIER_GROUP = "classifier"


def build_margin_head(margin: dict) -> MarginHead:
    if margin["kind"] == "sphereface":
        return MarginHead("sphereface", s=margin["s"], sphere_m=margin["sphere_m"],
                          lambda_base=margin["lambda_base"], lambda_gamma=margin["lambda_gamma"],
                          lambda_power=margin["lambda_power"], lambda_min=margin["lambda_min"])
    return MarginHead(margin["kind"], s=margin["s"], m1=margin["m1"], m2=margin["m2"], m3=margin["m3"],
                      straight_through=margin["straight_through"])


class FaceRecognizer(EmbeddingEvaluationHooks, pl.LightningModule):
    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})  # a plain dict: checkpoints must not hold DictConfig
        self.config = config
        model = config["model"]
        self.backbone = build_backbone(model["backbone"], model["embedding_size"], config["data"]["image_size"],
                                       dropout=model["dropout"], width=model["width"])
        if model["channels_last"]:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        # built in configure_model: PartialFC shards by the world size, known once DDP has started
        self.partial_fc: PartialFC | None = None
        self.center_loss: CenterLoss | None = None
        self._val_parts: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self.last_evaluation: EmbeddingEvaluation | None = None
        self.last_eval_labels: torch.Tensor | None = None
        self.last_pair_sets: list[PairSet] = []
        self._resumed_global_batch: int | None = None

    # -- nets ----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.partial_fc is None:
            self.build_classifier(self._num_classes())

    def _num_classes(self) -> int:
        if self.config["model"]["num_classes"]:
            return int(self.config["model"]["num_classes"])
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "num_classes"):
            raise ValueError("model.num_classes is not set and there is no datamodule to count the training "
                             "identities: set model.num_classes")
        return int(datamodule.num_classes)

    def build_classifier(self, num_classes: int) -> None:
        """The sharded margin classifier (and center loss) for ``num_classes`` identities."""
        model = self.config["model"]
        self.partial_fc = PartialFC(model["embedding_size"], num_classes, build_margin_head(model["margin"]),
                                    sample_rate=model["partial_fc"]["sample_rate"], compensate_ddp_average=True,
                                    init_std=model["partial_fc"]["init_std"], seed=self.config["run"]["seed"])
        if model["center_loss"]["weight"] > 0:
            self.center_loss = CenterLoss(num_classes, model["embedding_size"])
        exclude_partial_fc_from_ddp(self)  # Lightning's DDP wraps this module: it honours the list

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the loaders' batches are channels-last (datamodules.collate.stack): the backbone gets the
        # layout its config names, a no-op for channels_last and one copy on the device otherwise
        layout = torch.channels_last if self.config["model"]["channels_last"] else torch.contiguous_format
        return self.backbone(images.contiguous(memory_format=layout))

    def exportable(self) -> Exportable:
        """The backbone: what ``visage export`` writes and ``finetune.freeze=[backbone]`` freezes."""
        return face_exportable(self.config, "backbone")

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        embeddings = self(images)
        try:
            margin_loss = self.partial_fc(embeddings, labels)  # the global batch's mean, fp32
        except LabelError as err:
            raise LabelError(f"{err}{_name_samples(err.positions, batch.get('key'))}", err.positions) from None
        loss = margin_loss
        if self.center_loss is not None:  # Wen et al. 2016: L = L_softmax + lambda * L_center
            with torch.autocast(device_type=embeddings.device.type, enabled=False):
                center = self.center_loss(embeddings.float(), labels.long())
            loss = margin_loss + self.config["model"]["center_loss"]["weight"] * center
            self.log("train/center_loss", center)
            self.log("train/margin_loss", margin_loss)
        stop_if_not_finite(self, loss)
        self.log("train/loss", loss, prog_bar=True)
        if self.partial_fc.margin_head.kind == "sphereface":
            self.log("train/sphereface_lambda", self.partial_fc.margin_head.sphereface_lambda())
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        max_norm = self.config["optim"]["backbone_clip_norm"]
        if max_norm:  # the backbone only, as arcface_torch: the classifier's gradient is left alone
            grads = [p for p in self.backbone.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(grads, max_norm)
            self.log("train/backbone_grad_norm", norm)
        if self._trainer is not None:  # trainer.gradient_clip_val, if set, clips every parameter
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    @torch.no_grad()
    def class_logits(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, C) margin logits of every class, gathered from all shards (a collective; every rank must
        pass the same images and labels). Evaluation mode: no class sampling, no SphereFace step."""
        was_training = self.training
        self.eval()
        try:
            shard = self.partial_fc.shard_logits(self(images), labels)
            local = shard.logits[:images.shape[0]]  # every rank passed the same batch
            return self.partial_fc.gather_full(local.t().contiguous()).t()
        finally:
            self.train(was_training)

    # -- evaluation ----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        target = batch["label"] if "label" in batch else batch["is_same"]
        self._val_parts.setdefault(dataloader_idx, []).append(
            (batch["index"], self.embed_with_flip(batch["image"]), target))

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def _evaluate(self, prefix: str) -> None:
        metrics, pair_sets = {}, []
        names = self.trainer.datamodule.evaluation_names()  # the datamodule owns the sets and their names
        for set_index in sorted(self._val_parts):  # the same sets, in the same order, on every rank
            emb, target = gather_in_dataset_order(self._val_parts[set_index])
            name = names[set_index]
            if set_index == 0:  # held-out identities: balanced pairs drawn from their labels
                evaluation = evaluate_embeddings(emb, target, self.config["data"]["val_pairs"],
                                                 seed=self.config["run"]["seed"], fars=FARS)
                self.last_evaluation, self.last_eval_labels = evaluation, target
                report, pair_set, key = evaluation.metrics, held_out_pairs(evaluation, name), prefix
            else:  # a .bin set: image 2i and 2i + 1 form pair i
                emb_np = emb.cpu().numpy()
                idx_a = np.arange(0, len(emb_np) - 1, 2)
                idx_b, same = idx_a + 1, target.cpu().numpy()[idx_a].astype(bool)
                report = verification_report(emb_np[idx_a], emb_np[idx_b], same, fars=FARS)
                pair_set = PairSet(name, set_index, idx_a, idx_b, same, pair_distances(emb_np[idx_a], emb_np[idx_b]))
                key = f"{prefix}/{name}"
            metrics.update({f"{key}/{k}": float(v) for k, v in report.items()})
            pair_sets.append(pair_set)
        self._val_parts.clear()
        self.last_pair_sets = pair_sets
        if metrics:
            self.log_dict(metrics, sync_dist=False)  # computed from gathered embeddings: equal on every rank

    # -- optimisation --------------------------------------------------------------------------
    def global_batch(self) -> int:
        trainer = self.trainer
        return self.config["data"]["batch_size"] * trainer.world_size * trainer.accumulate_grad_batches

    def learning_rate(self, global_batch: int) -> float:
        """optim.lr is tuned for a global batch of optim.base_batch; scaled by the linear (Goyal et al.)
        or square-root rule for this run's global batch (per-rank batch x ranks x accumulation)."""
        optim = self.config["optim"]
        if optim["lr_scaling"] == "none":
            return float(optim["lr"])
        return scaled_lr(optim["lr"], optim["base_batch"], global_batch, optim["lr_scaling"])

    def configure_optimizers(self):
        optim = self.config["optim"]
        groups = param_groups(self.backbone, optim["weight_decay"], optim["no_decay_bn_bias"])
        groups.append({"name": CLASSIFIER_GROUP, "params": [self.partial_fc.weight], "weight_decay": optim["weight_decay"]})
        if self.center_loss is not None:
            groups.append({"name": "center_loss", "params": list(self.center_loss.parameters()), "weight_decay": 0.0})
        global_batch = self.global_batch()
        optimizer = build_optimizer(groups, {**optim, "lr": self.learning_rate(global_batch)})
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = optim["warmup_steps"]
        if optim["warmup_epochs"]:
            steps_per_epoch = max(1, self.trainer.num_training_batches // self.trainer.accumulate_grad_batches)
            warmup = round(optim["warmup_epochs"] * steps_per_epoch)
        schedule = SampleSchedule(optim["scheduler"], total, warmup, optim["power"], global_batch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints across world sizes --------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Lightning writes rank 0's optimizer state only: gather the classifier's sharded state.

        Runs on every rank (Lightning dumps the checkpoint everywhere and writes it on rank 0), so the
        gathers are collectives every rank joins.
        """
        if self.partial_fc is None:
            return
        saved: dict = {"num_classes": self.partial_fc.num_classes}
        if self._trainer is not None:
            saved["global_batch"] = self.global_batch()
        optimizers = self._trainer.optimizers if self._trainer is not None else []
        if optimizers:
            state = optimizers[0].state.get(self.partial_fc.weight, {})
            saved["classifier_optimizer_state"] = {
                name: self.partial_fc.gather_full(value) for name, value in sorted(state.items())
                if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == self.partial_fc.num_local}
        checkpoint["recognizer"] = saved

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Give this rank its slice of the classifier's optimizer state (the saved one is rank 0's)."""
        saved = checkpoint.get("recognizer") or {}
        self._resumed_global_batch = saved.get("global_batch")
        full_state = saved.get("classifier_optimizer_state") or {}
        if not full_state or not checkpoint.get("optimizer_states") or self.partial_fc is None:
            return
        optimizer_state = checkpoint["optimizer_states"][0]
        group = next((g for g in optimizer_state["param_groups"] if g.get("name") == CLASSIFIER_GROUP), None)
        if group is None or group["params"][0] not in optimizer_state["state"]:
            return
        entry = optimizer_state["state"][group["params"][0]]
        for name, full in full_state.items():
            entry[name] = self.partial_fc.local_shard(full).clone()

    def on_train_start(self) -> None:
        """After a resume with another global batch (world size): rescale the lr, rebase the schedule."""
        previous, now = self._resumed_global_batch, self.global_batch()
        self._resumed_global_batch = None
        if not previous or previous == now:
            return
        scheduler = self.lr_schedulers()
        schedule = scheduler.lr_lambdas[0]
        if not isinstance(schedule, SampleSchedule):
            return
        step = scheduler.last_epoch
        schedule.rebase(step, now)
        factor = self.learning_rate(now) / self.learning_rate(previous)
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * schedule(step)
        if self.trainer.is_global_zero:
            print(f"resumed with a global batch of {now} instead of {previous}: lr x {factor:.4g}, "
                  f"the schedule continues by samples seen", flush=True)


def _name_samples(positions: list[int], keys) -> str:
    """'; samples ['a', 'b']' for the batch positions of bad labels (when the batch carries keys)."""
    if not positions or not keys:
        return ""
    named = [keys[p] for p in positions[:8]]
    more = f" and {len(positions) - 8} more" if len(positions) > 8 else ""
    return f"; sample key(s) {named}{more}"
