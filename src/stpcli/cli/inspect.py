"""Read-only commands: evaluate, info, compare, schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from stpcli.cli.common import (
    AllowDataChange,
    CacheDir,
    Data,
    Device,
    JsonOutput,
    OnBadImage,
    console,
    make_data,
    make_run,
    stp_command,
)
from stpcli.cli.terminal import safe
from stpcli.defaults import FIGURE_FORMATS
from stpcli.errors import StpError
from stpcli.files import check_output, lock_output
from stpcli.models.plan import pooling_mode
from stpcli.names import figure_path, stem
from stpcli.options import STAGE_OPTIONS, DataOptions, RunOptions, flag, recorded_field
from stpcli.schema import recorded_input
from stpcli.spiking.settings import SpikingSettings

# checkpoints, reports (torch) and figures (matplotlib) are imported by the command that needs them

app = typer.Typer()


def _print_json(payload) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def _fmt(value, digits: int | None = 2):
    """A number as a table shows it (``digits`` None: as short as exact); '-' for none, '?' for what a
    damaged record holds instead."""
    if value is None:
        return "-"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "?"
    return f"{value:g}" if digits is None else f"{value:.{digits}f}"


@stp_command(app, "evaluate")
def evaluate_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to evaluate.")],
    timesteps: Annotated[int | None, typer.Option("--timesteps", "-T", help="Evaluate an SNN at another T.")] = None,
    part: Annotated[str, typer.Option("--part", help="test | val | train.")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 256,
    data: Data = DataOptions.location,
    allow_data_change: AllowDataChange = DataOptions.allow_data_change,
    on_bad_image: OnBadImage = DataOptions.on_bad_image,
    cache_dir: CacheDir = DataOptions.cache_dir,
    device: Device = RunOptions.device,
    plots: Annotated[Path | None, typer.Option("--plots", help="Folder for the confusion matrix (and SNN spike-rate) figures; created if missing.")] = None,
    plot_format: Annotated[str, typer.Option("--plot-format", help="png | pdf | svg for --plots.")] = "png",
    json_output: JsonOutput = False,
    force: Annotated[bool, typer.Option("--force", metavar="", help="Overwrite existing figures in --plots.")] = False,
):
    """Overall accuracy, average accuracy, Cohen's kappa, per-class accuracy, confusion matrix and MACs;
    for an SNN also spike rates, SOPs and energy.

    Example: stp evaluate sa_t1.safetensors --plots figures/
    """
    if part not in ("test", "val", "train"):
        raise StpError(f"--part must be test, val or train, got {part!r}")
    if f".{plot_format}" not in FIGURE_FORMATS:
        raise StpError(f"--plot-format must be one of {', '.join(f[1:] for f in FIGURE_FORMATS)}, got {plot_format!r}")
    from stpcli.checkpoint import load_checkpoint
    from stpcli.report import evaluate

    ckpt = load_checkpoint(checkpoint)
    figures = {}
    if plots is not None:
        if plots.exists() and not plots.is_dir():
            raise StpError(f"--plots {plots} is a file, not a folder")
        figures = evaluation_plot_paths(checkpoint, ckpt.kind, plots, plot_format)
        for path in figures.values():
            check_output(path, force, inputs=(checkpoint,), option="--plots")
            lock_output(path)
    run = make_run("evaluate", locals())
    result = evaluate(run, ckpt, make_data(locals()), timesteps, part, batch_size)
    if figures:
        result["plots"] = [str(p) for p in evaluation_plots(result, ckpt.classes, figures)]
    if json_output:
        _print_json(result)
        return
    title = safe(f"{checkpoint} ({result['method']}" + (f", T={result['timesteps']})" if "timesteps" in result else ")"))
    console.print(f"[bold]{title}[/bold]: {part} split, {result['images']} images: overall accuracy "
                  f"{result['overall_accuracy']:.2f}%, average accuracy {result['average_accuracy']:.2f}%, "
                  f"kappa {result['kappa']:.4f}; {result['macs'] / 1e6:.2f} M MACs per image")
    classes = Table("class", "accuracy %", "images", title="per class")
    for (name, acc), row in zip(result["per_class"].items(), result["confusion_matrix"]):
        classes.add_row(safe(name), _fmt(acc), str(sum(row)))
    console.print(classes)
    confusion = Table("true \\ predicted", *[safe(c[:10]) for c in ckpt.classes], title="confusion matrix")
    for name, row in zip(ckpt.classes, result["confusion_matrix"]):
        confusion.add_row(safe(name), *[str(v) if v else "." for v in row])
    console.print(confusion)
    energy = result["energy"]
    if result["kind"] == "snn":
        layers = Table("layer", "MACs", "input spikes/neuron", "SOPs", "energy (nJ)", title="synaptic layers")
        for row in energy["layers"]:
            layers.add_row(row["layer"], f"{row['macs']:,}", _fmt(row["input_rate"], 3), f"{row['sops']:,.0f}",
                           f"{row['energy_pj'] / 1e3:.2f}")
        console.print(layers)
        console.print(f"mean spikes per neuron over T: {result['mean_spikes_per_neuron']:.3f}; "
                      f"SOPs {energy['sops'] / 1e6:.2f} M")
        console.print(f"energy per image: ANN {energy['ann_energy_pj'] / 1e6:.2f} uJ, SNN "
                      f"{energy['energy_pj'] / 1e6:.2f} uJ, ratio ANN/SNN {energy['ann_to_snn_energy_ratio']:.2f}x")
    else:
        console.print(f"energy per image (45 nm MACs): {energy['energy_pj'] / 1e6:.2f} uJ")
    for path in result.get("plots", []):
        console.print(f"wrote {path}", markup=False)


def evaluation_plot_paths(checkpoint: Path, kind: str, folder: Path, fmt: str) -> dict[str, Path]:
    """The figures ``evaluate --plots`` writes for a checkpoint: its confusion matrix, and an SNN's spike rates."""
    names = ("confusion", "spike_rates") if kind == "snn" else ("confusion",)
    return {name: figure_path(folder, checkpoint, name, fmt) for name in names}


