"""The Cymbal retail simulator: deterministic, scalable synthetic retail data with drift scenarios.

``CymbalSimulator`` generates customers, products, order lines and web sessions day by day;
``write_landing`` writes them as Parquet to the landing zone the raw assets load from. See
:mod:`lakehouse_ml.datagen.simulator` for the model of behaviour and
:mod:`lakehouse_ml.datagen.scenarios` for the drift scenarios.
"""

from lakehouse_ml.datagen.config import SimulationConfig
from lakehouse_ml.datagen.landing import (
    MANIFEST,
    landing_file,
    landing_files,
    read_manifest,
    write_landing,
)
from lakehouse_ml.datagen.scenarios import SCENARIOS, DriftScenario
from lakehouse_ml.datagen.schema import ARROW_SCHEMAS, DAILY_TABLES, PANDAS_DTYPES, TABLES
from lakehouse_ml.datagen.simulator import CymbalSimulator, config_for_order_lines

__all__ = [
    "config_for_order_lines",
    "ARROW_SCHEMAS",
    "DAILY_TABLES",
    "MANIFEST",
    "PANDAS_DTYPES",
    "SCENARIOS",
    "TABLES",
    "CymbalSimulator",
    "DriftScenario",
    "SimulationConfig",
    "landing_file",
    "landing_files",
    "read_manifest",
    "write_landing",
]
