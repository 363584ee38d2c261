"""Trained models: list, read, delete, predict."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from sqlalchemy import exists, select
from sqlalchemy.orm import defer

from service.api import responses
from service.api.auth import authenticate, current_tenant
from service.api.common import find_owned, get_or_404, json_body, limited_body, page_args, validate_body
from service.api.db import get_session
from service.api.request_ids import REQUEST_ID_HEADER, request_id_from
from service.core.data.preprocessing import InputError
from service.core.db.store import paginate
from service.core.db.tables import TrainedModel
from service.core.evaluation.report import without_test_report
from service.core.ids import isoformat
from service.core.jobs.scoring import check_model_unused
from service.core.models.cache import ModelCache, Predictor
from service.core.problems import ApiError, invalid, not_found
from service.core.schemas import MAX_PREDICT_ROWS, PredictRequest

bp = Blueprint("models", __name__, url_prefix="/v1/models")

# What /predict can answer; JSON unless the client prefers CSV.
ANSWER_TYPES = ["application/json", "text/csv"]


def _described(model: TrainedModel) -> dict[str, Any]:
    """Return what both a model's answer and its list summary say of it."""
    return {
        "id": model.id,
        "job_id": model.job_id,
        "dataset_id": model.dataset_id,
        "task": model.task,
        "loss": model.loss,
        "network": model.definition,
        "parameter_count": model.parameter_count,
        "targets": model.preprocessing["target"]["names"],
        "classes": model.classes,
        "metrics": model.metrics,
        "created_at": isoformat(model.created_at),
    }


def model_answer(model: TrainedModel) -> responses.Model:
    """Build the answer describing a model, without its weights."""
    preprocessing = model.preprocessing
    return responses.Model.model_validate({**_described(model),
                                           "features": [f["name"] for f in preprocessing["features"]],
                                           "preprocessing": preprocessing})


def model_summary(model: TrainedModel) -> responses.ModelSummary:
    """Build a model's list item: the number of its features instead of their names and preprocessing."""
    return responses.ModelSummary.model_validate({**_described(model), "metrics": without_test_report(model.metrics),
                                                  "n_features": len(model.preprocessing["features"])})


def model_json(model: TrainedModel) -> dict[str, Any]:
    """Render a model without its weights."""
    return model_answer(model).answer()


def model_cache() -> ModelCache:
    """Return the app's model cache."""
    return current_app.extensions["backprop.models"]


@bp.get("")
def list_models() -> dict[str, Any]:
    """List trained models, newest first."""
    limit, cursor = page_args()
    with get_session() as session:
        statement = (select(TrainedModel).options(defer(TrainedModel.weights))
                     .where(TrainedModel.tenant_id == current_tenant()))
        rows, next_cursor = paginate(session, statement, TrainedModel.id, limit, cursor)
        return responses.ModelPage(items=[model_summary(m) for m in rows], next_cursor=next_cursor).answer()


@bp.get("/<model_id>")
def get_model(model_id: str) -> dict[str, Any]:
    """Read one model."""
    with get_session() as session:
        model = get_or_404(session, TrainedModel, model_id, "model", options=[defer(TrainedModel.weights)])
        return model_json(model)


@bp.delete("/<model_id>")
def remove_model(model_id: str) -> Response:
    """Delete a model."""
    with get_session() as session:
        model = get_or_404(session, TrainedModel, model_id, "model", options=[defer(TrainedModel.weights)])
        check_model_unused(session, model_id)
        session.delete(model)
        session.commit()
    model_cache().evict(model_id)
    return Response(status=204)


def _model_exists(model_id: str) -> bool:
    with get_session() as session:
        return bool(session.scalar(select(exists().where(TrainedModel.id == model_id))))


def _load_model(model_id: str) -> TrainedModel | None:
    """Return the request's tenant's model, None for another's: the cache never loads what it must not serve."""
    with get_session() as session:
        return find_owned(session, TrainedModel, model_id)


