"""``stp data``: dataset utilities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stpcli.cli.common import CacheDir, Force, OnBadImage, console, stp_command
from stpcli.data.catalogue import KNOWN_DATASETS
from stpcli.engine.recipe import check_seed
from stpcli.errors import StpError
from stpcli.files import check_output, lock_output
from stpcli.options import DataOptions, RunOptions
from stpcli.progress import progress_bar

app = typer.Typer(help="Dataset utilities.", no_args_is_help=True)


@stp_command(app, "pack")
def pack_command(
    root: Annotated[Path, typer.Argument(help="ImageFolder root (<root>/<class>/<image>).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pack file to write (.safetensors).")],
    image_size: Annotated[int, typer.Option("--image-size", help="Resolution stored in the pack.")] = 64,
    quality: Annotated[int, typer.Option("--quality", help="JPEG quality, 1-100.")] = 90,
    on_bad_image: OnBadImage = DataOptions.on_bad_image,
    cache_dir: CacheDir = DataOptions.cache_dir,
    bands: Annotated[str | None, typer.Option("--bands", help="Pack these bands (as train-ann --bands); non-RGB data is packed losslessly.")] = None,
    force: Force = RunOptions.force,
):
    """Write a compact single-file copy of a dataset that every --data accepts: 8-bit RGB as JPEG,
    anything else (bands, 16-bit, floats) losslessly.

    Example: stp data pack ucm16/ --image-size 128 --out ucm16_128.safetensors
    """
    if not 1 <= quality <= 100:
        raise StpError(f"--quality must lie in 1..100, got {quality}")
    if not root.is_dir():
        raise StpError(f"{root} is not a dataset folder")
    from stpcli.data.pack import write_pack
    from stpcli.data.source import load_dataset

    check_output(out, force, suffix=".safetensors")
    lock_output(out)
    with progress_bar(console, "decoding") as advance:
        dataset = load_dataset(str(root), image_size, on_bad_image, cache_dir, progress=advance, bands=bands)
    if len(dataset.classes) < 2:
        raise StpError(f"{root} has {len(dataset.classes)} class folder(s); a dataset to classify needs at least 2")
    with progress_bar(console, "packing", total=len(dataset.names)) as advance:
        kept = dataset.decoding
        packed_bands = None if kept.mode == "rgb8" else {
            "decoding": "bands", "bands": list(kept.bands or range(1, dataset.images.shape[1] + 1)),
            "band_names": dataset.band_names}
        size = write_pack(dataset.images, dataset.labels, dataset.names, dataset.classes,
                          dataset.source | {"skipped": dataset.skipped}, out, quality, progress=lambda: advance(1),
                          bands=packed_bands)
    console.print(f"packed {len(dataset.names)} images of {len(dataset.classes)} classes at {image_size}px "
                  f"into {out} ({size / 1e6:.1f} MB)" + (f"; skipped {len(dataset.skipped)}" if dataset.skipped else ""))


@stp_command(app, "multispectral-example")
def multispectral_example_command(
    out: Annotated[Path, typer.Argument(help="Folder to create (<out>/<class>/<n>.tif); it must not exist.")],
    per_class: Annotated[int, typer.Option("--per-class", help="Images per class.")] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the scenes.")] = 0,
):
    """Write a small synthetic multispectral dataset: 13-band, Sentinel-2-like int16 GeoTIFFs in four
    classes, two of which differ only outside the RGB bands (see stpcli/data/multispectral.py).

    Example: stp data multispectral-example scenes_ms && stp train-ann --data scenes_ms --out na.safetensors
    """
    import os
    import shutil
    import tempfile

    from stpcli.data.multispectral import write_example
    from stpcli.files import create_folder

    if not 2 <= per_class <= 10_000:
        raise StpError(f"--per-class must lie in 2..10000, got {per_class}")
    check_seed(seed)
    target = out.expanduser()
    if target.exists():
        raise StpError(f"{target} exists; choose a new folder (it is written whole, never into an existing one)")
    create_folder(target.parent, "OUT")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise StpError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        write_example(staging, per_class, seed)
        os.replace(staging, target)
    except OSError as exc:
        raise StpError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    console.print(f"wrote {target}: 4 classes x {per_class} images, 13 bands (B01..B08, B08A, B09..B12), 64 x 64, int16", markup=False)


@stp_command(app, "split")
def split_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Prefix of the lists: PREFIX-train.txt, PREFIX-val.txt, PREFIX-test.txt.")],
    source: Annotated[str | None, typer.Argument(help="A checkpoint (writes the split it records), an ImageFolder root or a data pack (draws stp's seeded split); default: the embedded dataset.")] = None,
    train_ratio: Annotated[float, typer.Option("--train-ratio", help="Training share of each class (as train-ann).")] = 0.8,
    val_ratio: Annotated[float, typer.Option("--val-ratio", help="Share of the training part kept for validation.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="The seed train-ann draws its split from.")] = 0,
    basenames: Annotated[bool, typer.Option("--basenames", help="Write file names only, as TorchGeo's lists do (refused when two images share one); default: class/file.")] = False,
    force: Force = RunOptions.force,
):
    """Write a split as three text lists, one image per line, that train-ann --split-file and other
    tools (TorchGeo's format) read: a checkpoint's recorded split, or the split train-ann draws with
    --seed and the ratios from a dataset.

    Example: stp data split na.safetensors --out ucm16 && stp train-ann --data ucm16/ --split-file ucm16-train.txt ...
    """
    import contextlib

    from stpcli.data.split import PARTS, split_list_lines, stratified_split
    from stpcli.files import atomic_write

    location = Path(source).expanduser() if source not in (None, "builtin") else None
    if location is not None and location.is_file() and not _is_pack(location):
        from stpcli.checkpoint import read_checkpoint

        split = read_checkpoint(location).record["split"]
        inputs: tuple[Path, ...] = (location,)
    else:
        names, labels, classes = _listing(location)
        split = stratified_split(names, labels, classes, train_ratio, val_ratio, seed)
        inputs = (location,) if location is not None else ()
    paths = {part: out.with_name(f"{out.name}-{part}.txt") for part in PARTS}
    lines = {part: split_list_lines(split, part, basenames) for part in PARTS}
    for part in PARTS:
        check_output(paths[part], force, inputs, option="--out")
        lock_output(paths[part])
    with contextlib.ExitStack() as stack:  # all three temporaries are written before any replaces its list
        for part in PARTS:
            temporary = stack.enter_context(atomic_write(paths[part]))
            temporary.write_text("".join(f"{line}\n" for line in lines[part]), encoding="utf-8")
    counts = ", ".join(f"{len(lines[part])} {part}" for part in PARTS)
    console.print(f"wrote {paths['train']}, {paths['val'].name}, {paths['test'].name}: {counts}", markup=False)


def _is_pack(path: Path) -> bool:
    from stpcli.data.pack import is_pack

    return is_pack(path)


def _listing(location: Path | None) -> tuple[list[str], list[int], list[str]]:
    """The image names, labels and classes of a data source, without decoding a folder's images
    (a split drawn from them equals train-ann's when every image decodes)."""
    if location is not None and location.is_dir():
        from stpcli.data.imagefolder import scan

        listing = scan(location)
        return listing.names, listing.labels, listing.classes
    from stpcli.data.source import load_dataset

    dataset = load_dataset(str(location) if location is not None else None, 16)
    return dataset.names, dataset.labels.tolist(), dataset.classes


@stp_command(app, "check")
def check_command(
    data: Annotated[Path, typer.Argument(help="ImageFolder root or data pack.")],
    known: Annotated[str, typer.Option("--dataset", help=" | ".join(KNOWN_DATASETS) + ".")],
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero when the data differs from the published set.")] = False,
):
    """Compare a dataset with the published one it should be: class names (ignoring case and
    punctuation) and images per class, and say what differs.

    Example: stp data check ucm16/ --dataset ucm21
    """
    from stpcli.data.catalogue import check_dataset, known_dataset

    spec = known_dataset(known)
    location = data.expanduser()
    if location.is_dir():
        from stpcli.data.imagefolder import scan

        listing = scan(location)
        classes, labels = listing.classes, listing.labels
    elif _is_pack(location):
        from stpcli.data.source import load_dataset

        dataset = load_dataset(str(location), 16)
        classes, labels = dataset.classes, dataset.labels.tolist()
    else:
        raise StpError(f"{data} is neither a dataset folder nor an stp data pack")
    check = check_dataset(known, classes, labels)
    console.print(check.summary, markup=False)
    for difference in check.differences:
        console.print(f"  {difference}", markup=False)
    if spec.band_names:
        console.print(f"  bands of its files: {', '.join(spec.band_names)}", markup=False)
    if strict and check.differences:
        raise StpError(f"{data} differs from {spec.title} in {len(check.differences)} way(s)")
