"""``trainer.*``: every keyword of ``pl.Trainer``, with Lightning's types, checked at load time, and
passed to the Trainer; the keywords Visage sets are refused with the reason."""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from configs.schema import ConfigError
from configs.trainer_settings import PRECISIONS, VISAGE_ONLY, VISAGE_SETS, TrainerConfig
from trainers.config import CONFIG_DIR, load_config
from trainers.tasks import TASKS

LIGHTNING = {name: p for name, p in inspect.signature(pl.Trainer.__init__).parameters.items() if name != "self"}
FIELDS = {f.name: f for f in dataclasses.fields(TrainerConfig)}
YAML_TYPES = (bool, int, float, str, type(None))
# where Visage's default differs from Lightning's, and why
VISAGE_DEFAULTS = {
    "devices": "one process unless the config asks for more (Lightning: every device of the machine)",
    "precision": "written out: 32-true (Lightning: None, which means 32-true)",
    "max_epochs": "a short run by default (Lightning: 1000)",
    "num_sanity_val_steps": "the first validation comes after training (Lightning: 2 batches before)",
    "log_every_n_steps": "short runs still draw a curve (Lightning: 50)",
    "enable_progress_bar": "written out: true (Lightning: None, which means true)",
    "deterministic": "false: torch's deterministic switch is set off (Lightning: None, left as it is)",
}


def admitted(annotation) -> set[type]:
    """The YAML value types an annotation admits (Literal values by their type; classes YAML cannot
    write, such as Accelerator or timedelta, left out)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing))  # noqa: S307 (a test reading a dataclass's own hints)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(admitted(arg) for arg in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {type(value) for value in typing.get_args(annotation)}
    if annotation is None or annotation is type(None):
        return {type(None)}
    if annotation in YAML_TYPES:
        return {annotation}
    if annotation is typing.Any:
        return {typing.Any}
    return set()


def test_the_section_holds_every_lightning_keyword_or_says_why_not():
    """A Lightning upgrade that adds or removes a keyword fails here until configs/trainer_settings.py follows."""
    ours = set(FIELDS) - set(VISAGE_ONLY)
    assert not ours & set(VISAGE_SETS)
    assert ours | set(VISAGE_SETS) == set(LIGHTNING), (
        f"not in the schema: {sorted(set(LIGHTNING) - ours - set(VISAGE_SETS))}; "
        f"not Lightning's: {sorted((ours | set(VISAGE_SETS)) - set(LIGHTNING))}")


@pytest.mark.parametrize("name", sorted(set(FIELDS) - set(VISAGE_ONLY)))
def test_every_setting_has_a_type_lightning_accepts(name):
    ours, theirs = admitted(FIELDS[name].type), admitted(LIGHTNING[name].annotation)
    assert ours, f"{name}: the schema's type {FIELDS[name].type} admits no YAML value"
    if typing.Any in ours:  # devices, max_time, val_check_interval: checked by check_trainer_settings
        assert str in theirs and len(theirs) >= 2, (name, theirs)
        return
    # an int is a float to Lightning's float settings (gradient_clip_val), as in Python
    assert ours - theirs <= ({int} if float in theirs else set()), (name, ours, theirs)
    assert (type(None) in ours) <= (type(None) in theirs), f"{name}: null is not a value Lightning takes"


@pytest.mark.parametrize("name", sorted(set(FIELDS) - set(VISAGE_ONLY)))
def test_defaults_are_lightnings_unless_visage_says_why(name):
    ours, theirs = FIELDS[name].default, LIGHTNING[name].default
    if name in VISAGE_DEFAULTS:
        assert ours != theirs, f"{name}: the default is Lightning's now; drop it from VISAGE_DEFAULTS"
    else:
        assert ours == theirs and type(ours) is type(theirs), (name, ours, theirs)


def test_precision_choices_are_lightnings():
    annotation = LIGHTNING["precision"].annotation
    literals = {value for arg in typing.get_args(annotation) if typing.get_origin(arg) is typing.Literal
                for value in typing.get_args(arg)}
    assert set(PRECISIONS) <= literals


@pytest.mark.parametrize("key", sorted(VISAGE_SETS))
def test_a_keyword_visage_sets_is_refused_with_the_reason(key):
    with pytest.raises(ConfigError) as err:
        load_config("embedder/triplet.yaml", [f"trainer.{key}=1"])
    message = str(err.value)
    assert message.startswith(f"trainer.{key}: cannot be set in a config: ") and message == message.strip()
    assert "\n" not in message


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_epoch=3", "trainer.max_epoch: unknown key; did you mean trainer.max_epochs?"),
    ("trainer.limit_train_batch=3", "did you mean trainer.limit_train_batches?"),
    ("trainer.detect_anomalies=true", "did you mean trainer.detect_anomaly?"),
    ("data.synthetic.identitis=3", "data.synthetic.identitis: unknown key; did you mean data.synthetic.identities?"),
    ("trainer.zzz=1", "trainer.zzz: unknown key; known keys of trainer: accelerator, strategy, devices"),
])
def test_an_unknown_key_names_the_closest_known_one(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config("embedder/triplet.yaml", [override])
    assert expected in str(err.value)


def test_an_int_limit_stays_a_count_of_batches_and_a_float_a_fraction():
    cfg = load_config("embedder/triplet.yaml", ["trainer.limit_val_batches=1", "trainer.limit_train_batches=0.5"])
    assert cfg.trainer.limit_val_batches == 1 and isinstance(cfg.trainer.limit_val_batches, int)
    assert isinstance(cfg.trainer.limit_train_batches, float)


SETTINGS = ["trainer.profiler=simple", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
            "trainer.detect_anomaly=true", "trainer.gradient_clip_val=0.5", "trainer.gradient_clip_algorithm=value",
            "trainer.max_time='00:00:30:00'", "trainer.min_epochs=1", "trainer.enable_model_summary=false",
            "trainer.inference_mode=false", "trainer.benchmark=false", "trainer.reload_dataloaders_every_n_epochs=2",
            "trainer.limit_test_batches=0.25", "trainer.overfit_batches=0"]


def test_every_setting_reaches_the_trainer(tmp_path, monkeypatch):
    """The keywords pl.Trainer receives are the config's, each one (recorded around the real __init__)."""
    from trainers.build import build_run

    received = {}
    real_init = pl.Trainer.__init__

    def recording_init(self, *args, **kwargs):
        received.update(kwargs)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", recording_init)
    cfg = load_config("embedder/triplet.yaml", [*TASKS["embedder"].tiny, "trainer.devices=1", "trainer.strategy=auto",
                                                "logging.wandb=disabled", *SETTINGS])
    run = build_run(cfg, tmp_path / "run")
    for key in set(FIELDS) - set(VISAGE_ONLY) - {"strategy", "enable_progress_bar"}:
        assert received[key] == cfg.trainer[key], key
    # the bar only where stdout is a terminal (trainers/progress.py): pytest's captured stdout is none
    assert received["enable_progress_bar"] is False
    assert set(VISAGE_SETS) - {"enable_checkpointing", "barebones", "plugins"} <= set(received)
    assert received["use_distributed_sampler"] is False and received["default_root_dir"] == str(tmp_path / "run")
    trainer = run.trainer
    assert type(trainer.profiler).__name__ == "SimpleProfiler" and trainer._detect_anomaly
    assert trainer.limit_train_batches == 3 and trainer.limit_val_batches == 1 and trainer.limit_test_batches == 0.25
    assert trainer.gradient_clip_val == 0.5 and trainer.gradient_clip_algorithm == "value"
    assert trainer.fit_loop.min_epochs == 1 and trainer.reload_dataloaders_every_n_epochs == 2


