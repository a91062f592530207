"""DDP as Visage starts it: ranks that end with their launcher, and a rendezvous that names who is missing.

``WatchedDDPStrategy`` is Lightning's ``DDPStrategy`` with two changes:

- outside SLURM its launcher (``WatchedLauncher``) registers the ranks it starts with
  ``trainers.launched_ranks`` instead of Lightning's observer thread, so a rank that dies stops
  every rank, and no rank or loader worker outlives the launching process (see there);
- the rendezvous waits at least ``RENDEZVOUS_MIN_S`` whatever ``trainer.ddp_timeout_s`` says: the
  ranks Lightning starts re-run the whole command (imports, config, model) before they join, which
  on a loaded machine takes longer than a short collective timeout; collectives then get
  ``trainer.ddp_timeout_s``. A rendezvous that times out (a node that never came, a rank that did
  not start) is a one-line ``RendezvousTimeout`` naming MASTER_ADDR, the port and how many ranks
  joined.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any, Callable

import torch.distributed as dist

from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher, _set_num_threads_if_needed
from torch.distributed import DistStoreError

from configs.errors import VisageError
from trainers.launched_ranks import LAUNCHED

log = logging.getLogger("visage")
RENDEZVOUS_MIN_S = 60


class RendezvousTimeout(VisageError, TimeoutError):
    """Not every rank reached the rendezvous within trainer.ddp_timeout_s."""


class WatchedLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher of ranks 1..N-1 (re-running this command), watched by Visage."""

    def launch(self, function: Callable, *args: Any, trainer=None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            first = self.cluster_environment.node_rank() * self.num_processes
            LAUNCHED.register([(first + local, proc) for local, proc in enumerate(self.procs, start=1)])
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)


class WatchedDDPStrategy(DDPStrategy):
    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _SubprocessScriptLauncher:
            self._launcher = WatchedLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    def setup_environment(self) -> None:
        collective_timeout = self._timeout
        if collective_timeout is not None:
            self._timeout = max(collective_timeout, timedelta(seconds=RENDEZVOUS_MIN_S))
        rendezvous_s = self._timeout.total_seconds() if self._timeout is not None else None
        try:
            super().setup_environment()
        except DistStoreError as err:
            detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            address = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '?')}"
            raise RendezvousTimeout(
                f"the {self.world_size} ranks (trainer.num_nodes={self.num_nodes} x "
                f"trainer.devices={self.num_processes}) did not all meet at MASTER_ADDR:MASTER_PORT={address} "
                f"within {rendezvous_s:.0f} s ({detail}): start every node (NODE_RANK 0..{self.num_nodes - 1}) with the same MASTER_ADDR and MASTER_PORT, "
                "or lower trainer.num_nodes") from None
        finally:
            self._timeout = collective_timeout
        if collective_timeout is not None and dist.is_available() and dist.is_initialized():
            try:  # torch's way to give a process group another timeout after the rendezvous
                dist.distributed_c10d._set_pg_timeout(collective_timeout)
            except (AttributeError, RuntimeError, ValueError) as err:
                log.warning("collectives keep the rendezvous timeout of %s s (%s)", rendezvous_s, err)
