"""Every error rendered as application/problem+json (RFC 9457); no input ever gets a bare 500."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from service.core.problems import PROBLEM_JSON, ApiError, from_validation_error

log = logging.getLogger(__name__)


def problem_response(status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None,
                     slug: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """Build a problem+json response."""
    body: dict[str, Any] = {
        "type": f"urn:backprop:problem:{slug}" if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def init_app(app: Flask) -> None:
    """Register the handlers that render every error as problem+json."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return problem_response(error.status, error.title, error.detail, error.errors,
                                error.slug, error.headers)

    @app.errorhandler(ValidationError)
    def _validation_error(error: ValidationError) -> Response:
        converted = from_validation_error(error)
        return problem_response(422, converted.title, converted.detail, converted.errors,
                                converted.slug)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        detail = error.description or error.name
        if status == 413:
            detail = (f"the request body is larger than MAX_UPLOAD_MB "
                      f"({app.config['MAX_UPLOAD_MB']} MB)")
        response = problem_response(status, error.name, detail)
        if status == 405 and error.get_response().headers.get("Allow"):
            response.headers["Allow"] = error.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(500, "Internal Server Error",
                                "the server failed to handle this request; it has been logged")
