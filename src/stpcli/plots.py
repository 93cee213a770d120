"""The figures stp draws (matplotlib, no display needed): training curves, confusion matrices,
spike rates per layer, accuracy against energy, and a study's accuracy against T.

Each function writes one figure atomically, in the format its path's suffix names (PNG, or the
vector formats PDF and SVG), and returns its path.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator  # noqa: E402

from stpcli.files import atomic_write_bytes  # noqa: E402
from stpcli.names import stem  # noqa: E402


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
    """Loss, train/validation accuracy, learning rate and, for an SNN, the validation spike rate per
    epoch (one row of the metrics CSV each)."""
    epochs = [row["epoch"] for row in history]
    spiking = all("spike_rate" in row for row in history)
    figure, axes = plt.subplots(1, 4 if spiking else 3, figsize=(17 if spiking else 13, 3.8), layout="constrained")
    loss_axis, accuracy_axis, lr_axis = axes[:3]
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
    if spiking:
        axes[3].plot(epochs, [row["spike_rate"] for row in history], marker="o", color="tab:orange")
        axes[3].set(title="spikes per neuron (validation)", xlabel="epoch", ylabel="spikes per neuron over T")
        axes[3].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    for axis in axes:
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
    """Spikes per neuron over the T steps, per spiking layer, labelled by what the layer is."""
    figure, axis = plt.subplots(figsize=(max(6.0, 0.5 * len(rates) + 2), 4.2))
    names = [row.get("label") or row["layer"].removeprefix("layers.") for row in rates]
    axis.bar(range(len(rates)), [row["spikes_per_neuron"] for row in rates], color=METHOD_COLOURS["STP"])
    axis.set_xticks(range(len(rates)), names, rotation=60, ha="right", fontsize=8)
    axis.set(xlabel="spiking layer (plan index: layer)", ylabel="spikes per neuron (sum over T)", title=title)
    axis.grid(axis="y", alpha=0.3)
    return _save(figure, path)


# one colour per method in every figure (compare and the study plots)
METHOD_COLOURS = {"ANN": "#4d4d4d", "ANN with Units": "#9e9e9e", "TP": "#1f77b4", "STP (Units kept)": "#ff7f0e",
                  "STP": "#d62728"}


def _colour(method: str) -> str:
    base = method.split(" AS")[0]  # a study's "STP AS5 M1" is STP
    return METHOD_COLOURS.get(base, "#2ca02c")


def _plain_log_axis(axis) -> None:
    """A log axis with a few plain-number ticks (0.5, 1, 2, 5, ...) instead of 10^k and minor clutter."""
    axis.set_xscale("log")
    axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_locator(NullLocator())


def _spread_labels(axis, points: list[tuple[float, float, str]], colour_of, fontsize: float = 8) -> None:
    """Label each point, moving labels up (in typographic points) so that the labels of close
    points do not overlap; a thin line joins a moved label to its point."""
    figure = axis.figure
    figure.canvas.draw()
    to_points = 72.0 / figure.dpi
    height, char = 1.35 * fontsize, 0.6 * fontsize  # a label's line height and mean character width
    placed: list[tuple[float, float, float]] = []  # labels as (left, right, bottom), in points
    for x, y, text in sorted(points, key=lambda p: (p[1], p[0])):
        px, py = (v * to_points for v in axis.transData.transform((x, y)))
        left, right = px + 5, px + 5 + char * len(text)
        target = py + 3
        for _ in range(50):
            clash = [q for q in placed if q[0] < right and left < q[1] and abs(q[2] - target) < height]
            if not clash:
                break
            target = max(q[2] for q in clash) + height
        placed.append((left, right, target))
        offset = target - py
        axis.annotate(text, (x, y), textcoords="offset points", xytext=(5, offset), fontsize=fontsize,
                      color=colour_of(text), va="bottom",
                      arrowprops=dict(arrowstyle="-", color="#bbbbbb", lw=0.6, shrinkA=0, shrinkB=3)
                      if offset > height else None)


def accuracy_vs_energy(rows: list[dict], title: str, path: Path) -> Path:
    """Energy per image (log scale) against test accuracy: one labelled point per checkpoint,
    coloured by method; or, for a study's rows (which carry ``series``: method, Units and recipe),
    one line per series through its time steps, each point labelled with its T, with the standard
    deviations over seeds as error bars and the series in a legend beside the axes."""
    study = any("series" in row for row in rows)
    figure, axis = plt.subplots(figsize=(9.5 if study else 7.5, 4.8))
    labels: list[tuple[float, float, str]] = []
    colour_of_label: dict[str, str] = {}
    if study:
        for series, style in series_styles(rows).items():
            points = sorted((row for row in rows if row["series"] == series), key=lambda row: row["energy_uj"])
            axis.errorbar([row["energy_uj"] for row in points], [row["accuracy"] for row in points],
                          xerr=[row.get("energy_std") or 0.0 for row in points],
                          yerr=[row.get("accuracy_std") or 0.0 for row in points], capsize=2, ms=5, lw=1.2,
                          elinewidth=0.7, alpha=0.9, label=series, **style)
        for timesteps in sorted({row["timesteps"] for row in rows if row.get("timesteps")}):  # one label per T,
            group = [row for row in rows if row.get("timesteps") == timesteps]  # above its highest error bar
            top = max(group, key=lambda row: row["accuracy"] + (row.get("accuracy_std") or 0.0))
            axis.annotate(f"T={timesteps}", (sorted(row["energy_uj"] for row in group)[len(group) // 2],
                                              top["accuracy"] + (top.get("accuracy_std") or 0.0)),
                          textcoords="offset points", xytext=(0, 4), ha="center", fontsize=9, color="#333333")
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        for row in rows:
            method = row.get("method") or row["kind"]
            colour = _colour(method)
            axis.errorbar(row["energy_uj"], row["accuracy"], fmt="o", color=colour, ms=6, capsize=3, label=method)
            label = stem(row["checkpoint"])
            if row.get("timesteps"):
                label += f" (T={row['timesteps']})"
            labels.append((row["energy_uj"], row["accuracy"], label))
            colour_of_label[label] = colour
        handles, names = axis.get_legend_handles_labels()
        unique = dict(zip(names, handles))
        axis.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    _plain_log_axis(axis)
    axis.set(xlabel="energy per image (µJ, 45 nm model, log scale)", ylabel="test accuracy (%)", title=title)
    axis.grid(alpha=0.3)
    axis.margins(x=0.15, y=0.12)
    _accuracy_span(axis, [row["accuracy"] for row in rows])
    _spread_labels(axis, labels, lambda text: colour_of_label.get(text, "#555555"))
    return _save(figure, path)


METHOD_MARKERS = {"ANN": "D", "TP": "o", "STP (Units kept)": "^", "STP": "s"}
RECIPE_LINES = {"reference": "--"}  # the stp recipe (or none recorded) draws solid lines


def series_styles(rows: list[dict]) -> dict[str, dict]:
    """How each series of a study's rows is drawn (``series``, ``method``, ``units``, ``recipe``):
    its method's colour, or with several Unit settings one colour per setting and a marker per
    method; a dashed line for the reference recipe."""
    settings = sorted({row.get("units") or "" for row in rows} - {""})
    palette = [plt.get_cmap("tab10")(i) for i in range(10)]
    styles: dict[str, dict] = {}
    for row in rows:
        several = len(settings) > 1 and bool(row.get("units"))
        styles.setdefault(row["series"], {
            "color": palette[settings.index(row["units"]) % len(palette)] if several else _colour(row["method"]),
            "marker": METHOD_MARKERS.get(row["method"], "o") if several else "o",
            "linestyle": RECIPE_LINES.get(row.get("recipe") or "", "-")})
    return styles


MIN_ACCURACY_SPAN = 20.0  # points of accuracy an axis shows at least: a 2-point gap stays a small gap


def _accuracy_span(axis, accuracies: list[float]) -> None:
    """The accuracy axis over at least ``MIN_ACCURACY_SPAN`` points (within 0..100), so that close
    accuracies are not magnified into large differences."""
    low, high = axis.get_ylim()
    missing = MIN_ACCURACY_SPAN - (high - low)
    if missing > 0:
        low, high = low - missing / 2, high + missing / 2
        if low < 0:
            low, high = 0.0, high - low
        if high > 100:
            low, high = max(0.0, low - (high - 100)), 100.0
    axis.set_ylim(low, high)


def accuracy_vs_timesteps(rows: list[dict], title: str, path: Path) -> Path:
    """A study's mean test accuracy per series (``series``: method, Units and recipe) and T, with
    the standard deviation over seeds as error bars; the ANN as a horizontal line."""
    figure, axis = plt.subplots(figsize=(9, 4.5))
    spiking = [row for row in rows if row.get("timesteps")]
    styles = series_styles(spiking)
    for index, (series, style) in enumerate(styles.items()):
        points = sorted((row["timesteps"], row["mean"], row["std"] or 0.0) for row in spiking if row["series"] == series)
        shift = 2 ** ((index - (len(styles) - 1) / 2) * 0.04)  # side by side, so that error bars do not hide each other
        axis.errorbar([t * shift for t, _, _ in points], [m for _, m, _ in points], yerr=[s for _, _, s in points],
                      capsize=3, elinewidth=0.7, label=series, **style)
    for row in rows:
        if not row.get("timesteps"):
            axis.axhline(row["mean"], color=_colour(row["method"]), linestyle=":", label=f"{row['series']} (mean)")
    axis.set_xscale("log", base=2)
    ticks = sorted({row["timesteps"] for row in spiking})
    axis.set_xticks(ticks, [str(t) for t in ticks])
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set(xlabel="time steps T", ylabel="test accuracy (%), mean ± std over seeds", title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(figure, path)
