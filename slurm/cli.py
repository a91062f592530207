"""The ``visage submit`` subcommand (registered by trainers/cli.py)."""
from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from configs.errors import VisageError
from slurm.profile import load_profile
from slurm.render import render_script
from slurm.submit import plan_job, submit, task_configs


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add CONFIG, the key=value overrides and the submit options to ``parser``."""
    parser.add_argument("config", help="experiment config (a path, or one relative to configs/)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                        help="config overrides, passed unchanged to `visage fit` in the job")
    parser.add_argument("--cluster", required=True, metavar="PROFILE",
                        help="cluster profile: a name in configs/cluster/ (e.g. local) or a YAML file path")
    parser.add_argument("--nodes", type=int, help="nodes (default: trainer.num_nodes)")
    parser.add_argument("--gpus-per-node", type=int, metavar="G",
                        help="devices, i.e. training processes, per node (default: trainer.devices)")
    parser.add_argument("--time", help="wall-clock limit, HH:MM:SS or D-HH:MM:SS (default: the profile's)")
    parser.add_argument("--partition", help="partition (default: the profile's)")
    parser.add_argument("--account", help="account to charge (default: the profile's)")
    parser.add_argument("--sweep", action="append", default=[], metavar="key=v1,v2,...",
                        help="run a job array, one task per value (repeat for a grid); "
                             "each task gets its own run directory slurm-<array job>_<task>")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    parser.add_argument("--print-config", action="store_true",
                        help="print the config each task of the job will run with, submit nothing")


def run_submit(args: argparse.Namespace) -> int:
    """Validate, render and submit; print the job id and run directory. Returns the exit code."""
    try:
        profile = load_profile(args.cluster)
        spec = plan_job(args.config, args.overrides, profile, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                        time=args.time, partition=args.partition, account=args.account, sweep=args.sweep)
        if args.print_config:
            print("---\n".join(OmegaConf.to_yaml(cfg, resolve=True) for cfg in task_configs(spec)), end="")
            return 0
        if args.dry_run:
            print(render_script(spec), end="")
            return 0
        result = submit(spec)
    except VisageError as err:
        print(f"visage submit: error: {err}", file=sys.stderr)
        return 2
    world = spec.nodes * spec.devices_per_node
    if spec.is_array:
        print(f"submitted job array {result.job_id}: {len(spec.sweep)} tasks x {spec.nodes} node(s) x "
              f"{spec.devices_per_node} process(es) = world size {world} each (profile {profile.name})")
        for task, (overrides, run_dir) in enumerate(zip(spec.sweep, result.run_dirs)):
            print(f"  task {task}: {' '.join(overrides)}  run directory: {run_dir}")
        print("logs: slurm.out and slurm.err in each run directory")
    else:
        print(f"submitted job {result.job_id}: {spec.nodes} node(s) x {spec.devices_per_node} process(es) = "
              f"world size {world} (profile {profile.name})")
        print(f"run directory: {result.run_dirs[0]}")
        print(f"logs: {result.run_dirs[0] / 'slurm.out'} and slurm.err")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m slurm.cli CONFIG ... --cluster PROFILE``: the same as ``visage submit``."""
    parser = argparse.ArgumentParser(prog="visage submit", description=__doc__)
    add_submit_arguments(parser)
    return run_submit(parser.parse_intermixed_args(argv))


if __name__ == "__main__":
    sys.exit(main())
