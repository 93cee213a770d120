"""Reliability, round 2: inputs never overwritten, no stale or mangled pixels, bounded work for any
file, clear errors for write failures, concurrent writers, tampered packs, NaN, signals, markup."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_imagefolder, run_cli
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from test_reliability import CPU, refused

from stpcli.checkpoint import load_checkpoint
from stpcli.data.source import load_dataset
from stpcli.engine.train import changed_options


def rewrite(source: Path, target: Path, edit=None, tensors_edit=None) -> Path:
    """Copy a checkpoint with its JSON record (and optionally its tensors) edited."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    record = json.loads(metadata["stp"])
    if edit is not None:
        edit(record)
    if tensors_edit is not None:
        tensors_edit(tensors)
    metadata["stp"] = json.dumps(record)
    save_file(tensors, str(target), metadata=metadata)
    return target


# 1, 2: outputs that are inputs ------------------------------------------------------------------

def test_an_input_is_never_overwritten_even_with_force(pipeline, tmp_path):
    for command, source, extra in (("add-unit", "na", ["--epochs", "0"]),
                                   ("convert", "nb", ["--epochs", "0", "--calibration-images", "8"]),
                                   ("spatial-prune", "sb_t1", ["--epochs", "0"])):
        copy = tmp_path / f"{source}.safetensors"
        shutil.copy(pipeline[source], copy)
        before = copy.read_bytes()
        refused([command, copy, *extra, "--out", copy, "--force", *CPU], "is this command's input")
        assert copy.read_bytes() == before
        run_cli(["info", copy, "--verify"], expect=None)


def test_temporal_prune_refuses_colliding_per_t_names_before_training(pipeline, tmp_path):
    out = tmp_path / "y_t2.safetensors"
    for extra in ([], ["--force"], ["--resume"]):
        refused(["temporal-prune", pipeline["sb_t3"], "--schedule", "2,1", "--epochs-per-stage", "1",
                 "--out", out, *extra, *CPU], "is also the T=2 file of --schedule", out)
    assert not list(tmp_path.iterdir())  # no state file, no checkpoint


# 3, 4: pixels ----------------------------------------------------------------------------------

def _bmp(path: Path, value: int) -> None:
    """An uncompressed image: the same size in bytes whatever its pixels."""
    Image.fromarray(np.full((40, 40, 3), value, dtype=np.uint8)).save(path.with_suffix(".bmp"))


def test_swapped_same_size_images_are_decoded_again_not_served_from_the_cache(tmp_path):
    root = make_imagefolder(tmp_path / "d", per_class=4)
    _bmp(root / "fields" / "swap.bmp", 20)
    _bmp(root / "lakes" / "swap.bmp", 230)
    cache = tmp_path / "cache"
    before = load_dataset(str(root), 32, cache_dir=cache)
    a, b = root / "fields" / "swap.bmp", root / "lakes" / "swap.bmp"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    after = load_dataset(str(root), 32, cache_dir=cache)
    assert before.source["fingerprint"] == after.source["fingerprint"]  # names and sizes unchanged
    assert before.source["content_sha256"] != after.source["content_sha256"]
    index = after.names.index("fields/swap.bmp")
    assert int(before.images[index].float().mean()) == 20 and int(after.images[index].float().mean()) == 230
    packs = []
    for name in ("before", "after"):
        pack = tmp_path / f"{name}.safetensors"
        a.write_bytes(data_a if name == "before" else data_b)
        b.write_bytes(data_b if name == "before" else data_a)
        run_cli(["data", "pack", root, "--image-size", "32", "--out", pack])
        packs.append(pack.read_bytes())
    assert packs[0] != packs[1]


def test_changed_content_with_the_recorded_names_is_refused(dataset_dir, tmp_path):
    root = tmp_path / "scenes"
    shutil.copytree(dataset_dir, root)
    _bmp(root / "lakes" / "plain.bmp", 90)
    na = tmp_path / "na.safetensors"
    run_cli(["train-ann", *TINY, "--data", root, "--epochs", "1", "--out", na])
    _bmp(root / "lakes" / "plain.bmp", 200)  # same name, same size, other pixels
    out = tmp_path / "nb.safetensors"
    refused(["add-unit", na, "--epochs", "0", "--out", out, *CPU], "other content", out)
    run_cli(["add-unit", na, "--epochs", "0", "--allow-data-change", "--out", out, *CPU])


