"""Limits a review of the hardening found missing.

The model list answers summaries (n_features, not the columns).
"""

from __future__ import annotations

import pytest

both_databases = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


# -- 2. the model list answers summaries -----------------------------------------------------------

@both_databases
def test_the_model_list_answers_counts_not_columns(client, blobs_model):
    (item,) = client.get("/v1/models").get_json()["items"]
    assert item["id"] == blobs_model and item["n_features"] == 4
    assert "features" not in item and "preprocessing" not in item
    whole = client.get(f"/v1/models/{blobs_model}").get_json()
    assert whole["features"] == ["a", "b", "c", "d"] and "n_features" not in whole
    assert whole["preprocessing"]["features"][0]["name"] == "a"
    assert {key: whole[key] for key in item if key != "n_features"} == {
        key: value for key, value in item.items() if key != "n_features"}


def test_the_openapi_model_list_is_of_summaries(client):
    document = client.get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    assert schemas["ModelPage"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/ModelSummary"}
    summary = schemas["ModelSummary"]["properties"]
    assert "n_features" in summary and "features" not in summary and "preprocessing" not in summary
