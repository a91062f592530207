"""slurm.allocation: trainer settings against the SLURM tasks, and the rendezvous address.

The environments below are the variables a real srun step set on the local test cluster (see
tests/slurm_cluster.py): 2 nodes x 2 tasks, and a 1-task step inside that 2 x 2 job.
Lightning's own SLURMEnvironment checks are the reference: whatever it accepts must pass here, and
whatever it rejects must be rejected here first, with a message naming the trainer key.
"""
from __future__ import annotations

import os

import pytest
from pytorch_lightning.plugins.environments import SLURMEnvironment

from slurm.allocation import (AllocationError, check_allocation, device_count, ensure_master_addr,
                              expand_tasks_per_node, first_host, master_port_for_job)

STEP_2X2 = {  # `srun` in `sbatch --nodes=2 --ntasks-per-node=2`
    "SLURM_JOB_ID": "12", "SLURM_JOB_NAME": "embedder-triplet", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_NODELIST": "n[1-2]", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_STEP_NODELIST": "n[1-2]",
    "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
}
STEP_1_OF_2X2 = {  # `srun --nodes=1 --ntasks=1` in the same job (measured: NTASKS_PER_NODE is inherited)
    **STEP_2X2, "SLURM_NTASKS": "1", "SLURM_NNODES": "1", "SLURM_TASKS_PER_NODE": "1", "SLURM_STEP_NUM_NODES": "1",
    "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_TASKS_PER_NODE": "1", "SLURM_STEP_NODELIST": "n1",
}
BATCH_SHELL_2X2 = {k: v for k, v in STEP_2X2.items() if not k.startswith("SLURM_STEP")}


def lightning_accepts(env: dict, devices: int, num_nodes: int, monkeypatch) -> bool:
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        SLURMEnvironment._validate_srun_variables()
        SLURMEnvironment().validate_settings(num_devices=devices, num_nodes=num_nodes)
    except (ValueError, RuntimeError):
        return False
    return True


@pytest.mark.parametrize("devices, num_nodes", [(2, 2), ([0, 1], 2), ("0,1", 2), ("auto", 2)])
def test_matching_settings_pass(devices, num_nodes):
    check_allocation(num_nodes, devices, STEP_2X2)


@pytest.mark.parametrize("env, devices, num_nodes, words", [
    (STEP_2X2, 4, 2, ["trainer.devices=4", "2, 2 task(s) per node", "SLURM_STEP_TASKS_PER_NODE=2(x2)"]),
    (STEP_2X2, 1, 2, ["trainer.devices=1", "--ntasks-per-node=1"]),
    (STEP_2X2, 2, 1, ["trainer.num_nodes=1", "2 node(s)", "SLURM_NNODES=2"]),
    (STEP_2X2, [0, 1, 2], 2, ["trainer.devices=3"]),
    (STEP_1_OF_2X2, 1, 1, ["trainer.devices=1", "--ntasks-per-node=2", "SLURM_NTASKS_PER_NODE"]),
    (BATCH_SHELL_2X2, 2, 2, ["not under srun", "SLURM_NTASKS=4"]),
    ({"SLURM_NTASKS": "4", "SLURM_NNODES": "2", "SLURM_STEP_ID": "0"}, 4, 2,
     ["trainer.devices=4", "SLURM_NTASKS / SLURM_NNODES"]),
    ({"SLURM_NTASKS": "4", "SLURM_NNODES": "2", "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "3,1"}, 2, 2,
     ["3, 1 task(s) per node"]),
])
def test_mismatches_raise_a_clear_error(env, devices, num_nodes, words):
    with pytest.raises(AllocationError) as err:
        check_allocation(num_nodes, devices, env)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("env", [STEP_2X2, STEP_1_OF_2X2])
@pytest.mark.parametrize("devices, num_nodes", [(1, 1), (2, 1), (2, 2), (4, 1), (1, 2), (4, 2)])
def test_never_looser_than_lightning(env, devices, num_nodes, monkeypatch):
    """Lightning is the reference: its rejections must be ours too (ours happen before heavy work)."""
    try:
        check_allocation(num_nodes, devices, env)
        ours = True
    except AllocationError:
        ours = False
    theirs = lightning_accepts(env, devices, num_nodes, monkeypatch)
    assert ours <= theirs, f"accepted devices={devices} num_nodes={num_nodes} which Lightning rejects"
    if ours:  # and what passes is really one process per device: the world size adds up
        assert int(env["SLURM_NTASKS"]) == devices * num_nodes


@pytest.mark.parametrize("env", [{}, {"SLURM_JOB_ID": "3"}, {**STEP_2X2, "SLURM_JOB_NAME": "bash"},
                                 {**STEP_2X2, "SLURM_JOB_NAME": "interactive"}])
def test_no_op_outside_slurm_or_in_interactive_jobs(env):
    check_allocation(5, 7, env)  # would mismatch under SLURM
    before = dict(env)
    ensure_master_addr(env)
    assert env == before


def test_tasks_per_node_expansion_and_device_counts():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("4") == [4]
    with pytest.raises(AllocationError):
        expand_tasks_per_node("two")
    assert [device_count(d) for d in (3, "3", [0, 1], "0,1,2", "auto", -1, "-1")] == [3, 3, 2, 3, None, None, None]
    with pytest.raises(AllocationError):
        device_count(True)


@pytest.mark.parametrize("nodelist, first", [
    ("n1", "n1"), ("n[1-2]", "n1"), ("gpu[007-009,012],cpu1", "gpu007"), ("a[3],b[1-4]", "a3"),
    ("rack[2-3]-node[05-08]", "rack2-node05"), ("node12,node3", "node12"), ("x[10,2]", "x10"),
])
def test_first_host_of_a_hostlist(nodelist, first):
    assert first_host(nodelist) == first


def test_master_addr_kept_when_set_and_port_from_job_id():
    env = {**STEP_2X2, "MASTER_ADDR": "10.0.0.7"}
    ensure_master_addr(env)
    assert env["MASTER_ADDR"] == "10.0.0.7"
    assert env["MASTER_PORT"] == str(10000 + 12 % 20000)
    assert master_port_for_job("123456") == 10000 + 123456 % 20000
    assert all(10000 <= master_port_for_job(str(j)) < 30000 for j in (0, 1, 19999, 20000, 10**9 + 7))
    env = {**STEP_2X2, "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29500"}
    ensure_master_addr(env)
    assert env["MASTER_PORT"] == "29500"


def test_resolvable_first_node_is_used_as_it_is():
    env = {**STEP_2X2, "SLURM_STEP_NODELIST": "localhost,n2", "SLURM_NODELIST": "localhost,n2"}
    ensure_master_addr(env)
    assert env["MASTER_ADDR"] == "localhost"


def test_unresolvable_names_without_scontrol(tmp_path):
    """No DNS name and no SLURM to ask: one node means every rank is local; several nodes is an error."""
    no_scontrol = {"PATH": str(tmp_path)}  # an empty folder: `scontrol` cannot be found
    single = {**STEP_1_OF_2X2, **no_scontrol, "SLURM_STEP_NODELIST": "visage-no-such-node1"}
    ensure_master_addr(single)
    assert single["MASTER_ADDR"] == "127.0.0.1"
    multi = {**STEP_2X2, **no_scontrol, "SLURM_STEP_NODELIST": "visage-no-such-node[1-2]"}
    with pytest.raises(AllocationError, match="MASTER_ADDR.*visage-no-such-node1"):
        ensure_master_addr(multi)