def test_16_bit_and_float_images_are_stretched_not_destroyed_when_asked(tmp_path):
    """--normalise stretch keeps stp's earlier path for mixed folders (8-bit RGB with some 16-bit,
    32-bit and float images); without it such a folder is read as bands, and refused as mixed."""
    root = make_imagefolder(tmp_path / "d", per_class=3)
    ramp = np.tile(np.linspace(0, 1, 40), (40, 1))
    Image.fromarray((1000 + 2000 * ramp).astype(np.uint16)).save(root / "fields" / "deep.png")
    Image.fromarray((0.001 + 0.003 * ramp).astype(np.float32), mode="F").save(root / "lakes" / "float.tif")
    Image.fromarray((10**6 + 10**6 * ramp).astype(np.int32), mode="I").save(root / "roads" / "int32.tif")
    refused(["train-ann", *TINY, "--data", root, "--epochs", "1", "--out", tmp_path / "x.safetensors"],
            "bands or bit depths differ between files")
    data = load_dataset(str(root), 32, cache_dir=tmp_path / "c", normalisation="stretch")
    assert data.source["high_bit_depth"]["images"] == 3
    assert "percentile" in data.source["high_bit_depth"]["rule"]
    for name in ("fields/deep.png", "lakes/float.tif", "roads/int32.tif"):
        image = data.images[data.names.index(name)].float()
        assert image.min() < 30 and image.max() > 225, name  # the full range, not near-white or black
        row = image[0, 16]
        assert torch.all(row[1:] >= row[:-1] - 1), name  # the ramp survives
    na = tmp_path / "na.safetensors"
    run_cli(["train-ann", *TINY, "--data", root, "--epochs", "1", "--normalise", "stretch", "--out", na])
    assert load_checkpoint(na).record["data"]["high_bit_depth"]["images"] == 3


def test_a_decompression_bomb_is_a_bad_image(tmp_path, out):
    root = make_imagefolder(tmp_path / "d", per_class=3)
    bomb = root / "fields" / "bomb.png"
    Image.new("L", (12000, 12000)).save(bomb, optimize=True)  # 144 Mpx: over PIL's bomb limit
    refused(["train-ann", *TINY, "--data", root, "--out", out], "does not decode", out)
    run_cli(["train-ann", *TINY, "--data", root, "--on-bad-image", "skip", "--epochs", "1", "--out", out])


# 5, 6: bounded and typed records --------------------------------------------------------------

def _set(path, value):
    def edit(record):
        node = record
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


MALFORMED = [
    (("model",), {}), (("model", "image_size"), "32"), (("model", "image_size"), 100000),
    (("model", "channels"), [40000, 8, 16, 32, 32]), (("model", "depths"), [1, 1, 2, 2, 200000]),
    (("classes",), [1, 2, 3]), (("classes",), ["x" * 10_000_000, "b", "c"]), (("history",), [1, 2]),
    (("model", "units"), "yes"), (("input", "mean"), [0.5]), (("input", "std"), [0.2, 0.0, 0.2]),
    (("format_version",), True), (("split", "files"), {"train": 3}), (("data", "num_files"), -4),
]


@pytest.mark.parametrize("path,value", MALFORMED, ids=[".".join(p) for p, _ in MALFORMED])
def test_malformed_records_are_refused_in_one_line_and_bounded_time(pipeline, tmp_path, path, value):
    bad = rewrite(pipeline["na"], tmp_path / "bad.safetensors", _set(path, value))
    out = tmp_path / "o.safetensors"
    for args in (["info", bad], ["evaluate", bad, *CPU], ["add-unit", bad, "--epochs", "0", "--out", out, *CPU]):
        started = time.time()
        refused(args, "corrupt stp record", out)
        assert time.time() - started < 20