def evaluation_plots(result: dict, classes: list[str], paths: dict[str, Path]) -> list[Path]:
    from stpcli import plots

    label = f"{stem(result['checkpoint'])} ({result['method']}" + (f", T={result['timesteps']})" if "timesteps" in result else ")")
    written = [plots.confusion_matrix(result["confusion_matrix"], classes,
                                      f"{label}: {result['part']} split, OA {result['overall_accuracy']:.2f}%",
                                      paths["confusion"])]
    if "spike_rates" in paths:
        written.append(plots.spike_rates(result["spike_rates"], f"{label}: spikes per neuron", paths["spike_rates"]))
    return written


@stp_command(app, "info")
def info_command(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to describe.")],
    verify: Annotated[bool, typer.Option("--verify", metavar="", help="Re-check the sha256 of every parent file found.")] = False,
    config: Annotated[bool, typer.Option("--config", metavar="", help="Print a YAML preset that reruns the stage that made this checkpoint.")] = False,
    json_output: JsonOutput = False,
):
    """Metadata, layer list and lineage of a checkpoint.

    Example: stp info sa_t1.safetensors --verify
    """
    from stpcli.checkpoint import read_checkpoint
    from stpcli.data.pack import describe_pack, is_pack
    from stpcli.describe import info, verify_chain

    if is_pack(Path(checkpoint)):  # info describes a data pack too; every other command refuses one
        console.print(describe_pack(Path(checkpoint)), markup=False, soft_wrap=True)
        return
    ckpt = read_checkpoint(checkpoint)
    if config:
        typer.echo(rerun_config(ctx, ckpt.history[-1]), nl=False)
        return
    details = info(ckpt)
    chain = verify_chain(checkpoint) if verify else None
    if json_output:
        _print_json(details | ({"verify": chain} if verify else {}))
    else:
        _print_info(details, chain)
    if chain and any(row["status"] != "ok" for row in chain):
        bad = next(row for row in chain if row["status"] != "ok")
        raise StpError(f"lineage check failed: parent {bad['parent']} of {bad['child']} is {bad['status']}", exit_code=4)


