"""KMEANS: training and inference on a preprocessed :class:`Design`.

Source: "The CREATE MODEL statement for K-means models",
https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create-kmeans

* ``NUM_CLUSTERS``: 2 to 100; default ``log10(n)`` for ``n`` training rows (rounded to the
  nearest integer, at least 2).
* ``KMEANS_INIT_METHOD``: ``RANDOM`` ("randomly selecting a number of data points equal to the
  NUM_CLUSTERS value from the input data", the default), ``KMEANS++`` (k-means++ seeding, D²
  sampling with the model's distance), ``CUSTOM`` (the rows whose BOOL ``KMEANS_INIT_COL`` is
  TRUE; their number must equal NUM_CLUSTERS). Random choices are seeded from a hash of the
  training data, so the same data and options give the same model.
* ``DISTANCE_TYPE``: ``EUCLIDEAN`` ``‖x-y‖₂`` or ``COSINE`` ``sqrt(1 - x·y / (‖x‖₂‖y‖₂))``.
* ``STANDARDIZE_FEATURES`` (default TRUE): numerical features standardized; categorical features
  are one-hot encoded either way.
* Lloyd iterations: assign each row to its nearest centroid, move each centroid to the mean of
  its rows (an empty cluster keeps its centroid). ``MAX_ITERATIONS`` (20) bounds them;
  ``EARLY_STOP`` stops after the first iteration whose relative improvement of the loss (the
  mean squared distance to the nearest centroid) is below ``MIN_REL_PROGRESS`` (0.01).
* Centroid IDs are 1-based, as in BigQuery ML.

Anomaly detection (``ML.DETECT_ANOMALIES``,
https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-detect-anomalies):
the normalized distance of a row is the smallest, over the centroids, of its distance to the
centroid divided by that cluster's radius ("the root mean square of all of the distances from
each cluster's assigned data points to its centroid", on the training data). The training rows'
normalized distances are kept with the model; with ``CONTAMINATION`` c, the cutoff is their
``1 - c`` quantile and a row is anomalous when its normalized distance is greater.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from lakehouse_ml.bigquery.model_types import Kind
from lakehouse_ml.bigquery.preprocess import Design
from lakehouse_ml.bigquery.split import row_hashes
from lakehouse_ml.bigquery.types import bigquery_type
from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.engine import options as opt
from lakehouse_ml.engine.models import base

CHUNK_ROWS = 262_144


@dataclass
class Centroids:
    num: np.ndarray  # (k, p)
    cat: np.ndarray  # (k, q)

    @property
    def k(self) -> int:
        return self.num.shape[0]

    def sq_norms(self) -> np.ndarray:
        return np.einsum("ij,ij->i", self.num, self.num) + np.einsum("ij,ij->i", self.cat, self.cat)


def default_num_clusters(n: int) -> int:
    return int(min(100, max(2, round(math.log10(max(n, 1))))))


def _dots(design: Design, c: Centroids) -> np.ndarray:
    out = design.num @ c.num.T
    if design.codes:
        out += np.asarray(design.onehot() @ c.cat.T)
    return out


def distances(design: Design, c: Centroids, distance_type: str) -> np.ndarray:
    """(n, k) distances from each row to each centroid."""
    dots = _dots(design, c)
    xn = design.row_sq_norms()
    cn = c.sq_norms()
    if distance_type == "COSINE":
        denom = np.sqrt(xn)[:, None] * np.sqrt(cn)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(denom > 0, dots / denom, 0.0)
        return np.sqrt(np.clip(1.0 - cos, 0.0, None))
    sq = xn[:, None] - 2.0 * dots + cn[None, :]
    return np.sqrt(np.clip(sq, 0.0, None))


def nearest(design: Design, c: Centroids, distance_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centroid, its distance) per row, in chunks of rows."""
    labels = np.empty(design.n, dtype=np.int64)
    dmin = np.empty(design.n)
    for start in range(0, design.n, CHUNK_ROWS):
        rows = slice(start, min(start + CHUNK_ROWS, design.n))
        d = distances(_slice(design, rows), c, distance_type)
        labels[rows] = np.argmin(d, axis=1)
        dmin[rows] = d[np.arange(d.shape[0]), labels[rows]]
    return labels, dmin


