"""Stratified train/val/test split, deterministic in (names, ratios, seed).

The split is recorded in every checkpoint as the three lists of file names, so
later stages reuse exactly the same images, whatever folder or pack the data
is read from.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import torch

from stpcli.errors import StpError
from stpcli.files import readable_file

PARTS = ("train", "val", "test")


def stratified_split(names: list[str], labels: list[int], classes: list[str],
                     train_ratio: float, val_ratio: float, seed: int) -> dict:
    check_split_ratios(train_ratio, val_ratio)
    by_class: dict[int, list[str]] = {}
    for name, label in zip(names, labels):
        by_class.setdefault(int(label), []).append(name)
    generator = torch.Generator().manual_seed(seed)
    files: dict[str, list[str]] = {part: [] for part in PARTS}
    for label in range(len(classes)):
        members = sorted(by_class.get(label, []))
        if len(members) < 2:
            raise StpError(f"class {classes[label]} has {len(members)} image(s); a split needs at least 2")
        order = torch.randperm(len(members), generator=generator).tolist()
        shuffled = [members[i] for i in order]
        n_train = min(max(round(train_ratio * len(members)), 1), len(members) - 1)
        n_val = validation_count(n_train, val_ratio)
        files["val"] += shuffled[:n_val]
        files["train"] += shuffled[n_val:n_train]
        files["test"] += shuffled[n_train:]
    for part in PARTS:
        files[part].sort()
    return {
        "train_ratio": train_ratio,
        "val_ratio": val_ratio,
        "seed": seed,
        "files": files,
        "sha256": split_hash(files),
    }


def validation_count(n_train: int, val_ratio: float) -> int:
    """How many of a class's ``n_train`` training images its validation part takes: at least one
    (and one fewer than all) when ``val_ratio`` > 0."""
    n_val = round(val_ratio * n_train) if n_train >= 2 else 0
    if val_ratio > 0 and n_train >= 2:
        n_val = min(max(n_val, 1), n_train - 1)
    return n_val


def carve_validation(train: list[str], label_of: dict[str, int], val_ratio: float, seed: int) -> tuple[list[str], list[str]]:
    """A stratified validation part carved from a training list (split lists without a val list),
    seeded: (train, val)."""
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[str]] = {}
    for name in sorted(train):
        by_class.setdefault(label_of[name], []).append(name)
    kept, val = [], []
    for label in sorted(by_class):
        members = by_class[label]
        shuffled = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        n_val = validation_count(len(members), val_ratio)
        val += shuffled[:n_val]
        kept += shuffled[n_val:]
    return sorted(kept), sorted(val)


def check_split_ratios(train_ratio: float, val_ratio: float) -> None:
    if not 0.0 < train_ratio < 1.0:
        raise StpError(f"--train-ratio must lie in (0, 1), got {train_ratio}")
    if not 0.0 <= val_ratio < 1.0:
        raise StpError(f"--val-ratio must lie in [0, 1), got {val_ratio}")


def split_hash(files: dict) -> str:
    return hashlib.sha256(json.dumps({p: files[p] for p in PARTS}, sort_keys=True).encode()).hexdigest()


def check_split(split: dict) -> None:
    """Refuse a recorded split that is corrupt or puts training images into the test set."""
    files = split.get("files")
    if not isinstance(files, dict) or any(not isinstance(files.get(p), list) for p in PARTS):
        raise StpError("the recorded data split is corrupt (missing file lists)")
    if split.get("sha256") != split_hash(files):
        raise StpError("the recorded data split does not match its hash; the checkpoint was edited or corrupted")
    train, val, test = (set(files[p]) for p in PARTS)
    overlap = (train | val) & test
    if overlap:
        raise StpError(f"the recorded split puts {len(overlap)} training image(s) into the test set, e.g. {sorted(overlap)[0]}")
    if train & val:
        raise StpError("the recorded split shares images between train and val")


# Split lists: the text format TorchGeo ships for UC Merced, EuroSAT and RESISC45 (uc_merced-train.txt,
# uc_merced-val.txt, uc_merced-test.txt): one image per line, one file per part.

def list_files(train_list: Path) -> dict[str, Path]:
    """The three lists of a split named by its training list: 'train' in the file name replaced by
    'val' and 'test' (uc_merced-train.txt -> uc_merced-val.txt, uc_merced-test.txt)."""
    name = train_list.name
    at = name.rfind("train")
    if at < 0:
        raise StpError(f"--split-file {train_list}: name the training list, whose file name contains 'train' "
                       "(e.g. uc_merced-train.txt); its val and test lists lie beside it")
    return {part: train_list.with_name(name[:at] + part + name[at + len("train"):]) for part in PARTS}


MAX_SPLIT_LIST = 64 << 20  # bytes: a million image paths, and a bound on the work before any training


def _read_lines(path: Path) -> list[tuple[int, str]]:
    readable_file(path, "split list", MAX_SPLIT_LIST)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise StpError(f"split list {path} is not UTF-8 text") from None
    except OSError as exc:
        raise StpError(f"cannot read split list {path}: {exc.strerror or exc}") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip().replace("\\", "/")
        if entry and not entry.startswith("#"):
            entries.append((number, entry[2:] if entry.startswith("./") else entry))
    return entries


def _entry_keys(name: str) -> tuple[str, str, str, str]:
    """How a list may name the image ``class/file.ext``: the relative path, without its extension,
    the file name, and the file name without extension (a list written for .tif originals also
    names their .jpg or .png copies)."""
    base = name.rsplit("/", 1)[-1]
    return name, name.rsplit(".", 1)[0] if "." in base else name, base, base.rsplit(".", 1)[0]


def read_split_lists(train_list: Path, names: list[str], labels: list[int], classes: list[str],
                     skipped: list[str] | None = None, val_ratio: float = 0.1, seed: int = 0) -> dict:
    """The split a set of lists names, as a recorded split. Each line names one image of the
    dataset, by relative path or (as TorchGeo's lists do) by file name, with or without extension;
    an entry that names no image, or more than one, or an image listed twice, is an error naming
    the list and line. Images in no list are not used, nor listed ones that ``skipped`` names
    (--on-bad-image skip: files that do not decode). Without a val list, a validation part is carved
    from the training list (``val_ratio`` of each class, seeded), so that model selection never
    sees the test list."""
    paths = list_files(train_list.expanduser())
    for part in PARTS:
        if paths[part].exists() and not paths[part].is_file():
            raise StpError(f"--split-file: the {part} list {paths[part]} is not a regular file")
    for part in ("train", "test"):
        if not paths[part].is_file():
            raise StpError(f"--split-file: the {part} list {paths[part]} does not exist")
    lookup: list[dict[str, list[str]]] = [{}, {}, {}, {}]
    for name in names:
        for table, key in zip(lookup, _entry_keys(name)):
            table.setdefault(key, []).append(name)
    dropped = {key for name in skipped or () for key in _entry_keys(name)}
    files: dict[str, list[str]] = {part: [] for part in PARTS}
    where: dict[str, str] = {}
    digest = hashlib.sha256()
    for part in PARTS:
        path = paths[part]
        if part == "val" and not path.is_file():
            continue  # no validation list: carved from the training list below
        digest.update(f"{part}\0".encode() + path.read_bytes())
        for number, entry in _read_lines(path):
            stem = entry.rsplit(".", 1)[0] if "." in entry.rsplit("/", 1)[-1] else entry
            tries = [(table, entry) for table in lookup] + [(lookup[1], stem), (lookup[3], stem)]
            found = next((table[key] for table, key in tries if key in table), None)
            if found is None and (entry in dropped or stem in dropped):
                continue  # skipped as undecodable, as the user asked
            if found is None:
                raise StpError(f"{path}:{number}: {entry!r} is not an image of the dataset")
            if len(found) > 1:
                raise StpError(f"{path}:{number}: {entry!r} names {len(found)} images ({found[0]}, {found[1]}); "
                               "write class/file")
            name = found[0]
            if name in where:
                raise StpError(f"{path}:{number}: {name} is listed twice (also {where[name]})")
            where[name] = f"{path.name}:{number}"
            files[part].append(name)
    if not files["test"]:
        raise StpError(f"--split-file: the test list {paths['test']} names no image")
    label_of = dict(zip(names, labels))
    carved = not paths["val"].is_file()
    if carved:
        files["train"], files["val"] = carve_validation(files["train"], label_of, val_ratio, seed)
    trained = {label_of[name] for name in files["train"]}
    missing = [classes[label] for label in range(len(classes)) if label not in trained]
    if missing:
        raise StpError(f"--split-file: the train list {paths['train']} has no image of class {missing[0]}"
                       + (f" (nor of {len(missing) - 1} other(s))" if len(missing) > 1 else ""))
    for part in PARTS:
        files[part].sort()
    lists = {part: str(paths[part].resolve()) if paths[part].is_file() else None for part in PARTS}
    carving = {"val_ratio": val_ratio, "seed": seed} if carved else {}
    return {**carving, "lists": lists | {"sha256": digest.hexdigest()}, "files": files, "sha256": split_hash(files)}


def split_list_lines(split: dict, part: str, basenames: bool) -> list[str]:
    """One part of a recorded split as the lines of its list: relative paths, or file names
    (TorchGeo's spelling, refused when two images share a file name)."""
    names = split["files"][part]
    if not basenames:
        return list(names)
    every = [n for p in PARTS for n in split["files"][p]]
    twice = sorted(b for b, n in Counter(n.rsplit("/", 1)[-1] for n in every).items() if n > 1)
    if twice:
        twice = twice[0]
        raise StpError(f"--basenames: two images are named {twice}; write relative paths (the default)")
    return [n.rsplit("/", 1)[-1] for n in names]
