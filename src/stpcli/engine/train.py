"""The epoch loop shared by every training stage (ANN and SNN).

One function, ``fit``: SGD or Adam, a step or cosine schedule restarted per
call, best-on-validation selection, a per-epoch CSV, a training-state file
written atomically after every epoch, ``--resume`` from it, a clean stop on
SIGINT/SIGTERM at the next step and a loud stop on a non-finite loss. Under
DDP each rank trains on its stride of every global batch.
"""

from __future__ import annotations

import csv
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from rich.console import Console

from stpcli.data.loader import InputStats, epoch_generator, iterate_batches
from stpcli.data.source import SplitData
from stpcli.defaults import with_unrecorded
from stpcli.engine.evaluate import Scores, score
from stpcli.engine.recipe import TRAIN_OPTIONS, TrainConfig, distillation_loss, make_optimizer
from stpcli.engine.runtime import Runtime
from stpcli.engine.state import load_state, read_state_record, save_state
from stpcli.errors import Interrupted, StpError
from stpcli.files import atomic_write_text
from stpcli.progress import progress_bar
from stpcli.signals import PENDING_SIGNALS
from stpcli.spiking.energy import counting_spikes, mean_spikes_per_neuron

NAN_CHECK_EVERY = 20  # steps between host-side finiteness checks on CUDA


@dataclass
class FitResult:
    best_val: float | None
    best_epoch: int
    history: list[dict]
    seconds: float


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop stops at the next step boundary."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        if PENDING_SIGNALS:  # received before the loop started, and not acted on
            self.signal_name = signal.Signals(PENDING_SIGNALS[-1]).name
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. a notebook worker)
                pass
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainableModel(Protocol):
    """What the loop needs of a model beyond nn.Module: a hook after each optimiser step (the SNN
    clamps its leaks and thresholds there)."""

    def after_step(self) -> None: ...


@dataclass
class _Loop:
    """What one training run holds across its epochs (the model, optimiser, data on the device)."""

    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, wrapped for DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    runtime: Runtime
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    stats: InputStats
    num_classes: int
    teacher: torch.nn.Module | None
    label: str
    state_path: Path
    history: list[dict] = field(default_factory=list)
    best_val: float | None = None
    best_epoch: int = -1
    best_state: dict | None = None
    resumes_itself: bool = False  # run with --if-changed: the same command resumes, without --resume


def fit(model, data: SplitData, config: TrainConfig, runtime: Runtime, *, stats: InputStats,
        state_path: Path, csv_path: Path | None, resume_identity: dict,
        resume: bool, console: Console, label: str, teacher: torch.nn.Module | None = None,
        restart_if_changed: bool = False) -> FitResult:
    """Train ``model`` in place; on return it holds the best-on-validation weights.

    ``resume`` continues from ``state_path``, whose options must equal ``resume_identity`` (or, with
    ``restart_if_changed``, training starts over when they differ).

    With ``config.distill_weight > 0`` the loss also pulls the model's outputs
    towards ``teacher``'s (run in eval mode on the same augmented batch).
    """
    if config.distill_weight > 0 and teacher is None:
        raise ValueError("distillation needs a teacher model")
    started = time.time()
    loop = _prepare(model, data, config, runtime, stats, teacher, label, state_path)
    loop.resumes_itself = restart_if_changed
    if data.indices["val"].numel() == 0 and runtime.is_main:
        console.print(f"[{label}] no validation part (--val-ratio 0): 'val' below is the training images' "
                      "accuracy, and the best epoch is chosen on it", markup=False)
    start_epoch = _resume(loop, resume_identity, console, restart_if_changed) if resume else 0
    with _StopRequest() as stop:
        for epoch in range(start_epoch, config.epochs):
            epoch_start = time.time()
            lr = config.lr_at(epoch)
            for group in loop.optimizer.param_groups:
                group["lr"] = lr
            train_loss, train_acc = train_one_epoch(loop, epoch, stop, console)
            validation, spike_rate = _validate(model, *loop.val, loop.num_classes, loop.stats, runtime)
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                   "val_acc": validation.overall_accuracy, "val_loss": validation.loss,
                   **({"spike_rate": spike_rate} if spike_rate is not None else {}),
                   "seconds": round(time.time() - epoch_start, 2)}
            _end_of_epoch(loop, row, resume_identity, csv_path, console)
    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    return FitResult(loop.best_val, loop.best_epoch, loop.history, time.time() - started)


