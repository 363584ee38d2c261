"""The generated OpenAPI document: every route is in it, and real answers match its schemas."""

from __future__ import annotations

from typing import Any

import jsonschema_rs  # schemathesis's own JSON Schema validator

from service.api import responses
from service.api.openapi import IMPLICIT_METHODS, RULE_ARGUMENT
from tests.conftest import csv_text, pets_rows


def _validate(document: dict[str, Any], name: str, body: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    jsonschema_rs.Draft202012Validator(schema).validate(body)


def test_every_route_is_in_the_document(app: Any, client: Any) -> None:
    document = client.get("/openapi.json").get_json()
    for rule in app.url_map.iter_rules():
        path = RULE_ARGUMENT.sub(lambda m: "{" + m["name"] + "}", rule.rule)
        for method in (rule.methods or set()) - IMPLICIT_METHODS:
            operation = document["paths"][path][method.lower()]
            assert operation["operationId"] == rule.endpoint
            assert {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"} == rule.arguments


def test_links_name_operations_of_the_document(client: Any) -> None:
    document = client.get("/openapi.json").get_json()
    operation_ids = {op["operationId"] for item in document["paths"].values() for op in item.values()}
    links = [link for item in document["paths"].values() for op in item.values()
             for answer in op["responses"].values() for link in answer.get("links", {}).values()]
    assert len(links) >= 20
    assert {link["operationId"] for link in links} <= operation_ids
    assert {"models.predict", "models.remove_model", "jobs.get_job_metrics", "events.job_events",
            "datasets.remove_dataset", "jobs.create_job"} <= {link["operationId"] for link in links}


def test_real_answers_match_the_document(app: Any, client: Any, upload_csv: Any) -> None:
    """A small end-to-end flow; each answer is checked against the schema the document gives it."""
    from workers.training import run_job

    document = client.get("/openapi.json").get_json()
    dataset = upload_csv(csv_text(["weight", "color", "pet"], pets_rows(40))).get_json()
    _validate(document, "Dataset", dataset)
    _validate(document, "Dataset", client.get(f"/v1/datasets/{dataset['id']}").get_json())
    _validate(document, "DatasetPage", client.get("/v1/datasets").get_json())
    network = client.post(f"/v1/networks?dataset_id={dataset['id']}",
                          json={"layers": [{"type": "dense", "units": 2}]}).get_json()
    _validate(document, "Network", network)
    _validate(document, "NetworkPage", client.get("/v1/networks").get_json())
    _validate(document, "Validation", client.post("/v1/networks/validate?input_dim=3",
                                                  json={"layers": [{"type": "nope"}]}).get_json())
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "network_id": network["id"],
                                        "training": {"epochs": 2}, "time_limit_s": 3600}).get_json()
    _validate(document, "Job", job)
    assert run_job(job["id"], sessions=app.extensions["backprop.sessions"], owner="test") == "succeeded"
    finished = client.get(f"/v1/jobs/{job['id']}").get_json()
    _validate(document, "Job", finished)
    _validate(document, "JobPage", client.get("/v1/jobs").get_json())
    _validate(document, "JobMetrics", client.get(f"/v1/jobs/{job['id']}/metrics").get_json())
    model_id = finished["model_id"]
    _validate(document, "Model", client.get(f"/v1/models/{model_id}").get_json())
    _validate(document, "ModelPage", client.get("/v1/models").get_json())
    _validate(document, "Problem", client.get("/v1/models/nope").get_json())
    _validate(document, "Problem", client.post("/v1/jobs", json={"dataset_id": "x"}).get_json())
    _validate(document, "Health", client.get("/healthz").get_json())
    _validate(document, "Readiness", client.get("/readyz").get_json())
    # /predict: the view's answer (records) and the fast lane's (a small `inputs` body, once the
    # model is cached) are both Predictions, with the same keys.
    by_view = client.post(f"/v1/models/{model_id}/predict", json={"records": [{"weight": 4, "color": "grey"}]})
    by_lane = client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[4, "grey"]]})
    for answer in (by_view.get_json(), by_lane.get_json()):
        _validate(document, "Prediction", answer)
        responses.Prediction.model_validate(answer)
    assert by_view.get_json().keys() == by_lane.get_json().keys()


def test_allow_names_the_methods_of_the_route(client: Any) -> None:
    # /v1/networks/validate also matches /v1/networks/<network_id>; its Allow must not say GET.
    allowed = client.options("/v1/networks/validate").headers["Allow"]
    assert {m.strip() for m in allowed.split(",")} == {"OPTIONS", "POST"}
    refused = client.put("/v1/networks/validate")
    assert refused.status_code == 405
    assert {m.strip() for m in refused.headers["Allow"].split(",")} == {"OPTIONS", "POST"}
    listed = client.options("/v1/networks").headers["Allow"]
    assert {m.strip() for m in listed.split(",")} == {"GET", "HEAD", "OPTIONS", "POST"}


def test_the_documented_field_problem_is_the_field_error_type():
    # One shape of a field error: what problems carry (core) is what the document describes (API).
    from service.api.responses import FieldProblem
    from service.core.problems import FieldError

    assert set(FieldProblem.model_fields) == set(FieldError.__annotations__)