def _print_info(details: dict, chain) -> None:
    record = details["record"]
    spec = record["model"]
    units = spec.get("units")
    console.print(f"[bold]{safe(details['path'])}[/bold]  sha256 {details['sha256'][:16]}…")
    console.print(f"kind {record['kind'].upper()}" + (f", T={record['timesteps']}" if record.get("timesteps") else "")
                  + f"; {spec['arch']} width {spec['width']}, {pooling_mode(spec)} pooling; "
                  + (f"{units['count']} Unit(s) in layer group {units['group']}" if units else "no Units")
                  + f"; {details['parameters']:,} tensor elements")
    console.print(f"classes ({len(record['classes'])}): {', '.join(record['classes'])}", markup=False)
    spec_in = recorded_input(record)
    mean, std = (", ".join(f"{v:.4g}" for v in spec_in[key]) for key in ("mean", "std"))
    bands = spec_in.get("band_names") or spec_in.get("bands")
    console.print(f"input: {'bands ' + ', '.join(map(str, bands)) if bands else '8-bit RGB'}; normalisation "
                  f"{spec_in['normalisation']}: (x / {spec_in['divisor']:g} - mean) / std, "
                  f"mean ({mean}), std ({std})", markup=False)
    if record.get("snn"):
        console.print(neuron_line(record["snn"]), markup=False, soft_wrap=True)
    if record.get("quantized"):
        q = record["quantized"]
        console.print(f"quantized: {q['weight_bits']}-bit weights (first layer {q['input_layer_bits']}-bit), one step per "
                      "output channel, integer thresholds; it reads stored image values (stp hardware: which chip it "
                      "fits)", markup=False, soft_wrap=True)
    console.print(f"input {record['input']['image_size']} px; data {safe(record['data']['path'])} "
                  f"(fingerprint {record['data']['fingerprint'][:12]}); {split_origin(details['split'])}, "
                  f"counts {details['split']['counts']}", markup=False)
    table = Table("#", "group", "layer", "in", "out", "unit", "neuron", "MACs", title="layers")
    neurons = details["neurons"]
    for row in details["layers"]:
        neuron = row["neuron"] or ""
        prefix = f"layers.{row['index']}."
        for key in sorted(k for k in neurons if k.startswith(prefix) and k.endswith(".threshold")):
            leak = neurons[key.removesuffix("threshold") + "leak"]
            neuron += f" V={neurons[key]:.3g} λ={leak:.3g}"
        table.add_row(str(row["index"]), "" if row["group"] is None else str(row["group"]), row["layer"],
                      "" if row["in"] is None else str(row["in"]), "" if row["out"] is None else str(row["out"]),
                      "yes" if row["unit"] else "", neuron, f"{row['macs']:,}" if row["macs"] else "")
    console.print(table)
    lineage = Table("step", "stage", "T", "recipe", "test acc %", "parent", "finished", title="lineage")
    timesteps = recipe = None
    for i, entry in enumerate(details["history"], start=1):
        parent = entry.get("parent")
        options = entry.get("options", {})
        if entry["stage"] in ("train-ann", "add-unit"):
            timesteps = recipe = None
        else:  # an SNN stage: its own T and recipe, or those it inherited (spatial-prune keeps both)
            timesteps = options.get("timesteps", timesteps)
            recipe = options.get("recipe", recipe or ("stp" if entry["stage"] == "convert" else None))
        lineage.add_row(str(i), entry["stage"], "" if timesteps is None else safe(str(timesteps)),
                        safe(str(recipe)) if recipe else "",
                        _fmt(entry.get("metrics", {}).get("test_accuracy")),
                        "" if not parent else safe(f"{Path(parent['path']).name} ({parent['sha256'][:10]})"),
                        entry.get("finished", ""))
    console.print(lineage)
    if chain is not None:
        for row in chain:
            console.print(f"verify: {Path(row['parent']).name} <- {Path(row['child']).name}: {row['status']}",
                          markup=False)
        if not chain:
            console.print("verify: no parent files recorded")


