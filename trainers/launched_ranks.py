"""The ranks a `visage` process started itself end with it: none is left hanging or orphaned.

Outside SLURM, Lightning's DDP launcher starts ranks 1..N-1 as subprocesses of the process the user
started (rank 0), each with its own loader workers. Lightning watches them with a thread that
notices a rank that exits, not one that hangs or is stopped; and when rank 0 fails (a collective
timed out) the other ranks are left running as orphans. Here (``trainers.rank_launcher`` registers
the ranks it starts):

- ``RankWatcher``: a rank that exits with an error or dies of a signal is named in one line,
  every other rank is killed with its loader workers, and unless this process then ends by itself
  within ``grace_s`` (its next collective with the dead rank fails), it ends its own workers and
  exits with the dead rank's status (128 + signal for a signal).
- ``end_launched_ranks(wait_s)``: when this process leaves (the command's last step, and atexit),
  ranks still running after ``wait_s`` are killed with their loader workers, and named.

Exiting 0 or 143 (stopped together at a step boundary, ``trainers.stop_signals``) is not an error.
Processes are found through /proc (Linux); elsewhere only the ranks themselves are killed.
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TERMINATED_EXIT = 143  # 128 + SIGTERM: a rank stopped on purpose at a step boundary
GRACE_S = 5.0  # how long a failed run waits for its ranks to exit by themselves


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc (empty where there is no /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        fields = text[text.rfind(")") + 2:].split()  # after "pid (command)": state, ppid, ...
        parents[int(stat.parent.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children ...), found before any is killed."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_state(pid: int) -> str:
    """The one-letter state /proc gives (R running, S sleeping, T stopped ...), "" if unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return text[text.rfind(")") + 2:].split()[0]


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it (SIGKILL also ends a stopped process)."""
    for target in [*descendants(pid), pid]:
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def stopped_on_purpose(returncode: int | None) -> bool:
    return returncode in (0, TERMINATED_EXIT)


def say(message: str) -> None:
    print(f"visage: {message}", file=sys.stderr, flush=True)


class LaunchedRanks:
    """The rank processes this process started: ``(global rank, Popen)``."""

    def __init__(self) -> None:
        self.ranks: list[tuple[int, subprocess.Popen]] = []
        self.leaving = threading.Event()  # this process has started to exit by itself
        self.lock = threading.Lock()
        self.watcher: RankWatcher | None = None
        self.failed_status: int | None = None  # exit status of a rank that failed, once seen
        self._at_exit = False

    def register(self, ranks: list[tuple[int, subprocess.Popen]], grace_s: float = 2 * GRACE_S) -> None:
        with self.lock:
            self.ranks.extend(ranks)
            self.leaving.clear()
        if self.watcher is None or not self.watcher.is_alive():
            self.watcher = RankWatcher(self, grace_s)
            self.watcher.start()
        if not self._at_exit:
            atexit.register(self.end, GRACE_S)
            self._at_exit = True

    def pids(self) -> list[int]:
        return [proc.pid for _, proc in self.ranks if proc.poll() is None]

    def kill_others(self, spare: subprocess.Popen | None = None) -> None:
        for _, proc in self.ranks:
            if proc is not spare and proc.poll() is None:
                kill_tree(proc.pid)

    def end(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` for the ranks to exit by themselves, then kill what is left; a
        stopped (frozen) rank is killed at once. True when a rank ended badly (an error, a signal,
        frozen, killed here)."""
        self.leaving.set()
        with self.lock:
            ranks, self.ranks = self.ranks, []
        deadline = time.monotonic() + wait_s
        for rank, proc in ranks:
            if proc.poll() is None and process_state(proc.pid) in ("T", "t"):
                say(f"rank {rank} (pid {proc.pid}) is stopped (frozen): killed it and its loader workers")
                kill_tree(proc.pid)
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"rank {rank} (pid {proc.pid}) was still running {wait_s:.0f} s after this process "
                    "stopped: killed it and its loader workers")
                kill_tree(proc.pid)
                proc.wait()
            if not stopped_on_purpose(proc.returncode) and self.failed_status is None:
                self.failed_status = exit_status(proc.returncode)
        return self.failed_status is not None

    def has_ranks(self) -> bool:
        return bool(self.ranks)


class RankWatcher(threading.Thread):
    def __init__(self, launched: LaunchedRanks, grace_s: float, poll_s: float = 0.5):
        super().__init__(daemon=True, name="visage-rank-watcher")
        self.launched, self.grace_s, self.poll_s = launched, grace_s, poll_s

    def run(self) -> None:
        while not self.launched.leaving.wait(self.poll_s):
            with self.launched.lock:
                ranks = list(self.launched.ranks)
            failed = next(((rank, proc) for rank, proc in ranks
                           if proc.poll() is not None and not stopped_on_purpose(proc.returncode)), None)
            if failed is not None:
                self._stop_the_run(*failed)
                return
            if ranks and all(proc.returncode is not None for _, proc in ranks):
                return  # every rank is done

    def _stop_the_run(self, rank: int, proc: subprocess.Popen) -> None:
        self.launched.failed_status = exit_status(proc.returncode)
        say(f"rank {rank} (pid {proc.pid}) {describe_exit(proc.returncode)}: stopping every rank of the run")
        self.launched.kill_others(spare=proc)
        if self.launched.leaving.wait(self.grace_s):
            return  # this process is exiting by itself
        say(f"this process (rank 0) did not stop within {self.grace_s:.0f} s: ending it")
        for pid in descendants(os.getpid()):  # its loader workers
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        os._exit(exit_status(proc.returncode))


LAUNCHED = LaunchedRanks()


def end_launched_ranks(wait_s: float = GRACE_S) -> bool:
    return LAUNCHED.end(wait_s)


def blame_other_ranks(err: BaseException, wait_s: float = 3 * GRACE_S) -> int | None:
    """This process (rank 0, which started the others) failed with ``err``: when another rank ended
    badly first (named on its own line), say so in one line and return the exit status to use;
    None when the failure is this process's own (its traceback is the useful report)."""
    if not LAUNCHED.has_ranks() or not LAUNCHED.end(wait_s):
        return None
    first_line = (str(err).strip().splitlines() or [""])[0]
    say(f"error: rank 0 stopped ({type(err).__name__}: {first_line}) after another rank ended (see above)")
    return LAUNCHED.failed_status or 1
