"""Streaming, resumable checkpoint conversion."""

from qtools.convert.run import ConversionInterrupted, ConvertSummary, ProgressHooks, convert_checkpoint

__all__ = ["ConversionInterrupted", "ConvertSummary", "ProgressHooks", "convert_checkpoint"]
