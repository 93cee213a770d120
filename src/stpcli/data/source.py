"""Resolve ``--data`` into decoded images, and a recorded split into index sets.

``--data`` may be omitted (the embedded synthetic dataset), name an ImageFolder
root, or name a pack written by ``stp data pack``. Folder decodes are cached on
disk at the training resolution, keyed by the file list's fingerprint.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from stpcli.data import imagefolder, pack, synthetic
from stpcli.data.bands import Decoding, band_names, decode_bands, resolve_bands
from stpcli.data.catalogue import DatasetCheck, check_dataset, known_dataset
from stpcli.data.split import PARTS, check_split
from stpcli.defaults import BAD_IMAGE_POLICIES
from stpcli.errors import StpError
from stpcli.files import atomic_write, first_line
from stpcli.spec import MAX_BANDS, MAX_IMAGE_SIZE

BUILTIN = "builtin:synthetic"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_VERSION = 3  # 3: EXIF orientation applied


@dataclass
class Dataset:
    images: torch.Tensor  # [N, C, S, S]: uint8 RGB, or the chosen bands in their storage type
    labels: torch.Tensor  # int64 [N]
    names: list[str]
    classes: list[str]
    source: dict  # kind, path, fingerprint, num_files
    skipped: list[str] = field(default_factory=list)
    decoding: Decoding = field(default_factory=Decoding)
    band_names: list[str] | None = None  # of the chosen bands, where the files (or a preset) name them
    check: DatasetCheck | None = None  # how the data compares with the published dataset it was said to be

    def indices_of(self, names: list[str], part: str) -> torch.Tensor:
        position = {name: i for i, name in enumerate(self.names)}
        missing = [n for n in names if n not in position]
        if missing:
            raise StpError(
                f"{len(missing)} {part} image(s) of the recorded split are not in {self.source['path']}, e.g. {missing[0]}"
            )
        return torch.tensor([position[n] for n in names], dtype=torch.int64)


@dataclass
class SplitData:
    dataset: Dataset
    indices: dict[str, torch.Tensor]  # train / val / test

    def part(self, name: str):
        index = self.indices[name]
        return self.dataset.images[index], self.dataset.labels[index]


def default_cache_dir() -> Path:
    """$STP_CACHE_DIR (``~`` expanded; empty counts as unset), else ~/.cache/stpcli."""
    value = os.environ.get("STP_CACHE_DIR", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "stpcli"


def choose_decoding(listing, bands: str | None, normalisation: str,
                    known: str | None = None) -> tuple[Decoding, list[str] | None]:
    """How a folder's files are read: their bands (``--bands``, or files that are not plain 8-bit
    images: more than 4 bands, or 16/32-bit, or floats) or 8-bit RGB; and the chosen bands' names
    (the files', else those of the ``known`` dataset, whose band count the files must have)."""
    first, (count, kind) = imagefolder.first_readable(listing)
    names = band_names(first)
    published = known_dataset(known) if known else None
    if published is not None and published.band_names is not None:
        if count != len(published.band_names):
            raise StpError(f"--dataset {known}: {first} has {count} band(s); {published.title} files have "
                           f"{len(published.band_names)}")
        names = names or list(published.band_names)
    if bands is not None:
        chosen = resolve_bands(bands, count, names, str(first))
        chosen_names = [names[i - 1] for i in chosen] if names else None
        return Decoding("bands", chosen, tuple(chosen_names) if chosen_names else None), chosen_names
    plain = kind == "uint8" and count <= 4
    if normalisation in ("imagenet", "stretch") and count > 4:
        raise StpError(f"--normalise {normalisation} reads 8-bit RGB images, and {first} holds {count} bands of "
                       f"{kind}: use --normalise dataset (each band's statistics), or choose 3 bands with --bands")
    if normalisation in ("imagenet", "stretch") or plain:
        return Decoding(), None
    if count > MAX_BANDS:
        raise StpError(f"{first} has {count} bands; a model reads at most {MAX_BANDS}: choose them with --bands")
    every = tuple(range(1, count + 1))  # as the record states it: one cache for every stage
    return Decoding("bands", every, tuple(names) if names else None), names


def load_dataset(data: str | None, image_size: int, on_bad_image: str = "fail",
                 cache_dir: Path | None = None, progress=None, bands: str | None = None,
                 normalisation: str = "auto", decoding: Decoding | None = None,
                 known: str | None = None) -> Dataset:
    """``progress(count, total=None)``, if given, is told how many images have been decoded.
    ``decoding`` (a later stage: the recorded one) or else ``bands`` and ``normalisation`` (train-ann)
    say how a folder's files are read (``choose_decoding``). ``known`` names the published dataset
    the data should be (``catalogue.KNOWN_DATASETS``): it is compared before any image is decoded, and a
    class folder that is none of its classes is refused."""
    if not 16 <= image_size <= MAX_IMAGE_SIZE:
        raise StpError(f"--image-size must lie in 16..{MAX_IMAGE_SIZE}, got {image_size}")
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise StpError(f"--on-bad-image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}")
    if data is None or data in ("builtin", BUILTIN):
        images, labels, names, classes = synthetic.generate(image_size)
        compare_with_known(known, classes, labels.tolist())
        source = {"kind": "builtin", "path": BUILTIN, "fingerprint": synthetic.fingerprint(), "num_files": len(names),
                  "content_sha256": synthetic.fingerprint()}
        return Dataset(images, labels, names, classes, source)
    path = Path(data).expanduser()
    if not path.exists():
        raise StpError(f"--data {data} does not exist")
    if path.is_file():
        if not pack.is_pack(path):
            raise StpError(f"--data {data} is a file but not an stp data pack (see 'stp data pack')")
        if bands is not None:
            raise StpError(f"--bands: the bands of a pack are chosen when it is made (stp data pack --bands); {data} "
                           "is a pack")
        images, labels, names, classes, origin = pack.read_pack(path, image_size)
        source = {"kind": "pack", "path": str(path.resolve()), **{k: origin[k] for k in _RECORDED if k in origin}}
        if origin.get("skipped") and on_bad_image == "fail":
            raise StpError(f"pack {path} was made without {len(origin['skipped'])} undecodable image(s); "
                           "pass --on-bad-image skip to accept it")
        check = compare_with_known(known, classes, labels.tolist())
        packed = origin.get("bands") or {}
        return Dataset(images, labels, names, classes, source, list(origin.get("skipped", [])),
                       Decoding.from_record(packed), packed.get("band_names"), check)
    if known is not None and path.is_dir():  # the wrong dataset is named before any folder is scanned
        compare_with_known(known, imagefolder.class_folders(path), [])
    listing = imagefolder.scan(path)
    check = compare_with_known(known, listing.classes, listing.labels)
    source = {"kind": "folder", "path": str(path.resolve()), "fingerprint": listing.fingerprint,
              "num_files": len(listing.names), "content_sha256": listing.content_sha256}
    names_of_bands = None
    if decoding is None:
        decoding, names_of_bands = choose_decoding(listing, bands, normalisation, known)
    cached = _read_cache(cache_dir, listing, image_size, decoding)
    if cached is None:
        images, labels, names, skipped, stretched = imagefolder.decode_all(listing, image_size, on_bad_image, progress,
                                                                           decoding)
        _write_cache(cache_dir, listing, image_size, decoding, images, labels, names, skipped, stretched)
    else:
        images, labels, names, skipped, stretched = cached
        if skipped and on_bad_image == "fail":
            raise StpError(
                f"{len(skipped)} image(s) in {path} do not decode, e.g. {skipped[0]} (use --on-bad-image skip to skip them)"
            )
    if skipped:
        source["skipped"] = skipped
    if stretched:
        source["high_bit_depth"] = {"rule": imagefolder.HIGH_BIT_DEPTH_RULE, "images": len(stretched)}
    return Dataset(images, labels, names, listing.classes, source, skipped, decoding, names_of_bands, check)


def compare_with_known(known: str | None, classes: list[str], labels: list[int]) -> DatasetCheck | None:
    """``check_dataset`` for --dataset, refusing folders that are not its classes (the wrong dataset)."""
    if known is None:
        return None
    check = check_dataset(known, classes, labels)
    if check.unknown:
        title = known_dataset(known).title
        raise StpError(f"--dataset {known}: {len(check.unknown)} class folder(s) are no {title} class, e.g. "
                       f"{check.unknown[0]!r}; is this {title}? ('stp data check' lists what differs)")
    return check


# what a data source records about itself (checkpoints and packs carry these)
_RECORDED = ("fingerprint", "num_files", "content_sha256", "skipped", "high_bit_depth")


def _cache_file(cache_dir: Path | None, listing, image_size: int, decoding: Decoding) -> Path:
    base = Path(cache_dir).expanduser() if cache_dir is not None and str(cache_dir).strip() else default_cache_dir()
    return base / f"decoded-v{CACHE_VERSION}-{listing.content_sha256[:32]}-{image_size}px{decoding.tag}.safetensors"


def _read_cache(cache_dir, listing, image_size, decoding: Decoding):
    path = _cache_file(cache_dir, listing, image_size, decoding)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["stp-cache"])
            if meta["content_sha256"] != listing.content_sha256 or meta["image_size"] != image_size:
                return None
            return (handle.get_tensor("images"), handle.get_tensor("labels"), meta["names"], meta["skipped"],
                    meta["stretched"])
    except Exception:
        return None  # a damaged cache is rebuilt, never trusted


