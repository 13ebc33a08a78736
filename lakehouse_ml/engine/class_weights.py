"""CLASS_WEIGHTS' value, parsed once for every model type: ``[STRUCT('label', weight), …]`` as
``[(label, weight), …]``, from a mapping, a list of pairs, or a list of two-field dicts (as the
SQL layer may hand over ``STRUCT`` values). Used by :func:`lakehouse_ml.engine.options.class_weights`,
the option's checker, which every model type (and :mod:`lakehouse_ml.engine.xgb`) parses it with."""

from __future__ import annotations

from typing import Any, Callable, Mapping

SHAPE = "an ARRAY of STRUCT(label STRING, weight FLOAT64)"


def pairs(value: Any, bad_shape: Callable[[], Exception]) -> list[tuple[Any, Any]]:
    """The (label, weight) pairs of ``value`` (weights unchecked); ``bad_shape()`` is raised
    for anything else."""
    if isinstance(value, Mapping):
        return list(value.items())
    if not isinstance(value, (list, tuple)):
        raise bad_shape()
    items: list[tuple[Any, Any]] = []
    for entry in value:
        if isinstance(entry, Mapping) and len(entry) == 2:
            items.append(tuple(entry.values()))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            items.append(tuple(entry))
        else:
            raise bad_shape()
    return items
