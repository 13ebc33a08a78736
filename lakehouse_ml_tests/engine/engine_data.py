"""Known data for the engine tests: small, seeded, with NULLs and categories."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lakehouse_ml.engine.engine import BqmlEngine

SEGMENTS = ["gold", "silver", "bronze"]


def features(n: int, seed: int = 0, nulls: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure": rng.normal(24, 10, n),
            "spend": rng.gamma(2.0, 50.0, n),
            "visits": rng.integers(0, 30, n),
            "segment": rng.choice(SEGMENTS, n).astype(object),
            "opt_in": rng.random(n) < 0.4,
        }
    )
    if nulls:
        frame.loc[rng.random(n) < 0.05, "tenure"] = np.nan
        frame.loc[rng.random(n) < 0.05, "segment"] = None
    return frame


def binary(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 100)
    frame = features(n, seed)
    effect = frame.segment.map({"gold": 1.0, "silver": 0.0, "bronze": -1.0}).fillna(0.3).to_numpy()
    logit = (
        0.08 * (frame.tenure.fillna(24) - 24)
        - 0.01 * (frame.spend - 100)
        + 0.05 * frame.visits
        + effect
        + 0.7 * frame.opt_in
        - 0.5
    )
    frame["label"] = rng.random(n) < 1 / (1 + np.exp(-logit.to_numpy()))
    return frame


def multiclass(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 200)
    frame = features(n, seed)
    base = np.column_stack(
        [
            0.1 * (frame.tenure.fillna(24) - 24),
            0.02 * (frame.spend - 100),
            frame.segment.map({"gold": 1.5, "silver": 0.0, "bronze": -1.0}).fillna(0).to_numpy(),
        ]
    )
    noisy = base + rng.gumbel(size=base.shape)
    frame["plan"] = np.array(["basic", "plus", "pro"], dtype=object)[np.argmax(noisy, axis=1)]
    return frame


def regression(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 300)
    frame = features(n, seed)
    frame["revenue"] = (
        50
        + 2.0 * frame.tenure.fillna(24)
        + 0.5 * frame.spend
        + 3 * frame.visits
        + frame.segment.map({"gold": 40.0, "silver": 10.0, "bronze": 0.0}).fillna(5).to_numpy()
        + 15 * frame.opt_in
        + rng.normal(0, 10, n)
    )
    return frame


def clusters(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 400)
    centres = np.array([[0.0, 0.0], [8.0, 8.0], [0.0, 10.0]])
    which = rng.integers(0, 3, n)
    points = centres[which] + rng.normal(0, 1.0, (n, 2))
    return pd.DataFrame(
        {"a": points[:, 0], "b": points[:, 1] * 10, "kind": np.array(["x", "y", "z"], dtype=object)[which]}
    )


def engine(tmp_path) -> BqmlEngine:
    return BqmlEngine(tmp_path / "models")
