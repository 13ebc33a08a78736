"""The model monitoring report: a Markdown drift table and one self-contained HTML file.

Pure functions, no Dagster: the monitoring asset computes the numbers (``ML.VALIDATE_DATA_DRIFT``
rows, histograms, prediction drift, performance over windows) and calls these to present them.

* :func:`markdown_table` — the drift rows as a Markdown table (asset metadata), worst first.
* :func:`write_html_report` — ONE HTML file with every plot embedded as a base64 PNG data URI
  (no external asset: it can be mailed, archived, opened offline), written atomically
  (temporary file + rename, :mod:`lakehouse_ml.core.atomic`). Every picture and the whole page are
  rendered in memory first, so an error while rendering leaves any previous report untouched.

Statuses of a drift row (``value`` against its ``threshold``; ``warn_fraction`` e.g. 0.8):

* ``DRIFT`` — ``is_anomaly`` is true (BigQuery's verdict; when the column is missing or NULL,
  ``value > threshold``, as ``ML.VALIDATE_DATA_DRIFT`` decides it);
* ``WARN`` — not drifted but ``value >= warn_fraction * threshold`` (near the threshold; exactly
  at the mark counts, floating-point rounding aside);
* ``PASS`` — below that;
* ``N/A`` — no value (a feature without data in one of the two windows).

Plots use matplotlib's Agg canvas directly (``matplotlib.figure.Figure``, no pyplot state, so
reports can render in parallel threads) and the Okabe-Ito colour-blind-safe palette; drifted bars
are also hatched so the status does not rest on colour alone.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from lakehouse_ml.core.atomic import write_bytes

DRIFT_COLUMNS = ("input", "metric", "threshold", "value", "is_anomaly")
PASS, WARN, DRIFT, NA = "PASS", "WARN", "DRIFT", "N/A"
_SEVERITY = {NA: 0, PASS: 1, WARN: 2, DRIFT: 3}

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
BLUE, ORANGE, VERMILLION, SKY, GREEN, GREY = "#0072B2", "#E69F00", "#D55E00", "#56B4E9", "#009E73", "#7F7F7F"
STATUS_COLOURS = {PASS: BLUE, WARN: ORANGE, DRIFT: VERMILLION, NA: GREY}
METRIC_NAMES = {"JENSEN_SHANNON_DIVERGENCE": "Jensen-Shannon divergence", "L_INFTY": "L-infinity distance"}

# Histograms drawn: every drifted feature up to this many (the table lists them all).
MAX_HISTOGRAMS = 12


# -- inputs ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureHistogram:
    """The base (training) and study (serving) distribution of one feature, bucket by bucket.

    ``labels`` name the buckets (categories, or intervals of a numerical feature); ``base`` and
    ``study`` are relative frequencies aligned with them. Build numerical ones from bucket edges
    with :meth:`numerical`, categorical ones with :meth:`categorical`, or anything shaped like
    ``{"kind", "edges"|"categories", "base", "study"}`` with :meth:`coerce`.
    """

    feature: str
    kind: Literal["numerical", "categorical"]
    labels: tuple[str, ...]
    base: tuple[float, ...]
    study: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind not in ("numerical", "categorical"):
            raise ValueError(
                f"Histogram of {self.feature!r}: kind must be 'numerical' or 'categorical', not {self.kind!r}."
            )
        labels = tuple(str(label) for label in self.labels)
        base = tuple(_frequency(v) for v in self.base)
        study = tuple(_frequency(v) for v in self.study)
        if not (len(labels) == len(base) == len(study)):
            raise ValueError(
                f"Histogram of {self.feature!r}: labels, base and study must have equal lengths; "
                f"got {len(labels)}, {len(base)} and {len(study)}."
            )
        object.__setattr__(self, "feature", str(self.feature))
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "study", study)

    @classmethod
    def numerical(
        cls, feature: str, edges: Sequence[float], base: Sequence[float], study: Sequence[float]
    ) -> "FeatureHistogram":
        """Buckets from ``edges``: ``n + 1`` edges bound ``n`` buckets; ``n - 1`` edges split the
        line into ``n`` buckets with open ends (``< e0``, ..., ``>= e_last``); ``n`` edges are the
        buckets' lower bounds (the last one open)."""
        edges = [float(e) for e in edges]
        n = len(base)
        if len(edges) == n + 1:
            labels = [f"[{_num(a)}, {_num(b)})" for a, b in zip(edges[:-1], edges[1:])]
        elif len(edges) == n - 1:
            labels = [f"< {_num(edges[0])}"] if n else []
            labels += [f"[{_num(a)}, {_num(b)})" for a, b in zip(edges[:-1], edges[1:])]
            labels += [f"\u2265 {_num(edges[-1])}"] if edges else []
        elif len(edges) == n:
            labels = [f"[{_num(a)}, {_num(b)})" for a, b in zip(edges[:-1], edges[1:])]
            labels += [f"\u2265 {_num(edges[-1])}"] if edges else []
        else:
            raise ValueError(
                f"Histogram of {feature!r}: {len(edges)} edges do not bound {n} buckets "
                "(give n + 1 edges, n - 1 inner edges, or n lower bounds)."
            )
        if n == 1 and len(edges) == 0:
            labels = ["all"]
        return cls(feature, "numerical", tuple(labels), tuple(base), tuple(study))

    @classmethod
    def categorical(
        cls, feature: str, categories: Sequence[Any], base: Sequence[float], study: Sequence[float]
    ) -> "FeatureHistogram":
        labels = tuple("NULL" if _missing(c) else str(c) for c in categories)
        return cls(feature, "categorical", labels, tuple(base), tuple(study))

    @classmethod
    def coerce(cls, feature: str, value: Any) -> "FeatureHistogram":
        """A FeatureHistogram from itself, a mapping or an object with ``kind``, ``base``,
        ``study`` and bucket names: ``labels`` when given (e.g. the drift module's
        ``FeatureDistribution``, whose numerical buckets include special ones beyond its
        ``edges``), else ``edges`` (numerical) or ``categories`` (categorical)."""
        if isinstance(value, FeatureHistogram):
            return value

        def get(name: str, default: Any = None) -> Any:
            if isinstance(value, Mapping):
                return value.get(name, default)
            return getattr(value, name, default)

        kind = get("kind")
        base, study = get("base"), get("study")
        if base is None or study is None:
            raise ValueError(f"Histogram of {feature!r} needs 'base' and 'study' frequencies.")
        if get("labels") is not None:
            return cls(feature, kind, tuple(get("labels")), tuple(base), tuple(study))
        if kind == "numerical" and get("edges") is not None:
            return cls.numerical(feature, list(get("edges")), list(base), list(study))
        if kind == "categorical" and get("categories") is not None:
            return cls.categorical(feature, list(get("categories")), list(base), list(study))
        raise ValueError(
            f"Histogram of {feature!r}: give kind 'numerical' with 'edges' or kind 'categorical' with "
            f"'categories' (got kind {kind!r})."
        )


