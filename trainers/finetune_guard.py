"""``finetune.from`` that does not fit must not train silently from scratch.

``load_finetune_weights`` loads what fits (``trainers.finetune.load_pretrained``) and then requires
that at least ``finetune.min_loaded`` of the tensors of the module's embedding network (the part its
``exportable()`` hook names; the whole model for a module without one) came from the file, and at
least one. Otherwise it raises a one-line ConfigError naming the file, the key prefixes the file has
and the model expects, and the fix: a ``finetune.prefix_map`` that makes the names meet, or the
backbone settings the weights were trained with.
"""
from __future__ import annotations

from torch import nn

from configs.schema import ConfigError
from trainers.finetune import FinetuneReport, _first_components, _rewrite_prefixes, load_pretrained


def load_finetune_weights(module: nn.Module, config: dict) -> FinetuneReport:
    """Load ``config['finetune']['from']`` into ``module``; ConfigError when too little of it fits."""
    finetune = config["finetune"]
    try:
        report = load_pretrained(module, finetune["from"], dict(finetune["prefix_map"]) or None)
    except (OSError, ValueError) as err:  # unreadable, not a state_dict, two keys mapped to one name
        raise ConfigError(f"finetune.from: {err}") from None
    require_enough_loaded(report, module, finetune["min_loaded"], config)
    return report


def network_attribute(module: nn.Module) -> str | None:
    """The dotted path of the module's embedding network (its ``exportable()`` hook), if it has one."""
    hook = getattr(module, "exportable", None)
    return hook().attribute if callable(hook) else None


def require_enough_loaded(report: FinetuneReport, module: nn.Module, min_loaded: float, config: dict) -> None:
    attribute = network_attribute(module)
    prefix = f"{attribute}." if attribute else ""
    model_keys = list(module.state_dict())
    expected = [key for key in model_keys if key.startswith(prefix)]
    loaded = [key for key in report.loaded if key.startswith(prefix)]
    if loaded and len(loaded) >= min_loaded * len(expected):
        return
    part = f"the model's {attribute!r}" if attribute else "the model"
    found = ", ".join(f"{p or '(none)'!r} ({n})" for p, n in _prefix_counts(report.file_keys)[:4])
    wanted = ", ".join(repr(p) for p in _first_components(expected)[:4]) or "(none)"
    mismatched = [m for m in report.mismatched if m[0].startswith(prefix)]
    shapes = ""
    if mismatched:
        key, saved, own = mismatched[0]
        shapes = (f"; {len(mismatched)} tensors have other shapes (e.g. {key}: file {list(saved)} vs model "
                  f"{list(own)})")
    raise ConfigError(
        f"finetune.from: {report.path} fills {len(loaded)} of the {len(expected)} tensors of {part}, fewer than "
        f"finetune.min_loaded={min_loaded:g} of them (the run would train from scratch): the file's keys start with "
        f"{found}, the model's with {wanted}{_rewriting(report)}{shapes}; fix: "
        f"{_fix(report, model_keys, prefix, bool(mismatched), config)}")


def _prefix_counts(keys: list[str]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for key in keys:
        first = key.split(".", 1)[0] + "." if "." in key else ""
        counts[first] = counts.get(first, 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])


def _rewriting(report: FinetuneReport) -> str:
    if not report.prefix_map:
        return ""
    return " (after rewriting " + ", ".join(f"{old!r} -> {new!r}" for old, new in report.prefix_map.items()) + ")"


def _fix(report: FinetuneReport, model_keys: list[str], prefix: str, mismatched: bool, config: dict) -> str:
    """A prefix_map that makes more names meet, else the settings the weights were trained with."""
    wanted = {key for key in model_keys if key.startswith(prefix)}
    best, best_matches = None, sum(key in wanted for key in report.loaded)
    for old in ["", *_first_components(report.file_keys)]:
        renamed = _rewrite_prefixes(report.file_keys, {old: prefix})
        matches = sum(name in wanted for name in renamed.values())
        if matches > best_matches:
            best, best_matches = old, matches
    if best is not None and not mismatched:
        return f"finetune.prefix_map={{{best!r}: {prefix!r}}} (names {best_matches} of them)"
    trained_with = _trained_with(report.source_config, config)
    fix = (f"build the network it was trained with: {trained_with}" if trained_with else
           "build the backbone it was trained with (model.backbone, model.embedding_size, data.image_size as "
           "`visage export` printed them)")
    top = _prefix_counts(report.file_keys)[0][0] if report.file_keys else ""
    if prefix and top and top != prefix and not any(key.startswith(prefix) for key in report.file_keys):
        fix += f", with finetune.prefix_map={{{top!r}: {prefix!r}}}"
    return fix


def _trained_with(source: dict | None, config: dict) -> str:
    """The plain model settings (and data.image_size) of the source checkpoint that differ from this config."""
    if not source:
        return ""
    differ = []
    for key, value in (source.get("model") or {}).items():
        mine = config["model"].get(key)
        if key in config["model"] and not isinstance(value, (dict, list)) and not isinstance(mine, (dict, list)) \
                and value != mine:
            differ.append(f"model.{key}={value}")
    image_size = (source.get("data") or {}).get("image_size")
    if image_size is not None and image_size != config["data"].get("image_size"):
        differ.append(f"data.image_size={image_size}")
    return " ".join(differ)