def _prepare(model, data: SplitData, config: TrainConfig, runtime: Runtime, stats, teacher, label,
             state_path) -> _Loop:
    """The data on the device, the model in its training layout, the optimiser, DDP and compilation."""
    device = runtime.device
    train = tuple(t.to(device) for t in data.part("train"))
    val = tuple(t.to(device) for t in data.part("val"))
    if val[0].shape[0] == 0:
        val = train  # no validation part: select on training accuracy
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if config.distill_weight > 0:
        teacher = teacher.to(device).eval()
        if device.type == "cuda":
            teacher.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    train_model = model
    if runtime.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if runtime.compile:
        train_model = torch.compile(train_model)
    return _Loop(model, train_model, optimizer, config, runtime, train, val, stats.to(device),
                 len(data.dataset.classes), teacher, label, state_path)


def _resume(loop: _Loop, resume_identity: dict, console: Console, restart_if_changed: bool) -> int:
    """Restore model, optimiser, history and best-so-far from the state file; the epoch to start at."""
    if not loop.state_path.exists():
        raise StpError(f"--resume: no training state {loop.state_path} to resume from")
    changed = changed_options(read_state_record(loop.state_path).get("options", {}), resume_identity)
    if changed and restart_if_changed:
        console.print(f"[{loop.label}] the interrupted run in {loop.state_path} had other {', '.join(changed)}; "
                      "starting over", markup=False)
        return 0
    if changed:
        raise StpError(f"--resume: {', '.join(changed)} differ(s) from the interrupted run's; rerun with the "
                       "same values (only --lr may change), or drop --resume and pass --force to start over")
    meta, loop.best_state = load_state(loop.state_path, loop.model, loop.optimizer)
    loop.history, loop.best_val, loop.best_epoch = meta["history"], meta["best_val"], meta["best_epoch"]
    console.print(f"[{loop.label}] resuming from {loop.state_path} after epoch {meta['epoch']}", markup=False)
    return meta["epoch"]


def train_one_epoch(loop: _Loop, epoch: int, stop: _StopRequest, console: Console) -> tuple[float, float]:
    """One pass over the training part (shuffled and augmented from (seed, epoch)); returns the mean
    loss and accuracy over every rank's images. Stops on a non-finite loss or a stop request."""
    config, runtime, device = loop.config, loop.runtime, loop.runtime.device
    train_x, train_y = loop.train
    generator = epoch_generator(config.seed, epoch, device)
    steps = max(1, train_x.shape[0] // config.batch_size)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    loop.train_model.train()
    bar = f"{loop.label} epoch {epoch + 1}/{config.epochs}"
    with progress_bar(console, bar, total=steps, show=runtime.is_main) as advance:
        for step, (x, y) in enumerate(iterate_batches(
                train_x, train_y, config.batch_size, loop.stats, generator=generator, train=True,
                rank=runtime.rank, world_size=runtime.world_size)):
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                logits = loop.train_model(x)
                if config.distill_weight > 0:
                    assert loop.teacher is not None, "distillation needs a teacher"
                    with torch.no_grad():
                        teacher_logits = loop.teacher(x).float()
                    loss = distillation_loss(logits.float(), teacher_logits, y, config.distill_weight,
                                             config.distill_temperature)
                else:
                    loss = F.cross_entropy(logits.float(), y)
            loop.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loop.optimizer.step()
            cast(TrainableModel, loop.model).after_step()
            loss_sum += loss.detach() * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
            advance(1)
            # one collective per step under DDP: finiteness (every step on CPU, every
            # NAN_CHECK_EVERY on CUDA, where it syncs the host) and stop requests together
            check = device.type == "cpu" or step % NAN_CHECK_EVERY == 0
            bad, stopping = runtime.any_rank(check and not _finite(loss), stop.signal_name is not None)
            if bad:
                raise _non_finite(loop.label, epoch, step, loop.state_path, loop.history)
            if stopping:
                raise Interrupted(_interrupt_message(stop.signal_name, loop, epoch))
    if runtime.any_rank(not _finite(loss_sum))[0]:
        raise _non_finite(loop.label, epoch, steps, loop.state_path, loop.history)
    totals = torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=device)])
    runtime.all_reduce_sum(totals)
    return float(totals[0] / totals[2]), float(100 * totals[1] / totals[2])


