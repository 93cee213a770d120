"""The checkpoint record and the data-pack record as validating schemas (pydantic).

Every field is typed and bounded here, in one place, and checked before
anything is built from a file: a crafted or damaged record is refused in one
line instead of driving allocation or loops (an image size of 100000, 200000
layers, a 10 MB class name). ``stp schema`` prints the JSON Schema.

pydantic rather than hand-written checks: nested types, strict scalars (``true``
is not an integer, ``"32"`` is not a number), bounds and a published schema
come from one declaration.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator, model_validator

from stpcli.defaults import SURROGATE_GAMMA
from stpcli.errors import StpError
from stpcli.spec import MAX_BANDS, MAX_CLASSES, MAX_IMAGE_SIZE, STRICT, ModelSpec, inconsistency

MAX_TIMESTEPS = 64
MAX_NAME = 256  # characters in a class name
MAX_FILES = 10_000_000
MAX_HISTORY = 1_000
MAX_STATISTIC = 1e12  # |mean| and std (and 1/std) of an input band, so that the normalised input stays finite


def check_timesteps(timesteps: int) -> None:
    if not 1 <= timesteps <= MAX_TIMESTEPS:
        raise StpError(f"--timesteps must lie in 1..{MAX_TIMESTEPS}, got {timesteps}")


Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
# a class name is printed in tables and terminals: no control characters (ESC, newlines, DEL, C1)
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern="^[^\x00-\x1f\x7f-\x9f]+$")]
FileName = Annotated[str, Field(max_length=4096)]
Digest = Annotated[str, Field(max_length=128)]


class _Strict(BaseModel):
    model_config = STRICT


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class InputSpec(_Strict):
    """How an image becomes the network's input: ``(x / divisor - mean) / std`` per band, for the
    bands (1-based indices into the file's bands, their names) read the way ``decoding`` says."""

    image_size: Annotated[int, Field(ge=16, le=MAX_IMAGE_SIZE)]
    mean: Annotated[list[float], Field(min_length=1, max_length=MAX_BANDS)]
    std: Annotated[list[float], Field(min_length=1, max_length=MAX_BANDS)]
    divisor: Annotated[float, Field(gt=0.0, le=1e12)] = 255.0  # 8-bit: 255; Sentinel-2 reflectance: 10000
    normalisation: Literal["imagenet", "dataset", "scale", "stretch"] = "imagenet"
    decoding: Literal["rgb8", "bands"] = "rgb8"  # 8-bit RGB through PIL, or every band as stored
    bands: Annotated[list[Annotated[int, Field(ge=1, le=10_000)]], Field(max_length=MAX_BANDS)] | None = None
    band_names: Annotated[list[Name], Field(max_length=MAX_BANDS)] | None = None

    @model_validator(mode="after")
    def _one_value_per_band(self):
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have one value per band")
        for field_name in ("bands", "band_names"):
            values = getattr(self, field_name)
            if values is not None and len(values) != len(self.mean):
                raise ValueError(f"{field_name} must have one entry per band")
        return self

    @field_validator("mean")
    @classmethod
    def _mean(cls, values):
        if any(not abs(_finite(v)) <= MAX_STATISTIC for v in values):
            raise ValueError(f"every mean must lie in [-{MAX_STATISTIC:g}, {MAX_STATISTIC:g}]")
        return values

    @field_validator("std")
    @classmethod
    def _std(cls, values):
        if any(not (math.isfinite(v) and 1 / MAX_STATISTIC <= v <= MAX_STATISTIC) for v in values):
            raise ValueError(f"every std must lie in [{1 / MAX_STATISTIC:g}, {MAX_STATISTIC:g}]")
        return values

    @field_validator("bands")
    @classmethod
    def _distinct(cls, values):
        if values is not None and len(set(values)) != len(values):
            raise ValueError("every band must be listed once")
        return values


INPUT_DEFAULTS = {name: item.default for name, item in InputSpec.model_fields.items() if not item.is_required()}
"""What a record's ``input`` means by a field it lacks (an older record)."""


def recorded_input(record: dict) -> dict:
    """A record's ``input`` with ``INPUT_DEFAULTS`` for the fields an older record lacks."""
    return {**INPUT_DEFAULTS, **record["input"]}


class DataSource(_Strict):
    kind: Literal["builtin", "folder", "pack"]
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    fingerprint: Digest
    num_files: Annotated[int, Field(ge=0, le=MAX_FILES)]
    content_sha256: Digest | None = None


class SplitFiles(_Strict):
    train: Annotated[list[FileName], Field(max_length=MAX_FILES)]
    val: Annotated[list[FileName], Field(max_length=MAX_FILES)]
    test: Annotated[list[FileName], Field(max_length=MAX_FILES)]

    @model_validator(mode="after")
    def _each_image_once(self):
        seen: set[str] = set()
        for name in (*self.train, *self.val, *self.test):
            if name in seen:  # an image counted twice, or in two parts
                raise ValueError(f"the image {name[:80]!r} appears twice in the split")
            seen.add(name)
        return self


class SplitLists(_Strict):
    """Where a split read with --split-file came from (the lists' paths and their content's hash)."""
    train: Annotated[str, Field(max_length=4096)]
    val: Annotated[str, Field(max_length=4096)] | None
    test: Annotated[str, Field(max_length=4096)]
    sha256: Digest


class Split(_Strict):
    """Drawn by stp (ratios and seed) or read from split lists (``lists``)."""
    train_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    val_ratio: Fraction | None = None
    seed: int | None = None
    lists: SplitLists | None = None
    files: SplitFiles
    sha256: Digest

    @model_validator(mode="after")
    def _drawn_or_listed(self):
        drawn = self.train_ratio is not None and self.val_ratio is not None and self.seed is not None
        if drawn == (self.lists is not None):
            raise ValueError("a split is either drawn (train_ratio, val_ratio, seed) or read from lists")
        return self


class Parent(_Strict):
    path: Annotated[str, Field(max_length=4096)]
    sha256: Digest


class HistoryEntry(_Strict):
    stage: Annotated[str, Field(min_length=1, max_length=64)]
    command: Annotated[str, Field(max_length=100_000)]
    options: dict[str, Any]
    metrics: dict[str, Any] = {}
    parent: Parent | None = None
    finished: Annotated[str, Field(max_length=64)] = ""


class NeuronRecord(_Strict):
    surrogate_gamma: Annotated[float, Field(gt=0.0, le=100.0)] = SURROGATE_GAMMA
    dropout: Fraction = 0.2
    conv_dropout: Fraction = 0.0
    initial_membrane: Fraction = 0.0
    spike_amplitude: Literal["threshold", "binary"] = "threshold"  # absent in records before it existed
    conv_dropout_placement: Literal["all", "unpooled"] = "all"
    recipe: Literal["stp", "reference"] = "stp"


class Quantized(_Strict):
    weight_bits: Literal[8, 4, 2]
    input_layer_bits: Literal[8, 4, 2]


def _consistent_spec(spec: ModelSpec) -> ModelSpec:
    problem = inconsistency(spec)
    if problem:
        raise ValueError(problem)
    return spec


class Record(_Strict):
    format: Literal["stp-checkpoint"]
    format_version: Annotated[int, Field(ge=1)]
    kind: Literal["ann", "snn"]
    model: Annotated[ModelSpec, AfterValidator(_consistent_spec)]
    classes: Annotated[list[Name], Field(min_length=2, max_length=MAX_CLASSES)]
    input: InputSpec
    data: DataSource
    split: Split
    timesteps: Annotated[int, Field(ge=1, le=MAX_TIMESTEPS)] | None = None
    snn: NeuronRecord | None = None
    quantized: Quantized | None = None
    history: Annotated[list[HistoryEntry], Field(max_length=MAX_HISTORY)]

    @model_validator(mode="after")
    def _consistent(self):
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be distinct")
        if len(self.classes) != self.model["num_classes"]:
            raise ValueError(f"{len(self.classes)} classes for a model with {self.model['num_classes']} outputs")
        if self.input.image_size != self.model["image_size"]:
            raise ValueError("input.image_size differs from model.image_size")
        if len(self.input.mean) != self.model["in_channels"]:
            raise ValueError(f"input has {len(self.input.mean)} bands for a model with {self.model['in_channels']} "
                             "input channels")
        if self.kind == "snn" and self.timesteps is None:
            raise ValueError("an SNN checkpoint needs timesteps")
        if self.quantized is not None and (self.kind != "snn" or self.timesteps != 1):
            raise ValueError("a quantized checkpoint is a one-time-step SNN")
        return self


class PackRecord(_Strict):
    format: Literal["stp-data-pack"]
    format_version: Annotated[int, Field(ge=1)]
    classes: Annotated[list[Name], Field(min_length=2, max_length=MAX_CLASSES)]
    names: Annotated[list[FileName], Field(max_length=MAX_FILES)]
    image_size: Annotated[int, Field(ge=16, le=MAX_IMAGE_SIZE)]
    source: dict[str, Any]
    content_sha256: Digest | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be distinct")
        if len(set(self.names)) != len(self.names):
            raise ValueError("image names must be distinct")
        return self


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"the key {duplicate[:40]!r} appears twice")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def strict_json(text: str | bytes) -> Any:
    """JSON as the standard defines it: a key given twice (which one would a reader take?) and
    NaN/Infinity (Python's extension) are errors (ValueError), not silently accepted."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("values nested too deeply") from None


MAX_HEADER = 100_000_000  # bytes of a safetensors header; the library's own limit


def describe_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"]
    return f"field '{where}': {message}" if where else message


def validate(model: type[BaseModel], record: Any, source: str, what: str = "stp record") -> None:
    try:
        model.model_validate(record)
    except ValidationError as exc:
        raise StpError(f"{source} has a corrupt {what} ({describe_error(exc)[:300]})") from None


def json_schema() -> dict:
    return {"checkpoint": Record.model_json_schema(), "data_pack": PackRecord.model_json_schema()}
