"""Presets and study grids are checked completely before any stage starts: every section and key
known (with a suggestion), every value typed and bounded, the whole chain planned. Each case is a
reproduction that used to be ignored, coerced, or found by a child stage after minutes of training."""

import time

import pytest
from conftest import run_cli
from test_reliability import refused

BASE = "device: cpu\nbatch-size: 16\ntrain-ann: {width: 0.125, image-size: 32, epochs: 1}\n"

CASES = [
    ("batch-szie: 32\n", "unknown option 'batch-szie' (not an option of any stage command); did you mean 'batch-size'?"),
    ("trian-ann: {epochs: 2}\n", "unknown section 'trian-ann' (sections name commands); did you mean 'train-ann'?"),
    ("train_ann: {epochs: 2}\n", "did you mean 'train-ann'?"),
    ("add-unit: {epochs: 1, mm: 2}\n", "unknown option 'mm' for add-unit"),
    ("spatial-prune: 7\n", "section 'spatial-prune' must be a mapping"),
    ("add-unit: {as: 6}\n", "add-unit: --as 6 is out of range: vgg11 has layer groups 1..5"),
    ("add-unit: {as: 4.7}\n", "got 4.7"),  # pipeline: the option's type; study: the grid's default
    ("add-unit: {m: 0}\n", "add-unit: "),
    ("convert: {timesteps: -2}\n", "convert: timesteps must be an integer in 1..64, got -2"),
    ("convert: {timesteps: 100000}\n", "convert: timesteps must be an integer in 1..64, got 100000"),
    ("convert: {timesteps: 2.9}\n", "convert: timesteps must be an integer in 1..64, got 2.9"),
    ("convert: {timesteps: abc}\n", "convert: timesteps must be an integer in 1..64, got 'abc'"),
    ("convert: {epochs: 2.5}\n", "bad value for 'epochs': expected an integer, got 2.5"),
    ("convert: {lr: true}\n", "bad value for 'lr': expected a value of type float, got True"),
    ("convert: {percentile: 0}\n", "convert: --percentile must lie in (0, 100]"),
    ("temporal-prune: {schedule: [1]}\n", "schedule must be written like '3,2,1', got [1]"),
    ("temporal-prune: {schedule: '3,x'}\n", "--schedule must be comma-separated integers"),
    ("temporal-prune: {epochs-per-stage: '1,2'}\n", "--epochs-per-stage has 2 values for the 3 time steps"),
    ("convert: {timesteps: 2}\ntemporal-prune: {schedule: '3,1'}\n", "--schedule starts at T=3, above the checkpoint's T=2"),
    ("device: tpu\n", "train-ann: --device must be one of auto, cpu, cuda, got 'tpu'"),
    ("train-ann: {data: /nowhere/at/all}\n", "train-ann: --data /nowhere/at/all does not exist"),
    ("spatial-prune: {lr-schedule: cosin}\n", "spatial-prune: --lr-schedule must be one of step, cosine, constant"),
    ("spatial-prune: {as: 2, m: 1}\n", "spatial-prune: "),
    ("lr: 0\n", "--lr must be positive"),
    ("convert: {epochs: 1}\nconvert: {epochs: 2}\n", "the key 'convert' appears twice"),
]
STUDY_CASES = [
    ("study: {mm: [2]}\n", "study has an unknown key 'mm'"),
    ("study: {as: [4.7]}\n", "study: as must be an integer in 1..8, got 4.7"),
    ("study: {as: [true]}\n", "study: as must be an integer in 1..8, got True"),
    ("study: {as: [5, 5]}\n", "study lists a value of 'as' twice"),
    ("study: {m: [0]}\n", "study: m must be an integer in 1..64, got 0"),
    ("study: 5\n", "study must be a mapping"),
    ("study: {as: [1, 6]}\n", "add-unit: --as 6 is out of range"),
]


def _preset(tmp_path, extra: str):
    """BASE and ``extra``; an ``extra`` that sets a key of BASE replaces BASE's line."""
    keys = {line.split(":")[0] for line in extra.splitlines()}
    kept = [line for line in BASE.splitlines() if line.split(":")[0] not in keys]
    path = tmp_path / "preset.yaml"
    path.write_text("\n".join(kept) + "\n" + extra)
    return path


@pytest.mark.parametrize("extra,message", CASES, ids=[c[0].split(":")[0] + str(i) for i, c in enumerate(CASES)])
def test_a_bad_preset_stops_pipeline_and_study_before_anything_runs(tmp_path, extra, message):
    preset = _preset(tmp_path, extra)
    for command in (["pipeline", preset, "--out-dir", tmp_path / "p"],
                    ["study", preset, "--seeds", "0", "--out-dir", tmp_path / "s"]):
        started = time.monotonic()
        refused(command, message)
        assert time.monotonic() - started < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preset.yaml"]  # no folder, no file


