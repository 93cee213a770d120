"""The checkpoint format: one ``.safetensors`` file per pipeline stage.

Tensors are the model's state; the metadata holds one JSON record under the key
``stp`` with everything needed to continue the pipeline from this file alone:
kind, model spec, classes, input, data source and split, time steps, the stage
history (lineage with each parent's sha256), tool version and creation time.

Loading never executes code: safetensors only, no pickle anywhere.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stpcli import __version__
from stpcli.errors import StpError

FORMAT_NAME = "stp-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "stp"
KINDS = ("ann", "snn")


@dataclass
class Checkpoint:
    """A model's tensors plus its JSON record.

    ``record`` keys: format, format_version, kind, model, classes, input, data,
    split, timesteps (SNN), snn (neuron and conversion settings), history,
    tool_version, created.
    """

    tensors: dict[str, torch.Tensor]
    record: dict[str, Any]
    path: Path | None = None
    sha256: str | None = None

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def model_spec(self) -> dict:
        return self.record["model"]

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


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_output_path(path: str | Path, force: bool) -> Path:
    """Refuse an output that exists (without --force) or whose folder is missing."""
    out = Path(path)
    if out.suffix != ".safetensors":
        raise StpError(f"output {out} must end in .safetensors")
    if not out.parent.exists():
        raise StpError(f"output folder {out.parent} does not exist")
    if out.exists() and not force:
        raise StpError(f"output {out} exists; pass --force to overwrite it")
    return out


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path
) -> None:
    """Write a safetensors file via a temporary file + ``os.replace``.

    A crash or kill at any point leaves either the old file or the new one,
    never half a file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(contiguous, tmp, metadata=metadata)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> str:
    """Write ``ckpt`` atomically; returns the new file's sha256."""
    record = dict(ckpt.record)
    record.setdefault("format", FORMAT_NAME)
    record.setdefault("format_version", FORMAT_VERSION)
    record["tool_version"] = __version__
    record["created"] = now_iso()
    validate_record(record, source=str(path))
    atomic_save_tensors(ckpt.tensors, {METADATA_KEY: json.dumps(record)}, path)
    ckpt.record = record
    ckpt.path = Path(path)
    ckpt.sha256 = sha256_file(path)
    return ckpt.sha256


def read_record(path: str | Path) -> dict[str, Any]:
    """The JSON record of a checkpoint, without loading its tensors."""
    path = _existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises several types for bad headers
        raise StpError(f"{path} is not a readable safetensors file ({_short(exc)})") from exc
    return _parse_record(metadata, path)


def load_checkpoint(path: str | Path, expect_kind: str | None = None) -> Checkpoint:
    """Load a checkpoint; refuse other tools' files, future versions and bad tensors."""
    path = _existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            record = _parse_record(handle.metadata() or {}, path)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except StpError:
        raise
    except Exception as exc:
        raise StpError(f"{path} is not a readable safetensors file ({_short(exc)})") from exc
    if expect_kind is not None and record["kind"] != expect_kind:
        raise StpError(
            f"{path} is an {record['kind'].upper()} checkpoint; this command needs an "
            f"{expect_kind.upper()} checkpoint"
        )
    return Checkpoint(tensors=tensors, record=record, path=path, sha256=sha256_file(path))


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise StpError(f"{path} does not exist")
    if not path.is_file():
        raise StpError(f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise StpError(f"{path} is not readable")
    return path


def _parse_record(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    if METADATA_KEY not in metadata:
        raise StpError(f"{path} is a safetensors file but not an stp checkpoint (no '{METADATA_KEY}' metadata)")
    try:
        record = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise StpError(f"{path} has a corrupt stp record ({exc.msg})") from exc
    validate_record(record, source=str(path))
    return record


REQUIRED_FIELDS = {
    "format": str,
    "format_version": int,
    "kind": str,
    "model": dict,
    "classes": list,
    "input": dict,
    "data": dict,
    "split": dict,
    "history": list,
}


def validate_record(record: Any, source: str) -> None:
    if not isinstance(record, dict):
        raise StpError(f"{source} has a corrupt stp record (not an object)")
    if record.get("format") != FORMAT_NAME:
        raise StpError(f"{source} was not written by stp (format {record.get('format')!r})")
    version = record.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise StpError(
            f"{source} uses checkpoint format {version}, newer than this stp "
            f"({__version__}) reads ({FORMAT_VERSION}); upgrade stp"
        )
    for name, kind in REQUIRED_FIELDS.items():
        if not isinstance(record.get(name), kind):
            raise StpError(f"{source} has a corrupt stp record (field '{name}' missing or wrong type)")
    if record["kind"] not in KINDS:
        raise StpError(f"{source} has an unknown kind {record['kind']!r}")
    if record["kind"] == "snn" and not isinstance(record.get("timesteps"), int):
        raise StpError(f"{source} is an SNN checkpoint without time steps")


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
