"""``ML.VALIDATE_DATA_DRIFT``: the pure computation and the SQL function.

Every expected value is computed here independently of :mod:`lakehouse_ml.bigquery.drift`:
``numpy.histogram`` for the standard histograms, a piecewise-linear CDF for TFDV's uniform
rebucketing, pandas ``value_counts`` for the rank histograms and
``scipy.spatial.distance.jensenshannon`` (which returns the square root of the divergence) for
the Jensen-Shannon divergence, in base 2 as TFDV computes it (``anomalies/metrics.cc``).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.spatial.distance import jensenshannon

from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.bigquery.drift import (
    OUTPUT_SCHEMA,
    DriftError,
    DriftOptions,
    drift_distributions,
    drift_markdown,
    validate_data_drift,
    validate_data_drift_arrow,
)
from lakehouse_ml.core.errors import BqmlError

JSD = "JENSEN_SHANNON_DIVERGENCE"


# -- independent references ------------------------------------------------------------------------


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence in bits (scipy gives its square root), capped at 1 like TFDV."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    return min(float(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2), 1.0)


def uniform_masses(values: np.ndarray, buckets: int, boundaries: np.ndarray) -> np.ndarray:
    """Mass of each [boundaries[k], boundaries[k+1]] when ``values``' equal-width histogram is
    spread uniformly within its buckets: differences of the piecewise-linear CDF."""
    lo, hi = values.min(), values.max()
    counts, edges = np.histogram(values, bins=buckets, range=(lo, hi))
    cdf = np.interp(boundaries, edges, np.concatenate([[0], np.cumsum(counts)]), left=0, right=counts.sum())
    return np.diff(cdf)


def reference_numeric(base: np.ndarray, study: np.ndarray, buckets: int = 10) -> float:
    def edges(v):
        return np.linspace(v.min(), v.max(), buckets + 1)

    union = np.union1d(edges(base), edges(study))
    return js_divergence(uniform_masses(base, buckets, union), uniform_masses(study, buckets, union))


def rank_histogram(values: pd.Series, top: int) -> pd.Series:
    """The ``top`` most frequent values, by count then value, both descending (TFDV)."""
    counts = values.dropna().astype(str).value_counts()
    frame = counts.rename("n").reset_index().rename(columns={counts.index.name or "index": "v"})
    frame.columns = ["v", "n"]
    frame = frame.sort_values(["n", "v"], ascending=False).head(top)
    return pd.Series(frame.n.to_numpy(float), index=frame.v.to_numpy())


def reference_linfty(base: pd.Series, study: pd.Series, top: int = 50) -> float:
    p, q = rank_histogram(base, top), rank_histogram(study, top)
    p, q = p / p.sum(), q / q.sum()
    return float(p.sub(q, fill_value=0).abs().max())


def reference_categorical_jsd(base: pd.Series, study: pd.Series, top: int = 50) -> float:
    p, q = rank_histogram(base, top), rank_histogram(study, top)
    labels = p.index.union(q.index)
    return js_divergence(p.reindex(labels, fill_value=0), q.reindex(labels, fill_value=0))


def frames(rows=5_000, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.normal(50 + 20 * shift, 10, rows),
            "items": rng.poisson(3 + 2 * shift, rows).astype("int64"),
            "channel": rng.choice(
                ["web", "store", "app", "phone"], rows, p=[0.4 - 0.2 * shift, 0.3, 0.2 + 0.2 * shift, 0.1]
            ),
            "region": rng.choice([f"r{k}" for k in range(30)], rows),
        }
    )


def row(result: pd.DataFrame, name: str) -> pd.Series:
    return result.set_index("input").loc[name]


# -- numerical: Jensen-Shannon divergence ------------------------------------------------------------


@pytest.mark.parametrize("buckets", [1, 3, 10, 57])
def test_numerical_jsd_on_shared_boundaries_is_scipys(buckets):
    """Both inputs span the same [min, max], so no rebucketing: JSD of numpy's histograms."""
    rng = np.random.default_rng(1)
    base = np.concatenate([[0.0, 100.0], rng.uniform(0, 100, 3_000)])
    study = np.concatenate([[0.0, 100.0], rng.beta(2, 5, 2_000) * 100])
    result = validate_data_drift(
        pd.DataFrame({"x": base}), pd.DataFrame({"x": study}), {"num_histogram_buckets": buckets}
    )
    expected = js_divergence(
        np.histogram(base, buckets, range=(0, 100))[0], np.histogram(study, buckets, range=(0, 100))[0]
    )
    assert row(result, "x").value == pytest.approx(expected, abs=1e-12)
    assert row(result, "x").metric == JSD