def _write_cache(cache_dir, listing, image_size, decoding: Decoding, images, labels, names, skipped, stretched):
    path = _cache_file(cache_dir, listing, image_size, decoding)
    meta = {"content_sha256": listing.content_sha256, "image_size": image_size, "names": names,
            "skipped": skipped, "stretched": stretched}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_cache_file({"images": images, "labels": labels}, {"stp-cache": json.dumps(meta)}, path)
    except Exception as exc:  # the cache is an optimisation: a full or read-only disk must not stop training
        print(f"warning: decoded images not cached in {path.parent} ({first_line(exc)}); continuing without the cache",
              file=sys.stderr)


def write_cache_file(tensors: dict, metadata: dict, path: Path) -> None:
    """A decode cache, written by safetensors' own writer (no copy of a gigabyte in memory) through
    ``atomic_write`` without fsync: a cache that is damaged or torn is rebuilt, never trusted."""
    from safetensors.torch import save_file

    with atomic_write(path, durable=False) as temporary:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata=metadata)


def data_record(dataset: Dataset) -> dict:
    return {"kind": dataset.source["kind"], "path": dataset.source["path"],
            **{k: dataset.source[k] for k in _RECORDED if k in dataset.source and k != "skipped"}}


def image_decoder(record: dict):
    """``decode(path) -> tensor [C, S, S]``: one new image read as the checkpoint's training images were."""
    size, decoding = record["input"]["image_size"], Decoding.from_record(record["input"])
    if decoding.mode == "bands":
        return lambda path: decode_bands(Path(path), size, decoding)
    return lambda path: imagefolder.decode_image(Path(path), size)[0]


