"""The teacher an SNN stage distils from (``--distill``): found through the lineage, checked by sha256."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from stpcli.checkpoint import Checkpoint, load_checkpoint
from stpcli.engine.recipe import TrainConfig
from stpcli.errors import StpError
from stpcli.files import sha256_file
from stpcli.restore import model_from_checkpoint


@dataclass
class Teacher:
    """The network whose outputs an SNN stage distils from (``--distill``)."""

    model: torch.nn.Module
    path: Path
    sha256: str

    def describe(self) -> dict:
        return {"path": str(self.path.resolve()), "sha256": self.sha256}


def resolve_teacher(student: Checkpoint, teacher_path: Path | None, config: TrainConfig) -> Teacher | None:
    """The teacher for ``--distill``: ``--teacher``, else the ANN the student was converted from.

    The default is found through the lineage (the parent of the ``convert``
    entry, or the student itself when it is an ANN) and must still have the
    recorded sha256; the teacher must see the same classes and inputs.
    """
    if teacher_path is not None and config.distill_weight == 0:
        raise StpError("--teacher is used only for distillation; pass --distill W with W > 0")
    if config.distill_weight == 0 or config.epochs == 0:
        return None
    name = student.path.name if student.path is not None else "this checkpoint"
    if teacher_path is None:
        if student.kind == "ann":
            if student.path is None:
                raise StpError("an unsaved ANN cannot be its own teacher; pass --teacher")
            teacher_path = student.path
        else:
            converted = [e for e in student.history if e.get("stage") == "convert" and e.get("parent")]
            if not converted:
                raise StpError(f"{student.path} records no conversion to take a teacher from; pass --teacher")
            parent = converted[-1]["parent"]
            teacher_path = Path(parent["path"])
            if not teacher_path.is_file():
                raise StpError(f"the ANN {name} was converted from, {teacher_path}, is gone; "
                               "pass --teacher")
            if sha256_file(teacher_path) != parent["sha256"]:
                raise StpError(f"the ANN {name} was converted from, {teacher_path}, has changed "
                               "since; pass --teacher to use it anyway")
    ckpt = load_checkpoint(teacher_path)
    if ckpt.record.get("classes") != student.record.get("classes"):
        raise StpError(f"--teacher {teacher_path} was trained on other classes than {name}")
    if ckpt.record.get("input") != student.record.get("input"):
        raise StpError(f"--teacher {teacher_path} expects other inputs (size or normalisation) than "
                       f"{name}")
    return Teacher(model_from_checkpoint(ckpt).eval(), Path(teacher_path), ckpt.sha256 or "")


