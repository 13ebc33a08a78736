"""The monitoring report: drift statuses at their boundaries, the Markdown table, one
self-contained HTML file with real PNG plots, escaped text and atomic writes."""

from __future__ import annotations

import base64
import datetime as dt
import os
import struct
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from lakehouse_ml.lifecycle.monitoring import report
from lakehouse_ml.lifecycle.monitoring.report import (
    FeatureHistogram,
    drift_status,
    markdown_table,
    write_html_report,
)

JS, LINF = "JENSEN_SHANNON_DIVERGENCE", "L_INFTY"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The parts of the report the tests look at: images, tables (rows of cell texts), text by id,
    tags used and all visible text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str]] = []
        self.tables: list[list[list[str]]] = []
        self.by_id: dict[str, str] = {}
        self.tags: set[str] = set()
        self.text: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_body = False
        self._ids: list[tuple[str, str, list[str]]] = []
        self._style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "style":
            self._style = True
        if tag == "img":
            self.images.append(attrs)
        if tag == "table":
            self.tables.append([])
        if tag == "tbody":
            self._in_body = True
        if tag == "tr" and self._in_body:
            self._row = []
        if tag == "td" and self._row is not None:
            self._cell = []
        if "id" in attrs:
            self._ids.append((tag, attrs["id"], []))

    def handle_endtag(self, tag):
        if tag == "style":
            self._style = False
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None
        if tag == "tbody":
            self._in_body = False
        if self._ids and self._ids[-1][0] == tag:
            _, name, parts = self._ids.pop()
            self.by_id[name] = "".join(parts)

    def handle_data(self, data):
        if self._style:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        for _, _, parts in self._ids:
            parts.append(data)


def png_bytes(image: dict[str, str]) -> bytes:
    prefix = "data:image/png;base64,"
    assert image["src"].startswith(prefix), image["src"][:40]
    return base64.b64decode(image["src"][len(prefix) :], validate=True)


def assert_real_png(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 300 and height >= 100, (width, height)
    assert len(data) > 8_000  # axes, bars, text: not an empty canvas
    assert data.rstrip()[-8:-4] == b"IEND"
    return width, height


def drift_frame() -> pd.DataFrame:
    return pd.DataFrame(
        [
            ("recency_days", JS, 0.3, 0.45, True),
            ("region", LINF, 0.3, 0.30, False),  # exactly at the threshold: not over it -> WARN
            ("age", JS, 0.3, 0.24, False),  # exactly 80% of it -> WARN
            ("avg_discount", JS, 0.3, 0.2399, False),  # just below 80% -> PASS
            ("top_category", LINF, 0.1, 0.05, False),
            ("sessions", JS, 0.3, float("nan"), None),  # no value -> N/A, last
        ],
        columns=["input", "metric", "threshold", "value", "is_anomaly"],
    )


def histograms() -> dict:
    return {
        "recency_days": {
            "kind": "numerical",
            "edges": [0, 7, 14, 30, 60, 90],
            "base": [0.4, 0.3, 0.15, 0.1, 0.05],
            "study": [0.1, 0.15, 0.2, 0.25, 0.3],
        },
        "region": FeatureHistogram.categorical(
            "region", ["north", "south", "east", None], [0.3, 0.3, 0.3, 0.1], [0.1, 0.2, 0.6, 0.1]
        ),
        "age": FeatureHistogram.numerical("age", [30, 45, 60], [0.2, 0.3, 0.3, 0.2], [0.1, 0.3, 0.3, 0.3]),
        "avg_discount": {
            "kind": "numerical",
            "edges": [0, 0.1, 0.2],
            "base": [0.5, 0.3, 0.2],
            "study": [0.4, 0.4, 0.2],
        },
        "top_category": {
            "kind": "categorical",
            "categories": ["grocery", "toys"],
            "base": [0.6, 0.4],
            "study": [0.55, 0.45],
        },
        "predicted_churned": {
            "kind": "categorical",
            "categories": [True, False],
            "base": [0.35, 0.65],
            "study": [0.6, 0.4],
        },
    }


def header(**overrides) -> dict:
    values = dict(
        model_id="churn_model",
        version_id="3",
        endpoint="churn_model",
        window_start=dt.datetime(2026, 5, 1, 0, 0),
        window_end=dt.datetime(2026, 5, 1, 23, 59),
        base_rows=12_345,
        study_rows=678,
        warn_fraction=0.8,
    )
    values.update(overrides)
    return values


def full_report(path, **overrides):
    values = dict(
        header(),
        drift=drift_frame(),
        histograms=histograms(),
        prediction_drift=pd.DataFrame(
            [("predicted_churned", LINF, 0.3, 0.25, False), ("churned_probs", JS, 0.3, 0.1, False)],
            columns=["input", "metric", "threshold", "value", "is_anomaly"],
        ),
        performance=pd.DataFrame(
            {
                "window_end": pd.date_range("2026-04-26", periods=6, freq="D"),
                "metric": ["roc_auc"] * 6,
                "value": [0.81, 0.80, 0.78, 0.74, 0.71, 0.69],
                "baseline": [0.82] * 6,
            }
        ),
    )
    values.update(overrides)
    return write_html_report(path, **values)


# -- statuses and Markdown ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "threshold", "is_anomaly", "status"),
    [
        (0.31, 0.3, True, "DRIFT"),
        (0.30, 0.3, False, "WARN"),  # BigQuery flags value > threshold only
        (0.24, 0.3, False, "WARN"),  # exactly 80%
        (0.2399, 0.3, False, "PASS"),
        (0.0, 0.3, False, "PASS"),
        (0.5, 0.3, None, "DRIFT"),  # no is_anomaly column value: value > threshold decides
        (0.3, 0.3, None, "WARN"),
        (0.1, 0.3, True, "DRIFT"),  # BigQuery's verdict wins
        (float("nan"), 0.3, None, "N/A"),
        (None, 0.3, False, "N/A"),
        (0.05, 0.0, None, "DRIFT"),
    ],
)
def test_drift_status_boundaries(value, threshold, is_anomaly, status):
    assert drift_status(value, threshold, is_anomaly, warn_fraction=0.8) == status


