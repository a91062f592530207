"""Fine-tuning helpers: load pretrained weights into a new model, freeze and later unfreeze parts.

``load_pretrained`` loads what fits and reports the rest: a head whose shape changed keeps its fresh
initialisation instead of crashing ``load_state_dict`` (which raises on shape mismatches even with
``strict=False``). ``FreezeUnfreeze`` trains the new parts first, then the pretrained backbone with a
smaller learning rate.
"""
from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning


@dataclass
class FinetuneReport:
    """What ``load_pretrained`` did, key by key (model-side names, after prefix rewriting).

    ``loaded``: copied from the file; ``missing``: in the model, absent from the file (they keep their
    initialisation); ``unexpected``: in the file, absent from the model (ignored); ``mismatched``:
    ``(key, shape in file, shape in model)`` for keys in both with different shapes (not loaded; the
    model keeps its initialisation). ``prefix_map`` is the rewriting that was applied (given, or
    found automatically when none was given).
    """

    path: str
    source: str  # "lightning checkpoint", "wrapped state_dict ('model')", "state_dict"
    prefix_map: dict[str, str] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    file_keys: list[str] = field(default_factory=list)  # the file's tensor names, before rewriting
    source_config: dict | None = None  # the config a Visage checkpoint was trained with, if it holds one

    def format(self, max_keys: int = 10) -> str:
        """A readable multi-line summary; each list shows at most ``max_keys`` keys."""
        lines = [f"pretrained weights from {self.path} ({self.source})"]
        if self.prefix_map:
            rewrites = ", ".join(f"{old!r} -> {new!r}" for old, new in self.prefix_map.items())
            lines.append(f"  key prefixes rewritten: {rewrites}")
        lines.append(f"  loaded: {len(self.loaded)} tensors")
        sections = [
            ("shape-mismatched (kept their initialisation)",
             [f"{key}: file {list(saved)} vs model {list(own)}" for key, saved, own in self.mismatched]),
            ("missing from the file (kept their initialisation)", self.missing),
            ("unexpected in the file (ignored)", self.unexpected),
        ]
        for title, items in sections:
            lines.append(f"  {title}: {len(items)}")
            lines.extend(f"    {item}" for item in items[:max_keys])
            if len(items) > max_keys:
                lines.append(f"    ... and {len(items) - max_keys} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _read_checkpoint(path: str, allow_unsafe_pickle: bool) -> object:
    if os.path.isdir(path):
        raise ValueError(f"pretrained weights {path} is a directory, expected one checkpoint file "
                         f"(consolidate a sharded checkpoint first)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise ValueError(f"cannot read pretrained weights {path}: {error}") from error
        if not allow_unsafe_pickle:
            first_line = str(error).splitlines()[0]
            raise ValueError(
                f"{path} holds Python objects that a weights-only load refuses ({first_line}). "
                f"If you trust the file, pass allow_unsafe_pickle=True.") from error
        warnings.warn(f"{path}: weights-only load refused it, loading with full unpickling")
    except Exception as error:  # corrupt or not a torch file: name the file
        raise ValueError(f"cannot read pretrained weights {path}: {error!r}") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"cannot read pretrained weights {path}: {error}") from error


def _unwrap_state_dict(content: object, path: str) -> tuple[dict[str, torch.Tensor], str]:
    """The tensor dictionary inside a Lightning checkpoint, a {'model': ...} wrapper or a plain one."""
    if isinstance(content, Mapping):
        if isinstance(content.get("state_dict"), Mapping):
            wrapped = ("lightning checkpoint" if "pytorch-lightning_version" in content
                       else "wrapped state_dict ('state_dict')")
            content = content["state_dict"]
        elif isinstance(content.get("model"), Mapping):
            content, wrapped = content["model"], "wrapped state_dict ('model')"
        else:
            wrapped = "state_dict"
        tensors = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
        if tensors:
            return tensors, wrapped
    top = list(content)[:10] if isinstance(content, Mapping) else type(content).__name__
    raise ValueError(f"{path} holds no state_dict: expected a dict of tensors, a Lightning checkpoint "
                     f"('state_dict') or a {{'model': state_dict}} wrapper; found {top}")


def _rewrite_prefixes(keys: Sequence[str], prefix_map: Mapping[str, str]) -> dict[str, str]:
    """file key -> model key; the longest matching old prefix wins ('' matches every key)."""
    ordered = sorted(prefix_map.items(), key=lambda item: len(item[0]), reverse=True)
    renamed = {}
    for key in keys:
        for old, new in ordered:
            if key.startswith(old):
                renamed[key] = new + key[len(old):]
                break
        else:
            renamed[key] = key
    return renamed


def _first_components(keys: Sequence[str] | set[str]) -> list[str]:
    return sorted({key.split(".", 1)[0] + "." for key in keys if "." in key})


def _config_of(content: object) -> dict | None:
    """The experiment config a Visage checkpoint stores in its hyperparameters (None for others)."""
    hyper = content.get("hyper_parameters") if isinstance(content, Mapping) else None
    config = hyper.get("config") if isinstance(hyper, Mapping) else None
    return config if isinstance(config, Mapping) else None


def _guess_prefix_map(file_keys: Sequence[str], model_keys: set[str]) -> dict[str, str]:
    """Strip one leading component of the file's keys ('model.', 'module.'), or add one of the
    model's ('net.'), whichever matches the most model keys, if that beats the keys as they are."""
    candidates = ([{first: ""} for first in _first_components(file_keys)]
                  + [{"": first} for first in _first_components(model_keys)])
    best, best_matches = {}, sum(key in model_keys for key in file_keys)
    for mapping in candidates:
        renamed = _rewrite_prefixes(file_keys, mapping)
        matches = sum(renamed[key] in model_keys for key in file_keys)
        if matches > best_matches:
            best, best_matches = mapping, matches
    return best


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike,
                    prefix_map: dict[str, str] | None = None,
                    allow_unsafe_pickle: bool = False) -> FinetuneReport:
    """Copy the tensors of ``path`` that fit into ``model``; report the rest.

    ``path``: a Lightning/Visage ``.ckpt`` (its ``'state_dict'``), a plain state_dict ``.pt``/``.pth``
    or a dict wrapping one under ``'model'``; read with ``torch.load(weights_only=True)`` (set
    ``allow_unsafe_pickle`` to fall back to full unpickling for a trusted file that needs it).
    ``prefix_map``: rewrites key prefixes from the file's names to the model's, e.g.
    ``{"module.": "", "backbone.": "net.backbone."}`` (longest match first; ``""`` matches every key,
    so ``{"": "net."}`` adds a prefix). Without one, the keys are used as they are unless stripping
    one leading component of theirs (``model.``, ``module.``) or adding one of the model's (``net.``)
    matches more of the model's keys; the report shows the rewriting chosen.
    Keys whose shapes differ are not loaded: the model keeps its initialisation there.
    Raises FileNotFoundError / ValueError naming the file when it is missing or unreadable.
    """
    path = os.fspath(path)
    content = _read_checkpoint(path, allow_unsafe_pickle)
    file_state, source = _unwrap_state_dict(content, path)
    model_state = model.state_dict()
    if prefix_map is None:
        prefix_map = _guess_prefix_map(list(file_state), set(model_state))
    renamed = _rewrite_prefixes(list(file_state), prefix_map)
    by_model_key: dict[str, str] = {}
    for file_key, model_key in renamed.items():
        if model_key in by_model_key:
            raise ValueError(f"{path}: keys {by_model_key[model_key]!r} and {file_key!r} both map to "
                             f"{model_key!r} under prefix_map {prefix_map}")
        by_model_key[model_key] = file_key

    report = FinetuneReport(path=path, source=source, prefix_map=dict(prefix_map),
                            file_keys=list(file_state), source_config=_config_of(content))
    to_load = {}
    for model_key, file_key in by_model_key.items():
        tensor = file_state[file_key]
        if model_key not in model_state:
            report.unexpected.append(model_key)
        elif tensor.shape != model_state[model_key].shape:
            report.mismatched.append((model_key, tuple(tensor.shape),
                                      tuple(model_state[model_key].shape)))
        else:
            to_load[model_key] = tensor
            report.loaded.append(model_key)
    report.missing = [key for key in model_state if key not in by_model_key]
    model.load_state_dict(to_load, strict=False)
    return report


