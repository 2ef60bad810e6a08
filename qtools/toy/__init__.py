"""A small trained model with Qwen3-Coder's exact architecture and file layout, for offline tests.

`build_toy_model(out_dir)` trains it on this machine in about 8 minutes (standard-library code, generated tool
conversations, FIM samples), writes the Hugging Face checkpoint and `toy_gate.json`, and raises if the model
misses its quality gate.
"""

from qtools.toy.build import GATE_FILE, build_toy_model
from qtools.toy.recipe import ToyArchitecture, ToyRecipe

__all__ = ["GATE_FILE", "ToyArchitecture", "ToyRecipe", "build_toy_model"]