@pytest.mark.parametrize("buckets", [2, 10, 25])
def test_numerical_jsd_rebuckets_on_the_union_of_boundaries(buckets):
    """Different ranges: TFDV spreads each bucket uniformly over the union of both boundary sets."""
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 4_000)
    study = rng.normal(0.7, 1.6, 3_000)
    result = validate_data_drift(
        pd.DataFrame({"x": base}), pd.DataFrame({"x": study}), {"num_histogram_buckets": buckets}
    )
    assert row(result, "x").value == pytest.approx(reference_numeric(base, study, buckets), abs=1e-12)


def test_rebucketing_by_hand():
    """2 buckets: base [0,4,6,10] → [0,5):2 [5,10]:2; study [0,1,4,5] → [0,2.5):2 [2.5,5]:2.
    On the union [0, 2.5, 5, 10]: base 1, 1, 2 and study 2, 2, 0."""
    result = validate_data_drift(
        pa.table({"x": [0.0, 4.0, 6.0, 10.0]}),
        pa.table({"x": [0.0, 1.0, 4.0, 5.0]}),
        {"num_histogram_buckets": 2},
    )
    assert row(result, "x").value == pytest.approx(js_divergence([1, 1, 2], [2, 2, 0]), abs=1e-15)
    (dist,) = drift_distributions(
        pa.table({"x": [0.0, 4.0, 6.0, 10.0]}),
        pa.table({"x": [0.0, 1.0, 4.0, 5.0]}),
        {"num_histogram_buckets": 2},
    )
    np.testing.assert_allclose(dist.edges, [0, 2.5, 5, 10])
    np.testing.assert_allclose(dist.base, [0.25, 0.25, 0.5])
    np.testing.assert_allclose(dist.study, [0.5, 0.5, 0])


def test_identical_inputs_have_zero_divergence_and_disjoint_ones_are_capped_at_one():
    x = pa.table({"x": np.arange(1000.0)})
    assert validate_data_drift(x, x).value[0] == 0
    far = pa.table({"x": np.arange(1000.0) + 10_000})
    assert validate_data_drift(x, far).value[0] == 1.0


def test_a_constant_column_is_a_point_mass():
    """All finite values equal: one zero-width bucket, never merged with regular buckets (TFDV
    AddPointMasses), so a constant against a spread is fully divergent, and equal constants agree."""
    five = pa.table({"x": [5.0] * 10})
    spread = pa.table({"x": np.linspace(0, 10, 11)})
    assert validate_data_drift(five, pa.table({"x": [5.0] * 3})).value[0] == 0
    assert validate_data_drift(five, spread).value[0] == pytest.approx(1.0)
    half = pa.table({"x": [5.0] * 5 + [7.0] * 5})
    # Two different constants: two point buckets.
    assert validate_data_drift(five, pa.table({"x": [7.0] * 4})).value[0] == pytest.approx(1.0)
    assert validate_data_drift(half, half).value[0] == 0


def test_nan_and_infinities_are_mismatching_buckets_as_in_tfdv():
    """NaN: base NaN against 0 and 0 against study NaN; infinities likewise (metrics.cc)."""
    base = pa.table({"x": [0.0, 1.0, 2.0, 3.0, float("nan")]})
    study = pa.table({"x": [0.0, 1.0, 2.0, 3.0, float("nan")]})
    regular = np.histogram([0, 1, 2, 3], 10, range=(0, 3))[0]
    expected = js_divergence(np.concatenate([regular, [0, 1]]), np.concatenate([regular, [1, 0]]))
    assert validate_data_drift(base, study).value[0] == pytest.approx(expected, abs=1e-12)

    inf_base = pa.table({"x": [0.0, 1.0, 2.0, 3.0, float("inf"), float("-inf")]})
    expected = js_divergence(np.concatenate([regular, [2]]), np.concatenate([regular, [0]]))
    assert validate_data_drift(inf_base, pa.table({"x": [0.0, 1.0, 2.0, 3.0]})).value[0] == pytest.approx(
        expected
    )


