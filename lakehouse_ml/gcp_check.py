"""``lakehouse-ml gcp-check``: what this project assumes of BigQuery ML and Vertex AI, checked in
the user's own Google Cloud project, with everything it makes deleted at the end.

In a scratch dataset (``lakehouse_ml_check_<UTC time>``) it:

1. trains two tiny BigQuery ML models registered in the Vertex AI Model Registry: a LOGISTIC_REG
   without TRANSFORM (features FLOAT64, INT64, STRING, BOOL) and a KMEANS with a TRANSFORM clause;
2. deploys each to an endpoint of its own, request-response logging on, into
   ``LAKEHOUSE_ML_GCP_DATASET`` (where the pipeline's endpoints log, so the Vertex AI service
   agent's access to it is what is checked; the check's log tables are dropped at the end);
3. sends ordinary instances, BOOL values and NULLs (JSON ``null`` to the model without TRANSFORM,
   the documented sentinels and JSON ``null`` to the model with one), and checks every answer
   against the documented shape (:class:`~lakehouse_ml.bigquery.served.PredictionFormat`);
4. measures how long the request-response log takes to show the requests (the value for
   ``LAKEHOUSE_ML_REQUEST_LOG_GRACE_SECONDS``);
5. retrains while deployed: a model of a new name under the same model id must register a new
   version; ``CREATE OR REPLACE`` of the deployed model must be refused with FAILED_PRECONDITION;
6. saves one real response per model type in the golden-fixture format of
   ``lakehouse_ml_tests/golden/`` (copy them there: the tests parse every fixture);
7. undeploys, deletes the endpoints, drops the models (which deletes their versions, retried
   after the undeploy) and deletes the dataset — also when a step fails.

A refused NULL is a finding, not a failure (the page documents sentinels, not JSON ``null``): the
report says what Vertex AI answered. A refused ordinary request fails the check.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lakehouse_ml.backends.gcp_warehouse import build_gcp_warehouse
from lakehouse_ml.backends.vertex import build_vertex_endpoints, build_vertex_registry
from lakehouse_ml.bigquery import served
from lakehouse_ml.bigquery.dialect import rename_created_model
from lakehouse_ml.bigquery.sqlfiles import read_sql
from lakehouse_ml.core.errors import EndpointError, RegistryError, WarehouseError
from lakehouse_ml.core.settings import Settings
from lakehouse_ml.lifecycle.deployment import drop_model

Progress = Callable[[str], None]

# The two models (sql/gcp_check/), created under run names.
MODEL_FILES = {"clf": "gcp_check/classifier.sql", "km": "gcp_check/kmeans.sql"}


def _create(warehouse: Any, key: str, name: str) -> None:
    """``CREATE OR REPLACE MODEL <name>`` from the model's file (only the name changes)."""
    warehouse.execute(rename_created_model(read_sql(MODEL_FILES[key]), name))


@dataclass
class CheckReport:
    """What the check found: one line per step (passed, what was seen), the fixtures saved, the
    measured request-log delay, and what was left behind (should be nothing)."""

    steps: list[tuple[str, bool, str]] = field(default_factory=list)
    fixtures: list[Path] = field(default_factory=list)
    log_delay_s: float | None = None
    leftovers: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.steps) and not self.leftovers

    def add(self, step: str, ok: bool, detail: str, progress: Progress) -> None:
        self.steps.append((step, ok, detail))
        progress(f"{'ok  ' if ok else 'FAIL'} {step}: {detail}")

    def table(self) -> str:
        width = max((len(s) for s, _, _ in self.steps), default=4)
        lines = [
            f"{'ok  ' if ok else 'FAIL'} {step.ljust(width)}  {detail}" for step, ok, detail in self.steps
        ]
        if self.log_delay_s is not None:
            lines.append(
                f"request-response log delay: {self.log_delay_s:.0f} s (set LAKEHOUSE_ML_REQUEST_LOG_GRACE_SECONDS "
                f"to at least {max(60, int(self.log_delay_s * 2)):d})"
            )
        lines += [f"fixture: {path}" for path in self.fixtures]
        lines += [f"LEFT BEHIND: {item}" for item in self.leftovers]
        return "\n".join(lines)


def _rows(n: int = 200, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "n": rng.integers(0, 20, n).astype("int64"),
            "s": rng.choice(["web", "app", "store"], n),
            "b": rng.random(n) < 0.5,
        }
    )
    frame["label"] = frame["x"] + np.where(frame["b"], 0.5, -0.5) + rng.normal(scale=0.5, size=n) > 0
    return frame


def _fixture(
    path: Path,
    source: str,
    model_type: str,
    label: str | None,
    label_type: str | None,
    request: dict,
    response: dict,
) -> Path:
    body = {
        "source": source,
        "model_type": model_type,
        "label": label,
        "label_type": label_type,
        "request": request,
        "response": response,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(body, indent=1) + "\n")
    temporary.replace(path)
    return path


