"""The /predict fast lane answers as the view does, and hands everything unusual to the view."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete

from service.api import models
from service.core.db.tables import TrainedModel
from tests.conftest import blobs_rows
from tests.helpers import problem

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def model_id(blobs_model) -> str:
    return blobs_model


@pytest.fixture
def view_calls(monkeypatch) -> list[str]:
    """Record each request that reached the view's model lookup."""
    calls: list[str] = []
    original = models._predictor

    def recording(model_id: str):
        calls.append(model_id)
        return original(model_id)

    monkeypatch.setattr(models, "_predictor", recording)
    return calls


def test_fast_lane_answers_like_the_view(client, model_id, view_calls):
    rows = [r[:4] for r in blobs_rows(5, seed=4)]
    first = client.post(f"/v1/models/{model_id}/predict", json={"inputs": rows})  # loads the model: view
    assert view_calls == [model_id]
    second = client.post(f"/v1/models/{model_id}/predict", json={"inputs": rows})
    assert view_calls == [model_id]  # answered before the view
    assert second.status_code == 200 and second.mimetype == first.mimetype == "application/json"
    assert second.get_json() == first.get_json()
    assert second.get_data() == first.get_data()


@pytest.mark.parametrize("request_kwargs", [
    {"json": {"records": [{"a": 1, "b": 2, "c": 3, "d": 4}]}},
    {"json": {"inputs": [[1, 2, 3, 4]]}, "headers": {"Accept": "text/csv"}},
    {"data": "a,b,c,d\n1,2,3,4\n", "content_type": "text/csv"},
])
def test_other_requests_go_to_the_view(client, model_id, view_calls, request_kwargs):
    client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[1, 2, 3, 4]]})
    view_calls.clear()
    assert client.post(f"/v1/models/{model_id}/predict", **request_kwargs).status_code == 200
    assert view_calls == [model_id]


@pytest.mark.parametrize("body, field", [
    ({"inputs": [[1, True, 3, 4]]}, "inputs[0][1]"),
    ({"inputs": [[1, 2, 3]]}, "inputs[0]"),
    ({"inputs": [[1, 2, 3, "x"]]}, "inputs[0][3]"),
    ({"inputs": [[1, 2, 3, 4]], "extra": 1}, "extra"),
    ({"inputs": []}, "inputs"),
])
def test_bad_bodies_are_worded_by_the_view(client, model_id, body, field):
    client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[1, 2, 3, 4]]})
    errors = problem(client.post(f"/v1/models/{model_id}/predict", json=body), 422)["errors"]
    assert errors[0]["field"] == field


def test_non_finite_json_numbers_are_refused(client, model_id):
    client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[1, 2, 3, 4]]})
    response = client.post(f"/v1/models/{model_id}/predict", data=json.dumps({"inputs": [[1, 2, 3, float("nan")]]}),
                           content_type="application/json")
    assert problem(response, 422)["errors"][0]["field"] == "inputs[0][3]"


def test_a_model_deleted_elsewhere_stops_answering_after_the_recheck(client, app, model_id, monkeypatch):
    assert client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[1, 2, 3, 4]]}).status_code == 200
    with app.extensions["backprop.sessions"]() as session:  # as another API process would
        session.execute(delete(TrainedModel).where(TrainedModel.id == model_id))
        session.commit()
    monkeypatch.setattr(app.extensions["backprop.models"], "recheck_s", 0.0)
    problem(client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[1, 2, 3, 4]]}), 404)
