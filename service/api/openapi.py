"""The OpenAPI document, generated from the app's routes and the request and response models,
and an offline page to read it.

Paths, methods and path parameters come from `app.url_map`; each route's endpoint has one
entry in OPERATIONS saying what the route takes (query, body model) and answers (status,
response model, links to the operations that take the ids it returns). A route without an
entry is an error when the document is built, so a new route cannot go undocumented.
HEAD and OPTIONS, which Flask answers on every route, are not listed per operation
(docs/service.md, "The OpenAPI document").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, current_app
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api import responses
from service.api.browser import STATE_CHANGING_METHODS
from service.api.common import DEFAULT_PAGE, MAX_PAGE
from service.api.json_provider import MAX_JSON_DEPTH
from service.api.networks import MAX_WIDTH
from service.core.models import export
from service.core.problems import PROBLEM_JSON
from service.core.schemas import BATCH_PREDICTION_MEDIA_TYPES, REQUEST_MODELS
from service.core.statuses import JobStatus

bp = Blueprint("docs", __name__)

REF = "#/components/schemas/{model}"
# Methods Flask and Werkzeug add to every route by themselves.
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})


def _ref(model: type[BaseModel] | str) -> dict[str, str]:
    name = model if isinstance(model, str) else model.model_config.get("title") or model.__name__
    return {"$ref": REF.format(model=name)}


# The problem responses (RFC 9457) an operation can give, each with what causes it.
PROBLEM_CAUSES = {
    400: f"the body is not valid JSON, or nests arrays and objects deeper than {MAX_JSON_DEPTH:,} levels",
    401: "no API key, or one that is not known (AUTH=on)",
    403: "AUTH=off: a state change sent by another origin's web page (Origin, Sec-Fetch-Site)",
    404: "no resource with this id",
    409: "the resource's state forbids it",
    413: ("the body is larger than MAX_UPLOAD_MB (a JSON or /predict CSV body: MAX_JSON_MB), or the tenant "
          "would store more than TENANT_MAX_STORED_MB, or a /predict passes more than MAX_PREDICT_VALUES "
          "values through its network"),
    415: "a media type the operation does not take",
    421: "AUTH=off: a Host that is not 127.0.0.1, localhost or [::1] (DNS rebinding)",
    422: "a field is invalid; `errors` names each",
    429: ("a limit is reached (see Retry-After; `errors[0].field` names it): TENANT_MAX_CONCURRENT_JOBS jobs "
          "queued or running, or EVENTS_MAX_STREAMS_PER_TENANT / _PER_PROCESS event streams open"),
    503: "the database or the broker does not answer, or the process ran out of memory (see Retry-After)",
}


def _query(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    parameter = {"name": name, "in": "query", "schema": schema}
    return parameter | ({"description": description} if description else {})


LIST_QUERY = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}),
    _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
]
INPUT_DIM = _query("input_dim", {"type": "integer", "minimum": 1, "maximum": MAX_WIDTH})
OUTPUT_DIM = _query("output_dim", {"type": "integer", "minimum": 1, "maximum": MAX_WIDTH})
WIDTH_DATASET = _query("dataset_id", {"type": "string"}, "take the input width from this dataset")
WIDTH_QUERY = [INPUT_DIM, OUTPUT_DIM, WIDTH_DATASET]

# One Server-Sent Event (OpenAPI 3.1 reads the schema of an event stream per event): `epoch`
# carries a JobEpoch, `status` a JobSummary.
EVENT_SCHEMA = {"type": "object", "properties": {
    "event": {"type": "string", "enum": ["epoch", "status"]},
    "id": {"type": "string", "description": "the epoch, for Last-Event-ID"},
    "data": {"type": "string", "contentMediaType": "application/json"}}}
HTML = {"text/html": {"schema": {"type": "string"}}}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _link(operation_id: str, parameters: dict[str, str] | None = None,
          body: dict[str, str] | None = None) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": operation_id}
    if parameters:
        link["parameters"] = parameters
    if body:
        link["requestBody"] = body
    return link


def _id_links(kind: str, pointer: str) -> dict[str, dict[str, Any]]:
    """Links from an answer holding the id of a `kind` (at JSON pointer `pointer`) to every
    operation taking that id."""
    value = f"$response.body#{pointer}"
    param = {kind: value}
    by_kind: dict[str, dict[str, dict[str, Any]]] = {
        "dataset_id": {
            "GetDataset": _link("datasets.get_dataset", param),
            "DeleteDataset": _link("datasets.remove_dataset", param),
            "CreateJobOnDataset": _link("jobs.create_job", body={"dataset_id": value}),
            "ValidateNetworkForDataset": _link("networks.validate_network", {"query.dataset_id": value}),
        },
        "network_id": {
            "GetNetwork": _link("networks.get_network", param),
            "DeleteNetwork": _link("networks.remove_network", param),
            "CreateJobWithNetwork": _link("jobs.create_job", body={"network_id": value}),
        },
        "job_id": {
            "GetJob": _link("jobs.get_job", param),
            "GetJobMetrics": _link("jobs.get_job_metrics", param),
            "GetJobEvents": _link("events.job_events", param),
            "CancelJob": _link("jobs.cancel_job", param),
        },
        "evaluation_id": {
            "GetEvaluation": _link("evaluations.get_evaluation", param),
            "CancelEvaluation": _link("evaluations.cancel_evaluation", param),
        },
        "batch_prediction_id": {
            "GetBatchPrediction": _link("batch_predictions.get_batch_prediction", param),
            "DownloadBatchPrediction": _link("batch_predictions.download_batch_prediction", param),
            "CancelBatchPrediction": _link("batch_predictions.cancel_batch_prediction", param),
            "DeleteBatchPrediction": _link("batch_predictions.remove_batch_prediction", param),
        },
        "model_id": {
            "GetModel": _link("models.get_model", param),
            "Predict": _link("models.predict", param),
            "ExportModel": _link("export.export_model", param),
            "DeleteModel": _link("models.remove_model", param),
            "CreateJobFromModel": _link("jobs.create_job", body={"init_from_model": value}),
        },
    }
    return by_kind[kind]


@dataclass(frozen=True)
class Operation:
    """What one route takes and answers, besides what its URL rule says."""

    answer: dict[str, Any] | None  # content of the success answer (None: no body)
    status: int = 200
    body: dict[str, Any] | None = None  # content of the request body
    query: list[dict[str, Any]] = field(default_factory=list)
    problems: tuple[int, ...] = ()  # beyond those that follow from the shape (see _problems)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""


JSON_BODY = {"application/json": {"schema": _ref("NetworkDefinition")}}

# Endpoint -> its operation. The summary is the first line of the view's docstring.
OPERATIONS: dict[str, Operation] = {
    "datasets.create_dataset": Operation(
        _json(responses.Dataset), 201,
        body={"multipart/form-data": {"schema": _ref("DatasetUpload")},
              "application/json": {"schema": _ref("DatasetJson")}},
        links=_id_links("dataset_id", "/id")),
    "datasets.list_datasets": Operation(_json(responses.DatasetPage), query=LIST_QUERY,
                                        links=_id_links("dataset_id", "/items/0/id")),
    "datasets.get_dataset": Operation(_json(responses.Dataset)),
    "datasets.remove_dataset": Operation(None, 204, problems=(409,)),
    "networks.validate_network": Operation(
        _json(responses.Validation), body={"application/json": {"schema": _ref("NetworkToCheck")}},
        query=WIDTH_QUERY),
    "networks.create_network": Operation(_json(responses.Network), 201, body=JSON_BODY, query=WIDTH_QUERY,
                                         links=_id_links("network_id", "/id")),
    "networks.list_networks": Operation(_json(responses.NetworkPage), query=LIST_QUERY,
                                        links=_id_links("network_id", "/items/0/id")),
    "networks.get_network": Operation(_json(responses.Network), query=[INPUT_DIM, WIDTH_DATASET]),
    "networks.remove_network": Operation(None, 204),
    "jobs.create_job": Operation(
        _json(responses.Job), 202, body={"application/json": {"schema": _ref("JobCreate")}},
        problems=(429, 503), description="Location names the job.",
        links={**_id_links("job_id", "/id")}),
    "jobs.list_jobs": Operation(
        _json(responses.JobPage),
        query=[*LIST_QUERY, _query("status", {"type": "string", "enum": [s.value for s in JobStatus]})],
        links={**_id_links("job_id", "/items/0/id"), **_id_links("model_id", "/items/0/model_id")}),
    "jobs.get_job": Operation(_json(responses.Job), links=_id_links("model_id", "/model_id")),
    "jobs.get_job_metrics": Operation(_json(responses.JobMetrics), query=[
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": MAX_PAGE}),
        _query("cursor", {"type": "string", "pattern": "^([0-9]{1,9})?$"},
               "next_cursor of the previous page (the last epoch it held); empty: the first")]),
    "jobs.cancel_job": Operation(_json(responses.Job), 202, problems=(409,)),
    "events.job_events": Operation(
        {"text/event-stream": {"schema": EVENT_SCHEMA}},
        query=[_query("last_event_id", {"type": "integer", "minimum": 0}, "as the Last-Event-ID header")],
        problems=(429,),
        description="One `epoch` event (a JobEpoch) per epoch, then a `status` event (a JobSummary) "
                    "when the job ends; Last-Event-ID resumes after that epoch."),
    "models.list_models": Operation(_json(responses.ModelPage), query=LIST_QUERY,
                                    links=_id_links("model_id", "/items/0/id"),
                                    description="Each item is a summary (`n_features`); GET a model by id "
                                                "for its features and preprocessing."),
    "models.get_model": Operation(_json(responses.Model)),
    "models.remove_model": Operation(None, 204, problems=(409,)),
    "models.predict": Operation(
        {**_json(responses.Prediction), "text/csv": {"schema": {"type": "string"}}},
        body={"application/json": {"schema": _ref("PredictRequest")}, "text/csv": {"schema": {"type": "string"}}},
        problems=(503,), description="CSV answers when Accept prefers text/csv."),
    "evaluations.create_evaluation": Operation(
        _json(responses.Evaluation), 202, body={"application/json": {"schema": _ref("EvaluationCreate")}},
        problems=(429, 503), description="Location names the evaluation.",
        links=_id_links("evaluation_id", "/id")),
    "evaluations.list_evaluations": Operation(_json(responses.EvaluationPage), query=LIST_QUERY,
                                              links=_id_links("evaluation_id", "/items/0/id")),
    "evaluations.get_evaluation": Operation(_json(responses.Evaluation)),
    "evaluations.cancel_evaluation": Operation(_json(responses.Evaluation), 202, problems=(409,)),
    "batch_predictions.create_batch_prediction": Operation(
        _json(responses.BatchPrediction), 202, body={"application/json": {"schema": _ref("BatchPredictionCreate")}},
        problems=(429, 503), description="Location names the batch prediction.",
        links=_id_links("batch_prediction_id", "/id")),
    "batch_predictions.get_batch_prediction": Operation(_json(responses.BatchPrediction)),
    "batch_predictions.cancel_batch_prediction": Operation(_json(responses.BatchPrediction), 202, problems=(409,)),
    "batch_predictions.remove_batch_prediction": Operation(
        None, 204, problems=(409,), description="The file goes with it; a 409 while it is queued or running."),
    "batch_predictions.download_batch_prediction": Operation(
        {media: {"schema": {"type": "string", "format": "binary"}} for media in BATCH_PREDICTION_MEDIA_TYPES.values()},
        problems=(409,), description="The file as the worker wrote it (CSV or Parquet); a 409 until the batch "
                                     "prediction succeeded."),
    "export.export_model": Operation(
        {media: {"schema": {"type": "string", "format": "binary"}} for media in set(export.MEDIA_TYPES.values())},
        query=[_query("format", {"type": "string", "enum": list(export.FORMATS), "default": "onnx"})]),
    "health.healthz": Operation(_json(responses.Health)),
    "health.readyz": Operation(_json(responses.Readiness), problems=(503,)),
    "metrics.metrics": Operation({"text/plain": {"schema": {"type": "string"}}}),
    "docs.openapi_json": Operation({"application/json": {"schema": {"type": "object"}}}),
    "docs.docs_page": Operation(HTML),
    "ui.index": Operation({**HTML, "application/json": {"schema": {"type": "object"}}},
                          description="HTML when Accept prefers it, else a JSON index of links."),
    "ui.jobs": Operation(HTML),
    "ui.job": Operation(HTML),
    "ui.model": Operation(HTML),
    "ui.compare": Operation(HTML),
    "static": Operation({"*/*": {"schema": {"type": "string", "format": "binary"}}}, problems=(404,)),
    "ui.static": Operation({"*/*": {"schema": {"type": "string", "format": "binary"}}}, problems=(404,)),
}

# <converter(args):name> or <name> in a Werkzeug rule.
RULE_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
CONVERTER_SCHEMAS = {"default": {"type": "string"}, "string": {"type": "string"}, "path": {"type": "string"},
                     "int": {"type": "integer"}, "float": {"type": "number"},
                     "uuid": {"type": "string", "format": "uuid"}}


def _problems(path: str, operation: dict[str, Any], extra: tuple[int, ...], method: str = "GET") -> dict[str, Any]:
    """Document each problem status the operation can answer: every /v1 route may refuse the
    caller, a body may be malformed, too large, of the wrong type or invalid, an id in the
    path may be unknown, a query parameter invalid. What is not listed is a bug."""
    statuses = set(extra) | {421}  # service/api/browser.py, AUTH=off
    if method in STATE_CHANGING_METHODS:
        statuses.add(403)
    if path.startswith("/v1/"):
        statuses.add(401)
    if "requestBody" in operation:
        statuses |= {400, 413, 415, 422}
    parameters = operation.get("parameters", [])
    if any(p["in"] == "path" for p in parameters) and path.startswith("/v1/"):
        statuses.add(404)
    if any(p["in"] == "query" for p in parameters):
        statuses.add(422)
    return {str(status): {"description": PROBLEM_CAUSES.get(status, "see detail"),
                          "content": {PROBLEM_JSON: {"schema": _ref(responses.Problem)}}}
            for status in sorted(statuses)}


def _summary(app: Flask, endpoint: str) -> str:
    doc = (app.view_functions[endpoint].__doc__ or endpoint).strip()
    return doc.splitlines()[0].rstrip(".")


def _static_files(app: Flask, endpoint: str) -> list[str] | None:
    """Return the files a static route serves (paths under its folder), or None for other routes."""
    if endpoint == "static":
        folder = app.static_folder
    elif endpoint.endswith(".static") and endpoint.removesuffix(".static") in app.blueprints:
        folder = app.blueprints[endpoint.removesuffix(".static")].static_folder
    else:
        return None
    root = Path(folder) if folder else None
    if root is None or not root.is_dir():
        return None
    return sorted(str(f.relative_to(root).as_posix()) for f in root.rglob("*") if f.is_file()) or None


def _paths(app: Flask) -> dict[str, Any]:
    """One path per URL rule, one operation per method it routes (HEAD and OPTIONS aside)."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        spec = OPERATIONS.get(rule.endpoint)
        if spec is None:
            raise LookupError(f"route {rule.rule} ({rule.endpoint}) has no entry in OPERATIONS")
        path = RULE_ARGUMENT.sub(lambda m: "{" + m["name"] + "}", rule.rule)
        parameters = [{"name": m["name"], "in": "path", "required": True,
                       "schema": CONVERTER_SCHEMAS[m["converter"] or "default"]}
                      for m in RULE_ARGUMENT.finditer(rule.rule)]
        files = _static_files(app, rule.endpoint)
        if files is not None:  # the files there are: a client (or a fuzzer) can only want those
            parameters = [{**p, "schema": {"type": "string", "enum": files}} for p in parameters]
        for method in sorted((rule.methods or set()) - IMPLICIT_METHODS):
            operation: dict[str, Any] = {"operationId": rule.endpoint, "summary": _summary(app, rule.endpoint)}
            if spec.description:
                operation["description"] = spec.description
            if parameters or spec.query:
                operation["parameters"] = [*parameters, *spec.query]
            if spec.body:
                operation["requestBody"] = {"required": True, "content": spec.body}
            success: dict[str, Any] = {"description": _summary(app, rule.endpoint)}
            if spec.answer:
                success["content"] = spec.answer
            if spec.links:
                success["links"] = spec.links
            operation["responses"] = {str(spec.status): success, **_problems(path, operation, spec.problems, method)}
            if path.startswith("/v1/"):
                operation["security"] = [{"apiKey": []}]  # AUTH=on (docs/service.md)
            paths.setdefault(path, {})[method.lower()] = operation
    return paths


