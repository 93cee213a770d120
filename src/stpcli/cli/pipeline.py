"""``stp pipeline``: the STP chain and the TP baseline from one preset, as a thin loop over the commands.

It runs the chain of ``stpcli.chain`` (what ``examples/Makefile`` runs), one stage command after another
with the same preset, and skips a stage whose output already exists (delete a
file, or pass --force, to redo it and everything after it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stpcli.chain import compared, pipeline_steps
from stpcli.cli.common import Force, console, make_run, read_yaml, stp_command
from stpcli.cli.inspect import comparison_table
from stpcli.errors import StpError
from stpcli.files import atomic_write_text
from stpcli.report import compare
from stpcli.run import DataOptions

app = typer.Typer()

@stp_command(app, "pipeline")
def pipeline_command(
    config: Annotated[Path, typer.Argument(help="Preset YAML with one section per command (see examples/configs).")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for every checkpoint of the chain.")],
    data: Annotated[str | None, typer.Option("--data", help="Dataset for train-ann (default: the embedded one).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda for every stage (default: the preset's).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for every stage (default: the preset's).")] = None,
    force: Force = False,
):
    """Run STP (Na -> Nb -> Sb(T5) -> Sb(T1) -> Sa) and the TP baseline, then compare them; the
    comparison is printed and saved as compare.txt and compare.json beside the checkpoints.

    Example: stp pipeline examples/configs/demo.yaml --out-dir runs/demo --seed 1
    """
    from stpcli.cli import app as root

    if not config.is_file():
        raise StpError(f"{config} does not exist")
    if out_dir.exists() and not out_dir.is_dir():
        raise StpError(f"--out-dir {out_dir} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StpError(f"cannot create --out-dir {out_dir}: {exc.strerror or exc}") from exc
    preset = read_yaml(config, "preset")
    command = typer.main.get_command(root)
    redo = force
    for step in pipeline_steps(preset):
        name, source = step.command, step.source
        out = out_dir / f"{step.target}.safetensors"
        if out.exists() and not redo:
            console.print(f"[pipeline] {out} exists; skipping {name}", markup=False)
            continue
        args = [name] + ([str(out_dir / f"{source}.safetensors")] if source else []) + [
            "--config", str(config), "--out", str(out), "--force", *step.args]
        if name == "train-ann" and data is not None:
            args += ["--data", data]
        args += (["--device", device] if device else []) + (["--seed", str(seed)] if seed is not None else [])
        console.print(f"[pipeline] stp {' '.join(args)}", markup=False)
        code = command.main(args=args, prog_name="stp", standalone_mode=False)
        if code:
            raise StpError(f"pipeline stopped: stp {name} exited with status {code}", exit_code=code)
        redo = True  # every later stage depends on this new file
    run = make_run("compare", {"device": device or "auto"})
    rows = compare(run, [out_dir / f"{n}.safetensors" for n in compared(preset)], DataOptions())
    table = comparison_table(rows)
    console.print(table)
    atomic_write_text(out_dir / "compare.json", lambda handle: json.dump(rows, handle, indent=2))
    atomic_write_text(out_dir / "compare.txt", lambda handle: Console(file=handle, width=160).print(table))
    console.print(f"[pipeline] wrote {out_dir / 'compare.txt'} and compare.json", markup=False)