def test_nulls_are_not_values():
    rng = np.random.default_rng(3)
    base, study = rng.normal(size=500), rng.normal(1, size=400)
    with_nulls = pa.table({"x": pa.array(list(base) + [None] * 300, pa.float64())})
    assert validate_data_drift(with_nulls, pa.table({"x": study})).value[0] == pytest.approx(
        reference_numeric(base, study), abs=1e-12
    )
    # pandas: NaN is a missing value (pyarrow's from_pandas convention), so the same number.
    frame = pd.DataFrame({"x": np.concatenate([base, [np.nan] * 300])})
    assert validate_data_drift(frame, pd.DataFrame({"x": study})).value[0] == pytest.approx(
        reference_numeric(base, study), abs=1e-12
    )


def test_integer_and_decimal_columns_are_numerical():
    import decimal

    ints = pa.table({"n": pa.array([1, 2, 3, 4, 5, 6], pa.int64())})
    decimals = pa.table(
        {"n": pa.array([decimal.Decimal(v) for v in ("1", "2", "3", "3", "5", "6")], pa.decimal128(10, 2))}
    )
    result = validate_data_drift(ints, decimals)
    assert row(result, "n").metric == JSD
    assert row(result, "n").value == pytest.approx(
        reference_numeric(np.array([1, 2, 3, 4, 5, 6.0]), np.array([1, 2, 3, 3, 5, 6.0])), abs=1e-12
    )


# -- categorical: L-infinity and Jensen-Shannon ------------------------------------------------------


def test_categorical_l_infinity_is_the_largest_frequency_difference():
    base, study = frames(seed=4), frames(seed=5, shift=0.8)
    result = validate_data_drift(base, study)
    for name in ("channel", "region"):
        assert row(result, name).metric == "L_INFTY"
        assert row(result, name).value == pytest.approx(reference_linfty(base[name], study[name]), abs=1e-12)


def test_categorical_jensen_shannon_on_the_rank_histograms():
    base, study = frames(seed=6), frames(seed=7, shift=0.5)
    result = validate_data_drift(base, study, {"categorical_metric_type": "jensen_shannon_divergence"})
    for name in ("channel", "region"):
        assert row(result, name).metric == JSD
        assert row(result, name).value == pytest.approx(
            reference_categorical_jsd(base[name], study[name]), abs=1e-12
        )


def test_num_rank_histogram_buckets_keeps_the_most_frequent_values_larger_value_first_on_ties():
    base = pd.Series(["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"] * 1)
    study = pd.Series(["a"] * 2 + ["b"] * 2 + ["c"] * 6 + ["e"] * 10)
    for top in (1, 2, 3, 50):
        result = validate_data_drift(
            pd.DataFrame({"v": base}), pd.DataFrame({"v": study}), {"num_rank_histogram_buckets": top}
        )
        assert result.value[0] == pytest.approx(reference_linfty(base, study, top), abs=1e-12), top
    # top 2 of base: a (5) then c (3) before b (3): the larger value wins the tie.
    (dist,) = drift_distributions(
        pd.DataFrame({"v": base}), pd.DataFrame({"v": study}), {"num_rank_histogram_buckets": 2}
    )
    assert dist.labels == ("a", "c", "e") and dist.edges is None
    np.testing.assert_allclose(dist.base, [5 / 8, 3 / 8, 0])
    np.testing.assert_allclose(dist.study, [0, 6 / 16, 10 / 16])


