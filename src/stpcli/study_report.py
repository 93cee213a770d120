"""What a study's checkpoints say: one row per checkpoint, mean +- std per method, Unit setting,
recipe and T over seeds, paired differences with their 95 % t-intervals, and the reports
(``study.json``, ``study.csv``, ``study.md``, two PNGs).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from stpcli import plots
from stpcli.chain import Chain
from stpcli.checkpoint import read_record
from stpcli.files import atomic_write_text
from stpcli.names import checkpoint_path
from stpcli.options import DataOptions
from stpcli.report import METHODS, compare
from stpcli.run import Run

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (then the normal 1.96)
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def interval(values: list[float]) -> tuple[float, float, float | None, float | None]:
    """Mean, std and the 95 % t-interval of the mean (None below two values)."""
    mean, std = mean_std(values)
    if std is None:
        return mean, 0.0, None, None
    t = T_975[len(values) - 2] if len(values) - 1 <= len(T_975) else 1.96
    half = t * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


def collect(run: Run, out_dir: Path, chains: list[Chain], data: str | None) -> list[dict]:
    """One row per finished checkpoint of ``chains`` (Nb left out): seed, method, Unit setting, recipe,
    T, accuracy, energy."""
    found = [(chain, checkpoint_path(out_dir / chain.folder, name))
             for chain in chains for step in chain.steps if step.command != "add-unit" for name in step.outputs]
    found = [(chain, path) for chain, path in found if path.is_file()]
    if not found:
        return []
    rows = compare(run, [path for _, path in found], DataOptions(location=data))
    for (chain, _), row in zip(found, rows):
        row.update(seed=chain.seed, units=chain.units, recipe=chain.recipe)
    return rows


def summarise(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per (method, Unit setting, recipe, T): mean +- std over seeds; the paired STP - TP difference per
    T (same recipe); and, in a recipe sweep, the paired stp - reference difference per method and T."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["method"], run["units"], run.get("recipe", ""), run["timesteps"]), []).append(run)
    anns = {run["seed"]: run["accuracy"] for run in runs if run["method"] == "ANN"}
    table = []
    for (method, units, recipe, timesteps), members in sorted(groups.items(), key=lambda kv: (
            METHODS.index(kv[0][0]), kv[0][1], kv[0][2], -(kv[0][3] or 0))):
        mean, std = mean_std([m["accuracy"] for m in members])
        energy = [m["energy_uj"] for m in members]
        gaps = [anns[m["seed"]] - m["accuracy"] for m in members if m["seed"] in anns and method != "ANN"]
        table.append({"method": method, "units": units, "recipe": recipe, "timesteps": timesteps, "mean": mean,
                      "std": std, "n": len(members), "seeds": sorted(m["seed"] for m in members),
                      "ann_mean": mean_std([anns[m["seed"]] for m in members if m["seed"] in anns])[0]
                      if any(m["seed"] in anns for m in members) else None,
                      "gap_to_ann": mean_std(gaps)[0] if gaps else None,
                      "energy_uj": sum(energy) / len(energy), "energy_std": mean_std(energy)[1],
                      "spikes_per_neuron": (sum(m["spikes_per_neuron"] for m in members) / len(members)
                                            if members[0]["spikes_per_neuron"] is not None else None)})
    accuracy = {(r["seed"], r["method"], r["units"], r.get("recipe", ""), r["timesteps"]): r["accuracy"] for r in runs}
    paired: list[dict] = []

    def pair(comparison: str, method: str, units: str, recipe: str, timesteps: int, diffs: list[float]) -> None:
        if diffs:
            mean, std, low, high = interval(diffs)
            paired.append({"comparison": comparison, "method": method, "units": units, "recipe": recipe,
                           "timesteps": timesteps, "mean": mean, "std": std, "n": len(diffs), "ci95_low": low,
                           "ci95_high": high})

    for (method, units, recipe, timesteps), members in groups.items():
        if method == "STP":
            pair("STP - TP", method, units, recipe, timesteps,
                 [m["accuracy"] - accuracy[(m["seed"], "TP", "", recipe, timesteps)] for m in members
                  if (m["seed"], "TP", "", recipe, timesteps) in accuracy])
        if recipe == "stp" and method != "ANN":
            pair("stp - reference", method, units, "", timesteps,
                 [m["accuracy"] - accuracy[(m["seed"], method, units, "reference", timesteps)] for m in members
                  if (m["seed"], method, units, "reference", timesteps) in accuracy])
    paired.sort(key=lambda r: (r["comparison"], METHODS.index(r["method"]), r["units"], r["recipe"], -r["timesteps"]))
    return table, paired


def format_number(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def scale_line(runs: list[dict]) -> str:
    """Where a study's numbers come from: dataset, classes, image size, architecture and width."""
    record = read_record(runs[0]["checkpoint"])
    spec = record["model"]
    return (f"Scale: data {record['data']['path']} ({len(record['classes'])} classes, split seed per run), "
            f"{record['input']['image_size']} px, {spec['arch']} ×{spec['width']:g}.")


