"""Imports sit at the top of modules. The only imports inside functions are the documented lazy
ones below: each names what it keeps out of a start-up that does not need it."""

from __future__ import annotations

import ast
from pathlib import Path

import lakehouse_ml

PACKAGE = Path(lakehouse_ml.__file__).resolve().parent

# (module path inside the package or "*", imported-module prefix) -> why it is imported lazily.
LAZY = {
    ("backends/*", "google"): "the Google Cloud clients load only when the gcp backend is used",
    ("backends/*", "vertexai"): "the Google Cloud clients load only when the gcp backend is used",
    ("backends/*", "requests"): "google-auth's transport, used with the Google clients",
    (
        "backends/__init__.py",
        "lakehouse_ml.backends.",
    ): "a backend's implementation loads only when it is chosen",
    ("*", "matplotlib"): "matplotlib loads only to draw a plot",
    ("cli.py", ""): "a subcommand loads what it runs, so `lakehouse-ml --help` answers at once",
    ("serving/models.py", "lakehouse_ml.engine"): (
        "the engine (scikit-learn, XGBoost) loads with the first model that needs it, so the endpoint "
        "server answers /health quickly (benchmarks/startup.py)"
    ),
    ("serving/models.py", "pandas"): "pandas loads with the first model served through the engine",
    ("serving/models.py", "duckdb"): "DuckDB loads with the first model that has a TRANSFORM clause",
    (
        "bigquery/served.py",
        "pandas",
    ): "pandas loads when a value or a table needs it, not with the endpoint server",
}


def _allowed(relative: str, module: str) -> bool:
    for (where, prefix), _reason in LAZY.items():
        in_place = (
            where == "*" or where == relative or (where.endswith("/*") and relative.startswith(where[:-1]))
        )
        if in_place and (module == prefix.rstrip(".") or module.startswith(prefix)):
            return True
    return False


def lazy_imports(root: Path = PACKAGE) -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom):
                    modules = [sub.module or ""]
                elif isinstance(sub, ast.Import):
                    modules = [alias.name for alias in sub.names]
                else:
                    continue
                found.extend((relative, sub.lineno, m) for m in modules)
    return found


def test_imports_inside_functions_are_only_the_documented_lazy_ones():
    stray = [
        f"{where}:{line} imports {module}"
        for where, line, module in lazy_imports()
        if not _allowed(where, module)
    ]
    assert stray == [], "Move these imports to the top of their modules:\n" + "\n".join(stray)


def test_the_check_finds_an_import_inside_a_function(tmp_path):
    (tmp_path / "lifecycle").mkdir()
    (tmp_path / "lifecycle" / "traffic.py").write_text("import os\n\n\ndef f():\n    import json\n")
    (tmp_path / "lifecycle" / "reports.py").write_text("def draw():\n    import matplotlib.pyplot\n")
    found = lazy_imports(tmp_path)
    assert found == [("lifecycle/reports.py", 2, "matplotlib.pyplot"), ("lifecycle/traffic.py", 5, "json")]
    assert [m for where, _, m in found if not _allowed(where, m)] == ["json"]
    assert _allowed("backends/vertex.py", "google.cloud.aiplatform")
