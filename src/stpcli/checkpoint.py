"""The checkpoint format: one ``.safetensors`` file per pipeline stage.

Tensors are the model's state; the metadata holds one JSON record under the key
``stp`` with everything needed to continue the pipeline from this file alone:
kind, model spec, classes, input, data source and split, time steps, the stage
history (lineage with each parent's sha256), tool version and creation time.

Loading never executes code: safetensors only, no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from stpcli import __version__
from stpcli.errors import StpError
from stpcli.files import atomic_save_tensors, first_line, now_iso, readable_file, sha256_file
from stpcli.schema import MAX_HEADER, Record, strict_json, validate
from stpcli.spec import ModelSpec

if TYPE_CHECKING:  # reading a checkpoint's record and tensor table needs no torch (stp info)
    import torch

FORMAT_NAME = "stp-checkpoint"
FORMAT_VERSION = 2  # 2: a Unit's layer group is units.group (format 1 said units.stage)
METADATA_KEY = "stp"
KINDS = ("ann", "snn")


class RecordView:
    """What a checkpoint's JSON record says, for ``Checkpoint`` and ``CheckpointFile``.

    ``record`` keys: format, format_version, kind, model, classes, input, data,
    split, timesteps (SNN), snn (neuron and conversion settings), history,
    tool_version, created.
    """

    record: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def model_spec(self) -> ModelSpec:
        return cast(ModelSpec, self.record["model"])  # validated against schema.ModelSpec when read

    @property
    def timesteps(self) -> int | None:
        return self.record.get("timesteps")

    @property
    def classes(self) -> list[str]:
        return self.record["classes"]

    @property
    def history(self) -> list[dict]:
        return self.record["history"]


@dataclass
class Checkpoint(RecordView):
    """A model's tensors plus its JSON record."""

    tensors: dict[str, torch.Tensor]
    record: dict[str, Any]
    path: Path | None = None
    sha256: str | None = None


# safetensors dtypes: numpy's for reading values without torch (bf16: its 16 bits, checked by exponent)
_NUMPY_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
                 "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


@dataclass
class CheckpointFile(RecordView):
    """A checkpoint as its file holds it, read without torch: the record, each tensor's dtype and
    shape, and the bytes (``load_checkpoint`` turns them into tensors)."""

    record: dict[str, Any]
    path: Path
    sha256: str
    tensors: dict[str, tuple[str, tuple[int, ...], int, int]]  # name -> (dtype, shape, start, end) in ``data``
    data: bytes = field(repr=False)

    def array(self, name: str) -> np.ndarray:
        dtype, shape, start, end = self.tensors[name]
        return np.frombuffer(self.data, dtype=_NUMPY_DTYPES[dtype], count=(end - start) // np.dtype(
            _NUMPY_DTYPES[dtype]).itemsize, offset=start).reshape(shape)

    def scalar(self, name: str) -> float:
        values = self.array(name).reshape(-1)
        if self.tensors[name][0] == "BF16":  # a bfloat16 is the top half of a float32
            values = (values.astype(np.uint32) << 16).view(np.float32)
        return float(values[0])


@dataclass
class StageEntry:
    """One line of the lineage: what made a checkpoint, from which parent."""

    stage: str
    command: str
    options: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    parent_path: str | None = None
    parent_sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "command": self.command,
            "options": self.options,
            "metrics": self.metrics,
            "parent": None
            if self.parent_path is None
            else {"path": self.parent_path, "sha256": self.parent_sha256},
            "finished": now_iso(),
        }


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> str:
    """Write ``ckpt`` atomically; returns the new file's sha256."""
    record = dict(ckpt.record)
    record["format"], record["format_version"] = FORMAT_NAME, FORMAT_VERSION  # a child of an older file too
    record["tool_version"] = __version__
    record["created"] = now_iso()
    validate_record(record, source=str(path))
    check_finite(ckpt.tensors, f"the checkpoint for {path}")
    atomic_save_tensors(ckpt.tensors, {METADATA_KEY: json.dumps(record)}, path)
    ckpt.record = record
    ckpt.path = Path(path)
    ckpt.sha256 = sha256_file(path)
    return ckpt.sha256


