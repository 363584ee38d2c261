"""An in-process LRU cache of built networks and their preprocessing, for /predict."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

import backprop
from service.core.data.preprocessing import Preprocessor
from service.core.db.tables import TrainedModel
from service.core.networks import rows_per_pass
from service.core.settings import setting_default


class Predictor:
    """A trained model ready to score raw rows."""

    def __init__(self, model: TrainedModel) -> None:
        self.model_id = model.id
        self.tenant_id = model.tenant_id  # whose it is: /predict checks it on every hit
        self.loss = model.loss
        self.network = backprop.load(model.definition, model.weights)
        self.preprocessor = Preprocessor(model.preprocessing)

    def predict(self, encoded: np.ndarray, max_activation_floats: int) -> dict[str, Any]:
        """Score encoded rows and map the outputs back to labels or the target's scale.

        The rows go through the network in chunks that hold at most `max_activation_floats`
        values (MAX_ACTIVATION_FLOATS); a request within one chunk is one pass, as before.
        """
        rows = rows_per_pass(self.network.activation_width, max_activation_floats)
        outputs = self.network.predict(encoded, loss=self.loss, max_rows=rows)
        return self.preprocessor.decode(backprop.to_numpy(outputs), self.loss)


class ModelCache:
    """Keep the most recently used predictors.

    Models are immutable, so an entry only goes stale when the model is deleted,
    possibly by another API process: an entry older than `recheck_s` is confirmed
    with a cheap existence query before it is used again.
    """

    def __init__(self, max_entries: int = setting_default("MODEL_CACHE_SIZE"), recheck_s: float = 1.0) -> None:
        self.max_entries = max_entries
        self.recheck_s = recheck_s
        self._entries: OrderedDict[str, tuple[Predictor, float]] = OrderedDict()
        self._lock = threading.Lock()
        # Read by /metrics (service/api/metrics.py); counted under the lock so no increment is lost.
        self.hits = 0
        self.misses = 0

    def get(self, model_id: str, tenant: str, exists: Callable[[], bool],
            load: Callable[[], TrainedModel | None]) -> Predictor | None:
        """Return the predictor of a model of `tenant`, or None when it has no such model.

        Another tenant's entry is as absent as a missing one, and leaves no trace: it is
        neither counted nor moved in the LRU order. `load` must itself return only the
        tenant's model (None otherwise), so another tenant's id never builds a network
        or evicts an entry. Counted: a hit per lookup answered from the cache, a miss
        per model loaded.
        """
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is not None:
                if entry[0].tenant_id != tenant:
                    return None
                self._entries.move_to_end(model_id)
                self.hits += 1
        if entry is not None:
            predictor, checked_at = entry
            if now - checked_at < self.recheck_s:
                return predictor
            if exists():
                with self._lock:
                    if model_id in self._entries:
                        self._entries[model_id] = (predictor, now)
                return predictor
            self.evict(model_id)
            return None
        model = load()
        if model is None:
            return None
        predictor = Predictor(model)
        with self._lock:
            self.misses += 1
            self._entries[model_id] = (predictor, now)
            self._entries.move_to_end(model_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return predictor

    def fresh(self, model_id: str, tenant: str) -> Predictor | None:
        """Return a cached predictor of `tenant` confirmed within `recheck_s`, else None (no database work).

        Another tenant's entry is None, and not counted.
        """
        entry = self._entries.get(model_id)  # a dict read is atomic; get() does the bookkeeping
        if entry is None or entry[0].tenant_id != tenant or time.monotonic() - entry[1] >= self.recheck_s:
            return None  # not counted: get() follows and counts
        with self._lock:
            self.hits += 1
        return entry[0]

    def evict(self, model_id: str) -> None:
        """Forget a model (it was deleted)."""
        with self._lock:
            self._entries.pop(model_id, None)
