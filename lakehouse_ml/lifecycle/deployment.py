"""Registry versions, the champion/challenger gate and endpoint deployments of served models.

The logic behind the registry version and endpoint deployment assets, testable without Dagster.
It talks to the three seams only (:class:`~lakehouse_ml.backends.warehouse.Warehouse`,
:class:`~lakehouse_ml.backends.registry.ModelRegistry`,
:class:`~lakehouse_ml.backends.endpoints.Endpoints`), so it runs unchanged on Vertex AI and on the
local registry and endpoint server.

Life of a version (aliases from the model's :class:`~lakehouse_ml.lifecycle.models.Serving` spec):

1. A training run's ``CREATE MODEL`` of its own BigQuery ML model with ``MODEL_REGISTRY='VERTEX_AI'``
   registers a new version (BigQuery does it on gcp, the local BigQuery ML engine locally).
   :func:`register_candidate` finds the version of that run's model and gives it the candidate
   alias (``challenger``).
2. :func:`gate` compares the candidate with the version holding the serving alias
   (``champion``) on the same fresh rows (``sql/gate/<model>.sql``): both versions' BigQuery ML
   models are alive (each run has its own), so both are scored with ``ML.PREDICT`` on the
   warehouse, and the gate sends no endpoint traffic. Classifiers and regressors are compared on
   labelled rows with the spec's gate metric in ``ML.EVALUATE``'s definition
   (:mod:`lakehouse_ml.bigquery.metrics`); k-means models on the Davies-Bouldin index of each version's
   clusters of the same rows, in one feature space (:func:`cluster_scores`). The first version of
   a model passes (nothing serves yet).
3. :func:`promote` moves the serving alias and ``default`` to the winner (models.mergeVersionAliases).
   A loser keeps only the candidate alias: registered, never deployed.
4. :func:`deploy` puts the version holding the serving alias on the model's endpoint (creating it
   when missing): alone at 100% on an empty endpoint, else as a canary at ``canary_percent``; a
   smoke test sends real predictions and must see the new version answer; then it is promoted to
   100% and the versions no longer wanted are undeployed. A canary that fails its smoke test is
   rolled back (undeployed; the traffic returns to what served before).
5. :func:`collect_garbage` then drops the BigQuery ML models of older runs whose version is
   neither deployed nor holds an alias (beyond the newest ``keep_models``), which deletes their
   registry versions; a drop right after an undeploy can still be refused
   (googleapis/python-aiplatform#2807), so it is retried with backoff.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import davies_bouldin_score

from lakehouse_ml.backends.endpoints import Endpoints, ensure_serving
from lakehouse_ml.backends.registry import ModelRegistry, ModelVersion
from lakehouse_ml.backends.warehouse import Warehouse
from lakehouse_ml.bigquery import metrics as bqml_metrics
from lakehouse_ml.bigquery import served
from lakehouse_ml.bigquery.dialect import parse_select_list, transform_output_names
from lakehouse_ml.bigquery.preprocess import Preprocessor
from lakehouse_ml.bigquery.registry import DEFAULT_ALIAS
from lakehouse_ml.bigquery.sqlfiles import read_sql
from lakehouse_ml.bigquery.templates import bind_template
from lakehouse_ml.core.errors import EndpointError, RegistryError, WarehouseError
from lakehouse_ml.core.identifiers import check_identifier
from lakehouse_ml.lifecycle.baseline import baseline_table
from lakehouse_ml.lifecycle.models import (
    CLASSIFIER_TYPES,
    CLUSTERING_TYPES,
    REGRESSOR_TYPES,
    ModelSpec,
    Serving,
    is_training_model,
    positive_label,
    training_models,
)

# Instances per predict request: well under the 1.5 MB payload limit for these feature rows.
PREDICT_BATCH = 100
SMOKE_INSTANCES = 20
# A canary at p% answers a request with probability p/100: at 10%, 300 requests miss it with
# probability 0.9**300 ≈ 2e-14.
CANARY_MAX_REQUESTS = 300
CANARY_MIN_ANSWERS = 3

Progress = Callable[[str], None]


def serving_spec(spec: ModelSpec) -> Serving:
    if spec.serving is None:
        raise ValueError(f"{spec.name} is not served: give its ModelSpec a Serving entry.")
    return spec.serving


def is_registered(spec: ModelSpec) -> bool:
    """Whether ``CREATE MODEL`` registers the model in the Vertex AI Model Registry."""
    return str(spec.registry_options.get("model_registry", "")).upper() == "VERTEX_AI"


def registry_model_id(spec: ModelSpec) -> str:
    """The Vertex AI model id the BigQuery ML model registers under (VERTEX_AI_MODEL_ID, default:
    the model name)."""
    options = spec.registry_options
    if not is_registered(spec):
        raise ValueError(
            f"{spec.name} is served but not registered: add model_registry = 'VERTEX_AI' to the OPTIONS "
            f"of sql/{spec.sql_path}."
        )
    return str(options.get("vertex_ai_model_id") or spec.name)


def to_instances(spec: ModelSpec, table: Any) -> list[dict[str, Any]]:
    """The rows of a ``pyarrow.Table`` as the model's prediction instances: JSON-ready values, a
    NULL as the served model takes it (its type's sentinel for a model with a TRANSFORM clause):
    the website's conversion (:func:`lakehouse_ml.bigquery.served.instances`)."""
    return served.instances(table, transform=bool(spec.statement.transform))


# -- registry --------------------------------------------------------------------------------------


def registered_version(
    warehouse: Warehouse, registry: ModelRegistry, spec: ModelSpec, model: str
) -> ModelVersion:
    """The registry version of the spec's BigQuery ML model ``model`` (a training run's)."""
    version = registry.find_bqml_version(warehouse.model_source(model))
    if version is None:
        raise RegistryError(
            f"BigQuery ML model {model} is not registered in the model registry: its CREATE MODEL has no "
            f"MODEL_REGISTRY='VERTEX_AI', or its version was deleted. Materialize {spec.name} again to train and "
            "register a new version."
        )
    if version.model_id != registry_model_id(spec):
        raise RegistryError(
            f"BigQuery ML model {model} is registered as {version.model_id!r}, not {registry_model_id(spec)!r}: check "
            f"VERTEX_AI_MODEL_ID in sql/{spec.sql_path}."
        )
    return version


def register_candidate(
    warehouse: Warehouse, registry: ModelRegistry, spec: ModelSpec, model: str
) -> ModelVersion:
    """The version the training run's model ``model`` registered, with the candidate alias
    (unless it already serves)."""
    serving = serving_spec(spec)
    version = registered_version(warehouse, registry, spec, model)
    if serving.serving_alias not in version.aliases and serving.candidate_alias not in version.aliases:
        version = registry.merge_version_aliases(
            version.model_id, version.version_id, [serving.candidate_alias]
        )
    return version


def bqml_model_of(
    warehouse: Warehouse, registry: ModelRegistry, spec: ModelSpec, version: ModelVersion
) -> str:
    """The BigQuery ML model behind a registry version: its source where the registry says it
    (locally), else the one of the spec's models that BigQuery reports as that version (its
    training run's ``vertexAiModelVersion``)."""
    source = version.source or ""
    prefix = warehouse.model_source("x")[: -len("x")]
    if source.startswith(prefix) and is_training_model(spec, source[len(prefix) :]):
        found = registry.find_bqml_version(source)  # the model of that name is still this version
        if found is not None and (found.model_id, found.version_id) == (version.model_id, version.version_id):
            return source[len(prefix) :]
    for model, _ in training_models(warehouse, spec):
        found = registry.find_bqml_version(warehouse.model_source(model))
        if (
            found is not None
            and found.model_id == version.model_id
            and found.version_id == version.version_id
        ):
            return model
    raise RegistryError(
        f"No BigQuery ML model of {spec.name} in {warehouse.describe()} is version {version.version_id} of "
        f"{version.model_id}: its model was dropped or replaced, so it cannot be scored with ML.PREDICT. Deploy a "
        f"version whose model exists (run config `version` of {spec.name}_deployment), then retry."
    )


@dataclass
class GateResult:
    """The champion/challenger comparison."""

    passed: bool
    reason: str
    metric: str
    direction: str
    candidate_version: str
    serving_version: str | None = None
    candidate_value: float | None = None
    serving_value: float | None = None
    rows: int = 0
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    serving_metrics: dict[str, float] = field(default_factory=dict)
    candidate_model: str | None = None  # the BigQuery ML models the two versions were scored with
    serving_model: str | None = None


def _score(spec: ModelSpec, labels: pd.Series, scores: np.ndarray) -> dict[str, float]:
    """ML.EVALUATE's metrics of predictions: ``scores`` are the positive-class probabilities of a
    binary classifier or the predicted values of a regressor."""
    if spec.model_type in CLASSIFIER_TYPES:
        positive = positive_label(labels)
        actual = (labels == positive).to_numpy().astype(np.int64)
        probs = np.column_stack([1.0 - scores, scores])
        return bqml_metrics.classification(actual, probs)
    if spec.model_type in REGRESSOR_TYPES:
        return bqml_metrics.regression(labels.to_numpy(float), scores)
    raise ValueError(
        f"{spec.name}: the champion/challenger gate compares predictions of classifiers and regressors; "
        f"{spec.model_type} is not supported."
    )


def _scores(spec: ModelSpec, frame: pd.DataFrame, label: str, positive: Any) -> np.ndarray:
    """``ML.PREDICT``'s positive-class probabilities of a binary classifier (the class's
    ``prob`` in ``predicted_<label>_probs``) or predicted values of a regressor."""
    if spec.model_type in CLASSIFIER_TYPES:
        return np.array(
            [
                next((float(p["prob"]) for p in probs if p["label"] == positive), 0.0)
                for probs in frame[f"predicted_{label}_probs"]
            ]
        )
    return frame[f"predicted_{label}"].to_numpy(float)


def gate(
    warehouse: Warehouse,
    registry: ModelRegistry,
    spec: ModelSpec,
    candidate: ModelVersion,
    candidate_model: str,
) -> GateResult:
    """Compare ``candidate`` (registered from the BigQuery ML model ``candidate_model``) with the
    serving version on the same fresh rows (``sql/gate/<model>.sql``), both scored with
    ``ML.PREDICT``: labelled rows for classifiers and regressors, the rows a k-means model clusters
    for KMEANS (:func:`_clustering_gate`)."""
    serving = serving_spec(spec)
    model_id = registry_model_id(spec)
    result = GateResult(
        passed=True,
        reason="",
        metric=spec.gate.metric,
        direction=spec.gate.direction,
        candidate_version=candidate.version_id,
    )
    champion = registry.find_alias(model_id, serving.serving_alias)
    if champion is None:
        result.reason = (
            f"No version of {model_id} holds '{serving.serving_alias}' "
            f"yet: version {candidate.version_id} is the first to serve."
        )
        return result
    result.serving_version = champion.version_id
    if champion.version_id == candidate.version_id:
        result.reason = f"Version {candidate.version_id} already holds '{serving.serving_alias}'."
        return result
    serving_model = bqml_model_of(warehouse, registry, spec, champion)
    result.candidate_model, result.serving_model = candidate_model, serving_model
    gate_query = read_sql(f"gate/{spec.name}.sql")
    rows = warehouse.query(gate_query)
    result.rows = len(rows)
    if spec.model_type in CLUSTERING_TYPES:
        compared = _clustering_gate(warehouse, spec, candidate_model, serving_model, rows, result)
    else:
        compared = _supervised_gate(warehouse, spec, candidate_model, serving_model, gate_query, rows, result)
    if not compared:
        result.passed = False
        result.reason += (
            f" Version {candidate.version_id} is not promoted. Load newer days, then materialize again."
        )
        return result
    metric = spec.gate.metric
    if metric not in result.candidate_metrics:
        raise ValueError(
            f"{spec.name}: gate metric {metric!r} is not one of {sorted(result.candidate_metrics)}."
        )
    result.candidate_value = float(result.candidate_metrics[metric])
    result.serving_value = float(result.serving_metrics[metric])
    comparison = ">=" if spec.gate.direction == "higher" else "<="
    if math.isnan(result.candidate_value):
        result.passed = False
        verdict = f"loses: its {metric} is undefined ({_undefined_reason(spec)})"
    elif math.isnan(result.serving_value):
        result.passed = True
        verdict = (
            f"wins: the serving version's {metric} is undefined "
            f"({_undefined_reason(spec)}), the candidate's is {result.candidate_value:.4f}"
        )
    else:
        result.passed = spec.gate.better_or_equal(result.candidate_value, result.serving_value)
        verdict = ("wins" if result.passed else "loses") + (
            f": {metric} {result.candidate_value:.4f} against {result.serving_value:.4f}"
        )
    result.reason = (
        f"Candidate version {candidate.version_id} {verdict} for serving version {champion.version_id} on "
        f"{result.rows} fresh {'' if spec.model_type in CLUSTERING_TYPES else 'labelled '}rows, "
        "both scored with ML.PREDICT"
        f"{' (Davies-Bouldin in one feature space)' if spec.model_type in CLUSTERING_TYPES else ''} "
        f"(needs {comparison}, {spec.gate.direction} is better)."
    )
    if not result.passed:
        result.reason += " It stays registered as '" + serving.candidate_alias + "' and is not deployed."
    return result


def gate_rows_description(spec: ModelSpec) -> str:
    """What the gate compares the two versions on, for descriptions."""
    if spec.model_type in CLUSTERING_TYPES:
        return "rows, both versions' clusters of them scored in one feature space"
    return "labelled rows"


def _undefined_reason(spec: ModelSpec) -> str:
    if spec.model_type in CLUSTERING_TYPES:
        return "fewer than two clusters hold rows"
    return "the metric needs rows it does not have"


def _supervised_gate(
    warehouse: Warehouse,
    spec: ModelSpec,
    candidate_model: str,
    serving_model: str,
    gate_query: str,
    rows: pd.DataFrame,
    result: GateResult,
) -> bool:
    """The gate metric of both versions' ``ML.PREDICT`` of the fresh labelled rows (ML.EVALUATE's
    definitions); False (with the reason) when there are no rows to compare on."""
    label = spec.label
    if label is None:
        raise ValueError(f"{spec.name}: the gate needs a labelled model.")
    if rows.empty or rows[label].nunique() < (2 if spec.model_type in CLASSIFIER_TYPES else 1):
        result.reason = (
            f"No fresh labelled rows to compare on (sql/gate/{spec.name}.sql returned {len(rows)} rows"
            f"{' with one class only' if len(rows) else ''})."
        )
        return False
    template = read_sql("models/evaluation/labelled_predictions.sql")
    positive = positive_label(rows[label]) if spec.model_type in CLASSIFIER_TYPES else None
    for model, metrics in (
        (candidate_model, result.candidate_metrics),
        (serving_model, result.serving_metrics),
    ):
        predicted = warehouse.query(bind_template(template, model, gate_query))
        metrics.update(_score(spec, predicted[label], _scores(spec, predicted, label, positive)))
    return True


def gate_table(spec: ModelSpec) -> str:
    """The scratch table a k-means gate loads its rows into."""
    return check_identifier(f"{spec.name}_gate_rows", "table")


def cluster_feature_columns(spec: ModelSpec, input_columns: Sequence[str]) -> list[str]:
    """The columns k-means clusters on: the TRANSFORM clause's outputs for a model created with
    one, else the model's input columns."""
    transform = spec.statement.transform
    if not transform:
        return list(input_columns)
    return transform_output_names(parse_select_list(transform), list(input_columns))


def cluster_scores(
    features: pd.DataFrame, assignments: dict[str, np.ndarray], *, standardize: bool = True
) -> dict[str, dict[str, float]]:
    """The Davies-Bouldin index (scikit-learn's ``davies_bouldin_score``, the definition
    ``ML.EVALUATE`` uses: clusters' own means as centres) of each named assignment of the same
    rows, in one feature space: ``features`` after BigQuery ML's k-means preprocessing (numerical
    columns standardized, a NULL as the mean; categorical columns one-hot) fitted on those rows.
    Also the number of clusters that hold rows. NaN when fewer than two do."""
    prep = Preprocessor.fit(features, list(features.columns), "kmeans", standardize=standardize)
    design = prep.design(features).dense()
    out: dict[str, dict[str, float]] = {}
    for name, labels in assignments.items():
        clusters = len(np.unique(labels))
        index = float(davies_bouldin_score(design, labels)) if 2 <= clusters < len(labels) else float("nan")
        out[name] = {"davies_bouldin_index": index, "clusters": float(clusters)}
    return out


def score_clusterings(
    warehouse: Warehouse, spec: ModelSpec, rows: pd.DataFrame, candidate_model: str, serving_model: str
) -> dict[str, dict[str, float]]:
    """:func:`cluster_scores` of both versions' clusters of ``rows`` (``ML.PREDICT`` of each
    version's BigQuery ML model on the warehouse), in the candidate's input space (``ML.TRANSFORM``
    for a model with a TRANSFORM clause). The rows go to the warehouse once, numbered, into
    :func:`gate_table`; every query reads that table (``sql/gate/cluster_assignments.sql``,
    ``sql/gate/cluster_features.sql``)."""
    table = gate_table(spec)
    loaded = rows.assign(gate_row=np.arange(len(rows), dtype=np.int64))
    warehouse.load_dataframe(loaded, table)
    assignments: dict[str, np.ndarray] = {}
    template = read_sql("gate/cluster_assignments.sql")
    for name, model in (("candidate", candidate_model), ("serving", serving_model)):
        assigned = (
            warehouse.query(bind_template(template, model, tables={"gate_rows": table}))
            .set_index("gate_row")
            .sort_index()
        )
        if len(assigned) != len(rows):
            raise WarehouseError(
                f"{spec.name}: the gate lost rows ({len(rows)} sent, {len(assigned)} clustered by {model})."
            )
        assignments[name] = assigned["CENTROID_ID"].to_numpy(np.int64)
    columns = cluster_feature_columns(spec, list(rows.columns))
    if spec.statement.transform:
        space = warehouse.query(
            bind_template(read_sql("gate/cluster_features.sql"), candidate_model, tables={"gate_rows": table})
        )
        space = space.set_index("gate_row").sort_index()
    else:
        space = loaded.set_index("gate_row")
    if len(space) != len(rows):
        raise WarehouseError(f"{spec.name}: the gate lost rows ({len(rows)} sent, {len(space)} transformed).")
    return cluster_scores(
        space[columns], assignments, standardize=bool(spec.options.get("standardize_features", True))
    )


def _clustering_gate(
    warehouse: Warehouse,
    spec: ModelSpec,
    candidate_model: str,
    serving_model: str,
    rows: pd.DataFrame,
    result: GateResult,
) -> bool:
    """Both versions cluster the same fresh rows with ``ML.PREDICT`` (``CENTROID_ID``). Each
    version's centroids live in its own standardized space, so the two clusterings are scored in
    one: the candidate's input space (``ML.TRANSFORM`` applies its TRANSFORM clause) with k-means
    preprocessing fitted on the fresh rows (:func:`cluster_scores`). False when there are too
    few rows to compare on."""
    if spec.gate.metric != "davies_bouldin_index":
        raise ValueError(
            f"{spec.name}: the gate of a k-means model compares davies_bouldin_index, not {spec.gate.metric!r}."
        )
    needed = 2 * int(spec.options.get("num_clusters") or 2)
    if len(rows) < needed:
        result.reason = (
            "Too few fresh rows to compare clusterings on "
            f"(sql/gate/{spec.name}.sql returned {len(rows)}, {needed} needed)."
        )
        return False
    scores = score_clusterings(warehouse, spec, rows, candidate_model, serving_model)
    result.candidate_metrics, result.serving_metrics = scores["candidate"], scores["serving"]
    return True


def promote(registry: ModelRegistry, spec: ModelSpec, version: ModelVersion) -> ModelVersion:
    """Move the serving alias and ``default`` to ``version`` (and drop its candidate alias)."""
    serving = serving_spec(spec)
    aliases = [serving.serving_alias, DEFAULT_ALIAS]
    if serving.candidate_alias in version.aliases:
        aliases.append("-" + serving.candidate_alias)
    return registry.merge_version_aliases(version.model_id, version.version_id, aliases)


# -- endpoints -------------------------------------------------------------------------------------


@dataclass
class SmokeResult:
    """What a smoke test of an endpoint saw."""

    passed: bool
    requests: int = 0
    instances: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    example: dict[str, Any] | None = None

    def describe(self) -> str:
        seen = ", ".join(f"v{v}: {n}" for v, n in sorted(self.versions.items())) or "none"
        text = f"{self.requests} request(s), {self.instances} instance(s); versions answering: {seen}."
        return text + ("" if self.passed else " Problems: " + "; ".join(self.problems[:5]))


def _check_predictions(spec: ModelSpec, batch: list[dict], answer: dict, problems: list[str]) -> None:
    predictions = answer.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(batch):
        problems.append(
            f"expected {len(batch)} predictions, got "
            f"{len(predictions) if isinstance(predictions, list) else predictions!r}"
        )
        return
    fmt = spec.prediction_format()
    clusters = (
        int(spec.options.get("num_clusters") or 0) or None if spec.model_type in CLUSTERING_TYPES else None
    )
    for prediction in predictions:
        found = fmt.problems(prediction, num_clusters=clusters)
        if found:
            problems.append(f"{found[0]}: {prediction}")
            return


def smoke_test(
    endpoints: Endpoints,
    spec: ModelSpec,
    instances: Sequence[dict],
    *,
    must_answer: str | None = None,
    allowed_versions: set[str] | None = None,
    endpoint: str | None = None,
) -> SmokeResult:
    """Send real predictions through the model's endpoint and check every answer (the documented
    shape, :class:`~lakehouse_ml.bigquery.served.PredictionFormat`).

    ``must_answer``: a version that must answer at least :data:`CANARY_MIN_ANSWERS` requests (a
    canary: single-instance requests are sent until it has, up to :data:`CANARY_MAX_REQUESTS`).
    ``allowed_versions``: the versions allowed to answer. ``endpoint``: the endpoint's id, when
    the caller has resolved it (predictions then make no management call); default: the spec's
    endpoint name."""
    endpoint = endpoint or serving_spec(spec).endpoint
    result = SmokeResult(passed=False)
    if not instances:
        result.problems.append(f"no instances to send (sql/serving/{spec.name}.sql returned no rows)")
        return result
    versions: Counter = Counter()
    pool = list(instances)

    def send(batch: list[dict]) -> None:
        try:
            answer = endpoints.predict(endpoint, batch)
        except EndpointError as err:
            result.problems.append(str(err))
            return
        result.requests += 1
        result.instances += len(batch)
        version = str(answer.get("modelVersionId"))
        versions[version] += 1
        if allowed_versions is not None and version not in allowed_versions:
            result.problems.append(f"version {version} answered; expected one of {sorted(allowed_versions)}")
        _check_predictions(spec, batch, answer, result.problems)
        if result.example is None and answer.get("predictions"):
            result.example = {
                "instance": batch[0],
                "prediction": answer["predictions"][0],
                "modelVersionId": version,
            }

    send(pool[:SMOKE_INSTANCES])
    for i in range(min(SMOKE_INSTANCES, len(pool))):
        send([pool[i]])
    if must_answer is not None:
        i = 0
        while (
            versions[must_answer] < CANARY_MIN_ANSWERS
            and result.requests < CANARY_MAX_REQUESTS
            and not result.problems
        ):
            send([pool[i % len(pool)]])
            i += 1
        if versions[must_answer] < CANARY_MIN_ANSWERS:
            result.problems.append(
                f"version {must_answer} answered {versions[must_answer]} of {result.requests} requests"
            )
    result.versions = dict(versions)
    result.passed = not result.problems
    return result


@dataclass
class DeploymentResult:
    endpoint_id: str
    endpoint_name: str
    version: ModelVersion
    deployed_model_id: str | None
    traffic_split: dict[str, int]
    deployed_models: list[dict[str, Any]]
    actions: list[str]
    canary: SmokeResult | None
    smoke: SmokeResult | None
    rolled_back: bool = False
    server: str | None = None

    @property
    def passed(self) -> bool:
        return not self.rolled_back and self.smoke is not None and self.smoke.passed


def deploy(
    endpoints: Endpoints,
    spec: ModelSpec,
    version: ModelVersion,
    instances: Sequence[dict],
    *,
    canary_percent: int | None = None,
    promote_canary: bool = True,
    progress: Progress | None = None,
) -> DeploymentResult:
    """Serve ``version`` on the model's endpoint (see the module docstring); idempotent."""
    serving = serving_spec(spec)
    say = progress or (lambda message: None)
    if not version.deployable:
        raise EndpointError(
            f"{version.model_id} version {version.version_id} is a {version.model_type} model: Vertex AI registers "
            "these but cannot deploy them to an endpoint."
        )
    canary_percent = serving.canary_percent if canary_percent is None else int(canary_percent)
    if not 1 <= canary_percent <= 99:
        raise EndpointError(f"canary_percent is in 1..99, got {canary_percent}.")
    actions: list[str] = []
    server = ensure_serving(endpoints)
    info = endpoints.get_endpoint(serving.endpoint)
    if info is None:
        info = endpoints.create_endpoint(serving.endpoint)
        actions.append(f"created endpoint {serving.endpoint} ({info['endpoint_id']})")
        say(actions[-1])
    endpoint_id = info["endpoint_id"]
    mine = [
        d
        for d in info["deployed_models"]
        if d["model_id"] == version.model_id and str(d["version_id"]) == version.version_id
    ]
    others = [d for d in info["deployed_models"] if d not in mine]
    canary: SmokeResult | None = None
    rolled_back = False
    if mine:
        deployed_model_id = mine[0]["deployed_model_id"]
        actions.append(f"version {version.version_id} already deployed as {deployed_model_id}")
    elif not others:
        deployed_model_id = endpoints.deploy(
            endpoint_id,
            version.model_id,
            version.version_id,
            version.artifact_uri,
            traffic_percentage=100,
            machine_type=serving.machine_type,
            logging_sampling_rate=serving.logging_sampling_rate,
        )
        actions.append(f"deployed version {version.version_id} as {deployed_model_id} at 100%")
        say(actions[-1])
    else:
        deployed_model_id = endpoints.deploy(
            endpoint_id,
            version.model_id,
            version.version_id,
            version.artifact_uri,
            traffic_percentage=canary_percent,
            machine_type=serving.machine_type,
            logging_sampling_rate=serving.logging_sampling_rate,
        )
        actions.append(
            f"deployed version {version.version_id} as {deployed_model_id}: canary at {canary_percent}%"
        )
        say(actions[-1])
        allowed = {version.version_id} | {str(d["version_id"]) for d in others}
        canary = smoke_test(
            endpoints,
            spec,
            instances,
            must_answer=version.version_id,
            allowed_versions=allowed,
            endpoint=endpoint_id,
        )
        if not canary.passed:
            endpoints.undeploy(endpoint_id, deployed_model_id)
            rolled_back = True
            actions.append(f"canary failed its smoke test, rolled back: {canary.describe()}")
            say(actions[-1])
    if not rolled_back and promote_canary:
        info = endpoints.get_endpoint(endpoint_id)
        split = {
            d["deployed_model_id"]: (100 if d["deployed_model_id"] == deployed_model_id else 0)
            for d in info["deployed_models"]
        }
        if info["traffic_split"] != split:
            endpoints.set_traffic_split(endpoint_id, split)
            actions.append(f"promoted {deployed_model_id} (version {version.version_id}) to 100%")
            say(actions[-1])
        for d in info["deployed_models"]:
            if d["deployed_model_id"] != deployed_model_id:
                endpoints.undeploy(endpoint_id, d["deployed_model_id"])
                actions.append(f"undeployed {d['deployed_model_id']} (version {d['version_id']})")
                say(actions[-1])
    info = endpoints.get_endpoint(endpoint_id)
    live = {str(d["version_id"]) for d in info["deployed_models"] if d.get("traffic_percentage", 0) > 0}
    smoke = smoke_test(endpoints, spec, instances, allowed_versions=live or None, endpoint=endpoint_id)
    return DeploymentResult(
        endpoint_id=endpoint_id,
        endpoint_name=serving.endpoint,
        version=version,
        deployed_model_id=None if rolled_back else deployed_model_id,
        traffic_split=dict(info["traffic_split"]),
        deployed_models=list(info["deployed_models"]),
        actions=actions,
        canary=canary,
        smoke=smoke,
        rolled_back=rolled_back,
        server=server,
    )


@dataclass
class GarbageResult:
    """What :func:`collect_garbage` did: models dropped, kept (and why), not dropped (and why)."""

    dropped: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"dropped {', '.join(self.dropped)}" if self.dropped else "dropped nothing"]
        if self.kept:
            parts.append("kept " + ", ".join(f"{m} ({why})" for m, why in self.kept.items()))
        if self.failed:
            parts.append("could not drop " + ", ".join(f"{m} ({why})" for m, why in self.failed.items()))
        return "; ".join(parts)


