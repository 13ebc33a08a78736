"""Raw tables: the simulator's landing files, loaded into the warehouse.

The landing zone (Parquet files written by ``lakehouse-ml generate``) is declared as external
assets so the UI shows lineage from it. Orders and web sessions are day-partitioned; a backfill of
many days runs as one run (``BackfillPolicy.single_run``) and one atomic load.
"""

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from lakehouse_ml.backends.warehouse import Warehouse
from lakehouse_ml.datagen import landing_files
from lakehouse_ml.defs.metadata import table_metadata, user_errors, window_of
from lakehouse_ml.lifecycle.raw import RAW_TABLES, RawTable


def landing_key(raw: RawTable) -> dg.AssetKey:
    return dg.AssetKey(["landing", raw.landing])


def landing_specs(landing_dir: Path) -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(
            key=landing_key(raw),
            description=f"Parquet files of the Cymbal simulator's {raw.landing} (written by `lakehouse-ml generate`).",
            group_name="landing",
            kinds={"parquet"},
            metadata={"path": dg.MetadataValue.path(str(landing_dir / raw.landing))},
        )
        for raw in RAW_TABLES
    ]


class MissingLandingData(dg.Failure):
    pass


def _files(landing_dir: Path, raw: RawTable, days) -> list[Path]:
    files: list[Path] = []
    missing: list[str] = []
    for day in days:
        found = landing_files(landing_dir, raw.landing, day)
        if found:
            files.extend(found)
        else:
            missing.append(str(day) if day else raw.landing)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MissingLandingData(
            description=(
                f"No landing data for {raw.name} ({shown}) under {landing_dir / raw.landing}. "
                "Run `lakehouse-ml generate` first; its days must cover the partitions you materialize "
                "(LAKEHOUSE_ML_START_DATE and LAKEHOUSE_ML_DAYS)."
            )
        )
    return files


def raw_asset(
    raw: RawTable, landing_dir: Path, partitions: dg.PartitionsDefinition | None
) -> dg.AssetsDefinition:
    partitioned = raw.partition_column is not None

    @dg.asset(
        name=raw.name,
        group_name="raw",
        description=raw.description,
        deps=[landing_key(raw)],
        kinds={"sql", "table"},
        partitions_def=partitions if partitioned else None,
        backfill_policy=dg.BackfillPolicy.single_run() if partitioned else None,
        metadata={"landing": dg.MetadataValue.path(str(landing_dir / raw.landing))},
        check_specs=[
            dg.AssetCheckSpec(
                name="matches_landing",
                asset=raw.name,
                description="The table (its window, when partitioned) holds exactly the rows of its landing files.",
                blocking=True,
            )
        ],
    )
    def _raw(
        context: dg.AssetExecutionContext, warehouse: dg.ResourceParam[Warehouse]
    ) -> dg.MaterializeResult:
        window = window_of(context, raw.partition_column) if partitioned else None
        files = _files(landing_dir, raw, window.days() if window else [None])
        context.log.info(f"Loading {len(files)} landing file(s) into {raw.name} ({warehouse.describe()})")
        landing_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        with user_errors():
            rows = warehouse.load_parquet(files, raw.name, window=window)
            context.log.info(f"Loaded {rows:,} rows into {raw.name}")
            metadata = table_metadata(warehouse, raw.name, window)
        metadata["landing_files"] = dg.MetadataValue.int(len(files))
        in_table = metadata["dagster/row_count"].value
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name="matches_landing",
                    passed=in_table == landing_rows,
                    metadata={
                        "landing_rows": landing_rows,
                        "table_rows": in_table,
                        "landing_files": len(files),
                    },
                )
            ],
        )

    return _raw
