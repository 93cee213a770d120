"""A multispectral example the project makes itself: 13-band, Sentinel-2-like int16 GeoTIFFs.

Four classes of 64 x 64 scenes with a reflectance spectrum each (``SPECTRA``, x 10000 as
Sentinel-2 L2A stores it) over a random texture, with per-image illumination and sensor noise.
``vegetation`` and ``stressed_vegetation`` have the same visible spectrum (B02, B03, B04: the
RGB bands) and differ only in the red edge and near infrared (B05-B08, B08A), as water-stressed
crops do: an RGB projection cannot tell them apart, the bands can. The files name their bands
(GDAL's DESCRIPTION metadata), so ``--bands B04,B03,B02`` works on them.

    stp data multispectral-example scenes_ms/     # then: stp train-ann --data scenes_ms ...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stpcli.data.catalogue import SENTINEL2_BANDS

BANDS = list(SENTINEL2_BANDS)  # in file order, as EuroSAT MS stores them
# surface reflectance per band (0..1)
SPECTRA = {
    "bare_soil": [0.10, 0.12, 0.16, 0.21, 0.24, 0.26, 0.27, 0.28, 0.29, 0.29, 0.02, 0.34, 0.30],
    "stressed_vegetation": [0.04, 0.05, 0.08, 0.06, 0.14, 0.20, 0.23, 0.25, 0.26, 0.26, 0.01, 0.22, 0.14],
    "vegetation": [0.04, 0.05, 0.08, 0.06, 0.18, 0.33, 0.39, 0.42, 0.43, 0.43, 0.01, 0.22, 0.12],
    "water": [0.07, 0.08, 0.07, 0.05, 0.04, 0.03, 0.02, 0.02, 0.02, 0.02, 0.005, 0.01, 0.01],
}
SIZE = 64


def _gdal_metadata(names: list[str]) -> str:
    items = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>' for i, n in enumerate(names))
    return f"<GDALMetadata>{items}</GDALMetadata>"


def scene(spectrum: list[float], rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One image [13, S, S] int16: the class spectrum x a smooth texture x illumination, plus noise."""
    coarse = rng.normal(0.0, 1.0, (size // 8 + 2, size // 8 + 2))
    texture = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    texture = 1.0 + 0.12 * (texture - texture.mean()) / (texture.std() + 1e-9)
    illumination = rng.uniform(0.85, 1.15)
    values = np.asarray(spectrum)[:, None, None] * texture[None] * illumination
    values = values + rng.normal(0.0, 0.006, values.shape)
    return np.clip(np.round(values * 10_000), 0, 32_767).astype(np.int16)


def write_example(root: Path, per_class: int = 40, seed: int = 0, classes: tuple[str, ...] | None = None,
                  size: int = SIZE) -> Path:
    """``root/<class>/<n>.tif`` for every class of ``SPECTRA`` (or ``classes``)."""
    import tifffile

    rng = np.random.default_rng(seed)
    metadata = _gdal_metadata(BANDS)
    for name in classes or tuple(SPECTRA):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            tifffile.imwrite(folder / f"{index:04d}.tif", scene(SPECTRA[name], rng, size), planarconfig="separate",
                             extratags=[(42112, "s", 0, metadata, True)])
    return root
