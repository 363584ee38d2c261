"""The OpenAPI document, generated from the request schemas, and an offline page to read it."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, current_app
from pydantic.json_schema import models_json_schema

from service.core.models import export
from service.core.schemas import REQUEST_MODELS

bp = Blueprint("docs", __name__)

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _ok(description: str, status: str = "200", schema: str | None = None) -> dict[str, Any]:
    body = _ref(schema) if schema else {"type": "object"}
    return {status: {"description": description, "content": {"application/json": {"schema": body}}}}


# The problem responses (RFC 9457) an operation can give, each with what causes it.
PROBLEM_CAUSES = {
    400: "the body is not valid JSON",
    401: "no API key, or one that is not known (AUTH=on)",
    404: "no resource with this id",
    409: "the resource's state forbids it",
    413: "the body is larger than MAX_UPLOAD_MB, or the tenant would store more than TENANT_MAX_STORED_MB",
    415: "a media type the operation does not take",
    422: "a field is invalid; `errors` names each",
    429: "the tenant has TENANT_MAX_CONCURRENT_JOBS jobs queued or running (see Retry-After)",
    503: "the database or the broker does not answer",
}
# Statuses besides those that follow from an operation's shape (see _problems).
EXTRA_PROBLEMS = {
    ("delete", "/v1/datasets/{dataset_id}"): (409,),
    ("post", "/v1/jobs/{job_id}/cancel"): (409,),
    ("post", "/v1/jobs"): (413, 429, 503),  # 413/429: tenant limits
    ("get", "/readyz"): (503,),
}


def _problems(path: str, method: str, operation: dict[str, Any]) -> dict[str, Any]:
    """Document each problem status the operation can answer: every /v1 route may refuse the
    caller, a body may be malformed, too large, of the wrong type or invalid, an id in the
    path may be unknown, a query parameter invalid. What is not listed is a bug."""
    statuses = set(EXTRA_PROBLEMS.get((method, path), ()))
    if path.startswith("/v1/"):
        statuses.add(401)
    if "requestBody" in operation:
        statuses |= {400, 413, 415, 422}
    parameters = operation.get("parameters", [])
    if any(p["in"] == "path" for p in parameters):
        statuses.add(404)
    if any(p["in"] == "query" for p in parameters):
        statuses.add(422)
    return {str(status): {"description": PROBLEM_CAUSES[status],
                          "content": {"application/problem+json": {"schema": _ref("Problem")}}}
            for status in sorted(statuses)}

LIST_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"},
     "description": "next_cursor of the previous page"},
]


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _operation(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


WIDTH_PARAMS = [
    {"name": "input_dim", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "output_dim", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "dataset_id", "in": "query", "schema": {"type": "string"},
     "description": "take the input width from this dataset"},
]


# One Server-Sent Event (OpenAPI 3.1 reads the schema of an event stream per event).
EVENT_SCHEMA = {"type": "object", "properties": {
    "event": {"type": "string", "enum": ["epoch", "status"]},
    "id": {"type": "string", "description": "the epoch, for Last-Event-ID"},
    "data": {"type": "string", "contentMediaType": "application/json"}}}


def _paths() -> dict[str, Any]:
    return {
        "/v1/datasets": {
            "post": _operation("Upload a dataset (multipart CSV or JSON rows)", _ok("the dataset", "201", "Dataset"),
                               requestBody={"required": True, "content": {
                                   "multipart/form-data": {"schema": _ref("DatasetUpload")},
                                   "application/json": {"schema": _ref("DatasetJson")}}}),
            "get": _operation("List datasets", _ok("a page of datasets", schema="DatasetPage"), parameters=LIST_PARAMS),
        },
        "/v1/datasets/{dataset_id}": {
            "get": _operation("Read a dataset", _ok("the dataset", schema="Dataset"), parameters=[_id("dataset_id")]),
            "delete": _operation("Delete a dataset", {"204": {"description": "deleted"}},
                                 parameters=[_id("dataset_id")]),
        },
        "/v1/networks": {
            "post": _operation("Store a network definition after validating it", _ok("the network", "201", "Network"),
                               requestBody=_json_body("NetworkDefinition"), parameters=WIDTH_PARAMS),
            "get": _operation("List networks", _ok("a page of networks", schema="NetworkPage"), parameters=LIST_PARAMS),
        },
        "/v1/networks/validate": {
            "post": _operation("Check a definition without storing it; every problem at once",
                               _ok("{valid, problems, parameter_count}", schema="Validation"),
                               requestBody=_json_body("NetworkDefinition"), parameters=WIDTH_PARAMS),
        },
        "/v1/networks/{network_id}": {
            "get": _operation("Read a network, with its parameter count when the input width is known",
                              _ok("the network", schema="Network"), parameters=[_id("network_id"), *WIDTH_PARAMS[::2]]),
            "delete": _operation("Delete a network", {"204": {"description": "deleted"}},
                                 parameters=[_id("network_id")]),
        },
        "/v1/jobs": {
            "post": _operation("Create a training job", _ok("the queued job; Location names it", "202", "Job"),
                               requestBody=_json_body("JobCreate")),
            "get": _operation("List jobs", _ok("a page of jobs", schema="JobPage"), parameters=[*LIST_PARAMS, {
                "name": "status", "in": "query", "schema": {
                    "type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}}]),
        },
        "/v1/jobs/{job_id}": {
            "get": _operation("Read a job: status, progress, latest metrics, model_id, error",
                              _ok("the job", schema="Job"), parameters=[_id("job_id")]),
        },
        "/v1/jobs/{job_id}/metrics": {
            "get": _operation("Per-epoch history with per-layer diagnostics", _ok("{job_id, epochs}", schema="JobMetrics"),
                              parameters=[_id("job_id")]),
        },
        "/v1/jobs/{job_id}/events": {
            "get": _operation("Live events (Server-Sent Events): one `epoch` event per epoch, then a `status` "
                              "event when the job ends; Last-Event-ID resumes after that epoch",
                              {"200": {"description": "text/event-stream", "content": {
                                  "text/event-stream": {"schema": EVENT_SCHEMA}}}},
                              parameters=[_id("job_id"), {"name": "last_event_id", "in": "query",
                                                          "schema": {"type": "integer", "minimum": 0},
                                                          "description": "as the Last-Event-ID header"}]),
        },
        "/v1/jobs/{job_id}/cancel": {
            "post": _operation("Cancel a queued job, or ask a running one to stop", _ok("the job", "202", "Job"),
                               parameters=[_id("job_id")]),
        },
        "/v1/models": {
            "get": _operation("List trained models", _ok("a page of models", schema="ModelPage"), parameters=LIST_PARAMS),
        },
        "/v1/models/{model_id}": {
            "get": _operation("Read a model", _ok("the model", schema="Model"), parameters=[_id("model_id")]),
            "delete": _operation("Delete a model", {"204": {"description": "deleted"}},
                                 parameters=[_id("model_id")]),
        },
        "/v1/models/{model_id}/predict": {
            "post": _operation("Predict from raw rows (JSON inputs or records, or a CSV body with a header row)",
                               {"200": {"description": "{predictions, probabilities, classes} or "
                                                       "{predictions, targets}; CSV when Accept prefers text/csv",
                                        "content": {"application/json": {"schema": _ref("Prediction")},
                                                    "text/csv": {"schema": {"type": "string"}}}}},
                               requestBody={"required": True, "content": {
                                   "application/json": {"schema": _ref("PredictRequest")},
                                   "text/csv": {"schema": {"type": "string"}}}},
                               parameters=[_id("model_id")]),
        },
        "/v1/models/{model_id}/export": {
            "get": _operation("Download the model as ONNX (preprocessing included) or as a backprop .npz",
                              {"200": {"description": "the model file",
                                       "content": {"application/octet-stream": {}}}},
                              parameters=[_id("model_id"), {"name": "format", "in": "query", "schema": {
                                  "type": "string", "enum": list(export.FORMATS), "default": "onnx"}}]),
        },
        "/metrics": {"get": _operation("Prometheus metrics (text exposition format)", {"200": {
            "description": "the metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        "/healthz": {"get": _operation("Liveness", _ok("{status: ok}"))},
        "/readyz": {"get": _operation("Readiness: the database and the broker answer", _ok("{status, checks}"))},
    }


PROBLEM_SCHEMA = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "required": ["field", "message"], "properties": {
            "field": {"type": "string", "description": "the path of the field at fault; empty for the body"},
            "message": {"type": "string"}}}},
    },
}


def _object(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """A response object with these keys always present (more may come: clients ignore them)."""
    return {"type": "object", "required": list(required), "properties": {**required, **optional}}


STRING, INTEGER, OBJECT = {"type": "string"}, {"type": "integer"}, {"type": "object"}
ARRAY, TIME = {"type": "array"}, {"type": "string", "format": "date-time"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _page(item: str) -> dict[str, Any]:
    return _object({"items": {"type": "array", "items": _ref(item)}, "next_cursor": _nullable(STRING)})


# What the 2xx answers hold: the checks of tests/service/test_fuzz.py hold the service to it.
RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Dataset": _object({
        "id": STRING, "name": STRING, "n_rows": INTEGER, "n_columns": INTEGER, "columns": ARRAY,
        "features": {"type": "array", "items": STRING}, "targets": {"type": "array", "items": STRING},
        "task": {"enum": ["classification", "regression"]}, "classes": _nullable(ARRAY),
        "input_width": INTEGER, "source": {"enum": ["csv", "json"]}, "sha256": STRING, "created_at": TIME},
        size_bytes=_nullable(INTEGER)),
    "Network": _object({"id": STRING, "name": _nullable(STRING), "definition": OBJECT,
                        "input_dim": _nullable(INTEGER), "parameter_count": _nullable(INTEGER),
                        "created_at": TIME}),
    "Validation": _object({"valid": {"type": "boolean"}, "problems": {"type": "array", "items": _object(
        {"field": STRING, "message": STRING})}, "input_dim": _nullable(INTEGER),
        "parameter_count": _nullable(INTEGER)}),
    "Job": _object({
        "id": STRING, "status": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "dataset_id": STRING, "network_id": _nullable(STRING), "network": OBJECT, "training": OBJECT,
        "device": {"enum": ["cpu", "gpu"]}, "progress": _object({"epoch": INTEGER, "epochs": INTEGER}),
        "metrics": _nullable(OBJECT), "model_id": _nullable(STRING), "error": _nullable(STRING),
        "cancel_requested": {"type": "boolean"}, "created_at": TIME, "started_at": _nullable(TIME),
        "finished_at": _nullable(TIME)}),
    "JobMetrics": _object({"job_id": STRING, "status": STRING, "epochs": {"type": "array", "items": OBJECT}}),
    "Model": _object({
        "id": STRING, "job_id": _nullable(STRING), "dataset_id": _nullable(STRING),
        "task": {"enum": ["classification", "regression"]}, "loss": STRING, "network": OBJECT,
        "parameter_count": INTEGER, "features": {"type": "array", "items": STRING},
        "targets": {"type": "array", "items": STRING}, "classes": _nullable(ARRAY),
        "preprocessing": OBJECT, "metrics": _nullable(OBJECT), "created_at": TIME}),
    "Prediction": _object({"predictions": ARRAY, "model_id": STRING},
                          probabilities={"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                          classes=ARRAY, targets={"type": "array", "items": STRING}),
    "DatasetPage": _page("Dataset"),
    "NetworkPage": _page("Network"),
    "JobPage": _page("Job"),
    "ModelPage": _page("Model"),
}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """Build the OpenAPI 3.1 document from the pydantic request models."""
    _, top = models_json_schema([(m, "validation") for m in REQUEST_MODELS], ref_template=REF)
    schemas = dict(top.get("$defs", {}))
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas.update(RESPONSE_SCHEMAS)
    paths = _paths()
    for path, operations in paths.items():
        for method, operation in operations.items():
            operation["responses"].update(_problems(path, method, operation))
            if path.startswith("/v1/"):
                operation["security"] = [{"apiKey": []}]  # AUTH=on (docs/service.md)
    try:
        package_version = version("backprop-service")
    except PackageNotFoundError:
        package_version = "0.1.0"
    return {
        "openapi": "3.1.0",
        "info": {"title": "backprop-service", "version": package_version,
                 "description": "Train neural networks by backpropagation and serve their predictions."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "an API key from `flask --app service keys create --tenant NAME`; "
                           "not needed when the service runs with AUTH=off"}}},
    }


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    """Serve the OpenAPI document."""
    return openapi_document()


@bp.get("/docs")
def docs_page() -> Any:
    """Serve the offline API reference page (it renders /openapi.json; no CDN)."""
    return current_app.send_static_file("docs.html")
