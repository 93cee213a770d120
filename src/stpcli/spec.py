"""The model spec: the small JSON record that rebuilds a model with no other input.

One declaration: ``models.registry.make_spec`` makes it, the model code reads it (typed), and the
checkpoint record validates it with these bounds and ``inconsistency`` when a file is read
(``schema.Record``: pydantic reads the annotations, strictly). No imports from the package.
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict from Python 3.12 on

MAX_IMAGE_SIZE = 1024
MAX_CLASSES = 10_000
MAX_WIDTH = 8.0
MAX_LAYERS_PER_GROUP = 64
MAX_GROUPS = 8  # layer groups of an architecture (VGG 5, ResNet 4)
MAX_CHANNELS = 8192
MAX_HIDDEN = 65_536
MAX_BANDS = 64  # input channels: RGB, or the bands of a multispectral image (Sentinel-2: 13)

Pooling = Literal["avg", "max"]  # defaults.POOLINGS as a type (a test holds the two equal)

STRICT = ConfigDict(strict=True, extra="allow")  # ``true`` is not an integer, ``"32"`` not a number


@with_config(STRICT)
class Units(TypedDict):
    group: Annotated[int, Field(ge=1, le=MAX_GROUPS)]  # 1-based layer group (the paper's stage AS) that holds them (--as)
    count: Annotated[int, Field(ge=1, le=MAX_LAYERS_PER_GROUP)]  # how many (--m)


@with_config(STRICT)
class ModelSpec(TypedDict):
    """What rebuilds a model with no other input; recorded verbatim in checkpoints."""

    arch: Annotated[str, Field(min_length=1, max_length=64)]
    family: Literal["vgg", "resnet"]
    width: Annotated[float, Field(gt=0.0, le=MAX_WIDTH)]
    depths: Annotated[list[Annotated[int, Field(ge=1, le=MAX_LAYERS_PER_GROUP)]], Field(min_length=1, max_length=MAX_GROUPS)]
    channels: Annotated[list[Annotated[int, Field(ge=1, le=MAX_CHANNELS)]], Field(min_length=1, max_length=MAX_GROUPS)]
    hidden: Annotated[list[Annotated[int, Field(ge=1, le=MAX_HIDDEN)]], Field(max_length=4)]
    num_classes: Annotated[int, Field(ge=2, le=MAX_CLASSES)]
    image_size: Annotated[int, Field(ge=16, le=MAX_IMAGE_SIZE)]
    in_channels: Annotated[int, Field(ge=1, le=MAX_BANDS)]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    units: Units | None
    pool: NotRequired[Pooling]  # absent in records before it existed: "avg"


def image_size_problem(family: str, groups: int, image_size: int) -> str | None:
    """Why an architecture of ``family`` with ``groups`` layer groups cannot read images of
    ``image_size`` pixels (None: it can): a VGG halves the map in each group, a ResNet's stem and
    groups need at least 32 pixels."""
    if family == "vgg" and image_size % 2**groups:
        return f"needs an image size that is a multiple of {2**groups} ({groups} 2x2 poolings), got {image_size}"
    if family == "resnet" and image_size < 32:
        return f"needs an image size of at least 32, got {image_size}"
    return None


def inconsistency(spec: ModelSpec) -> str | None:
    """What makes a spec whose fields are each within bounds describe no model (None: nothing)."""
    depths, units = spec["depths"], spec["units"]
    if len(depths) != len(spec["channels"]):
        return "depths and channels must have one entry per layer group"
    if units is not None:
        if units["group"] > len(depths):
            return f"units.group {units['group']} is not a layer group of this model"
        if units["count"] >= depths[units["group"] - 1]:
            return "units.count leaves no original layer in its group"
    return image_size_problem(spec["family"], len(depths), spec["image_size"])
