"""The spiking stages: ``convert`` (Step 2a), ``temporal-prune`` (Step 2b), ``spatial-prune`` (Step 3)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch

from stpcli.checkpoint import Checkpoint
from stpcli.data.loader import normalise
from stpcli.defaults import BALANCINGS, CONV_DROPOUT_PLACEMENTS, MAX_BALANCE_STEPS, RECIPES, SPIKE_AMPLITUDES
from stpcli.engine.recipe import TrainConfig
from stpcli.errors import StpError
from stpcli.models.surgery import remove_units, units_to_remove
from stpcli.names import timestep_path
from stpcli.restore import check_timesteps, input_stats, model_from_checkpoint, require_kind
from stpcli.run import DataOptions, Run, load_checkpoint_data
from stpcli.spiking.convert import balance_thresholds, snn_from_ann
from stpcli.spiking.settings import Conversion, SpikingSettings
from stpcli.stages.saving import StageIO, child_record, made_otherwise
from stpcli.stages.teacher import resolve_teacher
from stpcli.stages.training import split_accuracy, train_and_finish

MAX_CALIBRATION_IMAGES = 1_000_000
MAX_THRESHOLD_SCALE = 100.0  # DIET-SNN uses 0.2-0.3, TP 1.0


def convert(run: Run, source: Checkpoint, *, timesteps: int, config: TrainConfig, data: DataOptions, io: StageIO,
            settings: SpikingSettings | None = None, conversion: Conversion | None = None,
            teacher: Path | None = None) -> Checkpoint:
    """Sb: BN folded, ReLU -> LIF, thresholds balanced layer by layer, then hybrid training at T.

    ``settings.recipe`` names the recipe whose defaults the SNN stages take (``settings`` and
    ``conversion`` default to the stp recipe's; ``config.amsgrad`` None is the recipe's)."""
    run = run.named("convert")
    require_kind(source, "convert", "ann")
    settings = settings or SpikingSettings()
    conversion = conversion or Conversion.for_recipe(settings.recipe)
    config = config.for_recipe(settings.recipe)
    check_convert(timesteps=timesteps, config=config, settings=settings, conversion=conversion)
    options = {"timesteps": timesteps, "recipe": settings.recipe, "percentile": conversion.percentile,
               "scale": conversion.scale, "calibration-images": conversion.calibration_images,
               "balancing": conversion.balancing, "balance-steps": conversion.balance_steps,
               "fold-thresholds": conversion.fold_thresholds, "dropout": settings.dropout,
               "conv-dropout": settings.conv_dropout, "conv-dropout-placement": settings.conv_dropout_placement,
               "initial-membrane": settings.initial_membrane, "spike-amplitude": settings.spike_amplitude,
               **config.recorded(), **data.recorded()}
    existing = io.current(run, source, options)
    if existing is not None:
        return existing
    io.check(will_train=config.epochs > 0, inputs=(source.path, teacher))
    distil_from = resolve_teacher(source, teacher, config)
    parts = load_checkpoint_data(run, source, data)
    ann = model_from_checkpoint(source).eval()
    snn = snn_from_ann(ann, timesteps, settings)
    device = run.runtime.device
    snn.to(device)
    images, _ = parts.part("train")
    count = min(conversion.calibration_images, images.shape[0])
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(config.seed))[:count]
    batch = normalise(images[pick], input_stats(source.record)).to(device)
    thresholds = balance_thresholds(snn, batch, conversion.percentile, conversion.scale, seed=config.seed,
                                    method=conversion.balancing, steps=conversion.balance_steps,
                                    fold=conversion.fold_thresholds)
    record = child_record(source, kind="snn", timesteps=timesteps,
                          snn={**settings.as_record(), "leak_init": 1.0,
                               "conversion": {**asdict(conversion), "calibration_images": count,
                                              "thresholds": thresholds}})
    converted = split_accuracy(snn, parts, "test", record, run.runtime)
    converted_val = split_accuracy(snn, parts, "val", record, run.runtime)
    run.say(f"[convert] T={timesteps} ({settings.recipe} recipe): thresholds balanced on {count} images "
            f"(p{conversion.percentile}, x{conversion.scale}, {conversion.balancing} balancing"
            f"{f' over {conversion.balance_steps} steps' if conversion.balance_steps else ''}); "
            f"accuracy right after conversion: val {converted_val:.2f}%, test {converted:.2f}%")
    torch.manual_seed(config.seed)  # the SNN's dropout masks: one seed, one run
    return train_and_finish(run, snn, parts, config, record, io,
                            resume_identity={"timesteps": timesteps, **asdict(conversion), "calibration_images": count,
                                             "parent": source.sha256},
                            metrics={"test_accuracy_after_conversion": converted,
                                     "val_accuracy_after_conversion": converted_val},
                            options=options,
                            parent=source,
                            teacher=distil_from)


def check_convert(*, timesteps: int, config: TrainConfig, settings: SpikingSettings, conversion: Conversion) -> None:
    """convert's options, checked before anything is read (the stage, and a preset's plan)."""
    check_timesteps(timesteps)
    config.check()
    if not 0 < conversion.percentile <= 100:
        raise StpError(f"--percentile must lie in (0, 100], got {conversion.percentile}")
    if not 0 < conversion.scale <= MAX_THRESHOLD_SCALE:
        raise StpError(f"--scale (the thresholds' factor) must lie in (0, {MAX_THRESHOLD_SCALE:g}], got {conversion.scale}")
    if not 0 < conversion.calibration_images <= MAX_CALIBRATION_IMAGES:
        raise StpError(f"--calibration-images must lie in 1..{MAX_CALIBRATION_IMAGES}, got {conversion.calibration_images}")
    if conversion.balancing not in BALANCINGS:
        raise StpError(f"--balancing must be one of {', '.join(BALANCINGS)}, got {conversion.balancing!r}")
    steps = conversion.balance_steps
    if steps is not None and (type(steps) is not int or not 1 <= steps <= MAX_BALANCE_STEPS):
        raise StpError(f"--balance-steps must lie in 1..{MAX_BALANCE_STEPS}, got {steps}")
    if not conversion.fold_thresholds and not settings.binary:
        raise StpError("--no-fold-thresholds needs --spike-amplitude binary (a spike of amplitude V carries its "
                       "threshold itself)")
    check_settings(settings)


def check_settings(settings: SpikingSettings) -> None:
    for option, value in (("--dropout", settings.dropout), ("--conv-dropout", settings.conv_dropout),
                          ("--initial-membrane", settings.initial_membrane)):
        if not 0 <= value < 1:
            raise StpError(f"{option} must lie in [0, 1), got {value}")
    for option, choice, choices in (("--spike-amplitude", settings.spike_amplitude, SPIKE_AMPLITUDES),
                                    ("--conv-dropout-placement", settings.conv_dropout_placement,
                                     CONV_DROPOUT_PLACEMENTS),
                                    ("--recipe", settings.recipe, tuple(RECIPES))):
        if choice not in choices:
            raise StpError(f"{option} must be one of {', '.join(choices)}, got {choice!r}")
    if not settings.surrogate_gamma > 0:
        raise StpError(f"the surrogate slope must be positive, got {settings.surrogate_gamma}")


def recorded_recipe(source: Checkpoint) -> str:
    """The recipe an SNN checkpoint was converted with (its later stages take that recipe's defaults)."""
    return SpikingSettings.from_record(source.record.get("snn")).recipe


def timestep_configs(base: TrainConfig, schedule: list[int], epochs: str | int, lr_schedule: str) -> list[TrainConfig]:
    """One training config per T of the schedule: each of ``epochs`` and ``lr_schedule`` holds one
    value for every T ("15") or one per T ("15,15,40"; "step,step,cosine")."""
    try:
        counts = [int(c) for c in _per_timestep(epochs, "--epochs-per-stage", schedule)]
    except ValueError:
        raise StpError(f"--epochs-per-stage must be integers such as 15 or 15,15,40, got {epochs!r}") from None
    schedules = _per_timestep(lr_schedule, "--lr-schedule", schedule)
    return [replace(base, epochs=e, schedule=s) for e, s in zip(counts, schedules)]


def _per_timestep(text: str | int, option: str, schedule: list[int]) -> list[str]:
    values = [v.strip() for v in str(text).split(",")]
    if len(values) == 1:
        return values * len(schedule)
    if len(values) != len(schedule):
        raise StpError(f"{option} has {len(values)} values for the {len(schedule)} time steps of --schedule "
                       f"{','.join(map(str, schedule))}; give one value, or one per time step")
    return values


def temporal_prune(run: Run, source: Checkpoint, *, schedule: list[int], configs: list[TrainConfig],
                   data: DataOptions, io: StageIO, teacher: Path | None = None) -> list[Checkpoint]:
    """Retrain at each T of the schedule (``configs[i]`` for ``schedule[i]``), each T from the
    previous one; one checkpoint per T.

    A T whose checkpoint already exists and descends from the previous T's file
    (by sha256) is reused, so a killed run resumes T by T; ``io.force`` retrains
    every T unless ``io.resume`` (then it only overwrites the files that no
    longer descend from their parent).
    """
    require_kind(source, "temporal-prune", "snn")
    configs = [config.for_recipe(recorded_recipe(source)) for config in configs]
    check_temporal_prune(schedule, configs, source.timesteps or 0)
    paths = [timestep_path(io.out, t) for t in schedule[:-1]] + [io.out]
    if source.path is not None and any(p.resolve() == source.path.resolve() for p in paths):
        raise StpError(f"a T file of --schedule would overwrite the input {source.path}; choose another --out")
    if len({p.resolve() for p in paths}) < len(paths):
        clash = next(t for t, p in zip(schedule, paths[:-1]) if p.resolve() == io.out.resolve())
        raise StpError(f"--out {io.out.name} is also the T={clash} file of --schedule "
                       f"{','.join(map(str, schedule))}; name --out after the last time step "
                       f"({timestep_path(io.out, schedule[-1]).name}) or without a _tN suffix")
    options = {"schedule": ",".join(map(str, schedule)),
               "epochs-per-stage": _one_or_each([c.epochs for c in configs]),
               "lr-schedule": _one_or_each([c.schedule for c in configs]),
               **{k: v for k, v in configs[0].recorded().items() if k not in ("epochs", "lr-schedule")},
               **data.recorded()}
    if io.if_changed:  # T by T: a T file made from the previous one with these options is kept, others rebuilt
        io.force = io.resume = True
    io.check(will_train=True, inputs=(source.path, teacher), resume_needs_state=False, also=tuple(paths[:-1]))
    distil_from = resolve_teacher(source, teacher, configs[0])
    parts = None
    outputs, parent = [], source
    for timesteps, path, config in zip(schedule, paths, configs):
        t_io = StageIO(path, force=io.force, resume=io.resume, command=io.command, if_changed=io.if_changed)
        t_options = {**options, "timesteps": timesteps}
        reused, why = _reusable(path, parent, t_options, force=t_io.force and not t_io.resume)
        if reused is not None:
            run.say(f"[temporal-prune] T={timesteps}: {path} is up to date (made from {parent.path} with the "
                    "same options); reusing it")
            outputs.append(reused)
            parent = reused
            continue
        if why:
            run.say(f"[temporal-prune] T={timesteps}: rebuilding {path}: {why}")
        if parts is None:
            parts = load_checkpoint_data(run, source, data)
        if path != io.out:
            t_io.check(will_train=True, inputs=(source.path,), resume_needs_state=False)
        if t_io.resume and not t_io.state_path.exists():
            t_io.resume = False  # only the interrupted T has a state to resume
        snn = model_from_checkpoint(parent, timesteps=timesteps)
        record = child_record(parent, timesteps=timesteps)
        start = split_accuracy(snn, parts, "test", record, run.runtime)
        run.say(f"[temporal-prune] T={parent.timesteps} -> T={timesteps}: test accuracy before "
                f"retraining {start:.2f}%")
        torch.manual_seed(config.seed)
        parent = train_and_finish(run.named("temporal-prune", f"temporal-prune T={timesteps}"), snn,
                                  parts, config, record, t_io,
                                  resume_identity={"timesteps": timesteps, "parent": parent.sha256},
                                  metrics={"test_accuracy_before_training": start},
                                  options=t_options, parent=parent,
                                  teacher=distil_from)
        run.say(f"[temporal-prune] T={timesteps} -> {path}")
        outputs.append(parent)
    return outputs


def check_temporal_prune(schedule: list[int], configs: list[TrainConfig], source_timesteps: int) -> None:
    """temporal-prune's options against its input's T (the stage, and a preset's plan)."""
    if len(configs) != len(schedule):
        raise ValueError("temporal_prune needs one training config per time step of the schedule")
    for config in configs:
        config.check(training_required=True)
    if schedule[0] > source_timesteps:
        raise StpError(f"--schedule starts at T={schedule[0]}, above the checkpoint's T={source_timesteps}")


def _one_or_each(values: list) -> str:
    """How --epochs-per-stage and --lr-schedule spell per-T values: one value if all agree."""
    return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))


