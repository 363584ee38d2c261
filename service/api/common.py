"""Helpers shared by the blueprints: JSON bodies, schema validation, paging."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError

from sqlalchemy.orm import Session

from service.errors import ApiError, from_validation_error, invalid, not_found

M = TypeVar("M", bound=BaseModel)
Row = TypeVar("Row")

DEFAULT_PAGE = 50
MAX_PAGE = 1000


def json_body() -> Any:
    """Return the request's JSON body, or raise a problem saying what is wrong with it."""
    if not request.is_json:
        raise ApiError(415, "Unsupported Media Type",
                       f"send application/json (got {request.mimetype or 'no content type'})")
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "Bad Request", "the body is not valid JSON", slug="invalid-json")
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
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
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


def get_or_404(session: Session, table: type[Row], row_id: str, kind: str, **options: Any) -> Row:
    """Return the row of `table` with this id, or raise the 404 problem naming its kind.

    Every lookup by id goes through here, so a rule about who may see a row
    has one place to live.
    """
    row = session.get(table, row_id, **options)
    if row is None:
        raise not_found(kind, row_id)
    return row