def _schemas() -> dict[str, Any]:
    """The components: request models as they validate, response models as they serialise."""
    models = [(m, "validation") for m in REQUEST_MODELS] + [(m, "serialization") for m in responses.RESPONSE_MODELS]
    _, top = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
    return dict(top.get("$defs", {}))


def build_document(app: Flask) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of an app from its routes and the pydantic models."""
    try:
        package_version = version("backprop-service")
    except PackageNotFoundError:
        package_version = "0.1.0"
    return {
        "openapi": "3.1.0",
        "info": {"title": "backprop-service", "version": package_version,
                 "description": "Train neural networks by backpropagation and serve their predictions."},
        "paths": _paths(app),
        "components": {"schemas": _schemas(), "securitySchemes": {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "an API key from `flask --app service keys create --tenant NAME`; "
                           "not needed when the service runs with AUTH=off"}}},
    }


def openapi_document() -> dict[str, Any]:
    """Return the current app's document (built once per app)."""
    document = current_app.extensions.get("backprop.openapi")
    if document is None:
        document = current_app.extensions["backprop.openapi"] = build_document(current_app)
    return document


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    """Serve the OpenAPI document."""
    return openapi_document()


@bp.get("/docs")
def docs_page() -> Any:
    """Serve the offline API reference page (it renders /openapi.json; no CDN)."""
    return current_app.send_static_file("docs.html")