def _end_of_epoch(loop: _Loop, row: dict, resume_identity: dict, csv_path: Path | None, console: Console) -> None:
    """Keep the best weights so far; rank 0 prints the epoch, writes the state file and the CSV."""
    loop.history.append(row)
    if loop.best_val is None or row["val_acc"] > loop.best_val:
        loop.best_val, loop.best_epoch = row["val_acc"], row["epoch"]
        loop.best_state = {k: v.detach().to("cpu", copy=True) for k, v in loop.model.state_dict().items()}
    if loop.runtime.is_main:
        console.print(
            f"[{loop.label}] epoch {row['epoch']}/{loop.config.epochs}  loss {row['train_loss']:.4f}  "
            f"train {row['train_acc']:.2f}%  val {row['val_acc']:.2f}%  lr {row['lr']:.3g}  {row['seconds']:.1f}s"
            + time_left(loop.history, loop.config.epochs), markup=False, highlight=False, soft_wrap=True)
        record = {"epoch": row["epoch"], "history": loop.history, "best_val": loop.best_val,
                  "best_epoch": loop.best_epoch, "options": resume_identity}
        save_state(loop.state_path, loop.model, loop.optimizer, record, loop.best_state)
        if csv_path is not None:
            _write_csv(csv_path, loop.history)
    loop.runtime.barrier()


def time_left(history: list[dict], epochs: int) -> str:
    """'  ~2 min left': the epochs still to run times the median time an epoch has taken (the first
    one, which pays for warm-up, only while it is the only one measured; the median, so that an epoch
    stretched by a suspended process or a sleeping laptop does not inflate the rest)."""
    left = epochs - history[-1]["epoch"]
    if left <= 0:
        return ""
    seconds = left * statistics.median([row["seconds"] for row in history[1:]] or [history[0]["seconds"]])
    if seconds < 60:
        return f"  ~{seconds:.0f} s left"
    if seconds < 3600:
        return f"  ~{seconds / 60:.0f} min left"
    return f"  ~{seconds / 3600:.1f} h left"


def _validate(model, images, labels, num_classes, stats, runtime) -> tuple[Scores, float | None]:
    """Scores on the validation part and, for an SNN, its mean spikes per neuron over the T steps."""
    if not hasattr(model, "neurons"):
        return score(model, images, labels, num_classes, stats, runtime), None
    with counting_spikes(model) as counters:
        scores = score(model, images, labels, num_classes, stats, runtime)
    return scores, mean_spikes_per_neuron(counters)


def _finite(value: torch.Tensor) -> bool:
    return bool(torch.isfinite(value).all())


def _non_finite(label, epoch, step, state_path, history) -> StpError:
    kept = (f"the last good state (epoch {len(history)}) is kept in {state_path}"
            if history else "no epoch had completed, so no state was kept")
    return StpError(f"[{label}] the loss became NaN or infinite at epoch {epoch + 1}, step {step + 1}; "
                    f"training stopped; {kept}; rerun with --resume and a lower --lr", exit_code=3)


def _interrupt_message(signal_name: str | None, loop: _Loop, epoch: int) -> str:
    if loop.history:
        return (f"[{loop.label}] stopped by {signal_name} during epoch {epoch + 1}; the state after epoch "
                f"{len(loop.history)} is in {loop.state_path}; rerun the same command"
                + (" to continue" if loop.resumes_itself else " with --resume to continue"))
    return (f"[{loop.label}] stopped by {signal_name} during epoch {epoch + 1}, before any epoch completed; "
            "nothing to resume")


# what a resume identity holds besides options: the input's and the split's sha256, the stage, the T
# being trained, the calibration images a conversion used
IDENTITY_FACTS = ("stage", "parent", "teacher", "split_sha256", "timesteps", "calibration_images")


def changed_options(recorded: dict, current: dict) -> list[str]:
    """The options (by command-line name where one exists) whose values differ; --lr may change."""
    options = {f"train.{name}": option for name, option in TRAIN_OPTIONS.items()}
    flat_recorded, flat_current = _flatten(with_unrecorded(recorded, current)), _flatten(current)
    keys = sorted(set(flat_recorded) | set(flat_current))
    return [options.get(k, k if k in IDENTITY_FACTS or "." in k else f"--{k}") for k in keys
            if k != "train.lr" and flat_recorded.get(k) != flat_current.get(k)]


def _flatten(options: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _write_csv(path: Path, history: list[dict]) -> None:
    def write(handle):
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)

    atomic_write_text(path, write)
