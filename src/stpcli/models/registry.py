"""Architectures by name.

A *spec* is a small JSON-able dict that rebuilds a model with no other input:
family, arch, width multiplier, per-group depths and channels, classifier,
classes, image size and where the Units sit. Checkpoints store it verbatim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from stpcli.defaults import DEFAULT_POOLING, POOLINGS
from stpcli.errors import StpError
from stpcli.spec import MAX_IMAGE_SIZE, MAX_WIDTH, ModelSpec, Pooling, image_size_problem

ARCHITECTURES: dict[str, Callable[[], dict]] = {}


def register(name: str):
    def wrap(factory: Callable[[], dict]):
        ARCHITECTURES[name] = factory
        return factory

    return wrap


@register("vgg11")
def _vgg11() -> dict:
    return {"family": "vgg", "depths": [1, 1, 2, 2, 2], "channels": [64, 128, 256, 512, 512], "hidden": [4096, 4096]}


@register("vgg14")
def _vgg14() -> dict:
    # VGG16's 13 convolutions followed by a single classifier layer (paper, Table 1)
    return {"family": "vgg", "depths": [2, 2, 3, 3, 3], "channels": [64, 128, 256, 512, 512], "hidden": []}


@register("vgg16")
def _vgg16() -> dict:
    return {"family": "vgg", "depths": [2, 2, 3, 3, 3], "channels": [64, 128, 256, 512, 512], "hidden": [4096, 4096]}


@register("resnet18")
def _resnet18() -> dict:
    return {"family": "resnet", "depths": [2, 2, 2, 2], "channels": [64, 128, 256, 512], "hidden": []}


@register("resnet34")
def _resnet34() -> dict:
    return {"family": "resnet", "depths": [3, 4, 6, 3], "channels": [64, 128, 256, 512], "hidden": []}


def scaled(count: int, width: float, floor: int) -> int:
    return max(floor, int(round(count * width)))


def make_spec(arch: str, num_classes: int, image_size: int, width: float = 1.0, dropout: float = 0.5,
              in_channels: int = 3, pool: str = DEFAULT_POOLING) -> ModelSpec:
    if arch not in ARCHITECTURES:
        raise StpError(f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    if not 0 < width <= MAX_WIDTH:
        raise StpError(f"--width must lie in (0, {MAX_WIDTH:g}], got {width}")
    if num_classes < 2:
        raise StpError(f"a classifier needs at least 2 classes, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise StpError(f"--dropout must lie in [0, 1), got {dropout}")
    if not 16 <= image_size <= MAX_IMAGE_SIZE:
        raise StpError(f"--image-size must lie in 16..{MAX_IMAGE_SIZE}, got {image_size}")
    if pool not in POOLINGS:
        raise StpError(f"--pool must be one of {', '.join(POOLINGS)}, got {pool!r}")
    base = ARCHITECTURES[arch]()
    problem = image_size_problem(base["family"], len(base["depths"]), image_size)
    if problem:
        raise StpError(f"{arch} {problem}")
    return {
        "arch": arch,
        "family": base["family"],
        "width": width,
        "depths": list(base["depths"]),
        "channels": [scaled(c, width, 4) for c in base["channels"]],
        "hidden": [scaled(h, width, 16) for h in base["hidden"]],
        "num_classes": num_classes,
        "image_size": image_size,
        "in_channels": in_channels,
        "dropout": dropout,
        "units": None,
        "pool": cast(Pooling, pool),  # one of POOLINGS, checked above
    }



def check_architecture(spec: dict) -> None:
    """A recorded spec must be its architecture's: a known name whose family, depths (Units aside),
    channels and hidden sizes are the ones ``make_spec`` gives at the recorded width."""
    arch = spec["arch"]
    if arch not in ARCHITECTURES:
        raise StpError(f"model.arch {str(arch)[:40]!r} is not an architecture of this stp "
                       f"({', '.join(sorted(ARCHITECTURES))})")
    base, width, units = ARCHITECTURES[arch](), spec["width"], spec.get("units")
    depths = list(base["depths"])
    if units and units["group"] <= len(depths):
        depths[units["group"] - 1] += units["count"]
    expected = {"family": base["family"], "depths": depths, "channels": [scaled(c, width, 4) for c in base["channels"]],
                "hidden": [scaled(h, width, 16) for h in base["hidden"]]}
    for key, value in expected.items():
        if spec[key] != value:
            raise StpError(f"model.{key} is {str(spec[key])[:60]}, not {arch}'s at width {width:g} ({value})")
