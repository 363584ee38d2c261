"""Checkpoints and saved models as ``.npz`` archives, never pickled.

Arrays are stored under their names; everything else (scalars, RNG state,
history) is JSON stored as a uint8 array, so ``np.load(..., allow_pickle=False)``
reads it all back.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import to_numpy
from .network import build

META_KEY = "__meta__"


def pack(arrays: dict[str, Any], meta: dict[str, Any]) -> bytes:
    """Return an .npz archive of host copies of ``arrays`` plus JSON ``meta``."""
    if META_KEY in arrays:
        raise ValueError(f"{META_KEY!r} is reserved")
    buffer = io.BytesIO()
    payload = {name: to_numpy(array) for name, array in arrays.items()}
    payload[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buffer, **payload)  # type: ignore[arg-type]  # numpy's stub types the first keyword as allow_pickle
    return buffer.getvalue()


def unpack(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Return (arrays, meta) from :func:`pack`'s bytes; object arrays are refused."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays.pop(META_KEY).tobytes().decode()) if META_KEY in arrays else {}
    return arrays, meta


@dataclass
class Checkpoint:
    """Everything needed to resume training after ``epoch`` to the same result."""

    epoch: int
    params: dict[str, np.ndarray]
    optimizer_scalars: dict[str, Any]
    optimizer_slots: dict[str, list[np.ndarray]]
    rng_state: dict[str, Any]
    schedule_state: dict[str, float]
    best_params: dict[str, np.ndarray] | None
    best_loss: float
    best_epoch: int
    bad_epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        arrays = {f"params/{k}": v for k, v in self.params.items()}
        for name, values in self.optimizer_slots.items():
            arrays.update({f"slot/{name}/{i}": v for i, v in enumerate(values)})
        if self.best_params is not None:
            arrays.update({f"best/{k}": v for k, v in self.best_params.items()})
        meta = {
            "epoch": self.epoch,
            "optimizer_scalars": self.optimizer_scalars,
            "slot_counts": {name: len(values) for name, values in self.optimizer_slots.items()},
            "rng_state": self.rng_state,
            "schedule_state": self.schedule_state,
            "best_loss": self.best_loss,  # may be inf: Python's json round-trips it
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
        }
        return pack(arrays, meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        arrays, meta = unpack(data)

        def prefixed(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        slots = {name: [arrays[f"slot/{name}/{i}"] for i in range(count)] for name,
                 count in meta["slot_counts"].items()}
        best = prefixed("best/")
        return cls(
            epoch=meta["epoch"],
            params=prefixed("params/"),
            optimizer_scalars=meta["optimizer_scalars"],
            optimizer_slots=slots,
            rng_state=meta["rng_state"],
            schedule_state=meta["schedule_state"],
            best_params=best or None,
            best_loss=meta["best_loss"],
            best_epoch=meta["best_epoch"],
            bad_epochs=meta["bad_epochs"],
            history=meta["history"],
        )


def save(network: Any) -> tuple[dict[str, Any], bytes]:
    """Return (definition, weights) of ``network``: a JSON-able dict and .npz bytes."""
    definition = {
        "spec": network.spec,
        "input_dim": network.input_dim,
        "dtype": network.dtype.name,
    }
    return definition, pack(network.parameters(), {"format": "backprop.weights.v1"})


def load(definition: dict[str, Any], weights: bytes, device: str = "cpu") -> Any:
    """Rebuild a network saved by :func:`save` on ``device``."""
    network = build(definition["spec"], definition["input_dim"], dtype=definition.get("dtype", "float32"),
                    device=device)
    arrays, _ = unpack(weights)
    network.set_parameters(arrays)
    return network
