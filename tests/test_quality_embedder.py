"""Quality gate: the default embedder run learns identities it never saw, and the data is not trivial."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_visage as _visage

EXPERIMENT = "configs/embedder/triplet.yaml"


@pytest.mark.slow
@pytest.mark.ddp
def test_default_run_verifies_unseen_identities_and_untrained_does_not(tmp_path):
    common = [f"run.root={tmp_path}", "logging.wandb=disabled", "trainer.enable_progress_bar=false"]
    # the untrained network (same architecture, same held-out identities) must do poorly
    _visage("validate", EXPERIMENT, *common, "trainer.devices=1", "trainer.strategy=auto", "run.id=untrained")
    untrained = json.loads((tmp_path / "embedder-triplet" / "untrained" / "metrics.json").read_text())["metrics"]
    # the README's main job, capped at 5 minutes of training on 2 CPU processes
    _visage("fit", EXPERIMENT, *common, "trainer.max_time=00:00:05:00", "run.id=trained")
    trained = json.loads((tmp_path / "embedder-triplet" / "trained" / "metrics.json").read_text())
    print(f"untrained accuracy {untrained['val/accuracy']:.4f}, trained {trained['metrics']['val/accuracy']:.4f} "
          f"after {trained['global_step']} steps")
    assert untrained["val/accuracy"] <= 0.75
    assert trained["world_size"] == 2
    assert trained["metrics"]["val/accuracy"] >= 0.90
