"""PartialFC: a margin-softmax classifier sharded by class over the ranks (An et al., ICCV-W 2021).

Rank r of W owns the contiguous classes ``[start, end)``, ``C // W + (r < C % W)`` rows of the
C x D class-centre matrix. Each step:

1. labels are validated on every rank together (a bad label raises on every rank, no hang);
2. embeddings are all-gathered with a gradient-summing all-gather, labels with a plain one;
3. (training, ``sample_rate < 1``) this rank keeps every class of its slice present in the global
   batch plus random others, ``num_sample = int(sample_rate * local_classes)`` columns in all;
4. cosines against the (sampled) normalised centres go through the margin head;
5. softmax cross-entropy across the shards: all-reduce MAX of row maxima, all-reduce SUM of the
   exp sums, the target logit all-reduced from the rank that owns it. The loss is the mean over the
   global batch, the same value on every rank; gradients are exact (see ``_ShardedCrossEntropy``).

Logits and loss are computed in fp32 (fp64 if the embeddings or weights are fp64) with autocast
disabled. World size 1 is an ordinary full softmax through the same code.

Construction: the world size is read from ``modules.distributed.rank_and_world()`` when the module is
built, so build it after the process group exists (in Lightning: ``LightningModule.configure_model``,
which runs after DDP initialises the process group and before the optimizers are made). A forward in
a different world raises RuntimeError.

DDP: the weights are sharded and must be neither broadcast nor averaged. Call
``exclude_partial_fc_from_ddp(root)`` on the module that DDP will wrap (the LightningModule) before it
is wrapped. DDP then averages only the backbone, whose gradient for this loss is 1/W of the
single-process one (each rank gets d loss / d its own embeddings); ``compensate_ddp_average=True``
multiplies the embedding gradient by W so that after DDP's average the backbone gets exactly the
single-process gradient of the global-batch mean loss (insightface does the same inside its
all-gather).

Checkpoints: ``state_dict()`` holds the FULL C x D weight (gathered; a collective, so call it on every
rank) and ``load_state_dict()`` takes a full matrix and keeps this rank's slice, at any world size.
``gather_full`` and ``local_shard`` do the same for any per-row tensor (optimizer momentum).

Wiring in a LightningModule (DDP strategy)::

    def configure_model(self):            # runs after the process group exists, before DDP wraps
        if self.classifier is None:
            self.classifier = PartialFC(512, num_classes, MarginHead("arcface"), sample_rate,
                                        compensate_ddp_average=True)
            exclude_partial_fc_from_ddp(self)

    def on_save_checkpoint(self, checkpoint):   # every rank: replace the momentum shard by the full one
        ...self.classifier.gather_full(momentum)...

    def on_load_checkpoint(self, checkpoint):   # every rank: keep this rank's rows
        ...self.classifier.local_shard(full_momentum)...

``state_dict()`` is gathered on every rank by Lightning's checkpointing (it dumps on all ranks and
writes on rank 0). Training-time sampling only: in eval mode every column is used.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from configs.errors import VisageError
from modules.distributed import all_gather_no_grad, all_gather_sum_grad, is_distributed, rank_and_world


def class_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of the classes rank ``rank`` owns: C // W rows, one more for the first C % W ranks."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + int(rank < extra)


class LabelError(VisageError, ValueError):
    """Invalid labels; ``positions`` are the offending positions in this rank's batch."""

    def __init__(self, message: str, positions: list[int]):
        super().__init__(message)
        self.positions = positions


class ShardLogits(NamedTuple):
    logits: torch.Tensor          # (N, k) margin logits of the gathered batch against this rank's columns
    target_columns: torch.Tensor  # (N,) column of each row's target here, -1 where another rank owns it
    valid_rows: torch.Tensor      # (N,) False for rows padding a smaller batch of some rank
    columns: torch.Tensor         # (k,) global class id of each column


def _all_reduce_(tensor: torch.Tensor, op) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=op)
    return tensor


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over rows whose columns are spread over the ranks.

    loss_i = log sum_j exp(z_ij) - z_i,y_i, summed over all ranks' columns; d loss / d z_ij =
    (softmax_ij - [j = y_i]) / N_valid for this rank's columns, which needs no collective: every rank
    returns the gradient of the same global loss with respect to its own logits.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target_columns: torch.Tensor, valid_rows: torch.Tensor):
        with torch.no_grad():
            row_max = logits.max(dim=1).values
            _all_reduce_(row_max, dist.ReduceOp.MAX)
            probs = (logits - row_max.unsqueeze(1)).exp_()
            exp_sum = _all_reduce_(probs.sum(dim=1), dist.ReduceOp.SUM)
            rows = torch.nonzero(target_columns >= 0).squeeze(1)
            cols = target_columns[rows]
            target = torch.zeros_like(row_max)
            target[rows] = logits[rows, cols]
            _all_reduce_(target, dist.ReduceOp.SUM)  # each row's target lives on exactly one rank
            per_row = exp_sum.log() + row_max - target
            count = int(valid_rows.sum())
            loss = (per_row * valid_rows.to(per_row.dtype)).sum() / count
            probs /= exp_sum.unsqueeze(1)
        ctx.save_for_backward(probs, rows, cols, valid_rows)
        ctx.count, ctx.used = count, False
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.used:
            raise RuntimeError("PartialFC's loss reuses its buffers: backward may run once per forward")
        ctx.used = True
        probs, rows, cols, valid_rows = ctx.saved_tensors
        grad = probs  # in place: saves an N x k buffer
        grad[rows, cols] -= 1.0
        grad[~valid_rows] = 0.0
        grad *= grad_loss / ctx.count
        return grad, None, None


