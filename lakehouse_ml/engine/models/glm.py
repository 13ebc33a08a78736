"""LINEAR_REG and LOGISTIC_REG: training and inference on a preprocessed :class:`Design`.

Source: "The CREATE MODEL statement for generalized linear models",
https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create-glm

How BigQuery ML's options map onto the computation:

* ``OPTIMIZE_STRATEGY`` (linear regression): ``AUTO_STRATEGY`` uses ``BATCH_GRADIENT_DESCENT``
  when ``L1_REG`` is set or ``WARM_START`` is TRUE, when the total cardinality of the training
  features (processed columns: numeric columns plus one-hot categories) exceeds 10,000, or when
  there are fewer than 10 training rows per unit of cardinality; otherwise ``NORMAL_EQUATION``.
  ``NORMAL_EQUATION`` is the exact least-squares solution (with ``L2_REG`` as a ridge term): it
  is computed with ``numpy.linalg.lstsq`` on the design matrix (small data) or on the Gram
  matrix ``XᵀX`` (large data), which gives the minimum-norm solution when one-hot columns are
  collinear with the intercept. Logistic regression always uses gradient descent.
* ``BATCH_GRADIENT_DESCENT`` minimizes ``(Σ loss_i + L1_REG·‖w‖₁ + L2_REG·‖w‖²) / n`` over the
  training rows (the intercept is not regularized; ``loss`` is the squared error for linear
  regression, log loss for binary and cross-entropy for multiclass logistic regression, each row
  weighted by its class weight). Full-batch steps, one per iteration:

  - ``LEARN_RATE_STRATEGY='LINE_SEARCH'`` (default): each iteration is one L-BFGS step with a
    line search (SciPy's L-BFGS-B; L1 through the split ``w = u - v``, ``u, v ≥ 0``).
    ``LS_INIT_LEARN_RATE`` is recorded but L-BFGS chooses its own step; ``ML.TRAINING_INFO``'s
    ``learning_rate`` reports the step actually taken, ``‖Δw‖ / ‖∇‖``.
  - ``LEARN_RATE_STRATEGY='CONSTANT'``: plain gradient descent with step ``LEARN_RATE``
    (proximal soft-thresholding for L1).

  ``MAX_ITERATIONS`` bounds the iterations. ``EARLY_STOP`` stops after the first iteration whose
  relative loss improvement is below ``MIN_REL_PROGRESS`` — on the evaluation rows when there
  are any (they exist "to avoid overfitting by using early stopping"), else on the training rows.
* Binary logistic regression has one logit for the higher label ("BigQuery ML treats the higher
  label value as the positive class"); multiclass is a multinomial (softmax) model with a
  cross-entropy loss, one weight vector per class.
* ``AUTO_CLASS_WEIGHTS``: ``total_input_rows / (input_rows_for_class_n * number_of_unique_classes)``;
  ``CLASS_WEIGHTS``: a weight for every class label.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import scipy.linalg
import scipy.optimize
from scipy.special import expit, log_expit, logsumexp, softmax

from lakehouse_ml.bigquery.metrics import classification as classification_metrics
from lakehouse_ml.bigquery.metrics import regression as regression_metrics
from lakehouse_ml.bigquery.model_types import Kind
from lakehouse_ml.bigquery.preprocess import Design
from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.engine import options as opt
from lakehouse_ml.engine.models import base

MAX_NORMAL_EQUATION_CARDINALITY = 10_000
DENSE_LSTSQ_LIMIT = 20_000_000  # design cells up to which NORMAL_EQUATION factorizes X itself


@dataclass
class GlmParams:
    """``w_num``: (p,) or (p, C); ``w_cat``: (q,) or (q, C); ``intercept``: () or (C,)."""

    w_num: np.ndarray
    w_cat: np.ndarray
    intercept: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "w_num": self.w_num,
            "w_cat": self.w_cat,
            "intercept": np.asarray(self.intercept, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "GlmParams":
        return cls(arrays["w_num"], arrays["w_cat"], arrays["intercept"])


def linear_predictor(params: GlmParams, design: Design) -> np.ndarray:
    """``z = Xw + b``: (n,) or (n, C)."""
    return design.matvec(params.w_num, params.w_cat) + params.intercept


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------
class _Problem:
    """One GLM objective on a design: value and gradient with respect to (w_num, w_cat, b)."""

    def __init__(
        self,
        kind: str,
        design: Design,
        y: np.ndarray,
        weights: np.ndarray | None,
        n_out: int,
        fit_intercept: bool,
        l1: float,
        l2: float,
    ):
        self.kind = kind  # linear | binary | multi
        self.design = design
        self.y = y
        self.weights = weights
        self.total = float(weights.sum()) if weights is not None else float(design.n)
        self.p = design.num.shape[1]
        self.q = design.q
        self.c = n_out  # 1 for linear and binary
        self.fit_intercept = fit_intercept
        self.l1 = l1
        self.l2 = l2
        self.m = (self.p + self.q) * self.c  # regularized weights
        if kind == "multi":
            self.y_onehot = np.zeros((design.n, n_out))
            self.y_onehot[np.arange(design.n), y] = 1.0

    # parameter vector: [w (m), b (c if fit_intercept)]
    def unpack(self, theta: np.ndarray) -> GlmParams:
        w = theta[: self.m]
        b = theta[self.m :] if self.fit_intercept else np.zeros(self.c)
        if self.c == 1:
            return GlmParams(w[: self.p].copy(), w[self.p :].copy(), np.asarray(float(b[0])))
        w = w.reshape(self.p + self.q, self.c)
        return GlmParams(w[: self.p].copy(), w[self.p :].copy(), np.asarray(b, dtype=np.float64).copy())

    def pack(self, params: GlmParams) -> np.ndarray:
        w = np.concatenate(
            [np.asarray(params.w_num).reshape(self.p, -1), np.asarray(params.w_cat).reshape(self.q, -1)]
        )
        parts = [w.ravel()]
        if self.fit_intercept:
            parts.append(np.atleast_1d(params.intercept).astype(np.float64))
        return np.concatenate(parts)

    def data_loss_and_grad_z(self, z: np.ndarray, want_grad: bool = True) -> tuple[float, np.ndarray | None]:
        s = self.weights
        if self.kind == "linear":
            r = z - self.y
            per = r * r
            grad = 2.0 * r if want_grad else None
        elif self.kind == "binary":
            per = -log_expit(z) + (1.0 - self.y) * z  # log(1 + e^z) - y z
            grad = expit(z) - self.y if want_grad else None
        else:
            lse = logsumexp(z, axis=1)
            per = lse - z[np.arange(len(z)), self.y]
            grad = softmax(z, axis=1) - self.y_onehot if want_grad else None
        if s is not None:
            loss = float(np.dot(per, s)) / self.total
            if want_grad:
                grad = grad * (s[:, None] if grad.ndim == 2 else s)
        else:
            loss = float(per.sum()) / self.total
        if want_grad:
            grad = grad / self.total
        return loss, grad

    def value_and_grad(self, theta: np.ndarray, include_l1: bool = True) -> tuple[float, float, np.ndarray]:
        """(objective, data loss, gradient); the L1 term (not differentiable at 0) only in the value."""
        params = self.unpack(theta)
        z = linear_predictor(params, self.design)
        loss, gz = self.data_loss_and_grad_z(z)
        g_num, g_cat = self.design.rmatvec(gz)
        w = theta[: self.m]
        outputs = gz.shape[1] if gz.ndim == 2 else 1  # one column per class for multiclass
        grad_w = np.concatenate(
            [np.asarray(g_num).reshape(self.p, outputs), np.asarray(g_cat).reshape(self.q, outputs)]
        ).ravel()
        penalty = 0.0
        if self.l2:
            penalty += self.l2 * float(w @ w) / self.total
            grad_w = grad_w + 2.0 * self.l2 * w / self.total
        if self.l1 and include_l1:
            penalty += self.l1 * float(np.abs(w).sum()) / self.total
        parts = [grad_w]
        if self.fit_intercept:
            parts.append(np.atleast_1d(gz.sum(axis=0)))
        return loss + penalty, loss, np.concatenate(parts)

    def loss_on(self, params: GlmParams, design: Design, y: np.ndarray, weights: np.ndarray | None) -> float:
        other = _Problem(
            self.kind, design, y, weights, self.c if self.kind == "multi" else 1, self.fit_intercept, 0.0, 0.0
        )
        z = linear_predictor(params, design)
        return other.data_loss_and_grad_z(z, want_grad=False)[0]

    def initial(self) -> np.ndarray:
        theta = np.zeros(self.m + (self.c if self.fit_intercept else 0))
        if not self.fit_intercept:
            return theta
        s = self.weights if self.weights is not None else np.ones(self.design.n)
        if self.kind == "linear":
            theta[self.m] = float(np.dot(self.y, s) / s.sum())
        elif self.kind == "binary":
            p = float(np.clip(np.dot(self.y, s) / s.sum(), 1e-6, 1 - 1e-6))
            theta[self.m] = np.log(p / (1 - p))
        else:
            freq = np.clip(np.bincount(self.y, weights=s, minlength=self.c) / s.sum(), 1e-6, None)
            logf = np.log(freq)
            theta[self.m :] = logf - logf.mean()
        return theta


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
@dataclass
class GlmResult:
    params: GlmParams
    iterations: list[dict]
    strategy: str


def choose_strategy(model_type: str, options: dict, n_train: int, cardinality: int) -> str:
    """OPTIMIZE_STRATEGY after AUTO_STRATEGY's rules (GLM page)."""
    if model_type == "LOGISTIC_REG":
        return "BATCH_GRADIENT_DESCENT"
    requested = options["optimize_strategy"]
    if requested == "NORMAL_EQUATION":
        if cardinality > MAX_NORMAL_EQUATION_CARDINALITY:
            raise BqmlError(
                "OPTIMIZE_STRATEGY='NORMAL_EQUATION' cannot be used when the total cardinality of the "
                "training "
                f"features ({cardinality:,}) is greater than 10,000; use BATCH_GRADIENT_DESCENT."
            )
        return "NORMAL_EQUATION"
    if requested == "BATCH_GRADIENT_DESCENT":
        return requested
    if options["l1_reg"] > 0 or options.get("warm_start"):
        return "BATCH_GRADIENT_DESCENT"
    if cardinality > MAX_NORMAL_EQUATION_CARDINALITY or n_train < 10 * cardinality:
        return "BATCH_GRADIENT_DESCENT"
    return "NORMAL_EQUATION"


