"""Reliability, round 3: the side outputs of the reading commands follow the stages' rules, bounds
on the last unbounded options, records a terminal or a reader could be fooled by, and the drivers'
children and leftovers. Each test is written from the attack's reproduction."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from test_reliability import CPU, refused
from test_reliability_inputs import rewrite

from stpcli.checkpoint import load_checkpoint
from stpcli.data.split import split_hash

# 1, 8: side outputs ---------------------------------------------------------------------------

def test_predict_csv_never_overwrites_the_model_an_image_or_an_existing_file(pipeline, dataset_dir, tmp_path):
    model = tmp_path / "na.safetensors"
    shutil.copy(pipeline["na"], model)
    images = tmp_path / "images"
    shutil.copytree(dataset_dir / "lakes", images)
    image = images / "img000.png"
    before = {path: path.read_bytes() for path in (model, image)}
    for target in (model, image):  # the reproduction: --csv na.safetensors destroyed the model
        refused(["predict", model, images, "--csv", target, "--force", *CPU], "is this command's input")
    existing = tmp_path / "p.csv"
    existing.write_text("keep")
    refused(["predict", model, images, "--csv", existing, *CPU], "exists; pass --force")
    assert existing.read_text() == "keep" and all(path.read_bytes() == data for path, data in before.items())
    refused(["predict", model, images, "--csv", "/dev/null", "--force", *CPU], "not a regular file")
    run_cli(["predict", model, images, "--csv", existing, "--force", *CPU])
    assert existing.read_text().startswith("path,rank,class,probability")
    nested = tmp_path / "out" / "deeper" / "p.csv"  # a missing folder is created
    run_cli(["predict", model, image, "--csv", nested, *CPU])
    assert nested.is_file()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".lock"))]


def test_evaluate_plots_and_compare_plot_follow_the_output_rule(pipeline, tmp_path):
    figures = tmp_path / "figures" / "new"  # created, as the README's --plots figures/ suggests
    run_cli(["evaluate", pipeline["sa_t1"], "--plots", figures, *CPU])
    assert sorted(p.name for p in figures.iterdir()) == ["sa_t1.confusion.png", "sa_t1.spike_rates.png"]
    refused(["evaluate", pipeline["sa_t1"], "--plots", figures, *CPU], "exists; pass --force")
    run_cli(["evaluate", pipeline["sa_t1"], "--plots", figures, "--force", "--plot-format", "svg", *CPU])
    assert (figures / "sa_t1.confusion.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    plot = tmp_path / "compare.pdf"
    run_cli(["compare", pipeline["na"], pipeline["sa_t1"], "--plot", plot, *CPU])
    assert plot.read_bytes().startswith(b"%PDF")
    refused(["compare", pipeline["na"], "--plot", plot, *CPU], "exists; pass --force")
    refused(["compare", pipeline["na"], "--plot", tmp_path / "c.safetensors", *CPU], "must end in")


def test_export_refuses_its_input_a_folder_and_devices(pipeline, tmp_path):
    model = tmp_path / "sa.safetensors"
    shutil.copy(pipeline["sa_t1"], model)
    before = model.read_bytes()
    refused(["export", model, "--format", "nir", "--out", model, "--force"], "is this command's input")
    refused(["export", model, "--format", "nir", "--out", tmp_path], "not a regular file")
    refused(["export", model, "--format", "nir", "--out", "/dev/null", "--force"], "not a regular file")
    assert model.read_bytes() == before and Path("/dev/null").is_char_device()


# 2, 3: bounds ----------------------------------------------------------------------------------

def test_a_seed_beyond_64_bits_and_a_huge_unit_count_are_refused_at_once(pipeline, tmp_path):
    out = tmp_path / "x.safetensors"
    started = time.monotonic()
    refused(["train-ann", "--seed", str(2**70), "--out", out, *CPU], "--seed must be an integer in 0..", out)
    refused(["add-unit", pipeline["na"], "--m", "100000", "--out", out, *CPU], "--m must lie in 1..", out)
    refused(["study", "p.yaml", "--seeds", f"0,{2**64}", "--out-dir", tmp_path / "s"], "--seeds must be an integer")
    assert time.monotonic() - started < 10 and list(tmp_path.iterdir()) == []


# 5, 6, 7 and #24 item 7: records that would fool a terminal or a reader -------------------------

def _classes(names):
    return lambda record: record.update(classes=names)


def test_records_with_control_characters_or_duplicate_class_names_are_refused(pipeline, dataset_dir, tmp_path):
    others = ["fields", "lakes", "roads"]
    for index, names in enumerate([["a\x1b[31mred", *others[1:]], ["two\nlines", *others[1:]], ["lakes", "lakes", "roads"]]):
        bad = rewrite(pipeline["na"], tmp_path / f"bad{index}.safetensors", _classes(names))
        for command in (["info", bad], ["predict", bad, dataset_dir / "lakes" / "img000.png", *CPU]):
            result = refused(command, "corrupt stp record")
            assert "\x1b" not in result.output


def test_duplicate_json_keys_nan_and_a_tensor_named_twice_are_refused(pipeline, tmp_path):
    text = json.dumps(load_checkpoint(pipeline["na"]).record)
    doubled = text.replace('"classes": ', '"classes": ["x", "y", "z"], "classes": ', 1)
    nan = text.replace('"test_accuracy": ', '"test_accuracy": NaN, "ignored": ', 1)
    for index, record_text in enumerate((doubled, nan)):
        bad = rewrite(pipeline["na"], tmp_path / f"r{index}.safetensors")
        _replace_header(bad, lambda header, text=record_text: header["__metadata__"].update(stp=text) or header)
        refused(["info", bad], "appears twice" if index == 0 else "NaN is not a JSON number")
    twice = rewrite(pipeline["na"], tmp_path / "t.safetensors")
    _replace_header(twice, None, duplicate_first_tensor=True)
    refused(["info", twice], "appears twice")


def _replace_header(path: Path, edit, duplicate_first_tensor: bool = False) -> None:
    """Rewrite a safetensors header as text (so JSON that Python's json would never emit can be made)."""
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header, payload = json.loads(data[8:8 + size]), data[8 + size:]
    if edit is not None:
        header = edit(header)
    text = json.dumps(header)
    if duplicate_first_tensor:
        name = next(k for k in header if k != "__metadata__")
        entry = json.dumps({name: header[name]})[1:-1]
        text = text[:-1] + ", " + entry + "}"
    raw = text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)