# A BigQuery ML model whose version was just undeployed can still be refused for a while
# (googleapis/python-aiplatform#2807: a delete right after an undeploy, even after a 60 s sleep):
# the drop is retried with exponential backoff, 5 + 10 + 20 + 40 s, then left for the next run.
GC_ATTEMPTS = 5
GC_FIRST_DELAY_S = 5.0


def collect_garbage(
    warehouse: Warehouse,
    registry: ModelRegistry,
    endpoints: Endpoints,
    spec: ModelSpec,
    *,
    keep: int | None = None,
    attempts: int = GC_ATTEMPTS,
    first_delay_s: float = GC_FIRST_DELAY_S,
    sleep: Callable[[float], None] = time.sleep,
    progress: Progress | None = None,
) -> GarbageResult:
    """Drop the spec's BigQuery ML models beyond the newest ``keep`` (default: the spec's
    ``keep_models``) whose registry version is neither deployed on the model's endpoint nor holds
    an alias; dropping a registered model deletes its version. Their monitoring baselines go too.
    A refused drop is retried ``attempts`` times with exponential backoff; one that stays refused
    is reported, not raised (the next run tries again)."""
    serving = serving_spec(spec)
    keep = serving.keep_models if keep is None else int(keep)
    if keep < 1 or attempts < 1:
        raise ValueError(
            f"keep and attempts are at least 1 (the newest model always stays); got {keep} and {attempts}."
        )
    say = progress or (lambda message: None)
    result = GarbageResult()
    info = endpoints.get_endpoint(serving.endpoint)
    deployed = {(d["model_id"], str(d["version_id"])) for d in (info["deployed_models"] if info else [])}
    for position, (model, _) in enumerate(training_models(warehouse, spec)):
        if position < keep:
            continue
        version = registry.find_bqml_version(warehouse.model_source(model))
        if version is not None and (
            (version.model_id, version.version_id) in deployed or version.deployments
        ):
            where = ", ".join(version.deployments) or serving.endpoint
            result.kept[model] = f"version {version.version_id} is deployed ({where})"
            continue
        if version is not None and version.aliases:
            result.kept[model] = f"version {version.version_id} holds {', '.join(version.aliases)}"
            continue
        error = drop_model(warehouse, model, attempts, first_delay_s, sleep, say)
        if error is not None:
            result.failed[model] = error
            continue
        result.dropped.append(model)
        say(f"dropped {model}" + (f" (version {version.version_id})" if version is not None else ""))
        if version is not None:
            try:
                warehouse.drop_table(baseline_table(spec, version.version_id))
            except WarehouseError as err:
                result.failed[baseline_table(spec, version.version_id)] = str(err)
    return result


