"""Registry version and endpoint deployment assets of every served model (thin: the logic is in
:mod:`lakehouse_ml.lifecycle.deployment`).

* ``<model>_registry_version``: the Vertex AI Model Registry version that the model asset's last
  run registered (its BigQuery ML model, metadata ``bqml_model``), with the **blocking**
  ``champion_challenger`` check: the candidate is compared with the serving version on fresh rows
  (labelled ones for a classifier; for k-means, both versions' clusters of the same rows), both
  scored with ``ML.PREDICT``, and only a candidate at least as good gets the serving alias. A loser
  stays registered (alias ``challenger``) and the check says why;
  the deployment downstream does not run.
* ``<model>_deployment``: the endpoint serving the version that holds the serving alias (canary,
  then 100%, then the old deployment goes), with the **blocking** ``smoke_test`` check: real
  predictions through the endpoint. Run config ``version`` rolls back (or forward) to a given
  version; ``promote: false`` leaves a canary at its share. After the old deployment is undeployed,
  the BigQuery ML models of older runs that nothing serves are dropped (garbage collection).
"""

import json
from typing import Any

import dagster as dg
from pydantic import Field

from lakehouse_ml.backends.endpoints import Endpoints
from lakehouse_ml.backends.registry import ModelRegistry
from lakehouse_ml.backends.warehouse import Warehouse
from lakehouse_ml.core.errors import EndpointError, RegistryError
from lakehouse_ml.defs.metadata import user_errors
from lakehouse_ml.defs.models import BQML_MODEL, trained_model
from lakehouse_ml.lifecycle import deployment, models
from lakehouse_ml.lifecycle.baseline import baseline_table, save_baseline

GROUP = "serving"
GATE_CHECK = "champion_challenger"
SMOKE_CHECK = "smoke_test"


def _link(url: str) -> dg.MetadataValue:
    return (
        dg.MetadataValue.url(url) if url.startswith(("http://", "https://")) else dg.MetadataValue.path(url)
    )


def _floats(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and v == v}


def _version_metadata(
    registry: ModelRegistry, version: Any, metrics: dict[str, float], model: str
) -> dict[str, Any]:
    return {
        "model_id": dg.MetadataValue.text(version.model_id),
        "version_id": dg.MetadataValue.text(version.version_id),
        "aliases": dg.MetadataValue.json(sorted(version.aliases)),
        BQML_MODEL: dg.MetadataValue.text(model),
        "source": dg.MetadataValue.text(version.source),
        "model_type": dg.MetadataValue.text(version.model_type),
        "metrics": dg.MetadataValue.json(metrics),
        "link": _link(registry.version_url(version)),
    }


def registered_version_asset(spec: models.ModelSpec) -> dg.AssetsDefinition:
    """The registry version asset of a model that is registered but not served: it records the
    version that the model asset's last run registered (no gate: no alias moves)."""
    model_id = deployment.registry_model_id(spec)

    @dg.asset(
        name=f"{spec.name}_registry_version",
        group_name=GROUP,
        description=(
            f"The Vertex AI Model Registry version of {spec.name} (model id {model_id}) that the model asset's last "
            "run registered. Registered for lineage and batch scoring; not deployed to an endpoint."
        ),
        deps=[dg.AssetDep(spec.name), dg.AssetDep(f"{spec.name}_evaluation")],
        kinds={"vertexai"},
    )
    def _registered_version(
        context: dg.AssetExecutionContext,
        warehouse: dg.ResourceParam[Warehouse],
        registry: dg.ResourceParam[ModelRegistry],
    ) -> dg.MaterializeResult:
        with user_errors():
            try:
                model = trained_model(context, warehouse, spec)
                version = deployment.registered_version(warehouse, registry, spec, model)
            except RegistryError as err:
                raise dg.Failure(description=str(err)) from err
            metrics = _floats(version.metrics) or _floats(models.evaluation_metrics(warehouse, spec, model))
        return dg.MaterializeResult(metadata=_version_metadata(registry, version, metrics, model))

    return _registered_version


