"""Two studies of the same seeds side by side: per method and T, each study's mean +- std and the
paired difference (second - first, seed by seed) with its 95 % t-interval.

    python benchmarks/paired_studies.py benchmarks/results/cpu-study-recipes-demo.json \\
        benchmarks/results/cpu-study-demo-maxpool.json --first-recipe stp

``--first-recipe`` / ``--second-recipe`` pick one recipe's rows of a study that swept recipes.
Prints the table; ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stpcli.study_report import interval, mean_std


def accuracies(path: Path, recipe: str | None) -> dict[tuple[str, int | None], dict[int, float]]:
    """{(method, T): {seed: accuracy}} of a study's runs (one recipe's, where given; the ANN has none)."""
    table: dict[tuple[str, int | None], dict[int, float]] = {}
    for run in json.loads(path.read_text())["runs"]:
        if recipe is not None and run["method"] != "ANN" and run.get("recipe") != recipe:
            continue
        table.setdefault((run["method"], run["timesteps"]), {})[run["seed"]] = run["accuracy"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--first-recipe")
    parser.add_argument("--second-recipe")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    first, second = accuracies(options.first, options.first_recipe), accuracies(options.second, options.second_recipe)
    rows = []
    print(f"{'method':<18} {'T':>2} {'first':>14} {'second':>14} {'second - first':>16} {'95 % interval':>18} {'n':>3}")
    for key in sorted(set(first) & set(second), key=lambda k: (k[0] != "ANN", k[0], -(k[1] or 0))):
        seeds = sorted(set(first[key]) & set(second[key]))
        if not seeds:
            continue
        a, b = [first[key][s] for s in seeds], [second[key][s] for s in seeds]
        mean, std, low, high = interval([y - x for x, y in zip(a, b)])
        (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
        rows.append({"method": key[0], "timesteps": key[1], "seeds": seeds, "first_mean": ma, "first_std": sa,
                     "second_mean": mb, "second_std": sb, "difference_mean": mean, "difference_std": std,
                     "ci95_low": low, "ci95_high": high})
        span = "-" if low is None else f"{low:+.2f} .. {high:+.2f}"
        print(f"{key[0]:<18} {key[1] or '-':>2} {ma:>7.2f} ± {sa or 0:>4.2f} {mb:>7.2f} ± {sb or 0:>4.2f} "
              f"{mean:>+16.2f} {span:>18} {len(seeds):>3}")
    if options.json:
        options.json.write_text(json.dumps({"first": str(options.first), "second": str(options.second),
                                            "first_recipe": options.first_recipe,
                                            "second_recipe": options.second_recipe, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