def _markdown_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    assert lines[0] == "| feature | metric | value | threshold | status |"
    assert lines[1].startswith("| ---")
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def test_markdown_table_statuses_sorted_by_share_of_threshold():
    rows = _markdown_rows(markdown_table(drift_frame(), warn_fraction=0.8))
    assert [(r[0], r[4]) for r in rows] == [
        ("recency_days", "DRIFT"),  # 150% of its threshold
        ("region", "WARN"),  # 100%
        ("age", "WARN"),  # 80%
        ("avg_discount", "PASS"),  # 79.97%
        ("top_category", "PASS"),  # 50%
        ("sessions", "N/A"),  # no value: last
    ]
    assert rows[0][1:4] == [JS, "0.4500", "0.3000"]
    assert rows[-1][2] == "NULL"


def test_markdown_warn_fraction_moves_the_warn_boundary():
    rows = _markdown_rows(markdown_table(drift_frame(), warn_fraction=0.5))
    assert dict((r[0], r[4]) for r in rows) == {
        "recency_days": "DRIFT",
        "region": "WARN",
        "age": "WARN",
        "avg_discount": "WARN",
        "top_category": "WARN",
        "sessions": "N/A",
    }
    with pytest.raises(ValueError, match="warn_fraction"):
        markdown_table(drift_frame(), warn_fraction=1.5)


def test_markdown_table_escapes_pipes_and_handles_no_rows():
    frame = pd.DataFrame(
        [("a|b\nc", JS, 0.3, 0.1, False)], columns=["input", "metric", "threshold", "value", "is_anomaly"]
    )
    line = markdown_table(frame).splitlines()[2]
    assert line.startswith("| a\\|b c | ")
    empty = markdown_table(pd.DataFrame(columns=["input", "metric", "threshold", "value", "is_anomaly"]))
    assert "no drift statistics" in empty


def test_drift_frame_without_required_columns_is_refused():
    with pytest.raises(ValueError, match="threshold, value"):
        markdown_table(pd.DataFrame({"input": ["a"], "metric": [JS]}))


# -- histograms --------------------------------------------------------------------------------


