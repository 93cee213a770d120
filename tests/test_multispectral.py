"""Multispectral imagery end to end: 13-band int16 GeoTIFFs through every stage, predict and export
with no RGB conversion anywhere; per-band statistics from the training split only; the bands
really reach the network; bad band inputs refused in one line naming the file."""

import json

import numpy as np
import pytest
import tifffile
import torch
from conftest import run_cli
from test_reliability import CPU, refused

from stpcli.checkpoint import load_checkpoint
from stpcli.data.multispectral import BANDS, write_example

SMALL = ["--width", "0.25", "--image-size", "32", "--batch-size", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_example(tmp_path_factory.mktemp("ms") / "scenes", per_class=12, seed=0)


def _read(path):
    return tifffile.imread(path).astype(np.float64)  # [13, 64, 64], as stored


def test_a_13_band_int16_dataset_runs_the_whole_chain_predict_and_export(scenes, tmp_path):
    files = {n: tmp_path / f"{n}.safetensors" for n in ("na", "nb", "sb_t2", "sb_t1", "sa_t1")}
    run_cli(["train-ann", *SMALL, "--data", scenes, "--epochs", "2", "--lr", "0.01", "--out", files["na"]])
    run_cli(["add-unit", files["na"], "--as", "4", "--m", "1", "--epochs", "1", *CPU, "--out", files["nb"]])
    run_cli(["convert", files["nb"], "--timesteps", "2", "--epochs", "1", "--calibration-images", "16", *CPU,
             "--out", files["sb_t2"]])
    run_cli(["temporal-prune", files["sb_t2"], "--schedule", "1", "--epochs-per-stage", "1", *CPU, "--out", files["sb_t1"]])
    run_cli(["spatial-prune", files["sb_t1"], "--epochs", "1", *CPU, "--out", files["sa_t1"]])
    for name, path in files.items():
        ckpt = load_checkpoint(path)
        first = "layers.0.conv.weight"
        assert ckpt.tensors[first].shape[1] == 13, name  # the first convolution reads 13 bands
        spec = ckpt.record["input"]
        assert spec["decoding"] == "bands" and spec["bands"] == list(range(1, 14)) and spec["band_names"] == BANDS
        assert spec["normalisation"] == "dataset" and len(spec["mean"]) == 13 and spec["divisor"] == 1.0
    predicted = json.loads(run_cli(["predict", files["sa_t1"], scenes / "water", "--json", *CPU]).stdout)
    assert predicted["images"] == 12 and not predicted["unreadable"]
    onnx_file, nir_file = tmp_path / "sa.onnx", tmp_path / "sa.nir"
    run_cli(["export", files["sa_t1"], "--format", "onnx", "--out", onnx_file])
    run_cli(["export", files["sa_t1"], "--format", "nir", "--out", nir_file])
    import nir
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1] == 13
    assert list(nir.read(str(nir_file)).nodes["input"].input_type["input"]) == [13, 32, 32]
    stp_dialect = tmp_path / "sa_stp.nir"  # the exact stp graph declares the model's bands too
    run_cli(["export", files["sa_t1"], "--format", "nir", "--nir-graph", "stp", "--out", stp_dialect])
    graph = nir.read(str(stp_dialect))
    assert list(graph.nodes["input"].input_type["input"]) == [13, 32, 32]
    assert graph.nodes["layer0_conv"].input_type["input"][0] == 13
    energy = json.loads(run_cli(["evaluate", files["sa_t1"], "--json", *CPU]).stdout)["energy"]
    rgb = json.loads(run_cli(["evaluate", load_rgb_twin(tmp_path), "--json", *CPU]).stdout)["energy"]
    assert energy["layers"][0]["macs"] == pytest.approx(rgb["layers"][0]["macs"] * 13 / 3)  # first-layer MACs


def load_rgb_twin(tmp_path):
    """The same SNN recipe on 3 bands, for the energy model's first-layer MACs."""
    from conftest import make_imagefolder

    root = make_imagefolder(tmp_path / "rgb", per_class=6)
    out = tmp_path / "rgb_na.safetensors"
    run_cli(["train-ann", *SMALL, "--data", root, "--epochs", "1", "--out", out])
    snn = tmp_path / "rgb_s.safetensors"
    run_cli(["convert", out, "--timesteps", "1", "--epochs", "0", "--calibration-images", "8", *CPU, "--out", snn])
    return snn


