"""Accuracy over a split part, overall and per class (DDP-aware)."""

from __future__ import annotations

import torch

from stpcli.data.loader import iterate_batches
from stpcli.engine.runtime import Runtime


@torch.no_grad()
def class_counts(model, images_u8: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 mean: torch.Tensor, std: torch.Tensor, runtime: Runtime, batch_size: int = 256):
    """(correct per class, total per class) as int64 tensors, summed over ranks."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(num_classes, dtype=torch.int64, device=runtime.device)
    total = torch.zeros(num_classes, dtype=torch.int64, device=runtime.device)
    for x, y in iterate_batches(images_u8, labels, batch_size, mean, std,
                                rank=runtime.rank, world_size=runtime.world_size):
        with runtime.autocast():
            prediction = model(x).argmax(1)
        total += torch.bincount(y, minlength=num_classes)
        correct += torch.bincount(y[prediction == y], minlength=num_classes)
    model.train(was_training)
    runtime.all_reduce_sum(correct)
    runtime.all_reduce_sum(total)
    return correct.cpu(), total.cpu()


def accuracy(model, images_u8, labels, num_classes, mean, std, runtime, batch_size=256) -> float:
    correct, total = class_counts(model, images_u8, labels, num_classes, mean, std, runtime, batch_size)
    return 100.0 * float(correct.sum()) / max(1, int(total.sum()))


def accuracy_report(model, images_u8, labels, classes, mean, std, runtime, batch_size=256) -> dict:
    correct, total = class_counts(model, images_u8, labels, len(classes), mean, std, runtime, batch_size)
    per_class = {
        name: (100.0 * int(c) / int(n) if int(n) else None)
        for name, c, n in zip(classes, correct.tolist(), total.tolist())
    }
    return {
        "accuracy": 100.0 * float(correct.sum()) / max(1, int(total.sum())),
        "images": int(total.sum()),
        "per_class": per_class,
    }
