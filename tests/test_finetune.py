"""load_pretrained (report contents, formats, prefixes, errors) and the FreezeUnfreeze callback."""
from __future__ import annotations

import argparse
import re

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from trainers.finetune import FinetuneReport, FreezeUnfreeze, load_pretrained, resolve_submodule


class Net(nn.Module):
    def __init__(self, classes: int = 5, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(),
                                      nn.Linear(width, width))
        self.neck = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.neck(self.backbone(x))))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


# ---------------------------------------------------------------- load_pretrained

def test_report_lists_loaded_missing_unexpected_and_mismatched(tmp_path):
    source = Net(classes=7, seed=1)
    saved = {f"model.{key}": value for key, value in snapshot(source).items()}
    del saved["model.neck.bias"]  # missing
    saved["model.extra.weight"] = torch.ones(3)  # unexpected
    path = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": saved, "epoch": 4, "pytorch-lightning_version": pl.__version__}, path)

    model = Net(classes=5, seed=2)
    before = snapshot(model)
    report = load_pretrained(model, path)

    assert isinstance(report, FinetuneReport)
    assert report.source == "lightning checkpoint"
    assert report.prefix_map == {"model.": ""}
    assert sorted(report.loaded) == sorted(
        ["backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias",
         "backbone.1.running_mean", "backbone.1.running_var", "backbone.1.num_batches_tracked",
         "backbone.3.weight", "backbone.3.bias", "neck.weight"])
    assert report.missing == ["neck.bias"]
    assert report.unexpected == ["extra.weight"]
    assert sorted(report.mismatched) == [("head.bias", (7,), (5,)), ("head.weight", (7, 8), (5, 8))]

    after = snapshot(model)
    for key in report.loaded:
        assert torch.equal(after[key], saved[f"model.{key}"]), key
    for key in ("head.weight", "head.bias", "neck.bias"):  # kept their fresh initialisation
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(before["neck.weight"], after["neck.weight"])  # really was overwritten


def test_report_format_counts_and_abbreviates(tmp_path):
    path = tmp_path / "w.pt"
    state = snapshot(Net(classes=7, seed=1))
    state.update({f"extra.{i}": torch.zeros(1) for i in range(4)})
    torch.save(state, path)
    report = load_pretrained(Net(classes=5), path)
    text = report.format(max_keys=2)
    assert str(path) in text and "(state_dict)" in text
    assert f"loaded: {len(report.loaded)} tensors" in text
    assert "shape-mismatched (kept their initialisation): 2" in text
    assert "head.weight: file [7, 8] vs model [5, 8]" in text
    assert "unexpected in the file (ignored): 4" in text
    assert "extra.0" in text and "extra.1" in text and "extra.2" not in text
    assert "... and 2 more" in text
    assert "missing from the file (kept their initialisation): 0" in text
    assert str(report) == report.format()


def test_plain_and_wrapped_state_dicts_load(tmp_path):
    source = Net(seed=3)
    expected = snapshot(source)
    for name, content in [("plain.pth", expected), ("wrapped.pt", {"model": expected, "step": 7})]:
        model = Net(seed=4)
        report = load_pretrained(model, _save(tmp_path / name, content))
        assert sorted(report.loaded) == sorted(expected)
        assert report.missing == report.unexpected == report.mismatched == []
        assert report.prefix_map == {}
        assert all(torch.equal(snapshot(model)[k], v) for k, v in expected.items())
    assert report.source == "wrapped state_dict ('model')"


def _save(path, content):
    torch.save(content, path)
    return str(path)


