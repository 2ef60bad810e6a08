"""`qtools publish`: a quantised checkpoint and its model card to the Hugging Face Hub (see docs/publish.md).

`publish_checkpoint(PublishRequest(...))` refuses what `qtools.publish.gate` rejects, stages the checkpoint's files
with the card (`qtools.publish.card`) and uploads them resumably (`qtools.publish.upload`). Imported on first use,
so importing the CLI imports neither huggingface_hub nor torch.
"""

from __future__ import annotations

from qtools._lazy import lazy_getattr

_EXPORTS = {
    "PublishRequest": "qtools.publish.run",
    "PublishSummary": "qtools.publish.run",
    "publish_checkpoint": "qtools.publish.run",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