def train(
    model_type: str,
    options: dict,
    train_design: Design,
    y_train: np.ndarray,
    weights: np.ndarray | None,
    eval_design: Design | None,
    y_eval: np.ndarray | None,
    eval_weights: np.ndarray | None,
    n_classes: int,
    progress: Callable[[str], None] | None,
) -> GlmResult:
    kind = "linear" if model_type == "LINEAR_REG" else ("binary" if n_classes == 2 else "multi")
    n_out = n_classes if kind == "multi" else 1
    problem = _Problem(
        kind,
        train_design,
        y_train,
        weights,
        n_out,
        options["fit_intercept"],
        options["l1_reg"],
        options["l2_reg"],
    )
    cardinality = train_design.num.shape[1] + train_design.q
    strategy = choose_strategy(model_type, options, train_design.n, cardinality)
    has_eval = eval_design is not None and eval_design.n > 0
    if strategy == "NORMAL_EQUATION":
        started = time.perf_counter()
        params = _normal_equation(train_design, y_train, options["fit_intercept"], options["l2_reg"])
        # One-hot columns never active in training (a category DUMMY_ENCODING drops) have weight
        # exactly 0; the least-squares solver would leave round-off there.
        if train_design.codes:
            active = np.concatenate(
                [
                    np.bincount(c, minlength=s + 1)[:s] > 0
                    for c, s in zip(train_design.codes, train_design.sizes)
                ]
            )
            params.w_cat[~active] = 0.0
        loss = problem.loss_on(params, train_design, y_train, None)
        eval_loss = problem.loss_on(params, eval_design, y_eval, None) if has_eval else None
        row = {
            "iteration": 0,
            "loss": loss,
            "eval_loss": eval_loss,
            "learning_rate": None,
            "duration_ms": int(round((time.perf_counter() - started) * 1000)),
        }
        if progress:
            progress(
                f"iteration 1 (normal equation): loss={loss:.6g}"
                + (f" eval_loss={eval_loss:.6g}" if has_eval else "")
            )
        return GlmResult(params, [row], strategy)
    tracker = _Tracker(problem, options, eval_design if has_eval else None, y_eval, eval_weights, progress)
    if options["learn_rate_strategy"] == "CONSTANT":
        params = _gradient_descent(problem, options, tracker)
    else:
        params = _lbfgs(problem, options, tracker)
    return GlmResult(params, tracker.rows, strategy)


