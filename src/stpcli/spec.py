"""The shape of a model spec: the small JSON record that rebuilds a model with no other input.

Types only (no imports from the package), so the checkpoint format and the model code both use it;
``schema.ModelSpec`` validates the same fields, with bounds, when a record is read.
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
