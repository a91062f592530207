"""Checkpoints of the sharded classifier across world sizes, through Lightning's real DDP path.

A run trained with 2 gloo ranks (PartialFC: 13 + 12 classes) is resumed with 3 ranks (9 + 8 + 8)
and with 1 rank. Checked against independent computations:
- while training on 2 ranks, each rank's classifier gradient is exactly the single-process
  gradient of the global-batch margin loss for its rows (DDP neither broadcasts nor averages it);
- the resumed runs give the same logits for the same input as the saved weights computed by hand;
- the classifier's momentum is gathered into the checkpoint and resharded at the new world size;
- the lr is rescaled for the new global batch (linear rule) and the schedule continues.

This file is also the training script the test runs (Lightning's DDP launcher re-runs it per rank).
"""
from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

EXPERIMENT = "configs/recognizer/arcface.yaml"
CLASSES, EMBEDDING, IMAGE = 25, 16, 32
PROBE_IMAGES = torch.randn(5, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(7))
PROBE_LABELS = torch.tensor([0, 6, 12, 13, 24])

pytestmark = pytest.mark.ddp


class Probe(pl.Callback):
    """Records, per rank, what the test compares: state at train start, the first step's classifier
    inputs and gradient, and the momentum shard at each checkpoint save."""

    def __init__(self, out: Path):
        self.out, self.inputs, self.first_step_done, self.hook = Path(out), None, False, None

    def _save(self, trainer, what: str, record: dict) -> None:
        torch.save(record, self.out / f"{what}-w{trainer.world_size}-r{trainer.global_rank}.pt")

    def on_train_start(self, trainer, module) -> None:
        fc = module.partial_fc
        optimizer = trainer.optimizers[0]
        model = trainer.strategy.model
        self._save(trainer, "start", {
            "start": fc.start, "end": fc.end, "weight": fc.weight.detach().clone(),
            "logits": module.class_logits(PROBE_IMAGES, PROBE_LABELS),
            "momentum": optimizer.state.get(fc.weight, {}).get("momentum_buffer"),
            "lrs": [group["lr"] for group in optimizer.param_groups], "step": trainer.global_step,
            "ddp_ignored": sorted(getattr(model, "parameters_to_ignore", []))})
        self.hook = fc.register_forward_hook(self._capture)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if not self.first_step_done:  # the first step's input and the backbone it starts from
            self.first_batch = {"images": batch["image"].clone(), "backbone": {
                k: v.clone() for k, v in module.backbone.state_dict().items()}}

    def _capture(self, fc, args, output) -> None:
        self.inputs = (args[0].detach().clone(), args[1].clone(), fc.sampled_classes.clone())

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if self.first_step_done:
            return
        self.first_step_done = True
        self.hook.remove()
        fc = module.partial_fc
        embeddings, labels, columns = self.inputs
        backbone_grads = {name: p.grad.clone() for name, p in module.backbone.named_parameters() if p.grad is not None}
        self._save(trainer, "step", {"embeddings": embeddings, "labels": labels, "columns": columns,
                                     "weight": fc.weight.detach().clone(), "grad": fc.weight.grad.clone(),
                                     "start": fc.start, "end": fc.end, "backbone_grads": backbone_grads,
                                     **self.first_batch})

    def on_save_checkpoint(self, trainer, module, checkpoint) -> None:
        optimizer = trainer.optimizers[0]
        self._save(trainer, "save", {"momentum": optimizer.state[module.partial_fc.weight]["momentum_buffer"].clone(),
                                     "step": trainer.global_step})


def main(argv: list[str]) -> None:
    """Train with the Probe: ``python tests/test_recognizer_world_size.py OUT_DIR key=value ...``."""
    from trainers.build import build_run, choose_run_dir_and_checkpoint, prepare_run_dir  # noqa: PLC0415
    from trainers.cli import _quiet_libraries  # noqa: PLC0415
    from trainers.config import load_config  # noqa: PLC0415

    _quiet_libraries()
    out, overrides = Path(argv[0]), argv[1:]
    cfg = load_config(EXPERIMENT, overrides)
    run_dir, resume_from = choose_run_dir_and_checkpoint(cfg)
    prepare_run_dir(cfg, run_dir)
    run = build_run(cfg, run_dir, resume_from, extra_callbacks=[Probe(out)])
    run.datamodule.prepare_data()
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=resume_from)


