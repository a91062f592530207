"""A throw-away SLURM cluster on this machine, for tests that submit real jobs.

One munged (own key and socket), one slurmctld and one slurmd per emulated node, all run in the
foreground as children of the test process, with every state, spool, log and pid file under a
temporary folder. Emulated nodes ``n1``, ``n2`` share ``localhost`` (``NodeHostname=localhost
NodeAddr=127.0.0.1``) and differ by slurmd port; their names do not resolve, exactly the situation
``slurm.allocation.ensure_master_addr`` handles. Needs root and Debian's ``slurmctld slurmd
slurm-client munge`` packages; without them the tests skip, except under CI (``CI`` set), where a
missing SLURM is a failure.

Fixtures: ``slurm_cluster`` (one node) and ``slurm_cluster_2nodes`` (two nodes), each started once
per test module and exported to the test through ``SLURM_CONF``.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "srun")
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
CPUS_PER_NODE = 4  # advertised (SlurmdParameters=config_overrides); jobs oversubscribe the real cores


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here (binaries missing, not root, or a daemon failed to start)."""


def missing_requirements() -> str | None:
    """Why a local cluster cannot start here, or None when it can."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return (f"SLURM/munge binaries not found: {', '.join(missing)} "
                "(apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        return "the local SLURM test cluster runs its daemons as root; not root"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_conf_text(root: Path, nodes: list[str], node_ports: list[int], ctld_port: int,
                    munge_socket: Path, cluster_name: str) -> str:
    node_lines = [f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
                  f"CPUs={CPUS_PER_NODE} RealMemory=4000 State=UNKNOWN"
                  for name, port in zip(nodes, node_ports)]
    return "\n".join([
        f"ClusterName={cluster_name}",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire also delays a requeued job's restart (default 120 s); a short main scheduling
        # interval (default 60 s) starts it soon after: test speed only, real clusters keep defaults
        f"AuthInfo=socket={munge_socket},cred_expire=10",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SlurmdParameters=config_overrides",
        "MpiDefault=none",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={root}/jobcomp.log",
        "ReturnToService=2",
        "MinJobAge=300",
        "KillWait=5",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1,bf_interval=1",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.%n.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        *node_lines,
        f"PartitionName=debug Nodes={','.join(nodes)} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


class LocalSlurmCluster:
    """A running throw-away cluster; ``env`` holds the ``SLURM_CONF`` clients need."""

    def __init__(self, root: Path, num_nodes: int = 1) -> None:
        self.root = Path(root)
        self.nodes = [f"n{i + 1}" for i in range(num_nodes)]
        self.conf = self.root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}
        self._daemons: list[tuple[str, subprocess.Popen]] = []

    # -- start and stop -------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "LocalSlurmCluster":
        reason = missing_requirements()
        if reason:
            raise SlurmUnavailable(reason)
        try:
            self._start_munge()
            self._write_conf()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            for node in self.nodes:
                (self.root / "spool" / node).mkdir(parents=True, exist_ok=True)
                self._spawn(f"slurmd[{node}]", ["slurmd", "-D", "-f", str(self.conf), "-N", node])
            self._wait_nodes_idle(timeout)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)  # a second line of defence if the test session is interrupted
        return self

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        (munge / "run").mkdir(parents=True)
        os.chmod(munge / "run", 0o755)  # munged refuses a socket folder writable by others
        key = munge / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        os.chmod(key, 0o400)
        self.munge_socket = munge / "run" / "munge.socket"
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'seed'}"])
        self._wait(lambda: self.munge_socket.exists(), 10, "munged did not create its socket")

    def _write_conf(self) -> None:
        (self.root / "state").mkdir(exist_ok=True)
        ports = [free_port() for _ in range(len(self.nodes) + 1)]
        self.conf.write_text(slurm_conf_text(self.root, self.nodes, ports[1:], ports[0],
                                             self.munge_socket, cluster_name=f"visage{ports[0]}"))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name.replace('[', '-').strip(']')}.out", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **self.env}, start_new_session=True)
        log.close()
        self._daemons.append((name, proc))
        time.sleep(0.2)
        if proc.poll() is not None:
            raise SlurmUnavailable(f"{name} exited at start with code {proc.returncode}; "
                                   f"see {self.root}:\n{self.logs_tail()}")

    def _wait_nodes_idle(self, timeout: float) -> None:
        def all_idle() -> bool:
            for name, proc in self._daemons:
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} died (code {proc.returncode}):\n{self.logs_tail()}")
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            return all(states.get(node) == "idle" for node in self.nodes)
        self._wait(all_idle, timeout, "nodes did not become idle")

    def _wait(self, ready, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"{message} within {timeout:.0f} s:\n{self.logs_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job, then stop each daemon this object started, by PID."""
        if any(name == "slurmctld" and proc.poll() is None for name, proc in self._daemons):
            self.run(["scancel", "--full", "--user=root"], check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.run(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.3)
        for _name, proc in reversed(self._daemons):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(self._daemons):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._daemons.clear()

    # -- using it -------------------------------------------------------------------------------
    def run(self, argv: list[str], check: bool = True, timeout: float = 30,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        full_env = {**os.environ, **(env or {}), **self.env}
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout,
                              env=full_env)

    def sbatch(self, script: str | Path, *args: str, cwd: str | Path | None = None,
               env: dict[str, str] | None = None) -> str:
        """Submit a batch script (path); return the job id."""
        full_env = {**os.environ, **(env or {}), **self.env}
        out = subprocess.run(["sbatch", "--parsable", *args, str(script)], capture_output=True, text=True,
                             check=True, timeout=30, cwd=cwd, env=full_env)
        return out.stdout.strip().split(";")[0]

    def job_records(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job`` as dicts: one per job, one per task of an array."""
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False).stdout
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]

    def job_fields(self, job_id: str) -> dict[str, str]:
        records = self.job_records(job_id)
        return records[0] if records else {}

    def job_state(self, job_id: str) -> str:
        return self.job_fields(job_id).get("JobState", "UNKNOWN")

    def wait_job(self, job_id: str, timeout: float = 120) -> str:
        """Wait until the job (every task of an array) has finished; return the final state:
        ``COMPLETED`` when all tasks completed, else the first other state (``FAILED`` ...)."""
        deadline = time.monotonic() + timeout
        while True:
            states = [r.get("JobState", "UNKNOWN") for r in self.job_records(job_id)] or ["UNKNOWN"]
            if all(state in FINISHED_STATES for state in states):
                return next((state for state in states if state != "COMPLETED"), "COMPLETED")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {states} after {timeout:.0f} s")
            time.sleep(0.5)

    def wait_state(self, job_id: str, states: set[str], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.job_state(job_id)) not in states:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {state}, not in {sorted(states)}, after {timeout:.0f} s")
            time.sleep(0.3)
        return state

    def logs_tail(self, lines: int = 15) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")) + \
                sorted((self.root / "munge").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)


def _start_or_skip(tmp_path_factory: pytest.TempPathFactory, num_nodes: int) -> LocalSlurmCluster:
    reason = missing_requirements()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM tests, but {reason}", pytrace=False)
        pytest.skip(reason)
    # a short root: the munge socket path must stay under the 108-byte AF_UNIX limit
    root = tmp_path_factory.mktemp(f"slurm{num_nodes}n", numbered=True)
    return LocalSlurmCluster(root, num_nodes).start()


@pytest.fixture(scope="module")
def _slurm_one_node(tmp_path_factory):
    cluster = _start_or_skip(tmp_path_factory, 1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def _slurm_two_nodes(tmp_path_factory):
    cluster = _start_or_skip(tmp_path_factory, 2)
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm_cluster(_slurm_one_node, monkeypatch) -> LocalSlurmCluster:
    """A one-node cluster (``n1``, 4 CPUs); ``SLURM_CONF`` is exported for the test."""
    monkeypatch.setenv("SLURM_CONF", str(_slurm_one_node.conf))
    return _slurm_one_node


@pytest.fixture
def slurm_cluster_2nodes(_slurm_two_nodes, monkeypatch) -> LocalSlurmCluster:
    """A two-node cluster (``n1``, ``n2``, 4 CPUs each); ``SLURM_CONF`` is exported for the test."""
    monkeypatch.setenv("SLURM_CONF", str(_slurm_two_nodes.conf))
    return _slurm_two_nodes


# -- submitting `visage` jobs to it -------------------------------------------------------------
VISAGE = Path(sys.executable).parent / "visage"
REPO = Path(__file__).resolve().parents[1]


def visage_env(cluster: LocalSlurmCluster) -> dict[str, str]:
    """The submitting shell: SLURM_CONF, `visage` on PATH (jobs inherit it), dashboards off, and this
    checkout first on PYTHONPATH: an editable install may point `visage` at another checkout."""
    path = f"{VISAGE.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **cluster.env, "PATH": path, "PYTHONPATH": python_path, "WANDB_MODE": "disabled",
            "PYTHONUNBUFFERED": "1"}


def visage_submit(cluster: LocalSlurmCluster, cwd: Path, args: list[str]) -> tuple[str, list[Path]]:
    """Run `visage submit ARGS` in ``cwd``; return the job id and the run directory of each task."""
    out = subprocess.run([str(VISAGE), "submit", *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                         env=visage_env(cluster))
    assert out.returncode == 0, f"visage submit failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    job = re.search(r"submitted job(?: array)? (\d+)", out.stdout)
    run_dirs = [Path(p) for p in re.findall(r"run directory: (\S+)", out.stdout)]
    assert job and run_dirs, f"no job id / run directory in:\n{out.stdout}"
    return job.group(1), run_dirs


def job_logs(run_dir: Path, lines: int = 60) -> str:
    """The tail of a run's slurm.out and slurm.err, for assertion messages."""
    parts = []
    for name in ("slurm.out", "slurm.err"):
        path = Path(run_dir) / name
        text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(missing)"]
        parts.append(f"--- {path}\n" + "\n".join(text))
    return "\n".join(parts)