def registry_version_asset(spec: models.ModelSpec) -> dg.AssetsDefinition:
    serving = deployment.serving_spec(spec)
    model_id = deployment.registry_model_id(spec)
    name = f"{spec.name}_registry_version"
    rows = deployment.gate_rows_description(spec)

    @dg.asset(
        name=name,
        group_name=GROUP,
        description=(
            f"The Vertex AI Model Registry version of {spec.name} (model id {model_id}) that the model asset's last "
            f"run registered. The blocking `{GATE_CHECK}` check compares it with the version holding "
            f"'{serving.serving_alias}' on fresh {rows} (sql/gate/{spec.name}.sql, {spec.gate.metric}, "
            f"{spec.gate.direction} is better), both scored with ML.PREDICT; a winner takes "
            f"'{serving.serving_alias}' and 'default'."
        ),
        deps=[dg.AssetDep(spec.name), dg.AssetDep(f"{spec.name}_evaluation")],
        kinds={"vertexai"},
        check_specs=[
            dg.AssetCheckSpec(
                GATE_CHECK,
                asset=name,
                blocking=True,
                description=(
                    f"The candidate's {spec.gate.metric} on fresh {rows} is at least the serving version's "
                    f"({spec.gate.direction} is better)."
                ),
            )
        ],
    )
    def _registry_version(
        context: dg.AssetExecutionContext,
        warehouse: dg.ResourceParam[Warehouse],
        registry: dg.ResourceParam[ModelRegistry],
    ) -> dg.MaterializeResult:
        with user_errors():
            try:
                model = trained_model(context, warehouse, spec)
                candidate = deployment.register_candidate(warehouse, registry, spec, model)
                if not warehouse.table_exists(baseline_table(spec, candidate.version_id)):
                    rows = save_baseline(warehouse, spec, candidate.version_id, model)
                    context.log.info(
                        f"Saved {rows} training rows of version {candidate.version_id} for monitoring"
                    )
                result = deployment.gate(warehouse, registry, spec, candidate, model)
                version = deployment.promote(registry, spec, candidate) if result.passed else candidate
                metrics = _floats(version.metrics) or _floats(
                    models.evaluation_metrics(warehouse, spec, model)
                )
            except (RegistryError, EndpointError) as err:
                raise dg.Failure(description=str(err)) from err
        context.log.info(result.reason)
        metadata = _version_metadata(registry, version, metrics, model) | {
            "serving": dg.MetadataValue.bool(serving.serving_alias in version.aliases),
            "gate": dg.MetadataValue.text(result.reason),
        }
        check_metadata: dict[str, Any] = {
            "reason": dg.MetadataValue.text(result.reason),
            "metric": dg.MetadataValue.text(result.metric),
            "candidate_version": dg.MetadataValue.text(result.candidate_version),
            "rows": dg.MetadataValue.int(result.rows),
        }
        if result.serving_version is not None:
            check_metadata["serving_version"] = dg.MetadataValue.text(result.serving_version)
        if result.serving_model is not None:
            check_metadata["candidate_model"] = dg.MetadataValue.text(str(result.candidate_model))
            check_metadata["serving_model"] = dg.MetadataValue.text(result.serving_model)
        if result.candidate_value is not None:
            check_metadata["candidate_value"] = dg.MetadataValue.float(result.candidate_value)
            check_metadata["serving_value"] = dg.MetadataValue.float(result.serving_value)
            metadata["gate_candidate"] = dg.MetadataValue.float(result.candidate_value)
            metadata["gate_serving"] = dg.MetadataValue.float(result.serving_value)
            table = "| metric | candidate | serving |\n|---|---|---|\n" + "\n".join(
                f"| {m} | {result.candidate_metrics[m]:.4f} | {result.serving_metrics.get(m, float('nan')):.4f} |"
                for m in result.candidate_metrics
            )
            check_metadata["comparison"] = dg.MetadataValue.md(table)
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=GATE_CHECK,
                    passed=result.passed,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=result.reason,
                    metadata=check_metadata,
                )
            ],
        )

    return _registry_version


class DeploymentConfig(dg.Config):
    version: str | None = Field(
        None,
        description="Deploy this version instead of the one holding the serving alias (a rollback or roll-forward); "
        "the serving alias moves to it.",
    )
    canary_percent: int | None = Field(
        None, description="Traffic share of a new version before promotion (1..99)."
    )
    promote: bool = Field(True, description="Promote a healthy canary to 100% and undeploy the rest.")
    keep_models: int | None = Field(
        None,
        ge=1,
        description="Training runs whose BigQuery ML model is kept whatever it holds (default: the model's Serving "
        "keep_models); older ones whose version is neither deployed nor holds an alias are dropped after deploying.",
    )


