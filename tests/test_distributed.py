"""Training under torchrun: two CPU processes (gloo), one checkpoint, the same split and accuracy within noise."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stpcli.checkpoint import load_checkpoint

ARGS = ["train-ann", "--arch", "vgg11", "--width", "0.125", "--image-size", "32", "--batch-size", "32",
        "--epochs", "8", "--lr", "0.05", "--device", "cpu", "--seed", "1"]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp, single = tmp_path / "ddp" / "na.safetensors", tmp_path / "single" / "na.safetensors"
    ddp.parent.mkdir()
    single.parent.mkdir()
    run = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "stpcli", *ARGS,
                          "--out", str(ddp)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    subprocess.run([sys.executable, "-m", "stpcli", *ARGS, "--out", str(single)], check=True, capture_output=True,
                   env=env, timeout=600)
    a, b = load_checkpoint(ddp), load_checkpoint(single)
    assert a.record["split"] == b.record["split"]
    assert sorted(p.name for p in ddp.parent.iterdir()) == ["na.metrics.csv", "na.png", "na.safetensors"]  # rank 0 alone wrote
    assert run.stdout.count("best val") == 1  # and alone printed
    acc_ddp, acc_single = (c.history[-1]["metrics"]["test_accuracy"] for c in (a, b))
    assert acc_ddp > 25 and abs(acc_ddp - acc_single) < 20, (acc_ddp, acc_single)
