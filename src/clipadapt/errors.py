"""Errors a user can act on: the command line prints their message on one line and exits with 2."""


class ClipadaptError(Exception):
    """A problem with the user's input (a path, a name, a value), worded so they can fix it."""


class DataError(ClipadaptError):
    """A dataset folder, split file or image is missing or unreadable."""


class UnreadableImageError(DataError):
    """An image file that PIL cannot open."""

    def __init__(self, path: str, reason: str = ""):
        self.path = path
        detail = f": {reason}" if reason else ""
        super().__init__(f"cannot read image '{path}'{detail}")


class CheckpointMismatchError(ClipadaptError):
    """An adapter checkpoint that belongs to another backbone or method."""
