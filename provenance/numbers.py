"""How numbers are written for people: table cells and p-values, the same in every renderer."""
from __future__ import annotations

import math
from typing import Any


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    if isinstance(value, (list, tuple)):
        text = ", ".join(format_value(v) for v in list(value)[:8])
        return f"[{text}{', …' if len(value) > 8 else ''}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in list(value.items())[:8]) + "}"
    return str(value)


def format_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    if p <= 0:
        return "p < 1e-300"
    return f"p = {p:.2e}" if p < 1e-3 else f"p = {p:.3f}"