def test_bool_date_timestamp_bytes_and_dictionary_columns_are_categorical():
    d0 = dt.date(2026, 1, 1)
    base = pa.table(
        {
            "flag": [True, True, False, None],
            "day": [d0, d0, d0 + dt.timedelta(days=1), None],
            "at": pa.array([dt.datetime(2026, 1, 1)] * 3 + [None], pa.timestamp("us")),
            "raw": [b"x", b"y", b"y", None],
            "dict": pa.array(["p", "q", "q", "q"]).dictionary_encode(),
        }
    )
    study = pa.table(
        {
            "flag": [True, False, False, False],
            "day": [d0, d0, d0, d0],
            "at": pa.array([dt.datetime(2026, 1, 2)] * 4, pa.timestamp("us")),
            "raw": [b"x", b"x", b"y", b"y"],
            "dict": pa.array(["p", "p", "q", "r"]).dictionary_encode(),
        }
    )
    result = validate_data_drift(base, study)
    assert set(result.metric) == {"L_INFTY"}
    assert row(result, "flag").value == pytest.approx(abs(2 / 3 - 1 / 4))
    assert row(result, "day").value == pytest.approx(1 / 3)
    assert row(result, "at").value == pytest.approx(1.0)
    assert row(result, "raw").value == pytest.approx(abs(1 / 3 - 1 / 2))
    assert row(result, "dict").value == pytest.approx(max(abs(1 / 4 - 2 / 4), abs(3 / 4 - 1 / 4), 1 / 4))


# -- thresholds and is_anomaly -------------------------------------------------------------------------


def test_default_thresholds_are_0_3_and_options_replace_them():
    base, study = frames(seed=8), frames(seed=9, shift=1.0)
    default = validate_data_drift(base, study)
    assert list(default.threshold) == [0.3] * 4
    custom = validate_data_drift(
        base, study, {"numerical_default_threshold": 0.05, "categorical_default_threshold": 0.01}
    )
    assert list(custom.threshold) == [0.05, 0.05, 0.01, 0.01]
    np.testing.assert_allclose(custom.value, default.value)
    per_feature = validate_data_drift(
        base, study, {"categorical_default_threshold": 0.2, "thresholds": [("AMOUNT", 0.9), ("region", 0.0)]}
    )
    assert list(per_feature.threshold) == [0.9, 0.3, 0.2, 0.0]


def test_is_anomaly_is_value_strictly_greater_than_threshold():
    """BigQuery: "whether the value value is higher than the threshold value"; TFDV reports an
    anomaly only when the distance is not <= the threshold. A value equal to it is no anomaly."""
    base = pd.DataFrame({"v": ["a", "a", "b", "b"]})
    study = pd.DataFrame({"v": ["a", "b", "b", "b"]})  # L∞ = |1/2 - 1/4| = 0.25 exactly
    at = validate_data_drift(base, study, {"categorical_default_threshold": 0.25})
    below = validate_data_drift(base, study, {"categorical_default_threshold": 0.2499})
    assert at.value[0] == 0.25 and not at.is_anomaly[0]
    assert below.is_anomaly[0]
    result = validate_data_drift(
        frames(seed=10), frames(seed=11, shift=1.0), {"thresholds": [("amount", 0.0)]}
    )
    assert list(result.is_anomaly) == list(result.value > result.threshold)


def test_markdown_table_marks_anomalies():
    base = pd.DataFrame({"v": ["a", "a", "b", "b"], "x": [1.0, 2.0, 3.0, 4.0]})
    study = pd.DataFrame({"v": ["a", "b", "b", "b"], "x": [1.0, 2.0, 3.0, 4.0]})
    result = validate_data_drift(base, study, {"categorical_default_threshold": 0.1})
    text = drift_markdown(result)
    lines = text.splitlines()
    assert lines[0] == "| input | metric | threshold | value | is_anomaly |"
    assert "| v | L_INFTY | 0.1 | 0.2500 | **true** |" in lines
    assert "| x | JENSEN_SHANNON_DIVERGENCE | 0.3 | 0.0000 | false |" in lines


# -- empty inputs, missing and mismatched columns --------------------------------------------------------


def test_an_empty_study_gives_one_row_per_column_with_null_values():
    base = frames(seed=12)
    result = validate_data_drift(base, base.iloc[:0])
    assert list(result.input) == list(base.columns)
    assert result.value.isna().all() and result.is_anomaly.isna().all()
    assert list(result.metric) == [JSD, JSD, "L_INFTY", "L_INFTY"]
    assert list(result.threshold) == [0.3] * 4
    assert validate_data_drift(base.iloc[:0], base).value.isna().all()