def split_data(dataset: Dataset, split: dict) -> SplitData:
    check_split(split)
    return SplitData(dataset, {part: dataset.indices_of(split["files"][part], part) for part in PARTS})


def load_recorded_data(record: dict, data: str | None, allow_data_change: bool,
                       on_bad_image: str = "fail", cache_dir: Path | None = None, progress=None) -> SplitData:
    """The data and split a checkpoint was trained on, optionally read from a new location."""
    recorded = record["data"]
    location = data if data is not None else (None if recorded["kind"] == "builtin" else recorded["path"])
    if data is None and location is not None and not Path(location).exists():
        raise StpError(f"the recorded data {location} does not exist here; pass --data to read it from "
                       "another place")
    dataset = load_dataset(location, record["input"]["image_size"], on_bad_image, cache_dir, progress,
                           decoding=Decoding.from_record(record["input"]))
    if dataset.source["fingerprint"] != recorded["fingerprint"] and not allow_data_change:
        raise StpError(
            f"the data at {dataset.source['path']} differs from the data this checkpoint was trained on "
            f"(fingerprint {dataset.source['fingerprint'][:12]} vs {recorded['fingerprint'][:12]}); "
            "pass --allow-data-change to use it anyway"
        )
    content, recorded_content = dataset.source.get("content_sha256"), recorded.get("content_sha256")
    if content and recorded_content and content != recorded_content and not allow_data_change:
        raise StpError(
            f"the images at {dataset.source['path']} have the recorded names and sizes but other content than "
            "the data this checkpoint was trained on; pass --allow-data-change to use them anyway"
        )
    if dataset.classes != record["classes"]:
        raise StpError(
            f"the classes in {dataset.source['path']} ({len(dataset.classes)}) differ from the checkpoint's "
            f"({len(record['classes'])}): {', '.join(sorted(set(dataset.classes) ^ set(record['classes']))[:5])}"
        )
    return split_data(dataset, record["split"])
