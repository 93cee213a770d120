"""A training run's recipe: ``TrainConfig`` with its bounds and checks, the learning-rate schedules
and their milestones, the optimiser, and the (distillation) loss. ``engine/train.py`` runs it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from stpcli.defaults import RECIPES
from stpcli.errors import StpError

if TYPE_CHECKING:  # the recipe is read when the CLI starts; torch only when a run trains
    import torch

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "cosine", "constant")


MAX_EPOCHS = 100_000
# the step schedule's milestones (fractions of a stage's epochs), from the reference code (docs/method.md 5)
ANN_MILESTONES = [0.45, 0.7, 0.9]
SNN_MILESTONES = [0.6, 0.8, 0.9]
MAX_BATCH = 1 << 16
MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed


def check_seed(seed: int, option: str = "--seed") -> None:
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise StpError(f"{option} must be an integer in 0..{MAX_SEED} (2^63 - 1), got {seed!r}")


def _option(name: str):
    return {"option": name}


@dataclass
class TrainConfig:
    """One training run's recipe. Each field's metadata names the command-line option that sets it."""

    epochs: int = field(default=0, metadata=_option("--epochs"))  # 0: no training
    batch_size: int = field(default=64, metadata=_option("--batch-size"))
    optimizer: str = field(default="sgd", metadata=_option("--optimizer"))
    lr: float = field(default=0.05, metadata=_option("--lr"))
    momentum: float = field(default=0.9, metadata=_option("--momentum"))
    weight_decay: float = field(default=5e-4, metadata=_option("--weight-decay"))
    schedule: str = field(default="step", metadata=_option("--lr-schedule"))
    milestones: list[float] | None = None  # step schedule, fractions of the epochs; None: the model's recipe
    lr_decay: float = 0.2  # step schedule: factor at each milestone
    seed: int = field(default=0, metadata=_option("--seed"))
    distill_weight: float = field(default=0.0, metadata=_option("--distill"))
    distill_temperature: float = field(default=4.0, metadata=_option("--distill-temperature"))
    amsgrad: bool | None = field(default=None, metadata=_option("--amsgrad"))  # Adam's variant; None: the recipe's

    def for_recipe(self, recipe: str | None) -> TrainConfig:
        """This config with ``amsgrad`` None replaced by the conversion recipe's (an SNN stage), or
        off (an ANN stage: ``recipe`` None)."""
        if self.amsgrad is not None:
            return self
        return replace(self, amsgrad=RECIPES[recipe].amsgrad if recipe is not None else False)

    def check(self, training_required: bool = False) -> None:
        check_seed(self.seed)
        if not 0 <= self.epochs <= MAX_EPOCHS or (training_required and self.epochs == 0):
            bound = "positive" if training_required else "zero or more"
            raise StpError(f"--epochs must be {bound} (at most {MAX_EPOCHS}), got {self.epochs}")
        if not 0 < self.batch_size <= MAX_BATCH:
            raise StpError(f"--batch-size must be positive (at most {MAX_BATCH}), got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise StpError(f"--lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise StpError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise StpError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (0 <= self.weight_decay < 1):
            raise StpError(f"--weight-decay must lie in [0, 1), got {self.weight_decay}")
        if not (0 <= self.momentum < 1):
            raise StpError(f"--momentum must lie in [0, 1), got {self.momentum}")
        if not 0 <= self.distill_weight <= 1:
            raise StpError(f"--distill must lie in [0, 1], got {self.distill_weight}")
        if not self.distill_temperature > 0 or not math.isfinite(self.distill_temperature):
            raise StpError(f"--distill-temperature must be positive, got {self.distill_temperature}")
        if self.amsgrad is not None and type(self.amsgrad) is not bool:
            raise StpError(f"--amsgrad is a flag (true or false), got {self.amsgrad!r}")

    def recorded(self) -> dict:
        """The options that set this recipe, under their command-line names, as the lineage records
        them; distillation's only when it is on."""
        values = {option[2:]: getattr(self, name) for name, option in TRAIN_OPTIONS.items()}
        if not self.distill_weight:
            del values["distill"], values["distill-temperature"]
        return values

    def lr_at(self, epoch: int) -> float:
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / max(1, self.epochs)))
        if self.schedule == "step":
            passed = sum(1 for m in self.milestones or ANN_MILESTONES if epoch >= round(m * self.epochs))
            return self.lr * self.lr_decay ** passed
        return self.lr


TRAIN_OPTIONS = {f.name: f.metadata["option"] for f in fields(TrainConfig) if "option" in f.metadata}
"""TrainConfig field -> the command-line option that sets it (``schedule`` -> ``--lr-schedule``)."""


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      weight: float, temperature: float) -> torch.Tensor:
    """(1 - w) CE(student, labels) + w tau^2 KL(softmax(teacher / tau) || softmax(student / tau)).

    The tau^2 factor keeps the soft term's gradient on the scale of the hard one
    (Hinton et al., 2015), so ``weight`` means the same at every temperature.
    """
    import torch.nn.functional as F

    hard = F.cross_entropy(logits, labels)
    if weight == 0:
        return hard
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return (1 - weight) * hard + weight * temperature ** 2 * soft


def make_optimizer(model, config: TrainConfig):
    """Thresholds and leaks (scalars near 1, unlike weights near 0.01) are never weight-decayed."""
    import torch

    neuron = [p for n, p in model.named_parameters() if n.endswith((".threshold", ".leak"))]
    others = [p for n, p in model.named_parameters() if not n.endswith((".threshold", ".leak"))]
    groups: list[dict[str, Any]] = [{"params": others}]
    if neuron:
        groups.append({"params": neuron, "weight_decay": 0.0})
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, amsgrad=bool(config.amsgrad))
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