def test_snn_time_steps_out_of_bounds(pipeline, tmp_path):
    for value in (0, 2**70):
        bad = rewrite(pipeline["sb_t1"], tmp_path / "t.safetensors", _set(("timesteps",), value))
        refused(["evaluate", bad, *CPU], "corrupt stp record")
    refused(["evaluate", pipeline["sb_t1"], "--timesteps", "100000", *CPU], "--timesteps must lie in 1..64")


def test_absurd_options_are_refused_before_the_data_loads(pipeline, dataset_dir, tmp_path, out):
    base = ["train-ann", *TINY, "--data", tmp_path / "missing-data", "--out", out]
    # each of these is checked before the (missing) data folder is even looked at
    refused([*base, "--width", "nan"], "--width must lie in (0, 8]", out)
    refused([*base, "--width", "1000"], "--width must lie in (0, 8]", out)
    refused([*base, "--momentum", "-1"], "--momentum must lie in [0, 1)", out)
    refused([*base, "--dropout", "1"], "--dropout must lie in [0, 1)", out)
    refused([*base, "--pretrained", tmp_path / "absent.pth"], "--pretrained", out)
    refused([*base, "--resume"], "no training state", out)
    refused(["convert", pipeline["na"], "--threshold-scale", "nan", "--out", out, *CPU],
            "--threshold-scale must lie in (0, 100], got nan", out)
    binary = tmp_path / "preset.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    refused(["train-ann", "--config", binary, "--out", out], "is not a text file", out)
    boolean = tmp_path / "bool.yaml"
    boolean.write_text("train-ann:\n  epochs: true\n")
    refused(["train-ann", "--config", boolean, "--out", out], "bad value for 'epochs'", out)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    valid = tmp_path / "valid.yaml"
    valid.write_text("train-ann:\n  epochs: 1\n")
    refused(["pipeline", valid, "--out-dir", a_file], "is a file, not a folder")


def test_a_recorded_data_path_that_is_gone_is_named_as_recorded(pipeline, tmp_path, out):
    moved = rewrite(pipeline["na"], tmp_path / "na.safetensors", _set(("data", "path"), str(tmp_path / "gone")))
    result = refused(["add-unit", moved, "--epochs", "0", "--out", out, *CPU], "the recorded data", out)
    assert "--data " + str(tmp_path) not in result.output


def test_errors_name_where_a_unit_setting_came_from(pipeline, out):
    """Values read from the record are not blamed on options the user never passed."""
    result = refused(["spatial-prune", pipeline["sb_t1"], "--as", "1", "--out", out, *CPU], "removable", out)
    assert "--as 1 with the recorded M=1" in result.output and "--m" not in result.output
    result = refused(["spatial-prune", pipeline["sb_t1"], "--m", "3", "--out", out, *CPU], "removable", out)
    assert "--m 3 in the recorded Unit group 3" in result.output and "--as" not in result.output


def test_info_checks_the_tensors_against_the_recorded_model(pipeline, tmp_path):
    def drop_one(tensors):
        tensors.pop(sorted(tensors)[0])
    bad = rewrite(pipeline["na"], tmp_path / "bad.safetensors", tensors_edit=drop_one)
    refused(["info", bad], "tensors do not match the recorded model")


# 7, 8, 9: the disk and other writers ------------------------------------------------------------

def test_a_failing_cache_write_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    import stpcli.data.source as source

    def full(*args, **kwargs):
        from safetensors import SafetensorError
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(source, "write_cache_file", full)
    root = make_imagefolder(tmp_path / "d", per_class=3)
    data = load_dataset(str(root), 32, cache_dir=tmp_path / "c")
    assert data.images.shape[0] == 9
    assert "not cached" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "c").iterdir()] == []  # no partial cache


