"""The ANN stages: ``train-ann`` (Na) and ``add-unit`` (Step 1: Nb)."""

from __future__ import annotations

from pathlib import Path

import torch

from stpcli.checkpoint import Checkpoint, read_record
from stpcli.data.bands import band_statistics
from stpcli.data.source import IMAGENET_MEAN, IMAGENET_STD, data_record, load_dataset, split_data
from stpcli.data.split import list_files, read_split_lists, stratified_split
from stpcli.errors import StpError
from stpcli.models.ann import ANN
from stpcli.models.pretrained import load_pretrained
from stpcli.models.registry import make_spec
from stpcli.models.surgery import first_layer_index, insert_units, with_units
from stpcli.options import AddUnitOptions, DataOptions, TrainAnnOptions
from stpcli.restore import model_from_checkpoint, require_kind
from stpcli.run import Run, load_checkpoint_data
from stpcli.stages.saving import StageIO, child_record
from stpcli.stages.training import split_accuracy, train_and_finish


def train_ann(run: Run, options: TrainAnnOptions | None = None, *, data: DataOptions | None = None,
              io: StageIO) -> Checkpoint:
    """Na: the base ANN, trained on a stratified split (drawn from ``options.seed``) of the data.

    ``options.bands`` ("4,3,2" or band names) reads the files' bands instead of 8-bit RGB;
    ``normalisation`` (``auto``: ImageNet's for 8-bit RGB without ``scale``, the training split's
    per-band statistics otherwise) and ``scale`` (a fixed factor applied first, e.g. 1e-4 for
    Sentinel-2 reflectance) say how. ``split_file`` (a training list such as uc_merced-train.txt,
    beside its val and test lists) gives a published split instead of the seeded one (the ratios are
    then not used). ``known`` (``catalogue.KNOWN_DATASETS``: ucm21, eurosat-ms, ...) compares the data
    with the published set, says what differs and names the bands its files leave unnamed."""
    options, data = options or TrainAnnOptions(), data or DataOptions()
    run = run.named("train-ann")
    options.check()
    config = options.train_config()
    recorded = {**options.recorded(), **data.recorded()}
    del recorded["allow-data-change"]  # train-ann defines the data a chain records
    if io.if_changed and data.location is None:
        _refuse_dropping_data(io.out)
    existing = io.current(run, None, recorded)
    if existing is not None:
        return existing
    io.check(will_train=True, inputs=(Path(options.pretrained) if options.pretrained else None,
                                     *(list_files(Path(options.split_file)).values() if options.split_file else ())))
    with run.progress("decoding images") as advance:
        dataset = load_dataset(data.location, options.image_size, data.on_bad_image, data.cache_dir,
                               progress=advance, bands=options.bands, normalisation=options.normalisation, known=options.known)
    if dataset.check is not None:
        run.say(f"[train-ann] {dataset.check.summary}")
        for difference in dataset.check.differences:
            run.say(f"  {difference}")
    if dataset.skipped:
        run.say(f"skipped {len(dataset.skipped)} image(s) that do not decode")
    if options.split_file is not None:
        split = read_split_lists(Path(options.split_file), dataset.names, dataset.labels.tolist(), dataset.classes,
                                 dataset.skipped, options.val_ratio, config.seed)
        unused = len(dataset.names) - sum(len(files) for files in split["files"].values())
        carved = (f"; no val list beside it, so {len(split['files']['val'])} validation image(s) were carved from "
                  f"the training list (--val-ratio {options.val_ratio}, seed {config.seed})" if "val_ratio" in split else "")
        left_out = f"; {unused} image(s) of the data are in no list and not used" if unused else ""
        run.say(f"split read from {options.split_file} and its lists" + carved + left_out)
    else:
        split = stratified_split(dataset.names, dataset.labels.tolist(), dataset.classes, options.train_ratio,
                                 options.val_ratio, config.seed)
    split_parts = split_data(dataset, split)
    spec = make_spec(options.arch, len(dataset.classes), options.image_size, options.width, options.dropout,
                     in_channels=dataset.images.shape[1], pool=options.pool)
    torch.manual_seed(config.seed)
    model = ANN(spec)
    if options.pretrained:
        loaded = load_pretrained(model, options.pretrained)
        run.say(f"loaded {loaded} tensors from {options.pretrained}")
    record = {
        "kind": "ann",
        "model": spec,
        "classes": dataset.classes,
        "input": input_record(dataset, split_parts, options.image_size, options.normalisation, options.scale),
        "data": data_record(dataset),
        "split": split,
        "timesteps": None,
        "snn": None,
    }
    counts = {part: len(split["files"][part]) for part in ("train", "val", "test")}
    run.say(f"[train-ann] {options.arch} x{options.width} on {dataset.source['path']}: {len(dataset.classes)} classes, "
            f"{counts['train']} train / {counts['val']} val / {counts['test']} test images at {options.image_size}px")
    return train_and_finish(run, model, split_parts, config, record, io,
                            resume_identity={"split_sha256": split["sha256"], **options.stage_recorded()},
                            metrics={}, options=recorded, parent=None)


