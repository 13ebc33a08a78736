"""Shared helpers of the benchmark scripts: peak memory sampling and recording figures."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil


class PeakRSS:
    """Samples this process's resident memory every 20 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._process = psutil.Process()

    def __enter__(self):
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def record_section(path: Path, name: str, body: str) -> None:
    """Replace the section between this benchmark's markers in docs/benchmarks.md (or append it)."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nFigures recorded by the scripts in `benchmarks/`.\n\n"
    )
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def figures_section(title: str, provenance: str, figures: dict[str, str], *extra: str) -> str:
    """A benchmark's docs/benchmarks.md section: heading, how it was run, a measure/value table."""
    return "\n".join(
        [
            f"## {title}",
            "",
            provenance,
            "",
            "| measure | value |",
            "| --- | --- |",
            *[f"| {k} | {v} |" for k, v in figures.items()],
            "",
            *extra,
        ]
    )


def print_figures(figures: dict[str, str]) -> None:
    """The figures on the terminal, one measure per line, names right-aligned."""
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:>{width}}: {value}")


def record_figures(name: str, title: str, provenance: str, figures: dict[str, str], *extra: str) -> None:
    """Record a benchmark's section of docs/benchmarks.md."""
    root = Path(__file__).resolve().parent.parent
    record_section(root / "docs" / "benchmarks.md", name, figures_section(title, provenance, figures, *extra))