def test_prefix_map_rewrites_keys(tmp_path):
    backbone = Net(seed=5).backbone
    # a DDP-wrapped backbone saved on its own: keys 'module.0.weight', ...
    path = _save(tmp_path / "ddp_backbone.pt",
                 {f"module.{k}": v for k, v in snapshot(backbone).items()})
    model = Net(seed=6)
    report = load_pretrained(model, path, prefix_map={"module.": "backbone."})
    assert sorted(report.loaded) == sorted(f"backbone.{k}" for k in backbone.state_dict())
    assert sorted(report.missing) == ["head.bias", "head.weight", "neck.bias", "neck.weight"]
    assert report.unexpected == [] and report.mismatched == []
    assert torch.equal(model.backbone[0].weight, backbone[0].weight)
    # '' matches every key (it adds a prefix); the longest matching prefix wins: '3.' -> 'neck.'
    plain = _save(tmp_path / "backbone.pt", snapshot(backbone))
    model = Net(seed=7)
    report = load_pretrained(model, plain, prefix_map={"": "backbone.", "3.": "neck."})
    assert sorted(report.loaded) == sorted(
        [f"backbone.{k}" for k in backbone.state_dict() if not k.startswith("3.")]
        + ["neck.weight", "neck.bias"])
    assert sorted(report.missing) == ["backbone.3.bias", "backbone.3.weight", "head.bias",
                                      "head.weight"]
    assert torch.equal(model.neck.weight, backbone[3].weight)
    with pytest.raises(ValueError, match="both map to 'backbone.3.weight'"):
        load_pretrained(model, plain, prefix_map={"0.": "backbone.3.", "3.": "backbone.3."})
    # without a prefix_map the model's 'backbone.' is found and added
    model = Net(seed=8)
    report = load_pretrained(model, plain)
    assert report.prefix_map == {"": "backbone."}
    assert sorted(report.loaded) == sorted(f"backbone.{k}" for k in backbone.state_dict())
    assert torch.equal(model.backbone[3].weight, backbone[3].weight)
    # keys that match as they are win over any rewriting; a file that matches nothing loads nothing
    report = load_pretrained(Net(seed=8), _save(tmp_path / "net.pt", snapshot(Net(seed=9))))
    assert report.prefix_map == {} and not report.missing
    report = load_pretrained(Net(), _save(tmp_path / "other.pt", {"a.b": torch.zeros(2)}))
    assert report.loaded == [] and report.unexpected == ["a.b"] and report.prefix_map == {}


def test_missing_unreadable_and_unsafe_files_are_named(tmp_path):
    missing = tmp_path / "nowhere" / "weights.ckpt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_pretrained(Net(), missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match=re.escape(str(corrupt))):
        load_pretrained(Net(), corrupt)
    truncated = tmp_path / "truncated.pt"
    torch.save(snapshot(Net()), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match=re.escape(str(truncated))):
        load_pretrained(Net(), truncated)
    no_tensors = _save(tmp_path / "hparams.pt", {"lr": 0.1, "epochs": 3})
    with pytest.raises(ValueError, match="holds no state_dict"):
        load_pretrained(Net(), no_tensors)
    unsafe = _save(tmp_path / "unsafe.ckpt",
                   {"state_dict": snapshot(Net(seed=9)), "hparams": argparse.Namespace(lr=0.1)})
    with pytest.raises(ValueError, match="allow_unsafe_pickle"):
        load_pretrained(Net(), unsafe)
    model = Net(seed=10)
    with pytest.warns(UserWarning, match="full unpickling"):
        report = load_pretrained(model, unsafe, allow_unsafe_pickle=True)
    assert torch.equal(model.head.weight, Net(seed=9).head.weight) and not report.missing


# ---------------------------------------------------------------- FreezeUnfreeze

class Regressor(pl.LightningModule):
    """A tiny regression task; ``only_trainable``: configure_optimizers passes requires_grad
    parameters only (else all); ``scheduler``: None, "lambda" (per step), "cosine" (per epoch) or
    "onecycle"."""

    def __init__(self, only_trainable: bool = True, scheduler: str | None = None) -> None:
        super().__init__()
        self.net = Net(classes=1, seed=11)
        # equal-valued parameters (zeros of shape (8,)) inside and outside the frozen part: the
        # BatchNorm bias and the last backbone bias versus the neck bias
        nn.init.zeros_(self.net.backbone[3].bias)
        nn.init.zeros_(self.net.neck.bias)
        self.only_trainable, self.scheduler = only_trainable, scheduler
        generator = torch.Generator().manual_seed(12)
        self.x = torch.randn(32, 4, generator=generator)
        self.y = torch.randn(32, 1, generator=generator)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x, self.y),
                                           batch_size=8)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad or not self.only_trainable]
        optimizer = torch.optim.SGD(params, lr=0.1)
        if self.scheduler == "lambda":
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule,
                                                             "interval": "step"}}
        if self.scheduler == "cosine":
            return [optimizer], [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)]
        if self.scheduler == "onecycle":
            return [optimizer], [torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=99)]
        return optimizer


