"""The OpenAPI document, generated from the request schemas, and an offline page to read it."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, current_app
from pydantic.json_schema import models_json_schema

from service import export
from service.schemas import REQUEST_MODELS

bp = Blueprint("docs", __name__)

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _ok(description: str, status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}}


PROBLEMS = {
    "default": {"description": "a problem (RFC 9457)",
                "content": {"application/problem+json": {"schema": _ref("Problem")}}},
}

LIST_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"},
     "description": "next_cursor of the previous page"},
]


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _operation(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **PROBLEMS}, **extra}


WIDTH_PARAMS = [
    {"name": "input_dim", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "output_dim", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "dataset_id", "in": "query", "schema": {"type": "string"},
     "description": "take the input width from this dataset"},
]


def _paths() -> dict[str, Any]:
    return {
        "/v1/datasets": {
            "post": _operation("Upload a dataset (multipart CSV or JSON rows)", _ok("the dataset", "201"),
                               requestBody={"required": True, "content": {
                                   "multipart/form-data": {"schema": _ref("DatasetUpload")},
                                   "application/json": {"schema": _ref("DatasetJson")}}}),
            "get": _operation("List datasets", _ok("a page of datasets"), parameters=LIST_PARAMS),
        },
        "/v1/datasets/{dataset_id}": {
            "get": _operation("Read a dataset", _ok("the dataset"), parameters=[_id("dataset_id")]),
            "delete": _operation("Delete a dataset", {"204": {"description": "deleted"}},
                                 parameters=[_id("dataset_id")]),
        },
        "/v1/networks": {
            "post": _operation("Store a network definition after validating it", _ok("the network", "201"),
                               requestBody=_json_body("NetworkDefinition"), parameters=WIDTH_PARAMS),
            "get": _operation("List networks", _ok("a page of networks"), parameters=LIST_PARAMS),
        },
        "/v1/networks/validate": {
            "post": _operation("Check a definition without storing it; every problem at once",
                               _ok("{valid, problems, parameter_count}"),
                               requestBody=_json_body("NetworkDefinition"), parameters=WIDTH_PARAMS),
        },
        "/v1/networks/{network_id}": {
            "get": _operation("Read a network, with its parameter count when the input width is known",
                              _ok("the network"), parameters=[_id("network_id"), *WIDTH_PARAMS[::2]]),
            "delete": _operation("Delete a network", {"204": {"description": "deleted"}},
                                 parameters=[_id("network_id")]),
        },
        "/v1/jobs": {
            "post": _operation("Create a training job", _ok("the queued job; Location names it", "202"),
                               requestBody=_json_body("JobCreate")),
            "get": _operation("List jobs", _ok("a page of jobs"), parameters=[*LIST_PARAMS, {
                "name": "status", "in": "query", "schema": {
                    "type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}}]),
        },
        "/v1/jobs/{job_id}": {
            "get": _operation("Read a job: status, progress, latest metrics, model_id, error",
                              _ok("the job"), parameters=[_id("job_id")]),
        },
        "/v1/jobs/{job_id}/metrics": {
            "get": _operation("Per-epoch history with per-layer diagnostics", _ok("{job_id, epochs}"),
                              parameters=[_id("job_id")]),
        },
        "/v1/jobs/{job_id}/events": {
            "get": _operation("Live events (Server-Sent Events): one `epoch` event per epoch, then a `status` "
                              "event when the job ends; Last-Event-ID resumes after that epoch",
                              {"200": {"description": "text/event-stream",
                                       "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
                              parameters=[_id("job_id"), {"name": "last_event_id", "in": "query",
                                                          "schema": {"type": "integer", "minimum": 0},
                                                          "description": "as the Last-Event-ID header"}]),
        },
        "/v1/jobs/{job_id}/cancel": {
            "post": _operation("Cancel a queued job, or ask a running one to stop", _ok("the job", "202"),
                               parameters=[_id("job_id")]),
        },
        "/v1/models": {
            "get": _operation("List trained models", _ok("a page of models"), parameters=LIST_PARAMS),
        },
        "/v1/models/{model_id}": {
            "get": _operation("Read a model", _ok("the model"), parameters=[_id("model_id")]),
            "delete": _operation("Delete a model", {"204": {"description": "deleted"}},
                                 parameters=[_id("model_id")]),
        },
        "/v1/models/{model_id}/predict": {
            "post": _operation("Predict from raw rows (JSON inputs or records, or a CSV body with a header row)",
                               _ok("{predictions, probabilities, classes} or {predictions, targets}; "
                                   "CSV when Accept prefers text/csv"),
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
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "message": {"type": "string"}}}},
    },
}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """Build the OpenAPI 3.1 document from the pydantic request models."""
    _, top = models_json_schema([(m, "validation") for m in REQUEST_MODELS], ref_template=REF)
    schemas = dict(top.get("$defs", {}))
    schemas["Problem"] = PROBLEM_SCHEMA
    try:
        package_version = version("backprop-service")
    except PackageNotFoundError:
        package_version = "0.1.0"
    return {
        "openapi": "3.1.0",
        "info": {"title": "backprop-service", "version": package_version,
                 "description": "Train neural networks by backpropagation and serve their predictions."},
        "paths": _paths(),
        "components": {"schemas": schemas},
    }


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    """Serve the OpenAPI document."""
    return openapi_document()


@bp.get("/docs")
def docs_page() -> Any:
    """Serve the offline API reference page (it renders /openapi.json; no CDN)."""
    return current_app.send_static_file("docs.html")
