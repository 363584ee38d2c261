"""Errors as application/problem+json (RFC 9457); no input ever gets a bare 500."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """An error the client can act on, rendered as a problem document."""

    def __init__(self, status: int, title: str, detail: str = "",
                 errors: list[dict[str, str]] | None = None, slug: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail or title
        self.errors = errors or []
        self.slug = slug
        self.headers = headers or {}


def invalid(errors: list[dict[str, str]], detail: str | None = None) -> ApiError:
    """Return a 422 listing every field at fault."""
    if detail is None:
        detail = "; ".join(f"{e['field']}: {e['message']}" if e.get("field") else e["message"]
                           for e in errors[:5])
        if len(errors) > 5:
            detail += f"; and {len(errors) - 5} more"
    return ApiError(422, "Unprocessable request", detail, errors, slug="validation-error")


def not_found(kind: str, ident: str) -> ApiError:
    """Return a 404 for a missing resource."""
    return ApiError(404, "Not found", f"no {kind} with id {ident!r}", slug="not-found")


def field_path(loc: tuple[Any, ...] | list[Any], prefix: str = "") -> str:
    """Join a pydantic location into 'training.batch_size' / 'inputs[0][2]'."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def from_validation_error(error: ValidationError, prefix: str = "") -> ApiError:
    """Turn a pydantic ValidationError into a 422 with one entry per problem."""
    errors = []
    for item in error.errors(include_url=False):
        # Unions add the tried member type to the location; drop it for a readable path.
        loc = [p for p in item["loc"] if not (isinstance(p, str) and ("[" in p or p in {
            "float", "int", "str", "bool", "list", "dict", "none"}))]
        errors.append({"field": field_path(loc, prefix), "message": item["msg"]})
    return invalid(errors)


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
