"""The one exception type the CLI turns into a clean message and a non-zero exit."""

from __future__ import annotations

from collections.abc import Sequence


class QtoolsError(Exception):
    """A problem with the user's input or environment, with a message that says what and where."""


def some_names(names: Sequence[str], shown: int = 5) -> str:
    """The first `shown` names, then how many more: a refusal names what is wrong without a wall of text."""
    listed = ", ".join(names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")
