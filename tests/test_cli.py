"""The `visage` command itself: --version, help for every positional argument, --print-config for
every subcommand that takes a config."""
from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata

import pytest
import yaml

from tests.conftest import REPO
from trainers.cli import build_parser, main

EXPERIMENT = "embedder/triplet.yaml"


def test_version_names_visage_and_lightning():
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "--version"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"visage {metadata.version('visage')} ")
    assert f"pytorch-lightning {metadata.version('pytorch-lightning')}" in result.stdout


def parsers(parser: argparse.ArgumentParser, path: str = "visage"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def test_every_positional_argument_has_help():
    found = 0
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                found += 1
                assert action.help, f"`{path}`: positional argument {action.dest!r} has no help"
    assert found >= 10  # fit, validate, test, predict, submit (config + overrides), data, export


@pytest.mark.parametrize("argv", [
    ["fit", EXPERIMENT], ["validate", EXPERIMENT], ["test", EXPERIMENT], ["predict", EXPERIMENT],
    ["submit", EXPERIMENT, "--cluster", "local"]], ids=lambda argv: argv[0])
def test_print_config_works_for_every_subcommand_that_takes_a_config(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--print-config", "optim.lr=0.05", "trainer.profiler=simple"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["task"] == "embedder" and printed["optim"]["lr"] == 0.05
    assert printed["trainer"]["profiler"] == "simple" and printed["trainer"]["limit_train_batches"] is None
    if argv[0] == "submit":  # what the job runs: the profile's accelerator, the allocation's sizes
        assert printed["trainer"]["accelerator"] == "cpu" and printed["trainer"]["devices"] == 2
    assert not any(tmp_path.iterdir())  # printing writes nothing
