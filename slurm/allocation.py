"""Checks run at the very start of `visage fit` under SLURM, before any heavy work.

``check_allocation`` compares the trainer settings with the tasks SLURM actually started: Lightning
needs one process per device, so tasks per node must equal ``trainer.devices`` and the step's nodes
must equal ``trainer.num_nodes``; a mismatch would otherwise hang in the first collective or fail
deep inside Lightning. ``ensure_master_addr`` makes the rendezvous address and port explicit.

Both read only environment variables (plus, rarely, one ``scontrol`` call), so they are cheap.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
from typing import Any, Mapping, MutableMapping

from configs.errors import VisageError
from configs.schema import ConfigError

INTERACTIVE_JOB_NAMES = ("bash", "interactive")  # Lightning does not treat these as SLURM jobs


class AllocationError(VisageError, ValueError):
    """The trainer settings do not match the SLURM allocation."""


def under_slurm(env: Mapping[str, str]) -> bool:
    """True where Lightning would pick its SLURM environment (SLURM_NTASKS set, not interactive)."""
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES


def expand_tasks_per_node(value: str) -> list[int]:
    """SLURM's compressed task counts, e.g. ``2(x3),1`` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in value.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise AllocationError(f"cannot parse SLURM tasks per node {value!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def device_count(devices: Any) -> int | None:
    """Processes per node that ``trainer.devices`` asks for; None when Lightning decides (auto, -1)."""
    if isinstance(devices, bool):
        raise AllocationError(f"trainer.devices: {devices!r} is not a device count")
    if isinstance(devices, int):
        return None if devices == -1 else devices
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return None
        if "," in text:  # Lightning reads "0,1" as device ids
            return len([part for part in text.split(",") if part.strip()])
        if text.isdigit():
            return int(text)
        raise AllocationError(f"trainer.devices: {devices!r} is not a device count")
    return len(list(devices))  # a list of device ids


def _tasks_per_node(env: Mapping[str, str]) -> tuple[list[int], str]:
    """Per-node task counts of the running step and the variable they came from."""
    for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if env.get(key):
            return expand_tasks_per_node(env[key]), key
    ntasks, nnodes = int(env["SLURM_NTASKS"]), int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
    if env.get("SLURM_NTASKS_PER_NODE"):
        return [int(env["SLURM_NTASKS_PER_NODE"])] * nnodes, "SLURM_NTASKS_PER_NODE"
    return [ntasks // nnodes] * nnodes, "SLURM_NTASKS / SLURM_NNODES"


def check_allocation(num_nodes: int, devices: Any, env: Mapping[str, str] = os.environ) -> None:
    """Raise AllocationError naming ``trainer.devices``/``trainer.num_nodes`` when they do not match
    the SLURM tasks of this step. A no-op outside SLURM (no SLURM_NTASKS, or a job named bash or
    interactive, which Lightning treats as a plain machine). ``devices="auto"`` is not checked."""
    if not under_slurm(env):
        return
    ntasks = int(env["SLURM_NTASKS"])
    hint = ("SLURM starts one training process per task: use `sbatch --ntasks-per-node=<trainer.devices> "
            "--nodes=<trainer.num_nodes>` and start the trainer with `srun` (visage submit does both)")
    if "SLURM_STEP_ID" not in env and ntasks > 1:
        raise AllocationError(
            f"this process runs in the batch script of a job with SLURM_NTASKS={ntasks}, not under srun: "
            f"only one of the {ntasks} training processes exists. {hint}")
    step_nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1)
    if step_nodes != num_nodes:
        raise AllocationError(
            f"trainer.num_nodes={num_nodes} but this SLURM step runs on {step_nodes} node(s) "
            f"(SLURM_NNODES={env.get('SLURM_NNODES')}, SLURM_JOB_NUM_NODES={env.get('SLURM_JOB_NUM_NODES')}). "
            f"Set trainer.num_nodes={step_nodes} or submit with --nodes={num_nodes}. {hint}")
    wanted = device_count(devices)
    if wanted is None:
        return
    per_node, source = _tasks_per_node(env)
    if any(count != wanted for count in per_node):
        raise AllocationError(
            f"trainer.devices={wanted} but SLURM runs {', '.join(map(str, per_node))} task(s) per node "
            f"({source}={env.get(source, per_node)}, SLURM_NTASKS={ntasks}). Set trainer.devices="
            f"{per_node[0]} or submit with --ntasks-per-node={wanted}. {hint}")
    # Lightning compares SLURM_NTASKS_PER_NODE itself; it is inherited from the batch job even by a
    # step that runs fewer tasks, so a step that passes the check above can still fail there.
    inherited = env.get("SLURM_NTASKS_PER_NODE")
    if inherited and int(inherited) != wanted:
        raise AllocationError(
            f"trainer.devices={wanted} but the job was submitted with --ntasks-per-node={inherited} "
            f"(SLURM_NTASKS_PER_NODE), which Lightning requires to equal trainer.devices. {hint}")
    if ntasks != wanted * num_nodes:
        raise AllocationError(
            f"trainer.devices={wanted} x trainer.num_nodes={num_nodes} = {wanted * num_nodes} processes, "
            f"but SLURM_NTASKS={ntasks}. {hint}")


