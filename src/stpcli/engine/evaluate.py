"""Scoring a model on a split part: the confusion matrix and the metrics remote sensing reports.

One pass gives the confusion matrix (rows: true class, columns: predicted) and
the mean cross-entropy; from the matrix come overall accuracy (OA), average
accuracy (AA, the mean of per-class recalls) and Cohen's kappa. DDP-aware.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stpcli.data.loader import InputStats, iterate_batches
from stpcli.engine.runtime import Runtime


@dataclass
class Scores:
    confusion: torch.Tensor  # int64 [C, C], rows true, columns predicted
    loss: float  # mean cross-entropy over the images

    @property
    def images(self) -> int:
        return int(self.confusion.sum())

    @property
    def overall_accuracy(self) -> float:
        return 100.0 * float(self.confusion.diagonal().sum()) / max(1, self.images)

    def per_class(self) -> list[float | None]:
        totals = self.confusion.sum(1)
        return [100.0 * int(c) / int(n) if int(n) else None for c, n in zip(self.confusion.diagonal(), totals)]

    @property
    def average_accuracy(self) -> float:
        present = [value for value in self.per_class() if value is not None]
        return sum(present) / len(present) if present else 0.0

    @property
    def kappa(self) -> float:
        """Cohen's kappa: (p_o - p_e) / (1 - p_e), p_e from the row and column marginals."""
        total = self.images
        if total == 0:
            return 0.0
        matrix = self.confusion.double()
        observed = float(matrix.diagonal().sum()) / total
        expected = float((matrix.sum(1) * matrix.sum(0)).sum()) / total ** 2
        return (observed - expected) / (1 - expected) if expected < 1 else 1.0


@torch.no_grad()
def score(model, images_u8: torch.Tensor, labels: torch.Tensor, num_classes: int, stats: InputStats,
          runtime: Runtime, batch_size: int = 256) -> Scores:
    """Confusion matrix and mean loss over (images, labels), summed over ranks."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=runtime.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    for x, y in iterate_batches(images_u8, labels, batch_size, stats,
                                rank=runtime.rank, world_size=runtime.world_size):
        with runtime.autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes * num_classes)
    model.train(was_training)
    runtime.all_reduce_sum(confusion)
    runtime.all_reduce_sum(loss_sum)
    matrix = confusion.view(num_classes, num_classes).cpu()
    return Scores(matrix, float(loss_sum) / max(1, int(matrix.sum())))


def accuracy(model, images_u8, labels, num_classes, stats, runtime, batch_size=256) -> float:
    return score(model, images_u8, labels, num_classes, stats, runtime, batch_size).overall_accuracy


def accuracy_report(model, images_u8, labels, classes, stats, runtime, batch_size=256) -> dict:
    scores = score(model, images_u8, labels, len(classes), stats, runtime, batch_size)
    return {
        "overall_accuracy": scores.overall_accuracy,
        "average_accuracy": scores.average_accuracy,
        "kappa": scores.kappa,
        "loss": scores.loss,
        "images": scores.images,
        "per_class": dict(zip(classes, scores.per_class())),
        "confusion_matrix": scores.confusion.tolist(),
    }
