"""Problems a client can act on (RFC 9457): the one error type of the domain, and its field errors.

The API renders them as application/problem+json (service/api/errors.py); the
workers never raise them.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from pydantic import ValidationError

PROBLEM_JSON = "application/problem+json"


class FieldError(TypedDict):
    """One thing wrong with a request: the one shape of a field error, in every problem's `errors`.

    `field` is a path in the request (`training.batch_size`, `data[3][1]`, `file`; empty for
    the body as a whole); the others say more where they apply. The engine's
    backprop.errors.Problem (`Problem.to_dict`) gives field, message and node; the API's
    answers describe the shape as service.api.responses.FieldProblem (a test keeps the two alike).
    """

    field: str
    message: str
    node: NotRequired[str | None]  # the network node at fault
    row: NotRequired[int]  # the table's row (1-based, the header not counted)
    column: NotRequired[str]  # the table's column


class FieldErrors(Exception):
    """Input that cannot be used; `errors` names every field at fault (the API answers 422)."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(e["message"] for e in errors))
        self.errors = errors


class ApiError(Exception):
    """An error the client can act on, rendered as a problem document."""

    def __init__(self, status: int, title: str, detail: str = "",
                 errors: list[FieldError] | None = None, slug: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail or title
        self.errors = errors or []
        self.slug = slug
        self.headers = headers or {}


def invalid(errors: list[FieldError], detail: str | None = None) -> ApiError:
    """Return a 422 listing every field at fault."""
    if detail is None:
        detail = "; ".join(f"{e['field']}: {e['message']}" if e.get("field") else e["message"]
                           for e in errors[:5])
        if len(errors) > 5:
            detail += f"; and {len(errors) - 5} more"
    return ApiError(422, "Unprocessable request", detail, errors, slug="validation-error")


def body_too_large(max_upload_mb: int) -> str:
    """Say why a request body was refused with 413: the API's and `make run`'s front's one wording."""
    return f"the request body is larger than MAX_UPLOAD_MB ({max_upload_mb} MB)"


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
    errors: list[FieldError] = []
    for item in error.errors(include_url=False):
        # Unions add the tried member type to the location; drop it for a readable path.
        loc = [p for p in item["loc"] if not (isinstance(p, str) and ("[" in p or p in {
            "float", "int", "str", "bool", "list", "dict", "none"}))]
        errors.append({"field": field_path(loc, prefix), "message": item["msg"]})
    return invalid(errors)
