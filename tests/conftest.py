"""Shared fixtures: a small real-format ImageFolder dataset and a trained tiny pipeline."""

from __future__ import annotations

import os

# The Triton LIF kernels run on the CPU through Triton's interpreter; triton reads this when it is
# first imported, so it is set before anything imports it (tests/test_triton_lif.py).
os.environ.setdefault("TRITON_INTERPRET", "1")
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from stpcli.cli import app

TINY = ["--arch", "vgg11", "--width", "0.125", "--image-size", "32", "--batch-size", "16", "--device", "cpu"]
CLASSES = ["fields", "lakes", "roads"]

# Tests send Ctrl-C (SIGINT) to the stp processes they start. A suite started in the background
# (`make test &`, nohup, some CI runners) inherits SIGINT ignored, and an ignored signal stays
# ignored across exec, so those children would never see it; a handled one is reset to the default.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("STP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def write_image(path: Path, rng: np.random.Generator, label: int, size: tuple[int, int]) -> None:
    """A class-dependent pattern (so a model can learn it) in the format the suffix names."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.zeros((h, w, 3), dtype=np.float64)
    base[..., label] = 160 + 60 * np.sin((xx if label != 1 else yy) / (3 + label))
    noisy = base + rng.normal(0, 25, base.shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)


def make_imagefolder(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    suffixes = [".png", ".jpg", ".tif"]
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (40, 40) if i % 4 else (37 + i % 3, 43)  # odd sizes, as in UC Merced
            write_image(folder / f"img{i:03d}{suffixes[i % 3]}", rng, label, size)
    return root


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data") / "scenes")


def run_cli(args: list[str], expect: int | None = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if expect is not None:
        assert result.exit_code == expect, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, dataset_dir) -> dict[str, Path]:
    """Na -> Nb -> Sb(T3) -> Sb(T2), Sb(T1) -> Sa(T1) on the tiny dataset, a few epochs each."""
    os.environ.setdefault("STP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    out = tmp_path_factory.mktemp("pipeline")
    files = {name: out / f"{name}.safetensors" for name in ("na", "nb", "sb_t3", "sb_t2", "sb_t1", "sa_t1")}
    run_cli(["train-ann", *TINY, "--data", dataset_dir, "--epochs", "3", "--lr", "0.02", "--out", files["na"]])
    run_cli(["add-unit", files["na"], "--as", "3", "--m", "1", "--epochs", "1", "--batch-size", "16",
             "--device", "cpu", "--out", files["nb"]])
    run_cli(["convert", files["nb"], "--timesteps", "3", "--epochs", "1", "--lr", "1e-3", "--batch-size", "16",
             "--calibration-images", "32", "--device", "cpu", "--out", files["sb_t3"]])
    run_cli(["temporal-prune", files["sb_t3"], "--schedule", "2,1", "--epochs-per-stage", "1", "--lr", "1e-3",
             "--batch-size", "16", "--device", "cpu", "--out", files["sb_t1"]])
    run_cli(["spatial-prune", files["sb_t1"], "--epochs", "1", "--lr", "1e-3", "--batch-size", "16",
             "--device", "cpu", "--out", files["sa_t1"]])
    return files
