"""``stp study``: a preset's TP and STP chains over several seeds, with the summary a paper table needs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stpcli.cli.common import console, make_run, read_yaml, say, stp_command
from stpcli.cli.terminal import safe
from stpcli.engine.recipe import check_seed
from stpcli.errors import StpError
from stpcli.files import create_out_dir, lock_output

app = typer.Typer()


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise StpError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise StpError(f"--seeds must name distinct seeds, got {text!r}")
    for seed in seeds:
        check_seed(seed, "--seeds")
    return seeds


@stp_command(app, "study")
def study_command(
    preset: Annotated[Path, typer.Argument(help="Preset YAML (see examples/configs); an optional 'study:' section sweeps 'as', 'm' and 'recipe'.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for every chain's checkpoints and the summary.")],
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds; each draws its own split and initialisation.")] = "0,1,2",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Chains run side by side (small nets leave most of a GPU idle).")] = 1,
    time_limit: Annotated[float | None, typer.Option("--time-limit", help="Seconds; then the running stages stop cleanly and a rerun continues.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="Dataset for train-ann (default: the preset's or the embedded one).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda for every stage (default: the preset's).")] = None,
):
    """Run the TP and STP chains of a preset for each seed (and each Unit setting the preset sweeps),
    every stage as its own command and checkpoint; finished stages are skipped and interrupted ones
    resumed. Writes study.json, study.csv, study.md (mean ± std over seeds per method and T, the gap
    to each seed's ANN, energy, and the paired STP − TP difference with its 95 % interval) and PNGs.

    Example: stp study examples/configs/demo.yaml --seeds 0,1,2 --out-dir runs/demo-study --jobs 2
    """
    from stpcli import study, study_report
    from stpcli.cli.presets import check_chain, planned
    from stpcli.pipeline import Runner

    seed_list = parse_seeds(seeds)
    if jobs < 1:
        raise StpError(f"--jobs must be at least 1, got {jobs}")
    if time_limit is not None and not time_limit > 0:
        raise StpError(f"--time-limit must be a positive number of seconds, got {time_limit}")
    settings = read_yaml(preset, "preset")
    anns, chains = planned(preset, lambda: study.plan(settings, seed_list))
    first = [step for chain in anns + chains if chain.seed == seed_list[0] for step in chain.steps]
    check_chain(preset.resolve(), first, seed=seed_list[0], data=data, device=device)  # the others differ by --seed
    create_out_dir(out_dir)
    lock_output(out_dir / "study")  # one driver per folder: a second one is refused at once
    runner = Runner(preset.resolve(), out_dir, data=data, device=device, jobs=jobs, time_limit=time_limit, say=say)
    try:
        runner.run_all(anns)
        runner.run_all(chains)
    except KeyboardInterrupt:
        raise StpError(f"study interrupted: {runner.finished} stage(s) finished in this run and are kept in "
                       f"{out_dir}; the running stages stopped and keep their training state; run the same "
                       "command again to continue", exit_code=130) from None
    run = make_run("study", {"device": device})
    runs = study_report.collect(run, out_dir, anns + chains, data)
    table, paired = study_report.summarise(runs)
    complete = not runner.stopped and not runner.failures
    written = study_report.write_reports(out_dir, preset, seed_list, runs, table, paired, complete)
    console.print(summary_table(table, paired))
    console.print(f"[study] wrote {', '.join(p.name for p in written)} in {out_dir}", markup=False)
    if runner.failures:
        failed = runner.failures[0]
        raise StpError(f"{len(runner.failures)} stage(s) failed: {failed.chain.name} {failed.step.command} (exit "
                       f"{failed.code}" + (f": {failed.reason}" if failed.reason else "") + f", see {failed.log})",
                       exit_code=1)
    if runner.stopped:
        console.print("[study] stopped at the time limit; run the same command again to continue", markup=False)
        raise typer.Exit(study.STOPPED)


def summary_table(table: list[dict], paired: list[dict]) -> Table:
    from stpcli.study_report import format_number

    out = Table(title="study (test split): mean ± std over seeds")
    for header in ("method", "Units", "recipe", "T", "accuracy %", "n", "gap to ANN", "energy uJ"):
        out.add_column(header, no_wrap=True)
    for row in table:
        out.add_row(row["method"], safe(row["units"] or "-"), row["recipe"] or "-", str(row["timesteps"] or "-"),
                    f"{row['mean']:.2f} ± {format_number(row['std'])}", str(row["n"]), format_number(row["gap_to_ann"]),
                    f"{row['energy_uj']:.2f}")
    for row in paired:
        label = "STP − TP" if row["comparison"] == "STP - TP" else f"{row['method']} stp − reference"
        out.add_row(f"{label} (paired)", row["units"] or "-", row["recipe"] or "-", str(row["timesteps"]),
                    f"{row['mean']:+.2f} [{format_number(row['ci95_low'])}, {format_number(row['ci95_high'])}]",
                    str(row["n"]), "", "")
    return out