@bp.post("/<model_id>/predict")
def predict(model_id: str) -> Any:
    """Score raw rows (`inputs`, `records` or a text/csv body) with a trained model."""
    if request.mimetype == "text/csv":
        # The JSON bodies' limit: a CSV body becomes Python strings before anything counts its rows.
        body = limited_body("CSV")
        predictor = _predictor(model_id)
        try:
            encoded = predictor.preprocessor.encode_csv(body, MAX_PREDICT_ROWS, current_app.config["MAX_COLUMNS"])
        except InputError as error:
            raise invalid(error.errors) from None
        _check_predict_size(predictor, len(encoded), "csv")
    else:
        rows_at_most = {"inputs": MAX_PREDICT_ROWS, "records": MAX_PREDICT_ROWS}  # counted before validation
        request_body = validate_body(PredictRequest, json_body(max_rows=rows_at_most))
        rows = request_body.inputs if request_body.inputs is not None else request_body.records
        assert rows is not None
        field = "inputs" if request_body.inputs is not None else "records"
        if not rows:
            raise invalid([{"field": field, "message": "give at least one row"}])
        if len(rows) > MAX_PREDICT_ROWS:
            raise invalid([{"field": field, "message": f"at most {MAX_PREDICT_ROWS:,} rows per request"}])
        predictor = _predictor(model_id)
        _check_predict_size(predictor, len(rows), field)
        try:
            if request_body.inputs is not None:
                # JSON booleans must not pass for numbers; without the words true/false in the
                # body there are none, and a large request skips a check per value.
                raw = request.get_data()
                encoded = predictor.preprocessor.encode_inputs(
                    request_body.inputs, may_hold_booleans=b"true" in raw or b"false" in raw)
            else:
                encoded = predictor.preprocessor.encode_records(request_body.records or [])
        except InputError as error:
            raise invalid(error.errors) from None
    result = predictor.predict(encoded, current_app.config["MAX_ACTIVATION_FLOATS"])
    if request.accept_mimetypes.best_match(ANSWER_TYPES) == "text/csv":
        return Response(_csv_answer(result), mimetype="text/csv")
    result["model_id"] = model_id
    return result


def _predictor(model_id: str) -> Predictor:
    tenant = current_tenant()
    # One cache for every tenant: the entry says whose it is, and another tenant's is missing,
    # checked before the entry is counted, moved or loaded.
    predictor = model_cache().get(model_id, tenant, exists=lambda: _model_exists(model_id),
                                  load=lambda: _load_model(model_id))
    if predictor is None:
        raise not_found("model", model_id)
    return predictor


def _over_predict_size(predictor: Predictor, rows: int, max_values: int) -> bool:
    """Say whether `rows` would pass more than `max_values` values (MAX_PREDICT_VALUES) through the network."""
    return rows * predictor.network.activation_width > max_values


def _check_predict_size(predictor: Predictor, rows: int, field: str) -> None:
    """Raise the 413 problem when the request's rows pass more than MAX_PREDICT_VALUES values through the network.

    Memory is bounded by the chunks (MAX_ACTIVATION_FLOATS); this bounds the request's time.
    """
    max_values = current_app.config["MAX_PREDICT_VALUES"]
    if not _over_predict_size(predictor, rows, max_values):
        return
    width = predictor.network.activation_width
    message = (f"{rows:,} rows pass {rows * width:,} values through this model's network ({width:,} a row, "
               f"the sum of its widths), more than MAX_PREDICT_VALUES ({max_values:,}); send at most "
               f"{max_values // width:,} rows per request")
    raise ApiError(413, "Content Too Large", message, [{"field": field, "message": message}],
                   slug="predict-too-large")


def _csv_answer(result: dict[str, Any]) -> str:
    """Render predictions as CSV: `prediction` and `probability_<class>` columns, or the targets.

    Numbers are written by orjson, in the shortest form that reads back as the
    same float (a non-finite one as `null`, as in the JSON answer), and each
    class label is quoted by the csv module once: csv.writer over every row
    took 50-65 ms for 10,000 rows of 3 classes, this ~9 ms (docs/performance.md).
    """
    if "probabilities" in result:
        header = ["prediction"] + [f"probability_{c}" for c in result["classes"]]
        cell = {label: _csv_line([label]) for label in result["classes"]}
        rows = [f"{cell[label]},{numbers}"
                for label, numbers in zip(result["predictions"], _number_rows(result["probabilities"]))]
    else:
        header = result["targets"]
        rows = _number_rows(result["predictions"])
    return "".join(line + "\n" for line in [_csv_line(header), *rows])


