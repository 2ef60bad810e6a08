"""The one exception type the CLI turns into a clean message and a non-zero exit."""


class QtoolsError(Exception):
    """A problem with the user's input or environment, with a message that says what and where."""