class _Tracker:
    """Records ML.TRAINING_INFO rows and decides EARLY_STOP."""

    def __init__(
        self, problem: _Problem, options: dict, eval_design: Design | None, y_eval, eval_weights, progress
    ):
        self.problem = problem
        self.options = options
        self.eval_design = eval_design
        self.y_eval = y_eval
        self.eval_weights = eval_weights
        self.progress = progress
        self.rows: list[dict] = []
        self.started = time.perf_counter()

    def record(self, params: GlmParams, loss: float, learning_rate: float | None) -> bool:
        """Add one iteration; True when training should stop."""
        eval_loss = None
        if self.eval_design is not None:
            eval_loss = self.problem.loss_on(params, self.eval_design, self.y_eval, self.eval_weights)
        now = time.perf_counter()
        i = len(self.rows)
        self.rows.append(
            {
                "iteration": i,
                "loss": loss,
                "eval_loss": eval_loss,
                "learning_rate": learning_rate,
                "duration_ms": int(round((now - self.started) * 1000)),
            }
        )
        self.started = now
        total = self.options["max_iterations"]
        if self.progress:
            self.progress(
                f"iteration {i + 1}/{total}: loss={loss:.6g}"
                + (f" eval_loss={eval_loss:.6g}" if eval_loss is not None else "")
            )
        if not self.options["early_stop"] or len(self.rows) < 2:
            return False
        key = "eval_loss" if eval_loss is not None else "loss"
        previous, current = self.rows[-2][key], self.rows[-1][key]
        relative = (previous - current) / abs(previous) if previous else 0.0
        if relative < self.options["min_rel_progress"]:
            if self.progress:
                self.progress(
                    f"early stop after iteration {i + 1}: relative {key} improvement {relative:.4g} "
                    f"< MIN_REL_PROGRESS {self.options['min_rel_progress']:g}"
                )
            return True
        return False