# -- the test -------------------------------------------------------------------------------------
def _train(world: int, out: Path, root: Path, data: Path, run_id: str, extra=()) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"data.root={data}", "data.synthetic=null", f"data.image_size={IMAGE}", "data.batch_size=8",
                 "data.batches_per_epoch=3", "data.val_pairs=100", "data.num_workers=0", "data.shuffle_buffer=16",
                 f"model.embedding_size={EMBEDDING}", "model.partial_fc.sample_rate=0.5", "trainer.accelerator=cpu",
                 "trainer.strategy=ddp", f"trainer.devices={world}", "trainer.max_epochs=1",
                 "trainer.enable_progress_bar=false", "logging.wandb=disabled", "logging.pictures=false",
                 "optim.warmup_steps=2", f"run.root={root}", f"run.id={run_id}", *extra]
    from tests.conftest import REPO  # noqa: PLC0415

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, __file__, str(out), *overrides], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-6000:]


def _arcface_logits(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, s=64.0, m=0.5):
    """ArcFace eq. 3 by hand: s cos(theta + m) for the target (cos(theta) - m sin(m) beyond pi - m)."""
    cosine = F.normalize(embeddings.double(), dim=1) @ F.normalize(weight.double(), dim=1).t()
    theta = torch.acos(cosine.clamp(-1 + 1e-7, 1 - 1e-7))
    target = torch.where(theta + m <= math.pi, torch.cos(theta + m), cosine - m * math.sin(m))
    one_hot = F.one_hot(labels, weight.shape[0]).bool()
    return s * torch.where(one_hot, target, cosine)


def _load(out: Path, what: str, world: int) -> list[dict]:
    return [torch.load(out / f"{what}-w{world}-r{r}.pt", weights_only=True) for r in range(world)]