def deployment_asset(spec: models.ModelSpec) -> dg.AssetsDefinition:
    serving = deployment.serving_spec(spec)
    name = f"{spec.name}_deployment"

    @dg.asset(
        name=name,
        group_name=GROUP,
        description=(
            f"Endpoint {serving.endpoint!r} serving the version of {spec.name} that holds '{serving.serving_alias}': "
            f"created when missing; a new version goes in as a {serving.canary_percent}% canary, is smoke-tested, "
            "promoted to 100%, and the old deployment is undeployed (a failing canary is rolled back); then the "
            "BigQuery ML models of older runs that nothing serves "
            f"are dropped (the newest {serving.keep_models} stay). "
            "Request-response logging is on. Locally the endpoint server starts in the background."
        ),
        deps=[dg.AssetDep(f"{spec.name}_registry_version")],
        kinds={"vertexai"},
        check_specs=[
            dg.AssetCheckSpec(
                SMOKE_CHECK,
                asset=name,
                blocking=True,
                description="Real predictions through the endpoint: every answer has the model's prediction fields "
                "and comes from a live version.",
            )
        ],
    )
    def _deployment(
        context: dg.AssetExecutionContext,
        config: DeploymentConfig,
        warehouse: dg.ResourceParam[Warehouse],
        registry: dg.ResourceParam[ModelRegistry],
        endpoints: dg.ResourceParam[Endpoints],
    ) -> dg.MaterializeResult:
        with user_errors():
            try:
                version = deployment.serving_version(registry, spec, config.version)
                instances = deployment.serving_rows(warehouse, spec)
                result = deployment.deploy(
                    endpoints,
                    spec,
                    version,
                    instances,
                    canary_percent=config.canary_percent,
                    promote_canary=config.promote,
                    progress=context.log.info,
                )
                garbage = deployment.collect_garbage(
                    warehouse, registry, endpoints, spec, keep=config.keep_models, progress=context.log.info
                )
            except (RegistryError, EndpointError) as err:
                raise dg.Failure(description=str(err)) from err
        metadata: dict[str, Any] = {
            "endpoint_id": dg.MetadataValue.text(result.endpoint_id),
            "endpoint": dg.MetadataValue.text(result.endpoint_name),
            "model_id": dg.MetadataValue.text(version.model_id),
            "version_id": dg.MetadataValue.text(version.version_id),
            "deployed_model_id": dg.MetadataValue.text(result.deployed_model_id or "(rolled back)"),
            "traffic_split": dg.MetadataValue.json(result.traffic_split),
            "deployed_models": dg.MetadataValue.md(
                "| deployed model | model | version | traffic % |\n|---|---|---|---|\n"
                + "\n".join(
                    f"| {d['deployed_model_id']} | {d['model_id']} | "
                    f"{d['version_id']} | {d.get('traffic_percentage', 0)} |"
                    for d in result.deployed_models
                )
            ),
            "actions": dg.MetadataValue.md(
                "\n".join(f"- {a}" for a in result.actions) or "- nothing to change"
            ),
            "rolled_back": dg.MetadataValue.bool(result.rolled_back),
            "garbage_collection": dg.MetadataValue.text(garbage.describe()),
            "models_dropped": dg.MetadataValue.json(garbage.dropped),
            "summary": dg.MetadataValue.text(
                "; ".join(result.actions) + f"; serving {result.traffic_split}"
                if result.actions
                else f"serving {result.traffic_split}"
            ),
        }
        url = endpoints.console_url(result.endpoint_id)
        if url:
            metadata["link"] = _link(url)
        if result.server:
            metadata["server"] = dg.MetadataValue.url(result.server)
        smoke = result.smoke
        check_metadata: dict[str, Any] = {"smoke": dg.MetadataValue.text(smoke.describe())}
        if result.canary is not None:
            check_metadata["canary"] = dg.MetadataValue.text(result.canary.describe())
        if smoke.example is not None:
            check_metadata["example"] = dg.MetadataValue.json(
                json.loads(json.dumps(smoke.example, default=str))
            )
        passed = result.passed
        description = (
            f"Version {version.version_id} serves on {result.endpoint_name}: {smoke.describe()}"
            if passed
            else f"Deployment of version {version.version_id} failed: "
            + (result.canary.describe() if result.rolled_back and result.canary else smoke.describe())
        )
        context.log.info(description)
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=SMOKE_CHECK,
                    passed=passed,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=description,
                    metadata=check_metadata,
                )
            ],
        )

    return _deployment


def serving_assets(specs: tuple[models.ModelSpec, ...]) -> list[dg.AssetsDefinition]:
    """A registry version asset for every registered model; a gated one and a deployment asset for
    every served model."""
    out: list[dg.AssetsDefinition] = []
    for spec in specs:
        if spec.serving is not None:
            out.extend([registry_version_asset(spec), deployment_asset(spec)])
        elif deployment.is_registered(spec):
            out.append(registered_version_asset(spec))
    return out
