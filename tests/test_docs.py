"""The README's measured claims agree with the committed measurements they summarise.

The install check ("a correct install lands in ...") is a range a user compares their `make demo`
table with; it must contain every seed of the committed demo study and the README's own table, or
a correct install would look broken. The suite must hold at least the tests the README timed.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEMO_STUDY = ROOT / "benchmarks" / "results" / "cpu-study-recipes-demo.json"
PERCENT_RANGE = r"(\d+(?:\.\d+)?)–(\d+(?:\.\d+)?) %"


def install_ranges() -> dict[str, tuple[float, float]]:
    match = re.search(rf"a correct\s+install lands in: ANN {PERCENT_RANGE}; TP and STP rows {PERCENT_RANGE}", README)
    assert match, "the README's install check is missing or reworded"
    low_ann, high_ann, low_snn, high_snn = map(float, match.groups())
    return {"ANN": (low_ann, high_ann), "SNN": (low_snn, high_snn)}


def readme_demo_table() -> list[tuple[str, float]]:
    """(method, test accuracy) of each row of the `make demo` table in the README."""
    section = README.split("## Two commands", 1)[1].split("What the columns mean", 1)[0]
    rows = re.findall(r"^\| (\S+)[^|]*\| (ANN|TP|STP) \| [^|]+ \| (\d+\.\d+) \|", section, re.MULTILINE)
    assert len(rows) == 5, rows
    return [(method, float(accuracy)) for _, method, accuracy in rows]


def within(value: float, span: tuple[float, float]) -> bool:
    # the README rounds to one decimal; 94.375 is quoted as 94.4
    return span[0] - 0.05 <= value <= span[1] + 0.05


def test_the_install_check_contains_every_seed_of_the_demo_study_and_the_readme_table():
    spans = install_ranges()
    study = json.loads(DEMO_STUDY.read_text())
    # make demo runs the stp recipe's ANN, TP and STP at T = 2 and T = 1 (Units pruned)
    checked = 0
    for run in study["runs"]:
        if run["method"] == "ANN":
            assert within(run["accuracy"], spans["ANN"]), run
        elif run["method"] in ("TP", "STP") and run["recipe"] == "stp" and run["timesteps"] in (1, 2):
            assert within(run["accuracy"], spans["SNN"]), run
        else:
            continue
        checked += 1
    assert checked == 5 * 5  # five seeds, an ANN and four SNN rows each
    for method, accuracy in readme_demo_table():
        assert within(accuracy, spans["ANN" if method == "ANN" else "SNN"]), (method, accuracy)


def test_the_suite_has_at_least_the_tests_the_readme_timed():
    # the README times `make test` at one commit; later commits may add tests, never lose them
    stated = re.search(r"`make test` [^,]+,\s+(\d+) tests", README)
    assert stated, "the README no longer says how many tests `make test` runs"
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout
    per_file = re.findall(r"^tests/\S+\.py: (\d+)$", collected, re.MULTILINE)  # -q lists "file: count"
    assert per_file, collected[-500:]
    assert sum(map(int, per_file)) >= int(stated.group(1))


def test_the_readme_recipe_table_is_the_stages_defaults():
    """The table of each stage's training defaults is what the options classes, and so the commands
    and the Python API, default to."""
    from stpcli.options import STAGE_OPTIONS, TrainAnnOptions, recipe_table

    assert recipe_table() in README, "README's table of stage defaults differs from stpcli/options.py"
    assert len(recipe_table().splitlines()) == 2 + len(STAGE_OPTIONS)
    assert "| `train-ann` | 30 | sgd | 0.05 | cosine | 0.0005 | 64 |" in recipe_table()
    assert TrainAnnOptions().train_config().schedule == "cosine"  # the field reaches the engine's recipe