def resolve_submodule(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """``root.<path>`` for a dotted attribute path like ``"net.backbone"`` (or ``"layers.0"``)."""
    module, walked = root, type(root).__name__
    for name in path.split("."):
        child = getattr(module, name, None)
        if not isinstance(child, torch.nn.Module):
            children = [child_name for child_name, _ in module.named_children()]
            what = "is not a module" if child is not None else "does not exist"
            raise AttributeError(f"cannot freeze {path!r}: {walked}.{name} {what} "
                                 f"(submodules of {walked}: {children})")
        module, walked = child, f"{walked}.{name}"
    return module


# schedulers whose only per-group state is ``base_lrs`` (and ``lr_lambdas``): a new group can join
SCHEDULERS_THAT_CAN_GROW = (
    torch.optim.lr_scheduler.LambdaLR, torch.optim.lr_scheduler.MultiplicativeLR,
    torch.optim.lr_scheduler.StepLR, torch.optim.lr_scheduler.MultiStepLR,
    torch.optim.lr_scheduler.ConstantLR, torch.optim.lr_scheduler.LinearLR,
    torch.optim.lr_scheduler.ExponentialLR, torch.optim.lr_scheduler.PolynomialLR,
    torch.optim.lr_scheduler.CosineAnnealingLR, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts,
)


class FreezeUnfreeze(BaseFinetuning):
    """Freeze submodules before training, unfreeze them at the start of epoch ``unfreeze_at_epoch``.

    ``modules``: dotted attribute paths on the LightningModule (``"backbone"``, ``"net.backbone"``).
    Paths are checked at setup; a wrong one raises AttributeError naming it.
    ``unfreeze_at_epoch``:
      - N > 0: frozen during epochs 0..N-1; at the start of epoch N they become trainable in a new
        param group of the first optimizer (see the learning rate below);
      - 0: never frozen during a training step: unfrozen at the start of epoch 0, so they train from
        the first step, in their own param group (a differential learning rate);
      - None: never unfrozen (frozen for the whole run, e.g. a linear probe).
    ``lr_factor``: the new group's learning rate is the first group's times ``lr_factor``: its current
    ``lr`` and its ``initial_lr``; the optimizer's learning-rate schedulers are extended to the new
    group, so it follows the same schedule scaled by ``lr_factor``. Supported schedulers:
    ``SCHEDULERS_THAT_CAN_GROW`` (LambdaLR, CosineAnnealingLR, StepLR, ...); another one attached to
    that optimizer (OneCycleLR, CyclicLR, ReduceLROnPlateau, SequentialLR, ...) is an error at fit
    start (torch would fail at its first step after the group was added).
    ``train_bn``: if False (default) BatchNorm layers inside are frozen too, the way Lightning's
    ``BaseFinetuning.freeze`` does it: affine parameters fixed and ``track_running_stats=False``, so
    in training mode they normalise with batch statistics and leave the running ones untouched;
    if True they keep training before epoch N (in whatever group configure_optimizers put them).

    ``configure_optimizers`` may pass all parameters or only the ``requires_grad`` ones (it runs after
    the freeze): frozen parameters have no gradient, so optimizers skip them, and at epoch N the
    modules' parameters are taken out of any group they share with other parameters and put in the
    new group. On resume from a checkpoint Lightning restores the groups and nothing is added twice.
    """

    def __init__(self, modules: str | Sequence[str], unfreeze_at_epoch: int | None = 1,
                 lr_factor: float = 0.1, train_bn: bool = False) -> None:
        super().__init__()
        self.module_paths = [modules] if isinstance(modules, str) else list(modules)
        if not self.module_paths:
            raise ValueError("FreezeUnfreeze needs at least one module path")
        if unfreeze_at_epoch is not None and (not isinstance(unfreeze_at_epoch, int)
                                              or unfreeze_at_epoch < 0):
            raise ValueError(f"unfreeze_at_epoch must be None or an int >= 0, got {unfreeze_at_epoch!r}")
        if not lr_factor > 0:
            raise ValueError(f"lr_factor must be > 0, got {lr_factor!r}")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.lr_factor = float(lr_factor)
        self.train_bn = train_bn

    def _modules(self, pl_module: pl.LightningModule) -> list[torch.nn.Module]:
        return [resolve_submodule(pl_module, path) for path in self.module_paths]

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(self._modules(pl_module), train_bn=self.train_bn)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # restores the groups when resuming
        if self.unfreeze_at_epoch is None or not trainer.optimizers:
            return
        for config in trainer.lr_scheduler_configs:
            if (config.scheduler.optimizer is trainer.optimizers[0]
                    and not isinstance(config.scheduler, SCHEDULERS_THAT_CAN_GROW)):
                raise ValueError(
                    f"FreezeUnfreeze cannot add a param group under {type(config.scheduler).__name__}"
                    f" (it keeps per-group settings of its own); use one of "
                    f"{[cls.__name__ for cls in SCHEDULERS_THAT_CAN_GROW]}")

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int,
                          optimizer: torch.optim.Optimizer) -> None:
        trainer = pl_module.trainer
        if (self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch
                or optimizer is not trainer.optimizers[0]):
            return
        modules = self._modules(pl_module)
        self.make_trainable(modules)
        # identity, not value, decides membership (Lightning's filter_on_optimizer compares values,
        # so two zero-initialised biases would look like the same parameter)
        ours: dict[int, torch.nn.Parameter] = {}
        for param in self.filter_params(modules, train_bn=True, requires_grad=True):
            ours.setdefault(id(param), param)
        placed = set()
        for index, opt in enumerate(trainer.optimizers):
            for group in opt.param_groups:
                ids = [id(p) for p in group["params"]]
                if ids and all(i in ours for i in ids):  # a group of their own: added earlier
                    placed.update(ids)
                elif any(i in ours for i in ids):  # shared with other parameters: take them out
                    group["params"] = [p for p in group["params"] if id(p) not in ours]
                    self._internal_optimizer_metadata.pop(index, None)  # re-recorded after this hook
        params = [param for key, param in ours.items() if key not in placed]
        if params:
            first = optimizer.param_groups[0]
            optimizer.add_param_group({
                "params": params,
                "lr": first["lr"] * self.lr_factor,
                "initial_lr": first.get("initial_lr", first["lr"]) * self.lr_factor,
            })
        self._extend_schedulers(trainer, optimizer)

    @staticmethod
    def _extend_schedulers(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> None:
        """Give the optimizer's schedulers an entry per param group (new groups, or after resume)."""
        groups = optimizer.param_groups
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if scheduler.optimizer is not optimizer:
                continue
            while len(scheduler.base_lrs) < len(groups):
                group = groups[len(scheduler.base_lrs)]
                scheduler.base_lrs.append(group.get("initial_lr", group["lr"]))
            lambdas = getattr(scheduler, "lr_lambdas", None)
            while lambdas is not None and len(lambdas) < len(groups):
                lambdas.append(lambdas[0])