# what a launcher that starts every node itself sets (a manual launch, torchrun, Kubeflow, LSF, mpirun)
MULTI_NODE_LAUNCH_VARIABLES = ("NODE_RANK", "GROUP_RANK", "RANK", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE")


def check_nodes_outside_slurm(num_nodes: int, env: Mapping[str, str] = os.environ) -> None:
    """Outside SLURM, ``trainer.num_nodes > 1`` needs every node started with its NODE_RANK (or by a
    launcher that sets the ranks): without one, rank 0 would wait for nodes that never come."""
    if num_nodes <= 1 or under_slurm(env) or any(key in env for key in MULTI_NODE_LAUNCH_VARIABLES):
        return
    raise ConfigError(
        f"trainer.num_nodes={num_nodes} outside a SLURM allocation and with no NODE_RANK set: no other node "
        f"would join this one. Set trainer.num_nodes=1, submit with `visage submit` (SLURM), or start "
        f"`visage fit` on each of the {num_nodes} nodes with MASTER_ADDR, MASTER_PORT and NODE_RANK=0..{num_nodes - 1}")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: ``gpu[007-009,012],cpu1`` -> ``gpu007``."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):  # cut at the first comma outside brackets
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    # each bracket group contributes its first number, keeping zero padding
    return re.sub(r"\[([^\]\-,]+)[^\]]*\]", r"\1", nodelist[:end].strip())


def resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, None)
    except (socket.gaierror, UnicodeError):
        return False
    return True


def slurm_node_address(node: str, env: Mapping[str, str]) -> str | None:
    """NodeAddr of ``node`` from slurm.conf as slurmctld reports it (None when unavailable)."""
    try:
        out = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True,
                             timeout=20, env=dict(env)).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bNodeAddr=(\S+)", out)
    return match.group(1) if match else None


def master_port_for_job(job_id: str) -> int:
    """A port derived from the job id: every rank and requeue agree; 10000-29999 stays below the
    Linux ephemeral range (32768+), so it never collides with an outgoing connection."""
    return 10000 + int(re.sub(r"\D", "", job_id) or 0) % 20000


def ensure_master_addr(env: MutableMapping[str, str] = os.environ) -> None:
    """Set MASTER_ADDR and MASTER_PORT for the rendezvous when SLURM runs the job and they are unset.

    MASTER_ADDR is the first node of the job. On a normal cluster its name resolves and is used as
    it is (what Lightning would pick). When it does not resolve (emulated nodes, clusters without DNS
    for compute names) the address SLURM itself uses for that node (``NodeAddr`` from ``scontrol
    show node``) is taken; failing that, a single-node job uses 127.0.0.1 since every rank is local.
    A multi-node job with no usable address raises AllocationError: export MASTER_ADDR yourself.
    A value the user exported is never changed.
    """
    if not under_slurm(env):
        return
    if not env.get("MASTER_PORT") and env.get("SLURM_JOB_ID"):
        env["MASTER_PORT"] = str(master_port_for_job(env["SLURM_JOB_ID"]))
    if env.get("MASTER_ADDR"):
        return
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return
    node = first_host(nodelist)
    if resolves(node):
        env["MASTER_ADDR"] = node
        return
    address = slurm_node_address(node, env)
    if address and resolves(address):
        env["MASTER_ADDR"] = address
        return
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1)
    if nodes == 1:
        env["MASTER_ADDR"] = "127.0.0.1"
        return
    raise AllocationError(
        f"MASTER_ADDR: the first node {node!r} of {nodelist!r} does not resolve and SLURM reports no "
        f"usable NodeAddr for it; export MASTER_ADDR=<an address of {node} reachable from every node>")
