"""`qtools check`: judge a quantised checkpoint against its reference (see docs/check.md).

`run_check(ref, quant, ...)` -> `CheckResult` compares next-token distributions on held-out code, greedy
continuations, tool calls and FIM middles, per-module weight and per-layer output SQNR, evaluates `Thresholds`
and writes report.json / report.md / report.html. The names below are imported on first use, so importing the
CLI does not import torch.
"""

from __future__ import annotations

from qtools._lazy import lazy_getattr

_EXPORTS = {
    "CheckResult": "qtools.check.result",
    "run_check": "qtools.check.pipeline",
    "SuiteSizes": "qtools.check.suites",
    "Thresholds": "qtools.check.thresholds",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