class StepRecorder(pl.Callback):
    """Per epoch: did the backbone / head change; per step: the learning rate each parameter was
    stepped with (from its group), and how far its update is from exactly ``-lr * grad``."""

    def __init__(self) -> None:
        self.backbone_changed, self.head_changed, self.running_mean_changed = [], [], []
        self.update_errors, self.step_lrs = [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start = snapshot(pl_module.net)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        self.before = {name: (p.detach().clone(), None if p.grad is None else p.grad.clone(),
                              lr_of.get(id(p)))
                       for name, p in pl_module.net.named_parameters()}
        self.step_lrs.append((lr_of[id(pl_module.net.head.weight)],
                              lr_of.get(id(pl_module.net.backbone[0].weight))
                              if pl_module.net.backbone[0].weight.grad is not None else None))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for name, param in pl_module.net.named_parameters():
            old, grad, lr = self.before[name]
            expected = old if grad is None else old - lr * grad
            self.update_errors.append((name, (param.detach() - expected).abs().max().item()))

    def on_train_epoch_end(self, trainer, pl_module):
        now = snapshot(pl_module.net)
        params = [name for name, _ in pl_module.net.named_parameters()]

        def changed(keys):
            return any(not torch.equal(now[key], self.epoch_start[key]) for key in keys)

        self.backbone_changed.append(changed([k for k in params if k.startswith("backbone.")]))
        self.head_changed.append(changed([k for k in params if k.startswith("head.")]))
        self.running_mean_changed.append(changed(["backbone.1.running_mean"]))

    def backbone_lr_ratios(self) -> list[float]:
        return [backbone / head for head, backbone in self.step_lrs if backbone is not None]

    def worst_update_error(self) -> float:
        return max(error for _, error in self.update_errors)


def make_trainer(callbacks, epochs: int) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks)


def fit(callback: FreezeUnfreeze, epochs: int = 3, **module_options):
    module, recorder = Regressor(**module_options), StepRecorder()
    trainer = make_trainer([callback, recorder], epochs)
    trainer.fit(module)
    return module, recorder, trainer


def backbone_ids(module) -> set[int]:
    return {id(p) for p in module.net.backbone.parameters()}


@pytest.mark.parametrize("only_trainable", [True, False])
def test_backbone_frozen_until_epoch_then_trains_at_scaled_lr(only_trainable, tmp_path):
    module, recorder, trainer = fit(FreezeUnfreeze("net.backbone", unfreeze_at_epoch=2,
                                                   lr_factor=0.1), only_trainable=only_trainable)
    assert recorder.backbone_changed == [False, False, True]
    assert recorder.running_mean_changed == [False, False, True]  # BN frozen with it (train_bn=False)
    assert recorder.head_changed == [True, True, True]
    groups = trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.01])
    assert {id(p) for p in groups[1]["params"]} == backbone_ids(module)  # zero biases included
    assert not backbone_ids(module) & {id(p) for p in groups[0]["params"]}  # each param once
    assert all(p.requires_grad for p in module.parameters())
    # 4 steps per epoch; the backbone stepped in epoch 2 only, always at 0.1 x the head's lr
    assert recorder.backbone_lr_ratios() == pytest.approx([0.1] * 4)
    assert recorder.worst_update_error() < 1e-7  # every step moved params by exactly -lr * grad

    # the Lightning checkpoint of this run loads back with weights_only (prefix 'net.' found)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    fresh = Net(classes=1, seed=99)
    report = load_pretrained(fresh, path)
    assert report.source == "lightning checkpoint" and report.prefix_map == {"net.": ""}
    assert sorted(report.loaded) == sorted(fresh.state_dict())
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in module.net.state_dict().items())
    # and into the LightningModule itself, whose keys carry 'net.' already
    report = load_pretrained(Regressor(), path)
    assert report.prefix_map == {} and not report.missing and not report.unexpected