def _reusable(path: Path, parent: Checkpoint, options: dict, force: bool) -> tuple[Checkpoint | None, str]:
    """(the T file at ``path`` when temporal pruning made it from ``parent`` with ``options``, else
    None; why it is not, when it exists)."""
    if force or not path.exists():
        return None, ""
    existing, reasons = made_otherwise(path, "temporal-prune", parent, options, expect_kind="snn")
    return (None, "; ".join(reasons)) if reasons else (existing, "")


def spatial_prune(run: Run, source: Checkpoint, *, unit_group: int | None, count: int | None,
                  config: TrainConfig, data: DataOptions, io: StageIO, teacher: Path | None = None) -> Checkpoint:
    """Sa: remove M layers from layer group AS (Algorithm 2), copy the rest, fine-tune at the checkpoint's T."""
    run = run.named("spatial-prune")
    require_kind(source, "spatial-prune", "snn")
    config = config.for_recipe(recorded_recipe(source))
    config.check()
    try:  # checked before anything is read
        unit_group, count, named = units_to_remove(source.model_spec, unit_group, count)
    except StpError as exc:
        raise StpError(str(exc).replace("the checkpoint", str(source.path), 1)) from None
    options = {"as": unit_group, "m": count, **config.recorded(), **data.recorded()}
    existing = io.current(run, source, options)
    if existing is not None:
        return existing
    io.check(will_train=config.epochs > 0, inputs=(source.path, teacher))
    distil_from = resolve_teacher(source, teacher, config)
    small, first = remove_units(model_from_checkpoint(source), unit_group, count, named)
    spec = small.spec
    record = child_record(source, model=spec)
    parts = load_checkpoint_data(run, source, data)
    before = split_accuracy(small, parts, "test", record, run.runtime)
    run.say(f"[spatial-prune] removed layers {first}..{first + count - 1} (group {unit_group}, M={count}); "
            f"T={source.timesteps}; test accuracy before fine-tuning {before:.2f}%")
    torch.manual_seed(config.seed)
    return train_and_finish(run, small, parts, config, record, io,
                            resume_identity={"as": unit_group, "m": count, "parent": source.sha256},
                            metrics={"test_accuracy_before_training": before,
                                     "removed_layers": list(range(first, first + count))},
                            options=options, parent=source, teacher=distil_from)