def _frequency(value: Any) -> float:
    number = float(value)
    return 0.0 if math.isnan(number) else number


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _num(value: float) -> str:
    if math.isinf(value):
        return "\u221e" if value > 0 else "-\u221e"
    return f"{value:.4g}"


# -- statuses and the table --------------------------------------------------------------------


def drift_status(value: Any, threshold: Any, is_anomaly: Any = None, warn_fraction: float = 0.8) -> str:
    """PASS, WARN, DRIFT or N/A for one drift row (see the module docstring)."""
    value = None if _missing(value) else float(value)
    threshold = None if _missing(threshold) else float(threshold)
    if not _missing(is_anomaly) and bool(is_anomaly):
        return DRIFT
    if value is None:
        return NA
    if threshold is None:
        return PASS if _missing(is_anomaly) else (DRIFT if bool(is_anomaly) else PASS)
    if _missing(is_anomaly) and value > threshold:
        return DRIFT
    if value >= warn_fraction * threshold - 1e-12 * max(1.0, abs(threshold)):  # at the mark, despite rounding
        return WARN
    return PASS


def _ratio(value: Any, threshold: Any) -> float:
    if _missing(value):
        return float("nan")
    value = float(value)
    if _missing(threshold):
        return float("nan")
    threshold = float(threshold)
    if threshold > 0:
        return value / threshold
    return float("inf") if value > 0 else 0.0