def test_per_band_statistics_come_from_the_training_split_only(scenes, tmp_path):
    out = tmp_path / "na.safetensors"
    run_cli(["train-ann", *SMALL, "--image-size", "64", "--data", scenes, "--epochs", "1", "--out", out])
    record = load_checkpoint(out).record
    train = np.stack([_read(scenes / name) for name in record["split"]["files"]["train"]])
    expected_mean, expected_std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    np.testing.assert_allclose(record["input"]["mean"], expected_mean, rtol=1e-3)
    np.testing.assert_allclose(record["input"]["std"], expected_std, rtol=1e-3)
    everything = np.stack([_read(p) for p in sorted(scenes.rglob("*.tif"))])
    assert not np.allclose(record["input"]["mean"], everything.mean(axis=(0, 2, 3)), rtol=1e-4)  # val/test left out


def test_a_class_told_apart_only_by_its_bands_is_learnt_from_the_bands_not_from_rgb(tmp_path):
    """vegetation and stressed_vegetation share B02-B04: the RGB projection is chance, the bands are not."""
    root = write_example(tmp_path / "pair", per_class=40, seed=1, classes=("stressed_vegetation", "vegetation"))
    scores = {}
    for name, bands in (("rgb", ["--bands", "B04,B03,B02"]), ("all", [])):
        out = tmp_path / f"{name}.safetensors"
        run_cli(["train-ann", *SMALL, *bands, "--data", root, "--epochs", "15", "--lr", "0.01", "--dropout", "0.2",
                 "--out", out])
        ckpt = load_checkpoint(out)
        scores[name] = ckpt.history[-1]["metrics"]["test_accuracy"]
        assert ckpt.tensors["layers.0.conv.weight"].shape[1] == (3 if name == "rgb" else 13)
    assert scores["rgb"] <= 65.0 and scores["all"] >= 85.0, scores


def test_bands_are_chosen_by_number_or_name_and_a_pack_holds_them_losslessly(scenes, tmp_path):
    pack = tmp_path / "ms.safetensors"
    run_cli(["data", "pack", scenes, "--image-size", "64", "--bands", "B08,4,3", "--out", pack])
    from stpcli.data.source import load_dataset

    data = load_dataset(str(pack), 64)
    assert data.images.dtype == torch.int16 and data.images.shape[1:] == (3, 64, 64)
    first = data.names[0]
    np.testing.assert_array_equal(data.images[0].numpy(), tifffile.imread(scenes / first)[[7, 3, 2]])
    out = tmp_path / "na.safetensors"
    run_cli(["train-ann", *SMALL, "--data", pack, "--epochs", "1", "--out", out])
    assert load_checkpoint(out).record["input"]["bands"] == [8, 4, 3]


def test_rgb_datasets_and_existing_checkpoints_read_as_before(pipeline, dataset_dir, tmp_path):
    """8-bit RGB keeps ImageNet's statistics and the /255 scaling; a record from before the band
    fields (no divisor, decoding or normalisation) predicts exactly as one with them."""
    from test_reliability_inputs import rewrite

    ckpt = load_checkpoint(pipeline["na"])
    spec = ckpt.record["input"]
    assert spec["mean"] == [0.485, 0.456, 0.406] and spec["divisor"] == 255.0 and spec["decoding"] == "rgb8"
    old = rewrite(pipeline["na"], tmp_path / "old.safetensors",
                  lambda record: [record["input"].pop(k) for k in ("divisor", "normalisation", "decoding")])
    image = dataset_dir / "lakes" / "img000.png"
    new_run = json.loads(run_cli(["predict", pipeline["na"], image, "--json", *CPU]).stdout)["predictions"]
    old_run = json.loads(run_cli(["predict", old, image, "--json", *CPU]).stdout)["predictions"]
    assert new_run == old_run


