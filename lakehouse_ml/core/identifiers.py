"""Identifier rules: what a name from configuration may look like before it goes into SQL or a
resource name."""

from __future__ import annotations

import re

from lakehouse_ml.core.errors import WarehouseError

# A plain (unquoted) BigQuery identifier: table, column, model and parameter names.
IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Google Cloud project ids, BigQuery dataset ids and locations (settings).
PROJECT_ID_PATTERN = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
DATASET_ID_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")
LOCATION_PATTERN = re.compile(r"^(US|EU|[a-z]+-[a-z]+[0-9]+)$")


def check_identifier(name: str, kind: str = "identifier") -> str:
    """Return ``name`` if it is a plain BigQuery identifier, else raise :class:`WarehouseError`."""
    if not isinstance(name, str) or not IDENTIFIER_PATTERN.match(name):
        raise WarehouseError(
            f"Invalid {kind} name {name!r}: use letters, digits and underscores, starting with a "
            "letter or underscore (at most 128 characters)."
        )
    return name