def test_a_full_disk_at_save_time_is_one_line_and_leaves_nothing(pipeline, tmp_path, monkeypatch):
    import stpcli.files as files

    def no_space(fd):  # a full disk shows at write or, on network filesystems, at fsync
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", no_space)
    out = tmp_path / "nb.safetensors"
    result = refused(["add-unit", pipeline["na"], "--epochs", "0", "--out", out, *CPU], "No space left on device", out)
    assert f"cannot write {out}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary, no lock


def test_an_unwritable_output_folder_is_refused_before_any_work(dataset_dir, tmp_path, monkeypatch):
    import stpcli.files as files

    real = files.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if Path(dir) == tmp_path:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    out = tmp_path / "na.safetensors"
    refused(["train-ann", *TINY, "--data", tmp_path / "not-read", "--out", out], "Read-only file system", out)


def test_a_second_writer_of_the_same_output_is_refused_at_once(pipeline, tmp_path):
    out = tmp_path / "nb.safetensors"
    lock = tmp_path / "nb.safetensors.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(holder.pid))
        refused(["add-unit", pipeline["na"], "--epochs", "0", "--out", out, *CPU], f"pid {holder.pid}", out)
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()
    run_cli(["add-unit", pipeline["na"], "--epochs", "0", "--out", out, *CPU])  # the holder is gone: stale lock
    assert out.exists() and not lock.exists()


# 10: packs ------------------------------------------------------------------------------------

def _edit_pack(pack: Path, target: Path, tensors_edit=None, record_edit=None) -> Path:
    with safe_open(str(pack), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k).clone() for k in handle.keys()}
    record = json.loads(metadata["stp-data"])
    if tensors_edit:
        tensors_edit(tensors)
    if record_edit:
        record_edit(record)
    metadata["stp-data"] = json.dumps(record)
    save_file(tensors, str(target), metadata=metadata)
    return target


def test_tampered_packs_are_refused(dataset_dir, tmp_path, out):
    pack = tmp_path / "p.safetensors"
    run_cli(["data", "pack", dataset_dir, "--image-size", "32", "--out", pack])

    def label(value):
        def edit(tensors):
            tensors["labels"][0] = value
        return edit

    def shorten(record):
        record["names"] = record["names"][:-1]

    def jpeg(tensors):
        tensors["jpeg"][500:520] = 7

    def offsets(tensors):
        tensors["offsets"][3] = tensors["offsets"][5]

    cases = {"label7": (label(7), None, "a label names no class"), "label-1": (label(-1), None, "a label names no class"),
             "names": (None, shorten, "do not match its"), "jpeg": (jpeg, None, "content hash"),
             "offsets": (offsets, None, "offsets out of order"), "relabel": (label(1), None, "content hash")}
    for name, (tensors_edit, record_edit, message) in cases.items():
        bad = _edit_pack(pack, tmp_path / f"{name}.safetensors", tensors_edit, record_edit)
        refused(["train-ann", *TINY, "--data", bad, "--out", out], message, out)


# 11: NaN --------------------------------------------------------------------------------------

def test_non_finite_values_are_refused_on_read(pipeline, tmp_path, out):
    def poison(tensors):
        key = next(k for k in sorted(tensors) if k.endswith("weight"))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float("nan")
    bad = rewrite(pipeline["na"], tmp_path / "nan.safetensors", tensors_edit=poison)
    refused(["convert", bad, "--epochs", "0", "--out", out, *CPU], "NaN or infinite", out)
    refused(["evaluate", bad, *CPU], "NaN or infinite")


# 12: signals and leftovers --------------------------------------------------------------------

