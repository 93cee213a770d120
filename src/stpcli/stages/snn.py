"""The spiking stages: ``convert`` (Step 2a), ``temporal-prune`` (Step 2b), ``spatial-prune`` (Step 3)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch

from stpcli.checkpoint import Checkpoint
from stpcli.data.loader import normalise
from stpcli.errors import StpError
from stpcli.models.surgery import remove_units, units_to_remove
from stpcli.names import timestep_path
from stpcli.options import ConvertOptions, DataOptions, SpatialPruneOptions, TemporalPruneOptions
from stpcli.restore import input_stats, model_from_checkpoint, require_kind
from stpcli.run import Run, load_checkpoint_data
from stpcli.spiking.convert import balance_thresholds, snn_from_ann
from stpcli.spiking.settings import SpikingSettings
from stpcli.stages.saving import StageIO, child_record, made_otherwise
from stpcli.stages.teacher import resolve_teacher
from stpcli.stages.training import split_accuracy, train_and_finish


def convert(run: Run, source: Checkpoint, options: ConvertOptions | None = None, *, data: DataOptions | None = None,
            io: StageIO) -> Checkpoint:
    """Sb: BN folded, ReLU -> LIF, thresholds balanced layer by layer, then hybrid training at T.

    ``options.recipe`` names the recipe whose defaults the SNN stages take: each option left None
    takes that recipe's value (``ConvertOptions.settings``, ``conversion``, ``train_config``)."""
    options, data = options or ConvertOptions(), data or DataOptions()
    run = run.named("convert")
    require_kind(source, "convert", "ann")
    options.check()
    timesteps, teacher = options.timesteps, options.teacher
    settings, conversion, config = options.settings(), options.conversion(), options.train_config(options.known_recipe())
    recorded = {**options.recorded(), **data.recorded()}
    existing = io.current(run, source, recorded)
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
                            resume_identity={"parent": source.sha256, "calibration_images": count,
                                             **options.used().stage_recorded()},
                            metrics={"test_accuracy_after_conversion": converted,
                                     "val_accuracy_after_conversion": converted_val},
                            options=recorded,
                            parent=source,
                            teacher=distil_from)


def recorded_recipe(source: Checkpoint) -> str:
    """The recipe an SNN checkpoint was converted with (its later stages take that recipe's defaults)."""
    return SpikingSettings.from_record(source.record.get("snn")).recipe


def temporal_prune(run: Run, source: Checkpoint, options: TemporalPruneOptions | None = None, *,
                   data: DataOptions | None = None, io: StageIO) -> list[Checkpoint]:
    """Retrain at each T of ``options.schedule`` (with that T's epochs and learning-rate schedule), each
    T from the previous one; one checkpoint per T.

    A T whose checkpoint already exists and descends from the previous T's file
    (by sha256) is reused, so a killed run resumes T by T; ``io.force`` retrains
    every T unless ``io.resume`` (then it only overwrites the files that no
    longer descend from their parent).
    """
    options, data = options or TemporalPruneOptions(), data or DataOptions()
    require_kind(source, "temporal-prune", "snn")
    options.check(source.timesteps or 0)
    schedule, configs, teacher = options.steps(), options.train_configs(recorded_recipe(source)), options.teacher
    paths = [timestep_path(io.out, t) for t in schedule[:-1]] + [io.out]
    if source.path is not None and any(p.resolve() == source.path.resolve() for p in paths):
        raise StpError(f"a T file of --schedule would overwrite the input {source.path}; choose another --out")
    if len({p.resolve() for p in paths}) < len(paths):
        clash = next(t for t, p in zip(schedule, paths[:-1]) if p.resolve() == io.out.resolve())
        raise StpError(f"--out {io.out.name} is also the T={clash} file of --schedule "
                       f"{','.join(map(str, schedule))}; name --out after the last time step "
                       f"({timestep_path(io.out, schedule[-1]).name}) or without a _tN suffix")
    recorded = {**options.recorded(recorded_recipe(source)), **data.recorded()}
    if io.if_changed:  # T by T: a T file made from the previous one with these options is kept, others rebuilt
        io.force = io.resume = True
    io.check(will_train=True, inputs=(source.path, teacher), resume_needs_state=False, also=tuple(paths[:-1]))
    distil_from = resolve_teacher(source, teacher, configs[0])
    parts = None
    outputs, parent = [], source
    for timesteps, path, config in zip(schedule, paths, configs):
        t_io = StageIO(path, force=io.force, resume=io.resume, command=io.command, if_changed=io.if_changed)
        t_options = {**recorded, "timesteps": timesteps}
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
                                  resume_identity={"timesteps": timesteps, "parent": parent.sha256,
                                                   **options.stage_recorded()},
                                  metrics={"test_accuracy_before_training": start},
                                  options=t_options, parent=parent,
                                  teacher=distil_from)
        run.say(f"[temporal-prune] T={timesteps} -> {path}")
        outputs.append(parent)
    return outputs


def _reusable(path: Path, parent: Checkpoint, options: dict, force: bool) -> tuple[Checkpoint | None, str]:
    """(the T file at ``path`` when temporal pruning made it from ``parent`` with ``options``, else
    None; why it is not, when it exists)."""
    if force or not path.exists():
        return None, ""
    existing, reasons = made_otherwise(path, "temporal-prune", parent, options, expect_kind="snn")
    return (None, "; ".join(reasons)) if reasons else (existing, "")


def spatial_prune(run: Run, source: Checkpoint, options: SpatialPruneOptions | None = None, *,
                  data: DataOptions | None = None, io: StageIO) -> Checkpoint:
    """Sa: remove M layers from layer group AS (Algorithm 2), copy the rest, fine-tune at the checkpoint's T."""
    options, data = options or SpatialPruneOptions(), data or DataOptions()
    run = run.named("spatial-prune")
    require_kind(source, "spatial-prune", "snn")
    options.check()
    config, teacher = options.train_config(recorded_recipe(source)), options.teacher
    try:  # checked before anything is read
        unit_group, count, named = units_to_remove(source.model_spec, options.unit_group, options.count)
    except StpError as exc:
        raise StpError(str(exc).replace("the checkpoint", str(source.path), 1)) from None
    used = replace(options, unit_group=unit_group, count=count)
    recorded = {**used.recorded(recorded_recipe(source)), **data.recorded()}
    existing = io.current(run, source, recorded)
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
                            resume_identity={"parent": source.sha256, **used.stage_recorded()},
                            metrics={"test_accuracy_before_training": before,
                                     "removed_layers": list(range(first, first + count))},
                            options=recorded, parent=source, teacher=distil_from)
