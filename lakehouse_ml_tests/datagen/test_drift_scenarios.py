"""Drift scenarios change the data AND the relation between behaviour and churn, measurably.

Each scenario run shares its seed with a no-scenario control run, so the days before the start are
identical and any difference after it is the scenario's doing. Two kinds of checks:

* distribution: a statistical test on pre- vs post-start windows that fails in the control run;
* relation: a churn model (logistic regression on simple RFM-style features computed in pandas)
  trained before the start loses ROC AUC after it, a model retrained after the start recovers,
  and neither happens in the control run.

The sizes were tried with seeds 1-8 (``LAKEHOUSE_ML_DRIFT_SEED`` picks another seed); the smallest
observed margins were: AUC drop 0.062 (price_shock), 0.082 (channel_shift), 0.078 (new_region)
against a 0.05 bar, and at most 0.013 in the control runs.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lakehouse_ml.datagen import SCENARIOS, CymbalSimulator, DriftScenario, SimulationConfig

SEED = int(os.environ.get("LAKEHOUSE_ML_DRIFT_SEED", "7"))
START = dt.date(2026, 1, 1)
DAYS = 210
DRIFT_DAY = 135  # 2026-05-16
CUSTOMERS = 20_000
LOOKBACK = 90  # feature window [S - 90, S)
HORIZON = 30  # churned = no order in [S, S + 30)
PRE_SNAPSHOTS = (90, 97, 105)  # labels end before the drift starts
POST_SNAPSHOTS = {
    "price_shock": (135, 145, 155),
    "channel_shift": (135, 145, 155),
    # Central customers sign up from the start day on; their launch promotion ends 30 days later.
    "new_region": (165, 175),
}
FEATURES = [
    "recency",
    "frequency",
    "monetary",
    "avg_discount",
    "share_web",
    "share_app",
    "share_store",
    "share_marketplace",
    "sessions",
    "tenure",
]
LOG_FEATURES = ["recency", "frequency", "monetary", "sessions", "tenure"]


@dataclass
class History:
    customers: pd.DataFrame
    orders: pd.DataFrame  # order lines with a `day` index column
    sessions: pd.DataFrame  # known customers' sessions: customer_id, day


_cache: dict[str | None, History] = {}


def history(scenario: str | None) -> History:
    """The simulated history with ``scenario`` starting on DRIFT_DAY (None: the control run)."""
    if scenario not in _cache:
        start = START + dt.timedelta(days=DRIFT_DAY)
        scenarios = (DriftScenario(scenario, start),) if scenario else ()
        sim = CymbalSimulator(
            SimulationConfig(seed=SEED, start_date=START, days=DAYS, customers=CUSTOMERS, scenarios=scenarios)
        )
        orders, sessions = [], []
        for d in range(DAYS):
            day = START + dt.timedelta(days=d)
            lines = sim.orders_table(day).select(
                ["order_id", "customer_id", "unit_price", "quantity", "discount", "channel", "region"]
            )
            orders.append(lines.append_column("day", pa.array(np.full(lines.num_rows, d, np.int32))))
            visits = sim.sessions_table(day).select(["customer_id"]).drop_null()
            sessions.append(visits.append_column("day", pa.array(np.full(visits.num_rows, d, np.int32))))
        _cache[scenario] = History(
            customers=pd.concat(list(sim.customers()), ignore_index=True),
            orders=pa.concat_tables(orders).to_pandas(),
            sessions=pa.concat_tables(sessions).to_pandas(),
        )
    return _cache[scenario]


def snapshot(h: History, s: int) -> pd.DataFrame:
    """Features at day ``s`` of the customers who ordered in [s - 90, s), and their churn label."""
    window = h.orders[(h.orders.day >= s - LOOKBACK) & (h.orders.day < s)]
    window = window.assign(spend=window.unit_price * window.quantity)
    per_order = window.groupby("order_id").agg(
        customer_id=("customer_id", "first"),
        day=("day", "first"),
        channel=("channel", "first"),
        spend=("spend", "sum"),
    )
    by_customer = per_order.groupby("customer_id")
    features = pd.DataFrame(
        {
            "recency": s - by_customer.day.max(),
            "frequency": by_customer.size(),
            "monetary": by_customer.spend.sum(),
            "avg_discount": window.groupby("customer_id").discount.mean(),
        }
    )
    shares = pd.crosstab(per_order.customer_id, per_order.channel, normalize="index")
    for channel in ("web", "app", "store", "marketplace"):
        features[f"share_{channel}"] = shares.get(channel, 0.0)
    visits = h.sessions[(h.sessions.day >= s - LOOKBACK) & (h.sessions.day < s)]
    features["sessions"] = visits.groupby("customer_id").size().reindex(features.index, fill_value=0)
    signup = h.customers.set_index("customer_id").signup_date.reindex(features.index)
    features["tenure"] = [(START + dt.timedelta(days=s) - d).days for d in signup]
    future = h.orders[(h.orders.day >= s) & (h.orders.day < s + HORIZON)].customer_id.unique()
    features["churned"] = ~features.index.isin(future)
    return features.reset_index()


def snapshots(h: History, days) -> pd.DataFrame:
    return pd.concat([snapshot(h, s) for s in days], ignore_index=True)


def matrix(frame: pd.DataFrame) -> np.ndarray:
    x = frame[FEATURES].astype(float)
    x[LOG_FEATURES] = np.log1p(x[LOG_FEATURES])
    return x.to_numpy()


def fit(frame: pd.DataFrame):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        matrix(frame), frame.churned
    )


def auc(model, frame: pd.DataFrame) -> float:
    return roc_auc_score(frame.churned, model.predict_proba(matrix(frame))[:, 1])


def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on even customer ids, hold out odd ones (a customer is never on both sides)."""
    even = frame.customer_id % 2 == 0
    return frame[even], frame[~even]


