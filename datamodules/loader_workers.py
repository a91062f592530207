"""Loader workers leave the stop signals to the training process.

SLURM delivers a job's signals (SIGTERM at the time limit or on preemption, the requeue signal
SIGUSR1, `scancel --signal`) to every process of the step, and a terminal to its whole process
group: loader workers included. A worker dies of either (PyTorch's workers re-raise a SIGTERM that
does not come from their parent), and the training process then fails on its next batch
("DataLoader worker ... is killed by signal") before it can save the checkpoint the signal asked
for (measured under `scancel --signal=TERM`).

So workers leave both to the training process from their first instruction: ``WorkerLoader``
forks them with the two signals blocked (a fork inherits the signal mask), and ``WorkerInit``,
their ``worker_init_fn``, ignores SIGUSR1 and keeps SIGTERM blocked, taken by a thread that ends
the worker only when the SIGTERM comes from its parent (what PyTorch's own worker handler does,
and how Python ends daemon workers at exit: ignoring those would hang the training process's
exit). The training process acts on the signals at a step boundary.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

import random

import numpy as np
import torch
from torch.utils.data import DataLoader

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGUSR1})


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """The stop signals wait (in this thread) until the block ends; processes forked inside start
    with them blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def seed_worker(worker_id: int, rank: int) -> None:
    """Distinct, reproducible random streams per (rank, worker): torch, ``random`` and numpy seeded
    from the loader's base seed (a worker's ``torch.initial_seed()`` is base seed + worker id), the
    worker and the rank, as Lightning seeds workers after ``seed_everything(workers=True)``."""
    base_seed = torch.initial_seed() - worker_id
    sequence = np.random.SeedSequence([base_seed, worker_id, rank])
    torch_seed, random_seed = sequence.generate_state(2, dtype=np.uint64)
    torch.manual_seed(int(torch_seed))
    random.seed(int(random_seed))
    np.random.seed(sequence.spawn(1)[0].generate_state(4))


def _end_on_sigterm_from(parent: int) -> None:
    """Take every SIGTERM (blocked in the worker's threads): one from ``parent`` ends the worker at
    once, as PyTorch's worker handler would; any other (a SLURM step, a terminal) is dropped."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(0)


class WorkerLoader(DataLoader):
    """A DataLoader whose workers start with the stop signals blocked (see the module docstring)."""

    def _get_iterator(self):
        with stop_signals_blocked():
            return super()._get_iterator()


class WorkerInit:
    """A loader's ``worker_init_fn`` (picklable: workers may be spawned): SIGUSR1 ignored, SIGTERM
    left to ``_end_on_sigterm_from`` the parent. With ``seeded``, also seed the worker as Lightning
    would after ``seed_everything(workers=True)`` (a loader with a ``worker_init_fn`` of its own
    does not get Lightning's)."""

    def __init__(self, rank: int = 0, seeded: bool = False):
        self.rank, self.seeded = rank, seeded

    def __call__(self, worker_id: int) -> None:
        if hasattr(signal, "sigwaitinfo"):  # not on macOS: there SIGTERM keeps PyTorch's handling
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # already, if forked by WorkerLoader
            threading.Thread(target=_end_on_sigterm_from, args=(os.getppid(),), daemon=True,
                             name="visage-sigterm").start()
        else:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # drops one that came meanwhile
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        if self.seeded and int(os.environ.get("PL_SEED_WORKERS", 0)):
            seed_worker(worker_id, self.rank)
