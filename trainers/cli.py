"""The `visage` command: fit | validate | test | predict | data | submit | export | compare."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from configs.errors import VisageError
from configs.schema import ConfigError
from trainers import stop_signals
from trainers.config import load_config
from trainers.launched_ranks import TERMINATED_EXIT, blame_other_ranks, end_launched_ranks
from trainers.run_dir import RUN_DIR_ENV

log = logging.getLogger("visage")


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    # evaluation metrics are computed from gathered embeddings: identical on every rank already
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system.*")
    # the training stream gives every worker its own shards and every rank a fixed batch count
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def _check_cluster(cfg) -> None:
    """Trainer settings against the SLURM allocation, before anything heavy starts."""
    from slurm.allocation import check_allocation, check_nodes_outside_slurm, ensure_master_addr  # noqa: PLC0415

    check_allocation(cfg.trainer.num_nodes, cfg.trainer.devices)
    check_nodes_outside_slurm(cfg.trainer.num_nodes)
    ensure_master_addr()


def cmd_fit(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        from omegaconf import OmegaConf  # noqa: PLC0415

        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    _check_cluster(cfg)  # before torch and Lightning are even imported: a bad allocation fails in seconds
    from trainers.build import choose_run_dir_and_checkpoint, prepare_run_dir  # noqa: PLC0415
    from trainers.fitting import fit_experiment  # noqa: PLC0415

    run_dir, resume_from = choose_run_dir_and_checkpoint(cfg)
    # the run is built before anything is written: Lightning's refusal of a trainer setting or a bad
    # finetune.freeze path leaves no run directory (trainers/fitting.py calls this once it is built)
    outcome = fit_experiment(cfg, run_dir, resume_from, prepare_dir=lambda: prepare_run_dir(cfg, run_dir))
    if outcome.code:
        return outcome.code
    if outcome.run is not None and outcome.run.trainer.is_global_zero:
        _print_summary(outcome.run, run_dir, outcome.metrics)
    return 0


def _print_summary(run, run_dir: Path, metrics: dict) -> None:
    """The task's summary and where things are (``run.run_dir`` is the last step's folder in a run of steps)."""
    print(f"\n{run.module.summary(metrics)}\n"
          f"\nrun directory: {run_dir}\nmetrics:       {run_dir / 'metrics.json'}\n"
          f"pictures:      {run.run_dir / 'pictures'}\ncheckpoints:   {run.run_dir / 'checkpoints'}"
          f" (best: {run.checkpoint.best_model_path or 'none'})\ncsv log:       {run.run_dir / 'csv' / 'metrics.csv'}",
          flush=True)


def cmd_evaluate(args) -> int:
    """validate | test | predict a checkpoint with its own config (trainers/evaluate.py)."""
    from trainers.evaluate import evaluate  # noqa: PLC0415

    return evaluate(args, check_cluster=_check_cluster)


def cmd_data(args) -> int:
    from trainers import data_commands  # noqa: PLC0415

    return data_commands.run(args)


def version_line() -> str:
    """``visage X (pytorch-lightning Y, torch Z)``, read from the installed metadata (nothing imported)."""
    from importlib import metadata  # noqa: PLC0415

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"visage {installed('visage')} (pytorch-lightning {installed('pytorch-lightning')}, torch {installed('torch')})"


def add_export_parser(sub) -> None:
    parser = sub.add_parser("export", help="write a checkpoint's embedding network (state_dict, TorchScript or "
                                           "ONNX) and print how to fine-tune from it")
    parser.add_argument("checkpoint", help="a run's checkpoint, e.g. runs/NAME/ID/checkpoints/last.ckpt")
    parser.add_argument("--format", default="state_dict",  # checked by export(): a one-line error
                        help="state_dict (default; finetune.from takes it), torchscript or onnx (needs the onnx "
                             "package: pip install 'visage[onnx]')")
    parser.add_argument("--out", help="output file (default: the run directory's export/backbone.pt, "
                                      ".torchscript.pt or .onnx)")
    parser.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from trainers.export import cmd_export as export_command  # noqa: PLC0415  (torch: only when exporting)

    return export_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visage", description="Train face and human-pose models at cluster scale.")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train (and evaluate) from a config")
    fit.add_argument("config", help="experiment YAML, e.g. configs/embedder/triplet.yaml")
    fit.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. trainer.devices=4")
    fit.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    fit.set_defaults(func=cmd_fit)

    for name, text in (("validate", "evaluate a checkpoint on the split data.val_split names"),
                       ("test", "evaluate as validate does, logged under test/ (data.val_split=test for a held-out "
                                "test split)"),
                       ("predict", "write the embeddings of data.val_split (predictions.pt)")):
        p = sub.add_parser(name, help=text, description=f"{text}. The data and the model are the checkpoint's own "
                           "(its config), with the command line's overrides on top; the files go to a new folder "
                           f"inside the checkpoint's run, <run>/{name}-N.")
        p.add_argument("config", nargs="?", help="experiment YAML for the trainer and logging settings (optional "
                       "with --ckpt: the checkpoint's own config is used)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides on top of the checkpoint's config")
        p.add_argument("--ckpt", help="checkpoint to evaluate (default: the model as the config builds it)")
        p.add_argument("--print-config", action="store_true", help="print the config the evaluation uses and exit")
        if name == "predict":
            p.add_argument("--out", help="predictions file (default: predictions.pt in the evaluation folder)")
        p.set_defaults(func=cmd_evaluate)

    from trainers.data_commands import add_data_parser  # noqa: PLC0415

    add_data_parser(sub)
    try:
        from slurm.cli import add_submit_arguments, run_submit  # noqa: PLC0415

        submit = sub.add_parser("submit", help="render and submit a SLURM job for a config")
        add_submit_arguments(submit)
        submit.set_defaults(func=run_submit)
    except ImportError:  # slurm package not installed in this environment
        pass
    add_export_parser(sub)
    from trainers.detect import add_detect_parser  # noqa: PLC0415

    add_detect_parser(sub)
    from trainers.compare import add_compare_parser  # noqa: PLC0415

    add_compare_parser(sub)
    return parser


def _install_stop_handlers(argv: list[str]) -> None:
    """`visage fit`: SIGTERM and (under SLURM) the requeue signal are handled from here on."""
    if argv[:1] == ["fit"] and "--print-config" not in argv:
        from slurm.allocation import under_slurm  # noqa: PLC0415  (environment variables only)

        stop_signals.install(requeue=under_slurm(os.environ))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow an option (`fit CONFIG --print-config a=1`)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    _install_stop_handlers(list(sys.argv[1:] if argv is None else argv))  # before anything slow
    launcher_run_dir = os.environ.get(RUN_DIR_ENV)
    code = 1
    try:
        _quiet_libraries()
        args = _parse(argv)
        code = int(args.func(args) or 0)
    except VisageError as err:  # errors with a clear message of their own: no traceback noise
        kind = "config error" if isinstance(err, ConfigError) else "error"
        print(f"visage: {kind}: {err}", file=sys.stderr)
        code = err.exit_code
    except stop_signals.StoppedOutsideTraining as stop:  # a signal outside training: said so already
        code = stop.code
    except Exception as err:
        blamed = blame_other_ranks(err)  # a rank this process started failed first: no traceback here
        if blamed is None:
            raise
        code = blamed
    finally:  # the run directory chosen for this command's ranks must not leak into a later command
        _restore_env(RUN_DIR_ENV, launcher_run_dir)
        # ranks this process started end with it: they finish together on success, else are killed
        end_launched_ranks(wait_s=30 if code in (0, TERMINATED_EXIT) else 15)
        stop_signals.uninstall()
        if "wandb" in sys.modules:  # the dashboard run closes with the command, with its exit status
            from trainers.dashboard import finish_dashboard_run  # noqa: PLC0415

            finish_dashboard_run(code)
    return code


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


if __name__ == "__main__":
    sys.exit(main())