def churn_model_aucs(scenario: str | None, post_days) -> dict[str, float]:
    h = history(scenario)
    pre_train, pre_holdout = split(snapshots(h, PRE_SNAPSHOTS))
    post_train, post_holdout = split(snapshots(h, post_days))
    stale = fit(pre_train)
    return {
        "pre": auc(stale, pre_holdout),
        "post_stale": auc(stale, post_holdout),
        "post_retrained": auc(fit(post_train), post_holdout),
    }


def window(h: History, before: bool, days: int = 30) -> pd.DataFrame:
    o = h.orders
    return (
        o[(o.day >= DRIFT_DAY - days) & (o.day < DRIFT_DAY)]
        if before
        else o[(o.day >= DRIFT_DAY) & (o.day < DRIFT_DAY + days)]
    )


# ----------------------------------------------------------------------------------- distributions
def test_price_shock_raises_paid_prices():
    def ks(h: History):
        return stats.ks_2samp(window(h, True).unit_price, window(h, False).unit_price)

    shocked = ks(history("price_shock"))
    control = ks(history(None))
    assert shocked.pvalue < 1e-6 and shocked.statistic > 0.08, shocked
    assert control.pvalue > 1e-3, control
    h = history("price_shock")
    assert window(h, False).unit_price.median() > 1.1 * window(h, True).unit_price.median()


def test_channel_shift_moves_store_orders_to_the_app():
    def mix(h: History):
        orders = pd.concat(
            [window(h, True).assign(after=False), window(h, False).assign(after=True)]
        ).drop_duplicates("order_id")
        table = pd.crosstab(orders.after, orders.channel)
        return stats.chi2_contingency(table).pvalue, table.div(table.sum(axis=1), axis=0)

    p_shift, shares = mix(history("channel_shift"))
    assert p_shift < 1e-6
    assert shares.loc[True, "store"] < 0.5 * shares.loc[False, "store"]
    assert shares.loc[True, "app"] > 1.5 * shares.loc[False, "app"]
    p_control, control_shares = mix(history(None))
    assert p_control > 1e-3, control_shares


def test_new_region_opens_central():
    h = history("new_region")
    assert (window(h, True).region == "central").sum() == 0
    assert (window(h, False).region == "central").mean() > 0.2
    central = h.customers[h.customers.region == "central"]
    assert len(central) == round(0.3 * CUSTOMERS)
    assert central.signup_date.min() >= START + dt.timedelta(days=DRIFT_DAY)
    assert "central" not in set(history(None).orders.region)


def test_scenarios_start_on_their_day():
    control = history(None).orders
    for scenario in SCENARIOS:
        drifted = history(scenario).orders
        before = drifted.day < DRIFT_DAY
        pd.testing.assert_frame_equal(
            drifted[before].reset_index(drop=True), control[control.day < DRIFT_DAY].reset_index(drop=True)
        )


# ------------------------------------------------------------------------------- relation to churn
def test_churn_labels_are_balanced_enough_to_learn():
    labels = snapshots(history(None), PRE_SNAPSHOTS).churned
    assert 0.25 < labels.mean() < 0.5 and len(labels) > 10_000


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_stale_churn_model_loses_quality_and_retraining_recovers(scenario):
    drifted = churn_model_aucs(scenario, POST_SNAPSHOTS[scenario])
    control = churn_model_aucs(None, POST_SNAPSHOTS[scenario])
    summary = f"{scenario}: {drifted}; control: {control}"
    assert drifted["pre"] > 0.75, summary  # the features do predict churn
    assert drifted["pre"] - drifted["post_stale"] >= 0.05, summary
    assert drifted["post_retrained"] - drifted["post_stale"] >= 0.02, summary
    # Without the scenario the same model keeps its quality and retraining gains nothing.
    assert control["pre"] - control["post_stale"] <= 0.03, summary
    assert control["post_retrained"] - control["post_stale"] <= 0.015, summary
