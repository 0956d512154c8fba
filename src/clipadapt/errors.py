"""Errors a user can act on: the command line prints their message on one line and exits with 2."""

from __future__ import annotations

WORKER_MARK = "Original Traceback"


def one_line(text: str) -> str:
    """A multi-line message (PyYAML's, a library's) joined into one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def from_worker_report(text: str) -> str:
    """The original message inside a DataLoader worker's report (the report itself otherwise).

    A DataLoader re-raises a worker's exception as `type(err)(report)`, the report being the
    worker's whole traceback; its last line is `module.ErrorType: the original message`."""
    if WORKER_MARK not in text:
        return text
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else text
    head, sep, rest = last.partition(": ")
    return rest if sep and " " not in head else last


class ClipadaptError(Exception):
    """A problem with the user's input (a path, a name, a value), worded so they can fix it."""

    def __init__(self, message: str = ""):
        super().__init__(from_worker_report(str(message)))


class DataError(ClipadaptError):
    """A dataset folder, split file or image is missing or unreadable."""


class UnreadableImageError(DataError):
    """An image file that PIL cannot open."""

    def __init__(self, path: str, reason: str = ""):
        if not reason and WORKER_MARK in path:  # re-raised by a DataLoader from a worker's report
            super().__init__(path)
            self.path = str(self).removeprefix("cannot read image '").split("'", 1)[0]
            return
        self.path = path
        detail = f": {reason}" if reason else ""
        super().__init__(f"cannot read image '{path}'{detail}")


class TrainingDivergedError(ClipadaptError):
    """The loss or the trained parameters stopped being finite: the run ends without result files."""


class CheckpointMismatchError(ClipadaptError):
    """An adapter checkpoint that belongs to another backbone or method."""
