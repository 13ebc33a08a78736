"""Benchmark of the local endpoint server: single-instance predict over HTTP on loopback with 4
concurrent keep-alive clients and logging on; a 100-instance batch; the ratio to in-process
ML.PREDICT of the same rows; and a single-instance predict of a KMEANS model with a TRANSFORM
clause. Records into docs/benchmarks.md.

The load generator is 4 threads of raw keep-alive sockets sending a prebuilt request (so the
figures measure the server, not an HTTP client library); it runs on the same 2 cores.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import record_section  # noqa: E402
from lakehouse_ml.backends.local_endpoints import LocalEndpoints  # noqa: E402
from lakehouse_ml.backends.local_warehouse import LocalWarehouse  # noqa: E402
from lakehouse_ml.bigquery import served  # noqa: E402
from lakehouse_ml.engine.engine import BqmlEngine  # noqa: E402
from lakehouse_ml.serving import server  # noqa: E402
from lakehouse_ml_tests.serving.conftest import free_port, instances, training_frame  # noqa: E402

TRANSFORM_MODEL = """
CREATE MODEL segments
TRANSFORM (
  LN(1 + ABS(x1)) AS log_x1,
  ML.STANDARD_SCALER(x2) OVER () AS x2_scaled,
  CONCAT(IFNULL(channel, 'none'), IF(member, '+', '-')) AS channel_member
)
OPTIONS (model_type = 'KMEANS', num_clusters = 4) AS
SELECT x1, x2, channel, member FROM customers
"""


def _request(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _client(port: int, request: bytes, n: int, out: list, start: threading.Barrier) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    start.wait()
    for _ in range(n):
        t0 = time.perf_counter()
        sock.sendall(request)
        buf = b""
        while True:
            buf += sock.recv(65536)
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(rest) < length:
                    rest += sock.recv(65536)
                break
        times.append(time.perf_counter() - t0)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode())
    sock.close()
    out.extend(times)


def load(port: int, request: bytes, clients: int, per_client: int) -> tuple[np.ndarray, float]:
    out: list = []
    barrier = threading.Barrier(clients + 1)
    threads = [
        threading.Thread(target=_client, args=(port, request, per_client, out, barrier))
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return np.array(out) * 1e3, clients * per_client / (time.perf_counter() - t0)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    engine = BqmlEngine(root / "models")
    frame = training_frame(2000)
    engine.create_model("churn", {"model_type": "LOGISTIC_REG", "input_label_cols": ["churned"]}, frame)
    # A model with a TRANSFORM clause: the endpoint applies the TRANSFORM (on DuckDB) per request.
    warehouse = LocalWarehouse.at(root / "warehouse.duckdb", models_dir=root / "models")
    warehouse.load_dataframe(frame.drop(columns=["churned"]), "customers")
    warehouse.execute(TRANSFORM_MODEL)
    home = root / "home"
    ep = LocalEndpoints(home=str(home), port=free_port())
    ep.create_endpoint("churn", endpoint_id="churn")
    ep.deploy("churn", "churn", "1", str(engine.store.version_dir("churn")), logging_sampling_rate=1.0)
    ep.create_endpoint("segments", endpoint_id="segments")
    ep.deploy(
        "segments", "segments", "1", str(engine.store.version_dir("segments")), logging_sampling_rate=1.0
    )
    process = server.start_background(home, ep.host, ep.port)
    try:
        path = "/v1/projects/local/locations/us-central1/endpoints/churn:predict"
        one = _request(path, json.dumps({"instances": instances(frame.head(1))}).encode())
        batch = _request(path, json.dumps({"instances": instances(frame.head(100))}).encode())
        # A model with a TRANSFORM clause takes NULL as the documented sentinels (docs/serving-format.md).
        one_row = pa.Table.from_pandas(frame.head(1).drop(columns=["churned"]), preserve_index=False)
        transformed = _request(
            path.replace("/churn:", "/segments:"),
            json.dumps({"instances": served.instances(one_row, transform=True)}).encode(),
        )
        load(ep.port, one, 4, 500)  # warm up
        lat1, rps = load(ep.port, one, 4, 5000)
        lat100, rps100 = load(ep.port, batch, 1, 1000)
        load(ep.port, transformed, 4, 200)
        lat_t, rps_t = load(ep.port, transformed, 4, 2000)
    finally:
        server.stop_server(home)
        process.wait(30)
    logged = sum(1 for _ in (home / "serving" / "logs" / "churn").glob("*.parquet"))
    in_process = []
    rows1, rows100 = frame.head(1), frame.head(100)
    for rows, reps in ((rows1, 300), (rows100, 300)):
        engine.predict("churn", rows)
        t0 = time.perf_counter()
        for _ in range(reps):
            engine.predict("churn", rows)
        in_process.append((time.perf_counter() - t0) / reps * 1e3)
    one_row = (
        "SELECT * FROM ML.PREDICT(MODEL segments, (SELECT x1, x2, channel, member FROM customers LIMIT 1))"
    )
    warehouse.query(one_row)
    t0 = time.perf_counter()
    for _ in range(100):
        warehouse.query(one_row)
    in_process.append((time.perf_counter() - t0) / 100 * 1e3)
    t50, t99 = np.percentile(lat_t, [50, 99])
    p50, p99 = np.percentile(lat1, [50, 99])
    b50, b99 = np.percentile(lat100, [50, 99])
    body = "\n".join(
        [
            "## Local endpoint server (benchmarks/serving.py)",
            "",
            "LOGISTIC_REG (4 features: 2 numeric, 2 categorical), uvicorn + httptools + uvloop, one server",
            "process; load generator: raw keep-alive sockets in the same machine (2 cores shared).",
            f"Request-response log on (sampling rate 1.0; {logged} Parquet batch files written).",
            "",
            "| case | p50 ms | p99 ms | req/s | in-process ML.PREDICT ms | HTTP p50 / ML.PREDICT |",
            "|---|---|---|---|---|---|",
            f"| 1 instance, 4 concurrent clients | {p50:.3f} | {p99:.3f} | "
            f"{rps:,.0f} | {in_process[0]:.3f} | {p50 / in_process[0]:.2f} |",
            f"| 100 instances, 1 client | {b50:.3f} | {b99:.3f} | {rps100:,.0f} "
            f"| {in_process[1]:.3f} | {b50 / in_process[1]:.2f} |",
            f"| 1 instance, KMEANS with a TRANSFORM clause, 4 concurrent clients | {t50:.3f} "
            f"| {t99:.3f} | {rps_t:,.0f} | {in_process[2]:.3f} | {t50 / in_process[2]:.2f} |",
            "",
            "Targets: 1 instance p50 ≤ 1 ms, p99 ≤ 5 ms, ≥ 2,000 req/s; 100 instances p50 ≤ 5 ms.",
            "The TRANSFORM row has no target: the endpoint runs the model's TRANSFORM (LN, ML.STANDARD_SCALER",
            "with its training statistics, CONCAT) on an in-memory DuckDB for each request; its in-process",
            "baseline is the local warehouse's ML.PREDICT statement on one row, TRANSFORM included.",
        ]
    )
    print(body)
    record_section(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md", "serving", body)


if __name__ == "__main__":
    main()
