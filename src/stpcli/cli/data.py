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
    force: Force = False,
):
    """Write a compact single-file copy of a dataset that every --data accepts.

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
        dataset = load_dataset(str(root), image_size, on_bad_image, cache_dir, progress=advance)
    if len(dataset.classes) < 2:
        raise StpError(f"{root} has {len(dataset.classes)} class folder(s); a dataset to classify needs at least 2")
    with progress_bar(console, "packing", total=len(dataset.names)) as advance:
        size = write_pack(dataset.images, dataset.labels, dataset.names, dataset.classes,
                          dataset.source | {"skipped": dataset.skipped}, out, quality, progress=lambda: advance(1))
    console.print(f"packed {len(dataset.names)} images of {len(dataset.classes)} classes at {image_size}px "
                  f"into {out} ({size / 1e6:.1f} MB)" + (f"; skipped {len(dataset.skipped)}" if dataset.skipped else ""))
