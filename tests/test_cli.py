"""Every command run as a user runs it, on the tiny pipeline built once per session."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_cli

from stpcli.checkpoint import load_checkpoint


def as_json(result):
    return json.loads(result.stdout)


def test_version_and_module_entry_point():
    assert "stp 0.1.0" in run_cli(["--version"]).stdout
    out = subprocess.run([sys.executable, "-m", "stpcli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "stp 0.1.0"


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["schema"], ["train-ann", "--help"],
                                  ["evaluate", "--help"], ["study", "--help"], ["data", "pack", "--help"]])
def test_the_cli_answers_without_importing_torch_or_matplotlib(args):
    """Commands are registered from torch-free modules; heavy imports happen inside the command that runs."""
    probe = ("import sys, runpy; sys.argv = ['stp', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('stpcli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'matplotlib', 'numpy', 'PIL') if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() and out.stderr.strip().splitlines()[-1] == "[]", out.stderr


def test_pipeline_records_kind_timesteps_units_and_lineage(pipeline):
    na, nb = load_checkpoint(pipeline["na"]), load_checkpoint(pipeline["nb"])
    sb3, sb2, sb1 = (load_checkpoint(pipeline[k]) for k in ("sb_t3", "sb_t2", "sb_t1"))
    sa = load_checkpoint(pipeline["sa_t1"])
    assert (na.kind, nb.kind, sb3.kind, sa.kind) == ("ann", "ann", "snn", "snn")
    assert (sb3.timesteps, sb2.timesteps, sb1.timesteps, sa.timesteps) == (3, 2, 1, 1)
    assert nb.model_spec["units"] == {"group": 3, "count": 1} and sa.model_spec["units"] is None
    assert sa.model_spec["depths"] == na.model_spec["depths"]
    assert [h["stage"] for h in sa.history] == ["train-ann", "add-unit", "convert", "temporal-prune",
                                                "temporal-prune", "spatial-prune"]
    assert sa.history[-1]["parent"]["sha256"] == sb1.sha256
    assert sb1.history[-1]["parent"]["sha256"] == sb2.sha256
    for ckpt in (nb, sb3, sa):  # the split travels unchanged
        assert ckpt.record["split"] == na.record["split"] and ckpt.classes == na.classes
    assert sa.record["history"][0]["options"]["arch"] == "vgg11"
    assert sb3.record["snn"]["conversion"]["percentile"] == 99.7


def test_add_unit_without_training_keeps_the_accuracy_of_na(pipeline, tmp_path):
    nb0 = tmp_path / "nb0.safetensors"
    run_cli(["add-unit", pipeline["na"], "--as", "2", "--m", "2", "--epochs", "0", "--device", "cpu", "--out", nb0])
    before = as_json(run_cli(["evaluate", pipeline["na"], "--json", "--device", "cpu"]))
    after = as_json(run_cli(["evaluate", nb0, "--json", "--device", "cpu"]))
    assert after["overall_accuracy"] == before["overall_accuracy"] and after["per_class"] == before["per_class"]
    assert after["macs"] > before["macs"]


def test_evaluate_snn_reports_spikes_sops_and_energy(pipeline):
    result = as_json(run_cli(["evaluate", pipeline["sa_t1"], "--json", "--device", "cpu"]))
    assert result["kind"] == "snn" and result["timesteps"] == 1 and 0 <= result["overall_accuracy"] <= 100
    assert result["images"] == 6 and set(result["per_class"]) == {"fields", "lakes", "roads"}
    energy = result["energy"]
    first, *rest = energy["layers"]
    assert first["input_rate"] is None and abs(first["energy_pj"] - 4.6 * first["macs"]) < 1e-3
    rates = {r["layer"]: r["spikes_per_neuron"] for r in result["spike_rates"]}
    for row in rest:  # E = 0.9 pJ x MACs x input spike rate
        assert abs(row["energy_pj"] - 0.9 * row["macs"] * row["input_rate"]) < 1e-6 * max(1, row["energy_pj"])
        assert row["input_rate"] in rates.values()
    assert abs(energy["ann_energy_pj"] - 4.6 * energy["macs"]) < 1e-3
    assert abs(energy["ann_to_snn_energy_ratio"] - energy["ann_energy_pj"] / energy["energy_pj"]) < 1e-9
    at_two = as_json(run_cli(["evaluate", pipeline["sa_t1"], "--timesteps", "2", "--json", "--device", "cpu"]))
    assert at_two["timesteps"] == 2
    table = run_cli(["evaluate", pipeline["sa_t1"], "--device", "cpu"]).stdout
    assert "ratio ANN/SNN" in table and "per class" in table


def test_info_lists_layers_and_lineage_and_verifies_parents(pipeline, tmp_path):
    details = as_json(run_cli(["info", pipeline["nb"], "--json"]))
    units = [row for row in details["layers"] if row["unit"]]
    assert len(units) == 1 and units[0]["group"] == 3 and units[0]["in"] == units[0]["out"]
    assert details["record"]["kind"] == "ann" and len(details["history"]) == 2
    text = run_cli(["info", pipeline["sa_t1"], "--verify"]).stdout
    assert "lineage" in text and text.count(": ok") == 5
    # a changed parent is reported and the command fails
    copy = tmp_path / "chain"
    copy.mkdir()
    for key in ("na", "nb"):
        (copy / pipeline[key].name).write_bytes(pipeline[key].read_bytes())
    (copy / "na.safetensors").write_bytes((copy / "na.safetensors").read_bytes() + b" ")
    result = run_cli(["info", copy / "nb.safetensors", "--verify"], expect=4)
    assert "changed" in result.output


def test_compare_prints_one_row_per_checkpoint(pipeline):
    rows = as_json(run_cli(["compare", pipeline["na"], pipeline["sb_t1"], pipeline["sa_t1"], "--json", "--device", "cpu"]))
    assert [r["kind"] for r in rows] == ["ann", "snn", "snn"]
    assert rows[1]["layers"] == rows[2]["layers"] + 1  # the Unit is gone
    assert rows[0]["ann_energy_ratio"] is None and rows[2]["ann_energy_ratio"] > 0


def test_pack_then_train_from_the_pack_and_reuse_the_recorded_data(dataset_dir, tmp_path):
    pack = tmp_path / "scenes.safetensors"
    assert "packed 36 images" in run_cli(["data", "pack", dataset_dir, "--image-size", "32", "--out", pack]).stdout
    na = tmp_path / "na.safetensors"
    run_cli(["train-ann", *TINY, "--data", pack, "--epochs", "1", "--out", na])
    record = load_checkpoint(na).record
    assert record["data"]["kind"] == "pack"
    # the pack carries its folder's fingerprint: the folder is accepted for later stages
    nb = tmp_path / "nb.safetensors"
    run_cli(["add-unit", na, "--epochs", "0", "--as", "4", "--data", dataset_dir, "--device", "cpu", "--out", nb])


def test_config_file_fills_options_and_flags_win(dataset_dir, tmp_path):
    config = tmp_path / "preset.yaml"
    config.write_text("device: cpu\ntrain-ann:\n  arch: vgg11\n  width: 0.125\n  image-size: 32\n  epochs: 1\n"
                      "  seed: 5\n  batch-size: 16\nconvert:\n  timesteps: 4\n")
    out = tmp_path / "na.safetensors"
    run_cli(["train-ann", "--config", config, "--data", dataset_dir, "--seed", "9", "--out", out])
    options = load_checkpoint(out).history[-1]["options"]
    assert options["width"] == 0.125 and options["epochs"] == 1 and options["seed"] == 9
    bad = tmp_path / "bad.yaml"
    bad.write_text("train-ann:\n  wdith: 0.5\n")
    result = run_cli(["train-ann", "--config", bad, "--out", tmp_path / "x.safetensors"], expect=2)
    assert "unknown option 'wdith'" in result.output


def test_train_ann_metrics_csv_and_seed_reproducibility(dataset_dir, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        run_cli(["train-ann", *TINY, "--data", dataset_dir, "--epochs", "2", "--seed", "4", "--out", out])
        outs.append(load_checkpoint(out))
    assert all(k.startswith("layers.") for k in outs[0].tensors)
    for key, tensor in outs[0].tensors.items():
        assert __import__("torch").equal(tensor, outs[1].tensors[key]), key
    csv_lines = (tmp_path / "a.metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,lr,train_loss,train_acc,val_acc") and len(csv_lines) == 3
    assert not (tmp_path / "a.state.safetensors").exists()  # removed once the checkpoint is written


def test_snn_stages_with_the_same_seed_give_identical_tensors(pipeline, tmp_path):
    """Dropout in the SNN draws from the seeded generator: a rerun is bit-identical."""
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}_t1.safetensors"
        run_cli(["temporal-prune", pipeline["sb_t3"], "--schedule", "2,1", "--epochs-per-stage", "1",
                 "--batch-size", "16", "--seed", "3", "--device", "cpu", "--out", out])
        outs.append(load_checkpoint(out))
    for key, tensor in outs[0].tensors.items():
        assert __import__("torch").equal(tensor, outs[1].tensors[key]), key


def test_temporal_prune_takes_epochs_and_lr_schedule_per_time_step(pipeline, tmp_path):
    """--epochs-per-stage 1,2 --lr-schedule constant,cosine: T=2 trains 1 epoch at a constant lr,
    T=1 two epochs on a cosine from the base lr (epoch 2 starts at half of it)."""
    out = tmp_path / "p_t1.safetensors"
    run_cli(["temporal-prune", pipeline["sb_t3"], "--schedule", "2,1", "--epochs-per-stage", "1,2",
             "--lr-schedule", "constant,cosine", "--lr", "4e-4", "--batch-size", "16", "--device", "cpu",
             "--out", out])

    def lrs(name):
        rows = (tmp_path / f"{name}.metrics.csv").read_text().splitlines()[1:]
        return [float(row.split(",")[1]) for row in rows]

    assert lrs("p_t2") == [4e-4]
    assert lrs("p_t1") == pytest.approx([4e-4, 2e-4])
    assert load_checkpoint(out).history[-1]["options"]["epochs-per-stage"] == "1,2"


def test_pipeline_keeps_what_is_current_and_rebuilds_what_changed_with_what_follows(dataset_dir, tmp_path):
    """Each stage runs as its own stp command with make's rule by lineage: a rerun keeps every file
    made the same way, rebuilds a missing file and what depends on it, and rebuilds a stage whose
    preset options changed (naming the option) with the stages after it, nothing else."""
    preset = tmp_path / "tiny.yaml"
    preset.write_text("batch-size: 16\ntrain-ann: {arch: vgg11, width: 0.125, image-size: 32, epochs: 1}\n"
                      "add-unit: {as: 4, m: 1, epochs: 0}\nconvert: {timesteps: 3, epochs: 1, calibration-images: 16}\n"
                      "temporal-prune: {schedule: '2,1', epochs-per-stage: '1,1', lr-schedule: 'step,cosine'}\n"
                      "spatial-prune: {epochs: 0}\n")
    out = tmp_path / "chain"
    result = run_cli(["pipeline", preset, "--out-dir", out, "--data", dataset_dir, "--device", "cpu", "--seed", "7"])
    assert "comparison" in result.stdout and "comparison" in (out / "compare.txt").read_text()
    made = {p.name for p in out.glob("*.safetensors")}
    assert made == {f"{n}.safetensors" for n in ("na", "nb", "sb_t3", "sb_t2", "sb_t1", "sa_t2", "sa_t1",
                                                  "s_t3", "s_t2", "s_t1")}
    assert load_checkpoint(out / "na.safetensors").record["split"]["seed"] == 7
    assert load_checkpoint(out / "sa_t1.safetensors").timesteps == 1
    assert load_checkpoint(out / "s_t1.safetensors").history[-1]["options"]["lr-schedule"] == "step,cosine"
    rows = json.loads((out / "compare.json").read_text())
    assert [Path(r["checkpoint"]).name for r in rows] == ["na.safetensors", "s_t2.safetensors", "s_t1.safetensors",
                                                         "sa_t2.safetensors", "sa_t1.safetensors"]
    assert [r["method"] for r in rows] == ["ANN", "TP", "TP", "STP", "STP"]
    before = {name: (out / name).stat().st_mtime_ns for name in made}
    forgot = run_cli(["pipeline", preset, "--out-dir", out, "--device", "cpu", "--seed", "7"], expect=2)
    assert f"was trained on --data {dataset_dir}; pass that --data to keep it" in forgot.output
    rerun = ["pipeline", preset, "--out-dir", out, "--data", dataset_dir, "--device", "cpu", "--seed", "7"]
    again = run_cli(rerun)
    assert again.stdout.count("is up to date") == 10 and "rebuilding" not in again.stdout  # 10 files, 8 stages
    assert {name for name in made if (out / name).stat().st_mtime_ns != before[name]} == set()
    (out / "s_t2.safetensors").unlink()  # TP's T=2: temporal pruning reuses T=3, rebuilds T=2 and T=1
    preset.write_text(preset.read_text().replace("spatial-prune: {epochs: 0}", "spatial-prune: {epochs: 1}"))
    edited = run_cli(rerun)  # and both Sa, whose option changed, nothing else
    assert edited.stdout.count("options changed: --epochs 0 -> 1") == 2
    assert f"rebuilding {out / 's_t1.safetensors'}: its input {out / 's_t2.safetensors'} changed" in edited.stdout
    changed = {name for name in made if (out / name).stat().st_mtime_ns != before[name]}
    assert changed == {"s_t2.safetensors", "s_t1.safetensors", "sa_t2.safetensors", "sa_t1.safetensors"}


def test_the_lif_backend_is_an_explicit_recorded_setting(pipeline, tmp_path):
    """--lif-backend inductor trains the same tensors as torch, bit for bit, and the lineage says which
    ran; an unknown backend is refused before anything starts."""
    import torch

    outs = {}
    for backend in ("torch", "inductor"):
        out = tmp_path / f"{backend}_t1.safetensors"
        run_cli(["temporal-prune", pipeline["sb_t3"], "--schedule", "2,1", "--epochs-per-stage", "1",
                 "--batch-size", "16", "--device", "cpu", "--lif-backend", backend, "--out", out])
        outs[backend] = load_checkpoint(out)
        assert outs[backend].history[-1]["options"]["lif-backend"] == backend
    for key, tensor in outs["torch"].tensors.items():
        assert torch.equal(tensor, outs["inductor"].tensors[key]), key
    bad = run_cli(["temporal-prune", pipeline["sb_t3"], "--schedule", "1", "--lif-backend", "cuda-magic",
                   "--device", "cpu", "--out", tmp_path / "x.safetensors"], expect=2)
    assert "--lif-backend must be one of torch, inductor, triton" in bad.output