def drift_rows(drift: pd.DataFrame | None, warn_fraction: float = 0.8) -> pd.DataFrame:
    """The drift rows with ``ratio`` (value / threshold) and ``status``, worst first (ratio
    descending, rows without a value last, then by feature name)."""
    _check_warn_fraction(warn_fraction)
    columns = [*DRIFT_COLUMNS, "ratio", "status"]
    if drift is None or len(drift) == 0:
        return pd.DataFrame(columns=columns)
    missing = [c for c in ("input", "metric", "threshold", "value") if c not in drift.columns]
    if missing:
        raise ValueError(
            f"The drift table lacks column(s) {', '.join(missing)}; expected ML.VALIDATE_DATA_DRIFT's "
            f"columns {', '.join(DRIFT_COLUMNS)}."
        )
    rows = drift.reset_index(drop=True).copy()
    if "is_anomaly" not in rows.columns:
        rows["is_anomaly"] = None
    rows["ratio"] = [_ratio(v, t) for v, t in zip(rows["value"], rows["threshold"])]
    rows["status"] = [
        drift_status(v, t, a, warn_fraction)
        for v, t, a in zip(rows["value"], rows["threshold"], rows["is_anomaly"])
    ]
    rows["_severity"] = rows["status"].map(_SEVERITY)
    rows["_key"] = rows["ratio"].fillna(-1.0)
    rows = rows.sort_values(
        ["_key", "_severity", "input", "metric"], ascending=[False, False, True, True], kind="mergesort"
    )
    return rows[
        columns + [c for c in rows.columns if c not in columns and not c.startswith("_")]
    ].reset_index(drop=True)


def _check_warn_fraction(warn_fraction: float) -> None:
    if not (isinstance(warn_fraction, (int, float)) and 0 < warn_fraction <= 1):
        raise ValueError(
            f"warn_fraction must be in (0, 1] (e.g. 0.8 warns at 80% of the threshold); got {warn_fraction!r}."
        )


def _fmt(value: Any, digits: int = 4) -> str:
    if _missing(value):
        return "NULL"
    if isinstance(value, (float, np.floating)):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{float(value):.{digits}f}"
    return str(value)


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell (pipes and line breaks would break the row)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(drift: pd.DataFrame | None, warn_fraction: float = 0.8) -> str:
    """The drift rows as a Markdown table (feature, metric, value, threshold, status), worst
    first. WARN means at least ``warn_fraction`` of the threshold without crossing it."""
    rows = drift_rows(drift, warn_fraction)
    lines = ["| feature | metric | value | threshold | status |", "| --- | --- | ---: | ---: | --- |"]
    if rows.empty:
        lines.append("| (no drift statistics) | | | | |")
    for row in rows.itertuples(index=False):
        lines.append(
            f"| {_md(row.input)} | {_md(row.metric)} | {_fmt(row.value)} | {_fmt(row.threshold)} | {row.status} |"
        )
    return "\n".join(lines)


def verdict(drift: pd.DataFrame | None, warn_fraction: float = 0.8) -> str:
    """The worst status of the rows: DRIFT, WARN, PASS, or N/A when there are none."""
    rows = drift_rows(drift, warn_fraction)
    if rows.empty:
        return NA
    return max(rows["status"], key=_SEVERITY.__getitem__)


# -- plots -------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def _mpl(text: Any) -> str:
    """Text for matplotlib: a literal ``$`` would start mathtext and can fail to render."""
    return str(text).replace("$", r"\$")


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _style(axes) -> None:
    axes.spines[["top", "right"]].set_visible(False)
    axes.tick_params(labelsize=8)