def _lbfgs(problem: _Problem, options: dict, tracker: _Tracker) -> GlmParams:
    theta0 = problem.initial()
    m = problem.m
    l1 = problem.l1
    cache: dict[str, object] = {}

    if l1 > 0:
        # w = u - v with u, v >= 0: the L1 term becomes linear, L-BFGS-B handles the bounds.
        def to_theta(x: np.ndarray) -> np.ndarray:
            return np.concatenate([x[:m] - x[m : 2 * m], x[2 * m :]])

        def fun(x: np.ndarray):
            theta = to_theta(x)
            obj, loss, g = problem.value_and_grad(theta, include_l1=False)
            obj += l1 * float(x[: 2 * m].sum()) / problem.total
            gw = g[:m]
            grad = np.concatenate([gw + l1 / problem.total, -gw + l1 / problem.total, g[m:]])
            cache.update(x=x.copy(), loss=loss, grad=grad)
            return obj, grad

        x0 = np.concatenate([np.maximum(theta0[:m], 0), np.maximum(-theta0[:m], 0), theta0[m:]])
        bounds = [(0.0, None)] * (2 * m) + [(None, None)] * (len(theta0) - m)
    else:

        def to_theta(x: np.ndarray) -> np.ndarray:
            return x

        def fun(x: np.ndarray):
            obj, loss, grad = problem.value_and_grad(x)
            cache.update(x=x.copy(), loss=loss, grad=grad)
            return obj, grad

        x0 = theta0
        bounds = None

    plain_fun = fun

    def fun(x: np.ndarray):  # noqa: F811 - memoized: SciPy evaluates the starting point again
        if cache.get("x") is not None and np.array_equal(cache["x"], x):
            return cache["obj"], cache["grad"]
        obj, grad = plain_fun(x)
        cache["obj"] = obj
        return obj, grad

    state = {"x": x0.copy(), "grad": None}
    state["grad"] = fun(x0)[1]

    def callback(intermediate_result):
        x = intermediate_result.x
        fun(x)
        step = float(np.linalg.norm(x - state["x"]))
        gnorm = float(np.linalg.norm(state["grad"]))
        state["x"], state["grad"] = x.copy(), cache["grad"]
        if tracker.record(
            problem.unpack(to_theta(x)), float(cache["loss"]), step / gnorm if gnorm > 0 else 0.0
        ):
            raise StopIteration

    result = scipy.optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        callback=callback,
        options={
            "maxiter": options["max_iterations"],
            "maxfun": 50 * options["max_iterations"] + 100,
            "ftol": 1e-15,
            "gtol": 1e-12,
            "maxcor": 10,
        },
    )
    if not tracker.rows:  # converged before the first iteration completed (e.g. a constant label)
        obj, loss, _ = problem.value_and_grad(to_theta(result.x))
        tracker.record(problem.unpack(to_theta(result.x)), loss, 0.0)
    return problem.unpack(to_theta(result.x))


