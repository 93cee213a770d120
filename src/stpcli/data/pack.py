"""``stp data pack``: a dataset as one compact file (resized JPEG bytes + labels + provenance).

The pack is a safetensors file: a uint8 tensor of concatenated JPEG bytes, their
offsets, the labels, and a JSON record with classes, names, image size and the
source folder's fingerprint, so a pack and its folder are the same data to the
split and lineage machinery. Every ``--data`` option accepts a pack.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open

from stpcli.checkpoint import atomic_save_tensors, now_iso
from stpcli.errors import StpError

PACK_FORMAT = "stp-data-pack"
PACK_VERSION = 1


def write_pack(images: torch.Tensor, labels: torch.Tensor, names: list[str], classes: list[str],
               source: dict, out: Path, quality: int = 90) -> int:
    blobs, offsets = [], [0]
    for img in images:
        buffer = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
        blobs.append(buffer.getvalue())
        offsets.append(offsets[-1] + len(blobs[-1]))
    data = torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8)
    record = {
        "format": PACK_FORMAT,
        "format_version": PACK_VERSION,
        "classes": classes,
        "names": names,
        "image_size": int(images.shape[-1]),
        "jpeg_quality": quality,
        "source": source,
        "created": now_iso(),
    }
    tensors = {"jpeg": data, "offsets": torch.tensor(offsets, dtype=torch.int64), "labels": labels}
    atomic_save_tensors(tensors, {"stp-data": json.dumps(record)}, out)
    return out.stat().st_size


def is_pack(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            return "stp-data" in (handle.metadata() or {})
    except Exception:
        return False


def read_pack(path: Path, image_size: int):
    """Returns (images uint8 [N,3,S,S], labels, names, classes, source record)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            record = json.loads(handle.metadata()["stp-data"])
            data = handle.get_tensor("jpeg")
            offsets = handle.get_tensor("offsets").tolist()
            labels = handle.get_tensor("labels")
    except Exception as exc:
        raise StpError(f"{path} is not a readable stp data pack ({str(exc).splitlines()[0][:160]})") from exc
    if record.get("format") != PACK_FORMAT or record.get("format_version", 0) > PACK_VERSION:
        raise StpError(f"{path} is not an stp data pack this version reads")
    if image_size > record["image_size"]:
        raise StpError(
            f"{path} was packed at {record['image_size']} px; training at {image_size} px needs a pack made with --image-size {image_size} or more"
        )
    raw = data.numpy().tobytes()
    images = []
    for start, end in zip(offsets[:-1], offsets[1:]):
        with Image.open(io.BytesIO(raw[start:end])) as img:
            img = img.convert("RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        images.append(array.view(image_size, image_size, 3).permute(2, 0, 1))
    return torch.stack(images), labels.to(torch.int64), record["names"], record["classes"], record["source"]
