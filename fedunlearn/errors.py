"""Exception hierarchy: every error fedunlearn raises on purpose derives from FedUnlearnError.

Each class says when it is raised. Messages name what was received, what was expected and
how to fix it, so a failed federated run can be fixed without reading the code.
"""

from __future__ import annotations

from collections.abc import Iterable


class FedUnlearnError(Exception):
    """Base class of all fedunlearn errors."""


class ConfigError(FedUnlearnError, ValueError):
    """A configuration value is out of range, of the wrong type, or unknown.

    Raised by the config dataclasses' ``__post_init__`` and ``from_run_config``; all
    problems of one config are collected and reported together.
    """

    def __init__(self, problems: str | Iterable[str]) -> None:
        items = [problems] if isinstance(problems, str) else list(problems)
        self.problems = items
        if len(items) == 1:
            message = items[0]
        else:
            message = f"{len(items)} configuration problems:\n" + "\n".join(f"  - {p}" for p in items)
        super().__init__(message)


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup (dataset, model, method, selector, partitioner) got an unknown name."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown {kind} {name!r}; registered {kind}s: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class UnknownMethodError(UnknownNameError):
    """An unlearning method name is not registered."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__("unlearning method", name, known)


class DataNotFoundError(FedUnlearnError, FileNotFoundError):
    """A dataset's files are missing and could not be downloaded.

    The message names the file expected, the folder it was looked for in, and how to get it.
    """


class DeletionRequestError(FedUnlearnError, ValueError):
    """A deletion request is malformed or cannot be served (unknown or foreign sample ids,
    an empty request, a class the client does not hold, an already-served request)."""


class HistoryError(FedUnlearnError):
    """The update history cannot serve the operation (e.g. a round's aggregation weight is
    unknown, or the model's layers do not match the stored layout)."""


class HistoryCorruptedError(HistoryError):
    """A history file is truncated, unreadable, or its checksum does not match the manifest."""


class UnlearningError(FedUnlearnError):
    """An unlearning method failed (NaN/Inf loss or weights, a forget set equal to the
    whole data where the method needs retained data, nothing in the history to undo)."""


class TrainingError(FedUnlearnError):
    """Local training diverged (NaN/Inf loss); the model is not returned to the federation."""


class ReplyError(FedUnlearnError):
    """A client's reply is invalid (missing record, wrong shapes, non-finite values) and
    was left out of aggregation."""
