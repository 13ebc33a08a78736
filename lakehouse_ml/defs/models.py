"""Model assets: for each :class:`lakehouse_ml.lifecycle.models.ModelSpec`, the model and its evaluation.

* ``<model>``: runs ``sql/models/<model>.sql`` on the warehouse as a BigQuery ML model of the
  run's own (``<model>_<UTC time>_<run id>``, :func:`lakehouse_ml.lifecycle.models.training_model_name`),
  registered as a new version of the file's ``VERTEX_AI_MODEL_ID``; its upstream assets are the
  tables the SQL reads. Metadata: the run's model (``bqml_model``), model type, options, registry
  options, feature columns (ML.FEATURE_INFO), training iterations and loss (ML.TRAINING_INFO) and
  where the model is. The assets downstream read ``bqml_model`` (:func:`trained_model`).
* ``<model>_evaluation``: ML.EVALUATE's metrics as float metadata and a Markdown table, and PNG
  plots linked from the metadata (ROC curve and confusion matrix for classifiers, rows per
  cluster for KMEANS), written under ``reports_dir/<model>/``.

The same code runs on both backends: BigQuery or the local BigQuery ML engine executes the SQL.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from lakehouse_ml.backends.warehouse import Warehouse
from lakehouse_ml.defs.metadata import user_errors
from lakehouse_ml.lifecycle import models, reports

GROUP = "models"
# The model asset's metadata key naming the run's BigQuery ML model.
BQML_MODEL = "bqml_model"


def _recorded_model(materialization: Any, spec: models.ModelSpec) -> str | None:
    value = materialization.metadata.get(BQML_MODEL) if materialization is not None else None
    return (
        str(value.value) if value is not None and models.is_training_model(spec, str(value.value)) else None
    )


def trained_model(context: dg.AssetExecutionContext, warehouse: Warehouse, spec: models.ModelSpec) -> str:
    """The BigQuery ML model the assets downstream of the spec's model asset use: the one this
    run trained (its materialization in this run, so that an overlapping run's model is never
    taken), else the model asset's latest materialization's ``bqml_model``, else the spec's newest
    model in the warehouse (trained by another Dagster instance)."""
    key = dg.AssetKey(spec.name)
    records = context.instance.get_records_for_run(
        context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    for record in reversed(records):
        materialization = record.event_log_entry.asset_materialization
        if materialization is not None and materialization.asset_key == key:
            found = _recorded_model(materialization, spec)
            if found:
                return found
    event = context.instance.get_latest_materialization_event(key)
    found = _recorded_model(event.asset_materialization if event else None, spec)
    return found or models.newest_model(warehouse, spec)


def _markdown(frame: pd.DataFrame, rows: int = 30) -> str:
    if frame.empty:
        return "(no rows)"
    return frame.head(rows).to_markdown(index=False, floatfmt=".4g")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def model_metadata(warehouse: Warehouse, spec: models.ModelSpec, model: str) -> dict[str, Any]:
    """Metadata of the trained BigQuery ML model ``model``, read back through the warehouse
    (BigQuery SQL only)."""
    features = models.feature_info(warehouse, spec, model)
    training = models.training_info(warehouse, spec, model)
    metadata: dict[str, Any] = {
        BQML_MODEL: dg.MetadataValue.text(model),
        "model_type": dg.MetadataValue.text(spec.model_type),
        "options": dg.MetadataValue.json(_json_safe(spec.options)),
        "feature_columns": dg.MetadataValue.json(
            [str(c) for c in features["input"]] if "input" in features else []
        ),
        "feature_info": dg.MetadataValue.md(_markdown(features)),
        "training_iterations": dg.MetadataValue.int(len(training)),
        "warehouse": dg.MetadataValue.text(warehouse.describe()),
    }
    if spec.label:
        metadata["label"] = dg.MetadataValue.text(spec.label)
    if spec.registry_options:
        metadata["registry"] = dg.MetadataValue.json(_json_safe(spec.registry_options))
    if not training.empty:
        last = training.iloc[-1]
        for column in ("loss", "eval_loss"):
            value = models._float_or_none(last.get(column)) if column in training else None
            if value is not None:
                metadata[f"final_{column}"] = dg.MetadataValue.float(value)
        shown = [
            c
            for c in ("training_run", "iteration", "loss", "eval_loss", "learning_rate", "duration_ms")
            if c in training
        ]
        metadata["training_info"] = dg.MetadataValue.md(_markdown(training[shown] if shown else training))
    # Where the model is: a local folder (local warehouse) or a console link (when a backend has one).
    location = warehouse.model_url(model)
    if location:
        if location.startswith(("http://", "https://")):
            metadata["model_location"] = dg.MetadataValue.url(location)
        else:
            metadata["model_location"] = dg.MetadataValue.path(location)
    return metadata


def model_asset(spec: models.ModelSpec) -> dg.AssetsDefinition:
    statement = spec.statement  # validates the SQL file against the spec at definitions load

    @dg.asset(
        name=spec.name,
        group_name=GROUP,
        description=spec.description
        + f"\n\nDefined by `sql/{spec.sql_path}`. Each run creates a BigQuery ML model of its own "
        f"(`{spec.name}_<UTC time>_<run id>`, metadata `{BQML_MODEL}`), so no run replaces a model that serves.",
        deps=[dg.AssetDep(table) for table in spec.upstream_tables],
        kinds={"bigquery", "sql"},
        metadata={
            "sql_file": dg.MetadataValue.path(f"sql/{spec.sql_path}"),
            "model_type": dg.MetadataValue.text(spec.model_type_of(statement)),
        },
        tags={"model_type": spec.model_type_of(statement).lower()},
    )
    def _model(
        context: dg.AssetExecutionContext, warehouse: dg.ResourceParam[Warehouse]
    ) -> dg.MaterializeResult:
        model = models.training_model_name(spec, context.run.run_id)
        context.log.info(
            f"Training {spec.name} ({spec.model_type}) from sql/{spec.sql_path} as BigQuery ML model {model} on "
            f"{warehouse.describe()}"
        )
        with user_errors():
            models.train(warehouse, spec, model)
            metadata = model_metadata(warehouse, spec, model)
        context.log.info(f"Trained {model}: {metadata['training_iterations'].value} iteration(s)")
        return dg.MaterializeResult(metadata=metadata)

    return _model


def _plot_paths(reports_dir: Path, spec: models.ModelSpec) -> Path:
    return reports_dir / spec.name


def evaluation_asset(spec: models.ModelSpec, reports_dir: Path) -> dg.AssetsDefinition:
    name = f"{spec.name}_evaluation"

    @dg.asset(
        name=name,
        group_name=GROUP,
        description=(
            f"Evaluation of {spec.name}: ML.EVALUATE metrics on its evaluation split, with plots "
            f"({spec.evaluation.value}). Gate metric for retraining: {spec.gate.metric} "
            f"({spec.gate.direction} is better)."
        ),
        deps=[dg.AssetDep(spec.name)],
        kinds={"bigquery", "sql"},
        metadata={"gate_metric": spec.gate.metric, "gate_direction": spec.gate.direction},
    )
    def _evaluation(
        context: dg.AssetExecutionContext, warehouse: dg.ResourceParam[Warehouse]
    ) -> dg.MaterializeResult:
        with user_errors():
            model = trained_model(context, warehouse, spec)
            result = models.evaluate(warehouse, spec, model)
        folder = _plot_paths(reports_dir, spec)
        metadata: dict[str, Any] = {
            f"metric/{metric}": dg.MetadataValue.float(value)
            for metric, value in result.metrics.items()
            if value is not None
        }
        metadata["metrics"] = dg.MetadataValue.md(reports.metrics_markdown(result.metrics))
        metadata[BQML_MODEL] = dg.MetadataValue.text(model)
        gate_value = result.metrics.get(spec.gate.metric)
        shown = f"{gate_value:.4f}" if isinstance(gate_value, float) else str(gate_value)
        metadata["gate"] = dg.MetadataValue.text(
            f"{spec.gate.metric} ({spec.gate.direction} is better) = {shown}"
        )
        metadata["sources"] = dg.MetadataValue.json(result.sources)
        if result.roc is not None:
            path = reports.roc_curve_png(
                result.roc,
                result.roc_auc,
                folder / "roc_curve.png",
                f"{spec.name}: ROC curve",
                result.sources.get("roc_curve", ""),
            )
            metadata["plot/roc_curve"] = dg.MetadataValue.path(str(path))
            if result.roc_auc is not None:
                metadata["roc_curve_auc"] = dg.MetadataValue.float(result.roc_auc)
        if result.confusion is not None:
            path = reports.confusion_matrix_png(
                result.confusion,
                folder / "confusion_matrix.png",
                f"{spec.name}: confusion matrix",
                result.sources.get("confusion_matrix", ""),
            )
            metadata["plot/confusion_matrix"] = dg.MetadataValue.path(str(path))
            metadata["confusion_matrix"] = dg.MetadataValue.md(
                result.confusion.reset_index().to_markdown(index=False)
            )
        if result.cluster_sizes is not None:
            path = reports.cluster_sizes_png(
                result.cluster_sizes,
                folder / "cluster_sizes.png",
                f"{spec.name}: rows per cluster",
                result.sources.get("cluster_sizes", ""),
            )
            metadata["plot/cluster_sizes"] = dg.MetadataValue.path(str(path))
            metadata["cluster_sizes"] = dg.MetadataValue.md(_markdown(result.cluster_sizes))
            metadata["clusters"] = dg.MetadataValue.int(len(result.cluster_sizes))
        if result.anomalies is not None:
            total = int(result.anomalies["row_count"].sum())
            flagged = int(result.anomalies["anomalies"].sum())
            metadata["anomalies"] = dg.MetadataValue.int(flagged)
            metadata["anomaly_rate"] = dg.MetadataValue.float(flagged / total if total else 0.0)
            metadata["contamination"] = dg.MetadataValue.float(float(spec.contamination))
        context.log.info(
            f"Evaluated {model}: " + json.dumps({k: v for k, v in result.metrics.items()}, default=str)
        )
        return dg.MaterializeResult(metadata=metadata)

    return _evaluation


def model_assets(specs: tuple[models.ModelSpec, ...], reports_dir: Path) -> list[dg.AssetsDefinition]:
    """The model and evaluation assets of every declared model."""
    assets: list[dg.AssetsDefinition] = []
    for spec in specs:
        assets.extend([model_asset(spec), evaluation_asset(spec, reports_dir)])
    return assets
