"""Drift scenarios of the Cymbal retail simulator.

A scenario starts on a chosen day and, from that day on, changes both what customers do (the
feature distributions) and *why* they leave (the relation between behaviour and churn). A churn
model trained before the start therefore loses quality after it, and one retrained on post-drift
data recovers. The behavioural details live in :mod:`lakehouse_ml.datagen.simulator`; this module
holds the names, their parameters and the text format ``name@YYYY-MM-DD[:intensity]``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

SCENARIOS: dict[str, str] = {
    "price_shock": (
        "Paid prices rise 15% x intensity; price-sensitive customers buy less and churn much "
        "faster, while before the shock they were the most loyal."
    ),
    "channel_shift": (
        "Store orders move to the app (half of them at intensity 1); the frequent, loyal store "
        "regulars now churn fastest and app customers order more and stay."
    ),
    "new_region": (
        "Region 'central' opens: 30% x intensity extra customers sign up from the start day, "
        "price-sensitive app users drawn by a 30-day launch promotion; after it the busiest "
        "of them churn the most."
    ),
}

MAX_INTENSITY = 10.0

_TEXT = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*@\s*(?P<start>\d{4}-\d{2}-\d{2})"
    r"(?:\s*:\s*(?P<intensity>[^\s]+))?\s*$"
)
_FORMAT_HINT = "expected NAME@YYYY-MM-DD or NAME@YYYY-MM-DD:INTENSITY, e.g. price_shock@2026-04-01:1.5"


def _known() -> str:
    return ", ".join(sorted(SCENARIOS))


@dataclass(frozen=True)
class DriftScenario:
    """One drift scenario: ``name`` (see :data:`SCENARIOS`) starting on ``start`` (inclusive).

    ``intensity`` scales the effect (1.0 is the documented default strength; must be in
    (0, 10]).
    """

    name: str
    start: dt.date
    intensity: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise ValueError(f"Unknown drift scenario {self.name!r}; known scenarios: {_known()}")
        start = self.start
        if isinstance(start, str):
            try:
                start = dt.date.fromisoformat(start)
            except ValueError:
                raise ValueError(
                    f"Drift scenario {self.name!r}: start {self.start!r} is not a date (YYYY-MM-DD)"
                ) from None
        elif isinstance(start, dt.datetime):
            start = start.date()
        elif not isinstance(start, dt.date):
            raise ValueError(
                f"Drift scenario {self.name!r}: start must be a date, got {type(start).__name__}"
            )
        object.__setattr__(self, "start", start)
        try:
            intensity = float(self.intensity)
        except (TypeError, ValueError):
            raise ValueError(
                f"Drift scenario {self.name!r}: intensity must be a number, got {self.intensity!r}"
            ) from None
        if not math.isfinite(intensity) or intensity <= 0 or intensity > MAX_INTENSITY:
            raise ValueError(
                f"Drift scenario {self.name!r}: intensity must be > 0 and <= {MAX_INTENSITY:g}, "
                f"got {self.intensity!r}"
            )
        object.__setattr__(self, "intensity", intensity)

    @classmethod
    def parse(cls, text: str) -> DriftScenario:
        """Parse ``"price_shock@2026-04-01"`` or ``"price_shock@2026-04-01:1.5"``."""
        if not isinstance(text, str):
            raise ValueError(f"Bad drift scenario {text!r}: {_FORMAT_HINT}")
        match = _TEXT.match(text)
        if not match:
            raise ValueError(f"Bad drift scenario {text!r}: {_FORMAT_HINT}; known scenarios: {_known()}")
        name = match["name"]
        if name not in SCENARIOS:
            raise ValueError(f"Unknown drift scenario {name!r} in {text!r}; known scenarios: {_known()}")
        try:
            start = dt.date.fromisoformat(match["start"])
        except ValueError:
            raise ValueError(f"Bad drift scenario {text!r}: {match['start']!r} is not a valid date") from None
        intensity = 1.0
        if match["intensity"] is not None:
            try:
                intensity = float(match["intensity"])
            except ValueError:
                raise ValueError(
                    f"Bad drift scenario {text!r}: intensity {match['intensity']!r} is not a number; "
                    f"{_FORMAT_HINT}"
                ) from None
        return cls(name=name, start=start, intensity=intensity)

    def __str__(self) -> str:
        return f"{self.name}@{self.start.isoformat()}:{self.intensity:g}"

    def to_dict(self) -> dict:
        return {"name": self.name, "start": self.start.isoformat(), "intensity": self.intensity}

    @classmethod
    def from_dict(cls, data: dict) -> DriftScenario:
        return cls(name=data["name"], start=data["start"], intensity=data.get("intensity", 1.0))
