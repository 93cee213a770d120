"""The remote-sensing scene datasets users download, as their publishers lay them out: class names,
images per class, bands. ``check_dataset`` compares a dataset with one and says what differs
("16 of the 21 UC Merced classes present"). Torch-free: ``stp data check`` answers at once."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from stpcli.errors import StpError


@dataclass(frozen=True)
class KnownDataset:
    title: str
    classes: tuple[str, ...]  # as the publisher's folders spell them
    per_class: tuple[int, ...] | None  # images per class in the published set, in ``classes`` order
    published_total: int | None = None  # where only the total is published
    band_names: tuple[str, ...] | None = None  # the files' bands, in file order, where not 8-bit RGB
    aliases: tuple[tuple[str, str], ...] = ()  # (folder name seen in circulating copies, class)

    @property
    def total(self) -> int:
        return sum(self.per_class) if self.per_class else self.published_total or 0


def _uniform(classes: str, count: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    names = tuple(classes.split())
    return names, (count,) * len(names)


_UCM = _uniform("agricultural airplane baseballdiamond beach buildings chaparral denseresidential forest freeway "
                "golfcourse harbor intersection mediumresidential mobilehomepark overpass parkinglot river runway "
                "sparseresidential storagetanks tenniscourt", 100)
_NWPU = _uniform("airplane airport baseball_diamond basketball_court beach bridge chaparral church circular_farmland "
                 "cloud commercial_area dense_residential desert forest freeway golf_course ground_track_field harbor "
                 "industrial_area intersection island lake meadow medium_residential mobile_home_park mountain "
                 "overpass palace parking_lot railway railway_station rectangular_farmland river roundabout runway "
                 "sea_ice ship snowberg sparse_residential stadium storage_tank tennis_court terrace "
                 "thermal_power_station wetland", 700)
_AID = {"Airport": 360, "BareLand": 310, "BaseballField": 220, "Beach": 400, "Bridge": 360, "Center": 260,
        "Church": 240, "Commercial": 350, "DenseResidential": 410, "Desert": 300, "Farmland": 370, "Forest": 250,
        "Industrial": 390, "Meadow": 280, "MediumResidential": 290, "Mountain": 340, "Park": 350, "Parking": 390,
        "Playground": 370, "Pond": 420, "Port": 380, "RailwayStation": 260, "Resort": 290, "River": 410,
        "School": 300, "SparseResidential": 300, "Square": 330, "Stadium": 290, "StorageTanks": 360, "Viaduct": 420}
_EUROSAT = {"AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000, "Highway": 2500, "Industrial": 2500,
            "Pasture": 2000, "PermanentCrop": 2500, "Residential": 3000, "River": 2500, "SeaLake": 3000}
_RSSCN7 = _uniform("Grass Field Industry RiverLake Forest Resident Parking", 400)
# WHU-RS19 publishes 1,005 images, "about 50" per class, not the counts of each class
_WHU = tuple("Airport Beach Bridge Commercial Desert Farmland footballField Forest Industrial Meadow Mountain Park "
             "Parking Pond Port railwayStation Residential River Viaduct".split())
SENTINEL2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B08A", "B09", "B10", "B11", "B12")

KNOWN_DATASETS: dict[str, KnownDataset] = {
    "ucm21": KnownDataset("UC Merced Land Use", *_UCM),
    "aid30": KnownDataset("AID", tuple(_AID), tuple(_AID.values())),
    "nwpu45": KnownDataset("NWPU-RESISC45", *_NWPU),
    "whurs19": KnownDataset("WHU-RS19", _WHU, None, published_total=1005),
    "rsscn7": KnownDataset("RSSCN7", *_RSSCN7,
                            aliases=tuple((f"{letter}{name}", name) for letter, name in zip("abcdefg", _RSSCN7[0]))),
    "eurosat-rgb": KnownDataset("EuroSAT RGB", tuple(_EUROSAT), tuple(_EUROSAT.values())),
    "eurosat-ms": KnownDataset("EuroSAT MS (13 Sentinel-2 bands)", tuple(_EUROSAT), tuple(_EUROSAT.values()),
                               band_names=SENTINEL2_BANDS),
}


def known_dataset(name: str) -> KnownDataset:
    if name not in KNOWN_DATASETS:
        raise StpError(f"--dataset must be one of {', '.join(KNOWN_DATASETS)}, got {name!r}")
    return KNOWN_DATASETS[name]


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


@dataclass
class DatasetCheck:
    summary: str  # one line: what the folder is, of the preset
    differences: list[str]  # one line each; empty when the folder is the published set
    unknown: list[str]  # folders that are no class of the preset


def check_dataset(name: str, classes: list[str], labels: list[int]) -> DatasetCheck:
    """Compare a dataset's class folders and images per class with the published ``name``.
    Class names match ignoring case, spaces and punctuation (baseball_diamond = BaseballDiamond)."""
    spec = known_dataset(name)
    wanted = {_key(c): c for c in spec.classes} | {_key(alias): c for alias, c in spec.aliases}
    counts = Counter(labels)
    present: dict[str, int] = {}
    unknown = []
    for label, folder in enumerate(classes):
        match = wanted.get(_key(folder))
        if match is None:
            unknown.append(folder)
        else:
            present[match] = present.get(match, 0) + counts.get(label, 0)
    expected = dict(zip(spec.classes, spec.per_class or ()))
    missing = [c for c in spec.classes if c not in present]
    differences = []
    if missing:
        differences.append(f"missing {len(missing)} class(es): {', '.join(missing)}")
    if unknown:
        differences.append(f"{len(unknown)} folder(s) are no {spec.title} class: {', '.join(unknown)}")
    fewer = [f"{c} {present[c]} of {expected[c]}" for c in expected if c in present and present[c] < expected[c]]
    more = [f"{c} {present[c]} (published {expected[c]})" for c in expected if c in present and present[c] > expected[c]]
    images = sum(present.values())
    if not expected and not missing and images != spec.total:
        differences.append(f"{images:,} images; the published set has {spec.total:,}")
    if fewer:
        differences.append(f"{len(fewer)} class(es) have fewer images than published: {', '.join(fewer[:6])}"
                           + (", ..." if len(fewer) > 6 else ""))
    if more:
        differences.append(f"{len(more)} class(es) have more images than published: {', '.join(more[:6])}"
                           + (", ..." if len(more) > 6 else ""))
    summary = f"{spec.title}: {len(present)} of the {len(spec.classes)} classes present, {images:,} of its {spec.total:,} images"
    if not differences:
        summary += "; as published"
    elif expected and present and not fewer and not more:
        summary += "; each present class has its published count"
    return DatasetCheck(summary, differences, unknown)