def _csv_line(cells: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()


def _number_rows(values: list[float] | list[list[float]]) -> list[str]:
    """Return one CSV line per value, or per row of values."""
    if not values:
        return []
    text = orjson.dumps(values).decode()
    return text[2:-2].split("],[") if isinstance(values[0], list) else text[1:-1].split(",")


class PredictFastLane:
    """WSGI middleware that answers the common /predict request before Flask's routing.

    A small JSON `{"inputs": [...]}` body for a model whose cache entry is fresh,
    answered in JSON, is scored here with the same preprocessing and network
    as the view, saving the request context and URL matching, about half the
    cost of a one-row predict. Anything else (records, CSV, errors, a model
    to load or re-check, another Accept) goes on to the view unchanged, which
    stays the one place where problems are reported. Any check the view makes
    before scoring must be made here too, or the lane must step aside: the key
    is checked by the same function as Flask's hook (service.api.auth.authenticate),
    and a request without a good key, or for another tenant's model, goes on to
    the view, which answers its 401 or 404.
    """

    MAX_BODY = 64 * 1024
    PATH = re.compile(r"/v1/models/([^/]+)/predict")
    ROUTE = "/v1/models/<model_id>/predict"  # the view's URL rule, so /metrics shows one route

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], app: Flask) -> None:
        self.wsgi_app = wsgi_app
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            match = self.PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None:
                started = time.perf_counter()
                answer = self._answer(match.group(1), environ)
                if answer is not None:
                    # What Flask's hooks do for the view: echo a request id, count the request.
                    answer.headers[REQUEST_ID_HEADER] = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
                    http = self.app.extensions.get("backprop.metrics.http")
                    if http is not None:
                        http.observe("POST", self.ROUTE, answer.status_code, time.perf_counter() - started)
                    return answer(environ, start_response)
        return self.wsgi_app(environ, start_response)

    def _answer(self, model_id: str, environ: dict[str, Any]) -> Response | None:
        if (environ.get("CONTENT_TYPE", "").split(";")[0].strip() != "application/json"
                or environ.get("HTTP_ACCEPT", "*/*") not in ("*/*", "application/json")):
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            return None
        if not 0 < length <= self.MAX_BODY:
            return None
        try:
            tenant = authenticate(self.app, environ.get("HTTP_AUTHORIZATION"))
        except ApiError:
            return None
        # The tenant first: another tenant's entry is neither used nor counted.
        predictor = self.app.extensions["backprop.models"].fresh(model_id, tenant)
        if predictor is None:
            return None
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)  # the view can read it again
        if b"true" in raw or b"false" in raw:
            return None  # booleans are errors, which the view words
        try:
            body = self.app.json.loads(raw)
            inputs = body["inputs"]
            if (len(body) != 1 or not isinstance(inputs, list) or not inputs
                    or len(inputs) > MAX_PREDICT_ROWS
                    or _over_predict_size(predictor, len(inputs), self.app.config["MAX_PREDICT_VALUES"])):
                return None
            encoded = predictor.preprocessor.encode_inputs(inputs, may_hold_booleans=False)
            result = predictor.predict(encoded, self.app.config["MAX_ACTIVATION_FLOATS"])
        except Exception:  # noqa: BLE001 - whatever went wrong, the view says it properly
            return None
        result["model_id"] = model_id
        return self.app.json.response(result)


@bp.record_once
def _install_fast_lane(state: BlueprintSetupState) -> None:
    """Put the fast lane in front of the app that registers this blueprint."""
    state.app.wsgi_app = PredictFastLane(state.app.wsgi_app, state.app)  # type: ignore[method-assign]
