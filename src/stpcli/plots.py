"""The figures stp draws (matplotlib, no display needed): training curves, confusion matrices,
spike rates per layer, accuracy against energy, and a study's accuracy against T.

Each function writes one figure atomically, in the format its path's suffix names (PNG, or the
vector formats PDF and SVG), and returns its path.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from stpcli.files import atomic_write_bytes  # noqa: E402

FORMATS = (".png", ".pdf", ".svg")


def _save(figure, path: Path) -> Path:
    path = Path(path)
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format=path.suffix.lower().lstrip(".") or "png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def training_curves(history: list[dict], title: str, path: Path) -> Path:
    """Loss, train/validation accuracy and learning rate per epoch (one row of the metrics CSV each)."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis, lr_axis) = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    if all("val_loss" in row for row in history):
        loss_axis.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    loss_axis.set(title="cross-entropy loss", xlabel="epoch", ylabel="loss")
    loss_axis.legend()
    accuracy_axis.plot(epochs, [row["train_acc"] for row in history], marker="o", label="train")
    accuracy_axis.plot(epochs, [row["val_acc"] for row in history], marker="o", label="validation")
    accuracy_axis.set(title="accuracy", xlabel="epoch", ylabel="accuracy (%)")
    accuracy_axis.legend()
    lr_axis.plot(epochs, [row["lr"] for row in history], marker="o", color="tab:gray")
    lr_axis.set(title="learning rate", xlabel="epoch", ylabel="learning rate")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for axis in (loss_axis, accuracy_axis, lr_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title)
    return _save(figure, path)


def confusion_matrix(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    """Rows: true class; columns: predicted; each row normalised to 100 % with counts written in."""
    size = len(classes)
    side = max(5.0, 0.45 * size + 2)
    figure, axis = plt.subplots(figsize=(side + 1.5, side))
    totals = [max(1, sum(row)) for row in matrix]
    shares = [[100.0 * value / total for value in row] for row, total in zip(matrix, totals)]
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=100)
    figure.colorbar(image, ax=axis, label="share of the true class (%)", fraction=0.046)
    axis.set_xticks(range(size), classes, rotation=60, ha="right", fontsize=8 if size > 12 else 10)
    axis.set_yticks(range(size), classes, fontsize=8 if size > 12 else 10)
    axis.set(xlabel="predicted class", ylabel="true class", title=title)
    if size <= 30:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value:
                    axis.text(j, i, str(value), ha="center", va="center", fontsize=7,
                              color="white" if shares[i][j] > 60 else "black")
    return _save(figure, path)


def spike_rates(rates: list[dict], title: str, path: Path) -> Path:
    """Spikes per neuron over the T steps, per spiking layer."""
    figure, axis = plt.subplots(figsize=(max(6.0, 0.45 * len(rates) + 2), 3.8))
    names = [row["layer"].removeprefix("layers.") for row in rates]
    axis.bar(range(len(rates)), [row["spikes_per_neuron"] for row in rates], color="tab:orange")
    axis.set_xticks(range(len(rates)), names, rotation=60, ha="right", fontsize=8)
    axis.set(xlabel="spiking layer", ylabel="spikes per neuron (sum over T)", title=title)
    axis.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def accuracy_vs_energy(rows: list[dict], title: str, path: Path) -> Path:
    """One point per checkpoint: energy per image (log scale) against test accuracy, labelled."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, str] = {}
    for row in rows:
        method = row.get("method", row["kind"])
        colour = colours.setdefault(method, f"C{len(colours)}")
        axis.scatter(row["energy_uj"], row["accuracy"], color=colour, s=40, label=method)
        label = os.path.basename(str(row["checkpoint"])).removesuffix(".safetensors")
        if row.get("timesteps"):
            label += f" (T={row['timesteps']})"
        axis.annotate(label, (row["energy_uj"], row["accuracy"]), textcoords="offset points", xytext=(5, 4),
                      fontsize=8)
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axis.legend(unique.values(), unique.keys(), fontsize=8)
    axis.set_xscale("log")
    axis.set(xlabel="energy per image (µJ, 45 nm model, log scale)", ylabel="test accuracy (%)", title=title)
    axis.grid(alpha=0.3, which="both")
    return _save(figure, path)


def accuracy_vs_timesteps(rows: list[dict], title: str, path: Path) -> Path:
    """A study's mean test accuracy per method and T, with the standard deviation over seeds as error bars."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    methods = sorted({row["method"] for row in rows if row.get("timesteps")})
    for index, method in enumerate(methods):
        points = sorted((row["timesteps"], row["mean"], row["std"] or 0.0) for row in rows
                        if row["method"] == method and row.get("timesteps"))
        offset = (index - (len(methods) - 1) / 2) * 0.06
        axis.errorbar([t + offset for t, _, _ in points], [m for _, m, _ in points],
                      yerr=[s for _, _, s in points], marker="o", capsize=4, label=method)
    for row in rows:
        if not row.get("timesteps"):
            axis.axhline(row["mean"], color="gray", linestyle="--", label=f"{row['method']} (mean)")
    axis.set_xscale("log", base=2)
    ticks = sorted({row["timesteps"] for row in rows if row.get("timesteps")})
    axis.set_xticks(ticks, [str(t) for t in ticks])
    axis.set(xlabel="time steps T", ylabel="test accuracy (%), mean ± std over seeds", title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)