def _gradient_descent(problem: _Problem, options: dict, tracker: _Tracker) -> GlmParams:
    theta = problem.initial()
    lr = options["learn_rate"]
    m = problem.m
    for _ in range(options["max_iterations"]):
        _, _, grad = problem.value_and_grad(theta)
        theta = theta - lr * grad
        if problem.l1:
            threshold = lr * problem.l1 / problem.total
            theta[:m] = np.sign(theta[:m]) * np.maximum(np.abs(theta[:m]) - threshold, 0.0)
        _, loss, _ = problem.value_and_grad(theta)
        if not np.isfinite(loss):
            raise BqmlError(
                f"Training diverged with LEARN_RATE={lr}; use a smaller LEARN_RATE or "
                "LEARN_RATE_STRATEGY='LINE_SEARCH'."
            )
        if tracker.record(problem.unpack(theta), loss, lr):
            break
    return problem.unpack(theta)


def _normal_equation(design: Design, y: np.ndarray, fit_intercept: bool, l2: float) -> GlmParams:
    p, q, n = design.num.shape[1], design.q, design.n
    d = p + q + (1 if fit_intercept else 0)
    if n * d <= DENSE_LSTSQ_LIMIT:
        blocks = [design.num]
        if q:
            blocks.append(design.onehot().toarray())
        if fit_intercept:
            blocks.append(np.ones((n, 1)))
        X = np.hstack(blocks) if len(blocks) > 1 else blocks[0]
        target = y
        if l2 > 0:
            ridge = np.zeros((p + q, d))
            ridge[:, : p + q] = np.sqrt(l2) * np.eye(p + q)
            X = np.vstack([X, ridge])
            target = np.concatenate([y, np.zeros(p + q)])
        coef = np.linalg.lstsq(X, target, rcond=None)[0]
    else:
        # Gram matrix XᵀX from the compact design (never materializing the one-hot columns).
        gram = np.zeros((d, d))
        rhs = np.zeros(d)
        gram[:p, :p] = design.num.T @ design.num
        rhs[:p] = design.num.T @ y
        if q:
            onehot = design.onehot()
            cross = np.asarray((onehot.T @ design.num))  # q × p
            gram[p : p + q, :p] = cross
            gram[:p, p : p + q] = cross.T
            gram[p : p + q, p : p + q] = (onehot.T @ onehot).toarray()
            rhs[p : p + q] = onehot.T @ y
        if fit_intercept:
            k = p + q
            col_sums = np.concatenate(
                [design.num.sum(axis=0), np.asarray(design.onehot().sum(axis=0)).ravel() if q else []]
            )
            gram[k, :k] = col_sums
            gram[:k, k] = col_sums
            gram[k, k] = n
            rhs[k] = y.sum()
        if l2 > 0:
            gram[np.arange(p + q), np.arange(p + q)] += l2
        coef = scipy.linalg.lstsq(gram, rhs, lapack_driver="gelsd")[0]
    intercept = coef[p + q] if fit_intercept else 0.0
    return GlmParams(coef[:p].copy(), coef[p : p + q].copy(), np.asarray(float(intercept)))


# --------------------------------------------------------------------------------------------------
# Class weights
# --------------------------------------------------------------------------------------------------
def class_weight_table(
    y: np.ndarray, n_classes: int, auto: bool, given: list | None, class_names: list[str]
) -> np.ndarray | None:
    """Per-class weights, or None. ``class_names``: each class as a BigQuery STRING."""
    if auto:
        # total_input_rows / (input_rows_for_class_n * number_of_unique_classes)
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        present = counts > 0
        table = np.ones(n_classes)
        table[present] = len(y) / (counts[present] * present.sum())
        return table
    if given is None:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    table = np.full(n_classes, np.nan)
    for label, weight in given:
        key = base.class_key(label)
        if key not in index:
            raise BqmlError(
                f"CLASS_WEIGHTS names label {label!r}, which is not a label value; labels: "
                f"{', '.join(class_names)}."
            )
        table[index[key]] = weight
    missing = [class_names[i] for i in range(n_classes) if np.isnan(table[i])]
    if missing:
        raise BqmlError(
            f"CLASS_WEIGHTS must give a weight for every class label; missing: {', '.join(missing)}."
        )
    return table


