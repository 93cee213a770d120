"""Real datasets in ImageFolder layout: ``<root>/<class>/<image>``.

Scanning gives the file list and its fingerprint; decoding resizes every image
once to the training resolution (shorter side to S, centre crop) so epochs
never re-decode.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from stpcli.errors import StpError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


@dataclass
class FolderListing:
    root: Path
    classes: list[str]
    names: list[str]  # "class/file", sorted
    labels: list[int]
    fingerprint: str


def scan(root: str | Path) -> FolderListing:
    root = Path(root)
    if not root.exists():
        raise StpError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise StpError(f"dataset {root} is neither a folder nor an stp pack file")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise StpError(f"dataset folder {root} has no class folders (expected <root>/<class>/<image>)")
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
    return FolderListing(root, classes, names, labels, fingerprint_lines(lines))


def fingerprint_lines(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def decode_image(path: Path, image_size: int) -> torch.Tensor:
    """Decode one file to uint8 [3, S, S]: RGB, shorter side to S, centre crop."""
    with Image.open(path) as img:
        img.load()
        img = img.convert("RGB")
        img = ImageOps.fit(img, (image_size, image_size), Image.Resampling.BILINEAR)
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(image_size, image_size, 3).permute(2, 0, 1).contiguous()


def decode_all(listing: FolderListing, image_size: int, on_bad_image: str):
    """Decode every listed file. Returns (images, labels, names, skipped_names)."""

    def work(name: str):
        try:
            return decode_image(listing.root / name, image_size)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None

    images, labels, names, skipped = [], [], [], []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for name, label, img in zip(listing.names, listing.labels, pool.map(work, listing.names)):
            if img is None:
                if on_bad_image == "fail":
                    raise StpError(f"image {listing.root / name} does not decode (use --on-bad-image skip to skip such files)")
                skipped.append(name)
                continue
            images.append(img)
            labels.append(label)
            names.append(name)
    if not images:
        raise StpError(f"no image in {listing.root} decodes")
    present = set(labels)
    for label, cls in enumerate(listing.classes):
        if label not in present:
            raise StpError(f"class {cls} has no decodable image")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), names, skipped