def test_a_column_without_values():
    """Numerical: no histogram, no divergence (NULL). Categorical L∞: TFDV compares with an empty
    map, so the value is the other side's largest frequency."""
    base = pa.table({"x": [1.0, 2.0, 3.0], "c": ["a", "a", "b"]})
    study = pa.table({"x": pa.array([None] * 2, pa.float64()), "c": pa.array([None] * 2, pa.string())})
    result = validate_data_drift(base, study)
    assert pd.isna(row(result, "x").value) and pd.isna(row(result, "x").is_anomaly)
    assert row(result, "c").value == pytest.approx(2 / 3) and row(result, "c").is_anomaly
    jsd = validate_data_drift(base, study, {"categorical_metric_type": JSD})
    assert pd.isna(row(jsd, "c").value)


def test_columns_of_one_input_only_and_type_mismatches():
    base = pa.table({"a": [1.0, 2.0], "b": ["x", "y"], "m": pa.array([1, 2], pa.int64())})
    study = pa.table({"b": ["x", "x"], "c": [3.0, 4.0], "m": ["1", "3"]})
    result = validate_data_drift(base, study)
    assert list(result.input) == ["a", "b", "m", "c"]  # base order, then study-only columns
    assert pd.isna(row(result, "a").value) and pd.isna(row(result, "c").value)
    # Numerical in one input, categorical in the other: L_INFTY on both cast to STRING ...
    assert row(result, "m").metric == "L_INFTY" and row(result, "m").value == pytest.approx(0.5)
    # ... and left out of the report with JENSEN_SHANNON_DIVERGENCE (BigQuery's Limitations).
    assert "m" not in list(validate_data_drift(base, study, {"categorical_metric_type": JSD}).input)


def test_arrays_are_unnested_and_structs_expanded():
    base = pa.table(
        {
            "tags": pa.array([["a", "b"], ["a"], None, []], pa.list_(pa.string())),
            "s": pa.array([{"p": 1.0, "q": "u"}, {"p": 2.0, "q": "u"}, {"p": 3.0, "q": "v"}, None]),
        }
    )
    study = pa.table(
        {
            "tags": pa.array([["b"], ["b", None], ["a"], []], pa.list_(pa.string())),
            "s": pa.array([{"p": 1.0, "q": "v"}, {"p": 3.0, "q": "v"}, {"p": 3.0, "q": "v"}, None]),
        }
    )
    result = validate_data_drift(base, study)
    assert list(result.input) == ["tags", "s.p", "s.q"]
    assert row(result, "tags").value == pytest.approx(abs(2 / 3 - 1 / 3))
    assert row(result, "s.q").value == pytest.approx(2 / 3)
    assert row(result, "s.p").value == pytest.approx(
        reference_numeric(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 3.0])), abs=1e-12
    )


def test_unsupported_column_types_are_refused_naming_the_column():
    base = pa.table({"wait": pa.array([1, 2], pa.duration("s"))})
    with pytest.raises(DriftError, match=r"column 'wait' of type duration\[s\].*Supported column types"):
        validate_data_drift(base, base)


# -- options -------------------------------------------------------------------------------------------


def test_option_defaults_are_bigquerys():
    assert DriftOptions() == DriftOptions.parse({})
    assert DriftOptions.parse(None) == DriftOptions(
        num_histogram_buckets=10,
        num_quantiles_histogram_buckets=10,
        num_values_histogram_buckets=10,
        num_rank_histogram_buckets=50,
        categorical_default_threshold=0.3,
        categorical_metric_type="L_INFTY",
        numerical_default_threshold=0.3,
        numerical_metric_type=JSD,
        thresholds=(),
    )