def _refuse_dropping_data(out: Path) -> None:
    """A rerun without --data of an ANN trained on other data would retrain it on the embedded
    dataset: far more likely a forgotten option than a wish, and hours of work lost."""
    try:
        recorded = read_record(out)["history"][0]["options"].get("data")
    except (StpError, KeyError, IndexError, TypeError):
        return
    if recorded is not None:
        raise StpError(f"{out} was trained on --data {recorded}; pass that --data to keep it, or --force to "
                       "retrain it on the embedded dataset")


def input_record(dataset, parts, image_size: int, normalisation: str, scale: float | None) -> dict:
    """The record's ``input``: how stored images become the network's input, with the per-band
    statistics computed on the training split only (never validation or test images)."""
    count = dataset.images.shape[1]
    divisor = 1.0 / scale if scale is not None else (255.0 if dataset.images.dtype == torch.uint8 else 1.0)
    if normalisation == "auto":  # ImageNet's statistics hold for 8-bit RGB read as x / 255, nothing else
        normalisation = "imagenet" if dataset.decoding.mode == "rgb8" and scale is None else "dataset"
    if normalisation in ("imagenet", "stretch"):
        if count != 3:
            raise StpError(f"--normalise {normalisation} needs 3 bands (RGB); the data has {count}: use "
                           "--normalise dataset, or --bands to choose 3")
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    elif normalisation == "dataset":
        mean, std = band_statistics(parts.part("train")[0], divisor)
    else:
        mean, std = [0.0] * count, [1.0] * count
    record: dict = {"image_size": image_size, "mean": mean, "std": std, "divisor": divisor,
                    "normalisation": normalisation, "decoding": dataset.decoding.mode}
    if dataset.decoding.mode == "bands":
        record["bands"] = list(dataset.decoding.bands or range(1, count + 1))
        if dataset.band_names:
            record["band_names"] = list(dataset.band_names)
    return record


def add_unit(run: Run, source: Checkpoint, options: AddUnitOptions | None = None, *, data: DataOptions | None = None,
             io: StageIO) -> Checkpoint:
    """Nb = Add_Unit(AS, M, Na): identity-initialised Units, then fine-tuning for ``options.epochs``."""
    options, data = options or AddUnitOptions(), data or DataOptions()
    run = run.named("add-unit")
    options.check()
    config, unit_group, count = options.train_config(), options.unit_group, options.count
    require_kind(source, "add-unit", "ann")
    with_units(source.model_spec, unit_group, count)  # --as/--m checked before anything is read
    recorded = {**options.recorded(), **data.recorded()}
    existing = io.current(run, source, recorded)
    if existing is not None:
        return existing
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
                            resume_identity={"parent": source.sha256, **options.stage_recorded()},
                            metrics={"test_accuracy_before_training": before},
                            options=recorded, parent=source)