def test_an_empty_or_duplicated_test_split_is_refused(pipeline, tmp_path):
    def empty(record):
        record["split"]["files"]["test"] = []
        record["split"]["sha256"] = split_hash(record["split"]["files"])

    def doubled(record):
        files = record["split"]["files"]
        files["test"] = files["test"] + files["test"][:3]
        record["split"]["sha256"] = split_hash(files)

    bad = rewrite(pipeline["na"], tmp_path / "empty.safetensors", empty)
    refused(["evaluate", bad, *CPU], "has no images")
    bad = rewrite(pipeline["na"], tmp_path / "doubled.safetensors", doubled)
    refused(["evaluate", bad, *CPU], "appears twice")


# #24 item 6: inputs read wrongly without a word -------------------------------------------------

def test_exif_orientation_is_applied_when_decoding(tmp_path):
    import numpy as np
    from PIL import Image

    from stpcli.data.imagefolder import decode_image

    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32] = 255  # left half white, as stored
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display", as a phone held upright writes
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    image = decode_image(path, 32)[0].float().mean(0)  # upright: 64 x 32, cropped to the middle 32 x 32
    top, bottom = image[:8].mean(), image[-8:].mean()
    assert top > 200 and bottom < 50, (top, bottom)  # the white half is on top once displayed upright


def test_a_symlinked_class_folder_and_a_one_class_pack_are_refused(dataset_dir, tmp_path):
    linked = tmp_path / "linked"
    shutil.copytree(dataset_dir, linked)
    os.symlink(linked / "lakes", linked / "lakes-again")
    out = tmp_path / "na.safetensors"
    refused(["train-ann", "--data", linked, "--out", out, *CPU], "the same file in two classes", out)
    single = tmp_path / "single"
    shutil.copytree(dataset_dir / "lakes", single / "lakes")
    pack = tmp_path / "one.safetensors"
    refused(["data", "pack", single, "--image-size", "32", "--out", pack], "needs at least 2", pack)


