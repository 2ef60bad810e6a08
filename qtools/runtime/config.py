"""The model dimensions the runtime needs: the checkpoint's config.json as `qtools.checkpoint.config` parses it
(one parser for convert, verify, inspect, the runtime and the check)."""

from qtools.checkpoint.config import ModelConfig, YarnScaling

__all__ = ["ModelConfig", "YarnScaling"]
