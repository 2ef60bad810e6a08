"""qtools: quantisation toolkit for Qwen3-Coder MoE checkpoints."""

__version__ = "0.1.0"
