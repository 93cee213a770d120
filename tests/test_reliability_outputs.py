"""Reliability, round 3: the side outputs of the reading commands follow the stages' rules, bounds
on the last unbounded options, records a terminal or a reader could be fooled by, and the drivers'
children and leftovers. Each test is written from the attack's reproduction."""

import json
import shutil
import struct
import time
from pathlib import Path

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
