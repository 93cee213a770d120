"""``stp pipeline``: the STP chain and the TP baseline from one preset (``stpcli.pipeline``), then compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stpcli.chain import pipeline_steps
from stpcli.cli.common import Force, console, echo, make_run, read_yaml, say, stp_command
from stpcli.cli.inspect import comparison_table
from stpcli.engine.recipe import check_seed
from stpcli.files import atomic_write_text
from stpcli.options import DataOptions, RunOptions
from stpcli.pipeline import run_pipeline

app = typer.Typer()


@stp_command(app, "pipeline")
def pipeline_command(
    config: Annotated[Path, typer.Argument(help="Preset YAML with one section per command (see examples/configs).")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for every checkpoint of the chain.")],
    data: Annotated[str | None, typer.Option("--data", help="Dataset for train-ann (default: the embedded one).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda for every stage (default: the preset's).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for every stage (default: the preset's).")] = None,
    force: Force = RunOptions.force,
):
    """Run STP (Na -> Nb -> Sb(T5) -> Sb(T1) -> Sa) and the TP baseline, each stage as its own stp
    command with --if-changed, as examples/Makefile runs them: a stage made from the same input with
    the same options is kept, one whose options in the preset changed is rebuilt with the stages
    after it (saying which option changed), an interrupted one is resumed; then compare them. The
    comparison is printed and saved as compare.txt and compare.json beside the checkpoints.

    Cost on 2 CPU cores: the demo about 2 min; a paper preset such as
    ucm16-vgg14 (VGG14, 128 px) about 44 h (measured: an ANN epoch 174 s,
    an SNN epoch 185 s per time step): give it a GPU, or use a 64 px preset.
    Every epoch's progress line says the time left.

    Example: stp pipeline examples/configs/demo.yaml --out-dir runs/demo --seed 1
    """
    from stpcli.cli.presets import check_chain, planned
    from stpcli.report import compare

    if seed is not None:
        check_seed(seed)
    preset = read_yaml(config, "preset")
    check_chain(config.resolve(), planned(config, lambda: pipeline_steps(preset)), seed=seed, data=data, device=device)
    paths = run_pipeline(preset, config.resolve(), out_dir, data=data, device=device, seed=seed, force=force,
                         say=say, echo=echo)
    rows = compare(make_run("compare", {"device": device}), paths, DataOptions())
    table = comparison_table(rows)
    console.print(table)
    atomic_write_text(out_dir / "compare.json", lambda handle: json.dump(rows, handle, indent=2))
    atomic_write_text(out_dir / "compare.txt", lambda handle: Console(file=handle, width=160).print(table))
    console.print(f"[pipeline] wrote {out_dir / 'compare.txt'} and compare.json", markup=False)
