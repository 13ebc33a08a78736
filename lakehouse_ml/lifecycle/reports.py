"""Pictures and tables for model evaluations: PNG plots (matplotlib, Agg) and Markdown.

Every file is written atomically (a temporary file in the same folder, then a rename), so a
crash never leaves a half-written plot behind a link in the Dagster UI.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from lakehouse_ml.core.atomic import write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_atomically(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename; return ``path``."""
    return write_bytes(path, data)


def _note(figure, note: str) -> None:
    """A small grey line under the plot saying where its numbers come from."""
    if note:
        figure.text(0.5, -0.01, textwrap.fill(note, 80), ha="center", va="top", fontsize=7, color="#555555")


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return write_atomically(path, buffer.getvalue())


def roc_curve_png(roc: pd.DataFrame, roc_auc: float | None, path: Path, title: str, note: str = "") -> Path:
    """The ROC curve (recall against false positive rate) with the chance diagonal."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5, 5))
    points = roc.sort_values(["false_positive_rate", "recall"])
    x = np.r_[0.0, points["false_positive_rate"].to_numpy(float), 1.0]
    y = np.r_[0.0, points["recall"].to_numpy(float), 1.0]
    label = f"ROC AUC {roc_auc:.3f}" if roc_auc is not None else "ROC"
    axes.plot(x, y, color="#1f77b4", linewidth=2, label=label)
    axes.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="chance")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="recall (true positive rate)")
    axes.set_title(title)
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    _note(figure, note)
    return _save(figure, path)


def confusion_matrix_png(matrix: pd.DataFrame, path: Path, title: str, note: str = "") -> Path:
    """Counts of expected (rows) against predicted (columns) labels, as a heat map."""
    plt = _pyplot()
    values = matrix.to_numpy(dtype=float)
    figure, axes = plt.subplots(figsize=(4.5, 4))
    image = axes.imshow(values, cmap="Blues")
    axes.set_xticks(range(len(matrix.columns)), [_label(c) for c in matrix.columns])
    axes.set_yticks(range(len(matrix.index)), [_label(i) for i in matrix.index])
    axes.set(xlabel="predicted label", ylabel="expected label")
    axes.set_title(title)
    top = values.max() if values.size else 0
    for (i, j), count in np.ndenumerate(values):
        axes.text(
            j, i, f"{int(count):,}", ha="center", va="center", color="white" if count > top / 2 else "black"
        )
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    _note(figure, note)
    return _save(figure, path)


def _label(value: object) -> str:
    """A class label as BigQuery prints it (BOOL as true/false, whatever the source's spelling)."""
    text = str(value)
    return text.lower() if text.lower() in ("true", "false") else text


def cluster_sizes_png(sizes: pd.DataFrame, path: Path, title: str, note: str = "") -> Path:
    """Rows per centroid as bars; anomalies (when given) stacked in a second colour."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.5))
    ids = [str(i) for i in sizes["centroid_id"]]
    rows = sizes["row_count"].to_numpy(float)
    if "anomalies" in sizes:
        anomalies = sizes["anomalies"].to_numpy(float)
        axes.bar(ids, rows - anomalies, color="#1f77b4", label="normal")
        axes.bar(ids, anomalies, bottom=rows - anomalies, color="#d62728", label="anomalies")
        axes.legend()
    else:
        axes.bar(ids, rows, color="#1f77b4")
    for k, value in enumerate(rows):
        axes.text(k, value, f"{int(value):,}", ha="center", va="bottom", fontsize=8)
    axes.set(xlabel="centroid (CENTROID_ID)", ylabel="rows")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    _note(figure, note)
    return _save(figure, path)


def metrics_markdown(metrics: Mapping[str, float | None]) -> str:
    """A Markdown table of metric names and values."""
    lines = ["| metric | value |", "| --- | --- |"]
    for name, value in metrics.items():
        shown = "NaN" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines)