def test_histogram_bucket_labels_from_edges():
    assert FeatureHistogram.numerical("x", [0, 1, 2], [0.5, 0.5], [0.5, 0.5]).labels == ("[0, 1)", "[1, 2)")
    inner = FeatureHistogram.numerical("x", [1, 2], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]).labels
    assert inner == ("< 1", "[1, 2)", "\u2265 2")
    lower = FeatureHistogram.numerical("x", [0, 10], [0.5, 0.5], [0.5, 0.5]).labels
    assert lower == ("[0, 10)", "\u2265 10")
    assert FeatureHistogram.categorical("c", ["a", None], [0.5, 0.5], [0.5, 0.5]).labels == ("a", "NULL")
    # Labels win over edges (a distribution with special buckets beyond its regular ones).
    from types import SimpleNamespace

    distribution = SimpleNamespace(
        kind="numerical",
        labels=("[0, 1)", "[1, 2]", "NaN"),
        edges=np.array([0.0, 1.0, 2.0]),
        base=np.array([0.5, 0.4, 0.1]),
        study=np.array([0.2, 0.6, 0.2]),
    )
    coerced = FeatureHistogram.coerce("x", distribution)
    assert coerced.labels == ("[0, 1)", "[1, 2]", "NaN") and coerced.study == (0.2, 0.6, 0.2)
    with pytest.raises(ValueError, match="do not bound"):
        FeatureHistogram.numerical("x", [0, 1, 2, 3, 4], [0.5, 0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="equal lengths"):
        FeatureHistogram("x", "categorical", ("a", "b"), (0.5, 0.5), (1.0,))
    with pytest.raises(ValueError, match="kind"):
        FeatureHistogram.coerce("x", {"kind": "ordinal", "base": [1.0], "study": [1.0]})


# -- the HTML report ---------------------------------------------------------------------------


def test_html_report_is_one_self_contained_file_with_real_plots(tmp_path):
    path = full_report(tmp_path / "reports" / "churn_model.html")
    assert path == tmp_path / "reports" / "churn_model.html"
    assert sorted(p.name for p in path.parent.iterdir()) == ["churn_model.html"]  # no temp file left
    text = path.read_text(encoding="utf-8")
    page = Page(text)

    # Self-contained: every image inline, nothing fetched from elsewhere.
    assert not {"script", "link", "iframe"} & page.tags
    assert "http://" not in text and "https://" not in text
    alts = [image["alt"] for image in page.images]
    assert alts == [
        "Bar chart of feature drift values with threshold marks",
        "Histogram of recency_days",  # the one drifted feature (no others: something drifted)
        "Bar chart of prediction drift values with threshold marks",
        "Histogram of predicted_churned",
        "Model performance over serving windows against the training evaluation",
    ]
    sizes = [assert_real_png(png_bytes(image)) for image in page.images]
    bar_height = sizes[0][1]
    assert bar_height > sizes[2][1]  # six feature rows make a taller chart than two outputs

    # The header and its verdict.
    assert page.by_id["verdict"].startswith("DRIFT")
    assert "1 of 6 features" in page.by_id["verdict"]
    visible = " ".join(page.text)
    for expected in (
        "churn_model",
        "12,345",
        "678",
        "2026-05-01 \u2192 2026-05-01 23:59:00",
        "drifted",
        "recency_days",
    ):
        assert expected in visible
    assert "training evaluation 0.8200, change -0.1300" in visible

    # Tables: feature drift (worst first), prediction drift, performance.
    features, predictions, performance = page.tables
    assert [(r[0], r[-1]) for r in features] == [
        ("recency_days", "DRIFT"),
        ("region", "WARN"),
        ("age", "WARN"),
        ("avg_discount", "PASS"),
        ("top_category", "PASS"),
        ("sessions", "N/A"),
    ]
    assert features[0][1:5] == [JS, "0.4500", "0.3000", "150%"]
    assert [(r[0], r[-1]) for r in predictions] == [("predicted_churned", "WARN"), ("churned_probs", "PASS")]
    assert len(performance) == 6 and performance[-1][1:] == ["roc_auc", "0.6900", "0.8200"]


def test_without_drift_the_features_nearest_their_threshold_are_drawn(tmp_path):
    drift = drift_frame()
    drift.loc[0, ["value", "is_anomaly"]] = [0.2, False]  # recency_days: 67%, fourth of six
    path = full_report(tmp_path / "r.html", drift=drift, prediction_drift=None, performance=None)
    page = Page(path.read_text())
    assert page.by_id["verdict"].startswith("WARN")
    histograms_drawn = [i["alt"] for i in page.images if i["alt"].startswith("Histogram")]
    assert histograms_drawn == ["Histogram of region", "Histogram of age", "Histogram of avg_discount"]
    visible = " ".join(page.text)
    assert "No prediction drift statistics" in visible
    assert "No ground-truth labels" in visible
    for image in page.images:
        assert_real_png(png_bytes(image))


def test_all_pass_and_no_data_verdicts(tmp_path):
    drift = pd.DataFrame(
        [("a", JS, 0.3, 0.01, False), ("b", LINF, 0.3, 0.02, False)],
        columns=["input", "metric", "threshold", "value", "is_anomaly"],
    )
    empty_histogram = {"a": {"kind": "numerical", "labels": (), "base": [], "study": []}}
    page = Page(
        write_html_report(
            tmp_path / "pass.html", **header(), drift=drift, histograms=empty_histogram
        ).read_text()
    )
    assert page.by_id["verdict"].startswith("PASS")
    assert [i["alt"] for i in page.images] == ["Bar chart of feature drift values with threshold marks"]
    assert "No histogram was given for b." in " ".join(page.text)
    assert "a has no values to draw." in " ".join(page.text)

    empty = pd.DataFrame(columns=["input", "metric", "threshold", "value", "is_anomaly"])
    page = Page(
        write_html_report(
            tmp_path / "none.html", **header(version_id=None, base_rows=None), drift=empty
        ).read_text()
    )
    assert page.by_id["verdict"].startswith("NO DATA")
    assert page.images == []


def test_text_is_escaped_everywhere(tmp_path):
    evil = '<script>alert("x")</script>'
    drift = pd.DataFrame(
        [(evil, JS, 0.3, 0.9, True), ("cost_$_per_$", LINF, 0.3, 0.1, False)],
        columns=["input", "metric", "threshold", "value", "is_anomaly"],
    )
    path = write_html_report(
        tmp_path / "r.html",
        **header(model_id="m&<b>odel", endpoint='"quoted" endpoint'),
        drift=drift,
        histograms={
            evil: {
                "kind": "categorical",
                "categories": ["<i>", "$x$"],
                "base": [0.5, 0.5],
                "study": [0.9, 0.1],
            }
        },
    )
    text = path.read_text()
    assert "<script" not in text and "<b>odel" not in text and "<i>" not in text
    page = Page(text)
    assert "script" not in page.tags and "b" not in page.tags
    assert page.tables[0][0][0] == evil  # shown as text, exactly
    assert "m&<b>odel" in " ".join(page.text) and '"quoted" endpoint' in " ".join(page.text)
    assert [i["alt"] for i in page.images][1] == f"Histogram of {evil}"  # attribute escaped, parsed back
    for image in page.images:  # '$' in names does not break matplotlib's text rendering
        assert_real_png(png_bytes(image))


def test_performance_with_several_metrics_and_baselines(tmp_path):
    performance = pd.DataFrame(
        {
            "window_end": [dt.date(2026, 5, d) for d in (1, 2, 3)] * 2,
            "metric": ["roc_auc"] * 3 + ["log_loss"] * 3,
            "value": [0.8, 0.75, np.nan, 0.45, 0.5, 0.55],
        }
    )
    path = write_html_report(
        tmp_path / "r.html",
        **header(),
        drift=drift_frame(),
        performance=performance,
        baseline={"roc_auc": 0.82, "log_loss": 0.44},
    )
    page = Page(path.read_text())
    visible = " ".join(page.text)
    assert "latest roc_auc" in visible and "0.7500" in visible  # the NaN window is skipped
    assert "latest log_loss" in visible and "change +0.1100" in visible
    perf = page.tables[-1]
    assert [r[1] for r in perf] == ["log_loss"] * 3 + ["roc_auc"] * 2
    width, height = assert_real_png(png_bytes(page.images[-1]))
    assert height > 400  # one panel per metric


def test_a_failure_while_rendering_leaves_the_previous_report(tmp_path, monkeypatch):
    path = full_report(tmp_path / "r.html")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report, "histogram_png", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        full_report(path, drift=drift_frame().assign(value=lambda d: d["value"] * 0.5))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["r.html"]

    with pytest.raises(ValueError, match="equal lengths"):  # bad input: refused before any write
        full_report(
            path,
            histograms={
                "recency_days": {
                    "kind": "categorical",
                    "categories": ["a"],
                    "base": [1.0],
                    "study": [0.5, 0.5],
                }
            },
        )
    assert path.read_bytes() == before


def test_a_failure_while_writing_leaves_the_previous_report_and_no_temp_file(tmp_path, monkeypatch):
    import lakehouse_ml.core.atomic as atomic

    path = full_report(tmp_path / "r.html")
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        full_report(path, model_id="another")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["r.html"]
