"""The stop signals of `visage fit`, handled from its first line: SIGTERM always, SIGUSR1 under SLURM.

SIGTERM is the time limit, a preemption, `scancel --signal=TERM` or a plain `kill`; SIGUSR1 is
SLURM's "requeue soon" (``#SBATCH --signal=SIGUSR1@90``). What a signal does depends on the phase:

- ``starting`` (from `visage fit`'s first line until training starts): there is nothing to save.
  SIGTERM ends the command at once (exit 143, one line on stderr). SIGUSR1 requeues the job (rank 0
  runs `scontrol requeue`) and every rank exits 0: the requeued job starts from scratch, or from the
  checkpoints already in its run directory.
- ``training`` (``trainers.requeue.StopAtStepBoundary`` takes over in its ``setup``): a handler
  only notes the signal; the callback acts on it at the next step boundary, every rank together
  (checkpoint, then requeue or exit 143). No collective ever runs inside a signal handler.
- ``finishing`` (training is over; the final validation runs): as when starting, the command ends
  at once; the checkpoints written during training are what a resume or requeue continues from.

SIGTERM is passed on to the ranks this process started itself (``trainers.launched_ranks``).
Loader workers ignore both signals (``datamodules.loader_workers``). No torch here: the handlers
are installed before anything heavy is imported.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from trainers.launched_ranks import LAUNCHED, TERMINATED_EXIT

STARTING, TRAINING, FINISHING = "starting", "training", "finishing"
REQUEUE_SIGNAL = signal.SIGUSR1


@dataclass
class StopRequests:
    phase: str = STARTING
    terminate: bool = False   # SIGTERM received
    requeue: bool = False     # the requeue signal received
    requeue_enabled: bool = False
    stopped_after_training: tuple[str, int] | None = None  # (checkpoint, step) of a SIGTERM after the last step
    pid: int = 0  # the process that installed the handlers (a forked helper inherits them)
    previous: dict = field(default_factory=dict)  # signal -> the handler installed before ours


REQUESTS = StopRequests()


class StoppedOutsideTraining(SystemExit):
    """Raised from a signal handler outside the training phase: nothing is saved, the command ends."""


class StoppedAtStep(SystemExit):
    """Every rank stopped together at a step boundary after saving a checkpoint; ``message`` is the
    line rank 0 prints. A SystemExit: uncaught, it ends the process with ``code``."""

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message


def first_process(env=os.environ) -> bool:
    """True in rank 0 as the environment names it before Lightning runs (or in a plain process)."""
    return all(env.get(key, "0") == "0" for key in ("SLURM_PROCID", "RANK", "LOCAL_RANK", "NODE_RANK"))


def say(message: str) -> None:
    print(f"visage: {message}", file=sys.stderr, flush=True)


def requeue_target(env=os.environ) -> str:
    """What `scontrol requeue` takes: the job id, or ``<array job>_<task>`` for an array task."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def requeue_job() -> tuple[bool, str]:
    """Run `scontrol requeue` for this job: (done, what went wrong)."""
    try:
        done = subprocess.run(["scontrol", "requeue", requeue_target()], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        return False, str(err)
    return done.returncode == 0, done.stderr.strip()


def _forward(signum: int) -> None:
    for pid in LAUNCHED.pids():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _in_forked_helper(signum: int) -> bool:
    """A process forked from ours (a rendering pool worker ...) inherits the handlers: there the
    signal does what it does by default, and the training process handles its own copy."""
    if os.getpid() == REQUESTS.pid:
        return False
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return True


def _on_sigterm(signum, frame) -> None:
    if _in_forked_helper(signum):
        return
    first = not REQUESTS.terminate
    REQUESTS.terminate = True
    if first:
        _forward(signum)
    if REQUESTS.phase == TRAINING:
        return  # StopAtStepBoundary saves and stops at the next step boundary
    if first_process():
        say("terminated (SIGTERM) before training started: nothing to save" if REQUESTS.phase == STARTING else
            "terminated (SIGTERM) after training, during the final validation: resume with run.resume=auto "
            "(or scontrol requeue) to validate the last checkpoint")
    raise StoppedOutsideTraining(TERMINATED_EXIT)


def _on_requeue_signal(signum, frame) -> None:
    if _in_forked_helper(signum):
        return
    REQUESTS.requeue = True
    if REQUESTS.phase == TRAINING:
        return  # StopAtStepBoundary saves, requeues and stops at the next step boundary
    # the requeue makes SLURM send SIGTERM: it must not look like a termination from here on
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 0
    if first_process():
        done, detail = requeue_job()
        target = requeue_target()
        if done:
            say(f"requeue signal before training{' started' if REQUESTS.phase == STARTING else ' ended'}: nothing "
                f"to save; requeued job {target} (it continues from the checkpoints in its run directory, if any)")
        else:
            say(f"requeue signal before training could save anything, and `scontrol requeue {target}` failed "
                f"({detail}): resubmit the job")
            code = 1
    raise StoppedOutsideTraining(code)


def install(requeue: bool) -> None:
    """`visage fit`'s first step: fresh requests, our handlers (SIGUSR1 only with ``requeue``)."""
    uninstall()
    REQUESTS.__init__(requeue_enabled=requeue, pid=os.getpid())
    handlers = {signal.SIGTERM: _on_sigterm}
    if requeue:
        handlers[REQUEUE_SIGNAL] = _on_requeue_signal
    for signum, handler in handlers.items():
        REQUESTS.previous[signum] = signal.signal(signum, handler)


def installed(requeue: bool) -> bool:
    """Our handlers are in place for this process (with the requeue signal's, if ``requeue``)."""
    return REQUESTS.pid == os.getpid() and signal.getsignal(signal.SIGTERM) is _on_sigterm and (
        not requeue or signal.getsignal(REQUEUE_SIGNAL) is _on_requeue_signal)


def uninstall() -> None:
    """Put back the handlers that were there before ``install`` (a command run in-process)."""
    for signum, handler in REQUESTS.previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    REQUESTS.previous.clear()


def set_phase(phase: str) -> None:
    REQUESTS.phase = phase