@stp_command(app, "compare")
def compare_command(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoints to evaluate side by side.")],
    data: Data = DataOptions.location,
    allow_data_change: AllowDataChange = DataOptions.allow_data_change,
    on_bad_image: OnBadImage = DataOptions.on_bad_image,
    cache_dir: CacheDir = DataOptions.cache_dir,
    device: Device = RunOptions.device,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write accuracy against energy to this .png, .pdf or .svg file (its folder is created if missing).")] = None,
    json_output: JsonOutput = False,
    force: Annotated[bool, typer.Option("--force", metavar="", help="Overwrite an existing --plot file.")] = False,
):
    """Method, T, test accuracy, spike rate and energy of several checkpoints in one table.

    Example: stp compare na.safetensors s_t1.safetensors sa_t1.safetensors --plot compare.png
    """
    if plot is not None:
        if plot.suffix.lower() not in FIGURE_FORMATS:
            raise StpError(f"--plot {plot} must end in {', '.join(FIGURE_FORMATS)}")
        check_output(plot, force, inputs=checkpoints, option="--plot")
        lock_output(plot)
    from stpcli import plots
    from stpcli.report import compare

    run = make_run("compare", locals())
    rows = compare(run, checkpoints, make_data(locals()))
    if plot is not None:
        plots.accuracy_vs_energy(rows, "test accuracy against energy per image", plot)
    if json_output:
        _print_json(rows)
        return
    console.print(comparison_table(rows))
    if plot is not None:
        console.print(f"wrote {plot}", markup=False)


def comparison_table(rows: list[dict]) -> Table:
    """One row per checkpoint. Checkpoints of different datasets or resolutions get a data column
    (and a caption saying their accuracies are not comparable); same-named files get their folder."""
    mixed = len({(row["data_fingerprint"], row["image_size"]) for row in rows}) > 1
    names = [Path(row["checkpoint"]).name for row in rows]
    table = Table(title="comparison (test split)",
                  caption="warning: these checkpoints were trained on different data or image sizes; their accuracies "
                          "are not comparable" if mixed else None)
    headers = ["checkpoint", *(["data"] if mixed else []), "method", "T", "weight layers", "test acc %", "AA %", "kappa",
               "spikes/neuron", "energy uJ", "ANN/SNN energy"]
    for header in headers:
        table.add_column(header, no_wrap=header != "data")
    for row, name in zip(rows, names):
        shown_name = name if names.count(name) == 1 else str(Path(row["checkpoint"]).parent.name + "/" + name)
        data = [f"{Path(row['data']).name} ({row['image_size']} px)"] if mixed else []
        bits = row.get("weight_bits")
        table.add_row(safe(shown_name), *map(safe, data), row["method"] + (f" {bits}-bit" if bits else ""),
                      str(row["timesteps"] or "-"),
                      str(row["layers"]), _fmt(row["accuracy"]), _fmt(row["average_accuracy"]),
                      _fmt(row["kappa"], 3), _fmt(row["spikes_per_neuron"], 3), _fmt(row["energy_uj"], 2),
                      _fmt(row["ann_energy_ratio"], 2))
    return table