def drift_bar_png(rows: pd.DataFrame, title: str) -> bytes:
    """Horizontal bars of the drift values (worst on top), a black mark at each row's threshold;
    WARN bars orange, DRIFT bars vermillion and hatched."""
    rows = rows.iloc[::-1]
    n = len(rows)
    figure = _figure(7.5, max(1.6, 0.34 * n + 1.0))
    axes = figure.subplots()
    positions = np.arange(n)
    values = np.array([0.0 if _missing(v) else float(v) for v in rows["value"]])
    colours = [STATUS_COLOURS[s] for s in rows["status"]]
    bars = axes.barh(positions, values, color=colours, height=0.62, edgecolor="white")
    for bar, status in zip(bars, rows["status"]):
        if status == DRIFT:
            bar.set_hatch("///")
            bar.set_edgecolor("#5a1f00")
    for y, threshold in zip(positions, rows["threshold"]):
        if not _missing(threshold):
            axes.plot(
                [float(threshold)] * 2,
                [y - 0.42, y + 0.42],
                color="black",
                linewidth=2,
                solid_capstyle="butt",
            )
    short_metric = {"JENSEN_SHANNON_DIVERGENCE": "JS", "L_INFTY": "L\u221e"}
    labels = [
        _mpl(_short(f"{i}  ({short_metric.get(str(m), m)})")) for i, m in zip(rows["input"], rows["metric"])
    ]
    axes.set_yticks(positions, labels)
    top = max([*values, *[float(t) for t in rows["threshold"] if not _missing(t)], 0.05])
    axes.set_xlim(0, top * 1.12)
    axes.set_xlabel(
        "drift (Jensen-Shannon divergence for numerical, L-infinity distance for categorical)", fontsize=8
    )
    axes.set_title(_mpl(title), fontsize=10, loc="left")
    axes.grid(axis="x", alpha=0.3)
    _style(axes)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=STATUS_COLOURS[s], label=s) for s in (PASS, WARN) if s in set(rows["status"])]
    if DRIFT in set(rows["status"]):
        handles.append(Patch(facecolor=VERMILLION, hatch="///", edgecolor="#5a1f00", label=DRIFT))
    handles.append(Line2D([], [], color="black", linewidth=2, label="threshold"))
    axes.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(figure)


def histogram_png(histogram: FeatureHistogram, status: str | None, value: Any, threshold: Any) -> bytes:
    """Base and study relative frequencies of one feature, bucket by bucket."""
    n = len(histogram.labels)
    figure = _figure(max(4.2, min(9.0, 0.45 * n + 2.5)), 3.0)
    axes = figure.subplots()
    x = np.arange(n)
    base, study = np.asarray(histogram.base), np.asarray(histogram.study)
    if histogram.kind == "categorical":
        axes.bar(x - 0.2, base, width=0.4, color=BLUE, label="base (training)")
        axes.bar(
            x + 0.2, study, width=0.4, color=ORANGE, label="study (serving)", hatch="//", edgecolor="white"
        )
    else:
        # Adjacent buckets: base as filled bars, study as an outline on top of them.
        axes.bar(x, base, width=1.0, color=SKY, edgecolor="white", label="base (training)")
        if n:
            axes.stairs(
                study, np.r_[x - 0.5, x[-1] + 0.5], color=VERMILLION, linewidth=2.2, label="study (serving)"
            )
    rotate = n > 6 or max((len(label) for label in histogram.labels), default=0) > 10
    axes.set_xticks(
        x,
        [_mpl(_short(label, 18)) for label in histogram.labels],
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
    )
    axes.set_ylabel("share of rows", fontsize=8)
    measured = (
        ""
        if _missing(value)
        else f"  {_fmt(value, 3)}" + ("" if _missing(threshold) else f" / threshold {_fmt(threshold, 3)}")
    )
    axes.set_title(
        _mpl(_short(histogram.feature, 50)) + (f"  [{status}]" if status else "") + _mpl(measured),
        fontsize=9,
        loc="left",
        pad=20,
    )
    axes.legend(
        fontsize=7, frameon=False, ncol=2, loc="lower left", bbox_to_anchor=(0, 1.0), borderaxespad=0.2
    )
    axes.grid(axis="y", alpha=0.3)
    _style(axes)
    return _png(figure)