def test_classifier_checkpoint_resumes_at_other_world_sizes(tmp_path):
    from tests.conftest import write_identity_split  # noqa: PLC0415

    data = tmp_path / "faces"
    write_identity_split(data, "train", range(CLASSES), 6, size=IMAGE)
    write_identity_split(data, "val", range(100, 110), 5, size=IMAGE)
    from datamodules.converters.verification_bin import verification_pairs_from_split  # noqa: PLC0415

    pairs = tmp_path / "pairs.bin"  # 40 images: padded and de-duplicated across 3 ranks
    verification_pairs_from_split(data / "val", 20, out_path=pairs)
    root = tmp_path / "runs"
    _finish(_train(2, tmp_path / "w2", root, data, "w2", [f"data.verification=[{pairs}]"]))
    ckpt = tmp_path / "saved-on-2-ranks.ckpt"  # outside the run: resumed runs get run directories of their own
    shutil.copy(root / "recognizer-arcface" / "w2" / "checkpoints" / "last.ckpt", ckpt)
    resumed = [_train(w, tmp_path / f"w{w}", root, data, f"w{w}",
                      [f"run.resume={ckpt}", "trainer.max_epochs=2", f"data.verification=[{pairs}]"])
               for w in (3, 1)]
    for process in resumed:
        _finish(process)

    # 1. two ranks: own shards (no broadcast), exact single-process gradients (no averaging)
    start2, step2 = _load(tmp_path / "w2", "start", 2), _load(tmp_path / "w2", "step", 2)
    assert all("partial_fc.weight" in s["ddp_ignored"] for s in start2)
    assert (start2[0]["start"], start2[0]["end"], start2[1]["start"], start2[1]["end"]) == (0, 13, 13, 25)
    assert not torch.allclose(start2[0]["weight"][:12], start2[1]["weight"])
    weight = torch.cat([s["weight"] for s in step2]).double().requires_grad_()
    embeddings = torch.cat([s["embeddings"] for s in step2])
    labels = torch.cat([s["labels"] for s in step2])
    columns = torch.cat([s["columns"] for s in step2])  # every rank's sampled classes
    assert set(labels.tolist()) <= set(columns.tolist()) and len(columns) == 6 + 6
    logits = _arcface_logits(embeddings, weight, labels)[:, columns]
    target = (columns.unsqueeze(0) == labels.unsqueeze(1)).float().argmax(dim=1)
    F.cross_entropy(logits, target).backward()
    for s in step2:
        torch.testing.assert_close(s["grad"].double(), weight.grad[s["start"]:s["end"]], rtol=1e-4, atol=1e-8)

    # ... and the backbone, averaged by DDP, gets the single-process gradient of the same global loss
    # (each rank's BatchNorm normalises its own batch, so the reference runs one forward per rank)
    from modules.nets.iresnet import iresnet_tiny  # noqa: PLC0415

    net = iresnet_tiny(num_features=EMBEDDING, input_size=IMAGE).double().train()
    net.load_state_dict(step2[0]["backbone"])
    assert all(torch.equal(v, step2[1]["backbone"][k]) for k, v in step2[0]["backbone"].items())
    reference = torch.cat([net(s["images"].double()) for s in step2])
    torch.testing.assert_close(reference.float(), embeddings, rtol=1e-4, atol=1e-5)
    F.cross_entropy(_arcface_logits(reference, weight.detach(), labels)[:, columns], target).backward()
    # float32 rounding, measured against the gradient's overall scale: biases feeding a BatchNorm have a
    # zero gradient in exact arithmetic and float32 noise in practice
    scale = max(float(p.grad.abs().max()) for p in net.parameters() if p.grad is not None)
    for name, param in net.named_parameters():
        if param.grad is not None:
            for s in step2:
                torch.testing.assert_close(s["backbone_grads"][name].double(), param.grad, rtol=1e-3,
                                           atol=1e-5 * scale, msg=name)

    # 2. the checkpoint holds the full classifier and the full momentum (every rank's shard)
    checkpoint = torch.load(ckpt, weights_only=True)
    saved = _load(tmp_path / "w2", "save", 2)
    assert checkpoint["global_step"] == 3 and all(s["step"] == 3 for s in saved)
    full_momentum = checkpoint["recognizer"]["classifier_optimizer_state"]["momentum_buffer"]
    torch.testing.assert_close(full_momentum, torch.cat([s["momentum"] for s in saved]), rtol=0, atol=0)
    full_weight = checkpoint["state_dict"]["partial_fc.weight"]
    assert full_weight.shape == (CLASSES, EMBEDDING)

    # 3. resumed at 3 and 1 ranks: the logits of the saved weights, resharded momentum, rescaled lr
    from modules.nets.iresnet import iresnet_tiny  # noqa: PLC0415

    net = iresnet_tiny(num_features=EMBEDDING, input_size=IMAGE)
    net.load_state_dict({k[len("backbone."):]: v for k, v in checkpoint["state_dict"].items()
                         if k.startswith("backbone.")})
    with torch.no_grad():
        expected = _arcface_logits(net.eval()(PROBE_IMAGES), full_weight, PROBE_LABELS)
    saved_lr = checkpoint["optimizer_states"][0]["param_groups"][0]["lr"]
    for world, bounds in ((3, [(0, 9), (9, 17), (17, 25)]), (1, [(0, 25)])):
        starts = _load(tmp_path / f"w{world}", "start", world)
        for record, (begin, end) in zip(starts, bounds):
            assert (record["start"], record["end"], record["step"]) == (begin, end, 3)
            torch.testing.assert_close(record["logits"].double(), expected, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(record["weight"], full_weight[begin:end], rtol=0, atol=0)
            torch.testing.assert_close(record["momentum"], full_momentum[begin:end], rtol=0, atol=0)
            # lr x (8 * world) / (8 * 2): the linear rule for the new global batch, same point of the schedule
            assert record["lrs"][0] == pytest.approx(saved_lr * world / 2, rel=1e-9)
        with open(root / "recognizer-arcface" / f"w{world}" / "csv" / "metrics.csv") as f:
            rows = [row for row in csv.DictReader(f) if row.get("val/pairs/accuracy")]
        assert rows and 0.0 <= float(rows[-1]["val/pairs/accuracy"]) <= 1.0  # the .bin set, evaluated on every rank


if __name__ == "__main__":
    main(sys.argv[1:])
