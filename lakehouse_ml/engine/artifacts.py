"""Model artifacts: safe formats, written atomically.

A model lives at ``models_dir/<name>/``:

* ``model.json`` — metadata, options, preprocessing statistics, training info, evaluation
  metrics (plain JSON);
* ``arrays.npz`` — the numeric parameters (``numpy.savez``; loaded with ``allow_pickle=False``);
* ``booster.json`` — tree models: the XGBoost model in XGBoost's own JSON format.

Nothing is ever pickled: loading an artifact cannot run code.

Atomicity: ``models_dir/<name>`` is a symbolic link to a version directory
``models_dir/.v-<name>-<token>``. A model is written into a staging directory beside it, renamed
to a version directory, and published by replacing the link in one ``rename`` (``CREATE OR
REPLACE`` swaps the whole model at once; a reader sees the old model or the new one, never a
mix). A failure before the swap leaves nothing behind. Publishing happens under an exclusive
lock per model name, so concurrent statements on one model never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lakehouse_ml.core.atomic import fsync_dir
from lakehouse_ml.core.errors import BqmlError, ModelExistsError, ModelNotFoundError

MODEL_JSON = "model.json"
ARRAYS_NPZ = "arrays.npz"
FORMAT_VERSION = 1

# BigQuery model names: "Contain letters (upper or lower case), numbers, and underscores"; the
# local file system caps a name at 255 bytes, so the local engine caps it at 200 characters.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,200}$")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise BqmlError(
            f"Invalid model name {name!r}: use letters, digits and underscores "
            "(at most 200 characters locally)."
        )
    return name


class ModelStore:
    """The models under one directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- paths -------------------------------------------------------------------------------------
    def link(self, name: str) -> Path:
        return self.root / check_name(name)

    def exists(self, name: str) -> bool:
        path = self.link(name)
        return (path / MODEL_JSON).is_file()

    def version_dir(self, name: str) -> Path:
        """The resolved directory of the current version (raises when the model does not exist)."""
        path = self.link(name)
        if not (path / MODEL_JSON).is_file():
            raise ModelNotFoundError(
                f"Model {name!r} not found (in {self.root}); create it with CREATE MODEL {name} …."
            )
        return path.resolve()

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".lock-{check_name(name)}", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- reading -----------------------------------------------------------------------------------
    def load(self, name: str) -> tuple[dict, dict[str, np.ndarray], Path]:
        directory = self.version_dir(name)
        meta = json.loads((directory / MODEL_JSON).read_text())
        arrays: dict[str, np.ndarray] = {}
        npz = directory / ARRAYS_NPZ
        if npz.is_file():
            with np.load(npz, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        return meta, arrays, directory

    def read_file(self, directory: Path, filename: str) -> bytes:
        return (directory / filename).read_bytes()

    def load_meta(self, name: str) -> dict:
        return json.loads((self.version_dir(name) / MODEL_JSON).read_text())

    # -- writing -----------------------------------------------------------------------------------
    def _stage(self, name: str, meta: dict, arrays: dict[str, np.ndarray], files: dict[str, bytes]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".tmp-{name}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            _write(
                staging / MODEL_JSON,
                json.dumps(
                    {**meta, "format_version": FORMAT_VERSION}, indent=1, default=_json_default
                ).encode(),
            )
            if arrays:
                for key, value in arrays.items():
                    if np.asarray(value).dtype == object:
                        raise TypeError(f"array {key!r} has dtype object; artifacts hold numeric arrays only")
                with open(staging / ARRAYS_NPZ, "wb") as handle:
                    np.savez(handle, **{k: np.asarray(v) for k, v in arrays.items()})
                    handle.flush()
                    os.fsync(handle.fileno())
            for filename, content in files.items():
                _write(staging / filename, content)
            fsync_dir(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging

    def save(
        self,
        name: str,
        meta: dict,
        arrays: dict[str, np.ndarray],
        files: dict[str, bytes] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Publish a new model; ``replace=False`` fails when the model exists."""
        check_name(name)
        staging = self._stage(name, meta, arrays, files or {})
        try:
            with self.lock(name):
                link = self.link(name)
                previous = link.resolve() if link.is_symlink() else None
                if not replace and (link.exists() or link.is_symlink()):
                    raise ModelExistsError(
                        f"Model {name!r} already exists; use CREATE OR REPLACE MODEL to replace it, or "
                        "CREATE MODEL IF NOT EXISTS to keep it."
                    )
                version = self.root / f".v-{name}-{uuid.uuid4().hex}"
                os.rename(staging, version)
                staging = version
                self._publish(link, version)
                staging = None  # published
                if previous is not None and previous != version:
                    shutil.rmtree(previous, ignore_errors=True)
                self._collect(name)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    def update_meta(self, name: str, change: Callable[[dict], dict]) -> dict:
        """Publish a new version whose ``model.json`` is ``change(old)`` (ALTER MODEL)."""
        with self.lock(name):
            current = self.version_dir(name)
            meta = change(json.loads((current / MODEL_JSON).read_text()))
            staging = self.root / f".tmp-{name}-{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                for entry in current.iterdir():
                    if entry.name == MODEL_JSON:
                        continue
                    try:
                        os.link(entry, staging / entry.name)  # the arrays are immutable: share them
                    except OSError:
                        shutil.copy2(entry, staging / entry.name)
                _write(staging / MODEL_JSON, json.dumps(meta, indent=1, default=_json_default).encode())
                fsync_dir(staging)
                version = self.root / f".v-{name}-{uuid.uuid4().hex}"
                os.rename(staging, version)
                staging = version
                self._publish(self.link(name), version)
                staging = None
                shutil.rmtree(current, ignore_errors=True)
            finally:
                if staging is not None:
                    shutil.rmtree(staging, ignore_errors=True)
        return meta

    def drop(self, name: str) -> bool:
        with self.lock(name):
            link = self.link(name)
            if not (link.exists() or link.is_symlink()):
                return False
            target = link.resolve() if link.is_symlink() else None
            if link.is_symlink():
                os.unlink(link)
            else:
                shutil.rmtree(link)
            fsync_dir(self.root)
            if target is not None:
                shutil.rmtree(target, ignore_errors=True)
            self._collect(name)
            return True

    def _publish(self, link: Path, version: Path) -> None:
        tmp_link = self.root / f".lnk-{uuid.uuid4().hex}"
        os.symlink(version.name, tmp_link)
        try:
            if link.exists() and not link.is_symlink():  # a plain directory (not written by this store)
                aside = self.root / f".old-{link.name}-{uuid.uuid4().hex}"
                os.rename(link, aside)
                shutil.rmtree(aside, ignore_errors=True)
            os.replace(tmp_link, link)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_link)
            raise
        fsync_dir(self.root)

    def _collect(self, name: str) -> None:
        """Remove version directories of ``name`` that no link points to (left by a crash)."""
        link = self.link(name)
        current = link.resolve().name if link.is_symlink() else None
        for entry in self.root.glob(f".v-{name}-*"):
            if entry.name != current and len(entry.name) == len(f".v-{name}-") + 32:
                shutil.rmtree(entry, ignore_errors=True)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / MODEL_JSON).is_file()
        )


def _write(path: Path, content: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