def write_reports(out_dir: Path, preset_path: Path, seeds: list[int], runs: list[dict], table: list[dict],
                  paired: list[dict], complete: bool) -> list[Path]:
    payload = {"preset": str(preset_path), "seeds": seeds, "complete": complete, "rows": table, "paired": paired,
               "runs": runs}
    atomic_write_text(out_dir / "study.json", lambda handle: json.dump(payload, handle, indent=2))

    def write_csv(handle):
        writer = csv.writer(handle)
        writer.writerow(["method", "units", "recipe", "timesteps", "mean", "std", "n", "ann_mean", "gap_to_ann",
                         "energy_uj", "spikes_per_neuron"])
        for row in table:
            writer.writerow([row["method"], row["units"], row["recipe"], row["timesteps"] or "", row["mean"],
                             row["std"] or "", row["n"], row["ann_mean"] or "", row["gap_to_ann"] or "",
                             row["energy_uj"], row["spikes_per_neuron"] or ""])

    atomic_write_text(out_dir / "study.csv", write_csv)
    recipes = any(row["recipe"] for row in table)
    recipe_header = ("| recipe ", "|---") if recipes else ("", "")
    lines = [f"# Study: {preset_path.name}, seeds {', '.join(map(str, seeds))}"
             + ("" if complete else " (incomplete: rerun to continue)"), "",
             *([scale_line(runs), ""] if runs else []),
             "Test accuracy in %, mean ± standard deviation over seeds; gap = own ANN − SNN (paired by seed).", "",
             f"| method | Units {recipe_header[0]}| T | accuracy | n | ANN | gap to ANN | energy µJ | spikes/neuron |",
             f"|---|---{recipe_header[1]}|---|---|---|---|---|---|---|"]
    for row in table:
        numbers = [format_number(row[key]) for key in ("mean", "std", "ann_mean", "gap_to_ann", "energy_uj")]
        recipe = f"| {row['recipe'] or '-'} " if recipes else ""
        lines.append(f"| {row['method']} | {row['units'] or '-'} {recipe}| {row['timesteps'] or '-'} | "
                     f"{numbers[0]} ± {numbers[1]} | {row['n']} | {numbers[2]} | {numbers[3]} | {numbers[4]} | "
                     f"{format_number(row['spikes_per_neuron'], 3)} |")
    for comparison, title in (("STP - TP", "Paired difference STP − TP (same seed, same ANN)"),
                              ("stp - reference", "Paired difference between the recipes, stp − reference (same seed, "
                                                  "same ANN, same method)")):
        rows = [row for row in paired if row["comparison"] == comparison]
        if not rows:
            continue
        lines += ["", f"{title}, with the 95 % t-interval of its mean:", "",
                  "| method | Units | recipe | T | mean | std | n | 95 % interval |", "|---|---|---|---|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row['method']} | {row['units'] or '-'} | {row['recipe'] or '-'} | {row['timesteps']} | "
                         f"{row['mean']:+.2f} | {format_number(row['std'])} | {row['n']} | "
                         f"{format_number(row['ci95_low'])} … {format_number(row['ci95_high'])} |")
    if paired:
        smallest = min(row["n"] for row in paired)
        if smallest == 1:
            lines += ["", "Caution: one seed per comparison: no spread and no interval can be estimated; three or "
                          "more seeds are needed for a claim."]
        elif smallest < 3:
            lines += ["", f"Caution: with n = {smallest} the standard deviation is a rough guess and the 95 % "
                          f"interval uses t = {T_975[smallest - 2]:.1f}, so it says little about a difference; three "
                          "or more seeds are needed for a claim."]
    atomic_write_text(out_dir / "study.md", lambda handle: handle.write("\n".join(lines) + "\n"))
    written = [out_dir / n for n in ("study.json", "study.csv", "study.md")]
    if table:
        labelled = [{**row, "series": row_label(row)} for row in table]
        written.append(plots.accuracy_vs_timesteps(labelled, f"{preset_path.stem}: accuracy against T",
                                                   out_dir / "study_accuracy_vs_T.png"))
        points = [{"series": row_label(r), "method": r["method"], "units": r["units"], "recipe": r.get("recipe"),
                   "timesteps": r["timesteps"], "accuracy": r["mean"], "accuracy_std": r["std"],
                   "energy_uj": r["energy_uj"], "energy_std": r["energy_std"]} for r in table]
        written.append(plots.accuracy_vs_energy(points, f"{preset_path.stem}: mean accuracy against energy (± std over seeds)",
                                                out_dir / "study_accuracy_vs_energy.png"))
    return written


def row_label(row: dict) -> str:
    """A summary row's method, with its Unit setting and recipe where the study has them."""
    return " ".join(part for part in (row["method"], row["units"], row.get("recipe") and f"({row['recipe']})") if part)
