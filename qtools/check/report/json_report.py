"""report.json: the whole `CheckResult` as strict JSON (NaN -> "nan", ±inf -> "inf" / "-inf"; null is a figure
that was not measured)."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qtools.check.result import CheckResult


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by "nan", "inf" or "-inf", recursively (None stays null:
    "not measured", which a NaN measurement is not)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def render_json(result: CheckResult) -> str:
    """Indented strict JSON of `result.to_dict()`."""
    return json.dumps(json_safe(result.to_dict()), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
