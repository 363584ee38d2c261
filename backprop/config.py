"""The training fields of a job request, with their defaults and bounds.

:class:`TrainingConfig` is the one source of truth for them: the engine
validates with it, and the service derives its request schema from the
``metadata`` of each field (``ge``/``gt``/``le`` bounds, ``choices``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import ConfigError, Problem
from .losses import LOSSES
from .optimizers import OPTIMIZERS, SCHEDULES


def _f(default: Any, description: str, **bounds: Any) -> Any:
    return field(default=default, metadata={"description": description, **bounds})


@dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters of one training run (the ``training`` object of a job)."""

    epochs: int = _f(50, "Passes over the training split.", ge=1, le=100_000)
    batch_size: int = _f(32, "Rows per minibatch.", ge=1, le=1_000_000)
    optimizer: str = _f("adam", "Update rule.", choices=tuple(OPTIMIZERS))
    learning_rate: float = _f(0.001, "Step size.", gt=0, le=10)
    momentum: float = _f(0.9, "Momentum of the 'momentum' optimizer.", ge=0, lt=1)
    nesterov: bool = _f(False, "Use Nesterov momentum.")
    loss: str = _f("cross_entropy", "Loss to minimize.", choices=tuple(LOSSES))
    weight_decay: float = _f(0.0, "L2 penalty on weights (not biases): the Gaussian prior of MAP training.",
                             ge=0, le=10)
    validation_split: float = _f(0.2, "Fraction of rows held out for validation.", ge=0, lt=1)
    early_stopping_patience: int | None = _f(
        10, "Epochs without a better validation loss before stopping; null or 0 turns it off.", ge=0, le=100_000)
    gradient_clip_norm: float | None = _f(None, "Clip the global gradient norm to this value.", gt=0, le=1e6)
    lr_schedule: str = _f("constant", "Learning-rate schedule.", choices=SCHEDULES)
    lr_step_size: int = _f(10, "Epochs between 'step' decays.", ge=1, le=100_000)
    lr_decay: float = _f(0.5, "Factor of 'step' and 'reduce_on_plateau'.", gt=0, le=1)
    lr_patience: int = _f(5, "Epochs without improvement before 'reduce_on_plateau' decays.", ge=1, le=100_000)
    min_learning_rate: float = _f(0.0, "Floor of 'cosine' and 'reduce_on_plateau'.", ge=0, le=10)
    seed: int = _f(0, "Seed of shuffling, dropout and the validation split.", ge=0, le=2**32 - 1)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TrainingConfig:
        """Return a config from JSON-like ``values``, raising :class:`ConfigError` with every bad field."""
        values = dict(values or {})
        problems = [Problem(key, f"unknown training field {key!r}") for key in sorted(set(values) - set(FIELDS))]
        for name, spec in FIELDS.items():
            if name in values:
                message = check_value(spec, values[name])
                if message:
                    problems.append(Problem(name, message))
                elif str(spec.type).startswith("int") and values[name] is not None:
                    values[name] = int(values[name])
        if problems:
            raise ConfigError(problems)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = {f.name: f for f in fields(TrainingConfig)}


def check_value(spec: Any, value: Any) -> str | None:
    """Return why ``value`` is not acceptable for field ``spec``, or None."""
    kind = spec.type if isinstance(spec.type, str) else spec.type.__name__
    nullable = "None" in kind
    if value is None:
        return None if nullable else "must not be null"
    meta = spec.metadata
    if "choices" in meta:
        return None if value in meta["choices"] else f"must be one of {', '.join(meta['choices'])}"
    if kind.startswith("bool"):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    if kind.startswith("int") and not (isinstance(value, int) or float(value).is_integer()):
        return "must be an integer"
    if not math.isfinite(value):
        return "must be finite"
    if "ge" in meta and value < meta["ge"]:
        return f"must be at least {meta['ge']}"
    if "gt" in meta and value <= meta["gt"]:
        return f"must be greater than {meta['gt']}"
    if "le" in meta and value > meta["le"]:
        return f"must be at most {meta['le']:,}"
    if "lt" in meta and value >= meta["lt"]:
        return f"must be less than {meta['lt']}"
    return None