def read_record(path: str | Path) -> dict[str, Any]:
    """The JSON record of a checkpoint, without loading its tensors."""
    path = _existing_file(path)
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            header = handle.read(int.from_bytes(prefix, "little")) if len(prefix) == 8 else b""
    except OSError as exc:
        raise StpError(f"cannot read {path}: {exc.strerror or first_line(exc)}") from exc
    return _parse_record(_metadata(_header(prefix + header, path), path), path)


def read_checkpoint(path: str | Path, expect_kind: str | None = None) -> CheckpointFile:
    """A checkpoint's record and tensor table from one read of the file (which also gives its
    sha256), checked without torch: other tools' files, future versions, a name given twice, a
    record that fails its schema, tensors that are not the recorded model's (names and shapes),
    out of their file, or NaN/infinite."""
    path = _existing_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StpError(f"cannot read {path}: {exc.strerror or first_line(exc)}") from exc
    header = _header(data, path)
    record = _parse_record(_metadata(header, path), path)
    base = 8 + int.from_bytes(data[:8], "little")  # where the tensors' bytes begin
    tensors = _tensor_table(header, len(data) - base, base, path)
    check_tensors_match_record(record, {name: entry[1] for name, entry in tensors.items()}, path)
    file = CheckpointFile(record, path, hashlib.sha256(data).hexdigest(), tensors, data)
    check_values(file)
    if expect_kind is not None and record["kind"] != expect_kind:
        raise StpError(
            f"{path} is an {record['kind'].upper()} checkpoint; this command needs an "
            f"{expect_kind.upper()} checkpoint"
        )
    return file


def load_checkpoint(path: str | Path, expect_kind: str | None = None) -> Checkpoint:
    """A checkpoint with its tensors (``read_checkpoint``'s checks, then torch tensors)."""
    from safetensors.torch import load as load_tensors

    file = read_checkpoint(path, expect_kind)
    try:
        tensors = load_tensors(file.data)
    except Exception as exc:  # safetensors raises several types for bad payloads
        raise StpError(f"{file.path} is not a readable safetensors file ({first_line(exc)})") from exc
    return Checkpoint(tensors=tensors, record=file.record, path=file.path, sha256=file.sha256)


def check_tensors_match_record(record: dict, shapes: dict[str, tuple[int, ...]], source: str | Path) -> None:
    """Compare a file's tensor names and shapes with the model its record describes, worked out
    from the layer plan (``models.plan.tensor_shapes``): a record describing a huge model never
    allocates it, and a file whose tensors are not its record's model is refused by name."""
    from stpcli.models.plan import build_plan, tensor_shapes
    from stpcli.spiking.settings import SpikingSettings

    binary = record["kind"] == "snn" and SpikingSettings.from_record(record.get("snn")).binary
    expected = tensor_shapes(build_plan(cast(ModelSpec, record["model"])), record["kind"], binary,
                             quantized=bool(record.get("quantized")))
    if expected == shapes:
        return
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or extra:
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
    else:
        key = next(k for k in expected if expected[k] != shapes[k])
        detail = f"{key} has shape {list(shapes[key])}, the model needs {list(expected[key])}"
    raise StpError(f"{source}: tensors do not match the recorded model ({detail})")