def test_a_limit_on_training_batches_changes_what_a_fit_runs(tmp_path):
    from trainers.build import build_run

    cfg = load_config("embedder/triplet.yaml", [*TASKS["embedder"].tiny, "trainer.devices=1", "trainer.strategy=auto",
                                                "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                                                "trainer.limit_val_batches=1", "logging.wandb=disabled",
                                                "logging.pictures=false", f"run.root={tmp_path}"])
    run = build_run(cfg, tmp_path / "run")
    run.datamodule.prepare_data()
    run.trainer.fit(run.module, datamodule=run.datamodule)
    assert run.datamodule.batches_per_epoch() > 1  # without the limit an epoch is longer
    assert run.trainer.global_step == 1


# the bundled experiments on synthetic data (a recipe that needs a real dataset is a GPU recipe)
CONFIGS = sorted(p for name in TASKS for p in (CONFIG_DIR / name).glob("*.yaml") if "root: ???" not in p.read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults, on a machine without a GPU")
@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.stem}" for p in CONFIGS])
def test_bundled_configs_pick_the_cpu_with_their_defaults_on_a_cpu_machine(path: Path):
    """accelerator is auto in every bundled config; on a CPU machine that is the CPU, the config's
    process count, 32-bit, and DDP over gloo when there are several processes."""
    from configs.schema import to_plain
    from trainers.build import _strategy
    from trainers.lightning_trainer import make_trainer

    cfg = load_config(str(path))
    assert cfg.trainer.accelerator == "auto"
    trainer = make_trainer(to_plain(cfg)["trainer"], strategy=_strategy(cfg.trainer), logger=False,
                           enable_checkpointing=False)
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"
    assert trainer.num_devices == cfg.trainer.devices and trainer.precision == "32-true"
    if cfg.trainer.devices > 1:
        assert trainer.strategy._get_process_group_backend() == "gloo"