def test_options_that_do_not_change_the_value_are_validated_and_accepted():
    base, study = frames(seed=13), frames(seed=14, shift=0.4)
    default = validate_data_drift(base, study)
    other = validate_data_drift(
        base,
        study,
        {
            "NUM_QUANTILES_HISTOGRAM_BUCKETS": 1000,
            "num_values_histogram_buckets": 1,
            "numerical_metric_type": "JENSEN_SHANNON_DIVERGENCE",
        },
    )
    pd.testing.assert_frame_equal(default, other)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_histogram_buckets": 0}, r"NUM_HISTOGRAM_BUCKETS must be in \[1, 1,000\], got 0"),
        ({"num_histogram_buckets": 1001}, r"NUM_HISTOGRAM_BUCKETS must be in \[1, 1,000\]"),
        ({"num_histogram_buckets": 2.5}, r"NUM_HISTOGRAM_BUCKETS must be an INT64"),
        (
            {"num_quantiles_histogram_buckets": 1001},
            r"NUM_QUANTILES_HISTOGRAM_BUCKETS must be in \[1, 1,000\]",
        ),
        ({"num_values_histogram_buckets": 0}, r"NUM_VALUES_HISTOGRAM_BUCKETS must be in \[1, 1,000\]"),
        ({"num_rank_histogram_buckets": 10_001}, r"NUM_RANK_HISTOGRAM_BUCKETS must be in \[1, 10,000\]"),
        ({"num_rank_histogram_buckets": True}, r"NUM_RANK_HISTOGRAM_BUCKETS must be an INT64"),
        ({"categorical_default_threshold": 1.0}, r"CATEGORICAL_DEFAULT_THRESHOLD must be in \[0, 1\)"),
        ({"numerical_default_threshold": -0.1}, r"NUMERICAL_DEFAULT_THRESHOLD must be in \[0, 1\)"),
        ({"numerical_default_threshold": "0.3"}, r"NUMERICAL_DEFAULT_THRESHOLD must be a FLOAT64"),
        (
            {"categorical_metric_type": "L2"},
            r"CATEGORICAL_METRIC_TYPE must be one of 'L_INFTY', 'JENSEN_SHANNON_DIVERGENCE'",
        ),
        (
            {"numerical_metric_type": "L_INFTY"},
            r"NUMERICAL_METRIC_TYPE must be one of 'JENSEN_SHANNON_DIVERGENCE'",
        ),
        ({"thresholds": [("amount", 1.5)]}, r"THRESHOLDS value of 'amount' must be in \[0, 1\)"),
        ({"thresholds": [("amount", 0.1), ("AMOUNT", 0.2)]}, r"names column 'AMOUNT' twice"),
        ({"thresholds": [("nope", 0.1)]}, r"THRESHOLDS names 'nope', which is no input column"),
        ({"thresholds": 0.1}, r"THRESHOLDS must be an ARRAY<STRUCT<STRING, FLOAT64>>"),
        ({"thresholds": [(1, 0.1)]}, r"THRESHOLDS must be an ARRAY<STRUCT<STRING, FLOAT64>>"),
        ({"num_histogram_buckets": None}, r"NUM_HISTOGRAM_BUCKETS is NULL"),
        (
            {"bucket_count": 3},
            r"has no option BUCKET_COUNT\. Its options are: NUM_HISTOGRAM_BUCKETS, .*THRESHOLDS",
        ),
    ],
)
def test_bad_options_are_refused_naming_the_option_and_the_allowed_values(options, message):
    with pytest.raises(DriftError, match=message):
        validate_data_drift(frames(50), frames(50, seed=1), options)


# -- output and distributions ------------------------------------------------------------------------


def test_output_has_bigquerys_columns_and_types():
    table = validate_data_drift_arrow(frames(seed=15), frames(seed=16))
    assert table.schema == OUTPUT_SCHEMA
    assert table.column_names == ["input", "metric", "threshold", "value", "is_anomaly"]
    assert [str(t) for t in table.schema.types] == ["string", "string", "double", "double", "bool"]


def test_distributions_match_the_rows_and_sum_to_one():
    base, study = frames(seed=17), frames(seed=18, shift=0.7)
    result = validate_data_drift(base, study)
    distributions = drift_distributions(base, study)
    assert [d.input for d in distributions] == list(result.input)
    for dist, value in zip(distributions, result.value):
        assert dist.value == pytest.approx(value)
        assert dist.base.sum() == pytest.approx(1) and dist.study.sum() == pytest.approx(1)
        assert len(dist.labels) == dist.base.size == dist.study.size
        if dist.kind == "numerical":
            assert dist.edges.size - 1 <= dist.base.size and np.all(np.diff(dist.edges) > 0)
            assert dist.value == pytest.approx(js_divergence(dist.base, dist.study), abs=1e-12)
        else:
            assert dist.value == pytest.approx(np.abs(dist.base - dist.study).max())


def test_pandas_and_arrow_inputs_agree():
    base, study = frames(seed=19), frames(seed=20, shift=0.3)
    from_pandas = validate_data_drift(base, study)
    from_arrow = validate_data_drift(pa.Table.from_pandas(base), pa.Table.from_pandas(study))
    pd.testing.assert_frame_equal(from_pandas, from_arrow)


