"""Stratified train/val/test split, deterministic in (names, ratios, seed).

The split is recorded in every checkpoint as the three lists of file names, so
later stages reuse exactly the same images, whatever folder or pack the data
is read from.
"""

from __future__ import annotations

import hashlib
import json

import torch

from stpcli.errors import StpError

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
        n_val = round(val_ratio * n_train) if n_train >= 2 else 0
        if val_ratio > 0 and n_train >= 2:
            n_val = min(max(n_val, 1), n_train - 1)
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