def _slice(design: Design, rows: slice) -> Design:
    if rows.start == 0 and rows.stop == design.n:
        return design
    return Design(design.num[rows], [c[rows] for c in design.codes], list(design.sizes))


def _means(
    design: Design, labels: np.ndarray, k: int, previous: Centroids | None
) -> tuple[Centroids, np.ndarray]:
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    assign = sp.csr_matrix((np.ones(design.n), (labels, np.arange(design.n))), shape=(k, design.n))
    sums_num = assign @ design.num
    sums_cat = np.asarray((assign @ design.onehot()).toarray()) if design.codes else np.zeros((k, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        num = sums_num / counts[:, None]
        cat = sums_cat / counts[:, None]
    empty = counts == 0
    if empty.any():
        if previous is None:
            num[empty] = 0.0
            cat[empty] = 0.0
        else:
            num[empty] = previous.num[empty]
            cat[empty] = previous.cat[empty]
    return Centroids(num, cat), counts


def _row_centroids(design: Design, rows: np.ndarray) -> Centroids:
    sub = design.rows(rows)
    cat = sub.onehot().toarray() if design.codes else np.zeros((len(sub.num), 0))
    return Centroids(sub.num.copy(), cat)


def _seed(seed_key: int) -> np.random.Generator:
    return np.random.default_rng(np.uint64(seed_key))


def _kmeans_plus_plus(design: Design, k: int, distance_type: str, rng: np.random.Generator) -> Centroids:
    first = int(rng.integers(design.n))
    chosen = [first]
    closest = distances(design, _row_centroids(design, np.array([first])), distance_type)[:, 0] ** 2
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            candidates = np.setdiff1d(np.arange(design.n), chosen)
            nxt = int(rng.choice(candidates)) if len(candidates) else chosen[-1]
        else:
            nxt = int(np.searchsorted(np.cumsum(closest), rng.random() * total, side="right"))
            nxt = min(nxt, design.n - 1)
        chosen.append(nxt)
        d = distances(design, _row_centroids(design, np.array([nxt])), distance_type)[:, 0] ** 2
        np.minimum(closest, d, out=closest)
    return _row_centroids(design, np.array(chosen))


@dataclass
class KmeansResult:
    centroids: Centroids
    radius: np.ndarray  # (k,) RMS distance of each cluster's training rows to its centroid
    sizes: np.ndarray  # (k,)
    train_normalized: np.ndarray  # sorted normalized distances of the training rows
    iterations: list[dict]
    num_clusters: int


def train(
    design: Design,
    options: dict,
    init_rows: np.ndarray | None,
    seed_key: int,
    progress: Callable[[str], None] | None,
) -> KmeansResult:
    n = design.n
    k = options["num_clusters"] or default_num_clusters(n)
    distance_type = options["distance_type"]
    method = options["kmeans_init_method"]
    if method == "CUSTOM":
        rows = np.flatnonzero(init_rows)
        if options["num_clusters"] is not None and len(rows) != options["num_clusters"]:
            raise BqmlError(
                f"KMEANS_INIT_COL has {len(rows)} TRUE rows but NUM_CLUSTERS is {options['num_clusters']}; "
                "the number "
                "of TRUE rows must equal NUM_CLUSTERS."
            )
        k = len(rows)
        if not 2 <= k <= 100:
            raise BqmlError(
                f"KMEANS_INIT_COL must mark between 2 and 100 rows as initial centroids; it marks {k}."
            )
    if n < k:
        raise BqmlError(
            f"KMEANS with NUM_CLUSTERS={k} needs at least {k} training rows; the query returned {n}."
        )
    rng = _seed(seed_key)
    if method == "CUSTOM":
        centroids = _row_centroids(design, rows)
    elif method == "KMEANS++":
        centroids = _kmeans_plus_plus(design, k, distance_type, rng)
    else:
        centroids = _row_centroids(design, np.sort(rng.choice(n, size=k, replace=False)))
    labels, dmin = nearest(design, centroids, distance_type)
    rows_info: list[dict] = []
    started = time.perf_counter()
    for i in range(options["max_iterations"]):
        centroids, _ = _means(design, labels, k, centroids)
        labels, dmin = nearest(design, centroids, distance_type)
        loss = float(np.mean(dmin**2))
        sizes = np.bincount(labels, minlength=k)
        radius = _radius(dmin, labels, k)
        now = time.perf_counter()
        rows_info.append(
            {
                "iteration": i,
                "loss": loss,
                "eval_loss": None,
                "learning_rate": None,
                "duration_ms": int(round((now - started) * 1000)),
                "cluster_info": [
                    {"centroid_id": j + 1, "cluster_radius": float(radius[j]), "cluster_size": int(sizes[j])}
                    for j in range(k)
                ],
            }
        )
        started = now
        if progress:
            progress(f"iteration {i + 1}/{options['max_iterations']}: loss={loss:.6g}")
        if options["early_stop"] and len(rows_info) >= 2:
            previous = rows_info[-2]["loss"]
            relative = (previous - loss) / previous if previous else 0.0
            if relative < options["min_rel_progress"]:
                if progress:
                    progress(
                        f"early stop after iteration {i + 1}: relative loss improvement {relative:.4g} "
                        f"< MIN_REL_PROGRESS {options['min_rel_progress']:g}"
                    )
                break
    sizes = np.bincount(labels, minlength=k)
    radius = _radius(dmin, labels, k)
    normalized = np.sort(_normalize(dmin, labels, radius))
    return KmeansResult(centroids, radius, sizes, normalized, rows_info, k)


def _radius(dmin: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=k)
    sq = np.bincount(labels, weights=dmin**2, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.sqrt(sq / np.maximum(counts, 1)), 0.0)


def _normalize(d: np.ndarray, labels: np.ndarray | None, radius: np.ndarray) -> np.ndarray:
    """Distance / cluster radius (0/0 = 0; x/0 = inf)."""
    r = radius if labels is None else radius[labels]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(r > 0, d / r, np.where(d > 0, np.inf, 0.0))
    return out


def normalized_distances(
    design: Design, c: Centroids, radius: np.ndarray, distance_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the nearest centroid / that cluster's radius, the nearest centroid's index).

    The nearest centroid is the one ML.PREDICT assigns (smallest raw distance), and the
    normalization is the one the training rows got, so that on the training data the share of
    rows above the cut-off is the contamination.
    """
    best = np.empty(design.n)
    where = np.empty(design.n, dtype=np.int64)
    for start in range(0, design.n, CHUNK_ROWS):
        rows = slice(start, min(start + CHUNK_ROWS, design.n))
        d = distances(_slice(design, rows), c, distance_type)
        where[rows] = np.argmin(d, axis=1)
        best[rows] = _normalize(d[np.arange(d.shape[0]), where[rows]], where[rows], radius)
    return best, where


def anomaly_cutoff(train_normalized: np.ndarray, contamination: float) -> float:
    if len(train_normalized) == 0:
        return float("inf")
    return float(np.quantile(train_normalized, 1.0 - contamination))


def top_nearest(design: Design, c: Centroids, distance_type: str, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n, top) and distances (n, top) of the nearest centroids, nearest first."""
    idx = np.empty((design.n, top), dtype=np.int64)
    dist = np.empty((design.n, top))
    for start in range(0, design.n, CHUNK_ROWS):
        rows = slice(start, min(start + CHUNK_ROWS, design.n))
        d = distances(_slice(design, rows), c, distance_type)
        order = np.argsort(d, axis=1, kind="stable")[:, :top]
        idx[rows] = order
        dist[rows] = np.take_along_axis(d, order, axis=1)
    return idx, dist


def evaluate(design: Design, c: Centroids, distance_type: str) -> dict[str, float]:
    """``davies_bouldin_index`` and ``mean_squared_distance`` on ``design``.

    Davies–Bouldin (the textbook definition, as scikit-learn's ``davies_bouldin_score``): rows are
    grouped by their nearest centroid; each group's centre is the mean of its rows, ``S_i`` the
    mean distance of its rows to that centre, ``M_ij`` the distance between centres, and the index
    is the mean over groups of ``max_j (S_i + S_j) / M_ij``."""
    if design.n == 0:
        return {"davies_bouldin_index": float("nan"), "mean_squared_distance": float("nan")}
    labels, dmin = nearest(design, c, distance_type)
    msd = float(np.mean(dmin**2))
    present = np.unique(labels)
    if len(present) < 2:
        return {"davies_bouldin_index": float("nan"), "mean_squared_distance": msd}
    remap = np.full(c.k, -1)
    remap[present] = np.arange(len(present))
    local = remap[labels]
    centres, counts = _means(design, local, len(present), None)
    d_own = np.empty(design.n)
    for start in range(0, design.n, CHUNK_ROWS):
        rows = slice(start, min(start + CHUNK_ROWS, design.n))
        d = distances(_slice(design, rows), centres, distance_type)
        d_own[rows] = d[np.arange(d.shape[0]), local[rows]]
    scatter = np.bincount(local, weights=d_own, minlength=len(present)) / counts
    between = _centre_distances(centres, distance_type)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (scatter[:, None] + scatter[None, :]) / between
    np.fill_diagonal(ratio, -np.inf)
    ratio[~np.isfinite(ratio) & (ratio > 0)] = np.inf
    return {"davies_bouldin_index": float(np.mean(np.max(ratio, axis=1))), "mean_squared_distance": msd}


def _centre_distances(c: Centroids, distance_type: str) -> np.ndarray:
    x = np.hstack([c.num, c.cat])
    norms = np.einsum("ij,ij->i", x, x)
    dots = x @ x.T
    if distance_type == "COSINE":
        denom = np.sqrt(norms)[:, None] * np.sqrt(norms)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(denom > 0, dots / denom, 0.0)
        return np.sqrt(np.clip(1.0 - cos, 0.0, None))
    return np.sqrt(np.clip(norms[:, None] - 2 * dots + norms[None, :], 0.0, None))


# --------------------------------------------------------------------------------------------------
# The family: KMEANS
# --------------------------------------------------------------------------------------------------
def model_centroids(model: Any) -> Centroids:
    """The centroids of a trained model (its arrays, as train() stored them)."""
    return Centroids(model.arrays["centroids_num"], model.arrays["centroids_cat"])


# "The CREATE MODEL statement for K-means models", option by option ("Arguments"):
# https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create-kmeans
# NUM_CLUSTERS' default is "log10(n), where n is the number of training examples" (resolved at
# training time).
KmeansOptions = opt.option_model(
    "KmeansOptions",
    {
        "num_clusters": (None, opt.integer(2, 100)),
        "kmeans_init_method": ("RANDOM", opt.enum("RANDOM", "KMEANS++", "CUSTOM")),
        "kmeans_init_col": (None, opt.string),
        "distance_type": ("EUCLIDEAN", opt.enum("EUCLIDEAN", "COSINE")),
        "standardize_features": (True, opt.boolean),
        "max_iterations": (20, opt.integer(1)),
        "early_stop": (True, opt.boolean),
        "min_rel_progress": (0.01, opt.number(0.0)),
        "warm_start": (False, opt.boolean),
        **opt.TUNING,
    },
)


class KmeansFamily(base.ModelFamily):
    kinds = {"KMEANS": Kind.CLUSTERING}
    preprocessing = "kmeans"
    # "K-means is an unsupervised learning technique, so model training does not require labels
    # or split data"
    splits = False
    # ML.DETECT_ANOMALIES: k-means (also ARIMA_PLUS, ARIMA_PLUS_XREG, PCA, AUTOENCODER in BigQuery).
    functions = base.BASE_FUNCTIONS | {"ML.DETECT_ANOMALIES"}
    fast_serving = True

    options_model = KmeansOptions

    def check_options(self, model_type: str, given: Mapping[str, Any], o: dict[str, Any]) -> None:
        """The rules between KMEANS's options."""
        if o["kmeans_init_method"] == "CUSTOM" and not o["kmeans_init_col"]:
            raise BqmlError(
                "KMEANS_INIT_METHOD='CUSTOM' needs KMEANS_INIT_COL naming a BOOL column whose TRUE rows "
                "are the initial centroids."
            )
        if o["kmeans_init_col"] and o["kmeans_init_method"] != "CUSTOM":
            raise BqmlError("KMEANS_INIT_COL can only be used with KMEANS_INIT_METHOD='CUSTOM'.")

    def train(self, ctx: Any) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
        meta, prep, frame = ctx.meta, ctx.prep, ctx.frame
        init_series = frame[ctx.init_col] if ctx.init_col is not None else None
        hashes = row_hashes(frame, prep._fitted_codes)
        design = prep.design(frame)
        init_rows = None
        if init_series is not None:
            if bigquery_type(init_series) not in ("BOOL", "NULL"):
                raise BqmlError(
                    f"KMEANS_INIT_COL {init_series.name!r} must be a BOOL column; it is "
                    f"{bigquery_type(init_series)}."
                )
            init_rows = init_series.astype("boolean").fillna(False).to_numpy(dtype=bool)
        seed = int(np.add.reduce(hashes, dtype=np.uint64)) if len(hashes) else 0
        # Train on the rows in the order of their hashes, so that the random initial centroids,
        # like the seed, do not depend on the order in which the query returned the rows.
        order = np.argsort(hashes, kind="stable")
        canonical = Design(design.num[order], [codes[order] for codes in design.codes], list(design.sizes))
        result = train(canonical, ctx.o, init_rows[order] if init_rows is not None else None, seed, ctx.say)
        meta["options"] = {**meta["options"], "num_clusters": result.num_clusters}
        meta["training_info"] = result.iterations
        meta["evaluation"] = evaluate(design, result.centroids, ctx.o["distance_type"])
        meta["evaluation_rows"] = "training"
        arrays = {
            "centroids_num": result.centroids.num,
            "centroids_cat": result.centroids.cat,
            "cluster_radius": result.radius,
            "cluster_size": result.sizes.astype(np.int64),
            "train_normalized_distance": result.train_normalized,
        }
        return arrays, {}

    def centroid_distances(self, model: Any, features: Any) -> np.ndarray:
        """Each row's distance to every centroid, (rows, centroids) in centroid-id order."""
        design = model.prep.design(features)
        return distances(design, model_centroids(model), model.meta["options"]["distance_type"])

    def detect_anomalies(self, model: Any, features: Any, contamination: float) -> list[tuple[str, Any]]:
        """is_anomaly, normalized_distance, CENTROID_ID (the module docstring: anomaly detection)."""
        design = model.prep.design(features)
        nd, where = normalized_distances(
            design,
            model_centroids(model),
            model.arrays["cluster_radius"],
            model.meta["options"]["distance_type"],
        )
        cutoff = anomaly_cutoff(model.arrays["train_normalized_distance"], contamination)
        return [
            ("is_anomaly", pa.array(nd > cutoff, type=pa.bool_())),
            ("normalized_distance", pa.array(nd, type=pa.float64())),
            ("CENTROID_ID", pa.array(where + 1, type=pa.int64())),
        ]

    def predict_columns(self, model: Any, features: Any) -> list[tuple[str, Any]]:
        design = model.prep.design(features)
        c = model_centroids(model)
        top = min(c.k, 5)
        idx, dist = top_nearest(design, c, model.meta["options"]["distance_type"], top)
        return [
            ("CENTROID_ID", pa.array(idx[:, 0] + 1, type=pa.int64())),
            (
                "NEAREST_CENTROIDS_DISTANCE",
                base.list_of_structs(
                    design.n,
                    top,
                    {
                        "CENTROID_ID": pa.array((idx + 1).ravel(), type=pa.int64()),
                        "DISTANCE": pa.array(dist.ravel(), type=pa.float64()),
                    },
                ),
            ),
        ]

    def evaluate(self, model: Any, features: Any) -> dict[str, Any]:
        return evaluate(
            model.prep.design(features), model_centroids(model), model.meta["options"]["distance_type"]
        )


FAMILY = base.register(KmeansFamily())
