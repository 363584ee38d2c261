"""Model export: GET /v1/models/{id}/export?format=onnx|npz."""

from __future__ import annotations

from flask import Blueprint, Response, request

from service.api.common import get_or_404
from service.api.db import get_session
from service.core.db.tables import TrainedModel
from service.core.models import export
from service.core.problems import invalid

bp = Blueprint("export", __name__, url_prefix="/v1/models")


@bp.get("/<model_id>/export")
def export_model(model_id: str) -> Response:
    """Download a model as ONNX (preprocessing included) or as a backprop .npz."""
    format_ = request.args.get("format", "onnx")
    if format_ not in export.FORMATS:
        raise invalid([{"field": "format", "message": f"must be one of {', '.join(export.FORMATS)}, "
                                                      f"not {format_[:50]!r}"}])
    with get_session() as session:
        model = get_or_404(session, TrainedModel, model_id, "model")
        problems = export.onnx_problems(model) if format_ == "onnx" else []
        if problems:
            raise invalid(problems)
        data = export.to_onnx(model) if format_ == "onnx" else export.to_npz(model)
    return Response(data, mimetype=export.MEDIA_TYPES[format_], headers={
        "Content-Disposition": f'attachment; filename="{model_id}.{format_}"'})
