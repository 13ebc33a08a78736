"""The request-response log of the local endpoint server.

Sampled per request (each deployed model's ``logging_sampling_rate``, as Vertex AI's
``PredictRequestResponseLoggingConfig.sampling_rate``), buffered in memory and written as Parquet
batches under ``$LAKEHOUSE_ML_HOME/serving/logs/<endpoint_id>/<deployed_model_id>-<utc time>-<pid>-<seq>.parquet``.

Each file is written to a hidden temporary name beside the target, fsynced and renamed
(:mod:`lakehouse_ml.core.atomic`), so a crash (even ``kill -9``) never leaves a torn ``.parquet`` file:
at worst a hidden ``.….tmp-…`` file, which the next server start removes. A batch is written when
``max_rows`` rows are buffered, every ``flush_seconds`` by a background thread, and on a clean
shutdown.

One row per logged instance, in the schema of :mod:`lakehouse_ml.bigquery.request_log`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import threading
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse_ml.bigquery.request_log import LOG_COLUMNS, feature_array
from lakehouse_ml.core.atomic import replacing


class RequestLog:
    def __init__(self, root: Path, *, max_rows: int = 5000, flush_seconds: float = 1.0):
        self.root = Path(root)
        self.max_rows = max_rows
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        # (endpoint, deployed model id) -> [(model_id, version, time, request id, rows, predictions, feature names)]
        self._buffers: dict[tuple[str, str], list] = defaultdict(list)
        self._count = 0
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.random

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._clean_temporaries()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # a full disk must not take the server down; the next flush retries
                pass

    def _clean_temporaries(self) -> None:
        if not self.root.is_dir():
            return
        for entry in self.root.glob("*/.*.tmp-*"):
            try:
                pid = int(entry.name.rsplit(".tmp-", 1)[1].split("-")[0])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid():
                entry.unlink(missing_ok=True)

    # -- logging -----------------------------------------------------------------------------------
    def sample(self, rate: float) -> bool:
        return rate >= 1.0 or (rate > 0.0 and self._random() < rate)

    def add(
        self,
        endpoint_id: str,
        deployed_model_id: str,
        model_id: str,
        version_id: str,
        request_id: str,
        feature_names: list[str],
        rows: list[dict],
        predictions: list[dict],
    ) -> None:
        entry = (model_id, version_id, time.time(), request_id, rows, predictions, feature_names)
        with self._lock:
            self._buffers[(endpoint_id, deployed_model_id)].append(entry)
            self._count += len(rows)
            full = self._count >= self.max_rows
        if full:
            threading.Thread(target=self.flush, daemon=True).start()

    def flush(self) -> list[Path]:
        """Write every buffered batch; returns the files written."""
        with self._lock:
            buffers, self._buffers, self._count = self._buffers, defaultdict(list), 0
        written = []
        with self._write_lock:
            for (endpoint_id, deployed_model_id), entries in buffers.items():
                if entries:
                    written.append(self._write(endpoint_id, deployed_model_id, entries))
        return written

    def _write(self, endpoint_id: str, deployed_model_id: str, entries: list) -> Path:
        columns: dict[str, list] = {name: [] for name in LOG_COLUMNS}
        features: dict[str, list] = {}
        n = 0
        for model_id, version_id, logged, request_id, rows, predictions, names in entries:
            for name in names:
                if name not in features:
                    features[name] = [None] * n
            for i, (row, prediction) in enumerate(zip(rows, predictions)):
                columns["endpoint_id"].append(endpoint_id)
                columns["deployed_model_id"].append(deployed_model_id)
                columns["model_id"].append(model_id)
                columns["model_version_id"].append(version_id)
                columns["logging_time"].append(logged)
                columns["request_id"].append(request_id)
                columns["instance_index"].append(i)
                columns["prediction"].append(json.dumps(prediction))
                for name, values in features.items():
                    values.append(row.get(name))
                n += 1
        arrays = {
            "endpoint_id": pa.array(columns["endpoint_id"], pa.string()),
            "deployed_model_id": pa.array(columns["deployed_model_id"], pa.string()),
            "model_id": pa.array(columns["model_id"], pa.string()),
            "model_version_id": pa.array(columns["model_version_id"], pa.string()),
            "logging_time": pa.array([int(t * 1e6) for t in columns["logging_time"]], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "request_id": pa.array(columns["request_id"], pa.string()),
            "instance_index": pa.array(columns["instance_index"], pa.int32()),
        }
        for name, values in features.items():
            if name in arrays or name == "prediction":
                name = f"feature_{name}"
            arrays[name] = feature_array(values)
        arrays["prediction"] = pa.array(columns["prediction"], pa.string())
        table = pa.table(arrays)
        self._seq += 1
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.root / endpoint_id / f"{deployed_model_id}-{stamp}-{os.getpid()}-{self._seq:06d}.parquet"
        with replacing(path) as tmp:
            pq.write_table(table, tmp)
        return path


def read_log(root: Path, endpoint_id: str | None = None) -> pa.Table | None:
    """Every logged row (of one endpoint, or all) as one table; None when nothing is logged."""
    root = Path(root)
    folders = (
        [root / endpoint_id]
        if endpoint_id
        else ([p for p in root.iterdir() if p.is_dir()] if root.is_dir() else [])
    )
    tables = [
        pq.read_table(f)
        for folder in folders
        if folder.is_dir()
        for f in sorted(folder.glob("[!.]*.parquet"))
    ]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")