def _header(data: bytes, path: Path) -> dict:
    """A safetensors header (8-byte length, then JSON) read as strict JSON: a tensor or key named
    twice is refused, not resolved by the library."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if not 2 <= size <= MAX_HEADER or len(data) < 8 + size:
        raise StpError(f"{path} is not a readable safetensors file (no valid header)")
    try:
        header = strict_json(data[8:8 + size])
    except ValueError as exc:  # JSONDecodeError included
        raise StpError(f"{path} is not a readable safetensors file (header: {first_line(exc)})") from None
    if not isinstance(header, dict):
        raise StpError(f"{path} is not a readable safetensors file (its header is not an object)")
    return header


def _tensor_table(header: dict, payload: int, base: int, path: Path) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """name -> (dtype, shape, start, end) with the offsets made absolute; every entry checked."""
    table = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(v) for v in entry["shape"]), entry["data_offsets"]
            size = np.dtype(_NUMPY_DTYPES[dtype]).itemsize * int(np.prod(shape, dtype=np.int64))
            valid = type(start) is int and type(end) is int and 0 <= start <= end <= payload and end - start == size
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise StpError(f"{path} is not a readable safetensors file (tensor {str(name)[:60]!r} is malformed)")
        table[name] = (dtype, shape, base + start, base + end)
    return table


def _metadata(header: dict, path: Path) -> dict[str, str]:
    metadata = header.get("__metadata__")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise StpError(f"{path} is not a readable safetensors file (its metadata is not a map of strings)")
    return metadata


def _existing_file(path: str | Path) -> Path:
    return readable_file(path)


def _parse_record(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    if METADATA_KEY not in metadata:
        from stpcli.data.pack import PACK_KEY, pack_summary
        if PACK_KEY in metadata:
            raise StpError(f"{path} is {pack_summary(metadata[PACK_KEY])}, not a checkpoint: pass it as --data")
        raise StpError(f"{path} is a safetensors file but not an stp checkpoint (no '{METADATA_KEY}' metadata)")
    try:
        record = strict_json(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise StpError(f"{path} has a corrupt stp record ({exc.msg})") from exc
    except ValueError as exc:  # a duplicated key, NaN or Infinity
        raise StpError(f"{path} has a corrupt stp record ({exc})") from exc
    validate_record(_upgrade(record), source=str(path))
    return record


def _upgrade(record: Any) -> Any:
    """An older format's record in this format's words (in memory; the file and its sha256 stay)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
        return record
    version = record.get("format_version")
    if type(version) is int and version == 1:  # not True, which equals 1
        model = record.get("model")
        units = model.get("units") if isinstance(model, dict) else None
        if isinstance(units, dict) and "stage" in units and "group" not in units:
            units["group"] = units.pop("stage")
        record["format_version"] = 2
    return record


def validate_record(record: Any, source: str) -> None:
    """Refuse other tools' files and future versions by name, then check every field (stpcli.schema)."""
    if not isinstance(record, dict):
        raise StpError(f"{source} has a corrupt stp record (not an object)")
    if record.get("format") != FORMAT_NAME:
        raise StpError(f"{source} was not written by stp (format {str(record.get('format'))[:40]!r})")
    version = record.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise StpError(
            f"{source} uses checkpoint format {version}, newer than this stp "
            f"({__version__}) reads ({FORMAT_VERSION}); upgrade stp"
        )
    if record.get("kind") not in KINDS:
        raise StpError(f"{source} has an unknown kind {str(record.get('kind'))[:40]!r}")
    if record["kind"] == "snn" and record.get("timesteps") is None:
        raise StpError(f"{source} is an SNN checkpoint without time steps")
    validate(Record, record, source)
    from stpcli.models.registry import check_architecture

    try:
        check_architecture(record["model"])
    except StpError as exc:
        raise StpError(f"{source} has a corrupt stp record ({exc})") from None


FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# the tensors that hold integers (suffix -> safetensors dtype, what it is)
INTEGER_TENSORS = {".num_batches_tracked": ("I64", "an int64 count"), ".weight_int": ("I8", "int8 weights"),
                   ".threshold_int": ("I32", "int32 thresholds"), ".shortcut_int": ("I32", "int32 shortcut scales")}


def check_values(file: CheckpointFile) -> None:
    """Every tensor finite and of the type its role needs (floating point; a BatchNorm's step count an
    integer); an SNN's thresholds positive and its leaks in [0, 1]."""
    for name, (dtype, _, _, _) in file.tensors.items():
        needed = next((need for suffix, need in INTEGER_TENSORS.items() if name.endswith(suffix)), None)
        if (dtype != needed[0]) if needed else (dtype not in FLOAT_DTYPES):
            raise StpError(f"{file.path}: {name} holds {dtype} values; the model needs "
                           + (needed[1] if needed else "floating-point values"))
        values = file.array(name)
        finite = (values & 0x7F80) != 0x7F80 if dtype == "BF16" else np.isfinite(values) if values.dtype.kind == "f" else True
        if not np.all(finite):
            raise StpError(f"{file.path} holds NaN or infinite values in {name}")
        if name.endswith((".threshold", ".leak")):
            value = file.scalar(name)
            if name.endswith(".threshold") and not value > 0:
                raise StpError(f"{file.path}: the threshold {name} is {value:g}; a threshold must be positive")
            if name.endswith(".leak") and not 0 <= value <= 1:
                raise StpError(f"{file.path}: the leak {name} is {value:g}; a leak lies in [0, 1]")


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse NaN or infinite values: a model holding them can only produce noise."""
    import torch

    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise StpError(f"{source} holds NaN or infinite values in {key}")
