"""Every error rendered as application/problem+json (RFC 9457); no input ever gets a bare 500."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flask import Flask, Response, json, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service.api.responses import Problem, render
from service.core.problems import PROBLEM_JSON, ApiError, body_too_large, from_validation_error

log = logging.getLogger(__name__)

# Seconds a client is told to wait after a 503 for want of memory: other requests finish meanwhile.
OUT_OF_MEMORY_RETRY_AFTER_S = 5


def problem_response(status: int, title: str, detail: str, errors: Sequence[Mapping[str, Any]] | None = None,
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
    response = Response(json.dumps(render(Problem, body)), status=status, mimetype=PROBLEM_JSON)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def route_methods(app: Flask, rule: str) -> list[str]:
    """Return the methods of the route with this URL rule (every rule spelled so), sorted."""
    return sorted({m for r in app.url_map.iter_rules() if r.rule == rule for m in r.methods or ()})


def _allowed_for_405(app: Flask, valid_methods: Iterable[str]) -> list[str]:
    """Return the Allow header of a 405: the methods of the route the path names.

    Werkzeug offers the methods of every rule the path matches; of those rules the one
    with the fewest variable parts is the route the path names (a static segment wins
    over a converter, as in routing)."""
    adapter = app.url_map.bind_to_environ(request.environ)
    rules = []
    for method in valid_methods:
        try:
            rule, _ = adapter.match(method=method, return_rule=True)
        except HTTPException:
            continue
        rules.append(rule)
    if not rules:
        return sorted(valid_methods)
    named = min(rules, key=lambda r: (len(r.arguments), r.rule))
    return route_methods(app, named.rule)


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
            detail = body_too_large(app.config["MAX_UPLOAD_MB"])
        response = problem_response(status, error.name, detail)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(_allowed_for_405(app, error.valid_methods))
        return response

    @app.after_request
    def _options_allow(response: Response) -> Response:
        # Flask's automatic OPTIONS answer lists the methods of every rule the path matches:
        # /v1/networks/validate would advertise GET and DELETE, which only reach
        # /v1/networks/<network_id> with the id "validate". Say those of the route it names.
        if request.method == "OPTIONS" and request.url_rule is not None and "Allow" in response.headers:
            response.headers["Allow"] = ", ".join(route_methods(app, request.url_rule.rule))
        return response

    @app.errorhandler(MemoryError)
    def _out_of_memory(error: MemoryError) -> Response:
        # The budgets (MAX_ACTIVATION_FLOATS, MAX_PREDICT_VALUES ...) should keep a request from
        # this; when the process is short of memory all the same, the request may succeed later.
        log.exception("out of memory")
        return problem_response(503, "Service Unavailable",
                                "the server ran out of memory handling this request; try again later, "
                                "or send less at once", slug="out-of-memory",
                                headers={"Retry-After": str(OUT_OF_MEMORY_RETRY_AFTER_S)})

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(500, "Internal Server Error",
                                "the server failed to handle this request; it has been logged")
