"""The shape of a model spec: the small JSON record that rebuilds a model with no other input.

Types and the image size rule only (no imports from the package), so the checkpoint format and the
model code both use them; ``schema.ModelSpec`` validates the same fields, with bounds, when a record
is read, and ``models.registry.make_spec`` makes them.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class Units(TypedDict):
    group: int  # 1-based layer group (the paper's stage AS) that holds the Units (--as)
    count: int  # how many (--m)


class ModelSpec(TypedDict):
    """What rebuilds a model with no other input; recorded verbatim in checkpoints (schema.ModelSpec
    validates it when read)."""

    arch: str
    family: str
    width: float
    depths: list[int]
    channels: list[int]
    hidden: list[int]
    num_classes: int
    image_size: int
    in_channels: int
    dropout: float
    units: Units | None
    pool: NotRequired[str]  # "avg" or "max" (absent in records before it existed: "avg")


def image_size_problem(family: str, groups: int, image_size: int) -> str | None:
    """Why an architecture of ``family`` with ``groups`` layer groups cannot read images of
    ``image_size`` pixels (None: it can): a VGG halves the map in each group, a ResNet's stem and
    groups need at least 32 pixels."""
    if family == "vgg" and image_size % 2**groups:
        return f"needs an image size that is a multiple of {2**groups} ({groups} 2x2 poolings), got {image_size}"
    if family == "resnet" and image_size < 32:
        return f"needs an image size of at least 32, got {image_size}"
    return None
