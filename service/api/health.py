"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app
from sqlalchemy import text

from service.api import responses
from service.api.db import get_session
from service.api.errors import problem_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, Any]:
    """Say the process is alive (no dependency is checked)."""
    return responses.Health(status="ok").answer()


@bp.get("/readyz")
def readyz() -> Response | dict[str, Any]:
    """Check that the database and the broker answer."""
    checks: dict[str, str] = {}
    try:
        with get_session() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:  # any failure means not ready; say which
        checks["database"] = f"unreachable: {type(error).__name__}"
    try:
        current_app.extensions["backprop.queue"].ping()
        checks["broker"] = "ok"
    except Exception as error:
        checks["broker"] = f"unreachable: {type(error).__name__}"
    if all(v == "ok" for v in checks.values()):
        return responses.Readiness(status="ready", checks=checks).answer()
    failing = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
    response = problem_response(503, "Service Unavailable", f"not ready: {failing}", slug="not-ready")
    return response