def run_gcp_check(
    settings: Settings,
    out_dir: Path,
    *,
    progress: Progress = print,
    poll_s: float = 10.0,
    log_timeout_s: float = 1800.0,
    stamp: str | None = None,
) -> CheckReport:
    """Run the check (see the module docstring) on the gcp backend of ``settings``."""
    if settings.backend != "gcp" or not settings.gcp_project:
        raise ValueError(
            "gcp-check runs on the gcp backend: set LAKEHOUSE_ML_BACKEND=gcp and LAKEHOUSE_ML_GCP_PROJECT."
        )
    stamp = stamp or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    dataset = f"lakehouse_ml_check_{stamp}"
    scratch = settings.model_copy(update={"gcp_dataset": dataset})
    warehouse, registry = build_gcp_warehouse(scratch), build_vertex_registry(scratch)
    endpoints = build_vertex_endpoints(settings)  # logs into LAKEHOUSE_ML_GCP_DATASET
    log_dataset = build_gcp_warehouse(settings)
    report = CheckReport()
    made_endpoints: list[str] = []
    created_log_dataset = False
    source = (
        f"lakehouse-ml gcp-check in project {settings.gcp_project}, "
        f"location {settings.bigquery_location}, {stamp} UTC"
    )
    try:
        progress(f"Scratch dataset {settings.gcp_project}.{dataset}; models from sql/gcp_check/")
        created_log_dataset = log_dataset.ensure_dataset()
        warehouse.load_dataframe(_rows(), "rows")
        for key in MODEL_FILES:
            _create(warehouse, key, f"{key}_1")
        versions = {k: registry.find_bqml_version(warehouse.model_source(f"{k}_1")) for k in MODEL_FILES}
        report.add(
            "register",
            all(v is not None for v in versions.values()),
            ", ".join(
                f"{k}_1 -> {v.model_id}@{v.version_id}" if v else f"{k}_1 not registered"
                for k, v in versions.items()
            ),
            progress,
        )
        if not all(versions.values()):
            return report
        for key, version in versions.items():
            started = time.monotonic()
            info = endpoints.create_endpoint(f"lakehouse-ml-check-{key}-{stamp}")
            made_endpoints.append(info["endpoint_id"])
            endpoints.deploy(
                info["endpoint_id"], version.model_id, version.version_id, "", traffic_percentage=100
            )
            report.add(
                f"deploy {key}",
                True,
                f"endpoint {info['endpoint_id']} in {time.monotonic() - started:.0f} s",
                progress,
            )
        clf_endpoint, km_endpoint = made_endpoints
        sent_at = dt.datetime.now(dt.timezone.utc)
        answers = _send(report, endpoints, clf_endpoint, km_endpoint, progress)
        for key, (request, answer, model_type, label, label_type) in answers.items():
            report.fixtures.append(
                _fixture(
                    out_dir / f"{model_type.lower()}_gcp_check_{stamp}.json",
                    f"{source}, {key}",
                    model_type,
                    label,
                    label_type,
                    request,
                    answer,
                )
            )
        report.log_delay_s = _log_delay(
            report, endpoints, clf_endpoint, sent_at, poll_s, log_timeout_s, progress
        )
        _retrain_while_deployed(report, warehouse, registry, versions["clf"], progress)
    except (WarehouseError, RegistryError, EndpointError) as err:
        report.add("error", False, str(err), progress)
    finally:
        _clean_up(report, warehouse, endpoints, made_endpoints, progress)
        for endpoint_id in made_endpoints:  # the check's request logs in LAKEHOUSE_ML_GCP_DATASET
            try:
                log_dataset.drop_table(endpoints.log_destination(endpoint_id).rsplit(".", 1)[-1])
            except WarehouseError as err:
                report.leftovers.append(f"log table of endpoint {endpoint_id}: {err}")
        if created_log_dataset and not report.leftovers:
            log_dataset.delete_dataset()
    return report


def _predict(
    report: CheckReport,
    endpoints: Any,
    endpoint: str,
    step: str,
    instances: list,
    progress: Progress,
    *,
    finding: bool = False,
) -> dict | None:
    """The answer, or None when refused: a refusal is a finding (``finding``: an undocumented
    input, such as JSON null) or a failure (an ordinary instance)."""
    try:
        answer = endpoints.predict(endpoint, instances)
    except EndpointError as err:
        report.add(
            step,
            finding,
            ("refused (a finding, not a failure): " if finding else "refused: ") + str(err),
            progress,
        )
        return None
    return answer


