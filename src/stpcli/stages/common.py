"""What every stage shares: rebuilding models from checkpoints, records, training and saving."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.console import Console

from stpcli import plots
from stpcli.checkpoint import Checkpoint, StageEntry, check_output_path, save_checkpoint
from stpcli.data.source import SplitData, load_recorded_data
from stpcli.engine.evaluate import accuracy
from stpcli.engine.runtime import Runtime
from stpcli.engine.state import state_path_for
from stpcli.engine.train import ANN_MILESTONES, SNN_MILESTONES, FitResult, TrainConfig, config_dict, fit
from stpcli.errors import StpError
from stpcli.files import first_line, lock_output, remove_leftovers, sha256_file
from stpcli.models.ann import ANN
from stpcli.progress import progress_bar
from stpcli.schema import MAX_TIMESTEPS
from stpcli.spiking.network import SNN, SpikingSettings

if TYPE_CHECKING:  # the teacher module builds its model with model_from_checkpoint from here
    from stpcli.stages.teacher import Teacher


@dataclass
class StageIO:
    """Where a stage writes, and how it treats what is already there."""

    out: Path
    force: bool = False
    resume: bool = False
    command: str = ""

    @property
    def state_path(self) -> Path:
        return state_path_for(self.out)

    @property
    def csv_path(self) -> Path:
        return self.out.with_name(self.out.name.removesuffix(".safetensors") + ".metrics.csv")

    @property
    def plot_path(self) -> Path:
        return self.out.with_name(self.out.name.removesuffix(".safetensors") + ".png")

    def check(self, will_train: bool, inputs: tuple[Path | None, ...] = (), resume_needs_state: bool = True) -> None:
        """Everything about the output that can fail, checked before any data is read; then the
        output is locked against a second writer and leftovers of an interrupted write are cleared."""
        check_output_path(self.out, self.force, inputs)
        if self.resume and not will_train:
            raise StpError("--resume needs a stage that trains (--epochs > 0)")
        if self.resume and resume_needs_state and not self.state_path.exists():
            raise StpError(f"--resume: no training state {self.state_path} to resume from")
        if will_train and self.state_path.exists() and not (self.resume or self.force):
            raise StpError(f"an interrupted run left {self.state_path}; pass --resume to continue it "
                           "or --force to start over")
        lock_output(self.out)
        remove_leftovers(self.out)
        remove_leftovers(self.state_path)


@dataclass
class DataOptions:
    """Where a stage reads its images (``location``: a folder or pack; None: the recorded data or,
    for train-ann, the embedded set) and how it treats changed data and bad images."""

    location: str | None = None
    allow_data_change: bool = False
    on_bad_image: str = "fail"
    cache_dir: Path | None = None


@dataclass
class Stage:
    """A running stage: runtime, console and the stage's lineage entry."""

    name: str
    runtime: Runtime
    console: Console = field(default_factory=Console)

    def say(self, text: str) -> None:
        if self.runtime.is_main:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def named(self, name: str) -> Stage:
        """This run under a stage's own name: the lineage records what ran, whoever called it."""
        return replace(self, name=name)

    def progress(self, label: str):
        """A progress bar on the main rank's terminal; yields ``advance(count, total=None)``."""
        return progress_bar(self.console, label, show=self.runtime.is_main)


