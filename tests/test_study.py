"""stp study: chains per seed through the stage commands, a time limit that a rerun continues, the
statistics against hand computations; one chain description shared with pipeline and the Makefile."""

import json
import math
import re
from pathlib import Path

import pytest
from conftest import run_cli

from stpcli.chain import pipeline_steps
from stpcli.checkpoint import load_checkpoint
from stpcli.errors import StpError
from stpcli.study import plan, unit_settings
from stpcli.study_report import interval, summarise

PRESET = """device: cpu
batch-size: 16
train-ann: {arch: vgg11, width: 0.125, image-size: 32, epochs: 2}
add-unit: {as: 4, m: 1, epochs: 1}
convert: {timesteps: 3, epochs: 1, calibration-images: 16}
temporal-prune: {schedule: '2,1', epochs-per-stage: 1}
spatial-prune: {epochs: 1}
"""


@pytest.mark.slow
def test_study_stops_at_its_time_limit_and_a_rerun_completes_it(dataset_dir, tmp_path):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(PRESET)
    out = tmp_path / "study"
    args = ["study", preset, "--seeds", "3", "--out-dir", out, "--data", dataset_dir]
    first = run_cli([*args, "--time-limit", "12"], expect=124)
    assert "run the same command again" in first.stdout
    assert (out / "seed3" / "na.safetensors").is_file()
    assert not (out / "seed3" / "as4-m1" / "sa_t1.safetensors").exists()
    assert json.loads((out / "study.json").read_text())["complete"] is False
    trained = (out / "seed3" / "na.safetensors").stat().st_mtime_ns
    run_cli([*args, "--jobs", "2"])
    assert (out / "seed3" / "na.safetensors").stat().st_mtime_ns == trained  # the finished ANN was kept
    assert "is up to date" in (out / "seed3" / "na.log").read_text()
    report = json.loads((out / "study.json").read_text())
    assert report["complete"] is True
    methods = {(r["method"], r["timesteps"]) for r in report["rows"]}
    assert {("ANN", None), ("TP", 2), ("TP", 1), ("STP (Units kept)", 1), ("STP", 2), ("STP", 1)} <= methods
    runs = {(r["method"], r["timesteps"]): r["accuracy"] for r in report["runs"]}
    paired = {r["timesteps"]: r for r in report["paired"]}
    assert paired[1]["mean"] == pytest.approx(runs[("STP", 1)] - runs[("TP", 1)]) and paired[1]["n"] == 1
    for name in ("study.csv", "study.md", "study_accuracy_vs_T.png", "study_accuracy_vs_energy.png"):
        assert (out / name).stat().st_size > 100
    summary = (out / "study.md").read_text()
    assert "STP − TP" in summary and "Scale: data " in summary and "32 px, vgg11 ×0.125" in summary
    assert "Caution: one seed per comparison" in summary
    # as make (and stp pipeline) does: a retrained Na rebuilds every file made from it, never keeps them stale
    seed = out / "seed3"
    (seed / "na.safetensors").unlink()
    run_cli(args)
    na = load_checkpoint(seed / "na.safetensors").sha256
    for name in ("s_t3", "as4-m1/nb"):
        assert load_checkpoint(seed / f"{name}.safetensors").history[-1]["parent"]["sha256"] == na, name
    last = load_checkpoint(seed / "as4-m1" / "sa_t1.safetensors")  # the end of the STP chain, through Nb
    assert [h["stage"] for h in last.history][:2] == ["train-ann", "add-unit"]
    assert last.history[1]["parent"]["sha256"] == na


def test_summary_statistics_against_hand_computations():
    runs = []
    for seed, (ann, tp, stp) in enumerate([(90.0, 85.0, 87.0), (92.0, 86.0, 86.5), (91.0, 84.0, 88.0)]):
        runs += [{"seed": seed, "method": "ANN", "units": "", "timesteps": None, "accuracy": ann, "energy_uj": 10.0,
                  "spikes_per_neuron": None},
                 {"seed": seed, "method": "TP", "units": "", "timesteps": 1, "accuracy": tp, "energy_uj": 1.0,
                  "spikes_per_neuron": 0.1},
                 {"seed": seed, "method": "STP", "units": "AS5 M1", "timesteps": 1, "accuracy": stp,
                  "energy_uj": 1.1, "spikes_per_neuron": 0.12}]
    table, paired = summarise(runs)
    stp = next(r for r in table if r["method"] == "STP")
    assert stp["mean"] == pytest.approx(87.1666667) and stp["n"] == 3
    assert stp["std"] == pytest.approx(math.sqrt(((87 - 87.1666667) ** 2 + (86.5 - 87.1666667) ** 2
                                                  + (88 - 87.1666667) ** 2) / 2))
    assert stp["gap_to_ann"] == pytest.approx((3 + 5.5 + 3) / 3)
    diffs = [2.0, 0.5, 4.0]
    mean, std, low, high = interval(diffs)
    half = 4.303 * std / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert paired[0]["mean"] == pytest.approx(mean) and (low, high) == pytest.approx((mean - half, mean + half))
    assert paired[0]["ci95_low"] == pytest.approx(low)


def test_unit_sweeps_come_from_the_preset():
    assert unit_settings({"add-unit": {"as": 3, "m": 2}}) == [(3, 2)]
    assert unit_settings({"study": {"as": [1, 5], "m": [1]}}) == [(1, 1), (5, 1)]


