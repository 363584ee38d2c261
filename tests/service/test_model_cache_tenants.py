"""The /predict model cache per tenant: another tenant's model id is a 404 with no cache effect.

Neither the view nor the fast lane may load another tenant's model (building its network,
possibly evicting entries), count it, or move it in the LRU order before the tenant check.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import both_databases, mlp, problem, train

ROW = {"inputs": [[0.1, 0.2, 0.3, 0.4]]}  # a body the fast lane answers
RECORDS = {"records": [{"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}]}  # one only the view answers


def _cache_state(app: Any) -> tuple[list[str], int, int]:
    """The cache's entries in LRU order (oldest first) and its hit and miss counters."""
    cache = app.extensions["backprop.models"]
    return list(cache._entries), cache.hits, cache.misses


@pytest.fixture
def alice_models(app: Any, client: Any, upload_csv: Any) -> list[str]:
    """Two models of tenant alice (3 epochs each on 60 blobs rows)."""
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(60))).get_json()
    return [train(client, app, dataset["id"], mlp(activation="tanh"), epochs=3, batch_size=16, seed=seed)
            for seed in (0, 1)]


@both_databases
def test_another_tenants_model_is_not_loaded_and_evicts_nothing(app, client, bob_client, alice_models):
    cached, uncached = alice_models
    app.extensions["backprop.models"].max_entries = 1
    assert client.post(f"/v1/models/{cached}/predict", json=ROW).status_code == 200
    before = _cache_state(app)
    assert before[0] == [cached]
    # A body the fast lane would answer, and one only the view answers.
    for body in (ROW, RECORDS):
        problem(bob_client.post(f"/v1/models/{uncached}/predict", json=body), 404)
    assert _cache_state(app) == before  # not loaded, not counted, alice's entry still there


@both_databases
def test_another_tenants_cached_model_is_neither_counted_nor_moved(app, client, bob_client, alice_models):
    first, second = alice_models
    for model_id in (first, second):
        assert client.post(f"/v1/models/{model_id}/predict", json=ROW).status_code == 200
    before = _cache_state(app)
    assert before[0] == [first, second]
    for body in (ROW, RECORDS):
        problem(bob_client.post(f"/v1/models/{first}/predict", json=body), 404)
    # The fast lane and the view both: no hit counted, the LRU order unchanged (first stays oldest).
    assert _cache_state(app) == before
    # The owner's lookup through the view does move it: the order above could have shown a move.
    assert client.post(f"/v1/models/{first}/predict", json=RECORDS).status_code == 200
    assert _cache_state(app)[0] == [second, first]
