"""Bad input is refused with one line and no output; interrupted work resumes; corrupt files never crash."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_imagefolder, run_cli
from safetensors.torch import save_file

from stpcli.checkpoint import load_checkpoint

CPU = ["--device", "cpu"]


def refused(args, message, out: Path | None = None, code=2):
    result = run_cli(args, expect=None)
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    if out is not None:
        assert not out.exists(), f"{out} was written"
    return result


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out.safetensors"


def test_missing_unreadable_and_foreign_inputs(pipeline, tmp_path, out):
    refused(["convert", tmp_path / "absent.safetensors", "--out", out], "does not exist", out)
    text = tmp_path / "notes.safetensors"
    text.write_text("not a checkpoint")
    refused(["add-unit", text, "--out", out], "not a readable safetensors file", out)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(pipeline["na"].read_bytes()[: pipeline["na"].stat().st_size // 2])
    refused(["convert", truncated, "--out", out], "not a readable safetensors file", out)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    refused(["evaluate", foreign], "not an stp checkpoint", None)
    future = tmp_path / "future.safetensors"
    record = load_checkpoint(pipeline["na"]).record | {"format_version": 99}
    save_file({"weight": torch.zeros(3)}, str(future), metadata={"stp": json.dumps(record)})
    refused(["info", future], "newer than this stp", None)
    if os.geteuid() != 0:  # root reads everything
        locked = tmp_path / "locked.safetensors"
        locked.write_bytes(pipeline["na"].read_bytes())
        locked.chmod(0)
        refused(["info", locked], "not readable", None)


def test_wrong_kind_for_the_command(pipeline, out):
    refused(["convert", pipeline["sb_t1"], "--out", out], "convert needs an ANN checkpoint", out)
    refused(["add-unit", pipeline["sb_t3"], "--out", out], "add-unit needs an ANN checkpoint", out)
    refused(["temporal-prune", pipeline["na"], "--out", out], "temporal-prune needs an SNN checkpoint", out)
    refused(["spatial-prune", pipeline["nb"], "--out", out], "spatial-prune needs an SNN checkpoint", out)
    refused(["evaluate", pipeline["na"], "--timesteps", "2"], "SNN checkpoints only")


def test_unit_locations_out_of_range_or_not_removable(pipeline, out):
    refused(["add-unit", pipeline["na"], "--as", "6", "--out", out, *CPU], "out of range", out)
    refused(["add-unit", pipeline["na"], "--as", "2", "--m", "0", "--out", out, *CPU], "--m must lie in 1..", out)
    refused(["add-unit", pipeline["nb"], "--as", "2", "--out", out, *CPU], "already has 1 Unit", out)
    refused(["spatial-prune", pipeline["sb_t1"], "--as", "1", "--m", "1", "--out", out, *CPU], "removable", out)
    refused(["spatial-prune", pipeline["sb_t1"], "--as", "3", "--m", "3", "--out", out, *CPU], "removable", out)
    refused(["spatial-prune", pipeline["sa_t1"], "--out", out, *CPU], "no Units recorded", out)


@pytest.mark.parametrize("schedule,message", [("3,3,1", "strictly descending"), ("1,2", "strictly descending"),
                                              ("3,2", "end at 1"), ("2,x,1", "comma-separated integers"),
                                              ("5,3,1", "above the checkpoint's T=3"), ("0", "time steps in 1..64"),
                                              ("100000,1", "time steps in 1..64")])
def test_bad_schedules(pipeline, out, schedule, message):
    refused(["temporal-prune", pipeline["sb_t3"], "--schedule", schedule, "--out", out, *CPU], message, out)


def test_bad_numbers(pipeline, dataset_dir, out):
    base = ["train-ann", *TINY, "--data", dataset_dir, "--out", out]
    refused([*base, "--epochs", "-1"], "--epochs must be positive", out)
    refused([*base, "--epochs", "0"], "--epochs must be positive", out)
    refused([*base, "--batch-size", "0"], "--batch-size must be positive", out)
    refused([*base, "--image-size", "0"], "--image-size must lie in 16..1024", out)
    refused([*base, "--train-ratio", "0"], "--train-ratio must lie in (0, 1)", out)
    refused([*base, "--train-ratio", "1.5"], "--train-ratio must lie in (0, 1)", out)
    refused([*base, "--val-ratio", "1"], "--val-ratio must lie in [0, 1)", out)
    refused([*base, "--width", "-1"], "--width must lie in (0, 8]", out)
    refused([*base, "--lr", "0"], "--lr must be positive", out)
    refused(["add-unit", pipeline["na"], "--epochs", "-2", "--out", out, *CPU], "--epochs must be zero or more", out)
    refused(["convert", pipeline["nb"], "--timesteps", "0", "--out", out, *CPU], "--timesteps must lie in 1..64", out)
    refused(["temporal-prune", pipeline["sb_t3"], "--epochs-per-stage", "0", "--out", out, *CPU],
            "--epochs must be positive", out)
    tp = ["temporal-prune", pipeline["sb_t3"], "--schedule", "2,1", "--out", out, *CPU]
    refused([*tp, "--epochs-per-stage", "1,2,3"], "--epochs-per-stage has 3 values for the 2 time steps", out)
    refused([*tp, "--epochs-per-stage", "1,x"], "--epochs-per-stage must be integers", out)
    refused([*tp, "--lr-schedule", "step,linear"], "--lr-schedule must be one of", out)
    refused(["convert", pipeline["nb"], "--percentile", "0", "--out", out, *CPU], "--percentile", out)


def test_bad_datasets(tmp_path, out):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(["train-ann", *TINY, "--data", empty, "--out", out], "no class folders", out)
    root = make_imagefolder(tmp_path / "d", per_class=4)
    (root / "hollow").mkdir()
    refused(["train-ann", *TINY, "--data", root, "--out", out], "has no images", out)
    (root / "hollow").rmdir()
    (root / "fields" / "bad.png").write_bytes(b"\x89PNG broken")
    refused(["train-ann", *TINY, "--data", root, "--out", out], "does not decode", out)
    run_cli(["train-ann", *TINY, "--data", root, "--on-bad-image", "skip", "--epochs", "1", "--out", out])
    assert out.exists()


def test_data_that_changed_or_has_other_classes(pipeline, dataset_dir, tmp_path, out):
    changed = tmp_path / "changed"
    make_imagefolder(changed, per_class=12)
    make_imagefolder(changed, per_class=13)  # one more image per class
    refused(["add-unit", pipeline["na"], "--data", changed, "--out", out, *CPU], "--allow-data-change", out)
    run_cli(["add-unit", pipeline["na"], "--data", changed, "--allow-data-change", "--epochs", "0", "--out", out, *CPU])
    out.unlink()
    other = tmp_path / "other"
    make_imagefolder(other, per_class=12)
    (other / "roads").rename(other / "rivers")
    refused(["add-unit", pipeline["na"], "--data", other, "--allow-data-change", "--out", out, *CPU],
            "classes", out)


def test_outputs_are_never_overwritten_without_force(pipeline, tmp_path):
    existing = tmp_path / "nb.safetensors"
    existing.write_bytes(b"precious")
    refused(["add-unit", pipeline["na"], "--epochs", "0", "--out", existing, *CPU], "pass --force", None)
    assert existing.read_bytes() == b"precious"
    nested = tmp_path / "runs" / "x" / "nb.safetensors"  # a missing folder is created, as users expect
    run_cli(["add-unit", pipeline["na"], "--epochs", "0", "--out", nested, *CPU])
    assert load_checkpoint(nested).kind == "ann"
    refused(["add-unit", pipeline["na"], "--data", tmp_path / "absent", "--out", tmp_path / "gone" / "nb.safetensors",
             *CPU], "does not exist")
    assert not (tmp_path / "gone").exists()  # and removed again when the command fails
    run_cli(["add-unit", pipeline["na"], "--epochs", "0", "--out", existing, "--force", *CPU])
    assert load_checkpoint(existing).kind == "ann"
    # temporal-prune refuses a schedule whose stage file would be its own input
    source = tmp_path / "sb_t3.safetensors"
    source.write_bytes(pipeline["sb_t3"].read_bytes())
    refused(["temporal-prune", source, "--schedule", "3,1", "--out", tmp_path / "sb_t1.safetensors", *CPU],
            "would overwrite the input", tmp_path / "sb_t1.safetensors")
    assert source.read_bytes() == pipeline["sb_t3"].read_bytes()


def _stp(*args):
    return [sys.executable, "-m", "stpcli", *map(str, args)]


def _train_cmd(dataset_dir, out):
    return _stp("train-ann", *TINY, "--data", dataset_dir, "--epochs", "6", "--seed", "3", "--out", out)


def _wait_for_epoch(state: Path, proc, at_least: int, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if state.exists():
            try:
                from stpcli.engine.state import read_state_record

                if read_state_record(state)["epoch"] >= at_least:
                    return
            except Exception:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"training ended before epoch {at_least}: {proc.stdout.read()}")
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the training state")


def test_kill_9_then_resume_gives_the_uninterrupted_weights(dataset_dir, tmp_path):
    reference = tmp_path / "ref.safetensors"
    subprocess.run(_train_cmd(dataset_dir, reference), check=True, capture_output=True)
    killed = tmp_path / "killed.safetensors"
    state = tmp_path / "killed.state.safetensors"
    proc = subprocess.Popen(_train_cmd(dataset_dir, killed), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_epoch(state, proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists() and state.exists()
    # without --resume the state is protected
    again = subprocess.run(_train_cmd(dataset_dir, killed), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr
    done = subprocess.run(_train_cmd(dataset_dir, killed) + ["--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    a, b = load_checkpoint(reference), load_checkpoint(killed)
    assert set(a.tensors) == set(b.tensors)
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key
    assert a.history[-1]["metrics"]["test_accuracy"] == b.history[-1]["metrics"]["test_accuracy"]
    assert not state.exists()


def test_ctrl_c_under_make_then_make_again_resumes_and_gives_the_uninterrupted_tensors(dataset_dir, tmp_path):
    """The Makefile's rules run --if-changed: Ctrl-C (SIGINT to make's process group) during a stage,
    then make again, continues that stage from its state, and a third make has nothing to do."""
    root = Path(__file__).resolve().parent.parent
    preset = tmp_path / "tiny.yaml"
    preset.write_text("device: cpu\nseed: 2\nbatch-size: 16\ntrain-ann: {arch: vgg11, width: 0.125, image-size: 32, "
                      "epochs: 1}\nadd-unit: {as: 4, m: 1, epochs: 0}\nconvert: {timesteps: 2, epochs: 3, "
                      "calibration-images: 16}\n")

    def make(out: Path, **popen):
        return subprocess.Popen(["make", "-C", str(root / "examples"), f"{out}/sb_t5.safetensors", f"OUT={out}",
                                 f"CONFIG={preset}", f"DATA={dataset_dir}", f"STP={sys.executable} -m stpcli"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)

    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert make(reference).wait() == 0
    first = make(interrupted, start_new_session=True)
    _wait_for_epoch(interrupted / "sb_t5.state.safetensors", first, 1)
    os.killpg(first.pid, signal.SIGINT)
    first.communicate(timeout=120)
    if (interrupted / "sb_t5.safetensors").exists():
        pytest.skip("the stage finished before the signal arrived")
    again = make(interrupted)
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, output
    assert "resuming from" in output and "train-ann" not in output  # make reruns the interrupted stage only
    a, b = load_checkpoint(reference / "sb_t5.safetensors"), load_checkpoint(interrupted / "sb_t5.safetensors")
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    epochs = [line.split(",")[0] for line in (interrupted / "sb_t5.metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]  # the epoch counter continued
    preset.touch()
    third = make(interrupted).communicate(timeout=300)[0]
    assert third.count("is up to date") == 3 and "rebuilding" not in third


def test_resume_refuses_any_other_option_of_the_stage(dataset_dir, tmp_path):
    """What an interrupted run must share with the run that resumes it is every option of its stage
    (the options class), not a hand-picked few: resuming with another --normalise would continue
    weights trained on other inputs."""
    out = tmp_path / "na.safetensors"
    state = tmp_path / "na.state.safetensors"
    proc = subprocess.Popen(_train_cmd(dataset_dir, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_epoch(state, proc, 1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    if not state.exists():
        pytest.skip("training finished before the signal arrived")
    other = subprocess.run(_train_cmd(dataset_dir, out) + ["--resume", "--normalise", "dataset"],
                           capture_output=True, text=True)
    assert other.returncode == 2 and "--normalise differ(s)" in other.stderr, other.stderr
    assert state.exists() and not out.exists()
    same = subprocess.run(_train_cmd(dataset_dir, out) + ["--resume"], capture_output=True, text=True)
    assert same.returncode == 0 and "resuming from" in same.stdout, same.stderr


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_signals_stop_at_a_safe_point_and_keep_the_state(dataset_dir, tmp_path, sig, code):
    out = tmp_path / "na.safetensors"
    state = tmp_path / "na.state.safetensors"
    proc = subprocess.Popen(_train_cmd(dataset_dir, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_epoch(state, proc, 1)
    proc.send_signal(sig)
    output = proc.communicate(timeout=60)[0]
    if proc.returncode == 0:  # the run finished before the signal landed; nothing to check
        pytest.skip("training finished before the signal arrived")
    assert proc.returncode == code, output
    assert "--resume" in output and "Traceback" not in output
    assert state.exists() and not out.exists()


def test_non_finite_loss_stops_with_a_clear_message(dataset_dir, tmp_path):
    out = tmp_path / "na.safetensors"
    result = run_cli(["train-ann", *TINY, "--data", dataset_dir, "--epochs", "3", "--lr", "1e30", "--out", out],
                     expect=None)
    assert result.exit_code == 3, result.output
    assert "NaN or infinite" in result.output and not out.exists()


def test_resume_refuses_a_missing_state(dataset_dir, tmp_path):
    out = tmp_path / "na.safetensors"
    refused(["train-ann", *TINY, "--data", dataset_dir, "--resume", "--out", out], "no training state", out)


READERS = [
    lambda p, o: ["info", p],
    lambda p, o: ["info", p, "--verify"],
    lambda p, o: ["evaluate", p, *CPU],
    lambda p, o: ["add-unit", p, "--epochs", "0", "--out", o, *CPU],
    lambda p, o: ["convert", p, "--epochs", "0", "--calibration-images", "8", "--out", o, *CPU],
    lambda p, o: ["temporal-prune", p, "--schedule", "1", "--epochs-per-stage", "1", "--out", o, *CPU],
    lambda p, o: ["spatial-prune", p, "--epochs", "0", "--out", o, *CPU],
]


def test_fuzz_corrupted_checkpoints_never_crash(pipeline, tmp_path):
    """Seeded random corruption of real checkpoints: a clean outcome from every reading command."""
    rng = random.Random(1234)
    sources = [pipeline["na"], pipeline["sb_t1"]]
    for trial in range(24):
        data = bytearray(rng.choice(sources).read_bytes())
        header = int.from_bytes(data[:8], "little") + 8
        mode = trial % 4
        if mode == 0:  # flip bytes in the JSON header
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(8, header)] = rng.randrange(256)
        elif mode == 1:  # truncate anywhere
            data = data[: rng.randrange(0, len(data))]
        elif mode == 2:  # corrupt the length prefix
            data[:8] = rng.randrange(1 << 63).to_bytes(8, "little")
        else:  # flip bytes in the tensor data
            for _ in range(16):
                data[rng.randrange(header, len(data))] = rng.randrange(256)
        bad = tmp_path / f"fuzz{trial}.safetensors"
        bad.write_bytes(bytes(data))
        for reader in READERS:
            out = tmp_path / f"fuzz_out{trial}.safetensors"
            result = run_cli(reader(bad, out), expect=None)
            assert result.exit_code in (0, 2, 4), (trial, reader(bad, out), result.output, result.exception)
            if result.exit_code:
                assert result.output.strip().splitlines()[-1].startswith("error: ")
                assert not out.exists()
            out.unlink(missing_ok=True)


def test_sigterm_to_pipeline_stops_its_running_stage_which_keeps_its_state(dataset_dir, tmp_path):
    """The driver forwards the stop: no orphaned stage trains on, and a rerun can resume."""
    preset = tmp_path / "long.yaml"
    preset.write_text("device: cpu\ntrain-ann: {arch: vgg11, width: 0.125, image-size: 32, epochs: 5000}\n")
    state = tmp_path / "chain" / "na.state.safetensors"
    proc = subprocess.Popen(_stp("pipeline", preset, "--out-dir", tmp_path / "chain", "--data", dataset_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_epoch(state, proc, 1)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=150)[0]
    assert proc.returncode == 130, output
    assert "pipeline interrupted during train-ann" in output and "Traceback" not in output
    assert f"keeps its training state in {state}" in output and "nothing to resume" not in output
    log = (tmp_path / "chain" / "na.log").read_text()  # the stage's own words are kept in its log
    assert "[train-ann] epoch 1/5000" in log and "stopped by SIGTERM" in log
    kept = state.stat().st_mtime_ns
    time.sleep(2)
    assert state.stat().st_mtime_ns == kept and not (tmp_path / "chain" / "na.safetensors").exists()


def test_a_bad_preset_schedule_stops_pipeline_and_study_before_any_work(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("temporal-prune: {schedule: '3,x'}\n")
    for command in ("pipeline", "study"):
        out = tmp_path / f"{command}-run"
        refused([command, preset, "--out-dir", out], "--schedule must be comma-separated integers")
        assert not out.exists()