def test_leftover_temporaries_are_cleared_by_the_next_run(pipeline, tmp_path):
    out = tmp_path / "nb.safetensors"
    leftovers = [tmp_path / ".nb.safetensors.abc123.tmp", tmp_path / ".nb.state.safetensors.def456.tmp"]
    for path in leftovers:
        path.write_bytes(b"\0" * 1000)
    run_cli(["add-unit", pipeline["na"], "--epochs", "1", "--batch-size", "16", "--out", out, *CPU])
    assert not any(path.exists() for path in leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nb.metrics.csv", "nb.png", "nb.safetensors"]


def test_what_a_killed_run_left_is_cleared_even_by_a_refused_resume(pipeline, tmp_path):
    """kill -9 during a stage leaves its lock (a dead pid), a figure's temporary, and for temporal
    pruning the lock of another T file; a refused --resume used to leave them all."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "tp_t1.safetensors"
    left = [tmp_path / "tp_t1.safetensors.lock", tmp_path / "tp_t2.safetensors.lock", tmp_path / ".tp_t1.png.x1.tmp",
            tmp_path / ".tp_t2.metrics.csv.x2.tmp", tmp_path / ".tp_t1.safetensors.x3.tmp"]
    for path in left:
        path.write_text(dead if path.suffix == ".lock" else "partial")
    refused(["temporal-prune", pipeline["sb_t3"], "--schedule", "2,1", "--out", out, "--epochs-per-stage", "0", "--resume",
             *CPU], "--epochs must be positive")  # refused before the output is looked at: nothing cleared yet
    refused(["spatial-prune", pipeline["sb_t1"], "--epochs", "0", "--resume", "--out", out, *CPU],
            "--resume needs a stage that trains", out)
    assert not any(path.exists() for path in left[:1] + left[2:3] + left[4:]), sorted(p.name for p in tmp_path.iterdir())
    refused(["temporal-prune", pipeline["sb_t3"], "--schedule", "2,1", "--out", out, "--epochs-per-stage", "1",
             "--data", tmp_path / "absent", *CPU], "does not exist", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("sig,delay", [(signal.SIGTERM, 0.3), (signal.SIGINT, 0.3), (signal.SIGTERM, 0.5),
                                       (signal.SIGINT, 0.5), (signal.SIGTERM, 0.9)])
def test_a_signal_while_stp_starts_exits_130_with_a_message(dataset_dir, tmp_path, sig, delay):
    """Also while the command imports torch: a KeyboardInterrupt there used to leave torch half
    imported (then 'unexpected RecursionError') or be swallowed (the run went on and exited 0)."""
    out = tmp_path / "na.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "stpcli", "train-ann", *TINY, "--data", str(dataset_dir),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "error: interrupted" in err and "Traceback" not in err
    assert not out.exists()


def test_resume_names_changed_options_by_flag_and_accepts_a_new_lr():
    recorded = {"stage": "train-ann", "train": {"lr": 0.1, "schedule": "step", "batch_size": 16}, "arch": "vgg11"}
    assert changed_options(recorded, {**recorded, "train": {**recorded["train"], "lr": 0.01}}) == []
    changed = changed_options(recorded, {**recorded, "train": {**recorded["train"], "schedule": "cosine"}})
    assert changed == ["--lr-schedule"]


# 13: smaller ----------------------------------------------------------------------------------

def test_markup_in_paths_is_printed_as_it_is(pipeline, tmp_path):
    folder = tmp_path / "[exp1]" / "run["
    folder.mkdir(parents=True)
    target = folder / "x]b.safetensors"  # the path reads [exp1]/run[/x]b.safetensors
    shutil.copy(pipeline["na"], target)
    text = run_cli(["info", target]).stdout
    assert "[exp1]/run[/x]b.safetensors" in text.replace("\n", "")


# fuzzing of the record's fields ---------------------------------------------------------------

FUZZ_VALUES = [None, -1, 0, 2**70, 1e308, -0.5, "", "x" * 100_000, [], {}, True, [1, "a"], {"a": {"b": 1}}]


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list) and node and len(node) <= 8:
        for index, value in enumerate(node):
            yield prefix + (index,)
            yield from _paths(value, prefix + (index,))


@pytest.mark.slow
def test_fuzz_record_fields_every_reader_works_or_refuses_in_one_line(pipeline, tmp_path):
    rng = random.Random(2026)
    base = json.loads(safe_open(str(pipeline["sb_t1"]), framework="pt").metadata()["stp"])
    paths = [p for p in _paths(base) if p[0] not in ("created", "tool_version")]
    for trial in range(30):
        path = rng.choice(paths)
        value = rng.choice(FUZZ_VALUES)
        bad = rewrite(pipeline["sb_t1"], tmp_path / f"f{trial}.safetensors", _set(path, value))
        out = tmp_path / f"o{trial}.safetensors"
        for args in (["info", bad], ["evaluate", bad, *CPU],
                     ["spatial-prune", bad, "--epochs", "0", "--out", out, *CPU]):
            started = time.time()
            result = run_cli(args, expect=None)
            assert time.time() - started < 30, (path, value, args)
            assert result.exit_code in (0, 2, 4), (path, value, args, result.output, result.exception)
            if result.exit_code:
                assert result.output.strip().splitlines()[-1].startswith("error: "), (path, value, result.output)
                assert not out.exists()
            out.unlink(missing_ok=True)


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out.safetensors"


def test_the_record_schema_is_published_and_accepts_real_checkpoints(pipeline):
    from stpcli.schema import Record

    schema = json.loads(run_cli(["schema"]).stdout)
    assert schema["checkpoint"]["properties"]["model"] and schema["data_pack"]["properties"]["content_sha256"]
    for key in ("na", "nb", "sb_t1", "sa_t1"):
        Record.model_validate(load_checkpoint(pipeline[key]).record)


def test_spatial_prune_refuses_layers_other_than_the_recorded_units(pipeline, out):
    """The pipeline fixture's Sb records one Unit at the end of layer group 3 (layer 6): --as/--m that
    name other layers (a base layer of group 4, say) are refused with the recorded location, before
    anything is written; naming the recorded Units works as leaving them out does."""
    result = refused(["spatial-prune", pipeline["sb_t1"], "--as", "4", "--m", "1", "--epochs", "0", "--out", out, *CPU],
                     "names other layers than this checkpoint's Units", out)
    assert "layer group 3 (layers 6..6)" in result.output and "--as 3 --m 1" in result.output
    run_cli(["spatial-prune", pipeline["sb_t1"], "--as", "3", "--m", "1", "--epochs", "0", "--out", out, *CPU])
    assert load_checkpoint(out).model_spec["units"] is None


@pytest.mark.parametrize("case,edit,tensors_edit,message", [
    ("huge statistics", _set(("input", "mean"), [1e308, 0.4, 0.4]), None, "every mean must lie in"),
    ("tiny std", _set(("input", "std"), [1e-308, 0.2, 0.2]), None, "every std must lie in"),
    ("a band twice", lambda r: r["input"].update(decoding="bands", bands=[1, 1, 1]), None, "every band must be listed once"),
    ("unknown architecture", _set(("model", "arch"), "alexnet"), None, "is not an architecture of this stp"),
    ("layers of another architecture", _set(("model", "arch"), "vgg16"), None, "not vgg16's at width"),
    ("zero threshold", None, lambda t: t["layers.0.neuron.threshold"].zero_(), "a threshold must be positive"),
    ("leak above 1", None, lambda t: t["layers.0.neuron.leak"].fill_(1.5), "a leak lies in [0, 1]"),
    ("int8 weights", None, lambda t: t.update({"layers.0.conv.weight": t["layers.0.conv.weight"].to(torch.int8)}),
     "holds I8 values; the model needs floating-point values"),
])
def test_records_and_tensors_a_model_cannot_have_are_refused_by_every_reader(pipeline, tmp_path, out, case, edit,
                                                                          tensors_edit, message):
    """Statistics that overflow the input, a band read twice, an architecture stp does not know (or
    whose layers are not that architecture's), non-positive thresholds, leaks outside [0, 1] and
    integer weights are refused in one line by info, evaluate, predict and export, not reported and run."""
    bad = rewrite(pipeline["sb_t1"], tmp_path / "bad.safetensors", edit, tensors_edit)
    image = next(p for p in pipeline["na"].parent.parent.rglob("*.png"))
    for args in (["info", bad], ["evaluate", bad, *CPU], ["predict", bad, image, *CPU],
                 ["export", bad, "--format", "onnx", "--out", out]):
        refused(args, message, out)