def still_deployed(err: Exception) -> bool:
    """Whether a refused drop says the version is (still) deployed, which passes with time
    (BigQuery's FAILED_PRECONDITION, or Vertex AI still undeploying); other errors do not."""
    text = str(err)
    return "FAILED_PRECONDITION" in text or "deployed or being deployed" in text or "being undeployed" in text


def drop_model(
    warehouse: Warehouse,
    model: str,
    attempts: int,
    delay: float,
    sleep: Callable[[float], None],
    say: Progress,
) -> str | None:
    """``DROP MODEL``, retried with exponential backoff while it is refused because the version is
    (still) deployed; None once dropped, else the error."""
    for attempt in range(1, attempts + 1):
        try:
            warehouse.execute(bind_template(read_sql("gc/drop_model.sql"), model))
            return None
        except WarehouseError as err:
            if attempt == attempts or not still_deployed(err):
                say(f"could not drop {model} after {attempts} attempts: {err}")
                return str(err)
            say(f"dropping {model} was refused ({err}); retrying in {delay:g} s")
            sleep(delay)
            delay *= 2
    return "no attempt was made"


def serving_version(registry: ModelRegistry, spec: ModelSpec, version: str | None = None) -> ModelVersion:
    """The version to deploy: ``version`` when given (a rollback moves the serving alias to it),
    else the one holding the serving alias."""
    serving = serving_spec(spec)
    model_id = registry_model_id(spec)
    if version is not None:
        chosen = registry.get_version(model_id, version)
        if serving.serving_alias not in chosen.aliases:
            chosen = promote(registry, spec, chosen)
        return chosen
    found = registry.find_alias(model_id, serving.serving_alias)
    if found is None:
        raise RegistryError(
            f"No version of {model_id} holds '{serving.serving_alias}': materialize {spec.name}_registry_version "
            "first (its champion/challenger check promotes a version)."
        )
    return found


def serving_rows(warehouse: Warehouse, spec: ModelSpec, limit: int = 200) -> list[dict]:
    """Instances the website would send now (``sql/serving/<model>.sql``), for smoke tests."""
    try:
        table = warehouse.query_arrow(read_sql(f"serving/{spec.name}.sql"))
    except FileNotFoundError as err:
        raise WarehouseError(f"{spec.name} is served but has no sql/serving/{spec.name}.sql: {err}") from None
    return to_instances(spec, table.slice(0, limit))
