"""The task table: every task Visage trains, and where its three parts live.

A task is its config schema (a dataclass extending ``configs.schema.ExperimentConfig`` with a
``check`` classmethod), its LightningModule and its LightningDataModule. The parts are named as
"package.module:Name" strings and imported only when used, so that config loading, ``--print-config``
and the SLURM allocation check never import torch or Lightning. Adding a task is adding its files and
one line here; nothing else in ``trainers/`` or ``slurm/`` names a task.

``tiny`` holds overrides that shrink a bundled config of the task to a run of seconds on a CPU (the
smoke test of every config, ``tests/test_tasks.py``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from configs.schema import ConfigError


@dataclass(frozen=True)
class Task:
    schema: str
    module: str
    datamodule: str
    tiny: tuple[str, ...] = ()


FACE_TINY = ("data.synthetic.identities=8", "data.synthetic.val_identities=4", "data.synthetic.per_identity=4",
             "data.synthetic.size=32", "data.image_size=32", "data.num_workers=0", "data.val_pairs=40")

TASKS: dict[str, Task] = {
    "embedder": Task("modules.embedder_config:EmbedderExperiment", "modules.embedder:TripletEmbedder",
                     "datamodules.faces:FaceIdentityDataModule",
                     tiny=(*FACE_TINY, "data.batch_size=8", "data.sampler.p=4", "data.sampler.k=2", "model.width=8")),
    "recognizer": Task("modules.recognizer_config:RecognizerExperiment", "modules.recognizer:FaceRecognizer",
                       "datamodules.recognition:RecognitionDataModule",
                       tiny=(*FACE_TINY, "data.batch_size=8", "model.embedding_size=16")),
    "detector": Task("modules.detector_config:DetectorExperiment", "modules.detector:FaceDetector",
                     "datamodules.detection:DetectionDataModule",
                     tiny=("data.synthetic.train_scenes=4", "data.synthetic.val_scenes=2", "data.synthetic.width=[96,128]",
                           "data.synthetic.height=[96,128]", "data.synthetic.face_height=[24,60]",
                           "data.synthetic.max_faces=2", "data.crops.chunk_scenes=2", "data.batch_size=16",
                           "model.stage_batch_size={rnet: 16, onet: 16}", "data.num_workers=0", "data.val_batch_size=2",
                           "model.cascade.min_face=24")),
}


def task(name: str | None) -> Task:
    if name is None:
        raise ConfigError(f"task: missing; every config names its task, one of {', '.join(TASKS)}")
    if name not in TASKS:
        raise ConfigError(f"task: unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def load(reference: str):
    """The object a "package.module:Name" reference names."""
    module_name, _, name = reference.partition(":")
    return getattr(importlib.import_module(module_name), name)
