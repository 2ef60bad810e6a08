"""A small trained model with Qwen3-Coder's exact architecture and file layout, for offline tests.

`build_toy_model(out_dir)` trains it on this machine in about 8 minutes (standard-library code, generated tool
conversations, FIM samples), writes the Hugging Face checkpoint and `toy_gate.json`, and raises if the model
misses its quality gate. The names below are imported on first use, so the `qtools` CLI (which registers
`qtools toy`) does not import transformers.
"""

from __future__ import annotations

from qtools._lazy import lazy_getattr

_EXPORTS = {
    "GATE_FILE": "qtools.toy.build",
    "build_toy_model": "qtools.toy.build",
    "ToyArchitecture": "qtools.toy.recipe",
    "ToyRecipe": "qtools.toy.recipe",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
