"""``stp data pack``: a dataset as one compact file (resized JPEG bytes + labels + provenance).

The pack is a safetensors file: a uint8 tensor of concatenated JPEG bytes, their
offsets, the labels, and a JSON record with classes, names, image size and the
source folder's fingerprint, so a pack and its folder are the same data to the
split and lineage machinery. Every ``--data`` option accepts a pack.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open

from stpcli.data.bands import resize_values
from stpcli.errors import StpError
from stpcli.files import atomic_save_tensors, first_line, now_iso
from stpcli.schema import PackRecord, validate

PACK_FORMAT = "stp-data-pack"
PACK_VERSION = 3  # 2: content hash (version 1 has none); 3: raw (lossless) packs of bands
PACK_KEY = "stp-data"  # the safetensors metadata key of a pack's record; a checkpoint has none


def payload_sha256(data: torch.Tensor, offsets: torch.Tensor, labels: torch.Tensor, names: list[str]) -> str:
    """What a pack's content hash covers: the JPEG bytes, where each image starts, labels and names."""
    digest = hashlib.sha256()
    for tensor in (data, offsets.to(torch.int64), labels.to(torch.int64)):
        digest.update(tensor.contiguous().numpy().tobytes())
    digest.update(json.dumps(names).encode())
    return digest.hexdigest()


def write_pack(images: torch.Tensor, labels: torch.Tensor, names: list[str], classes: list[str],
               source: dict, out: Path, quality: int = 90, progress=None, bands: dict | None = None) -> int:
    """8-bit RGB images as JPEG (``quality``); any other images (bands, 16-bit, floats) as they are,
    losslessly (``bands``: the decoding and band names the pack records)."""
    if images.dtype != torch.uint8 or images.shape[1] != 3 or bands is not None:
        return _write_raw_pack(images, labels, names, classes, source, out, bands or {})
    blobs, offsets = [], [0]
    for img in images:
        buffer = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
        blobs.append(buffer.getvalue())
        offsets.append(offsets[-1] + len(blobs[-1]))
        if progress is not None:
            progress()
    data = torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8)
    offset_tensor = torch.tensor(offsets, dtype=torch.int64)
    record = {
        "format": PACK_FORMAT,
        "format_version": PACK_VERSION,
        "classes": classes,
        "names": names,
        "image_size": int(images.shape[-1]),
        "jpeg_quality": quality,
        "source": source,
        "content_sha256": payload_sha256(data, offset_tensor, labels, names),
        "created": now_iso(),
    }
    tensors = {"jpeg": data, "offsets": offset_tensor, "labels": labels}
    atomic_save_tensors(tensors, {PACK_KEY: json.dumps(record)}, out)
    return out.stat().st_size


def _write_raw_pack(images: torch.Tensor, labels: torch.Tensor, names: list[str], classes: list[str],
                    source: dict, out: Path, bands: dict) -> int:
    images = images.contiguous()
    record = {"format": PACK_FORMAT, "format_version": PACK_VERSION, "classes": classes, "names": names,
              "image_size": int(images.shape[-1]), "encoding": "raw", "bands": bands, "source": source,
              "content_sha256": raw_sha256(images, labels, names), "created": now_iso()}
    atomic_save_tensors({"images": images, "labels": labels}, {PACK_KEY: json.dumps(record)}, out)
    return out.stat().st_size


