"""What every simulate action shares: its error and its field checks (the message names the
field). The actions live next to what they simulate (engine.py, people.py, ...)."""

from __future__ import annotations

from typing import Any


class SimulationError(ValueError):
    """A bad simulate request; the message names the field."""


TYPE_NAMES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


def field(a: dict[str, Any], key: str, tp: type, *, required: bool = False, default: Any = None):
    if key not in a or a[key] is None:
        if required:
            raise SimulationError(f"{key}: is required")
        return default
    v = a[key]
    if tp is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, tp) or (tp is int and isinstance(v, bool)):
        raise SimulationError(f"{key}: must be of type {TYPE_NAMES[tp]}")
    if tp is str and not v:
        raise SimulationError(f"{key}: must not be empty")
    return v
