"""Real datasets in ImageFolder layout: ``<root>/<class>/<image>``.

Scanning gives the file list and its fingerprint; decoding resizes every image
once to the training resolution (shorter side to S, centre crop) so epochs
never re-decode.
"""

from __future__ import annotations

import hashlib
import sys
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from stpcli.data.bands import Decoding, decode_bands, probe
from stpcli.errors import StpError
from stpcli.files import sha256_file

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


HIGH_BIT_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
HIGH_BIT_DEPTH_RULE = "per-image 2-98 % percentile stretch to 8 bits"
STRETCH_PERCENTILES = (2.0, 98.0)


@dataclass
class FolderListing:
    root: Path
    classes: list[str]
    names: list[str]  # "class/file", sorted
    labels: list[int]
    fingerprint: str  # names and sizes: the data's identity for splits and lineage
    content_sha256: str  # names and every file's bytes: what the decode cache is keyed by


def class_folders(root: Path) -> list[str]:
    """The class folders of an ImageFolder root, sorted (a class's label is its index)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(root: str | Path) -> FolderListing:
    root = Path(root)
    if not root.exists():
        raise StpError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise StpError(f"dataset {root} is neither a folder nor an stp pack file")
    classes = class_folders(root)
    if not classes:
        raise StpError(f"dataset folder {root} has no class folders (expected <root>/<class>/<image>)")
    for cls in classes:
        if any(unicodedata.category(char) == "Cc" for char in cls):
            raise StpError(f"class folder {cls.encode('unicode_escape').decode()!r} in {root} has a control character "
                           "(a newline or escape) in its name; rename it")
    names, labels, lines = [], [], []
    for label, cls in enumerate(classes):
        files = sorted(
            p for p in (root / cls).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise StpError(f"class folder {root / cls} has no images")
        for path in files:
            name = f"{cls}/{path.name}"
            names.append(name)
            labels.append(label)
            lines.append(f"{name}\t{path.stat().st_size}")
    _refuse_files_in_two_classes(root, names)
    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(lambda name: _file_digest(root / name), names))
    _warn_same_content_in_two_classes(names, digests)
    content = fingerprint_lines([f"{name}\t{digest}" for name, digest in zip(names, digests)])
    return FolderListing(root, classes, names, labels, fingerprint_lines(lines), content)


def _refuse_files_in_two_classes(root: Path, names: list[str]) -> None:
    """One file under two class folders (a symlinked class folder, a hard link) would be learnt
    under two labels: refused, naming both."""
    seen: dict[tuple[int, int], str] = {}
    for name in names:
        try:
            info = (root / name).stat()
        except OSError as exc:
            raise StpError(f"cannot read {root / name}: {exc.strerror or exc}") from exc
        key = (info.st_dev, info.st_ino)
        other = seen.setdefault(key, name)
        if other != name and other.split("/")[0] != name.split("/")[0]:
            raise StpError(f"{root / other} and {root / name} are the same file in two classes (a linked folder "
                           "or file?); each image must belong to one class")


def _warn_same_content_in_two_classes(names: list[str], digests: list[str]) -> None:
    first: dict[str, str] = {}
    clashes = []
    for name, digest in zip(names, digests):
        other = first.setdefault(digest, name)
        if other.split("/")[0] != name.split("/")[0]:
            clashes.append((other, name))
    if clashes:
        print(f"warning: {len(clashes)} image(s) have the same bytes as an image of another class, "
              f"e.g. {clashes[0][0]} and {clashes[0][1]}", file=sys.stderr)


def _file_digest(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise StpError(f"cannot read {path}: {exc.strerror or exc}") from exc


def fingerprint_lines(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def to_rgb8(img: Image.Image) -> tuple[Image.Image, bool]:
    """8-bit RGB; 16-bit, 32-bit integer and float images (common in remote sensing) are
    stretched per image between their 2nd and 98th percentiles instead of being clipped.
    Returns the image and whether it was stretched."""
    if img.mode not in HIGH_BIT_DEPTH_MODES:
        return img.convert("RGB"), False
    values = np.asarray(img, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = np.percentile(finite, STRETCH_PERCENTILES) if finite.size else (0.0, 0.0)
    scaled = np.clip((np.nan_to_num(values, nan=low) - low) / max(high - low, 1e-12), 0.0, 1.0)
    return Image.fromarray(np.round(scaled * 255).astype(np.uint8), mode="L").convert("RGB"), True


def decode_image(path: Path, image_size: int) -> tuple[torch.Tensor, bool]:
    """Decode one file to uint8 [3, S, S]: RGB, shorter side to S, centre crop; and whether
    a high-bit-depth image was stretched. A file PIL cannot open whose bands tifffile reads (a
    multispectral TIFF) is refused saying what it holds."""
    try:
        opened = Image.open(path)
    except UnidentifiedImageError:
        try:
            bands, stored = probe(path)
        except (OSError, ValueError, SyntaxError):
            raise UnidentifiedImageError(f"cannot identify image file '{path}'") from None
        raise ValueError(f"it holds {bands} bands of {stored}, and this reads 8-bit RGB images; a model "
                         "trained on such files with --bands reads them") from None
    with opened as source:
        if Image.MAX_IMAGE_PIXELS and source.width * source.height > Image.MAX_IMAGE_PIXELS:
            # PIL only warns up to twice its limit; no scene image is that large
            raise Image.DecompressionBombError(f"{source.width}x{source.height} pixels exceeds the decoding limit")
        source.load()
        upright = ImageOps.exif_transpose(source)  # a phone or drone JPEG's EXIF orientation
        rgb, stretched = to_rgb8(upright)
        img = ImageOps.fit(rgb, (image_size, image_size), Image.Resampling.BILINEAR)
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(image_size, image_size, 3).permute(2, 0, 1).contiguous(), stretched


def first_readable(listing: FolderListing) -> tuple[Path, tuple[int, str]]:
    """The first file whose bands read, and its (band count, stored type): it speaks for the
    dataset (files that do not decode are counted by ``decode_all``)."""
    reason = ""
    for name in listing.names:
        try:
            return listing.root / name, probe(listing.root / name)
        except (OSError, ValueError, SyntaxError) as exc:
            reason = reason or f" (the first, {name}: {str(exc)[:150]})"
    raise StpError(f"no image in {listing.root} decodes{reason}")


def decode_all(listing: FolderListing, image_size: int, on_bad_image: str, progress=None,
               decoding: Decoding | None = None):
    """Decode every listed file (8-bit RGB, or their bands: ``decoding``). Returns (images, labels,
    names, skipped_names, stretched_names). In band mode every file must have the first one's band
    count and type; a file that differs, or a band that is all NaN, is refused by name."""
    decoding = decoding or Decoding()
    expect = first_readable(listing)[1] if decoding.mode == "bands" else None

    def work(name: str):
        try:
            if decoding.mode == "bands":
                return decode_bands(listing.root / name, image_size, decoding, expect), False
            return decode_image(listing.root / name, image_size)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None

    if decoding.mode == "bands":  # tifffile holds the GIL: threads only add contention
        return _collect(listing, on_bad_image, progress, map(work, listing.names))
    with ThreadPoolExecutor(max_workers=4) as pool:
        return _collect(listing, on_bad_image, progress, pool.map(work, listing.names))


def _collect(listing: FolderListing, on_bad_image: str, progress, decoded_files):
    """The decoded files (``(image, stretched)`` or None, in listing order) gathered into one
    preallocated tensor: no list of images, no copy at the end."""
    if progress is not None:
        progress(0, total=len(listing.names))
    images: torch.Tensor | None = None
    labels: list[int] = []
    names: list[str] = []
    skipped: list[str] = []
    stretched: list[str] = []
    for name, label, decoded in zip(listing.names, listing.labels, decoded_files):
        if progress is not None:
            progress(1)
        if decoded is None:
            if on_bad_image == "fail":
                raise StpError(f"image {listing.root / name} does not decode (use --on-bad-image skip to skip such files)")
            skipped.append(name)
            continue
        if images is None:
            images = torch.empty((len(listing.names), *decoded[0].shape), dtype=decoded[0].dtype)
        images[len(names)] = decoded[0]
        labels.append(label)
        names.append(name)
        if decoded[1]:
            stretched.append(name)
    if images is None:
        raise StpError(f"no image in {listing.root} decodes")
    present = set(labels)
    for label, cls in enumerate(listing.classes):
        if label not in present:
            raise StpError(f"class {cls} has no decodable image")
    return images[:len(names)], torch.tensor(labels, dtype=torch.int64), names, skipped, stretched