def test_large_inputs_take_the_threaded_path_and_agree_with_the_references():
    base, study = frames(150_000, seed=21), frames(120_000, seed=22, shift=0.2)
    result = validate_data_drift(base, study)
    assert row(result, "amount").value == pytest.approx(
        reference_numeric(base.amount.to_numpy(), study.amount.to_numpy()), abs=1e-12
    )
    assert row(result, "region").value == pytest.approx(
        reference_linfty(base.region, study.region), abs=1e-12
    )


# -- the SQL function on the local warehouse ---------------------------------------------------------


@pytest.fixture()
def drift_warehouse(warehouse: LocalWarehouse) -> LocalWarehouse:
    warehouse.load_dataframe(frames(seed=30), "serving_before")
    warehouse.load_dataframe(frames(seed=31, shift=1.0), "serving_now")
    return warehouse


def test_sql_table_arguments_give_the_pure_functions_rows(drift_warehouse):
    sql = (
        "SELECT * FROM ML.VALIDATE_DATA_DRIFT(TABLE serving_before, TABLE `my-project.lakehouse.serving_now`)"
    )
    result = drift_warehouse.query(sql)
    expected = validate_data_drift(
        drift_warehouse.query("SELECT * FROM serving_before"),
        drift_warehouse.query("SELECT * FROM serving_now"),
    )
    pd.testing.assert_frame_equal(result, expected, check_dtype=False)
    assert drift_warehouse.query_arrow(sql).schema == OUTPUT_SCHEMA


def test_sql_subqueries_struct_options_and_thresholds(drift_warehouse):
    sql = """
        WITH recent AS (SELECT amount, channel FROM serving_now WHERE items >= 0)
        SELECT input, metric, threshold, value, is_anomaly
        FROM ML.VALIDATE_DATA_DRIFT(
          (SELECT amount, channel FROM serving_before),
          (SELECT * FROM recent),
          STRUCT(
            20 AS num_histogram_buckets,
            5 AS num_rank_histogram_buckets,
            0.2 AS categorical_default_threshold,
            'JENSEN_SHANNON_DIVERGENCE' AS categorical_metric_type,
            [('amount', 0.5), ('channel', 0.01)] AS thresholds
          )
        )
        ORDER BY input
    """
    result = drift_warehouse.query(sql)
    base = drift_warehouse.query("SELECT * FROM serving_before")
    study = drift_warehouse.query("SELECT * FROM serving_now")
    assert list(result.input) == ["amount", "channel"]
    assert list(result.threshold) == [0.5, 0.01]
    assert list(result.metric) == [JSD, JSD]
    assert result.value[0] == pytest.approx(
        reference_numeric(base.amount.to_numpy(), study.amount.to_numpy(), 20), abs=1e-12
    )
    assert result.value[1] == pytest.approx(
        reference_categorical_jsd(base.channel, study.channel, 5), abs=1e-12
    )


def test_sql_struct_thresholds_and_the_result_used_as_a_table(drift_warehouse):
    sql = """
        SELECT COUNT(*) AS drifted
        FROM ML.VALIDATE_DATA_DRIFT(
          TABLE serving_before, TABLE serving_now,
          STRUCT([STRUCT('amount' AS name, 0.0 AS threshold), STRUCT('region', 0.99)] AS thresholds)
        )
        WHERE is_anomaly AND input IN ('amount', 'region')
    """
    assert drift_warehouse.query(sql).drifted[0] == 1  # amount drifts past 0, region not past 0.99


def test_sql_with_query_parameters(drift_warehouse):
    sql = (
        "SELECT input, threshold FROM ML.VALIDATE_DATA_DRIFT(TABLE serving_before, TABLE serving_now, "
        "STRUCT(@t AS numerical_default_threshold)) ORDER BY input"
    )
    result = drift_warehouse.query(sql, {"t": 0.123})
    assert dict(zip(result.input, result.threshold))["amount"] == 0.123


