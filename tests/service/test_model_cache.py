"""The /predict model cache: LRU order, and re-checking that a cached model still exists."""

from __future__ import annotations

from typing import Any

import pytest

from service.core.models import cache as model_cache

TENANT = "alice"  # whose every model here is: the cache answers a tenant only its own


class FakePredictor:
    def __init__(self, model: Any) -> None:
        self.model_id = model
        self.tenant_id = TENANT


@pytest.fixture(autouse=True)
def _no_build(monkeypatch):
    # The cache's own logic is under test here; building real networks is tested end to end.
    monkeypatch.setattr(model_cache, "Predictor", FakePredictor)


def test_least_recently_used_entry_is_dropped():
    cache = model_cache.ModelCache(max_entries=2)
    loads = []

    def loader(name):
        return lambda: loads.append(name) or name

    for name in ("a", "b", "a", "c", "a", "b"):
        cache.get(name, TENANT, exists=lambda: True, load=loader(name))
    assert loads == ["a", "b", "c", "b"]


def test_stale_entries_are_rechecked_and_dropped_when_the_model_is_gone():
    cache = model_cache.ModelCache(recheck_s=0.0)
    assert cache.get("m", TENANT, exists=lambda: True, load=lambda: "m").model_id == "m"
    assert cache.get("m", TENANT, exists=lambda: True, load=lambda: pytest.fail("reloaded")).model_id == "m"
    assert cache.get("m", TENANT, exists=lambda: False, load=lambda: "m") is None
    assert cache.get("x", TENANT, exists=lambda: False, load=lambda: None) is None


def test_fresh_entries_skip_the_existence_check():
    cache = model_cache.ModelCache(recheck_s=60.0)
    cache.get("m", TENANT, exists=lambda: True, load=lambda: "m")
    assert cache.get("m", TENANT, exists=lambda: pytest.fail("checked"), load=lambda: None).model_id == "m"
