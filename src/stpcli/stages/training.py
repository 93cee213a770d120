"""How a stage trains and measures: the recipe's milestones, ``fit``, the curves, the test accuracy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

from stpcli import plots
from stpcli.checkpoint import Checkpoint, StageEntry
from stpcli.data.source import SplitData
from stpcli.engine.evaluate import accuracy
from stpcli.engine.recipe import ANN_MILESTONES, SNN_MILESTONES, TrainConfig
from stpcli.engine.runtime import Runtime
from stpcli.engine.train import FitResult, fit
from stpcli.restore import input_stats
from stpcli.run import Run
from stpcli.spiking.network import SNN
from stpcli.stages.saving import StageIO, finish_stage

if TYPE_CHECKING:  # the teacher module builds its model with restore.model_from_checkpoint
    from stpcli.stages.teacher import Teacher


def train_stage(run: Run, model, data: SplitData, config: TrainConfig, record: dict,
                io: StageIO, extra_options: dict, teacher: Teacher | None = None) -> FitResult:
    stats = input_stats(record)
    if config.milestones is None:  # the recipe of the model being trained
        config = replace(config, milestones=SNN_MILESTONES if isinstance(model, SNN) else ANN_MILESTONES)
    resume_identity = {"stage": run.label, "train": asdict(config), **extra_options}
    if teacher is not None:
        resume_identity["teacher"] = teacher.sha256
    result = fit(model, data, config, run.runtime, stats=stats, state_path=io.state_path,
                 csv_path=io.csv_path, resume_identity=resume_identity, resume=io.resume, console=run.console,
                 label=run.label, teacher=teacher.model if teacher is not None else None,
                 restart_if_changed=io.if_changed)
    if run.runtime.is_main and result.history:
        plots.training_curves(result.history, f"{run.label}: {io.out.name}", io.plot_path)
    return result


def train_and_finish(run: Run, model, data: SplitData, config: TrainConfig, record: dict, io: StageIO, *,
                     resume_identity: dict, metrics: dict, options: dict, parent: Checkpoint | None,
                     teacher: Teacher | None = None, trained: Callable | None = None) -> Checkpoint:
    """Train when ``config.epochs > 0``, measure the test split, record the lineage entry, write the file.

    ``resume_identity``: what a resumed run must share with the interrupted one (besides the recipe);
    ``metrics``: what the stage measured before training; ``options``: the stage's resolved options
    under their command-line names, as the lineage records them; ``trained(model)``, if given: the
    network the stage makes from the trained model, and the tensors stored beside the model's
    (quantize: the integer network, measured in its place, and its integers)."""
    if teacher is not None:
        options = {**options, "teacher": teacher.describe()}
    if isinstance(model, SNN):  # how its neurons ran (every backend but triton gives the same results bit for bit)
        options = {**options, "lif-backend": run.runtime.lif_backend}
    if config.epochs > 0:
        result = train_stage(run, model, data, config, record, io, resume_identity, teacher)
        metrics.update({"val_accuracy": result.best_val, "best_epoch": result.best_epoch,
                        "seconds": round(result.seconds, 1)})
    made, extra = trained(model) if trained is not None else (model, None)
    metrics["test_accuracy"] = split_accuracy(made, data, "test", record, run.runtime)
    run.say(f"[{run.label}] test accuracy {metrics['test_accuracy']:.2f}%"
            + (f" (best val {metrics['val_accuracy']:.2f}% at epoch {metrics['best_epoch']})"
               if metrics.get("val_accuracy") is not None else ""))
    entry = StageEntry(run.name, io.command, options, metrics)
    return finish_stage(run, model, record, entry, io, parent=parent, extra=extra)


def split_accuracy(model, data: SplitData, part: str, record: dict, runtime: Runtime) -> float:
    images, labels = data.part(part)
    model.to(runtime.device)
    return accuracy(model, images.to(runtime.device), labels.to(runtime.device), len(record["classes"]),
                    input_stats(record).to(runtime.device), runtime)