def test_unfreeze_at_zero_trains_from_the_first_step_at_scaled_lr():
    module, recorder, trainer = fit(FreezeUnfreeze(["net.backbone"], unfreeze_at_epoch=0),
                                    epochs=2)
    assert recorder.backbone_changed == [True, True]
    groups = trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.01])
    # at epoch 0 the backbone's zero biases equal the neck's zero bias already in the optimizer:
    # membership must go by identity (Lightning's filter_on_optimizer compares values)
    assert {id(p) for p in groups[1]["params"]} == backbone_ids(module)
    assert recorder.backbone_lr_ratios() == pytest.approx([0.1] * 8)
    assert recorder.worst_update_error() < 1e-7


def test_unfreeze_never_keeps_backbone_frozen():
    module, recorder, trainer = fit(FreezeUnfreeze("net.backbone", unfreeze_at_epoch=None),
                                    epochs=2)
    assert recorder.backbone_changed == [False, False]
    assert recorder.head_changed == [True, True]
    assert len(trainer.optimizers[0].param_groups) == 1
    assert not any(p.requires_grad for p in module.net.backbone.parameters())


@pytest.mark.parametrize("scheduler", ["lambda", "cosine"])
def test_new_group_follows_the_schedule_scaled(scheduler):
    # torch's schedulers zip their per-group lists with the groups strictly: without extending
    # them, the first scheduler step after the unfreeze raises
    module, recorder, trainer = fit(FreezeUnfreeze("net.backbone", unfreeze_at_epoch=1),
                                    epochs=3, only_trainable=False, scheduler=scheduler)
    assert recorder.backbone_changed == [False, True, True]
    head_lrs = [head for head, _ in recorder.step_lrs]
    assert len(set(head_lrs)) > 2, "the schedule must change the lr during the run"
    assert recorder.backbone_lr_ratios() == pytest.approx([0.1] * 8)
    assert recorder.worst_update_error() < 1e-7
    groups = trainer.optimizers[0].param_groups
    assert groups[1]["initial_lr"] == pytest.approx(0.1 * groups[0]["initial_lr"])


def test_scheduler_with_its_own_group_settings_is_refused():
    trainer = make_trainer([FreezeUnfreeze("net.backbone", unfreeze_at_epoch=1)], epochs=1)
    with pytest.raises(ValueError, match="OneCycleLR"):
        trainer.fit(Regressor(scheduler="onecycle"))


def test_resume_after_unfreeze_restores_the_group_once(tmp_path):
    _, _, trainer = fit(FreezeUnfreeze("net.backbone", unfreeze_at_epoch=1), epochs=2,
                        only_trainable=False, scheduler="lambda")
    path = tmp_path / "resume.ckpt"
    trainer.save_checkpoint(path)
    module, recorder = Regressor(only_trainable=False, scheduler="lambda"), StepRecorder()
    resumed = make_trainer([FreezeUnfreeze("net.backbone", unfreeze_at_epoch=1), recorder], 4)
    resumed.fit(module, ckpt_path=path)
    groups = resumed.optimizers[0].param_groups
    assert len(groups) == 2
    assert {id(p) for p in groups[1]["params"]} == backbone_ids(module)
    assert not backbone_ids(module) & {id(p) for p in groups[0]["params"]}
    assert recorder.backbone_changed == [True, True]  # epochs 2 and 3
    assert recorder.backbone_lr_ratios() == pytest.approx([0.1] * 8)
    assert recorder.worst_update_error() < 1e-7
    # the schedule continued: step 8 of 1 / (1 + step)
    assert recorder.step_lrs[0][0] == pytest.approx(0.1 / 9)


def test_bad_module_path_is_named():
    module = Regressor()
    assert resolve_submodule(module, "net.backbone.3") is module.net.backbone[3]
    with pytest.raises(AttributeError, match=r"'net\.trunk'.*Regressor\.net\.trunk does not exist"
                                             r".*\['backbone', 'neck', 'head'\]"):
        resolve_submodule(module, "net.trunk")
    with pytest.raises(AttributeError, match="is not a module"):
        resolve_submodule(module, "net.head.weight")
    trainer = make_trainer([FreezeUnfreeze("net.trunk")], epochs=1)
    with pytest.raises(AttributeError, match="net.trunk"):
        trainer.fit(module)
    with pytest.raises(ValueError, match="unfreeze_at_epoch"):
        FreezeUnfreeze("net.backbone", unfreeze_at_epoch=-1)
    with pytest.raises(ValueError, match="lr_factor"):
        FreezeUnfreeze("net.backbone", lr_factor=0)
