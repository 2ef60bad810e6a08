"""Streaming, resumable checkpoint conversion."""

from qtools.convert.run import ConvertSummary, ProgressHooks, convert_checkpoint

__all__ = ["ConvertSummary", "ProgressHooks", "convert_checkpoint"]