def test_a_scale_on_8_bit_rgb_normalises_with_the_scaled_data_s_own_statistics(dataset_dir, tmp_path):
    """ImageNet's mean and std describe x / 255; with --scale 0.01 (x / 100) --normalise auto takes
    the training split's statistics of the scaled values, not ImageNet's."""
    out = tmp_path / "na.safetensors"
    run_cli(["train-ann", *SMALL, "--data", dataset_dir, "--scale", "0.01", "--epochs", "1", "--out", out])
    spec = load_checkpoint(out).record["input"]
    assert spec["normalisation"] == "dataset" and spec["divisor"] == pytest.approx(100.0)
    assert spec["mean"] != [0.485, 0.456, 0.406] and max(spec["mean"]) > 0.5  # pixel means near 100-200 / 100


def _tiff(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, planarconfig="separate")


def test_bad_band_inputs_are_one_line_naming_the_file(scenes, tmp_path):
    out = tmp_path / "na.safetensors"
    refused(["train-ann", *SMALL, "--data", scenes, "--bands", "14", "--out", out], "band 14 is out of range", out)
    refused(["train-ann", *SMALL, "--data", scenes, "--bands", "B99", "--out", out], "'B99' is not a band", out)
    rng = np.random.default_rng(0)
    cases = {
        "differ": ("b/x.tif", rng.integers(0, 1000, (12, 64, 64)).astype(np.int16), "bands or bit depths differ"),
        "depth": ("b/x.tif", rng.integers(0, 1000, (13, 64, 64)).astype(np.int32), "bands or bit depths differ"),
        "nan": ("b/x.tif", np.full((13, 64, 64), np.nan, dtype=np.float32), "NaN-filled"),
    }
    for case, (name, array, message) in cases.items():
        root = tmp_path / case
        for i in range(3):
            for cls in ("a", "b"):
                good = rng.integers(0, 1000, (13, 64, 64)).astype(np.float32 if case == "nan" else np.int16)
                _tiff(root / cls / f"{i}.tif", good)
        _tiff(root / name, array)
        result = refused(["train-ann", *SMALL, "--data", root, "--out", out], message, out)
        assert "x.tif" in result.output, case


def test_bands_chosen_by_name_are_read_by_name_from_every_file(tmp_path):
    """--bands B04,B03 on files that store their bands in different orders: each file is read where
    it stores B04 and B03, so the tensor holds what the record says."""
    from stpcli.data.source import load_dataset

    rng = np.random.default_rng(0)
    names = ["B02", "B03", "B04"]

    def write(path, order, values):
        description = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{names[b]}</Item>'
                              for i, b in enumerate(order))
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, values[list(order)], planarconfig="separate", photometric="minisblack",
                         extratags=[(42112, "s", 0, f"<GDALMetadata>{description}</GDALMetadata>", True)])

    expected = {}
    for i in range(4):
        for cls in ("a", "b"):
            values = rng.integers(100 * (i + 1), 100 * (i + 2), (3, 32, 32)).astype(np.int16)  # in B02, B03, B04 order
            order = (0, 1, 2) if i % 2 == 0 else (2, 0, 1)  # every other file stores B04, B02, B03
            write(tmp_path / "scenes" / cls / f"{i}.tif", order, values)
            expected[f"{cls}/{i}.tif"] = values[[2, 1]]  # B04, B03
    dataset = load_dataset(str(tmp_path / "scenes"), 32, bands="B04,B03", cache_dir=tmp_path / "cache")
    for name, image in zip(dataset.names, dataset.images):
        assert torch.equal(image, torch.from_numpy(expected[name])), name


def test_an_rgb_model_given_a_13_band_tiff_says_what_the_file_holds(pipeline, scenes):
    """It said "cannot identify image file" (#33 item 18): PIL cannot open a 13-band TIFF."""
    tiff = next(scenes.rglob("*.tif"))
    result = run_cli(["predict", pipeline["na"], tiff, *CPU], expect=None)
    assert result.exit_code != 0
    said = " ".join(result.output.split())  # the console wraps long lines
    assert f"it holds {len(BANDS)} bands of int16, and this reads 8-bit RGB images" in said, result.output
    assert "cannot identify" not in result.output and "Traceback" not in result.output
