"""The field's datasets and splits. Standard splits: `stp data split` writes a split as TorchGeo-style
text lists (one image per line, one file per part), `train-ann --split-file` reads such lists and
records them, and the lists are read by torchvision's ImageFolder the way TorchGeo's scene datasets
filter it. Known datasets: `stp data check` and `train-ann --dataset` compare a folder with the
published set and name the bands of EuroSAT MS files."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import TINY, run_cli, write_image
from test_reliability import refused
from torchvision.datasets import ImageFolder

from stpcli.checkpoint import read_checkpoint
from stpcli.data.split import PARTS


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, dataset_dir):
    out = tmp_path_factory.mktemp("seeded") / "na.safetensors"
    run_cli(["train-ann", *TINY, "--data", dataset_dir, "--epochs", "1", "--seed", "3", "--out", out])
    return out


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_a_checkpoints_split_written_as_lists_is_read_back_by_train_ann_and_by_torchvision(seeded, dataset_dir,
                                                                                          tmp_path):
    recorded = read_checkpoint(seeded).record["split"]
    run_cli(["data", "split", seeded, "--out", tmp_path / "lists" / "scenes"])
    lists = {part: tmp_path / "lists" / f"scenes-{part}.txt" for part in PARTS}
    for part in PARTS:
        assert _lines(lists[part]) == recorded["files"][part]
        # what a user of another tool does with the lists: filter torchvision's ImageFolder by them
        wanted = set(_lines(lists[part]))
        folder = ImageFolder(str(dataset_dir), is_valid_file=lambda p, w=wanted: os.path.relpath(p, dataset_dir) in w)
        read = sorted(os.path.relpath(p, dataset_dir) for p, _ in folder.samples)
        assert read == recorded["files"][part]
        assert [folder.classes[label] for _, label in folder.samples] == [n.split("/")[0] for n in read]
    child = tmp_path / "listed.safetensors"
    run_cli(["train-ann", *TINY, "--data", dataset_dir, "--epochs", "1", "--split-file", lists["train"], "--out", child])
    split = read_checkpoint(child).record["split"]
    assert split["files"] == recorded["files"] and split["sha256"] == recorded["sha256"]
    assert split["lists"]["train"] == str(lists["train"].resolve()) and "seed" not in split
    entry = read_checkpoint(child).record["history"][-1]
    assert entry["options"]["split-file"] == str(lists["train"])
    # the seeded split drawn from the data directly is the same one train-ann drew
    run_cli(["data", "split", dataset_dir, "--seed", "3", "--out", tmp_path / "drawn"])
    assert _lines(tmp_path / "drawn-test.txt") == recorded["files"]["test"]
    refused(["data", "split", dataset_dir, "--seed", "3", "--out", tmp_path / "drawn"], "exists; pass --force")
    refused(["data", "split", dataset_dir, "--basenames", "--out", tmp_path / "base"], "two images are named",
            out=tmp_path / "base-train.txt")


@pytest.fixture(scope="module")
def uc_merced_like(tmp_path_factory):
    """A folder named as UC Merced is (agricultural00.jpg), re-encoded as JPEG while TorchGeo's lists
    name the original .tif files."""
    root = tmp_path_factory.mktemp("ucm") / "Images"
    rng = np.random.default_rng(1)
    for label, cls in enumerate(("agricultural", "beach", "river")):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            write_image(root / cls / f"{cls}{i:02d}.jpg", rng, label, (40, 40))
    return root


def _write_lists(folder, parts):
    folder.mkdir(exist_ok=True)
    for part, entries in parts.items():
        (folder / f"uc_merced-{part}.txt").write_text("".join(f"{e}\n" for e in entries))
    return folder / "uc_merced-train.txt"


def test_torchgeo_lists_name_files_by_basename_and_their_original_extension(uc_merced_like, tmp_path):
    train = [f"{c}{i:02d}.tif" for c in ("agricultural", "beach", "river") for i in range(4)]
    test = [f"{c}{i:02d}.tif" for c in ("agricultural", "beach", "river") for i in (4, 5)]
    lists = _write_lists(tmp_path / "splits", {"train": train, "test": test})  # no val list
    out = tmp_path / "na.safetensors"
    result = run_cli(["train-ann", *TINY, "--data", uc_merced_like, "--epochs", "1", "--split-file", lists, "--out", out])
    split = read_checkpoint(out).record["split"]
    assert split["files"]["test"] == sorted(f"{n[:-6]}/{n[:-4]}.jpg" for n in test)
    # without a val list, a validation part is carved from the training list (one image per class here:
    # --val-ratio 0.1 of 4, at least one), never left empty, and never taken from the test list
    assert split["lists"]["val"] is None and (split["val_ratio"], split["seed"]) == (0.1, 0)
    assert len(split["files"]["train"]) == 9 and len(split["files"]["val"]) == 3
    assert {n.split("/")[0] for n in split["files"]["val"]} == {"agricultural", "beach", "river"}
    assert set(split["files"]["val"]) <= {f"{n[:-6]}/{n[:-4]}.jpg" for n in train}
    assert "9 train / 3 val / 6 test" in result.output and "carved from the training list" in result.output


def test_bad_split_lists_are_refused_in_one_line_naming_the_list_and_line(uc_merced_like, tmp_path):
    out = tmp_path / "na.safetensors"
    every = [f"{c}{i:02d}.jpg" for c in ("agricultural", "beach", "river") for i in range(6)]

    def refuse(parts, message, name="case"):
        lists = _write_lists(tmp_path / name, parts)
        refused(["train-ann", *TINY, "--data", uc_merced_like, "--epochs", "1", "--split-file", lists, "--out", out],
                message, out=out)

    refuse({"train": every[:10] + ["airplane00.tif"], "test": every[10:]}, "uc_merced-train.txt:11: 'airplane00.tif' "
           "is not an image of the dataset", "missing")
    refuse({"train": every[:10], "test": every[9:]}, "uc_merced-test.txt:1: beach/beach03.jpg is listed twice "
           "(also uc_merced-train.txt:10)", "twice")
    refuse({"train": every[:12], "val": [every[12], every[12]], "test": every[13:]}, "uc_merced-val.txt:2", "repeat")
    refuse({"train": every[:12], "test": every[12:]}, "has no image of class river", "class")
    refuse({"train": every}, "the test list", "notest")
    shutil.copy(uc_merced_like / "beach" / "beach00.jpg", uc_merced_like / "river" / "beach00.jpg")
    try:
        refuse({"train": every[:12], "test": every[12:]}, "'beach00.jpg' names 2 images", "ambiguous")
    finally:
        (uc_merced_like / "river" / "beach00.jpg").unlink()
    refused(["train-ann", *TINY, "--data", uc_merced_like, "--split-file", tmp_path / "missing" / "uc_merced-test.txt",
             "--out", out], "name the training list", out=out)
    refused(["train-ann", *TINY, "--data", uc_merced_like, "--split-file", tmp_path / "nowhere-train.txt",
             "--out", out], "does not exist", out=out)


def test_a_folder_is_compared_with_the_published_dataset_it_should_be(uc_merced_like, tmp_path):
    result = run_cli(["data", "check", uc_merced_like, "--dataset", "ucm21"])
    assert "UC Merced Land Use: 3 of the 21 classes present, 18 of its 2,100 images" in result.output
    assert "missing 18 class(es): airplane, baseballdiamond" in result.output
    assert "3 class(es) have fewer images than published: agricultural 6 of 100" in result.output
    refused(["data", "check", uc_merced_like, "--dataset", "ucm21", "--strict"], "differs from UC Merced Land Use")
    refused(["data", "check", uc_merced_like, "--dataset", "ucm22"], "--dataset must be one of ucm21, aid30")
    out = tmp_path / "na.safetensors"
    result = run_cli(["train-ann", *TINY, "--data", uc_merced_like, "--epochs", "1", "--dataset", "ucm21", "--out", out])
    assert "3 of the 21 classes present" in result.output
    assert read_checkpoint(out).record["history"][-1]["options"]["dataset"] == "ucm21"
    refused(["train-ann", *TINY, "--data", uc_merced_like, "--dataset", "eurosat-rgb", "--out", tmp_path / "x.safetensors"],
            "2 class folder(s) are no EuroSAT RGB class, e.g. 'agricultural'", out=tmp_path / "x.safetensors")
    wrong = tmp_path / "not-rsscn7"  # the wrong dataset is named even when a class folder is empty
    (wrong / "empty").mkdir(parents=True)
    refused(["train-ann", *TINY, "--data", wrong, "--dataset", "rsscn7", "--out", tmp_path / "y.safetensors"],
            "1 class folder(s) are no RSSCN7 class, e.g. 'empty'; is this RSSCN7?", out=tmp_path / "y.safetensors")


def _eurosat_ms(root, bands=13):
    """EuroSAT MS as distributed: 13-band uint16 GeoTIFFs whose bands carry no names."""
    rng = np.random.default_rng(2)
    for label, cls in enumerate(("AnnualCrop", "Forest", "SeaLake")):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 3000, (bands, 64, 64)).astype(np.uint16)
            pixels[label] += 2000
            tifffile.imwrite(root / cls / f"{cls}_{i + 1}.tif", pixels, photometric="minisblack", planarconfig="separate")
    return root


def test_eurosat_ms_bands_are_chosen_by_their_sentinel_2_names(tmp_path):
    root = _eurosat_ms(tmp_path / "EuroSAT_MS")
    out = tmp_path / "na.safetensors"
    run_cli(["train-ann", *TINY, "--data", root, "--epochs", "1", "--dataset", "eurosat-ms", "--bands", "B04,B03,B02",
             "--out", out])
    spec = read_checkpoint(out).record["input"]
    assert spec["bands"] == [4, 3, 2] and spec["band_names"] == ["B04", "B03", "B02"]
    refused(["train-ann", *TINY, "--data", root, "--bands", "B04,B03,B02", "--out", tmp_path / "y.safetensors"],
            "give 1-based band numbers")  # without --dataset the files name no band
    twelve = _eurosat_ms(tmp_path / "twelve", bands=12)
    refused(["train-ann", *TINY, "--data", twelve, "--dataset", "eurosat-ms", "--out", tmp_path / "z.safetensors"],
            "has 12 band(s); EuroSAT MS (13 Sentinel-2 bands) files have 13", out=tmp_path / "z.safetensors")


def test_every_known_dataset_has_its_published_class_count_and_size():
    from stpcli.data.catalogue import KNOWN_DATASETS

    published = {"ucm21": (21, 2100), "aid30": (30, 10_000), "nwpu45": (45, 31_500), "whurs19": (19, 1005),
                 "rsscn7": (7, 2800), "eurosat-rgb": (10, 27_000), "eurosat-ms": (10, 27_000)}
    assert {name: (len(d.classes), d.total) for name, d in KNOWN_DATASETS.items()} == published
    assert len(KNOWN_DATASETS["eurosat-ms"].band_names) == 13


REAL = Path(__file__).resolve().parents[2] / "shared" / "datasets"  # the real subsets beside the project


@pytest.mark.skipif(not (REAL / "aid150").is_dir(), reason="the real dataset subsets are not on this machine")
def test_the_real_subsets_are_recognised_for_what_they_are():
    aid = run_cli(["data", "check", REAL / "aid150", "--dataset", "aid30", "--strict"]).output
    assert "AID: 30 of the 30 classes present, 10,000 of its 10,000 images; as published" in aid
    ucm = run_cli(["data", "check", REAL / "ucm16", "--dataset", "ucm21"]).output
    assert "16 of the 21 classes present, 1,600 of its 2,100 images; each present class has its published count" in ucm
    assert "chaparral, denseresidential, forest, freeway, golfcourse" in ucm
