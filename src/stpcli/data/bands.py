"""Images as their bands, with their radiometry kept: multispectral GeoTIFF/TIFF, 16-bit PNG, ...

``decoding="rgb8"`` is stp's 8-bit RGB path (PIL, shorter side to S, centre crop). With
``decoding="bands"`` every file is read as it is stored (TIFF through ``tifffile``, which reads
GeoTIFFs of any band count and type without GDAL; other formats through PIL), the chosen bands
kept in their order, and the values kept as numbers: integers as int16/int32, floats as float32.
Resizing (shorter side to S, centre crop) is bilinear on the values, antialiased when shrinking.

Normalisation is then per band, from the training split (``band_statistics``), or a fixed
``--scale``; the per-image percentile stretch is only for display (``--normalise stretch`` keeps
stp's earlier behaviour, 8-bit grey).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stpcli.errors import StpError
from stpcli.spec import MAX_BANDS

TIFF_SUFFIXES = (".tif", ".tiff")
# how each stored type is held in memory: integers widened to hold every value (uint32 as float32,
# exact up to 2**24), floats as float32
STORAGE = {"uint8": torch.uint8, "int8": torch.int16, "uint16": torch.int32, "int16": torch.int16,
           "uint32": torch.float32, "int32": torch.int32, "float16": torch.float32, "float32": torch.float32,
           "float64": torch.float32}


@dataclass(frozen=True)
class Decoding:
    """How a dataset's files become tensors: ``rgb8`` (8-bit RGB, stp's classic path) or ``bands``
    (the 1-based ``bands`` of each file, all of them when None, values kept). ``names``: the chosen
    bands' names; a file that names its bands is read by these names, wherever it stores them."""

    mode: str = "rgb8"
    bands: tuple[int, ...] | None = None
    names: tuple[str, ...] | None = None

    @classmethod
    def from_record(cls, spec: dict) -> Decoding:
        """The decoding a record states (a checkpoint's ``input``, a pack's ``bands``); 8-bit RGB if none."""
        bands, names = spec.get("bands"), spec.get("band_names")
        return cls(spec.get("decoding", "rgb8"), tuple(bands) if bands else None, tuple(names) if names else None)

    @property
    def tag(self) -> str:
        """What the decode cache's file name says about the decoding (empty for 8-bit RGB): a digest
        of the bands and their names, so that the name stays short whatever the band count."""
        if self.mode == "rgb8":
            return ""
        return "-bands-" + hashlib.sha256(f"{self.bands}|{self.names}".encode()).hexdigest()[:16]

    def indices_in(self, path: Path, stated: list[str] | None) -> tuple[int, ...] | None:
        """The 1-based bands to read from one file: where it stores the chosen names, if it names its
        bands; else the chosen numbers."""
        if self.names is None or stated is None:
            return self.bands
        missing = [name for name in self.names if name not in stated]
        if missing:
            raise StpError(f"{path} names its bands {', '.join(stated)}: it has no band {missing[0]!r}")
        return tuple(stated.index(name) + 1 for name in self.names)


def read_bands(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Every band of one file as stored, [C, H, W], and the names it gives them (GDAL's per-band
    DESCRIPTION metadata of a GeoTIFF), or None; from one opening of the file."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its complaints become our one-line errors
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                array = page.asarray()
                separate = getattr(page, "planarconfig", 1) == 2  # tifffile.PLANARCONFIG.SEPARATE
                tag = tif.pages.first.tags.get(42112)  # GDAL_METADATA
                text = str(tag.value) if tag is not None else ""
        except OSError:
            raise
        except Exception as exc:  # a damaged TIFF fails anywhere inside tifffile, with any exception type
            raise ValueError(f"not a readable TIFF ({type(exc).__name__}: {str(exc)[:100]})") from None
        found = {int(m.group(1)): m.group(2).strip() for m in re.finditer(
            r'<Item name="DESCRIPTION" sample="(\d+)"[^>]*>([^<]*)</Item>', text)}
        names = [found[i] for i in sorted(found)] if found else None
        if array.ndim == 2:
            return array[None], names
        if array.ndim != 3:
            raise ValueError(f"a {array.ndim}-dimensional TIFF image is not a scene")
        return (array if separate else np.moveaxis(array, -1, 0)), names
    with Image.open(path) as image:
        array = np.asarray(image)
    return (array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)), None


def band_names(path: Path) -> list[str] | None:
    """Band names a file states, or None."""
    return read_bands(path)[1] if path.suffix.lower() in TIFF_SUFFIXES else None


