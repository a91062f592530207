"""Loader workers leave the stop signals to the training process.

SLURM delivers a job's signals (SIGTERM at the time limit or on preemption, the requeue signal
SIGUSR1, `scancel --signal`) to every process of the step, and a terminal to its whole process
group: loader workers included. A worker dies of either (PyTorch's workers re-raise a SIGTERM that
does not come from their parent), and the training process then fails on its next batch
("DataLoader worker ... is killed by signal") before it can save the checkpoint the signal asked
for (measured under `scancel --signal=TERM`).

So workers ignore both, from their first instruction: ``WorkerLoader`` forks them with the two
signals blocked (a fork inherits the signal mask), and ``WorkerInit``, their ``worker_init_fn``,
ignores the signals (which drops one that came meanwhile) before unblocking them. The training
process acts on the signals at a step boundary. Ignoring SIGTERM also ignores Python's own way of
ending daemon workers at exit (``multiprocessing`` sends them SIGTERM, then waits for them: a
hang), so the training process ends its remaining workers with SIGKILL first.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
from contextlib import contextmanager
from typing import Iterator

from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGUSR1})
_AT_EXIT: list[bool] = []


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """The stop signals wait (in this thread) until the block ends; processes forked inside start
    with them blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _kill_daemon_children() -> None:
    for child in multiprocessing.active_children():
        if child.daemon and child.pid is not None:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def end_workers_at_exit() -> None:
    """Once per process: at exit, SIGKILL the loader workers still running (they ignore SIGTERM).
    Registered after ``multiprocessing`` registered its own exit handler, so it runs before it."""
    if not _AT_EXIT:
        atexit.register(_kill_daemon_children)
        _AT_EXIT.append(True)


class WorkerLoader(DataLoader):
    """A DataLoader whose workers start with the stop signals blocked (see the module docstring)."""

    def _get_iterator(self):
        if self.num_workers > 0:
            end_workers_at_exit()
        with stop_signals_blocked():
            return super()._get_iterator()


class WorkerInit:
    """A loader's ``worker_init_fn`` (picklable: workers may be spawned): ignore the stop signals,
    then unblock them. With ``seeded``, also seed the worker as Lightning would after
    ``seed_everything(workers=True)`` (a loader with a ``worker_init_fn`` of its own does not get
    Lightning's)."""

    def __init__(self, rank: int = 0, seeded: bool = False):
        self.rank, self.seeded = rank, seeded

    def __call__(self, worker_id: int) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if self.seeded and int(os.environ.get("PL_SEED_WORKERS", 0)):
            pl_worker_init_function(worker_id, rank=self.rank)
