"""Reliability, round 4: the reproductions of the issue's hangs, crashes and misleading refusals,
each refused in one line, fast, leaving nothing behind (the silent wrong results are tested beside
the features they concern: test_reliability_inputs, test_multispectral, test_standard_datasets,
test_deploy)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
from conftest import TINY, run_cli
from test_reliability import CPU, refused


def _preset(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_presets_that_exist_but_are_no_preset_are_named_for_what_they_are(tmp_path, out):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    big = _preset(tmp_path, "lr: 0.1\n" + "# padding\n" * 1_200_000, "big.yaml")  # 12 MB
    deep = _preset(tmp_path, "lr: " + "[" * 100_000 + "]" * 100_000 + "\n", "deep.yaml")
    cases = [(fifo, "is not a regular file"), (tmp_path, "is a folder, not a file"), (big, "at most 10 MiB is read"),
             (deep, "nests its values too deeply")]
    for preset, message in cases:
        for args in (["train-ann", *TINY, "--config", preset, "--out", out], ["pipeline", preset, "--out-dir", tmp_path / "p"],
                     ["study", preset, "--out-dir", tmp_path / "s"]):
            started = time.time()
            refused(args, message, out)
            assert time.time() - started < 10
    assert not (tmp_path / "p").exists() and not (tmp_path / "s").exists()


def test_a_yaml_merge_key_is_yaml_and_a_key_it_overrides_is_not_a_duplicate(tmp_path):
    preset = _preset(tmp_path, "device: cpu\nconvert: &snn\n  lr: 0.001\n  epochs: 1\nspatial-prune:\n  <<: *snn\n"
                               "  lr: 0.002\n")
    from stpcli.cli.common import read_yaml

    assert read_yaml(preset, "preset")["spatial-prune"] == {"lr": 0.002, "epochs": 1}
    twice = _preset(tmp_path, "convert:\n  lr: 0.1\n  lr: 0.2\n", "twice.yaml")
    with pytest.raises(Exception, match="the key 'lr' appears twice"):
        read_yaml(twice, "preset")


def test_an_error_quoting_a_huge_value_is_cut_to_a_readable_line(tmp_path, out):
    preset = _preset(tmp_path, "train-ann: '" + "x" * 200_000 + "'\n")
    result = refused(["train-ann", *TINY, "--config", preset, "--out", out], "must be a mapping", out)
    line = result.output.strip().splitlines()[-1]
    assert len(line) < 800 and "characters left out" in line


@pytest.mark.parametrize("value", ["²", "３", "1,³"])
def test_bands_that_are_digits_only_to_unicode_are_not_band_numbers(dataset_dir, out, value):
    refused(["train-ann", *TINY, "--data", dataset_dir, "--bands", value, "--out", out], "is not a band of", out)


def test_numbers_out_of_reason_are_refused_before_any_work(pipeline, dataset_dir, tmp_path, out):
    refused(["convert", pipeline["na"], "--threshold-scale=1e300", "--out", out, *CPU], "must lie in (0, 100]", out)
    refused(["train-ann", *TINY, "--data", dataset_dir, "--scale", "1e-300", "--out", out], "[1e-12, 1e6]", out)
    refused(["data", "multispectral-example", tmp_path / "ms", "--seed=-1"], "--seed must be an integer", tmp_path / "ms")


def _tiffs(root, bands, count=3, extra=None):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            tifffile.imwrite(root / cls / f"{i}.tif", rng.integers(0, 1000, (bands, 32, 32)).astype(np.int16),
                             planarconfig="separate", photometric="minisblack")
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
    return root


def test_more_bands_than_a_model_reads_are_refused_before_training(tmp_path, out):
    root = _tiffs(tmp_path / "wide", 70)
    result = refused(["train-ann", *TINY, "--data", root, "--out", out], "a model reads at most 64", out)
    assert "--bands" in result.output
    assert not list((out.parent).glob("*.state.safetensors"))


def test_damaged_tiffs_are_skipped_on_request_and_named_otherwise(tmp_path, out):
    root = _tiffs(tmp_path / "damaged", 13, extra={"a/bad.tif": b"II*\x00" + b"\xff" * 20,
                                                   "b/garbage.tif": b"MM\x00*" + bytes(range(50))})
    result = refused(["train-ann", *TINY, "--data", root, "--out", out], "does not decode", out)
    assert "Traceback" not in result.output and "IndexError" not in result.output
    skipped = run_cli(["train-ann", *TINY, "--data", root, "--epochs", "1", "--on-bad-image", "skip", "--out", out])
    assert "skipped 2 image(s)" in skipped.output


def test_normalisations_for_8_bit_images_on_multiband_data_say_so(tmp_path, out):
    root = _tiffs(tmp_path / "ms", 13)
    for normalisation in ("imagenet", "stretch"):
        refused(["train-ann", *TINY, "--data", root, "--normalise", normalisation, "--out", out],
                "reads 8-bit RGB images", out)


def test_a_pipeline_stopped_by_a_failing_stage_gives_the_stage_s_reason(tmp_path):
    preset = _preset(tmp_path, "device: cpu\ntrain-ann: {arch: vgg11, width: 0.125, image-size: 32, epochs: 1}\n")
    result = run_cli(["pipeline", preset, "--out-dir", tmp_path / "run", "--data", tmp_path / "empty"], expect=2)
    assert "does not exist" in result.output  # the plan refuses a missing --data before any stage
    (tmp_path / "nothing").mkdir()
    result = run_cli(["pipeline", preset, "--out-dir", tmp_path / "run", "--data", tmp_path / "nothing"], expect=None)
    assert result.exit_code != 0
    line = result.output.strip().splitlines()[-1]
    assert "pipeline stopped: stp train-ann exited with status" in line and "(its output:" in line
    assert ": " in line.split("exited with status")[1].split("(its output")[0]  # the stage's own reason


@pytest.mark.parametrize("sig,delay", [(signal.SIGINT, 0.4), (signal.SIGTERM, 1.0), (signal.SIGINT, 2.0)])
def test_a_pipeline_stopped_while_it_starts_starts_no_stage(tmp_path, sig, delay):
    preset = _preset(tmp_path, "device: cpu\ntrain-ann: {arch: vgg11, width: 0.125, image-size: 32, epochs: 1}\n")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "stpcli", "pipeline", str(preset), "--out-dir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not (run / "na.safetensors").exists() and not list(run.glob("*.state.safetensors"))


def test_a_split_list_too_large_to_be_one_is_refused_at_once(dataset_dir, tmp_path, out):
    lists = tmp_path / "lists"
    lists.mkdir()
    with open(lists / "x-train.txt", "wb") as handle:
        handle.truncate(65 << 20)  # 65 MB of NUL bytes, sparse
    (lists / "x-test.txt").write_text("fields/img000.png\n")
    started = time.time()
    refused(["train-ann", *TINY, "--data", dataset_dir, "--split-file", lists / "x-train.txt", "--out", out],
            "at most 64 MiB is read", out)
    assert time.time() - started < 20


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out.safetensors"