def performance_png(performance: pd.DataFrame, baselines: Mapping[str, float]) -> bytes:
    """Each metric over the monitoring windows, its training evaluation as a dashed line."""
    metrics = list(dict.fromkeys(performance["metric"]))
    figure = _figure(7.5, 2.6 * len(metrics))
    axes_list = np.atleast_1d(figure.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0])
    for axes, metric in zip(axes_list, metrics):
        rows = performance[performance["metric"] == metric].sort_values("window_end")
        x = pd.to_datetime(rows["window_end"])
        y = rows["value"].astype(float)
        axes.plot(
            x,
            y,
            color=BLUE,
            marker="o",
            markersize=4,
            linewidth=2,
            label=f"{_mpl(metric)} on labelled serving rows",
        )
        baseline = baselines.get(metric)
        if baseline is not None and not _missing(baseline):
            axes.axhline(
                float(baseline),
                color=VERMILLION,
                linestyle="--",
                linewidth=1.5,
                label=f"training evaluation {float(baseline):.3f}",
            )
        axes.set_ylabel(_mpl(metric), fontsize=8)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, frameon=False, loc="best")
        _style(axes)
    axes_list[-1].set_xlabel("window end", fontsize=8)
    figure.autofmt_xdate()
    return _png(figure)


# -- the HTML page -----------------------------------------------------------------------------

