"""The embedded default dataset: procedural aerial-like scenes, generated on the fly.

Eight scene classes drawn from simple generative rules (field stripes, tree
canopies, street grids, rivers, lakes, runways, dunes, parking lots) with random
orientation, scale, colour, illumination, blur and sensor noise. Pairs of
classes are built to be confusable (parking vs residential, river vs lake,
farmland vs desert, runway vs river), so the task is learnable but not trivial.
Generation is deterministic in (seed, image size, images per class) and takes
about a second; nothing is shipped as files.
"""

from __future__ import annotations

import hashlib
import math

import torch

GENERATOR_VERSION = 1
CLASSES = ["farmland", "forest", "residential", "river", "lake", "runway", "desert", "parking"]
DEFAULT_PER_CLASS = 100
DEFAULT_SEED = 2024


def _grid(size: int, angle: float):
    coords = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    cos, sin = math.cos(angle), math.sin(angle)
    return xx * cos + yy * sin, -xx * sin + yy * cos


def _colour(g: torch.Generator, base, jitter=0.08):
    base = torch.tensor(base, dtype=torch.float32)
    return (base + (torch.rand(3, generator=g) - 0.5) * 2 * jitter).clamp(0, 1)


def _blobs(g, size, count, radius):
    coords = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    centres = torch.rand(count, 2, generator=g) * 2.4 - 1.2
    radii = radius * (0.5 + torch.rand(count, generator=g))
    d2 = (xx[None] - centres[:, 0, None, None]) ** 2 + (yy[None] - centres[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * radii[:, None, None] ** 2)).amax(0)


def _paint(canvas, mask, colour):
    return canvas * (1 - mask[None]) + colour[:, None, None] * mask[None]


def _farmland(g, size):
    u, v = _grid(size, float(torch.rand(1, generator=g)) * math.pi)
    img = _colour(g, [0.45, 0.55, 0.3])[:, None, None].expand(3, size, size).clone()
    split = float(torch.rand(1, generator=g)) * 1.2 - 0.6
    for region in (u < split, u >= split):
        freq = 6 + float(torch.rand(1, generator=g)) * 14
        stripes = (torch.sin(v * freq * math.pi + float(torch.rand(1, generator=g)) * 6) > 0).float()
        a = _colour(g, [0.55, 0.6, 0.3], 0.15)
        b = _colour(g, [0.6, 0.5, 0.35], 0.15)
        field = a[:, None, None] * stripes + b[:, None, None] * (1 - stripes)
        img = torch.where(region[None], field, img)
    return img


def _forest(g, size):
    img = _colour(g, [0.12, 0.3, 0.12])[:, None, None].expand(3, size, size).clone()
    for _ in range(3):
        canopy = _blobs(g, size, 40, 0.06 + float(torch.rand(1, generator=g)) * 0.05)
        img = _paint(img, canopy * 0.8, _colour(g, [0.15, 0.4, 0.15], 0.1))
    return img


def _residential(g, size):
    u, v = _grid(size, float(torch.randint(0, 4, (1,), generator=g)) * math.pi / 2 + float(torch.rand(1, generator=g)) * 0.3)
    img = _colour(g, [0.35, 0.45, 0.3])[:, None, None].expand(3, size, size).clone()
    pitch = 0.45 + float(torch.rand(1, generator=g)) * 0.3
    road = ((torch.remainder(u, pitch) < 0.07) | (torch.remainder(v, pitch) < 0.07)).float()
    img = _paint(img, road, _colour(g, [0.65, 0.65, 0.62], 0.05))
    house_u = (torch.remainder(u, pitch / 2) > 0.09) & (torch.remainder(u, pitch / 2) < pitch / 2 - 0.03)
    house_v = (torch.remainder(v + 0.1, pitch / 2) > 0.1) & (torch.remainder(v + 0.1, pitch / 2) < pitch / 2 - 0.04)
    houses = (house_u & house_v).float() * (1 - road)
    return _paint(img, houses, _colour(g, [0.6, 0.3, 0.25], 0.2))


def _river(g, size):
    u, v = _grid(size, float(torch.rand(1, generator=g)) * math.pi)
    img = _colour(g, [0.35, 0.45, 0.25], 0.12)[:, None, None].expand(3, size, size).clone()
    img = _paint(img, _blobs(g, size, 8, 0.2) * 0.5, _colour(g, [0.2, 0.35, 0.15]))
    meander = 0.25 * torch.sin(u * (2 + float(torch.rand(1, generator=g)) * 3) + float(torch.rand(1, generator=g)) * 6)
    width = 0.08 + float(torch.rand(1, generator=g)) * 0.12
    water = torch.sigmoid((width - (v - meander).abs()) * 40)
    return _paint(img, water, _colour(g, [0.15, 0.3, 0.45], 0.08))