@pytest.mark.parametrize("extra,message", STUDY_CASES, ids=[str(i) for i in range(len(STUDY_CASES))])
def test_a_bad_study_grid_is_refused_before_anything_runs(tmp_path, extra, message):
    preset = _preset(tmp_path, extra)
    refused(["study", preset, "--seeds", "0", "--out-dir", tmp_path / "s"], message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preset.yaml"]


def test_an_empty_preset_and_a_stage_preset_with_a_typo_are_refused(tmp_path, pipeline):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    refused(["pipeline", empty, "--out-dir", tmp_path / "p"], "is empty")
    typo = tmp_path / "typo.yaml"
    typo.write_text("add-unit: {epochs: 0}\nbatch-szie: 8\n")
    out = tmp_path / "nb.safetensors"
    refused(["add-unit", pipeline["na"], "--config", typo, "--out", out, "--device", "cpu"], "did you mean 'batch-size'?", out)


def test_an_output_that_is_a_folder_is_refused_before_training(tmp_path):
    folder = tmp_path / "na.safetensors"
    folder.mkdir()
    refused(["train-ann", "--out", folder, "--force", "--device", "cpu"], "not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["na.safetensors"]


def test_the_example_presets_pass_the_check(tmp_path):
    """Every preset the project ships plans cleanly (checked with its own section names)."""
    from pathlib import Path

    from stpcli.chain import pipeline_steps
    from stpcli.cli.common import read_yaml
    from stpcli.cli.presets import check_chain

    for preset in sorted(Path(__file__).parents[1].joinpath("examples", "configs").glob("*.yaml")):
        check_chain(preset, pipeline_steps(read_yaml(preset, "preset")), device="cpu")
    run_cli(["schema"])  # the CLI still loads after the checks imported it


def test_each_recipe_twin_is_its_paper_preset_plus_the_recipe_sweep():
    """A twin (examples/configs/*-recipes.yaml) must run its paper preset's stages exactly, so that
    its stp rows and the paper preset's measure the same thing: only the study key may differ."""
    from pathlib import Path

    from stpcli.cli.common import read_yaml

    folder = Path(__file__).parents[1] / "examples" / "configs"
    twins = sorted(folder.glob("*-recipes.yaml"))
    assert twins
    for twin in twins:
        original = read_yaml(folder / twin.name.replace("-recipes", ""), "preset")
        twinned = read_yaml(twin, "preset")
        assert twinned.pop("study") == {"recipe": ["stp", "reference"]}, twin.name
        assert twinned == original, twin.name


def test_a_preset_is_read_by_the_options_classes_without_the_cli(tmp_path):
    """A driver (stp pipeline, stp study, a notebook) reads a preset's options for a stage through the
    stage's options class: typed, defaulted as the command defaults, and without Click, Typer or torch."""
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path\n"
        "from stpcli.options import preset_command_options, ConvertOptions\n"
        "preset = {'batch-size': 16, 'convert': {'timesteps': 3, 'lr': 1, 'recipe': 'reference'}, 'seed': 2}\n"
        "options, data, running = preset_command_options('convert', preset, Path('p.yaml'), {'device': 'cpu'})\n"
        "assert options == ConvertOptions(timesteps=3, lr=1.0, recipe='reference', batch_size=16, seed=2), options\n"
        "assert type(options.lr) is float and running.device == 'cpu' and data.location is None\n"
        "assert options.recorded()['amsgrad'] is True and options.recorded()['percentile'] == 90.0\n"
        "loaded = {name for name in ('typer', 'click', 'torch') if name in sys.modules}\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_each_flag_means_one_thing_across_commands(pipeline, tmp_path):
    """convert's threshold factor and FC dropout are --threshold-scale and --fc-dropout; --scale and
    --dropout belong to train-ann alone (the input's factor, the ANN classifier's dropout), so a shared
    preset key reaches one meaning, never two. The old spellings are refused with the new name."""
    from pathlib import Path

    from stpcli.defaults import with_unrecorded
    from stpcli.options import ConvertOptions, preset_command_options

    out = tmp_path / "sb.safetensors"
    refused(["convert", pipeline["na"], "--scale", "0.5", "--out", out], "convert's --scale is now --threshold-scale", out)
    refused(["convert", pipeline["na"], "--dropout", "0.1", "--out", out], "convert's --dropout is now --fc-dropout", out)
    preset = tmp_path / "old.yaml"
    preset.write_text("convert: {scale: 0.5}\n")
    refused(["convert", pipeline["na"], "--config", preset, "--out", out], "convert's scale is now 'threshold-scale'", out)
    shared = {"scale": 1e-4, "dropout": 0.3, "convert": {"threshold-scale": 0.7}}
    convert, _, _ = preset_command_options("convert", shared, Path("p.yaml"), {})
    train, _, _ = preset_command_options("train-ann", shared, Path("p.yaml"), {})
    assert (convert.scale, convert.dropout) == (0.7, ConvertOptions().dropout)  # untouched by the shared keys
    assert (train.scale, train.dropout) == (1e-4, 0.3)
    # a checkpoint converted before the rename recorded --scale/--dropout: the same options, so it is kept
    recorded = {"scale": 0.6, "dropout": 0.2, "timesteps": 5}
    assert with_unrecorded(recorded, {"threshold-scale": 0.6, "fc-dropout": 0.2, "timesteps": 5}) == {
        "threshold-scale": 0.6, "fc-dropout": 0.2, "timesteps": 5}
    assert with_unrecorded({"scale": None, "dropout": 0.5}, {"scale": None, "dropout": 0.5}) == {"scale": None, "dropout": 0.5}