_CSS = """
:root { --ink:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; --pass:#0072B2; --warn:#9a6700; --drift:#D55E00; }
* { box-sizing: border-box; }
body {
  margin: 0;
  font: 15px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Helvetica, Arial, sans-serif;
  color: var(--ink);
  background: #fff;
}
main { max-width: 1040px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.sub, .muted, figcaption { color: var(--muted); }
.verdict {
  display: inline-block;
  font-weight: 700;
  letter-spacing: .03em;
  padding: 6px 14px;
  border-radius: 6px;
  color: #fff;
  margin: 14px 0 6px;
}
.verdict.DRIFT { background: var(--drift); }
.verdict.WARN { background: var(--warn); }
.verdict.PASS { background: var(--pass); }
.verdict.NA { background: #6e7781; }
dl.summary {
  display: grid;
  grid-template-columns: max-content 1fr;
  gap: 4px 18px;
  background: var(--bg);
  border: 1px solid var(--line);
  border-radius: 8px;
  padding: 14px 18px;
  margin: 12px 0;
}
dl.summary dt { color: var(--muted); } dl.summary dd { margin: 0; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); }
th { background: var(--bg); font-weight: 600; } td.num, th.num { text-align: right; }
.badge {
  font-size: 12px;
  font-weight: 700;
  padding: 2px 8px;
  border-radius: 10px;
  border: 1px solid currentColor;
  white-space: nowrap;
}
.badge.PASS { color: var(--pass); }
.badge.WARN { color: var(--warn); }
.badge.DRIFT { color: #fff; background: var(--drift); border-color: var(--drift); }
.badge.NA { color: #6e7781; }
figure { margin: 14px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 8px 18px; }
footer { margin-top: 40px; font-size: 12px; color: var(--muted); }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


NO_LABELS_YET = "no ground-truth labels have arrived for the serving windows yet"


def _badge(status: str) -> str:
    css = "NA" if status == NA else status
    return f'<span class="badge {css}">{_e(status)}</span>'


def _html_table(rows: pd.DataFrame, first: str = "feature") -> str:
    head = (
        f'<thead><tr><th>{_e(first)}</th><th>metric</th><th class="num">value</th><th class="num">threshold</th>'
        '<th class="num">of threshold</th><th>status</th></tr></thead>'
    )
    body = []
    for row in rows.itertuples(index=False):
        share = "" if math.isnan(row.ratio) else ("\u221e" if math.isinf(row.ratio) else f"{row.ratio:.0%}")
        body.append(
            f'<tr class="{_e("NA" if row.status == NA else row.status)}"><td>{_e(row.input)}</td>'
            f'<td title="{_e(METRIC_NAMES.get(str(row.metric), row.metric))}">{_e(row.metric)}</td>'
            f'<td class="num">{_e(_fmt(row.value))}</td><td class="num">{_e(_fmt(row.threshold))}</td>'
            f'<td class="num">{_e(share)}</td><td>{_badge(row.status)}</td></tr>'
        )
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def _when(value: Any) -> str:
    if _missing(value):
        return "\u2014"
    if isinstance(value, (dt.datetime, pd.Timestamp)):
        stamp = pd.Timestamp(value)
        if stamp.tzinfo is None and stamp == stamp.normalize():
            return stamp.date().isoformat()  # a day boundary: the date says it all
        return stamp.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _count(value: Any) -> str:
    if _missing(value):
        return "\u2014"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def _baselines(performance: pd.DataFrame, baseline: float | Mapping[str, float] | None) -> dict[str, float]:
    metrics = list(dict.fromkeys(performance["metric"])) if not performance.empty else []
    out: dict[str, float] = {}
    if isinstance(baseline, Mapping):
        out.update({str(k): float(v) for k, v in baseline.items() if not _missing(v)})
    elif baseline is not None and not _missing(baseline):
        out.update({m: float(baseline) for m in metrics})
    if "baseline" in performance.columns:
        for metric in metrics:
            values = performance.loc[performance["metric"] == metric, "baseline"].dropna()
            if metric not in out and len(values):
                out[metric] = float(values.iloc[-1])
    return out


def _histogram_choice(rows: pd.DataFrame, top: int) -> tuple[list[str], str]:
    """The features to draw: every drifted one (capped), else the ``top`` nearest their threshold."""
    drifted = list(dict.fromkeys(rows.loc[rows["status"] == DRIFT, "input"]))
    if drifted:
        note = (
            f"Every drifted feature ({len(drifted)})"
            if len(drifted) <= MAX_HISTOGRAMS
            else (f"The {MAX_HISTOGRAMS} most drifted of {len(drifted)} drifted features")
        )
        return drifted[:MAX_HISTOGRAMS], note
    ranked = list(dict.fromkeys(rows.loc[rows["status"] != NA, "input"]))[:top]
    return ranked, f"No feature drifted: the {len(ranked)} closest to their threshold"


def render_html(
    *,
    model_id: str,
    version_id: str | None,
    endpoint: str | None,
    window_start: Any,
    window_end: Any,
    base_rows: int | None,
    study_rows: int | None,
    drift: pd.DataFrame | None,
    histograms: Mapping[str, Any] | None = None,
    prediction_drift: pd.DataFrame | None = None,
    performance: pd.DataFrame | None = None,
    baseline: float | Mapping[str, float] | None = None,
    warn_fraction: float = 0.8,
    title: str | None = None,
    top_features: int = 3,
    generated_at: dt.datetime | None = None,
    performance_note: str | None = None,
) -> str:
    """The report as an HTML string (see :func:`write_html_report`)."""
    no_performance = performance_note or NO_LABELS_YET
    rows = drift_rows(drift, warn_fraction)
    prediction_rows = drift_rows(prediction_drift, warn_fraction)
    perf = performance if performance is not None else pd.DataFrame(columns=["window_end", "metric", "value"])
    if not perf.empty:
        missing = [c for c in ("window_end", "metric", "value") if c not in perf.columns]
        if missing:
            raise ValueError(
                f"The performance table lacks column(s) {', '.join(missing)}; expected window_end, metric, value."
            )
        perf = perf.dropna(subset=["value"])
    hists = {str(name): FeatureHistogram.coerce(str(name), h) for name, h in (histograms or {}).items()}
    feature_verdict = verdict(drift, warn_fraction)
    prediction_verdict = verdict(prediction_drift, warn_fraction)
    generated = generated_at or dt.datetime.now(dt.timezone.utc)
    title = title or f"Model monitoring: {model_id}" + (f" v{version_id}" if version_id else "")

    counts = rows["status"].value_counts().to_dict() if not rows.empty else {}
    n_features = rows["input"].nunique() if not rows.empty else 0
    drifted = list(dict.fromkeys(rows.loc[rows["status"] == DRIFT, "input"])) if not rows.empty else []
    warned = list(dict.fromkeys(rows.loc[rows["status"] == WARN, "input"])) if not rows.empty else []
    if feature_verdict == DRIFT:
        headline = f"DRIFT \u2014 {len(drifted)} of {n_features} features crossed their threshold"
    elif feature_verdict == WARN:
        headline = f"WARN \u2014 no drift, {len(warned)} of {n_features} features near their threshold"
    elif feature_verdict == PASS:
        headline = f"PASS \u2014 no drift in {n_features} features"
    else:
        headline = "NO DATA \u2014 no drift statistics were computed"

    parts: list[str] = []
    parts.append(f"<h1>{_e(title)}</h1>")
    parts.append(
        f'<p class="sub">Serving data against training data, ML.VALIDATE_DATA_DRIFT semantics; '
        f"WARN at {warn_fraction:.0%} of a threshold.</p>"
    )
    css = "NA" if feature_verdict == NA else feature_verdict
    parts.append(f'<div class="verdict {css}" id="verdict">{_e(headline)}</div>')
    summary = [
        ("model", model_id),
        ("version", version_id or "\u2014"),
        ("endpoint", endpoint or "\u2014"),
        ("serving window", f"{_when(window_start)} \u2192 {_when(window_end)}"),
        ("base rows (training)", _count(base_rows)),
        ("study rows (serving)", _count(study_rows)),
        (
            "features",
            f"{n_features}: {counts.get(DRIFT, 0)} DRIFT, {counts.get(WARN, 0)} WARN, {counts.get(PASS, 0)} PASS"
            + (f", {counts.get(NA, 0)} N/A" if counts.get(NA) else ""),
        ),
    ]
    if drifted:
        summary.append(("drifted", ", ".join(drifted)))
    if not prediction_rows.empty:
        summary.append(("prediction drift", prediction_verdict))
    baselines = _baselines(perf, baseline) if not perf.empty else {}
    if not perf.empty:
        for metric in dict.fromkeys(perf["metric"]):
            latest = perf[perf["metric"] == metric].sort_values("window_end").iloc[-1]
            text = f"{float(latest['value']):.4f} (window ending {_when(latest['window_end'])})"
            if metric in baselines:
                delta = float(latest["value"]) - baselines[metric]
                text += f"; training evaluation {baselines[metric]:.4f}, change {delta:+.4f}"
            summary.append((f"latest {metric}", text))
    else:
        summary.append(("performance", no_performance))
    parts.append(
        '<dl class="summary">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in summary) + "</dl>"
    )

    parts.append('<h2 id="feature-drift">Feature drift</h2>')
    if rows.empty:
        parts.append('<p class="muted">No drift statistics.</p>')
    else:
        parts.append(
            '<p class="muted">Jensen-Shannon divergence on histograms for numerical features, L-infinity '
            "distance for categorical ones; worst first (value as a share of its threshold).</p>"
        )
        parts.append(_html_table(rows))
        parts.append(
            _img(
                drift_bar_png(rows, "Feature drift against thresholds"),
                "Bar chart of feature drift values with threshold marks",
                "Bars: drift value; black marks: each feature's threshold; hatched vermillion: drifted.",
            )
        )
        chosen, note = _histogram_choice(rows, top_features)
        if chosen:
            parts.append('<h3 id="distributions">Distributions</h3>')
            parts.append(f'<p class="muted">{_e(note)}: training (base) against serving (study) rows.</p>')
            figures = []
            for feature in chosen:
                row = rows[rows["input"] == feature].iloc[0]
                if feature in hists and not hists[feature].labels:
                    figures.append(f'<p class="muted">{_e(feature)} has no values to draw.</p>')
                elif feature in hists:
                    figures.append(
                        _img(
                            histogram_png(hists[feature], row["status"], row["value"], row["threshold"]),
                            f"Histogram of {feature}",
                        )
                    )
                else:
                    figures.append(f'<p class="muted">No histogram was given for {_e(feature)}.</p>')
            parts.append('<div class="grid">' + "".join(figures) + "</div>")

    parts.append('<h2 id="prediction-drift">Prediction drift</h2>')
    if prediction_rows.empty:
        parts.append(
            '<p class="muted">No prediction drift statistics (no logged predictions in the window).</p>'
        )
    else:
        parts.append(_html_table(prediction_rows, first="output"))
        parts.append(
            _img(
                drift_bar_png(prediction_rows, "Prediction drift against thresholds"),
                "Bar chart of prediction drift values with threshold marks",
            )
        )
        outputs = [o for o in dict.fromkeys(prediction_rows["input"]) if o in hists and hists[o].labels]
        if outputs:
            figures = []
            for output in outputs[:MAX_HISTOGRAMS]:
                row = prediction_rows[prediction_rows["input"] == output].iloc[0]
                figures.append(
                    _img(
                        histogram_png(hists[output], row["status"], row["value"], row["threshold"]),
                        f"Histogram of {output}",
                    )
                )
            parts.append('<div class="grid">' + "".join(figures) + "</div>")

    parts.append('<h2 id="performance">Performance</h2>')
    if perf.empty:
        parts.append(f'<p class="muted">{_e(no_performance[:1].upper() + no_performance[1:])}.</p>')
    else:
        parts.append(
            _img(
                performance_png(perf, baselines),
                "Model performance over serving windows against the training evaluation",
                "Each point: the metric on the serving rows whose "
                "labels have arrived; dashed: the training evaluation.",
            )
        )
        table = [
            '<table><thead><tr><th>window end</th><th>metric</th><th class="num">value</th><th '
            'class="num">training evaluation</th></tr></thead><tbody>'
        ]
        for row in perf.sort_values(["metric", "window_end"]).itertuples(index=False):
            base = baselines.get(row.metric)
            table.append(
                f"<tr><td>{_e(_when(row.window_end))}</td><td>{_e(row.metric)}</td><td "
                f'class="num">{_e(_fmt(row.value))}</td>'
                f'<td class="num">{_e(_fmt(base) if base is not None else "")}</td></tr>'
            )
        table.append("</tbody></table>")
        parts.append("".join(table))

    parts.append(f"<footer>Generated {_e(_when(generated))} by lakehouse_ml.</footer>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>\n"
        + "\n".join(parts)
        + "\n</main></body></html>\n"
    )


def write_html_report(path: str | Path, **report: Any) -> Path:
    """Render the monitoring report and write it to ``path`` as one self-contained HTML file.

    Keyword arguments (see :func:`render_html`): ``model_id``, ``version_id``, ``endpoint``,
    ``window_start``, ``window_end``, ``base_rows``, ``study_rows`` (the header); ``drift``
    (ML.VALIDATE_DATA_DRIFT rows: input, metric, threshold, value, is_anomaly);
    ``histograms`` (feature -> :class:`FeatureHistogram` or a dict with kind, edges or
    categories, base, study); ``prediction_drift`` (same shape as ``drift``, may be empty);
    ``performance`` (window_end, metric, value[, baseline]) and ``baseline`` (a number, or
    metric -> number: the training evaluation); ``warn_fraction`` (default 0.8); ``title``;
    ``top_features`` (histograms drawn when nothing drifted, default 3); ``performance_note``
    (what stands in for an empty performance table; default: no labels have arrived yet).

    The page is rendered in full in memory, then written through a temporary file and a rename:
    a failure leaves any previous report at ``path`` as it was. Returns ``path``.
    """
    page = render_html(**report)
    return write_bytes(Path(path), page.encode("utf-8"))