def rerun_config(ctx: typer.Context, entry: dict) -> str:
    """A preset (one section, the stage's command) holding the recorded options that command takes;
    ``stp <stage> SOURCE --config FILE --out OUT`` then reruns it."""
    command = entry["stage"]
    if command not in STAGE_OPTIONS:
        raise StpError(f"the last stage, {command!r}, is not a command of this stp")
    options = {}
    for key, value in entry.get("options", {}).items():
        item = recorded_field(command, key)
        if item is None or item.name in ("config", "force", "resume", "if_changed") or value is None:
            continue
        value = value["path"] if isinstance(value, dict) and "path" in value else value
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)  # a one-value --epochs-per-stage reads as 2, not '2' (the option takes both)
        options[flag(item)] = value
    return yaml.safe_dump({command: options}, sort_keys=False)


@stp_command(app, "schema")
def schema_command():
    """Print the JSON Schema of the checkpoint record and of the data-pack record.

    Example: stp schema > stp-record.schema.json
    """
    from stpcli.schema import json_schema

    _print_json(json_schema())


def neuron_line(snn: dict) -> str:
    """How an SNN's neurons and conversion were set: its recipe and each setting a recipe decides."""
    settings = SpikingSettings.from_record(snn)
    recorded = snn.get("conversion")
    conversion = recorded if isinstance(recorded, dict) else {}
    spikes = ("binary spikes" + ("" if conversion.get("fold_thresholds", True) else " into the unfolded weights")
              if settings.binary else "spikes of amplitude V")
    dropout = (f"conv dropout {_fmt(settings.conv_dropout, None)} ({settings.conv_dropout_placement})"
               if settings.conv_dropout else "no conv dropout")
    balancing = ""
    if conversion:
        steps = conversion.get("balance_steps")
        balancing = (f"; {safe(str(conversion.get('balancing', 'stp')))} balancing p{_fmt(conversion.get('percentile'), None)}"
                     f" x{_fmt(conversion.get('scale'), None)}" + (f" over {_fmt(steps, None)} steps" if steps else ""))
    return (f"SNN: {settings.recipe} recipe; {spikes}; initial membrane {_fmt(settings.initial_membrane, None)} V; "
            f"{dropout}, FC dropout {_fmt(settings.dropout, None)}{balancing}")


def split_origin(split: dict) -> str:
    """'split seed 0, train ratio 0.8', or the lists a split was read from."""
    if split.get("lists"):
        return f"split from {safe(split['lists']['train'])} (and its val/test lists)"
    return f"split seed {split['seed']}, train ratio {split['train_ratio']}"


@stp_command(app, "hardware")
def hardware_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to check (a quantized one-time-step SNN fits best).")],
    target: Annotated[str, typer.Option("--target", help="akida1 | speck | loihi2 | all.")] = "all",
    json_output: JsonOutput = False,
):
    """Which neuromorphic chip a network fits, from each chip's published limits: layer and pooling
    kinds, kernels, strides, channels, bit widths, and Speck's per-core memory. Each problem comes
    with the change that would make it fit.

    Example: stp hardware sa_t1_w4.safetensors --target akida1
    """
    from stpcli.checkpoint import read_checkpoint
    from stpcli.hardware import TARGETS, check

    targets = list(TARGETS) if target == "all" else [target]
    if any(t not in TARGETS for t in targets):
        raise StpError(f"--target must be one of {', '.join(TARGETS)} or all, got {target!r}")
    record = read_checkpoint(checkpoint).record
    report = {t: [vars(f) for f in check(record, t)] for t in targets}
    if json_output:
        _print_json({"checkpoint": str(checkpoint), "targets": report})
        return
    for name, findings in report.items():
        verdict = "fits" if not findings else f"does not fit ({len(findings)} reason{'s' * (len(findings) > 1)})"
        console.print(f"[bold]{TARGETS[name]}[/bold]: {verdict}")
        for finding in findings:
            console.print(f"  {safe(finding['where'])}: {finding['problem']}; fix: {finding['fix']}", markup=False,
                          soft_wrap=True)
