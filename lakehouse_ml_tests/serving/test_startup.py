"""The local endpoint server starts without Dagster (it used to import all of it, 2.2 s of its
2.4 s start-up, for an exception base class). Its start-up time is in docs/benchmarks.md
(benchmarks/startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys

# Dagster, and the Google clients (the bare namespace packages `google` and `google.cloud` are
# created by optional-dependency probes in pandas and pyarrow and hold no code).
HEAVY = (
    "dagster",
    "dagster_duckdb",
    "dagster_gcp",
    "google.cloud.bigquery",
    "google.cloud.aiplatform",
    "google.api_core",
    "vertexai",
)


def test_the_server_and_what_it_loads_to_serve_import_no_dagster():
    # Everything the server process imports to answer a prediction: the app, the predictors, and
    # the local engine that reads a model's artifact.
    code = (
        "import json, sys\n"
        "import lakehouse_ml.serving.main, lakehouse_ml.serving.models\n"
        "import lakehouse_ml.engine.engine\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted({m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy)})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert loaded == [], f"the endpoint server imports {loaded}"


def test_the_check_sees_dagster_when_it_is_imported():
    # The same probe on the Dagster layer finds it: the check above can fail.
    code = "import json, sys\nimport lakehouse_ml.definitions\nprint(json.dumps('dagster' in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) is True


def test_the_server_starts_without_the_engine_and_its_libraries():
    # They load with the first model that needs them (serving/models.py), so /health answers
    # fast; benchmarks/startup.py measures it.
    code = (
        "import json, sys\n"
        "import lakehouse_ml.serving.main\n"
        "heavy = ('sklearn', 'xgboost', 'scipy', 'pandas', 'duckdb', "
        "'lakehouse_ml.engine.engine', 'lakehouse_ml.engine.models')\n"
        "print(json.dumps(sorted({m.split('.')[0] if not m.startswith('lakehouse_ml') else m "
        "for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy)})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
