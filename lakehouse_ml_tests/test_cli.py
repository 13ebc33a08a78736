"""The `lakehouse-ml` command line: query (table/CSV/JSON, parameters, files, errors) and generate."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.cli import main, parse_param
from lakehouse_ml.datagen import read_manifest


@pytest.fixture()
def home(tmp_path, monkeypatch):
    for var in ("LAKEHOUSE_ML_HOME", "LAKEHOUSE_ML_BACKEND", "LAKEHOUSE_ML_DAYS", "LAKEHOUSE_ML_START_DATE"):
        monkeypatch.delenv(var, raising=False)
    warehouse = LocalWarehouse.at(tmp_path / "warehouse.duckdb")
    warehouse.load_dataframe(
        pd.DataFrame({"d": [dt.date(2026, 1, 1), dt.date(2026, 1, 2)], "x": [1, 2], "s": ["a", "b"]}), "t"
    )
    return tmp_path


def run(home, *args):
    return main(["--home", str(home), *args])


def test_query_table_format(home, capsys):
    assert run(home, "query", "SELECT s, x * 2 AS y FROM t ORDER BY x") == 0
    out = capsys.readouterr().out
    assert "s" in out and "y" in out and "4" in out and "(2 rows)" in out


def test_query_csv_and_json(home, capsys):
    assert run(home, "query", "--format", "csv", "SELECT x, d FROM t WHERE x > @m", "--param", "m=1") == 0
    assert capsys.readouterr().out.splitlines() == ["x,d", "2,2026-01-02"]
    assert (
        run(home, "query", "--format", "json", "SELECT x FROM t WHERE d = @d", "--param", "d:DATE:2026-01-01")
        == 0
    )
    assert json.loads(capsys.readouterr().out) == [{"x": 1}]


def test_query_from_file(home, tmp_path, capsys):
    path = tmp_path / "q.sql"
    path.write_text("-- a comment\nSELECT COUNTIF(x > 0) AS n FROM t")
    assert run(home, "query", "-f", str(path), "--format", "csv") == 0
    assert capsys.readouterr().out.splitlines() == ["n", "2"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["SELECT ARRAY_AGG(x ORDER BY x LIMIT 1) FROM t"], "LIMIT inside ARRAY_AGG"),
        (["SELECT * FROM ML.PREDICT(MODEL m, TABLE t)"], "Model m does not exist"),
        (["SELECT * FROM ML.GENERATE_TEXT(MODEL m, TABLE t)"], "ML.GENERATE_TEXT is not supported"),
        (["SELECT * FROM missing_table"], "missing_table does not exist"),
        (["SELECT x FROM t WHERE x > @m"], "@m but no value"),
        (["SELECT FROM WHERE"], "Could not parse"),
        (["-f", "/nonexistent.sql"], "no such file"),
        (["SELECT 1", "--param", "bad"], "name=value"),
        (["SELECT @x", "--param", "x:INT64:abc"], "not a valid INT64"),
    ],
)
def test_query_errors_are_clear(home, capsys, args, message):
    assert run(home, "query", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_parse_param_inference():
    assert parse_param("n=3") == ("n", 3)
    assert parse_param("f=0.5") == ("f", 0.5)
    assert parse_param("d=2026-03-01") == ("d", dt.date(2026, 3, 1))
    assert parse_param("b=true") == ("b", True)
    assert parse_param("s=hello") == ("s", "hello")
    assert parse_param("s:STRING:42") == ("s", "42")


def test_generate_writes_landing(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "generate", "--days", "5", "--customers", "50", "--seed", "1"]) == 0
    manifest = read_manifest(tmp_path / "landing")
    assert manifest["row_counts"]["customers"] >= 50
    assert "Wrote" in capsys.readouterr().err


def test_generate_rejects_bad_scenario(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "generate", "--days", "5", "--scenario", "meteor@2026-01-02"]) == 2
    assert "meteor" in capsys.readouterr().err


def test_console_script_is_installed():
    # pyproject's [project.scripts] entry, installed beside this Python by `pip install -e .`.
    script = Path(sys.executable).parent / "lakehouse-ml"
    script = str(script) if script.exists() else shutil.which("lakehouse-ml")
    assert script, "the lakehouse-ml console script is not installed: pip install -e ."
    result = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "generate" in result.stdout and "query" in result.stdout
