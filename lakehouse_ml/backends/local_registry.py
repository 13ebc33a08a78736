"""The local model registry: SQLite under the local home, with Vertex AI Model Registry semantics.

Layout (``root`` = ``$LAKEHOUSE_ML_HOME/registry`` by default)::

    registry.db                       models, versions, aliases, deployed_models
    <model_id>/<version_id>/          the version's artifacts (immutable)

Safe across processes: every change runs in one SQLite transaction opened with
``BEGIN IMMEDIATE`` (one writer at a time; others wait up to ``busy_timeout_ms``), the database is in
WAL mode so readers never block. Artifacts are hard-linked (copied when links are impossible) into a
temporary folder first, renamed to ``<model_id>/<version_id>`` inside the transaction and removed
again when the transaction fails, so a failure leaves neither a row nor a folder behind.

``deployed_models`` belongs to the local endpoints (``lakehouse_ml/backends/local_endpoints.py``);
the registry creates it with the same schema and only reads it, to refuse deleting what is deployed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from lakehouse_ml.backends.registry import (
    ModelRegistry,
    ModelVersion,
    check_alias,
    check_model_id,
    parse_merge,
)
from lakehouse_ml.bigquery.registry import DEFAULT_ALIAS, NON_DEPLOYABLE_MODEL_TYPES
from lakehouse_ml.core.atomic import fsync_dir
from lakehouse_ml.core.errors import ModelNotRegisteredError, RegistryError, VersionDeployedError
from lakehouse_ml.engine.engine import BqmlEngine

DB_NAME = "registry.db"
# Where local endpoints live, in the resource names of errors (LocalEndpoints' project and location).
LOCAL_ENDPOINT_PARENT = "projects/local/locations/us-central1"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS models(
        model_id TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        next_version INTEGER NOT NULL,
        create_time TEXT NOT NULL,
        update_time TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS versions(
        model_id TEXT NOT NULL,
        version_id TEXT NOT NULL,
        version_number INTEGER NOT NULL,
        display_name TEXT NOT NULL,
        source TEXT NOT NULL,
        model_type TEXT NOT NULL,
        artifact_uri TEXT NOT NULL,
        labels TEXT NOT NULL,
        metrics TEXT NOT NULL,
        deployable INTEGER NOT NULL,
        create_time TEXT NOT NULL,
        update_time TEXT NOT NULL,
        replaced_time TEXT,
        PRIMARY KEY(model_id, version_id))""",
    "CREATE INDEX IF NOT EXISTS versions_source ON versions(source)",
    """CREATE TABLE IF NOT EXISTS aliases(
        model_id TEXT NOT NULL,
        alias TEXT NOT NULL,
        version_id TEXT NOT NULL,
        PRIMARY KEY(model_id, alias))""",
    # Owned by the local endpoints; same schema on both sides.
    """CREATE TABLE IF NOT EXISTS deployed_models(endpoint_id TEXT, deployed_model_id TEXT, model_id TEXT,
        version_id TEXT, traffic_percentage INTEGER, create_time TEXT,
        PRIMARY KEY(endpoint_id, deployed_model_id))""",
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` into the new folder ``dst`` (copy when linking fails)."""
    dst.mkdir()
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir():
            _link_tree(entry.resolve(), target)
            continue
        try:
            os.link(entry.resolve(), target)
        except OSError:
            shutil.copy2(entry, target)
    fsync_dir(dst)


class LocalModelRegistry(dg.ConfigurableResource, ModelRegistry):
    """Model versions in SQLite under ``root`` (default ``$LAKEHOUSE_ML_HOME/registry``)."""

    root: str
    busy_timeout_ms: int = 60_000

    _schema_ready: bool = PrivateAttr(default=False)

    @classmethod
    def at(cls, root: str | Path) -> LocalModelRegistry:
        return cls(root=str(root))

    # -- plumbing ----------------------------------------------------------------------------------
    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser().absolute()

    @property
    def db_path(self) -> Path:
        return self.root_path / DB_NAME

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.root_path.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
        except sqlite3.Error as err:
            raise RegistryError(
                f"Cannot open the local model registry at {self.db_path} ({err}); check that the folder is "
                "writable (LAKEHOUSE_ML_HOME)."
            ) from None
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            if not self._schema_ready:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in SCHEMA:
                        conn.execute(statement)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                self._schema_ready = True
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        except sqlite3.OperationalError as err:
            raise RegistryError(
                f"The local model registry at {self.db_path} is busy or unavailable ({err}); retry, or raise "
                "busy_timeout_ms if many processes write at once."
            ) from None
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on failure."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _version(self, conn: sqlite3.Connection, row: sqlite3.Row) -> ModelVersion:
        aliases = [
            r[0]
            for r in conn.execute(
                "SELECT alias FROM aliases WHERE model_id = ? AND "
                "version_id = ? ORDER BY alias = 'default' DESC, alias",
                (row["model_id"], row["version_id"]),
            )
        ]
        return ModelVersion(
            model_id=row["model_id"],
            version_id=row["version_id"],
            aliases=aliases,
            display_name=row["display_name"],
            source=row["source"],
            model_type=row["model_type"],
            artifact_uri=row["artifact_uri"],
            labels=json.loads(row["labels"]),
            metrics=json.loads(row["metrics"]),
            create_time=row["create_time"],
            update_time=row["update_time"],
            deployable=bool(row["deployable"]),
            deployments=tuple(
                self._endpoint_names(self._deployments(conn, row["model_id"], row["version_id"]))
            ),
        )

    def _row(self, conn: sqlite3.Connection, model_id: str, version_or_alias: str) -> sqlite3.Row:
        check_model_id(model_id)
        if not conn.execute("SELECT 1 FROM models WHERE model_id = ?", (model_id,)).fetchone():
            known = [r[0] for r in conn.execute("SELECT model_id FROM models ORDER BY model_id")]
            raise ModelNotRegisteredError(
                f"Model {model_id!r} is not in the local model registry ({self.root_path}); registered models: "
                f"{known or 'none'}. Register it with CREATE MODEL … OPTIONS(MODEL_REGISTRY='VERTEX_AI')."
            )
        version_id = str(version_or_alias)
        if not version_id.isdigit():
            hit = conn.execute(
                "SELECT version_id FROM aliases WHERE model_id = ? AND alias = ?", (model_id, version_id)
            ).fetchone()
            if hit is None:
                known = [
                    r[0]
                    for r in conn.execute(
                        "SELECT alias FROM aliases WHERE model_id = ? ORDER BY alias", (model_id,)
                    )
                ]
                raise ModelNotRegisteredError(
                    f"Model {model_id!r} has no version with alias {version_id!r}; its aliases: {known}. Add it "
                    "with merge_version_aliases."
                )
            version_id = hit[0]
        row = conn.execute(
            "SELECT * FROM versions WHERE model_id = ? AND version_id = ?", (model_id, version_id)
        ).fetchone()
        if row is None:
            known = [
                r[0]
                for r in conn.execute(
                    "SELECT version_id FROM versions WHERE model_id = ? ORDER BY version_number", (model_id,)
                )
            ]
            raise ModelNotRegisteredError(
                f"Model {model_id!r} has no version {version_id!r}; its versions: {known}."
            )
        return row

    @staticmethod
    def _deployments(conn: sqlite3.Connection, model_id: str, version_id: str) -> list[str]:
        return [
            f"{r[0]}/{r[1]}"
            for r in conn.execute(
                "SELECT endpoint_id, deployed_model_id FROM deployed_models WHERE model_id = ? AND version_id = ? "
                "ORDER BY endpoint_id, deployed_model_id",
                (model_id, version_id),
            )
        ]

    @staticmethod
    def _endpoint_names(deployed: Sequence[str]) -> list[str]:
        return sorted({f"{LOCAL_ENDPOINT_PARENT}/endpoints/{d.split('/', 1)[0]}" for d in deployed})

    def _refuse_deployed(self, conn: sqlite3.Connection, model_id: str, version_id: str, what: str) -> None:
        deployed = self._deployments(conn, model_id, version_id)
        if deployed:
            raise VersionDeployedError(
                f"Cannot {what}: version {version_id} of model {model_id!r} is deployed "
                f"(endpoint/deployed model: {', '.join(deployed)}). Undeploy it from those endpoints first.",
                self._endpoint_names(deployed),
            )

    # -- registering -------------------------------------------------------------------------------
    def _stage(self, model_id: str, artifact_dir: str | Path) -> Path:
        src = Path(artifact_dir)
        if not src.is_dir():
            raise RegistryError(
                f"The artifacts to register for model {model_id!r} are missing: {src} is not a folder."
            )
        parent = self.root_path / model_id
        parent.mkdir(parents=True, exist_ok=True)
        staging = parent / f".tmp-{uuid.uuid4().hex}"
        try:
            _link_tree(src.resolve(), staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging

    def _insert(
        self,
        conn: sqlite3.Connection,
        model_id: str,
        staging: Path,
        *,
        source: str,
        model_type: str,
        aliases: Sequence[str],
        display_name: str | None,
        labels: Mapping[str, str] | None,
        metrics: Mapping[str, Any] | None,
        published: list[Path],
    ) -> str:
        """Allocate the next version id, move ``staging`` into place, insert the rows (inside the
        caller's transaction; ``published`` collects the folder to remove if it rolls back)."""
        now = _now()
        model = conn.execute("SELECT next_version FROM models WHERE model_id = ?", (model_id,)).fetchone()
        if model is None:
            number = 1
            conn.execute(
                "INSERT INTO models(model_id, display_name, next_version, "
                "create_time, update_time) VALUES (?, ?, 2, ?, ?)",
                (model_id, display_name or model_id, now, now),
            )
        else:
            number = int(model[0])
            conn.execute(
                "UPDATE models SET next_version = ?, update_time = ? WHERE model_id = ?",
                (number + 1, now, model_id),
            )
        version_id = str(number)
        final = self.root_path / model_id / version_id
        if final.exists():  # left by a crash between the rename and a commit that never happened
            shutil.rmtree(final)
        os.rename(staging, final)
        published.append(final)
        fsync_dir(final.parent)
        conn.execute(
            "INSERT INTO versions(model_id, version_id, version_number, "
            "display_name, source, model_type, artifact_uri, "
            "labels, metrics, deployable, create_time, update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                model_id,
                version_id,
                number,
                display_name or model_id,
                source,
                model_type.upper(),
                str(final),
                json.dumps(dict(labels or {}), sort_keys=True),
                json.dumps(dict(metrics or {}), sort_keys=True, default=_json_default),
                0 if model_type.upper() in NON_DEPLOYABLE_MODEL_TYPES else 1,
                now,
                now,
            ),
        )
        if (
            number == 1
            or not conn.execute(
                "SELECT 1 FROM aliases WHERE model_id = ? AND alias = ?", (model_id, DEFAULT_ALIAS)
            ).fetchone()
        ):
            self._set_alias(conn, model_id, version_id, DEFAULT_ALIAS, now)
        for alias in aliases:
            self._set_alias(conn, model_id, version_id, alias, now)
        return version_id

    @staticmethod
    def _set_alias(conn: sqlite3.Connection, model_id: str, version_id: str, alias: str, now: str) -> None:
        """Give ``alias`` to the version, taking it from whichever version held it (a move)."""
        old = conn.execute(
            "SELECT version_id FROM aliases WHERE model_id = ? AND alias = ?", (model_id, alias)
        ).fetchone()
        if old is not None and old[0] == version_id:
            return
        conn.execute(
            "INSERT INTO aliases(model_id, alias, version_id) VALUES (?, ?, ?) "
            "ON CONFLICT(model_id, alias) DO UPDATE SET version_id = excluded.version_id",
            (model_id, alias, version_id),
        )
        touched = [version_id] + ([old[0]] if old is not None else [])
        conn.executemany(
            "UPDATE versions SET update_time = ? WHERE model_id = ? AND version_id = ?",
            [(now, model_id, v) for v in touched],
        )

    @staticmethod
    def _check_aliases(aliases: Sequence[str]) -> list[str]:
        if isinstance(aliases, str):
            raise RegistryError(f"Give the aliases as a list, for example [{aliases!r}], not a string.")
        out = [check_alias(a) for a in aliases]
        if len(set(out)) != len(out):
            raise RegistryError(
                f"The aliases {out} list one alias more than once; aliases are unique within a model."
            )
        return out

    def register_version(
        self,
        model_id: str,
        *,
        source: str,
        model_type: str,
        artifact_dir: str | Path,
        aliases: Sequence[str] = (),
        display_name: str | None = None,
        labels: Mapping[str, str] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        check_model_id(model_id)
        aliases = self._check_aliases(aliases)
        staging = self._stage(model_id, artifact_dir)
        published: list[Path] = []
        try:
            with self._write() as conn:
                version_id = self._insert(
                    conn,
                    model_id,
                    staging,
                    source=source,
                    model_type=model_type,
                    aliases=aliases,
                    display_name=display_name,
                    labels=labels,
                    metrics=metrics,
                    published=published,
                )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            for path in published:
                shutil.rmtree(path, ignore_errors=True)
            raise
        return self.get_version(model_id, version_id)

    # -- BigQuery ML hooks -------------------------------------------------------------------------
    def find_bqml_version(self, source: str) -> ModelVersion | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM versions WHERE source = ? AND replaced_time IS NULL ORDER BY version_number DESC",
                (source,),
            ).fetchone()
            return self._version(conn, row) if row is not None else None

    def _retire(self, conn: sqlite3.Connection, row: sqlite3.Row, now: str) -> list[Path]:
        """Delete the version ``row`` that BigQuery ML replaced or dropped (inside a transaction;
        the caller has checked it is not deployed), as models.deleteVersion does: its aliases go,
        but ``default``, which moves to the newest remaining version; the model goes with its last
        version. Returns the folders to delete after the commit."""
        model_id, version_id = row["model_id"], row["version_id"]
        held = [
            r[0]
            for r in conn.execute(
                "SELECT alias FROM aliases WHERE model_id = ? AND version_id = ?", (model_id, version_id)
            )
        ]
        conn.execute("DELETE FROM aliases WHERE model_id = ? AND version_id = ?", (model_id, version_id))
        conn.execute("DELETE FROM versions WHERE model_id = ? AND version_id = ?", (model_id, version_id))
        remaining = conn.execute(
            "SELECT version_id FROM versions WHERE model_id = ? ORDER BY version_number DESC", (model_id,)
        ).fetchall()
        if not remaining:  # its last version: the model goes (models.delete)
            conn.execute("DELETE FROM models WHERE model_id = ?", (model_id,))
            return [self.root_path / model_id]
        if DEFAULT_ALIAS in held:
            self._set_alias(conn, model_id, remaining[0][0], DEFAULT_ALIAS, now)
        return [self.root_path / model_id / version_id]

    def _refuse_deployed_source(
        self, conn: sqlite3.Connection, source: str, rows: Sequence[sqlite3.Row]
    ) -> None:
        for row in rows:
            deployed = self._deployments(conn, row["model_id"], row["version_id"])
            if deployed:
                raise VersionDeployedError(
                    f"Cannot replace or drop BigQuery ML model {source.removeprefix('bqml://')}: it is registered as "
                    f"version {row['version_id']} of model {row['model_id']!r}, which is deployed (endpoint/deployed "
                    f"model: {', '.join(deployed)}). Undeploy it first.",
                    self._endpoint_names(deployed),
                )

    def replace_bqml_version(
        self,
        source: str,
        model_id: str | None,
        *,
        model_type: str = "",
        artifact_dir: str | Path | None = None,
        aliases: Sequence[str] = (),
        display_name: str | None = None,
        labels: Mapping[str, str] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> ModelVersion | None:
        if model_id is not None:
            check_model_id(model_id)
            if artifact_dir is None:
                raise RegistryError("replace_bqml_version needs artifact_dir to register the new version.")
        aliases = self._check_aliases(aliases)
        staging = self._stage(model_id, artifact_dir) if model_id is not None else None
        published: list[Path] = []
        garbage: list[Path] = []
        try:
            with self._write() as conn:
                now = _now()
                old = conn.execute(
                    "SELECT * FROM versions WHERE source = ? AND replaced_time IS NULL", (source,)
                ).fetchall()
                self._refuse_deployed_source(conn, source, old)
                version_id = None
                if model_id is not None:
                    version_id = self._insert(
                        conn,
                        model_id,
                        staging,
                        source=source,
                        model_type=model_type,
                        aliases=aliases,
                        display_name=display_name,
                        labels=labels,
                        metrics=metrics,
                        published=published,
                    )
                for row in old:
                    garbage += self._retire(conn, row, now)
        except BaseException:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            for path in published:
                shutil.rmtree(path, ignore_errors=True)
            raise
        for path in garbage:
            shutil.rmtree(path, ignore_errors=True)
        return self.get_version(model_id, version_id) if model_id is not None else None

    def drop_bqml_model(self, source: str, *, check_only: bool = False) -> None:
        """DROP MODEL: refused when its current version is deployed; otherwise that version goes
        (``default`` moves to the newest remaining version; the last version takes the model with it)."""
        garbage: list[Path] = []
        with self._write() as conn:
            rows = conn.execute(
                "SELECT * FROM versions WHERE source = ? AND replaced_time IS NULL", (source,)
            ).fetchall()
            self._refuse_deployed_source(conn, source, rows)
            if check_only:
                return
            now = _now()
            for row in rows:
                garbage += self._retire(conn, row, now)
        for path in garbage:
            shutil.rmtree(path, ignore_errors=True)

    # -- reading -----------------------------------------------------------------------------------
    def get_version(self, model_id: str, version_or_alias: str = DEFAULT_ALIAS) -> ModelVersion:
        with self._connect() as conn:
            return self._version(conn, self._row(conn, model_id, version_or_alias))

    def list_versions(self, model_id: str) -> list[ModelVersion]:
        with self._connect() as conn:
            self._row(conn, model_id, DEFAULT_ALIAS)  # the model exists
            rows = conn.execute(
                "SELECT * FROM versions WHERE model_id = ? ORDER BY version_number", (model_id,)
            ).fetchall()
            return [self._version(conn, r) for r in rows]

    def list_models(self) -> list[str]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT model_id FROM models ORDER BY model_id")]

    # -- changing ----------------------------------------------------------------------------------
    def merge_version_aliases(self, model_id: str, version_id: str, aliases: Sequence[str]) -> ModelVersion:
        add, remove = parse_merge(aliases)
        with self._write() as conn:
            row = self._row(conn, model_id, str(version_id))
            version_id = row["version_id"]
            now = _now()
            if DEFAULT_ALIAS in remove:
                holder = conn.execute(
                    "SELECT version_id FROM aliases WHERE model_id = ? AND alias = ?",
                    (model_id, DEFAULT_ALIAS),
                ).fetchone()
                if holder is not None and holder[0] == version_id:
                    raise RegistryError(
                        f"Cannot remove alias 'default' from version {version_id} of model {model_id!r}: one version "
                        "must carry 'default' at all times. Add 'default' to another version instead (that moves it)."
                    )
            for alias in remove:
                conn.execute(
                    "DELETE FROM aliases WHERE model_id = ? AND version_id = ? AND alias = ?",
                    (model_id, version_id, alias),
                )
            for alias in add:
                self._set_alias(conn, model_id, version_id, alias, now)
            conn.execute(
                "UPDATE versions SET update_time = ? WHERE model_id = ? AND version_id = ?",
                (now, model_id, version_id),
            )
        return self.get_version(model_id, version_id)

    def delete_version(self, model_id: str, version_id: str) -> None:
        """models.deleteVersion: refused when deployed and when it is the only version (use
        :meth:`delete_model`); a deleted ``default`` version hands ``default`` to the newest
        remaining version."""
        with self._write() as conn:
            row = self._row(conn, model_id, str(version_id))
            version_id = row["version_id"]
            self._refuse_deployed(
                conn, model_id, version_id, f"delete version {version_id} of model {model_id!r}"
            )
            count = conn.execute("SELECT COUNT(*) FROM versions WHERE model_id = ?", (model_id,)).fetchone()[
                0
            ]
            if count == 1:
                raise RegistryError(
                    f"Cannot delete version {version_id} of model {model_id!r}: it is the only version, and a model "
                    "keeps at least one. Delete the whole model with delete_model (or DROP MODEL in BigQuery ML)."
                )
            garbage = self._retire(conn, row, _now())
        for path in garbage:
            shutil.rmtree(path, ignore_errors=True)

    def delete_model(self, model_id: str) -> None:
        """models.delete: every version goes; refused while any version is deployed."""
        with self._write() as conn:
            self._row(conn, model_id, DEFAULT_ALIAS)
            for (version_id,) in conn.execute(
                "SELECT version_id FROM versions WHERE model_id = ?", (model_id,)
            ).fetchall():
                self._refuse_deployed(conn, model_id, version_id, f"delete model {model_id!r}")
            for table in ("aliases", "versions", "models"):
                conn.execute(f"DELETE FROM {table} WHERE model_id = ?", (model_id,))
        shutil.rmtree(self.root_path / model_id, ignore_errors=True)

    # -- serving helpers ---------------------------------------------------------------------------
    def version_url(self, version: ModelVersion) -> str:
        return version.artifact_uri

    def bqml_engine(
        self, model_id: str, version_or_alias: str = DEFAULT_ALIAS
    ) -> tuple[Any, str, ModelVersion]:
        """A BigQuery ML engine that reads this version's artifacts, the model name to pass to it,
        and the version: ``engine.predict(name, frame)`` gives the version's predictions."""

        version = self.get_version(model_id, version_or_alias)
        name = json.loads((Path(version.artifact_uri) / "model.json").read_text())["name"]
        view = self.root_path / ".views" / f"{model_id}@{version.version_id}"
        link = view / name
        if not link.is_symlink():
            view.mkdir(parents=True, exist_ok=True)
            tmp = view / f".lnk-{uuid.uuid4().hex}"
            os.symlink(version.artifact_uri, tmp)
            os.replace(tmp, link)
        return BqmlEngine(view), name, version


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