def _send(report: CheckReport, endpoints: Any, clf: str, km: str, progress: Progress) -> dict[str, tuple]:
    """The predictions of step 3; the request and answer kept for a fixture, per model type."""
    out: dict[str, tuple] = {}
    clf_fmt = served.PredictionFormat("LOGISTIC_REG", "label", "BOOL")
    km_fmt = served.PredictionFormat("KMEANS")
    normal = [{"x": 0.5, "n": 3, "s": "web", "b": True}, {"x": -1.0, "n": 10, "s": "store", "b": False}]
    answer = _predict(report, endpoints, clf, "predict LOGISTIC_REG", normal, progress)
    if answer is not None:
        problems = [p for prediction in answer["predictions"] for p in clf_fmt.problems(prediction)]
        report.add(
            "LOGISTIC_REG shape",
            not problems,
            "; ".join(problems) or "as documented (BOOL label as 'true'/'false')",
            progress,
        )
        out["LOGISTIC_REG, BOOL feature"] = ({"instances": normal}, answer, "LOGISTIC_REG", "label", "BOOL")
    nulls = [{"x": None, "n": None, "s": None, "b": None}]
    answer = _predict(
        report, endpoints, clf, "JSON null, model without TRANSFORM", nulls, progress, finding=True
    )
    if answer is not None:
        problems = [p for prediction in answer["predictions"] for p in clf_fmt.problems(prediction)]
        report.add(
            "JSON null, model without TRANSFORM", not problems, "; ".join(problems) or "accepted", progress
        )
    sentinels = [
        {"x": 0.5, "n": 3, "s": "web"},
        {"x": served.NULL_FLOAT64, "n": served.NULL_INT64, "s": served.NULL_STRING},
    ]
    answer = _predict(report, endpoints, km, "predict KMEANS with NULL sentinels", sentinels, progress)
    if answer is not None:
        problems = [
            p for prediction in answer["predictions"] for p in km_fmt.problems(prediction, num_clusters=3)
        ]
        report.add(
            "KMEANS shape",
            not problems,
            "; ".join(problems) or "as documented (every centroid in id order)",
            progress,
        )
        out["KMEANS with TRANSFORM, NULL sentinels"] = (
            {"instances": sentinels},
            answer,
            "KMEANS",
            None,
            None,
        )
    _predict(
        report,
        endpoints,
        km,
        "JSON null, model with TRANSFORM",
        [{"x": None, "n": None, "s": None}],
        progress,
        finding=True,
    )
    return out


def _retrain_while_deployed(
    report: CheckReport, warehouse: Any, registry: Any, deployed: Any, progress: Progress
) -> None:
    _create(warehouse, "clf", "clf_2")
    version = registry.find_bqml_version(warehouse.model_source("clf_2"))
    kept = registry.get_version(deployed.model_id, deployed.version_id)
    report.add(
        "retrain while deployed",
        version is not None and int(version.version_id) > int(deployed.version_id) and kept is not None,
        f"clf_2 -> version {version.version_id if version else 'none'}; the deployed version {kept.version_id} stays",
        progress,
    )
    try:
        _create(warehouse, "clf", "clf_1")  # again: it replaces the deployed version's model
    except WarehouseError as err:
        report.add(
            "CREATE OR REPLACE of the deployed model",
            "FAILED_PRECONDITION" in str(err),
            f"refused: {err}",
            progress,
        )
    else:
        report.add(
            "CREATE OR REPLACE of the deployed model",
            False,
            "was NOT refused: the project's assumption is wrong",
            progress,
        )


def _log_delay(
    report: CheckReport,
    endpoints: Any,
    endpoint: str,
    since: dt.datetime,
    poll_s: float,
    timeout_s: float,
    progress: Progress,
) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        now = dt.datetime.now(dt.timezone.utc)
        if len(
            endpoints.request_log(endpoint, since - dt.timedelta(minutes=5), now + dt.timedelta(minutes=1))
        ):
            delay = (dt.datetime.now(dt.timezone.utc) - since).total_seconds()
            report.add("request-response log", True, f"first rows after {delay:.0f} s", progress)
            return delay
        time.sleep(poll_s)
    report.add(
        "request-response log",
        False,
        f"no row after {timeout_s:.0f} s: check the Vertex AI service agent's access to the dataset",
        progress,
    )
    return None


def _clean_up(
    report: CheckReport, warehouse: Any, endpoints: Any, made: list[str], progress: Progress
) -> None:
    """Undeploy and delete the endpoints, then delete the dataset with its models (each drop
    deletes a version; the dataset deletion drops them all), retried while Vertex AI still sees
    the versions as deployed (googleapis/python-aiplatform#2807)."""
    for endpoint in made:
        try:
            info = endpoints.get_endpoint(endpoint)
            for deployed in (info or {}).get("deployed_models", []):
                endpoints.undeploy(endpoint, deployed["deployed_model_id"])
            endpoints.delete_endpoint(endpoint)
        except EndpointError as err:
            report.leftovers.append(f"endpoint {endpoint}: {err}")
    failed = []
    try:
        for name, _ in warehouse.list_models():
            error = drop_model(warehouse, name, attempts=6, delay=5.0, sleep=time.sleep, say=progress)
            if error is not None:
                failed.append(f"model {name}: {error}")
        if failed:
            report.leftovers += failed
            return
        warehouse.delete_dataset()
    except WarehouseError as err:
        report.leftovers.append(f"dataset {warehouse.dataset}: {err}")
        return
    progress(
        f"Deleted the endpoints, the models and their registry versions, and dataset {warehouse.dataset}."
    )