class PartialFC(nn.Module):
    """Model-parallel margin-softmax classifier and loss.

    Args:
        embedding_size: D.
        num_classes: C, over all ranks (C >= world size).
        margin_head: a ``MarginHead`` (or any module mapping (cosine (N, k), target columns (N,)) to
            logits); it sees this rank's columns only, target -1 where another rank owns the class.
        sample_rate: fraction of this rank's classes used as columns in a training step (1.0: all).
        compensate_ddp_average: multiply the embeddings' gradient by the world size to undo DDP's
            averaging of the backbone gradients (see the module docstring).
        init_std: class centres start as N(0, init_std^2).
        seed: the initial centres are drawn from a generator seeded by (seed, first class of the shard).

    ``forward(embeddings (B, D), labels (B,) int) -> loss`` (scalar, mean over the global batch).
    Batch sizes may differ between ranks.
    """

    def __init__(self, embedding_size: int, num_classes: int, margin_head: nn.Module,
                 sample_rate: float = 1.0, *, compensate_ddp_average: bool = False,
                 init_std: float = 0.01, seed: int = 0):
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.rank, self.world_size = rank_and_world()
        if num_classes < self.world_size:
            raise ValueError(f"{num_classes} classes cannot be sharded over {self.world_size} ranks")
        self.embedding_size, self.num_classes = int(embedding_size), int(num_classes)
        self.sample_rate, self.compensate_ddp_average = float(sample_rate), compensate_ddp_average
        self.start, self.end = class_range(num_classes, self.rank, self.world_size)
        self.num_local = self.end - self.start
        self.num_sample = max(1, int(sample_rate * self.num_local))
        generator = torch.Generator().manual_seed(seed * 1_000_003 + self.start)
        self.weight = nn.Parameter(
            torch.randn(self.num_local, embedding_size, generator=generator) * init_std)
        self.margin_head = margin_head
        self.sampled_classes: torch.Tensor | None = None  # global ids of the last step's columns

    # ----------------------------------------------------------------------------------- forward
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shard = self.shard_logits(embeddings, labels)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return _ShardedCrossEntropy.apply(shard.logits, shard.target_columns, shard.valid_rows)

    def shard_logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> ShardLogits:
        """Margin logits of the gathered global batch against this rank's (sampled) classes."""
        self._check_world()
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must be (B, {self.embedding_size}), got {tuple(embeddings.shape)}")
        batch_sizes = self._validate_labels(labels, embeddings.shape[0], embeddings.device)
        dtype = torch.float64 if torch.float64 in (embeddings.dtype, self.weight.dtype) else torch.float32
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            all_embeddings, all_labels = self._gather(embeddings.to(dtype), labels, max(batch_sizes))
            columns, target_columns = self._select_columns(all_labels)
            weight = self.weight if columns is None else self.weight.index_select(0, columns)
            cosine = F.normalize(all_embeddings, dim=1) @ F.normalize(weight.to(dtype), dim=1).t()
            logits = self.margin_head(cosine, target_columns)
        global_columns = (torch.arange(self.num_local, device=logits.device) if columns is None
                          else columns) + self.start
        self.sampled_classes = global_columns
        return ShardLogits(logits, target_columns, all_labels >= 0, global_columns)

    def _check_world(self) -> None:
        if rank_and_world() != (self.rank, self.world_size):
            raise RuntimeError(
                f"PartialFC was built as rank {self.rank} of {self.world_size} but runs as rank/world "
                f"{rank_and_world()}: build it after the process group exists (configure_model)")

    def _validate_labels(self, labels: torch.Tensor, batch: int, device: torch.device) -> list[int]:
        """Check labels on every rank together; return every rank's batch size."""
        message, positions = "", []
        if labels.dim() != 1 or labels.shape[0] != batch:
            message = f"labels must have shape ({batch},), got {tuple(labels.shape)}"
            positions = list(range(batch))
        elif labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            message = (f"labels must be an integer tensor, got {labels.dtype} (a classifier shard owns "
                       f"no float label; insightface's symptom is a loss stuck at 69.0776)")
            positions = list(range(batch))
        else:
            out_of_range = (labels < 0) | (labels >= self.num_classes)
            positions = torch.nonzero(out_of_range).flatten().tolist()
            if positions:
                values = labels[out_of_range].tolist()
                message = f"labels {values} outside [0, {self.num_classes})"
        status = torch.tensor([[int(bool(message)), batch]], dtype=torch.long, device=device)
        every_rank = all_gather_no_grad(status).tolist()
        failed = [rank for rank, (bad, _) in enumerate(every_rank) if bad]
        if message:
            raise LabelError(f"{message} at batch positions {positions} (rank {self.rank})", positions)
        if failed:
            raise LabelError(f"invalid labels on rank(s) {failed}; this rank's labels are fine", [])
        return [size for _, size in every_rank]

    def _gather(self, embeddings: torch.Tensor, labels: torch.Tensor, max_batch: int):
        padding = max_batch - embeddings.shape[0]
        labels = labels.to(device=embeddings.device, dtype=torch.long)
        if padding:  # all-gather needs equal shapes: pad, mark the padding with label -1
            embeddings = F.pad(embeddings, (0, 0, 0, padding))
            labels = F.pad(labels, (0, padding), value=-1)
        if self.compensate_ddp_average and self.world_size > 1:
            embeddings = _ScaleGradient.apply(embeddings, float(self.world_size))
        return all_gather_sum_grad(embeddings), all_gather_no_grad(labels)

    @torch.no_grad()
    def _select_columns(self, all_labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Columns to use (None: all) and each row's target column among them (-1: not here)."""
        owned = (all_labels >= self.start) & (all_labels < self.end)
        local = torch.where(owned, all_labels - self.start, torch.full_like(all_labels, -1))
        if not self.training or self.num_sample >= self.num_local:
            return None, local
        positives = torch.unique(local[owned])
        if positives.numel() >= self.num_sample:
            columns = positives
        else:  # every positive, then random negatives up to num_sample
            score = torch.rand(self.num_local, device=all_labels.device)
            score[positives] = 2.0
            columns = torch.topk(score, self.num_sample).indices.sort().values
        remap = torch.full((self.num_local,), -1, dtype=torch.long, device=all_labels.device)
        remap[columns] = torch.arange(columns.numel(), device=all_labels.device)
        return columns, torch.where(owned, remap[local.clamp(min=0)], local)

    # ------------------------------------------------------------------------------ checkpoints
    def gather_full(self, local_rows: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's per-class rows (num_local x ...) into the full C x ... tensor.

        A collective: call it on every rank. Uneven shards are padded for the all-gather.
        """
        if local_rows.shape[0] != self.num_local:
            raise ValueError(f"expected {self.num_local} rows, got {local_rows.shape[0]}")
        if self.world_size == 1:
            return local_rows.detach()
        self._check_world()
        rows_per_rank = -(-self.num_classes // self.world_size)
        padded = local_rows.new_zeros((rows_per_rank,) + tuple(local_rows.shape[1:]))
        padded[:self.num_local] = local_rows.detach()
        gathered = all_gather_no_grad(padded)
        parts = []
        for rank in range(self.world_size):
            start, end = class_range(self.num_classes, rank, self.world_size)
            parts.append(gathered[rank * rows_per_rank: rank * rows_per_rank + end - start])
        return torch.cat(parts)

    def local_shard(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows [start, end) of a full C x ... tensor."""
        if full.shape[0] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} rows, got {full.shape[0]}")
        return full[self.start:self.end]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.gather_full(self.weight)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        if key in state_dict and state_dict[key].shape[0] == self.num_classes:
            state_dict[key] = self.local_shard(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
                f"classes=[{self.start}, {self.end}) of rank {self.rank}/{self.world_size}, "
                f"sample_rate={self.sample_rate}, num_sample={self.num_sample}")


def partial_fc_state_names(root: nn.Module) -> list[str]:
    """Fully qualified names of every parameter and buffer inside PartialFC modules under ``root``."""
    names = []
    for module_name, module in root.named_modules():
        if isinstance(module, PartialFC):
            names += [name for name, _ in module.named_parameters(prefix=module_name)]
            names += [name for name, _ in module.named_buffers(prefix=module_name)]
    return names


def exclude_partial_fc_from_ddp(root: nn.Module) -> list[str]:
    """Make torch DDP skip (no broadcast, no gradient averaging) every PartialFC state under ``root``.

    Call on the module DDP will wrap (Lightning wraps the LightningModule itself), before wrapping.
    Names already excluded on ``root`` are kept. Returns every excluded name.
    """
    already = set(getattr(root, "_ddp_params_and_buffers_to_ignore", []))
    names = sorted(already | set(partial_fc_state_names(root)))
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(root, names)
    return names
