"""Feature assets: one per :class:`lakehouse_ml.lifecycle.features.FeatureTable`, with data-quality checks.

The checks run inside the materialization (``check_specs`` + ``check_results``) and are blocking:
a failed check stops downstream assets from running on bad features.
"""

import dagster as dg
from pydantic import create_model

from lakehouse_ml.backends.warehouse import Warehouse
from lakehouse_ml.defs.metadata import table_metadata, user_errors, window_of
from lakehouse_ml.lifecycle import features


def _config_class(table: features.FeatureTable) -> type[dg.Config]:
    """A Dagster config class whose fields are the table's SQL parameters, defaulted."""
    fields = {name: (type(value), value) for name, value in table.params.items()}
    return create_model(f"{table.name.title().replace('_', '')}Config", __base__=dg.Config, **fields)


def _check_specs(table: features.FeatureTable) -> list[dg.AssetCheckSpec]:
    names = ["unique_keys", "required_columns_not_null"] + (["label_rate_in_band"] if table.label else [])
    descriptions = {
        "unique_keys": f"({', '.join(table.keys)}) identifies each row.",
        "required_columns_not_null": "Required columns hold no NULL: " + ", ".join(table.required) + ".",
        "label_rate_in_band": (
            f"The rate of {table.label.column} lies in [{table.label.low:.0%}, {table.label.high:.0%}]."
            if table.label
            else ""
        ),
    }
    return [
        dg.AssetCheckSpec(name=name, asset=table.name, description=descriptions[name], blocking=True)
        for name in names
    ]


def feature_asset(table: features.FeatureTable, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    partitioned = table.partition_column is not None
    deps = []
    for upstream in table.upstream_tables:
        mapping = None
        if partitioned and upstream in ("raw_orders", "raw_web_sessions") and table.history_days:
            mapping = dg.TimeWindowPartitionMapping(
                start_offset=-table.history_days, allow_nonexistent_upstream_partitions=True
            )
        deps.append(dg.AssetDep(upstream, partition_mapping=mapping))
    Config = _config_class(table)

    @dg.asset(
        name=table.name,
        group_name="features",
        description=table.description + f"\n\nDefined by `sql/{table.sql_path}`.",
        deps=deps,
        kinds={"sql", "table"},
        partitions_def=partitions if partitioned else None,
        backfill_policy=dg.BackfillPolicy.single_run() if partitioned else None,
        check_specs=_check_specs(table),
        metadata={"sql_file": dg.MetadataValue.path(f"sql/{table.sql_path}")},
    )
    def _feature(
        context: dg.AssetExecutionContext, config: Config, warehouse: dg.ResourceParam[Warehouse]
    ) -> dg.MaterializeResult:
        window = window_of(context, table.partition_column) if partitioned else None
        context.log.info(f"Building {table.name} from sql/{table.sql_path} on {warehouse.describe()}")
        with user_errors():
            rows = features.build(warehouse, table, config.model_dump(), window)
            context.log.info(f"Wrote {rows:,} rows to {table.name}; running data-quality checks")
            upstream = {name: warehouse.table_schema(name) for name in table.upstream_tables}
            lineage = features.column_lineage(table.sql, upstream)
            outcomes = features.quality_checks(warehouse, table, window)
            metadata = table_metadata(warehouse, table.name, window, lineage)
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=o.name,
                    passed=o.passed,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=o.description,
                    metadata=o.metadata,
                )
                for o in outcomes
            ],
        )

    return _feature
