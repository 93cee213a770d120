"""The ANN stages: ``train-ann`` (Na) and ``add-unit`` (Step 1: Nb)."""

from __future__ import annotations

from pathlib import Path

import torch

from stpcli.checkpoint import Checkpoint
from stpcli.data.source import IMAGENET_MEAN, IMAGENET_STD, data_record, load_dataset, split_data
from stpcli.data.split import check_split_ratios, stratified_split
from stpcli.engine.recipe import TrainConfig
from stpcli.errors import StpError
from stpcli.models.ann import ANN
from stpcli.models.pretrained import load_pretrained
from stpcli.models.registry import make_spec
from stpcli.models.surgery import first_layer_index, insert_units, with_units
from stpcli.restore import model_from_checkpoint, require_kind
from stpcli.run import DataOptions, Run, load_checkpoint_data
from stpcli.stages.saving import StageIO, child_record
from stpcli.stages.training import split_accuracy, train_and_finish


def check_train_ann(*, arch: str, width: float, image_size: int, dropout: float, train_ratio: float,
                    val_ratio: float, config: TrainConfig, pretrained: str | None = None):
    """train-ann's options, checked before the data is read (the stage, and a preset's plan);
    returns the model spec they make (for 2 classes: the class count comes with the data)."""
    config.check(training_required=True)
    spec = make_spec(arch, 2, image_size, width, dropout)
    check_split_ratios(train_ratio, val_ratio)
    if pretrained and not Path(pretrained).expanduser().is_file():
        raise StpError(f"--pretrained {pretrained} does not exist")
    return spec


def train_ann(run: Run, *, arch: str, width: float, image_size: int, dropout: float,
              data: DataOptions, train_ratio: float, val_ratio: float, config: TrainConfig,
              io: StageIO, pretrained: str | None = None) -> Checkpoint:
    """Na: the base ANN, trained on a stratified split (drawn from ``config.seed``) of the data."""
    run = run.named("train-ann")
    check_train_ann(arch=arch, width=width, image_size=image_size, dropout=dropout, train_ratio=train_ratio,
                    val_ratio=val_ratio, config=config, pretrained=pretrained)
    io.check(will_train=True, inputs=(Path(pretrained) if pretrained else None,))
    with run.progress("decoding images") as advance:
        dataset = load_dataset(data.location, image_size, data.on_bad_image, data.cache_dir, progress=advance)
    if dataset.skipped:
        run.say(f"skipped {len(dataset.skipped)} image(s) that do not decode")
    split = stratified_split(dataset.names, dataset.labels.tolist(), dataset.classes, train_ratio,
                             val_ratio, config.seed)
    split_parts = split_data(dataset, split)
    spec = make_spec(arch, len(dataset.classes), image_size, width, dropout)
    torch.manual_seed(config.seed)
    model = ANN(spec)
    if pretrained:
        loaded = load_pretrained(model, pretrained)
        run.say(f"loaded {loaded} tensors from {pretrained}")
    record = {
        "kind": "ann",
        "model": spec,
        "classes": dataset.classes,
        "input": {"image_size": image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "data": data_record(dataset),
        "split": split,
        "timesteps": None,
        "snn": None,
    }
    counts = {part: len(split["files"][part]) for part in ("train", "val", "test")}
    run.say(f"[train-ann] {arch} x{width} on {dataset.source['path']}: {len(dataset.classes)} classes, "
            f"{counts['train']} train / {counts['val']} val / {counts['test']} test images at {image_size}px")
    options = {"arch": arch, "width": width, "image-size": image_size, "dropout": dropout,
               "train-ratio": train_ratio, "val-ratio": val_ratio, "pretrained": pretrained,
               **config.recorded(), **data.recorded()}
    del options["allow-data-change"]  # train-ann defines the data a chain records
    return train_and_finish(run, model, split_parts, config, record, io,
                            resume_identity={"arch": arch, "width": width, "image_size": image_size, "dropout": dropout,
                                             "split_sha256": split["sha256"], "pretrained": pretrained},
                            metrics={}, options=options, parent=None)


def add_unit(run: Run, source: Checkpoint, *, unit_group: int, count: int, config: TrainConfig,
             data: DataOptions, io: StageIO) -> Checkpoint:
    """Nb = Add_Unit(AS, M, Na): identity-initialised Units, then fine-tuning for ``config.epochs``."""
    run = run.named("add-unit")
    config.check()
    require_kind(source, "add-unit", "ann")
    with_units(source.model_spec, unit_group, count)  # --as/--m checked before anything is read
    io.check(will_train=config.epochs > 0, inputs=(source.path,))
    base = model_from_checkpoint(source)
    torch.manual_seed(config.seed)
    model = insert_units(base, unit_group, count)
    spec = model.spec
    first = first_layer_index(model.plan, unit_group, count)
    record = child_record(source, kind="ann", model=spec)
    data_parts = load_checkpoint_data(run, source, data)
    before = split_accuracy(model, data_parts, "test", record, run.runtime)
    run.say(f"[add-unit] {count} Unit(s) in layer group {unit_group} (layers {first}..{first + count - 1}); "
            f"test accuracy before fine-tuning {before:.2f}%")
    return train_and_finish(run, model, data_parts, config, record, io,
                            resume_identity={"as": unit_group, "m": count, "parent": source.sha256},
                            metrics={"test_accuracy_before_training": before},
                            options={"as": unit_group, "m": count, **config.recorded(), **data.recorded()}, parent=source)
