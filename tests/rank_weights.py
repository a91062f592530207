"""``python -m tests.rank_weights fit CONFIG key=value ...``: ``visage fit`` that also saves what each rank
holds, so a test can compare the ranks of a real multi-process run.

Every rank writes ``$RANK_WEIGHTS_DIR/rank<R>-<moment>.pt`` at the start of training (``start``) and at
the end of each training epoch (``epoch<E>``): its parameters (PartialFC's are this rank's shard) and,
under ``requires_grad``, which of them trained at that moment. Nothing is gathered (no collective).
Lightning's launcher starts the other ranks with the same ``-m tests.rank_weights`` command line.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from trainers import cli, fitting


class SaveRankWeights(pl.Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _save(self, pl_module: pl.LightningModule, moment: str) -> None:
        params = dict(pl_module.named_parameters())
        torch.save({"params": {name: p.detach().clone() for name, p in params.items()},
                    "requires_grad": {name: p.requires_grad for name, p in params.items()}},
                   self.folder / f"rank{pl_module.global_rank}-{moment}.pt")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(pl_module, "start")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(pl_module, f"epoch{trainer.current_epoch}")


def main() -> int:
    folder = Path(os.environ["RANK_WEIGHTS_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    finetune_callbacks = fitting.finetune_callbacks
    fitting.finetune_callbacks = lambda cfg: [*finetune_callbacks(cfg), SaveRankWeights(folder)]
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