def raw_sha256(images: torch.Tensor, labels: torch.Tensor, names: list[str]) -> str:
    """A raw pack's content hash: the images' values and type, labels and names."""
    digest = hashlib.sha256(str(images.dtype).encode() + str(tuple(images.shape)).encode())
    digest.update(images.contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(labels.to(torch.int64).numpy().tobytes())
    digest.update(json.dumps(names).encode())
    return digest.hexdigest()


def _read_raw_pack(handle, record: dict, path: Path, image_size: int):
    images, labels = handle.get_tensor("images"), handle.get_tensor("labels")
    count = len(record["names"])
    if images.dim() != 4 or images.shape[0] != count or images.shape[2] != images.shape[3] \
            or labels.dtype != torch.int64 or labels.shape != (count,):
        raise StpError(f"{path} is a damaged data pack (its tensors do not match its {count} image names)")
    if count and (int(labels.min()) < 0 or int(labels.max()) >= len(record["classes"])):
        raise StpError(f"{path} is a damaged data pack (a label names no class)")
    if record.get("content_sha256") != raw_sha256(images, labels, record["names"]):
        raise StpError(f"{path} is damaged or was edited: its content does not match its content hash")
    return resize_values(images, image_size), labels


def pack_summary(text: str) -> str:
    """What a data pack holds, in words, from its record's text (read as JSON, not trusted further)."""
    try:
        record = json.loads(text)
        classes, size, names = record["classes"], record["image_size"], record["names"]
        count = f"{len(names):,} images of {len(classes)} classes at {int(size)} px"
    except (ValueError, KeyError, TypeError):
        return "an stp data pack (its record does not read)"
    return f"an stp data pack: {count}"


def describe_pack(path: Path) -> str:
    """``stp info`` on a pack: its path and what it holds."""
    with safe_open(str(path), framework="pt") as handle:
        return f"{path} is {pack_summary(handle.metadata()[PACK_KEY])}"


def is_pack(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            return PACK_KEY in (handle.metadata() or {})
    except Exception:
        return False


def read_pack(path: Path, image_size: int):
    """Returns (images uint8 [N,3,S,S], labels, names, classes, source record).

    The record is checked against its schema, the tensors against the record
    (one offset per image, labels naming classes) and the whole payload against
    the pack's content hash, so an edited or damaged pack is refused, never
    silently trained on.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            record = json.loads(handle.metadata()[PACK_KEY])
            if isinstance(record, dict) and record.get("encoding") == "raw":
                validate(PackRecord, record, str(path), "data pack record")
                if image_size > record["image_size"]:
                    raise StpError(f"{path} was packed at {record['image_size']} px; training at {image_size} px "
                                   f"needs a pack made with --image-size {image_size} or more")
                images, labels = _read_raw_pack(handle, record, path, image_size)
                return images, labels, record["names"], record["classes"], record["source"] | {"bands": record["bands"]}
            data = handle.get_tensor("jpeg")
            offsets_tensor = handle.get_tensor("offsets")
            labels = handle.get_tensor("labels")
    except StpError:
        raise
    except Exception as exc:
        raise StpError(f"{path} is not a readable stp data pack ({first_line(exc, 160)})") from exc
    if not isinstance(record, dict) or record.get("format") != PACK_FORMAT:
        raise StpError(f"{path} is not an stp data pack this version reads")
    if isinstance(record.get("format_version"), int) and record["format_version"] > PACK_VERSION:
        raise StpError(f"{path} is an stp data pack of a newer format ({record['format_version']}); upgrade stp")
    validate(PackRecord, record, str(path), "data pack record")
    names, classes = record["names"], record["classes"]
    count = len(names)
    if data.dtype != torch.uint8 or data.dim() != 1 or offsets_tensor.dtype != torch.int64 \
            or offsets_tensor.shape != (count + 1,) or labels.dtype != torch.int64 or labels.shape != (count,):
        raise StpError(f"{path} is a damaged data pack (its tensors do not match its {count} image names)")
    offsets = offsets_tensor.tolist()
    if offsets[0] != 0 or offsets[-1] != data.numel() or any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise StpError(f"{path} is a damaged data pack (image offsets out of order or out of range)")
    if count and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
        raise StpError(f"{path} is a damaged data pack (a label names no class)")
    if (record["format_version"] >= 2 or "content_sha256" in record) \
            and record.get("content_sha256") != payload_sha256(data, offsets_tensor, labels, names):
        raise StpError(f"{path} is damaged or was edited: its content does not match its content hash")
    if image_size > record["image_size"]:
        raise StpError(
            f"{path} was packed at {record['image_size']} px; training at {image_size} px needs a pack made with "
            f"--image-size {image_size} or more"
        )
    raw = data.numpy().tobytes()
    images = []
    for name, start, end in zip(names, offsets[:-1], offsets[1:]):
        try:
            with Image.open(io.BytesIO(raw[start:end])) as encoded:
                img = encoded.convert("RGB")
                if img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
                array = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise StpError(f"{path}: image {name} does not decode ({first_line(exc, 120)})") from exc
        images.append(array.view(image_size, image_size, 3).permute(2, 0, 1))
    return torch.stack(images), labels, names, classes, record["source"]
