"""Calibrated INT4 conversion (GPTQ), layer by layer from the BF16 shards: see `qtools.gptq.run`."""

from qtools.gptq.run import GPTQHooks, GPTQSummary, convert_gptq

__all__ = ["GPTQHooks", "GPTQSummary", "convert_gptq"]