def _lake(g, size):
    coords = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    img = _colour(g, [0.35, 0.45, 0.25], 0.12)[:, None, None].expand(3, size, size).clone()
    cx, cy = (torch.rand(2, generator=g) - 0.5).tolist()
    rx, ry = (0.4 + torch.rand(2, generator=g) * 0.6).tolist()
    angle = torch.atan2(yy - cy, xx - cx)
    wobble = 1 + 0.15 * torch.sin(angle * int(torch.randint(2, 6, (1,), generator=g)) + float(torch.rand(1, generator=g)) * 6)
    radius = torch.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    water = torch.sigmoid((wobble - radius) * 12)
    return _paint(img, water, _colour(g, [0.12, 0.28, 0.42], 0.08))


def _runway(g, size):
    u, v = _grid(size, float(torch.rand(1, generator=g)) * math.pi)
    img = _colour(g, [0.5, 0.52, 0.42], 0.1)[:, None, None].expand(3, size, size).clone()
    offset = float(torch.rand(1, generator=g)) * 0.8 - 0.4
    width = 0.12 + float(torch.rand(1, generator=g)) * 0.1
    strip = ((v - offset).abs() < width).float()
    img = _paint(img, strip, _colour(g, [0.3, 0.3, 0.32], 0.05))
    dashes = (((v - offset).abs() < 0.015) & (torch.sin(u * 25) > 0.2)).float()
    img = _paint(img, dashes, torch.tensor([0.95, 0.95, 0.95]))
    taxi = ((v - offset - width - 0.25).abs() < 0.03).float()
    return _paint(img, taxi, _colour(g, [0.35, 0.35, 0.37], 0.05))


def _desert(g, size):
    u, v = _grid(size, float(torch.rand(1, generator=g)) * math.pi)
    base = _colour(g, [0.8, 0.68, 0.45], 0.08)
    freq = 5 + float(torch.rand(1, generator=g)) * 8
    ripple = torch.sin(v * freq * math.pi + 0.8 * torch.sin(u * 3 + float(torch.rand(1, generator=g)) * 6))
    shade = 0.85 + 0.15 * ripple
    return base[:, None, None] * shade[None]


def _parking(g, size):
    u, v = _grid(size, float(torch.randint(0, 4, (1,), generator=g)) * math.pi / 2 + float(torch.rand(1, generator=g)) * 0.2)
    img = _colour(g, [0.42, 0.42, 0.42], 0.06)[:, None, None].expand(3, size, size).clone()
    pitch_u = 0.12 + float(torch.rand(1, generator=g)) * 0.06
    pitch_v = 0.5 + float(torch.rand(1, generator=g)) * 0.2
    slot = (torch.remainder(u, pitch_u) < pitch_u * 0.6) & (torch.remainder(v, pitch_v) < pitch_v * 0.45)
    occupied = (torch.rand(size, size, generator=g) < 0.9)
    for _ in range(3):
        colour = torch.rand(3, generator=g) * 0.8 + 0.1
        pick = (torch.floor(u / pitch_u) + 3 * torch.floor(v / pitch_v)).remainder(3) == _
        img = _paint(img, (slot & pick & occupied).float(), colour)
    lines = (torch.remainder(v, pitch_v) > pitch_v * 0.9).float()
    return _paint(img, lines, torch.tensor([0.85, 0.85, 0.8]))


GENERATORS = [_farmland, _forest, _residential, _river, _lake, _runway, _desert, _parking]


def _nuisance(g, img):
    """Illumination, haze, blur and sensor noise shared by all classes."""
    gain = 0.75 + torch.rand(1, generator=g) * 0.5
    haze = torch.rand(1, generator=g) * 0.15
    img = img * gain + haze
    if float(torch.rand(1, generator=g)) < 0.5:
        kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
        img = torch.nn.functional.conv2d(
            img[:, None], (kernel[:, None] * kernel[None, :])[None, None], padding=1
        )[:, 0]
    img = img + torch.randn(img.shape, generator=g) * 0.06
    return img.clamp(0, 1)


def generate(image_size: int = 32, per_class: int = DEFAULT_PER_CLASS, seed: int = DEFAULT_SEED):
    """Return (uint8 images [N,3,S,S], int64 labels [N], names, classes)."""
    g = torch.Generator().manual_seed(seed)
    images, labels, names = [], [], []
    for label, (name, make) in enumerate(zip(CLASSES, GENERATORS)):
        for index in range(per_class):
            img = _nuisance(g, make(g, image_size))
            images.append((img * 255).round().to(torch.uint8))
            labels.append(label)
            names.append(f"{name}/{index:04d}.png")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), names, list(CLASSES)


def fingerprint(per_class: int = DEFAULT_PER_CLASS, seed: int = DEFAULT_SEED) -> str:
    text = f"stp-synthetic-v{GENERATOR_VERSION}:{per_class}:{seed}:{','.join(CLASSES)}"
    return hashlib.sha256(text.encode()).hexdigest()
