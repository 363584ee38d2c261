"""Trained models: list, read, delete, predict."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app
from sqlalchemy import exists, select
from sqlalchemy.orm import defer

from service.api.common import json_body, page, page_args, validate_body
from service.db import get_session
from service.errors import invalid, not_found
from service.ids import isoformat
from service.model_cache import ModelCache
from service.preprocessing import InputError
from service.schemas import PredictRequest
from service.store import paginate
from service.tables import TrainedModel

bp = Blueprint("models", __name__, url_prefix="/v1/models")

MAX_PREDICT_ROWS = 100_000


def model_json(model: TrainedModel) -> dict[str, Any]:
    """Render a model without its weights."""
    preprocessing = model.preprocessing
    return {
        "id": model.id,
        "job_id": model.job_id,
        "dataset_id": model.dataset_id,
        "task": model.task,
        "loss": model.loss,
        "network": model.definition,
        "parameter_count": model.parameter_count,
        "features": [f["name"] for f in preprocessing["features"]],
        "targets": preprocessing["target"]["names"],
        "classes": model.classes,
        "preprocessing": preprocessing,
        "metrics": model.metrics,
        "created_at": isoformat(model.created_at),
    }


def model_cache() -> ModelCache:
    """Return the app's model cache."""
    return current_app.extensions["backprop.models"]


@bp.get("")
def list_models() -> dict[str, Any]:
    """List trained models, newest first."""
    limit, cursor = page_args()
    with get_session() as session:
        statement = select(TrainedModel).options(defer(TrainedModel.weights))
        rows, next_cursor = paginate(session, statement, TrainedModel.id, limit, cursor)
        return page([model_json(m) for m in rows], next_cursor)


@bp.get("/<model_id>")
def get_model(model_id: str) -> dict[str, Any]:
    """Read one model."""
    with get_session() as session:
        model = session.get(TrainedModel, model_id, options=[defer(TrainedModel.weights)])
        if model is None:
            raise not_found("model", model_id)
        return model_json(model)


@bp.delete("/<model_id>")
def remove_model(model_id: str) -> Response:
    """Delete a model."""
    with get_session() as session:
        model = session.get(TrainedModel, model_id, options=[defer(TrainedModel.weights)])
        if model is None:
            raise not_found("model", model_id)
        session.delete(model)
        session.commit()
    model_cache().evict(model_id)
    return Response(status=204)


def _model_exists(model_id: str) -> bool:
    with get_session() as session:
        return bool(session.scalar(select(exists().where(TrainedModel.id == model_id))))


def _load_model(model_id: str) -> TrainedModel | None:
    with get_session() as session:
        return session.get(TrainedModel, model_id)


@bp.post("/<model_id>/predict")
def predict(model_id: str) -> dict[str, Any]:
    """Score raw rows (`inputs` or `records`) with a trained model."""
    body = validate_body(PredictRequest, json_body())
    rows = body.inputs if body.inputs is not None else body.records
    assert rows is not None
    field = "inputs" if body.inputs is not None else "records"
    if not rows:
        raise invalid([{"field": field, "message": "give at least one row"}])
    if len(rows) > MAX_PREDICT_ROWS:
        raise invalid([{"field": field, "message": f"at most {MAX_PREDICT_ROWS:,} rows per request"}])
    predictor = model_cache().get(model_id, exists=lambda: _model_exists(model_id),
                                  load=lambda: _load_model(model_id))
    if predictor is None:
        raise not_found("model", model_id)
    try:
        if body.inputs is not None:
            encoded = predictor.preprocessor.encode_inputs(body.inputs)
        else:
            encoded = predictor.preprocessor.encode_records(body.records or [])
    except InputError as error:
        raise invalid(error.errors) from None
    result = predictor.predict(encoded)
    result["model_id"] = model_id
    return result
