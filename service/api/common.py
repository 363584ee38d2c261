"""Helpers shared by the blueprints: JSON bodies, schema validation, paging."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from werkzeug.exceptions import BadRequest

from service.api.auth import current_tenant
from service.core.problems import ApiError, from_validation_error, invalid, not_found
from service.core.tenancy import ownership

M = TypeVar("M", bound=BaseModel)
Row = ownership.Row

DEFAULT_PAGE = 50
MAX_PAGE = 1000


def json_body() -> Any:
    """Return the request's JSON body, or raise a problem saying what is wrong with it."""
    if not request.is_json:
        raise ApiError(415, "Unsupported Media Type",
                       f"send application/json (got {request.mimetype or 'no content type'})")
    try:
        body = request.get_json()
    except BadRequest as error:
        # Say where the syntax breaks ("Expecting ',' delimiter: line 1 column 12"): Werkzeug's
        # error has it, and Flask outside debug mode raises a bare one from it.
        cause = error.__cause__ if isinstance(error.__cause__, BadRequest) else error
        reason = str(cause.description).removeprefix("Failed to decode JSON object: ")
        raise ApiError(400, "Bad Request", f"the body is not valid JSON: {reason}"[:300],
                       slug="invalid-json") from None
    if body is None:  # the literal null
        raise invalid([{"field": "", "message": "the body must be a JSON object, not null"}])
    return body


def validate_body(model: type[M], body: Any) -> M:
    """Validate a JSON value with a request schema; a ValidationError becomes a 422."""
    if not isinstance(body, dict):
        raise invalid([{"field": "", "message": "the body must be a JSON object"}])
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise from_validation_error(error) from None


def int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    """Read an integer query parameter within bounds, or raise a 422 naming it."""
    values = request.args.getlist(name)
    if not values:
        return default
    if len(values) > 1:  # which one was meant is a guess: refuse rather than take the first
        raise invalid([{"field": name, "message": "give it once"}])
    raw = values[0]
    try:
        value = int(raw)
    except ValueError:
        raise invalid([{"field": name, "message": f"must be an integer, not {raw[:50]!r}"}]) from None
    if not low <= value <= high:
        raise invalid([{"field": name, "message": f"must be between {low} and {high:,}"}])
    return value


def page_args() -> tuple[int, str | None]:
    """Return (limit, cursor) of a list request."""
    limit = int_arg("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    assert limit is not None
    return limit, request.args.get("cursor") or None


def page(items: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    """Shape one page of a list response."""
    return {"items": items, "next_cursor": next_cursor}


def config(key: str) -> Any:
    """Return a configuration value of the current app."""
    return current_app.config[key]


def find_owned(session: Session, table: type[Row], row_id: str, **options: Any) -> Row | None:
    """Return the row of `table` with this id when it belongs to the request's tenant, else None.

    Every lookup by id goes through here (or get_or_404), and so through
    service.core.tenancy.ownership: another tenant's row is as absent as a missing one.
    """
    return ownership.find_owned(session, table, row_id, current_tenant(), **options)


def get_or_404(session: Session, table: type[Row], row_id: str, kind: str, **options: Any) -> Row:
    """Return the tenant's row of `table` with this id, or raise the 404 problem naming its kind.

    Another tenant's row gets the very same 404 as a missing id.
    """
    row = find_owned(session, table, row_id, **options)
    if row is None:
        raise not_found(kind, row_id)
    return row
