"""The configuration of one simulated history: seed, window, scale and drift scenarios."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

from lakehouse_ml.datagen.scenarios import DriftScenario

MAX_DAYS = 3650
MIN_CUSTOMERS = 10


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. Equal configs give byte-identical data.

    ``customers`` is the number of customers of the four base regions; the ``new_region``
    scenario adds its own 'central' customers on top (see :data:`SCENARIOS`).
    """

    seed: int = 42
    start_date: dt.date = dt.date(2026, 1, 1)
    days: int = 180
    customers: int = 5000
    products: int = 500
    scenarios: tuple[DriftScenario, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        start = self.start_date
        if isinstance(start, str):
            try:
                start = dt.date.fromisoformat(start)
            except ValueError:
                raise ValueError(f"start_date {self.start_date!r} is not a date (YYYY-MM-DD)") from None
        elif isinstance(start, dt.datetime):
            start = start.date()
        elif not isinstance(start, dt.date):
            raise ValueError(f"start_date must be a date, got {type(start).__name__}")
        object.__setattr__(self, "start_date", start)
        for name, low, high in (
            ("days", 1, MAX_DAYS),
            ("customers", MIN_CUSTOMERS, None),
            ("products", 8, None),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                bound = f">= {low}" + (f" and <= {high}" if high is not None else "")
                raise ValueError(f"{name} must be {bound}, got {value}")
        scenarios = self.scenarios
        if isinstance(scenarios, (str, DriftScenario)):
            scenarios = (scenarios,)
        parsed = tuple(s if isinstance(s, DriftScenario) else DriftScenario.parse(s) for s in scenarios)
        seen: set[str] = set()
        for scenario in parsed:
            if scenario.name in seen:
                raise ValueError(f"drift scenario {scenario.name!r} is given twice; give each scenario once")
            seen.add(scenario.name)
            if not (self.start_date <= scenario.start <= self.end_date):
                raise ValueError(
                    f"drift scenario {scenario} starts outside the simulated window "
                    f"{self.start_date.isoformat()}..{self.end_date.isoformat()}; pick a start day inside it "
                    "(or widen the window with days/start_date)"
                )
        object.__setattr__(self, "scenarios", parsed)

    @property
    def end_date(self) -> dt.date:
        """The last simulated day (inclusive)."""
        return self.start_date + dt.timedelta(days=self.days - 1)

    def scenario(self, name: str) -> DriftScenario | None:
        """The scenario called ``name``, or None."""
        return next((s for s in self.scenarios if s.name == name), None)

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "start_date": self.start_date.isoformat(),
            "days": self.days,
            "customers": self.customers,
            "products": self.products,
            "scenarios": [s.to_dict() for s in self.scenarios],
        }

    @classmethod
    def from_dict(cls, data: dict) -> SimulationConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["scenarios"] = tuple(
            DriftScenario.from_dict(s) if isinstance(s, dict) else s for s in values.get("scenarios", ())
        )
        return cls(**values)