def test_sql_empty_study_window(drift_warehouse):
    result = drift_warehouse.query(
        "SELECT * FROM ML.VALIDATE_DATA_DRIFT(TABLE serving_before, (SELECT * FROM serving_now WHERE FALSE))"
    )
    assert len(result) == 4 and result.value.isna().all() and result.is_anomaly.isna().all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            "ML.VALIDATE_DATA_DRIFT(TABLE serving_before, TABLE serving_now, STRUCT(0 AS num_histogram_buckets))",
            r"NUM_HISTOGRAM_BUCKETS must be in \[1, 1,000\]",
        ),
        (
            "ML.VALIDATE_DATA_DRIFT(TABLE serving_before, TABLE serving_now, STRUCT('X' AS categorical_metric_type))",
            r"CATEGORICAL_METRIC_TYPE must be one of 'L_INFTY', 'JENSEN_SHANNON_DIVERGENCE'",
        ),
        (
            "ML.VALIDATE_DATA_DRIFT(TABLE serving_before, TABLE serving_now, STRUCT(1 AS buckets))",
            r"has no option BUCKETS",
        ),
        (
            "ML.VALIDATE_DATA_DRIFT(TABLE serving_before, TABLE serving_now, STRUCT(0.1))",
            r"name the STRUCT fields",
        ),
        ("ML.VALIDATE_DATA_DRIFT(TABLE serving_before)", r"needs a base and a study input"),
        (
            "ML.VALIDATE_DATA_DRIFT(TABLE serving_before, TABLE serving_now, STRUCT(), MODEL m)",
            r"MODEL m\) is not supported locally: the MODEL argument only adds visualization_link",
        ),
        ("ML.VALIDATE_DATA_DRIFT(TABLE serving_before, TABLE serving_now, [0.1])", r"does not take an array"),
        ("ML.VALIDATE_DATA_DRIFT(TABLE a, TABLE b, TABLE c)", r"does not take an input relation"),
    ],
)
def test_sql_errors_name_the_problem(drift_warehouse, call, message):
    with pytest.raises(BqmlError, match=message):
        drift_warehouse.query(f"SELECT * FROM {call}")


# -- through the real google-cloud-bigquery client and the BigQuery REST test double -----------------


def test_through_the_bigquery_client_and_rest_double_like_on_the_local_backend(drift_warehouse):
    from lakehouse_ml.backends.gcp_warehouse import build_gcp_warehouse
    from lakehouse_ml.core.settings import load_settings
    from lakehouse_ml_tests.fakes import fake_bigquery_api

    sql = (
        "SELECT * FROM ML.VALIDATE_DATA_DRIFT(TABLE serving_before, (SELECT * FROM serving_now), "
        "STRUCT(0.1 AS categorical_default_threshold, [('amount', 0.05)] AS thresholds)) ORDER BY input"
    )
    with fake_bigquery_api() as api:
        gcp = build_gcp_warehouse(
            load_settings(
                {
                    "LAKEHOUSE_ML_BACKEND": "gcp",
                    "LAKEHOUSE_ML_GCP_PROJECT": "lakehouse-test",
                    "LAKEHOUSE_ML_GCP_DATASET": "lakehouse_ml",
                    "LAKEHOUSE_ML_BIGQUERY_API_ENDPOINT": api.url,
                    "LAKEHOUSE_ML_GCP_ANONYMOUS_CREDENTIALS": "true",
                }
            )
        )
        for name in ("serving_before", "serving_now"):
            gcp.load_dataframe(drift_warehouse.query(f"SELECT * FROM {name}"), name)
        remote = gcp.query(sql)
    here = drift_warehouse.query(sql)
    pd.testing.assert_frame_equal(remote, here, check_dtype=False)
    assert remote.is_anomaly.any()


@pytest.mark.parametrize(
    "thresholds",
    [
        "[('amount', 0.01)]",
        "ARRAY<STRUCT<STRING, FLOAT64>>[('amount', 0.01)]",
        "[STRUCT('amount' AS name, 0.01 AS t)]",
    ],
)
def test_sql_thresholds_literal_forms(drift_warehouse, thresholds):
    result = drift_warehouse.query(
        f"SELECT input, threshold FROM ML.VALIDATE_DATA_DRIFT(TABLE serving_before, TABLE serving_now, "
        f"STRUCT({thresholds} AS thresholds)) WHERE input = 'amount'"
    )
    assert list(result.threshold) == [0.01]
