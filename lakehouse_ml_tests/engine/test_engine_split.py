"""DATA_SPLIT_METHOD: AUTO_SPLIT's row-count rules, RANDOM, CUSTOM, SEQ and NO_SPLIT."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lakehouse_ml.core.errors import BqmlError

from .engine_data import engine


@pytest.fixture
def eng(tmp_path):
    return engine(tmp_path)


def _data(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "z": rng.normal(size=n), "label": 30 + 3 * x + rng.normal(size=n)})


def _split(eng, frame, **options) -> dict:
    eng.create_model("m", {"model_type": "LINEAR_REG", **options}, frame, replace=True)
    return eng.model_metadata("m")["data_split"]


@pytest.mark.parametrize(
    "rows, evaluation",
    [(499, 0), (500, 100), (12_345, 2_469), (50_000, 10_000), (50_001, 10_000), (80_000, 10_000)],
)
def test_auto_split_row_count_rules(eng, rows, evaluation):
    # fewer than 500 rows: no evaluation rows; 500 to 50,000: 20%; more than 50,000: 10,000 rows
    split = _split(eng, _data(rows))
    assert split == {
        "method": "AUTO_SPLIT",
        "training_rows": rows - evaluation,
        "evaluation_rows": evaluation,
    }
    info = eng.training_info("m").to_pandas()
    assert info.eval_loss.isna().all() == (evaluation == 0)


def test_random_split_fraction_is_deterministic_and_order_independent(eng):
    frame = _data(1000, seed=1)
    assert (
        _split(eng, frame, data_split_method="RANDOM", data_split_eval_fraction=0.3)["evaluation_rows"] == 300
    )
    first = eng.evaluate("m", None).to_pylist()[0]
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    _split(eng, shuffled, data_split_method="RANDOM", data_split_eval_fraction=0.3)
    second = eng.evaluate("m", None).to_pylist()[0]
    for key, value in first.items():
        assert second[key] == pytest.approx(value, rel=1e-9)  # the same rows were held out
    # "The service maintains the accuracy of the input value to two decimal places"
    assert (
        _split(eng, frame, data_split_method="RANDOM", data_split_eval_fraction=0.333)["evaluation_rows"]
        == 330
    )
    # RANDOM without a fraction splits like AUTO_SPLIT
    assert _split(eng, frame, data_split_method="RANDOM")["evaluation_rows"] == 200


def test_custom_split_uses_the_bool_column(eng):
    frame = _data(900, seed=2)
    flags = np.array([False, True, None] * 300, dtype=object)
    frame["is_eval"] = flags
    split = _split(eng, frame, data_split_method="CUSTOM", data_split_col="is_eval")
    # TRUE or NULL -> evaluation, FALSE -> training
    assert split == {"method": "CUSTOM", "training_rows": 300, "evaluation_rows": 600}
    assert [f["name"] for f in eng.model_metadata("m")["feature_columns"]] == [
        "x",
        "z",
    ]  # excluded from features
    eval_rows = frame[flags != False]  # noqa: E712
    assert eng.evaluate("m", None).to_pylist() == eng.evaluate("m", eval_rows).to_pylist()
    frame["is_eval"] = np.arange(900) % 2
    with pytest.raises(BqmlError, match="needs a BOOL DATA_SPLIT_COL"):
        _split(eng, frame, data_split_method="CUSTOM", data_split_col="is_eval")


def test_seq_split_evaluates_the_last_rows(eng):
    frame = _data(400, seed=3)
    frame["day"] = np.random.default_rng(0).permutation(400).astype(float)
    frame.loc[5, "day"] = np.nan
    split = _split(eng, frame, data_split_method="SEQ", data_split_col="day", data_split_eval_fraction=0.25)
    assert split["evaluation_rows"] == 100
    # sorted by day, the last 25% (and the NULL) evaluate: day >= 301 or NULL
    eval_rows = frame[(frame.day >= 301) | frame.day.isna()]
    assert len(eval_rows) == 100
    assert eng.evaluate("m", None).to_pylist() == eng.evaluate("m", eval_rows).to_pylist()


def test_no_split_trains_on_every_row(eng):
    frame = _data(2000, seed=4)
    assert _split(eng, frame, data_split_method="NO_SPLIT") == {
        "method": "NO_SPLIT",
        "training_rows": 2000,
        "evaluation_rows": 0,
    }
    assert eng.evaluate("m", None).to_pylist() == eng.evaluate("m", frame).to_pylist()


def test_split_option_errors(eng):
    frame = _data(600)
    with pytest.raises(BqmlError, match="needs DATA_SPLIT_COL"):
        _split(eng, frame, data_split_method="SEQ")
    with pytest.raises(BqmlError, match="DATA_SPLIT_COL is used with DATA_SPLIT_METHOD"):
        _split(eng, frame, data_split_col="x")
    with pytest.raises(BqmlError, match="DATA_SPLIT_COL names column 'nope'"):
        _split(eng, frame, data_split_method="CUSTOM", data_split_col="nope")
    frame["all_eval"] = True
    with pytest.raises(BqmlError, match="no training rows"):
        _split(eng, frame, data_split_method="CUSTOM", data_split_col="all_eval")
    assert not eng.model_exists("m")
