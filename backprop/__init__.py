"""backprop: neural networks of arbitrary connectivity, trained by backpropagation.

The engine of backprop-service. It imports numpy only (CuPy when a network is
built for ``device="gpu"``) and knows nothing of HTTP, queues or databases.
See ``docs/engine.md``.
"""

from .activations import ACTIVATIONS, DERIVATIVES
from .backend import get_array_module, to_numpy
from .checkpoint import Checkpoint, load, save
from .config import TrainingConfig
from .errors import (
    BackpropError,
    ConfigError,
    DeviceUnavailable,
    NoBackwardRule,
    Problem,
    SpecError,
    TrainingCancelled,
    TrainingDiverged,
)
from .initializers import INITIALIZERS
from .losses import CLASS_WEIGHTED_LOSSES, LOSSES, TASK_OF_LOSS, output_width
from .network import Network, build
from .spec import count_parameters, validate
from .training import FLAG_EXPLANATIONS, History, train, train_validation_split

__all__ = [
    "ACTIVATIONS",
    "CLASS_WEIGHTED_LOSSES",
    "DERIVATIVES",
    "FLAG_EXPLANATIONS",
    "INITIALIZERS",
    "LOSSES",
    "TASK_OF_LOSS",
    "BackpropError",
    "Checkpoint",
    "History",
    "TrainingConfig",
    "ConfigError",
    "DeviceUnavailable",
    "Network",
    "NoBackwardRule",
    "Problem",
    "SpecError",
    "TrainingCancelled",
    "TrainingDiverged",
    "build",
    "count_parameters",
    "get_array_module",
    "load",
    "save",
    "train",
    "train_validation_split",
    "output_width",
    "to_numpy",
    "validate",
]