# --------------------------------------------------------------------------------------------------
# ML.EXPLAIN_PREDICT, ML.GLOBAL_EXPLAIN, ML.WEIGHTS
# --------------------------------------------------------------------------------------------------
def _glm_contributions(
    model: Any, design: Design, w_num: np.ndarray, w_cat: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Per processed input: weight × standardized value (numeric), weight of the row's category
    (one-hot blocks; 0 for NULL-unseen / unseen). ``w_*`` are vectors, or (rows, ·) matrices."""
    inputs = model.prep.processed_inputs()
    out = np.empty((design.n, len(inputs)))
    offsets = np.cumsum([0] + design.sizes[:-1]) if design.sizes else []
    for j, entry in enumerate(inputs):
        if entry["kind"] == "numeric":
            col = design.num[:, entry["index"]]
            out[:, j] = col * (w_num[entry["index"]] if w_num.ndim == 1 else w_num[:, entry["index"]])
        else:
            b = entry["index"]
            codes = design.codes[b]
            block = np.arange(design.sizes[b]) + offsets[b]
            if w_cat.ndim == 1:
                ext = np.append(w_cat[block], 0.0)
                out[:, j] = ext[codes]
            else:
                ext = np.hstack([w_cat[:, block], np.zeros((w_cat.shape[0], 1))])
                out[:, j] = ext[np.arange(design.n), codes]
    return [e["processed_input"] for e in inputs], out


def explain(model: Any, design: Design, threshold: float | None, class_level: bool) -> base.Explanation:
    params = GlmParams.from_arrays(model.arrays)
    z = linear_predictor(params, design)
    if not model.is_classifier:
        names, attr = _glm_contributions(model, design, params.w_num, params.w_cat)
        baseline = np.full(design.n, float(params.intercept))
        return base.Explanation(names, attr, baseline, z)
    probs = output(model.model_type, z)
    predicted = base.predicted_index(probs, threshold)
    probability = probs[np.arange(design.n), predicted]
    if probs.shape[1] == 2:
        names, attr = _glm_contributions(model, design, params.w_num, params.w_cat)
        sign = np.where(predicted == 1, 1.0, -1.0)
        per_class = [-attr, attr] if class_level else None
        return base.Explanation(
            names,
            attr * sign[:, None],
            sign * float(params.intercept),
            sign * z,
            predicted,
            probability,
            per_class,
        )
    w_num = params.w_num.T[predicted]  # (n, p): the predicted class's weights
    w_cat = params.w_cat.T[predicted]
    names, attr = _glm_contributions(model, design, w_num, w_cat)
    per_class = None
    if class_level:
        per_class = [
            _glm_contributions(model, design, params.w_num[:, c], params.w_cat[:, c])[1]
            for c in range(probs.shape[1])
        ]
    rows = np.arange(design.n)
    return base.Explanation(
        names, attr, params.intercept[predicted], z[rows, predicted], predicted, probability, per_class
    )


_CATEGORY_WEIGHTS = pa.list_(pa.struct([("category", pa.string()), ("weight", pa.float64())]))


def weights_table(model: Any, standardize: bool) -> pa.Table:
    """ML.WEIGHTS (engine.DOCS["weights"])."""
    params = GlmParams.from_arrays(model.arrays)
    multi = np.ndim(params.intercept) == 1
    classes = model.label.get("class_names") if multi else [None]
    inputs = model.prep.processed_inputs()
    sizes = [s.size for s in model.prep.categorical]
    offsets = np.cumsum([0] + sizes[:-1]) if sizes else []
    rows_input, rows_weight, rows_categories, rows_class = [], [], [], []
    for c, class_name in enumerate(classes):
        w_num = params.w_num[:, c] if multi else params.w_num
        w_cat = params.w_cat[:, c] if multi else params.w_cat
        intercept = float(params.intercept[c] if multi else params.intercept)
        for entry in inputs:
            rows_input.append(entry["processed_input"])
            rows_class.append(class_name)
            if entry["kind"] == "numeric":
                spec = entry["spec"]
                w = float(w_num[entry["index"]])
                if not standardize:
                    # Undo the standardization: w·(x - center)/scale = (w/scale)·x - w·center/scale.
                    intercept -= w * spec.center / spec.scale
                    w = w / spec.scale
                rows_weight.append(w)
                rows_categories.append([])
            else:
                spec = entry["spec"]
                block = w_cat[offsets[entry["index"]] : offsets[entry["index"]] + spec.size]
                rows_weight.append(None)
                rows_categories.append(
                    [{"category": cat, "weight": float(v)} for cat, v in zip(spec.categories, block)]
                )
        rows_input.append("__INTERCEPT__")
        rows_weight.append(intercept)
        rows_categories.append([])
        rows_class.append(class_name)
    columns = {
        "processed_input": pa.array(rows_input, type=pa.string()),
        "weight": pa.array(rows_weight, type=pa.float64()),
        "category_weights": pa.array(rows_categories, type=_CATEGORY_WEIGHTS),
    }
    if multi:
        columns["class_label"] = pa.array(rows_class, type=pa.string())
    return pa.table(columns)


# --------------------------------------------------------------------------------------------------
# The family: LINEAR_REG and LOGISTIC_REG
# --------------------------------------------------------------------------------------------------
def output(model_type: str, z: np.ndarray) -> np.ndarray:
    """The linear predictor as the model's output: values, or class probabilities."""
    if model_type == "LINEAR_REG":
        return z
    if z.ndim == 1:
        p = expit(z)
        return np.column_stack([1.0 - p, p])
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# "The CREATE MODEL statement for generalized linear models", option by option ("Arguments"):
# https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create-glm
# (INPUT_LABEL_COLS, the DATA_SPLIT_* options, AUTO_CLASS_WEIGHTS, CLASS_WEIGHTS and
# ENABLE_GLOBAL_EXPLAIN are the shared options of lakehouse_ml/engine/options.py.)
GlmOptions = opt.option_model(
    "GlmOptions",
    {
        "optimize_strategy": (
            "AUTO_STRATEGY",
            opt.enum("AUTO_STRATEGY", "BATCH_GRADIENT_DESCENT", "NORMAL_EQUATION"),
        ),
        "learn_rate_strategy": ("LINE_SEARCH", opt.enum("LINE_SEARCH", "CONSTANT")),
        "learn_rate": (0.1, opt.number(0.0, low_open=True)),
        "ls_init_learn_rate": (0.1, opt.number(0.0, low_open=True)),
        "calculate_p_values": (False, opt.boolean),
        "fit_intercept": (True, opt.boolean),
        "category_encoding_method": ("ONE_HOT_ENCODING", opt.enum("ONE_HOT_ENCODING", "DUMMY_ENCODING")),
        "l1_reg": (0.0, opt.number(0.0)),
        "l2_reg": (0.0, opt.number(0.0)),
        "max_iterations": (20, opt.integer(1)),
        "warm_start": (False, opt.boolean),
        "early_stop": (True, opt.boolean),
        "min_rel_progress": (0.01, opt.number(0.0)),
        "data_split_test_fraction": (0.0, opt.number(0.0, 1.0, high_open=True)),
        **opt.TUNING,
    },
)


class GlmFamily(base.ModelFamily):
    kinds = {"LINEAR_REG": Kind.REGRESSOR, "LOGISTIC_REG": Kind.CLASSIFIER}
    preprocessing = "linear"
    functions = base.BASE_FUNCTIONS | {"ML.EXPLAIN_PREDICT", "ML.GLOBAL_EXPLAIN", "ML.WEIGHTS"}
    fast_serving = True
    # GLM page, Limitations: "the label column can contain up to 50 unique values"
    max_classes = 50

    options_model = GlmOptions

    def shared_option_names(self, model_type: str) -> tuple[str, ...]:
        if model_type == "LINEAR_REG":
            # AUTO_CLASS_WEIGHTS: "Only use this option with logistic regression models."
            return tuple(k for k in opt.SHARED if k not in ("auto_class_weights", "class_weights"))
        return tuple(opt.SHARED)

    def check_options(self, model_type: str, given: Mapping[str, Any], o: dict[str, Any]) -> None:
        """The rules between LINEAR_REG's and LOGISTIC_REG's options."""
        # GLM_DOC, LEARN_RATE: "If LEARN_RATE_STRATEGY is set to LINE_SEARCH, an error is returned."
        if "learn_rate" in given and o["learn_rate_strategy"] == "LINE_SEARCH":
            raise BqmlError(
                "LEARN_RATE can only be set with LEARN_RATE_STRATEGY='CONSTANT'; with LINE_SEARCH "
                "(the default) set LS_INIT_LEARN_RATE instead."
            )
        if "ls_init_learn_rate" in given and o["learn_rate_strategy"] == "CONSTANT":
            raise BqmlError(
                "LS_INIT_LEARN_RATE applies to LEARN_RATE_STRATEGY='LINE_SEARCH'; with CONSTANT set "
                "LEARN_RATE."
            )
        # GLM_DOC, NORMAL_EQUATION: "You can't use NORMAL_EQUATION [if] you specified a value for L1_REG".
        if o["optimize_strategy"] == "NORMAL_EQUATION" and o["l1_reg"] > 0:
            raise BqmlError(
                "OPTIMIZE_STRATEGY='NORMAL_EQUATION' cannot be used with L1_REG; use "
                "BATCH_GRADIENT_DESCENT or AUTO_STRATEGY."
            )
        if o["optimize_strategy"] == "NORMAL_EQUATION" and model_type == "LOGISTIC_REG":
            raise BqmlError(
                "OPTIMIZE_STRATEGY='NORMAL_EQUATION' computes the least-squares solution of a linear "
                "regression; LOGISTIC_REG trains with BATCH_GRADIENT_DESCENT (or AUTO_STRATEGY)."
            )
        opt.check_class_weights(o)

    def train(self, ctx: Any) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
        meta, prep, y_all, data_split = ctx.meta, ctx.prep, ctx.y_all, ctx.data_split
        design = prep.design(ctx.frame)
        train_mask = ~data_split.eval_mask
        has_eval = data_split.eval_rows > 0
        train_design = design.rows(train_mask) if has_eval else design
        eval_design = design.rows(data_split.eval_mask) if has_eval else None
        y_train, y_eval = y_all[train_mask], (y_all[data_split.eval_mask] if has_eval else None)
        label = meta["label"]
        n_classes = len(label["classes"]) if label["classes"] is not None else 0
        weights = eval_weights = None
        if self.is_classifier(ctx.model_type):
            table = class_weight_table(
                y_train,
                len(label["classes"]),
                bool(ctx.o.get("auto_class_weights")),
                ctx.o.get("class_weights"),
                label["class_names"],
            )
            if table is not None:
                meta["class_weights"] = table.tolist()
                weights = table[y_train]
                eval_weights = table[y_eval] if has_eval else None
        result = train(
            ctx.model_type,
            ctx.o,
            train_design,
            y_train,
            weights,
            eval_design,
            y_eval,
            eval_weights,
            n_classes,
            ctx.say,
        )
        meta["strategy"] = result.strategy
        meta["training_info"] = result.iterations
        eval_rows = eval_design if has_eval else train_design
        y_eval_rows = y_eval if has_eval else y_train
        scores = output(ctx.model_type, linear_predictor(result.params, eval_rows))
        arrays = result.params.arrays()
        if self.is_classifier(ctx.model_type):
            meta["evaluation"] = classification_metrics(y_eval_rows, scores, 0.5)
            arrays.update(base.evaluation_arrays(y_eval_rows, scores))
        else:
            meta["evaluation"] = regression_metrics(y_eval_rows, scores)
        meta["evaluation_rows"] = "evaluation" if has_eval else "training"
        if ctx.o.get("enable_global_explain"):
            ctx.say("computing global explanations")
            meta["global_explain"] = ctx.global_explain(ctx.view(result.params.arrays()), eval_rows)
        return arrays, {}

    def scores(self, model: Any, features: Any) -> np.ndarray:
        z = linear_predictor(GlmParams.from_arrays(model.arrays), model.prep.design(features))
        return output(model.model_type, z)

    def explain(
        self,
        model: Any,
        features: Any,
        threshold: float | None,
        approximate: bool = False,
        *,
        prepared: Design | None = None,
        class_level: bool = False,
    ) -> base.Explanation:
        """Shapley values of a linear model: weight × standardized value per processed input,
        baseline the intercept; classifiers explain the predicted class in logit space."""
        design = prepared if prepared is not None else model.prep.design(features)
        return explain(model, design, threshold, class_level)

    def weights(self, model: Any, standardize: bool) -> pa.Table:
        return weights_table(model, standardize)


FAMILY = base.register(GlmFamily())
