"""Using a trained model: predict on new images, export to NIR or ONNX."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stpcli.cli.common import (
    CacheDir,
    Data,
    Device,
    Force,
    JsonOutput,
    console,
    error_console,
    make_data,
    make_run,
    stp_command,
)
from stpcli.cli.terminal import safe, shown
from stpcli.defaults import EXPORT_FORMATS as FORMATS
from stpcli.defaults import MIN_INT8_AGREEMENT
from stpcli.errors import StpError
from stpcli.files import atomic_write_text, check_output, lock_output
from stpcli.options import DataOptions, RunOptions
from stpcli.progress import progress_bar

app = typer.Typer()


@stp_command(app, "predict")
def predict_command(
    checkpoint: Annotated[Path, typer.Argument(help="ANN or SNN checkpoint.")],
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes listed per image.")] = 3,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    device: Device = RunOptions.device,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Also write the predictions as CSV (path, rank, class, probability); its folder is created if missing.")] = None,
    json_output: JsonOutput = False,
    force: Annotated[bool, typer.Option("--force", metavar="", help="Overwrite an existing --csv file.")] = False,
):
    """Classify new images with a trained model: the top-k classes of each, with probabilities.

    Images are resized and normalised as the checkpoint was trained; an unreadable image is
    reported and counted, the others are still predicted.

    Example: stp predict sa_t1.safetensors scenes/ photo.jpg --top-k 3 --csv predictions.csv
    """
    if json_output and csv_file is not None:
        raise StpError("--json and --csv are alternatives; choose one")
    from stpcli.checkpoint import load_checkpoint
    from stpcli.predict import check_options, find_images, predict

    check_options(top_k, batch_size)
    files = find_images(paths)  # once: predict is given the files, not the folders again
    if csv_file is not None:
        check_output(csv_file, force, inputs=(checkpoint, *files), option="--csv")
        lock_output(csv_file)
    ckpt = load_checkpoint(checkpoint)
    run = make_run("predict", {"device": device})
    with progress_bar(console, "predicting", total=len(files), show=not json_output) as advance:
        result = predict(run, ckpt, files, top_k, batch_size, advance=advance)
    if csv_file is not None:
        _write_csv(csv_file, result)
    if json_output:
        typer.echo(json.dumps(result, indent=2))
    else:
        table = Table("image", *[f"#{i + 1}" for i in range(min(top_k, len(ckpt.classes)))],
                      title=f"{safe(checkpoint.name)} ({result['method']}"
                            + (f", T={result['timesteps']})" if result["timesteps"] else ")"))
        for row in result["predictions"]:
            table.add_row(safe(row["path"]), *[f"{safe(t['class'])} {100 * t['probability']:.1f}%" for t in row["top"]])
        console.print(table)
        console.print(f"{result['images']} image(s) predicted, {len(result['unreadable'])} unreadable"
                      + (f"; wrote {csv_file}" if csv_file is not None else ""), markup=False)
    for row in result["unreadable"]:
        error_console.print(f"unreadable: {shown(row['path'])} ({shown(row['reason'])})", markup=False, highlight=False)
    if result["unreadable"] and not result["predictions"]:
        raise StpError("no image could be read")


def _write_csv(path: Path, result: dict) -> None:
    def write(handle):
        writer = csv.writer(handle)
        writer.writerow(["path", "rank", "class", "probability"])
        for row in result["predictions"]:
            for rank, top in enumerate(row["top"], start=1):
                writer.writerow([row["path"], rank, top["class"], f"{top['probability']:.6f}"])
        for row in result["unreadable"]:
            writer.writerow([row["path"], "", "unreadable", ""])

    atomic_write_text(path, write)


@stp_command(app, "export")
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write; its folder is created if missing.")],
    fmt: Annotated[str, typer.Option("--format", help=f"{' | '.join(FORMATS)}: NIR (SNNs) for neuromorphic tools, ONNX (ANNs and SNNs) for edge runtimes.")] = "nir",
    nir_graph: Annotated[str, typer.Option("--nir-graph", help="portable (runs unmodified in snnTorch and Norse) | stp (stp's exact layers; initial membrane and reset in metadata).")] = "portable",
    quantize: Annotated[str | None, typer.Option("--quantize", help="int8: static int8 ONNX, calibrated on training images; prints the test accuracy of fp32 and int8 and how often they agree.")] = None,
    min_agreement: Annotated[float, typer.Option("--min-int8-agreement", help="With --quantize int8: write nothing unless the int8 model predicts what the fp32 model does on at least this % of the test images (0: any).")] = MIN_INT8_AGREEMENT,
    data: Data = DataOptions.location,
    cache_dir: CacheDir = DataOptions.cache_dir,
    device: Device = RunOptions.device,
    force: Force = RunOptions.force,
    json_output: JsonOutput = False,
):
    """Write a model in an exchange format: NIR (an SNN, for neuromorphic tools; the portable graph
    is verified in snnTorch 1.0.0 and Norse 1.1.0 at T = 1; Sinabs 3.1.3 runs it only after patches,
    Lava was not tried) or ONNX (an ANN, or an SNN, for onnxruntime and other edge runtimes). See the
    README's "Deploying" section for each consumer's settings.

    Example: stp export sa_t1.safetensors --format onnx --quantize int8 --out sa_t1.int8.onnx
    """
    from stpcli.checkpoint import load_checkpoint
    from stpcli.export import check_export_options, export

    check_output(out, force, inputs=(checkpoint,))
    ckpt = load_checkpoint(checkpoint)
    check_export_options(ckpt.kind, fmt, nir_graph, quantize)
    lock_output(out)
    run = make_run("export", {"device": device}) if quantize else None
    if not 0 <= min_agreement <= 100:
        raise StpError(f"--min-int8-agreement must lie in [0, 100], got {min_agreement}")
    report = export(ckpt, fmt, out, graph=nir_graph, quantize=quantize, run=run,
                    data=make_data({"data": data, "cache_dir": cache_dir}) if quantize else None,
                    min_agreement=min_agreement)
    report["path"] = str(out)
    if json_output:
        typer.echo(json.dumps(report, indent=2))
        return
    what = fmt.upper() + (f", {nir_graph} graph" if fmt == "nir" else "") + (f", {quantize}" if quantize else "")
    console.print(f"wrote {shown(out)} ({what}, {report['bytes'] / 1e6:.2f} MB)", markup=False)
    if quantize:
        change = report["int8_test_accuracy"] - report["fp32_test_accuracy"]
        console.print(f"test split ({report['test_images']} images, onnxruntime): fp32 {report['fp32_test_accuracy']:.2f}%, "
                      f"int8 {report['int8_test_accuracy']:.2f}% ({change:+.2f} points), the same prediction on "
                      f"{report['int8_agreement']:.1f}% of the images; "
                      f"{report['fp32_bytes'] / 1e6:.2f} MB -> {report['bytes'] / 1e6:.2f} MB", markup=False)