def input_stats(record: dict) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(record["input"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(record["input"]["std"]).view(1, 3, 1, 1)
    return mean, std


def model_from_checkpoint(ckpt: Checkpoint, timesteps: int | None = None):
    """Rebuild the ANN or SNN a checkpoint describes and load its tensors."""
    check_tensors_match_model(ckpt)
    model = _build(ckpt, timesteps)
    try:
        model.load_state_dict(ckpt.tensors)
    except Exception as exc:
        raise StpError(f"{ckpt.path}: tensors do not match the recorded model ({first_line(exc)})") from exc
    return model


def _build(ckpt: Checkpoint, timesteps: int | None = None):
    if ckpt.kind == "ann":
        return ANN(ckpt.model_spec)
    steps = timesteps or ckpt.timesteps
    if steps is None:
        raise StpError(f"{ckpt.path} is an SNN checkpoint without time steps")
    return SNN(ckpt.model_spec, steps, SpikingSettings.from_record(ckpt.record.get("snn")))


def check_tensors_match_model(ckpt: Checkpoint) -> None:
    """Compare the file's tensor names and shapes with the recorded model, built without memory
    (meta device), so a record describing a huge model never allocates it."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in _build(ckpt).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in ckpt.tensors.items()}
    if expected == found:
        return
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
    else:
        key = next(k for k in expected if expected[k] != found[k])
        detail = f"{key} has shape {list(found[key])}, the model needs {list(expected[key])}"
    raise StpError(f"{ckpt.path}: tensors do not match the recorded model ({detail})")


def load_stage_data(stage: Stage, ckpt: Checkpoint, options: DataOptions) -> SplitData:
    with stage.progress("decoding images") as advance:
        return load_recorded_data(ckpt.record, options.location, options.allow_data_change,
                                  options.on_bad_image, options.cache_dir, progress=advance)


def child_record(parent: Checkpoint, **changes) -> dict:
    record = {k: v for k, v in parent.record.items() if k not in ("created", "tool_version")}
    record.update(changes)
    return record


def train_stage(stage: Stage, model, data: SplitData, config: TrainConfig, record: dict,
                io: StageIO, extra_options: dict, teacher: Teacher | None = None) -> FitResult:
    mean, std = input_stats(record)
    if config.milestones is None:  # the recipe of the model being trained
        config = replace(config, milestones=SNN_MILESTONES if isinstance(model, SNN) else ANN_MILESTONES)
    run_options = {"stage": stage.name, "train": config_dict(config), **extra_options}
    if teacher is not None:
        run_options["teacher"] = teacher.sha256
    result = fit(model, data, config, stage.runtime, mean=mean, std=std, state_path=io.state_path,
                 csv_path=io.csv_path, run_options=run_options, resume=io.resume, console=stage.console,
                 label=stage.name, teacher=teacher.model if teacher is not None else None)
    if stage.runtime.is_main and result.history:
        plots.training_curves(result.history, f"{stage.name}: {io.out.name}", io.plot_path)
    return result


def train_and_finish(stage: Stage, model, data: SplitData, config: TrainConfig, record: dict, io: StageIO,
                     run_options: dict, metrics: dict, options: dict | None,
                     parent: Checkpoint | None, teacher: Teacher | None = None) -> Checkpoint:
    """Train when ``config.epochs > 0``, measure the test split, record the lineage entry, write the file."""
    if teacher is not None:
        options = {**(options or {}), "teacher": teacher.describe()}
    if config.epochs > 0:
        result = train_stage(stage, model, data, config, record, io, run_options, teacher)
        metrics.update({"val_accuracy": result.best_val, "best_epoch": result.best_epoch,
                        "seconds": round(result.seconds, 1)})
    metrics["test_accuracy"] = split_accuracy(model, data, "test", record, stage.runtime)
    stage.say(f"[{stage.name}] test accuracy {metrics['test_accuracy']:.2f}%"
              + (f" (best val {metrics['val_accuracy']:.2f}% at epoch {metrics['best_epoch']})"
                 if metrics.get("val_accuracy") is not None else ""))
    entry = StageEntry(stage.name.split(" ")[0], io.command, options or {}, metrics)
    return finish_stage(stage, model, record, entry, io, parent=parent)


def split_accuracy(model, data: SplitData, part: str, record: dict, runtime: Runtime) -> float:
    images, labels = data.part(part)
    mean, std = input_stats(record)
    model.to(runtime.device)
    return accuracy(model, images.to(runtime.device), labels.to(runtime.device), len(record["classes"]),
                    mean.to(runtime.device), std.to(runtime.device), runtime)


def finish_stage(stage: Stage, model, record: dict, entry: StageEntry, io: StageIO,
                 parent: Checkpoint | None) -> Checkpoint:
    """Attach the lineage entry and write the checkpoint (rank 0), then drop the state file."""
    if parent is not None and parent.path is not None:
        entry.parent_path = str(parent.path.resolve())
        entry.parent_sha256 = parent.sha256
    history = list(parent.history) if parent is not None else []
    record = dict(record)
    record["history"] = history + [entry.as_dict()]
    record["metrics"] = entry.metrics
    tensors = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = Checkpoint(tensors=tensors, record=record)
    if stage.runtime.is_main:
        save_checkpoint(ckpt, io.out)
        if io.state_path.exists():
            io.state_path.unlink()
        remove_leftovers(io.state_path)
    stage.runtime.barrier()
    if not stage.runtime.is_main:
        ckpt.path, ckpt.sha256 = io.out, sha256_file(io.out)
    return ckpt


def check_timesteps(timesteps: int) -> None:
    if not 1 <= timesteps <= MAX_TIMESTEPS:
        raise StpError(f"--timesteps must lie in 1..{MAX_TIMESTEPS}, got {timesteps}")


def require_kind(ckpt: Checkpoint, command: str, expected: str) -> None:
    if ckpt.kind != expected:
        found = ckpt.kind.upper() + (f" (T={ckpt.timesteps})" if ckpt.kind == "snn" else "")
        raise StpError(f"{command} needs an {expected.upper()} checkpoint; {ckpt.path} is an {found} checkpoint")