def test_cache_locations_expand_home_and_an_empty_variable_means_unset(monkeypatch, tmp_path):
    from stpcli.data.bands import Decoding
    from stpcli.data.source import _cache_file, default_cache_dir

    class Listing:
        content_sha256 = "0" * 64

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STP_CACHE_DIR", "")
    assert default_cache_dir() == tmp_path / ".cache" / "stpcli"  # not the working directory
    monkeypatch.setenv("STP_CACHE_DIR", "~/cache")
    assert default_cache_dir() == tmp_path / "cache"
    assert _cache_file(Path("~/x"), Listing, 32, Decoding()).parent == tmp_path / "x"  # not a literal ./~ folder


# #24 items 4-5: drivers own their children, one driver per folder, nothing left behind ----------

STUDY = """device: cpu
batch-size: 16
train-ann: {arch: vgg11, width: 0.125, image-size: 32, epochs: 400}
add-unit: {as: 4, m: 1, epochs: 1}
convert: {timesteps: 2, epochs: 1, calibration-images: 16}
temporal-prune: {schedule: '1', epochs-per-stage: 1}
spatial-prune: {epochs: 1}
"""


def _wait(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


@pytest.mark.slow
def test_a_killed_study_driver_takes_its_stage_with_it_and_a_rerun_continues(dataset_dir, tmp_path):
    from stpcli.files import lock_holder

    preset = tmp_path / "study.yaml"
    preset.write_text(STUDY)
    out = tmp_path / "study"
    args = [sys.executable, "-m", "stpcli", "study", str(preset), "--seeds", "0", "--out-dir", str(out),
            "--data", str(dataset_dir)]
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    na = out / "seed0" / "na.safetensors"
    _wait(lambda: (out / "seed0" / "na.state.safetensors").exists(), 120, "train-ann never saved an epoch")
    second = run_cli(["study", preset, "--seeds", "0", "--out-dir", out], expect=2)  # two drivers race: refused
    assert "study.lock" in second.output and "another stp run" in second.output
    driver.kill()  # kill -9: the driver cannot stop its child itself
    driver.wait()
    _wait(lambda: lock_holder(na) is None, 30, "the orphaned stage kept running")
    assert "stopped by SIGTERM" in (out / "seed0" / "na.log").read_text()
    rerun = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait(lambda: "resuming" in (out / "seed0" / "na.log").read_text().split("stopped by SIGTERM")[-1], 120,
          "the rerun did not resume the stage")
    rerun.send_signal(signal.SIGTERM)
    _, stderr = rerun.communicate(timeout=180)
    assert rerun.returncode == 130, stderr
    assert "study interrupted: 0 stage(s) finished" in stderr and "keep their training state" in stderr, stderr
    assert "nothing was written" not in stderr
    assert not list(out.rglob("*.lock")) and not list(out.rglob("*.tmp"))


# the seeded fuzzing, extended to the reading commands' options ---------------------------------

@pytest.mark.slow
def test_fuzz_predict_export_and_compare_options_work_or_refuse_in_one_line(pipeline, dataset_dir, tmp_path):
    import random

    rng = random.Random(2027)
    model = tmp_path / "sa_t1.safetensors"
    shutil.copy(pipeline["sa_t1"], model)
    image = dataset_dir / "roads" / "img001.jpg"
    protected = {path: path.read_bytes() for path in (model, image)}
    numbers = ["0", "-1", "1", "3", str(2**70), "1e9", "nan", "abc", ""]
    outputs = [model, image, tmp_path, "/dev/null", tmp_path / "new" / "x", tmp_path / "x.csv",
               tmp_path / "x.png", tmp_path / "x.nir", tmp_path / "x.onnx", tmp_path / "\x1b[31m.csv"]
    for trial in range(36):
        choice = trial % 3
        if choice == 0:
            args = ["predict", model, image, "--top-k", rng.choice(numbers), "--batch-size", rng.choice(numbers),
                    *rng.choice([[], ["--csv", rng.choice(outputs)], ["--json"]]), *rng.choice([[], ["--force"]]), *CPU]
        elif choice == 1:
            args = ["export", model, "--format", rng.choice(["nir", "onnx", "NIR", "", "pt"]),
                    "--out", rng.choice(outputs), *rng.choice([[], ["--force"]])]
        else:
            args = ["compare", model, rng.choice([model, image, tmp_path / "absent.safetensors"]),
                    *rng.choice([[], ["--plot", rng.choice(outputs)]]), *rng.choice([[], ["--force"]]), *CPU]
        started = time.monotonic()
        result = run_cli(args, expect=None)
        assert time.monotonic() - started < 30, args
        assert result.exit_code in (0, 1, 2), (args, result.output, result.exception)
        assert "Traceback" not in result.output and "unexpected" not in result.output, (args, result.output)
        if result.exit_code:
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert lines[-1].startswith(("error: ", "Error", "│", "╰", "Try")), (args, result.output)
        assert all(path.read_bytes() == data for path, data in protected.items()), args
        assert Path("/dev/null").is_char_device()
        for leftover in tmp_path.rglob("*"):
            assert not leftover.name.endswith((".tmp", ".lock")), (args, leftover)


# #22 items 10-13: what a newcomer reads ---------------------------------------------------------

def test_compare_of_different_datasets_says_so_and_names_same_named_files_by_folder(pipeline, tmp_path):
    other = tmp_path / "builtin" / "na.safetensors"  # the same file name, another dataset
    run_cli(["train-ann", "--width", "0.125", "--image-size", "32", "--epochs", "1", "--out", other, *CPU])
    text = run_cli(["compare", pipeline["na"], other, *CPU]).stdout
    assert "not comparable" in text and "builtin/na.safetensors" in text and "data" in text.split("\n")[2]
    rows = json.loads(run_cli(["compare", pipeline["na"], other, "--json", *CPU]).stdout)
    assert {row["data"] for row in rows} == {load_checkpoint(p).record["data"]["path"] for p in (pipeline["na"], other)}
    assert "not comparable" not in run_cli(["compare", pipeline["na"], pipeline["sa_t1"], *CPU]).stdout


def test_info_shows_normalisation_and_each_rows_t_and_config_keeps_numbers_numbers(pipeline):
    text = run_cli(["info", pipeline["sb_t1"]]).stdout
    assert ("input: 8-bit RGB; normalisation imagenet: (x / 255 - mean) / std, mean (0.485, 0.456, 0.406), "
            "std (0.229, 0.224, 0.225)") in text
    lineage = text[text.index("lineage"):]
    rows = {line.split("│")[2].strip(): line.split("│")[3].strip() for line in lineage.splitlines()
            if line.count("│") > 5 and line.split("│")[1].strip().isdigit()}
    assert rows["temporal-prune"] == "1" and rows["convert"] == "3" and rows["train-ann"] == ""
    config = run_cli(["info", pipeline["sb_t1"], "--config"]).stdout
    assert "epochs-per-stage: 1\n" in config


def test_spike_rates_are_labelled_by_layer_and_snn_curves_show_the_spike_rate(pipeline):
    from PIL import Image

    result = json.loads(run_cli(["evaluate", pipeline["sa_t1"], "--json", *CPU]).stdout)
    labels = [row["label"] for row in result["spike_rates"]]
    assert labels[0].startswith("0: conv3-") and all(": " in label for label in labels)
    folder = pipeline["sa_t1"].parent
    with Image.open(folder / "sa_t1.png") as snn, Image.open(folder / "na.png") as ann:
        assert snn.width > ann.width * 1.2  # a fourth panel: spikes per neuron per epoch


def test_figures_use_one_colour_per_method_and_vector_formats(tmp_path):
    from stpcli import plots

    rows = [{"checkpoint": name, "kind": "snn", "method": method, "timesteps": 1, "accuracy": 80.0 + i,
             "energy_uj": 3.0 + i} for i, (name, method) in enumerate([("s_t1", "TP"), ("sa_t1", "STP")])]
    svg = plots.accuracy_vs_energy(rows, "t", tmp_path / "c.svg").read_text()
    assert plots.METHOD_COLOURS["TP"] in svg and plots.METHOD_COLOURS["STP"] in svg
    study = [{"series": "TP", "method": "TP", "units": "", "timesteps": 1, "mean": 80.0, "std": 1.0},
             {"series": "STP AS5 M1", "method": "STP", "units": "AS5 M1", "timesteps": 1, "mean": 81.0, "std": 1.0}]
    svg = plots.accuracy_vs_timesteps(study, "t", tmp_path / "s.svg").read_text()
    assert plots.METHOD_COLOURS["TP"] in svg and plots.METHOD_COLOURS["STP"] in svg
