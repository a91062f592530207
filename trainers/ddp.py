"""DDP that follows which parameters train: wrapped only while some of them need DDP, rewrapped when
that set changes (a frozen backbone joining training at ``finetune.unfreeze_at_epoch``).

torch's ``DistributedDataParallel`` averages the gradients of the parameters that required a gradient
when it was built, and refuses to be built when none does ("DistributedDataParallel is not needed
..."). Two runs meet that:

- a frozen backbone whose only trainable part is kept out of DDP on purpose (PartialFC shards its
  classifier over the ranks and reduces its own gradients): nothing is left for DDP to average, so
  the run goes without the wrapper (after broadcasting rank 0's weights once, as DDP would);
- a part frozen first and unfrozen later: a wrapper built before the unfreeze would never average
  the new parameters' gradients and the ranks would silently drift apart.

So the wrapper is (re)built whenever the set of trainable parameters DDP is responsible for (those
not in the module's ``_ddp_params_and_buffers_to_ignore``) differs from the one it was built for,
checked at the start of every training batch on every rank. The set changes at the same step on every
rank (freezing and unfreezing follow the epoch), which building DDP needs: it is a collective.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from pytorch_lightning.overrides.distributed import _sync_module_states
from torch.nn.parallel import DistributedDataParallel

from trainers.rank_launcher import WatchedDDPStrategy

log = logging.getLogger("visage")


def parameters_ddp_would_average(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of every parameter DDP built on ``module`` takes charge of (those not ignored)."""
    ignored = set(getattr(module, "_ddp_params_and_buffers_to_ignore", ()))
    return [(name, param) for name, param in module.named_parameters() if name not in ignored]


class FreezeAwareDDPStrategy(WatchedDDPStrategy):
    """Visage's DDP strategy: ranks launched and watched by ``trainers/rank_launcher.py`` (none spins or
    outlives its job), the module wrapped for the parameters that train now (see above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._candidates: list[tuple[str, torch.nn.Parameter]] = []
        self._wrapped_for: tuple[bool, ...] | None = None  # requires_grad of each candidate when wrapped

    def configure_ddp(self) -> None:
        self._candidates = parameters_ddp_would_average(self.lightning_module)  # fixed once the model is built
        self._wrapped_for = None
        self._wrap_for_trainable_parameters()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._wrap_for_trainable_parameters()  # a few microseconds: one flag per parameter tensor
        super().on_train_batch_start(batch, batch_idx)

    def _wrap_for_trainable_parameters(self) -> None:
        trainable = tuple(param.requires_grad for _, param in self._candidates)
        if trainable == self._wrapped_for:
            return
        module, previous = self.lightning_module, self.model
        if isinstance(previous, DistributedDataParallel):
            previous._remove_autograd_hooks()  # the old wrapper must not reduce these gradients again
        if self._wrapped_for is not None and self.global_rank == 0:
            log.info("DDP now averages the gradients of %d parameter tensors (was %d)", sum(trainable),
                     sum(self._wrapped_for))
        self._wrapped_for = trainable
        if any(trainable):
            self.model = self._setup_model(module)  # broadcasts rank 0's weights, as at the start
            self._register_ddp_hooks()
        else:  # nothing for DDP to average: every rank starts from rank 0's weights all the same
            self.model = module
            _sync_module_states(module)