def test_the_makefile_runs_the_chain_stp_pipeline_runs():
    """examples/Makefile and stpcli.chain describe the same files made by the same commands."""
    makefile = (Path(__file__).parents[1] / "examples" / "Makefile").read_text()
    rules = {}
    rule = r"^(\$\(OUT\)/[^\s:]+(?: \$\(OUT\)/[^\s:]+)*) ?&?: (\$\(OUT\)/\S+)( \$\(CONFIG\))?\n\t\$\(call RUN,([\w-]+)\)"
    for targets, source, config, recipe in re.findall(rule, makefile, re.M):
        assert config, f"{targets}: the preset is a prerequisite of every rule (an edited option is noticed)"
        names = [t.removeprefix("$(OUT)/").removesuffix(".safetensors") for t in targets.split()]
        rules[names[-1]] = (recipe, source.removeprefix("$(OUT)/").removesuffix(".safetensors"), names)
    preset = {"convert": {"timesteps": 5}, "temporal-prune": {"schedule": "3,2,1"}}
    for step in pipeline_steps(preset):
        if step.command == "train-ann":
            continue
        target = step.target if step.command != "spatial-prune" else "sa_t%"
        command, source, names = rules[target]
        assert command == step.command
        if step.command == "spatial-prune":
            assert source == "sb_t%"
        else:
            assert source == step.source and names == list(step.outputs)



def test_a_recipe_sweep_converts_the_same_anns_with_each_recipe():
    preset = {"convert": {"timesteps": 3}, "temporal-prune": {"schedule": "2,1"},
              "study": {"recipe": ["stp", "reference"], "as": [5]}}
    anns, chains = plan(preset, [0])
    assert [(s.command, s.target) for s in anns[0].steps] == [("train-ann", "na"), ("add-unit", "as5-m1/nb")]
    by_label = {chain.label: chain for chain in chains}
    tp = by_label["TP (reference recipe)"]
    assert [(s.command, s.source, s.target, s.args) for s in tp.steps] == [
        ("convert", "na", "reference/s_t3", ("--recipe", "reference")),
        ("temporal-prune", "reference/s_t3", "reference/s_t1", ())]
    stp = by_label["STP AS5 M1 (stp recipe)"]
    assert stp.steps[0].source == "as5-m1/nb" and stp.steps[0].args == ("--recipe", "stp")
    assert [s.target for s in stp.steps] == ["as5-m1/stp/sb_t3", "as5-m1/stp/sb_t1", "as5-m1/stp/sa_t2",
                                             "as5-m1/stp/sa_t1"]
    assert (stp.units, stp.recipe) == ("AS5 M1", "stp")
    with pytest.raises(StpError, match="recipe"):
        plan({"study": {"recipe": ["stp", "diet"]}}, [0])
    # no sweep: the files where a study has always put them
    _, legacy = plan({"convert": {"timesteps": 3}, "temporal-prune": {"schedule": "2,1"}}, [0])
    assert [s.target for s in legacy[0].steps] == ["s_t3", "s_t1"] and legacy[0].steps[0].args == ()


def test_paired_differences_between_recipes_against_hand_computations():
    runs = []
    for seed, (tp_stp, tp_ref, sa_stp, sa_ref) in enumerate([(85.0, 83.0, 86.0, 85.0), (86.0, 86.5, 87.0, 84.0),
                                                              (84.0, 82.0, 88.0, 86.0)]):
        runs.append({"seed": seed, "method": "ANN", "units": "", "recipe": "", "timesteps": None, "accuracy": 90.0,
                     "energy_uj": 10.0, "spikes_per_neuron": None})
        for method, units, recipe, accuracy in (("TP", "", "stp", tp_stp), ("TP", "", "reference", tp_ref),
                                                ("STP", "AS5 M1", "stp", sa_stp), ("STP", "AS5 M1", "reference", sa_ref)):
            runs.append({"seed": seed, "method": method, "units": units, "recipe": recipe, "timesteps": 1,
                         "accuracy": accuracy, "energy_uj": 1.0, "spikes_per_neuron": 0.1})
    table, paired = summarise(runs)
    assert {(r["method"], r["recipe"]) for r in table} == {("ANN", ""), ("TP", "stp"), ("TP", "reference"),
                                                           ("STP", "stp"), ("STP", "reference")}
    found = {(r["comparison"], r["method"], r["recipe"]): r for r in paired}
    recipes_tp = found[("stp - reference", "TP", "")]
    assert recipes_tp["mean"] == pytest.approx((2.0 - 0.5 + 2.0) / 3) and recipes_tp["n"] == 3
    assert found[("stp - reference", "STP", "")]["mean"] == pytest.approx((1.0 + 3.0 + 2.0) / 3)
    # STP - TP within each recipe, never across
    assert found[("STP - TP", "STP", "reference")]["mean"] == pytest.approx((2.0 - 2.5 + 4.0) / 3)
    assert found[("STP - TP", "STP", "stp")]["mean"] == pytest.approx((1.0 + 1.0 + 4.0) / 3)


def test_an_interrupted_pipeline_names_the_stage_it_was_running(tmp_path, monkeypatch):
    """Ctrl-C during the second step (add-unit): the message names that step and the state it keeps,
    not the first step of the chain."""
    import stpcli.pipeline as pipeline

    started = []

    def child(args, **_):
        started.append(args[3])
        if len(started) == 2:
            (tmp_path / "chain").mkdir(exist_ok=True)
            (tmp_path / "chain" / "nb.state.safetensors").write_bytes(b"")
            raise KeyboardInterrupt
        return 0

    monkeypatch.setattr(pipeline, "run_child", child)
    with pytest.raises(StpError, match="pipeline interrupted during add-unit") as raised:
        pipeline.run_pipeline({}, tmp_path / "preset.yaml", tmp_path / "chain", say=lambda line: None, echo=None)
    assert started == ["train-ann", "add-unit"] and "nb.state.safetensors, so a rerun continues it" in str(raised.value)