def probe(path: Path) -> tuple[int, str]:
    """(band count, stored type name) of one file."""
    array = read_bands(path)[0]
    return array.shape[0], array.dtype.name


def resolve_bands(text: str, count: int, names: Sequence[str] | None, where: str) -> tuple[int, ...]:
    """``--bands`` ("4,3,2", or names such as "B04,B03,B02") as 1-based indices into ``count`` bands."""
    chosen = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if item.isascii() and item.isdigit():  # '²' and '３' are digits to str.isdigit, not band numbers
            index = int(item)
        elif names is not None and item in names:
            index = list(names).index(item) + 1
        else:
            known = f"; the bands are named {', '.join(names)}" if names else "; give 1-based band numbers"
            raise StpError(f"--bands: {item!r} is not a band of {where}{known}")
        if not 1 <= index <= count:
            raise StpError(f"--bands: band {index} is out of range: {where} has {count} band(s)")
        chosen.append(index)
    if not chosen or len(set(chosen)) != len(chosen) or len(chosen) > MAX_BANDS:
        raise StpError(f"--bands must name distinct bands (at most {MAX_BANDS}), got {text!r}")
    return tuple(chosen)


def decode_bands(path: Path, image_size: int, decoding: Decoding, expect: tuple[int, str] | None = None
                 ) -> torch.Tensor:
    """One file as [C, S, S] in its storage type: the chosen bands (by name where the file names
    them), shorter side to S, centre crop. ``expect`` (band count, stored type) is the dataset's: a
    file that differs is refused."""
    array, stated = read_bands(path)
    bands = decoding.indices_in(path, stated)
    count, kind = array.shape[0], array.dtype.name
    if expect is not None and (count, kind) != expect:
        raise StpError(f"{path} has {count} band(s) of {kind}; the dataset's first image has {expect[0]} of {expect[1]} "
                       "(bands or bit depths differ between files)")
    if kind not in STORAGE:
        raise StpError(f"{path}: bands of type {kind} are not supported")
    if bands is not None:
        if max(bands) > count:
            raise StpError(f"{path} has {count} band(s); --bands asks for band {max(bands)}")
        array = array[[b - 1 for b in bands]]
    if array.dtype.kind == "f":
        empty = [i for i in range(array.shape[0]) if not np.isfinite(array[i]).any()]
        if empty:
            raise StpError(f"{path}: band {empty[0] + 1} holds no finite value (NaN-filled)")
        if not np.isfinite(array).all():
            raise StpError(f"{path} holds NaN or infinite values; fill them before training")
    tensor = torch.from_numpy(np.require(array, requirements=["C", "W"])).to(STORAGE[kind])
    return resize_values(tensor[None], image_size)[0].contiguous()


def resize_values(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """[N, C, H, W] values, shorter side to ``image_size`` and centre-cropped square: bilinear in
    float64, antialiased when shrinking, integers rounded back to their type."""
    height, width = images.shape[2:]
    if (height, width) == (image_size, image_size):
        return images
    scale = image_size / min(height, width)
    size = (max(image_size, round(height * scale)), max(image_size, round(width * scale)))
    values = F.interpolate(images.double(), size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    values = values[:, :, top:top + image_size, left:left + image_size]
    return (values if images.is_floating_point() else values.round()).to(images.dtype)


@torch.no_grad()
def band_statistics(images: torch.Tensor, divisor: float, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of every band of ``images / divisor`` over all their pixels,
    accumulated in float64 chunk by chunk (exact to float64 rounding, whatever the count)."""
    bands = images.shape[1]
    total = torch.zeros(bands, dtype=torch.float64)
    squares = torch.zeros(bands, dtype=torch.float64)
    count = 0
    for start in range(0, images.shape[0], chunk):
        values = images[start:start + chunk].to(torch.float64) / divisor
        total += values.sum(dim=(0, 2, 3))
        squares += (values * values).sum(dim=(0, 2, 3))
        count += values.shape[0] * values.shape[2] * values.shape[3]
    mean = total / max(1, count)
    variance = (squares / max(1, count) - mean * mean).clamp(min=0)
    std = variance.sqrt()
    if bool((std <= 0).any()):
        flat = int(torch.nonzero(std <= 0)[0])
        raise StpError(f"band {flat + 1} has the same value in every training image; it carries no information "
                       "(leave it out with --bands)")
    return mean.tolist(), std.tolist()
