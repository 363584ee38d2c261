"""Exceptions the engine raises, for callers to map to their own errors."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a network definition or a training config.

    ``field`` is a path inside the definition (``nodes[2].units``), ``node``
    the node's name when the problem belongs to one.
    """

    field: str
    message: str
    node: str | None = None

    def to_dict(self) -> dict:
        return {"field": self.field, "node": self.node, "message": self.message}


class BackpropError(Exception):
    """Base class of the engine's errors."""


class SpecError(BackpropError, ValueError):
    """An invalid network definition; ``problems`` lists every fault."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))


class ConfigError(BackpropError, ValueError):
    """Invalid training fields; ``problems`` lists every fault."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))


class TrainingDiverged(BackpropError):
    """The loss or a parameter became non-finite."""

    def __init__(self, message: str, epoch: int):
        self.epoch = epoch
        super().__init__(message)


class TrainingCancelled(BackpropError):
    """``should_stop`` asked training to stop; ``epoch`` is the last one finished."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        super().__init__(f"training was cancelled after epoch {epoch}")


class DeviceUnavailable(BackpropError):
    """The requested device cannot be used on this host."""


class NoBackwardRule(BackpropError, NotImplementedError):
    """A node type has no local backward rule."""
