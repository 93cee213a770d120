"""Batches from device-resident images, with augmentation done on tensors (any number of bands).

Images stay in their stored type (uint8, or int16/int32/float32 radiometry) on the training
device; each batch is gathered, converted, augmented with one ``grid_sample`` (random resized crop, horizontal/vertical
flips and 90-degree rotations composed into a single affine map) and
normalised. Shuffling and augmentation draw from a generator seeded by
(seed, epoch), so a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


@dataclass(frozen=True)
class InputStats:
    """How stored images become the network's input: ``(x / divisor - mean) / std`` per band
    (8-bit RGB: divisor 255 and ImageNet's mean and std; other radiometry: the training split's)."""

    mean: torch.Tensor  # [1, C, 1, 1]
    std: torch.Tensor
    divisor: float = 255.0

    def to(self, device) -> InputStats:
        return InputStats(self.mean.to(device), self.std.to(device), self.divisor)


def normalise(images: torch.Tensor, stats: InputStats) -> torch.Tensor:
    return (images.float() / stats.divisor - stats.mean) / stats.std


def augment(x: torch.Tensor, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Random resized crop + flips + 90-degree rotations as one affine resampling.

    Under DDP the parameters are drawn for the whole global batch and each rank
    keeps its stride, so ranks never share a draw.
    """
    n, device = x.shape[0], x.device
    rand = torch.rand(n * world_size, 6, generator=generator, device=device)[rank::world_size][:n]
    area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * rand[:, 0]
    log_ratio = math.log(CROP_RATIO[0]) + (math.log(CROP_RATIO[1]) - math.log(CROP_RATIO[0])) * rand[:, 1]
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (1 - width) * (2 * rand[:, 2] - 1)
    centre_y = (1 - height) * (2 * rand[:, 3] - 1)
    flip = torch.where(rand[:, 4] < 0.5, -1.0, 1.0)
    quarter = torch.floor(rand[:, 5] * 4)
    angle = quarter * (math.pi / 2)
    cos, sin = torch.cos(angle).round(), torch.sin(angle).round()
    # output grid -> input grid: scale to the crop, rotate, flip horizontally (vertical flip =
    # horizontal flip + 180-degree rotation, so the pair covers all 8 symmetries of the square)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = width * cos * flip
    theta[:, 0, 1] = -width * sin
    theta[:, 1, 0] = height * sin * flip
    theta[:, 1, 1] = height * cos
    theta[:, 0, 2] = centre_x
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def iterate_batches(
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    stats: InputStats,
    *,
    generator: torch.Generator | None = None,
    train: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised (x, y) batches.

    With ``train`` the order is shuffled and images augmented (``generator``
    required). Under DDP every rank draws the same global permutation and takes
    its stride of each global batch.
    """
    count = images_u8.shape[0]
    device = images_u8.device
    if train:
        order = torch.randperm(count, generator=generator, device=device)
    else:
        order = torch.arange(count, device=device)
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size]
        if train and index.numel() < 2 * world_size:
            continue  # a 1-image batch breaks BatchNorm
        if world_size > 1:
            index = index[rank::world_size]
            if index.numel() == 0:
                continue
        x = normalise(images_u8[index], stats)
        if train:
            assert generator is not None, "training batches are drawn from a seeded generator"
            x = augment(x, generator, rank, world_size)
        yield x, labels[index]
