"""Optimizers: small classes with one ``update`` method that steps parameters in place.

``update(params, grads)`` takes two parallel lists of arrays; it may scale
``grads`` in place (they are scratch buffers the next backward pass overwrites).
``state()`` and ``load_state()`` carry what a checkpoint needs.
"""

from __future__ import annotations

import math
from typing import Any


class Optimizer:
    """Base class: holds the learning rate and per-parameter state arrays."""

    state_names: tuple[str, ...] = ()

    def __init__(self, params: list[Any], learning_rate: float, xp: Any):
        self.learning_rate = learning_rate
        self.xp = xp
        self.step_count = 0
        self.slots = {name: [xp.zeros_like(p) for p in params] for name in self.state_names}

    def update(self, params: list[Any], grads: list[Any]) -> None:
        raise NotImplementedError

    def state(self) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        """Return (scalars, arrays) to checkpoint."""
        return {"step_count": self.step_count}, self.slots

    def load_state(self, scalars: dict[str, Any], arrays: dict[str, list[Any]]) -> None:
        self.step_count = int(scalars["step_count"])
        for name, values in arrays.items():
            for target, value in zip(self.slots[name], values):
                target[...] = self.xp.asarray(value)


class SGD(Optimizer):
    """Plain gradient descent: p -= lr g."""

    def update(self, params, grads):
        self.step_count += 1
        for p, g in zip(params, grads):
            g *= self.learning_rate
            p -= g


class Momentum(Optimizer):
    """Heavy-ball momentum, v = mu v - lr g; Nesterov's variant steps by mu v - lr g."""

    state_names = ("velocity",)

    def __init__(self, params: list[Any], learning_rate: float, xp: Any, momentum: float = 0.9,
                 nesterov: bool = False) -> None:
        super().__init__(params, learning_rate, xp)
        self.momentum = momentum
        self.nesterov = nesterov

    def update(self, params, grads):
        self.step_count += 1
        for p, g, v in zip(params, grads, self.slots["velocity"]):
            g *= self.learning_rate
            v *= self.momentum
            v -= g
            if self.nesterov:
                p += self.momentum * v
                p -= g
            else:
                p += v


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with the bias correction folded into the step size."""

    state_names = ("m", "v")

    def __init__(self, params: list[Any], learning_rate: float, xp: Any, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8) -> None:
        super().__init__(params, learning_rate, xp)
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon

    def update(self, params, grads):
        self.step_count += 1
        t = self.step_count
        step = self.learning_rate * (1 - self.beta2**t) ** 0.5 / (1 - self.beta1**t)
        xp = self.xp
        for p, g, m, v in zip(params, grads, self.slots["m"], self.slots["v"]):
            m *= self.beta1
            m += (1 - self.beta1) * g
            g *= g
            v *= self.beta2
            v += (1 - self.beta2) * g
            denom = xp.sqrt(v)
            denom += self.epsilon
            denom = xp.divide(m, denom, out=denom)
            denom *= step
            p -= denom


class RMSprop(Optimizer):
    """RMSprop: divide the step by a running RMS of the gradient (decay rho)."""

    state_names = ("square_avg",)

    def __init__(self, params: list[Any], learning_rate: float, xp: Any, rho: float = 0.9,
                 epsilon: float = 1e-8) -> None:
        super().__init__(params, learning_rate, xp)
        self.rho, self.epsilon = rho, epsilon

    def update(self, params, grads):
        self.step_count += 1
        xp = self.xp
        for p, g, s in zip(params, grads, self.slots["square_avg"]):
            s *= self.rho
            s += (1 - self.rho) * (g * g)
            denom = xp.sqrt(s)
            denom += self.epsilon
            g *= self.learning_rate
            g /= denom
            p -= g


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "adam": Adam,
    "rmsprop": RMSprop,
}


def make_optimizer(name: str, params: list[Any], learning_rate: float, xp: Any, momentum: float = 0.9,
                   nesterov: bool = False) -> Optimizer:
    """Return the optimizer ``name`` for ``params``."""
    if name == "momentum":
        return Momentum(params, learning_rate, xp, momentum=momentum, nesterov=nesterov)
    return OPTIMIZERS[name](params, learning_rate, xp)


class LearningRateSchedule:
    """The learning rate of each epoch: ``constant``, ``step``, ``cosine`` or ``reduce_on_plateau``."""

    def __init__(self, kind: str, base: float, epochs: int, step_size: int = 10, decay: float = 0.5,
                 patience: int = 5, minimum: float = 0.0):
        self.kind, self.base, self.epochs = kind, base, epochs
        self.step_size, self.decay, self.patience, self.minimum = step_size, decay, patience, minimum
        self.current = base
        self.best = float("inf")
        self.bad_epochs = 0

    def rate(self, epoch: int) -> float:
        """Return the rate for ``epoch`` (1-based)."""
        if self.kind == "step":
            return self.base * self.decay ** ((epoch - 1) // self.step_size)
        if self.kind == "cosine":
            progress = (epoch - 1) / max(self.epochs - 1, 1)
            return self.minimum + (self.base - self.minimum) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.current

    def observe(self, monitored_loss: float) -> None:
        """Feed the epoch's monitored loss; ``reduce_on_plateau`` decays after ``patience`` bad epochs."""
        if self.kind != "reduce_on_plateau":
            return
        if monitored_loss < self.best:
            self.best, self.bad_epochs = monitored_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.current = max(self.current * self.decay, self.minimum)
            self.bad_epochs = 0

    def state(self) -> dict[str, float]:
        return {"current": self.current, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state(self, state: dict[str, float]) -> None:
        self.current, self.best, self.bad_epochs = state["current"], state["best"], int(state["bad_epochs"])


SCHEDULES = ("constant", "step", "cosine", "reduce_on_plateau")
