"""``stp data``: dataset utilities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stpcli.cli.common import CacheDir, Force, OnBadImage, console, stp_command
from stpcli.errors import StpError
from stpcli.files import check_output, lock_output
from stpcli.progress import progress_bar

app = typer.Typer(help="Dataset utilities.", no_args_is_help=True)


@stp_command(app, "pack")
def pack_command(
    root: Annotated[Path, typer.Argument(help="ImageFolder root (<root>/<class>/<image>).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pack file to write (.safetensors).")],
    image_size: Annotated[int, typer.Option("--image-size", help="Resolution stored in the pack.")] = 64,
    quality: Annotated[int, typer.Option("--quality", help="JPEG quality, 1-100.")] = 90,
    on_bad_image: OnBadImage = "fail",
    cache_dir: CacheDir = None,
    bands: Annotated[str | None, typer.Option("--bands", help="Pack these bands (as train-ann --bands); non-RGB data is packed losslessly.")] = None,
    force: Force = False,
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
    target = out.expanduser()
    if target.exists():
        raise StpError(f"{target} exists; choose a new folder (it is written whole, never into an existing one)")
    create_folder(target.parent, "OUT")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write_example(staging, per_class, seed)
        os.replace(staging, target)
    except OSError as exc:
        raise StpError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    console.print(f"wrote {target}: 4 classes x {per_class} images, 13 bands (B01..B12, B8A), 64 x 64, int16", markup=False)
